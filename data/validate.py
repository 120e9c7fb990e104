"""`python -m data check`: every problem of a collection, each naming the file, the line and the uid.

Errors make the collection unusable as is (a connection to an unknown image, a contradiction,
an image that cannot be read); warnings are worth a look but do not stop training (a pair
listed twice, a remote image not fetched yet).
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from data.collection import (
    CONNECTION_TYPES,
    CONNECTIONS_FILE,
    DUPLICATE,
    IMAGES_FILE,
    NEGATIVE,
    POSITIVE,
    SPLITS,
    Collection,
    Connection,
    load_collection,
    uid_problem,
)
from data.image import ImageReadError, ImageTooLargeError, decode_image, discard_pixels, is_damaged
from data.splits import SplitAssignment, assign_splits, load_previous

ERROR = "error"
WARNING = "warning"

# Pairs of types that cannot both hold for one pair of images.
_CONTRADICTORY = {frozenset((POSITIVE, NEGATIVE)), frozenset((DUPLICATE, NEGATIVE))}


@dataclass(frozen=True)
class Problem:
    severity: str  # "error" | "warning"
    file: str
    line: int | None
    uid: str | None
    message: str

    def __str__(self) -> str:
        where = self.file + (f":{self.line}" if self.line else "")
        who = f" uid {self.uid}:" if self.uid else ""
        return f"{self.severity.upper()} {where}:{who} {self.message}"


@dataclass
class ValidationReport:
    problems: list[Problem] = field(default_factory=list)
    summary: dict = field(default_factory=dict)
    splits: SplitAssignment | None = None

    @property
    def errors(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == ERROR]

    @property
    def warnings(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == WARNING]

    @property
    def ok(self) -> bool:
        return not self.errors

    def format_summary(self) -> str:
        s = self.summary
        lines = [
            f"images: {s.get('images', 0)} ({s.get('images_remote', 0)} remote-only)",
            "connections: " + ", ".join(f"{t} {n}" for t, n in s.get("connections", {}).items()),
            f"pattern groups: {s.get('groups', 0)} "
            f"(images in groups {s.get('grouped_images', 0)}; sizes " + ", ".join(
                f"{k}x{v}" for k, v in s.get("group_sizes", {}).items()
            ) + ")",
        ]
        for name, c in s.get("splits", {}).items():
            lines.append(f"split {name}: {c['images']} images, {c['groups']} groups, {c['connections']} connections")
        if s.get("excluded_connections"):
            lines.append(f"connections kept out of every split: {s['excluded_connections']}")
        lines.append(f"problems: {len(self.errors)} errors, {len(self.warnings)} warnings")
        return "\n".join(lines)


def _check_image(path: Path) -> tuple[str | None, tuple[str, ...]]:
    """(error, notes) of decoding one image in full, the way every stage decodes it."""
    try:
        return None, decode_image(path, finish=discard_pixels).notes
    except ImageTooLargeError as e:  # the message says what to do, like every stage's
        return str(e), ()
    except ImageReadError as e:
        return f"unreadable image: {e}", ()


def _check_images(to_decode: list[tuple[str, int, Path]], workers: int, add: Callable[[Problem], None]) -> None:
    """Decode every image: an error for one that cannot be used, a warning naming what was corrected."""
    if not to_decode:
        return
    with ThreadPoolExecutor(max(1, workers)) as pool:
        for (uid, line, _p), (err, notes) in zip(to_decode, pool.map(lambda t: _check_image(t[2]), to_decode),
                                                 strict=True):
            if err:
                add(Problem(ERROR, IMAGES_FILE, line, uid, err))
            elif notes:  # a note on damage says so itself; the others are corrections
                what = "; ".join(notes)
                add(Problem(WARNING, IMAGES_FILE, line, uid, what if is_damaged(notes) else
                            f"image read with corrections: {what}"))


def _check_files(coll: Collection, add: Callable[[Problem], None]) -> None:
    """What the reader had to guess (a file read as Windows-1252), and an images.csv without rows."""
    for note in coll.notes:  # a warning in the report, not only on stderr
        add(Problem(WARNING, note.file.name, note.line, None, note.message))
    if not coll.images:
        add(Problem(ERROR, IMAGES_FILE, None, None,
                    "no images: the file has a header but no rows; add one row (uid,path) per image."))


def _check_pair(c: Connection, earlier: list[tuple[str, int]], add: Callable[[Problem], None]) -> None:
    """Compare a connection with the earlier rows of the same pair (contradiction, duplicate, two types)."""
    for t, line in earlier:
        if frozenset((t, c.type)) in _CONTRADICTORY:
            add(Problem(ERROR, CONNECTIONS_FILE, c.line, c.a,
                        f"contradictory pair ({c.a}, {c.b}): {c.type} here, {t} on line {line}; keep one."))
            break
        if t == c.type:
            add(Problem(WARNING, CONNECTIONS_FILE, c.line, c.a,
                        f"duplicate pair ({c.a}, {c.b}) {c.type}, already on line {line}."))
            break
    else:
        if earlier:
            t, line = earlier[0]
            add(Problem(WARNING, CONNECTIONS_FILE, c.line, c.a,
                        f"pair ({c.a}, {c.b}) is {c.type} here and {t} on line {line}."))
    earlier.append((c.type, c.line))


def _check_connections(coll: Collection, add: Callable[[Problem], None]) -> Counter[str]:
    """Every connections.csv problem; returns the rows per type for the summary."""
    by_pair: dict[tuple[str, str], list[tuple[str, int]]] = defaultdict(list)
    type_counts: Counter[str] = Counter()
    for c in coll.connections:
        if c.type not in CONNECTION_TYPES:  # an error line of its own; the summary counts the known types only
            add(Problem(ERROR, CONNECTIONS_FILE, c.line, c.a,
                        f"unknown type {c.type!r} for pair ({c.a}, {c.b}); use one of {', '.join(CONNECTION_TYPES)}."))
            continue
        type_counts[c.type] += 1
        if c.split is not None and c.split not in SPLITS:
            add(Problem(ERROR, CONNECTIONS_FILE, c.line, c.a, f"split {c.split!r} is not one of {', '.join(SPLITS)}."))
        bad = False
        for u in (c.a, c.b):
            if not u:
                add(Problem(ERROR, CONNECTIONS_FILE, c.line, None, "empty uid in column a or b."))
                bad = True
            elif u not in coll:
                add(Problem(ERROR, CONNECTIONS_FILE, c.line, u, f"unknown uid (not in {IMAGES_FILE})."))
                bad = True
        if bad:
            continue
        if c.a == c.b:
            add(Problem(ERROR, CONNECTIONS_FILE, c.line, c.a, "self connection (a == b)."))
            continue
        _check_pair(c, by_pair[c.pair], add)
    return type_counts


def validate(collection: Collection | str | Path, *, decode_images: bool = True, workers: int = 4) -> ValidationReport:
    """Check a collection. With `decode_images`, every local image is fully decoded (slow on huge archives)."""
    coll = collection if isinstance(collection, Collection) else load_collection(collection, quiet=True)
    rep = ValidationReport()
    add = rep.problems.append
    _check_files(coll, add)

    # images.csv
    first_line: dict[str, int] = {}
    to_decode: list[tuple[str, int, Path]] = []
    remote = 0
    for rec in coll.images:
        bad_uid = uid_problem(rec.uid)
        if bad_uid:  # the uid itself is named (escaped) in the message: it may hold a newline
            add(Problem(ERROR, IMAGES_FILE, rec.line, None, bad_uid))
            continue
        if rec.uid in first_line:
            add(Problem(ERROR, IMAGES_FILE, rec.line, rec.uid,
                        f"duplicate uid (first on line {first_line[rec.uid]}); give each image its own uid."))
            continue
        first_line[rec.uid] = rec.line
        if not rec.path and not rec.url:
            add(Problem(ERROR, IMAGES_FILE, rec.line, rec.uid, "neither path nor url given."))
            continue
        p = coll.image_path(rec)
        if not rec.path:
            remote += 1
            if not p.exists():
                add(Problem(WARNING, IMAGES_FILE, rec.line, rec.uid,
                            f"remote image not fetched yet ({rec.url}); run `python -m data fetch {coll.root}`."))
                continue
        elif not p.exists():
            add(Problem(ERROR, IMAGES_FILE, rec.line, rec.uid, f"image file missing: {p}"))
            continue
        if decode_images:
            to_decode.append((rec.uid, rec.line, p))
    _check_images(to_decode, workers, add)

    type_counts = _check_connections(coll, add)

    # splits and summary
    try:
        previous = load_previous(coll)
    except ValueError as e:
        add(Problem(ERROR, "splits.json", None, None, str(e)))
        previous = None
    sp = assign_splits(coll, previous)
    rep.splits = sp
    for note in sp.notes:
        add(Problem(WARNING, CONNECTIONS_FILE, None, None, note))
    for c, reason in sp.excluded:
        add(Problem(WARNING, CONNECTIONS_FILE, c.line, c.a, f"connection ({c.a}, {c.b}) {c.type} excluded: {reason}."))
    sizes = Counter(len(m) for m in sp.groups.values())
    rep.summary = {
        "images": len(coll.images),
        "images_remote": remote,
        "connections": dict(sorted(type_counts.items())),
        "groups": len(sp.groups),
        "grouped_images": len(sp.split_of),
        "group_sizes": dict(sorted(sizes.items())),
        "splits": sp.counts(),
        "excluded_connections": len(sp.excluded),
        "errors": len(rep.errors),
        "warnings": len(rep.warnings),
    }
    return rep
