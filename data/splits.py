"""Train / val / test splits by pattern group, stable under new annotations.

Why by group: two images of one pattern group in different splits would let the model see the
test pattern during training. So whole connected components go to one split. DUPLICATE edges join
components too (the same object photographed twice is one object).

Determinism: each uid gets a key `sha256(uid)`; a component's representative is the member with
the smallest key, and its split is a fixed bucket (~2/3 train, 1/6 val, 1/6 test) of a second,
independent hash of that representative (the smallest of k keys is biased low; a fresh hash is
uniform). This is independent of row order, and when two components merge, the merged component's
representative is one of theirs, so it takes one of their splits: a merge never invents a third.

Stability (the original re-split merged components and moved test images into train; we don't):
- a uid with a previous split (from `previous`, usually the saved `splits.json`) keeps it, always;
- a `split` given in connections.csv pins both endpoints (a previous split wins over it);
- a component with pinned members gives its new members the most protected pinned split
  (test > val > train), so new images never dilute a held-out group into training;
- a connection whose endpoints end up in different splits (a new annotation joined a test group
  with a train group) is used nowhere and listed in `excluded` with the reason.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Container, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from data.atomic import atomic_write_text
from data.collection import CONNECTIONS_FILE, DUPLICATE, NEGATIVE, POSITIVE, SPLITS, Collection, Connection
from data.graph import group_members, pattern_groups

SPLITS_FILE = "splits.json"
# Order of protection: a component touching a held-out split is held out.
_RANK = {"train": 0, "val": 1, "test": 2}


@dataclass(frozen=True)
class SplitNote:
    """What the split assignment had to decide about a row or a uid (a pin conflict): `data check` reports it
    as a warning with its line and uid, `data splits` prints it as text (`str`)."""

    line: int | None
    uid: str | None
    message: str

    def __str__(self) -> str:
        where = f"{CONNECTIONS_FILE}:{self.line}: " if self.line else ""
        return f"{where}uid {self.uid}: {self.message}" if self.uid else f"{where}{self.message}"


@dataclass(frozen=True)
class SplitFractions:
    train: float = 2 / 3
    val: float = 1 / 6

    def bucket(self, key: int) -> str:
        u = key / 2**64
        if u < self.train:
            return "train"
        if u < self.train + self.val:
            return "val"
        return "test"


@dataclass
class SplitAssignment:
    """Which split each pattern-group image is in, and which connections each split may use."""

    split_of: dict[str, str]
    groups: dict[str, list[str]]  # component name (smallest uid) -> sorted members
    excluded: list[tuple[Connection, str]] = field(default_factory=list)
    notes: list[SplitNote] = field(default_factory=list)  # pin conflicts, reported by `data check`
    _usable: list[Connection] = field(default_factory=list, repr=False)

    def group_of(self) -> dict[str, str]:
        """uid -> the name of its pattern group (POSITIVE and DUPLICATE edges; `data.graph.pattern_groups` with
        duplicates: the same groups)."""
        return {m: name for name, members in self.groups.items() for m in members}

    def connections(self, split: str) -> list[Connection]:
        """POSITIVE connections with both ends in `split` (one per unordered pair)."""
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}.")
        return [c for c in self._usable if self.split_of[c.a] == split]

    def uids(self, split: str) -> list[str]:
        return sorted(u for u, s in self.split_of.items() if s == split)

    def counts(self) -> dict[str, dict[str, int]]:
        """Images, groups and usable connections per split."""
        out = {s: {"images": 0, "groups": 0, "connections": 0} for s in SPLITS}
        for u in self.split_of.values():
            out[u]["images"] += 1
        for members in self.groups.values():
            splits = {self.split_of[m] for m in members}
            for s in splits:
                out[s]["groups"] += 1
        for c in self._usable:
            out[self.split_of[c.a]]["connections"] += 1
        return out

    def to_json(self) -> dict:
        return {"version": 1, "split_of": dict(sorted(self.split_of.items()))}


def _key(uid: str) -> int:
    return int.from_bytes(hashlib.sha256(uid.encode("utf-8")).digest()[:8], "big")


def _check_previous(previous: dict[str, str]) -> None:
    for u, s in previous.items():
        if s not in SPLITS:
            raise ValueError(f"previous split of uid {u!r} is {s!r}; expected one of {SPLITS}.")


def _pin(pins: dict[str, str], uid: str, split: str, line: int | None, notes: list[SplitNote]) -> None:
    """Pin `uid` to `split` as connections.csv's line `line` says; of two different pins the more protected stays."""
    old = pins.get(uid)
    if old is not None and old != split:
        keep = max(old, split, key=_RANK.__getitem__)
        notes.append(SplitNote(line, uid, f"is given split {split!r} here and {old!r} on an earlier line; it stays "
                                          f"{keep!r}."))
        pins[uid] = keep
    else:
        pins[uid] = split


def _pins(known: list[Connection], previous: dict[str, str], notes: list[SplitNote]) -> dict[str, str]:
    """uid -> split fixed in advance: connections.csv's `split` cells, overruled by the previous splits."""
    pins: dict[str, str] = {}
    for c in known:
        if c.split is None or c.type not in (POSITIVE, DUPLICATE):
            continue
        if c.split not in SPLITS:
            notes.append(SplitNote(c.line, None, f"split {c.split!r} is not one of {SPLITS}; ignored."))
            continue
        for u in (c.a, c.b):
            _pin(pins, u, c.split, c.line, notes)
    for u, s in previous.items():
        if u in pins and pins[u] != s:
            notes.append(SplitNote(None, u, f"{CONNECTIONS_FILE} says split {pins[u]!r} but it was {s!r} before; it "
                                            f"stays {s!r}."))
        pins[u] = s
    return pins


def _group_splits(groups: dict[str, list[str]], pins: dict[str, str], fractions: SplitFractions) -> dict[str, str]:
    """Each member's pin, else its group's: the most protected pin in the group, else the representative's bucket."""
    split_of: dict[str, str] = {}
    for members in groups.values():
        pinned = {pins[m] for m in members if m in pins}
        if pinned:
            default = max(pinned, key=_RANK.__getitem__)
        else:
            representative = min(members, key=_key)
            default = fractions.bucket(_key("split:" + representative))
        for m in members:
            split_of[m] = pins.get(m, default)
    return split_of


def _exclusion(c: Connection, split_of: dict[str, str], negative_pairs: set[tuple[str, str]]) -> str | None:
    """Why a connection inside a pattern group is used in no split (None: it may be used)."""
    sa, sb = split_of[c.a], split_of[c.b]
    if sa != sb:
        return (f"joins {c.a} ({sa}) and {c.b} ({sb}): a new connection merged groups that were split "
                "before; kept out of every split so no held-out image leaks into training")
    if c.type == POSITIVE and c.pair in negative_pairs:
        return "the same pair is also marked NEGATIVE (contradiction); fix connections.csv"
    return None


def _usable(known: list[Connection], split_of: dict[str, str]) -> tuple[list[Connection], list[tuple[Connection, str]]]:
    """The POSITIVE connections each split may use (one per pair), and the excluded ones with the reason."""
    negative_pairs = {c.pair for c in known if c.type == NEGATIVE}
    excluded: list[tuple[Connection, str]] = []
    usable: list[Connection] = []
    seen: set[tuple[str, str]] = set()
    for c in known:
        if c.type not in (POSITIVE, DUPLICATE) or c.a not in split_of:  # not in a pattern group: no split
            continue
        why = _exclusion(c, split_of, negative_pairs)
        if why is not None:
            excluded.append((c, why))
        elif c.type == POSITIVE and c.pair not in seen:
            seen.add(c.pair)
            usable.append(c)
    return usable, excluded


def assign_splits(
    collection: Collection,
    previous: dict[str, str] | None = None,
    *,
    fractions: SplitFractions = SplitFractions(),
) -> SplitAssignment:
    """Assign every image of a pattern group to train/val/test; see the module docstring for the rules.

    `previous` maps uid -> split from an earlier run (`load_splits`); uids no longer in a group are ignored.
    """
    previous = dict(previous or {})
    _check_previous(previous)
    known = [c for c in collection.connections if c.a != c.b and c.a in collection and c.b in collection]
    groups = group_members(collection, with_duplicates=True)
    notes: list[SplitNote] = []
    split_of = _group_splits(groups, _pins(known, previous, notes), fractions)
    usable, excluded = _usable(known, split_of)
    return SplitAssignment(split_of=split_of, groups=groups, excluded=excluded, notes=notes, _usable=usable)


def usable_negatives(collection: Collection, split_of: Mapping[str, str], *, train_split: str = "train",
                     skipped: Container[str] = (), groups: Mapping[str, str] | None = None) -> set[tuple[str, str]]:
    """The annotated NEGATIVE pairs training can use, as sorted uid pairs (`Connection.pair`), distinct.

    Both ends known to images.csv, readable (not in `skipped`) and in the negative pool: the train split or no
    split (a held-out image is never pushed away from anything); and not in one pattern group (POSITIVE and
    DUPLICATE edges join groups): a NEGATIVE the group contradicts is not used. One rule for the mining
    candidates (train.mining) and for what `cluster accept` says the next round will use (cluster.next_round).
    `groups`: uid -> group name, when the caller has it (`SplitAssignment.group_of()`); else computed.
    """
    if groups is None:
        groups = pattern_groups(collection, with_duplicates=True)

    known = collection.uid_index

    def in_pool(uid: str) -> bool:
        return uid in known and uid not in skipped and split_of.get(uid, train_split) == train_split

    return {c.pair for c in collection.connections
            if c.type == NEGATIVE and c.a != c.b and in_pool(c.a) and in_pool(c.b)
            and groups.get(c.a, c.a) != groups.get(c.b, c.b)}  # fmt: skip


def save_splits(path: str | Path, assignment: SplitAssignment) -> None:
    """Write the assignment as JSON atomically (`data.atomic`), creating the folder if needed."""
    atomic_write_text(path, json.dumps(assignment.to_json(), indent=1))


def load_splits(path: str | Path) -> dict[str, str]:
    """Read a saved assignment as uid -> split, to pass as `previous`."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        split_of = data["split_of"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ValueError(f"{path}: not a splits file ({e}); written by `python -m data splits` or the trainer.") from e
    bad = {u: s for u, s in split_of.items() if s not in SPLITS}
    if bad:
        u, s = next(iter(bad.items()))
        raise ValueError(f"{path}: uid {u!r} has split {s!r}; expected one of {SPLITS}.")
    return dict(split_of)


def load_previous(collection: Collection) -> dict[str, str] | None:
    """The collection's saved `splits.json`, if any."""
    p = collection.root / SPLITS_FILE
    return load_splits(p) if p.exists() else None
