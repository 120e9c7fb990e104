"""Why a proposal holds an image, and which known groups the clustering lost: what the annotation page's cards
and its "missed" panel show (issue 16, item 4), also used by the run report.

Pure bookkeeping over files already read (no flask, no network):
- `Partners`: every image's known partners in connections.csv, by type, indexed once (O(links));
- `missed_groups`: the known pattern groups (`data.graph.pattern_groups`) that no cluster found, and where
  each of their members ended up;
- `NearestMembers`: for the members shown, the member of the same cluster nearest to each (its cosine
  distance), computed from the signatures file the clustering used (memory-mapped) for one page at a time:
  O(page x k x D) for a cluster of k, the cluster's rows read block by block, never the whole store.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from data.signatures import Signatures, load_signatures

PARTNERS_SHOWN = 12  # uids listed per connection type on a card (the count is always the full one)
NEAREST_BLOCK = 4096  # member rows compared at once with the page's rows (float32: 32 MB at D = 2048)
NEAREST_CACHE = 64  # pages of nearest members kept (a page turned back and forth is not computed again)


def _finite(x: float) -> float | None:
    """A float for JSON: None for inf/NaN (OPTICS' first point has an infinite reachability)."""
    return float(x) if math.isfinite(x) else None


class Partners:
    """uid -> [(partner, TYPE)] of connections.csv (self-links left out), built once."""

    def __init__(self, pairs: Iterable[tuple[str, str, str]]) -> None:
        self.of: dict[str, list[tuple[str, str]]] = {}
        seen: set[tuple[str, str, str]] = set()
        for a, b, t in pairs:
            if a == b or (min(a, b), max(a, b), t) in seen:
                continue
            seen.add((min(a, b), max(a, b), t))
            self.of.setdefault(a, []).append((b, t))
            self.of.setdefault(b, []).append((a, t))

    def by_type(self, uid: str, members: Mapping[str, int], title) -> dict[str, dict]:
        """TYPE -> {"count", "shown": [{"uid", "title", "n"}...]} for one image; `n` is the partner's number in
        the cluster on screen (None: not a member), `title(uid)` its title. At most PARTNERS_SHOWN per type,
        members of the cluster first."""
        out: dict[str, list[str]] = {}
        for other, t in self.of.get(uid, ()):
            out.setdefault(t, []).append(other)
        result = {}
        for t in sorted(out):
            uids = sorted(out[t], key=lambda u: (u not in members, members.get(u, 0), u))
            result[t] = {"count": len(uids),
                         "shown": [{"uid": u, "title": title(u), "n": members.get(u)} for u in uids[:PARTNERS_SHOWN]]}
        return result


@dataclass
class GroupIndex:
    """Known pattern groups: uid -> group name, and each group's members (sorted)."""

    of: dict[str, str]
    members: dict[str, list[str]] = field(default_factory=dict)

    @classmethod
    def from_map(cls, of: Mapping[str, str]) -> GroupIndex:
        members: dict[str, list[str]] = {}
        for u, g in of.items():
            members.setdefault(g, []).append(u)
        return cls(dict(of), {g: sorted(m) for g, m in members.items()})

    def describe(self, uid: str, members: Mapping[str, int]) -> dict | None:
        """{"name", "size", "in_cluster"} of the image's group (how many of the group this cluster holds)."""
        g = self.of.get(uid)
        if g is None:
            return None
        ms = self.members[g]
        return {"name": g, "size": len(ms), "in_cluster": sum(1 for m in ms if m in members)}


def found_by(group: Sequence[str], label_of: Mapping[str, int]) -> int | None:
    """The cluster that found a group: one holding at least two of its members and at least half of them (the
    one holding most; None when none does)."""
    counts: dict[int, int] = {}
    for u in group:
        lab = label_of.get(u, -1)
        if lab >= 0:
            counts[lab] = counts.get(lab, 0) + 1
    if not counts:
        return None
    best = max(counts, key=lambda c: (counts[c], -c))
    return best if counts[best] >= 2 and 2 * counts[best] >= len(group) else None


def missed_groups(groups: GroupIndex, label_of: Mapping[str, int]) -> list[dict]:
    """The known pattern groups no cluster found (`found_by`), biggest first: {"name", "size", "members":
    [{"uid", "cluster"}]}, `cluster` being the member's cluster label, -1 for noise, None when the clustering
    did not see the image (not in clusters.csv: no signature)."""
    out = []
    for name, ms in groups.members.items():
        if len(ms) < 2 or found_by(ms, label_of) is not None:
            continue
        out.append({"name": name, "size": len(ms), "members": [{"uid": u, "cluster": label_of.get(u)} for u in ms]})
    out.sort(key=lambda g: (-g["size"], g["name"]))
    return out


def missed_summary(missed: list[dict]) -> str:
    """One line for a person: how many groups and images were lost, and where their members went."""
    if not missed:
        return "every known pattern group is found by a cluster (at least two and half of its members together)."
    images = sum(g["size"] for g in missed)
    noise = sum(1 for g in missed for m in g["members"] if m["cluster"] == -1)
    return (f"{len(missed)} known pattern group(s) of {images} images are not found by any cluster "
            f"({noise} of their images are noise, the others spread over clusters).")


class NearestMembers:
    """The cosine distance from each member shown to the nearest other member of its cluster, from the
    signatures the clustering used (opened on first use, memory-mapped)."""

    def __init__(self, path: Path | None, note: str | None = None, *, centre: bool = False,
                 mean: Sequence[float] | None = None) -> None:
        self.path = path
        self.note = note  # why there are no distances (None while they may be computed)
        self.centre = centre  # the clustering centred the signatures (clusters.json `centre`): so are these
        # the mean it subtracted (clusters.json `centre_mean`); computed from the file where not recorded
        self._mean: np.ndarray | None = None if mean is None else np.asarray(mean, np.float32)
        self._sig: Signatures | None = None
        self._row: dict[str, int] = {}
        self._cache: OrderedDict[tuple, dict[str, dict]] = OrderedDict()

    @classmethod
    def for_clusters(cls, params: Mapping, given: str | Path | None = None) -> NearestMembers:
        """The signatures named by clusters.json (`signatures`), or `given` (a moved file); centred as the
        clustering centred them (`centre`)."""
        raw = given if given is not None else params.get("signatures")
        if not raw:
            return cls(None, "nearest-member distances are not shown: clusters.json names no signatures file "
                             "(start the app with --signatures FILE).")
        path = Path(raw)
        if not path.is_file():
            return cls(None, f"nearest-member distances are not shown: the signatures file {path} (named by "
                             "clusters.json) is not there; start the app with --signatures FILE where it is now.")
        return cls(path, centre=bool(params.get("centre")), mean=params.get("centre_mean"))

    def _open(self) -> Signatures | None:
        if self._sig is None and self.note is None:
            try:
                self._sig = load_signatures(self.path, check_rows_now=False)  # rows checked as read (`_compute`)
            except ValueError as e:
                self.note = f"nearest-member distances are not shown: {e}"
                return None
            self._row = self._sig.index()
            if self.centre and self._mean is None:  # the mean of all rows, as `cluster.clustering.centre_rows`
                # subtracts it: a pass over the whole file (older clusters.json, or --pca)
                total = np.zeros(self._sig.dim, np.float64)
                for _, block in self._sig.blocks():
                    total += block.sum(axis=0, dtype=np.float64)
                self._mean = (total / max(1, len(self._sig))).astype(np.float32)
        return self._sig

    def _prepare(self, rows: np.ndarray) -> np.ndarray:
        """Rows as the clustering compared them: centred when it centred them, then of unit length."""
        return _unit(rows - self._mean if self._mean is not None else rows)

    def page(self, cid: int, members: Sequence[str], shown: Sequence[str]) -> dict[str, dict]:
        """uid -> {"uid", "distance"} of the nearest other member, for the uids shown (members without a
        signature get nothing). O(len(shown) x len(members) x D), member rows read NEAREST_BLOCK at a time."""
        key = (cid, len(members), tuple(shown))
        if key in self._cache:
            self._cache.move_to_end(key)
            return self._cache[key]
        sig = self._open()
        if sig is None:
            return {}
        out = self._compute(sig, members, shown)
        self._cache[key] = out
        while len(self._cache) > NEAREST_CACHE:
            self._cache.popitem(last=False)
        return out

    def _compute(self, sig: Signatures, members: Sequence[str], shown: Sequence[str]) -> dict[str, dict]:
        rows = [(u, self._row[u]) for u in members if u in self._row]
        mine = [(u, self._row[u]) for u in shown if u in self._row]
        if len(rows) < 2 or not mine:
            return {}
        # rows are checked as they are read (the file is not read whole): a row that is not finite is nobody's
        # nearest member and gets no distance itself
        q = self._prepare(np.asarray(sig.vectors[np.array([r for _, r in mine])], np.float32))
        best = np.full(len(mine), -np.inf)
        arg = np.full(len(mine), -1)
        for start in range(0, len(rows), NEAREST_BLOCK):
            block = rows[start:start + NEAREST_BLOCK]
            idx = np.array([r for _, r in block])
            order = np.argsort(idx)  # memmap reads in file order
            b = self._prepare(np.asarray(sig.vectors[idx[order]], np.float32))
            with np.errstate(invalid="ignore"):
                sims = q @ b.T
            sims[:, ~np.isfinite(b).all(axis=1)] = -np.inf
            sims[~np.isfinite(q).all(axis=1)] = -np.inf
            for i, (_, r) in enumerate(mine):
                sims[i, idx[order] == r] = -np.inf  # itself
            j = sims.argmax(axis=1)
            top = sims[np.arange(len(mine)), j]
            better = top > best
            best[better] = top[better]
            arg[better] = start + order[j[better]]
        return {u: {"uid": rows[arg[i]][0], "distance": round(max(0.0, 1.0 - float(best[i])), 6)}
                for i, (u, _) in enumerate(mine) if arg[i] >= 0}


def _unit(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (a float16 store's rows are unit only to within 5e-4)."""
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


class ByUid(Mapping):
    """A column of clusters.csv (one value per row) read by uid through a uid -> row map that several columns
    share: at 10^6 rows, a dict per column (and a tuple per row) cost the app ~1 s of its start."""

    def __init__(self, row: Mapping[str, int], values: Sequence) -> None:
        self.row, self.values = row, values

    def __getitem__(self, uid: str):
        return self.values[self.row[uid]]

    def __iter__(self) -> Iterator[str]:
        return iter(self.row)

    def __len__(self) -> int:
        return len(self.row)


class OpticsDistances(ByUid):
    """uid -> (reachability, core distance) from clusters.csv, None where infinite or not a number."""

    def __init__(self, row: Mapping[str, int], reachability: np.ndarray, core: np.ndarray) -> None:
        super().__init__(row, reachability)
        self.core = core

    def __getitem__(self, uid: str) -> tuple[float | None, float | None]:
        i = self.row[uid]
        return _finite(float(self.values[i])), _finite(float(self.core[i]))
