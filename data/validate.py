"""`python -m data check`: every problem of a collection, each naming the file, the line and the uid.

Errors make the collection unusable as is (a connection to an unknown image, a contradiction,
an image that cannot be read); warnings are worth a look but do not stop training (a pair
listed twice, a remote image not fetched yet).
"""

from __future__ import annotations

import os
import sys
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from data.check_cache import FULL, QUICK, CheckCache
from data.collection import (
    CONNECTION_TYPES,
    CONNECTIONS_FILE,
    CONTRADICTORY,
    IMAGES_FILE,
    IMPLIED_BY,
    SPLITS,
    Collection,
    Connection,
    load_collection,
    uid_problem,
)
from data.image import (
    ImageReadError,
    ImageTooLargeError,
    decode_image,
    discard_pixels,
    is_damaged,
    read_header,
)
from data.parallel import Progress, map_chunks
from data.splits import SplitAssignment, assign_splits, load_previous

ERROR = "error"
WARNING = "warning"
EXISTS = "exists"
MODES = (EXISTS, QUICK, FULL)

# Pairs of types that cannot both hold for one pair of images.


def _warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr)


@dataclass(frozen=True)
class CheckOptions:
    """How `validate` checks the image files (the images.csv and connections checks are always made)."""

    root: Path
    mode: str = FULL
    workers: int = 1
    cache: bool = False
    progress: bool = False
    warn: Callable[[str], None] = _warn


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


def _check_image(path: Path, mode: str = FULL) -> tuple[str | None, tuple[str, ...]]:
    """(error, notes) of one image: decoded in full the way every stage decodes it, or (quick) its header only."""
    try:
        if mode == QUICK:
            read_header(path)
            return None, ()
        return None, decode_image(path, finish=discard_pixels).notes
    except ImageTooLargeError as e:  # the message says what to do, like every stage's
        return str(e), ()
    except ImageReadError as e:
        return f"unreadable image: {e}", ()


def _check_chunk(tasks: list[tuple[str, str]]) -> list[tuple[str | None, tuple[str, ...], int, int]]:
    """Worker: (path, mode) -> (error, notes, size, mtime_ns), the file's stat taken before it is read (a file
    changed meanwhile is seen as changed by the next check)."""
    out = []
    for path, mode in tasks:
        try:
            st = os.stat(path)
        except OSError as e:
            out.append((f"image file missing: {path} ({e.strerror or e})", (), -1, -1))
            continue
        out.append((*_check_image(Path(path), mode), st.st_size, st.st_mtime_ns))
    return out


def _image_problem(uid: str, line: int, err: str | None, notes: tuple[str, ...]) -> Problem | None:
    """An error for an image that cannot be used, a warning naming what was corrected, or None."""
    if err:
        return Problem(ERROR, IMAGES_FILE, line, uid, err)
    if notes:  # a note on damage says so itself; the others are corrections
        what = "; ".join(notes)
        return Problem(WARNING, IMAGES_FILE, line, uid, what if is_damaged(notes) else
                       f"image read with corrections: {what}")
    return None


def _stat(p: Path) -> os.stat_result | None | bool:
    """The file's stat; False where there is no such file; None where it cannot be statted otherwise (the check
    that reads it then says why). One stat per image serves both the missing-file check and the cache."""
    try:
        return os.stat(p)
    except (FileNotFoundError, NotADirectoryError):
        return False
    except OSError:
        return None


def _check_images(to_check: list[tuple[str, int, Path, tuple | None]], opts: CheckOptions,
                  add: Callable[[Problem], None], cache: CheckCache | None) -> None:
    """Check every image in worker processes, in images.csv order; `to_check` holds (uid, line, path, the
    cache's result for an unchanged file or None)."""
    if not to_check:
        return
    results = [cached for _uid, _line, _p, cached in to_check]
    todo = [i for i, r in enumerate(results) if r is None]
    bar = Progress(f"checking images ({opts.mode})", len(todo)) if opts.progress and todo else None
    tasks = [(str(to_check[i][2]), opts.mode) for i in todo]
    try:
        for i, (err, notes, size, mtime_ns) in zip(
                todo, map_chunks(_check_chunk, tasks, workers=opts.workers, on_done=bar.advance if bar else None),
                strict=False):
            results[i] = (err, notes)
            if cache is not None and size >= 0:
                cache.store(to_check[i][2], size, mtime_ns, opts.mode, (err, notes))
    finally:  # also on Ctrl-C: what was checked is kept
        if bar is not None:
            bar.close()
        if cache is not None:
            cache.save()
    for (uid, line, _p, _cached), (err, notes) in zip(to_check, results, strict=True):
        problem = _image_problem(uid, line, err, notes)
        if problem is not None:
            add(problem)


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
        if frozenset((t, c.type)) in CONTRADICTORY:
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
            weaker, stronger = (c.type, t) if t in IMPLIED_BY.get(c.type, ()) else (t, c.type)
            why = (f": {stronger} implies {weaker}, so the {weaker} row adds nothing; remove it"
                   if stronger in IMPLIED_BY.get(weaker, ()) else "")
            add(Problem(WARNING, CONNECTIONS_FILE, c.line, c.a,
                        f"pair ({c.a}, {c.b}) is {c.type} here and {t} on line {line}{why}."))
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


def validate(collection: Collection | str | Path, *, decode_images: bool = True, mode: str | None = None,
             workers: int = 1, cache: bool = False, progress: bool = False,
             warn: Callable[[str], None] = _warn) -> ValidationReport:
    """Check a collection.

    `mode` says how much of each local image file is checked: "exists" (only that it is there), "quick"
    (its header and whether a JPEG/PNG ends like a complete file: `data.image.read_header`) or "full"
    (decoded like every stage decodes it; the default; `decode_images=False` means "exists"). `workers`:
    processes checking images (1: in this one). `cache`: reuse results of unchanged files and store new ones
    (`data.check_cache`, in COLLECTION/.cache/). `progress`: images/s on stderr. `warn` gets the cache's
    warnings.
    """
    mode = mode or (FULL if decode_images else EXISTS)
    if mode not in MODES:
        raise ValueError(f"check mode {mode!r} is not one of {', '.join(MODES)}")
    coll = collection if isinstance(collection, Collection) else load_collection(collection, quiet=True)
    opts = CheckOptions(coll.root, mode, workers, cache, progress, warn)
    rep = ValidationReport()
    add = rep.problems.append
    _check_files(coll, add)

    # images.csv: its problems in the file's line order (the decoding pass finds its own later)
    images_problems: list[Problem] = []
    add_image = images_problems.append
    first_line: dict[str, int] = {}
    to_decode: list[tuple[str, int, Path, tuple | None]] = []
    # the cache is asked with the stat that also tells a missing file (one stat per image; a stat kept per image
    # instead was ~0.6 GB at 10^6 images)
    cache = CheckCache.for_collection(opts.root, opts.warn) if opts.cache and mode != EXISTS else None
    remote = 0
    for rec in coll.images:
        bad_uid = uid_problem(rec.uid)
        if bad_uid:  # the uid itself is named (escaped) in the message: it may hold a newline
            add_image(Problem(ERROR, IMAGES_FILE, rec.line, None, bad_uid))
            continue
        if rec.uid in first_line:
            add_image(Problem(ERROR, IMAGES_FILE, rec.line, rec.uid,
                        f"duplicate uid (first on line {first_line[rec.uid]}); give each image its own uid."))
            continue
        first_line[rec.uid] = rec.line
        if not rec.path and not rec.url:
            add_image(Problem(ERROR, IMAGES_FILE, rec.line, rec.uid, "neither path nor url given."))
            continue
        p = coll.image_path(rec)
        st = _stat(p)
        if not rec.path:
            remote += 1
            if st is False:
                add_image(Problem(WARNING, IMAGES_FILE, rec.line, rec.uid,
                            f"remote image not fetched yet ({rec.url}); run `python -m data fetch {coll.root}`."))
                continue
        elif st is False:
            add_image(Problem(ERROR, IMAGES_FILE, rec.line, rec.uid, f"image file missing: {p}"))
            continue
        if mode != EXISTS:
            to_decode.append((rec.uid, rec.line, p, cache.lookup(p, st, mode) if cache is not None and st else None))
    _check_images(to_decode, opts, add_image, cache)
    for problem in sorted(images_problems, key=lambda q: q.line or 0):  # stable: one line's problems in order
        add(problem)

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
        add(Problem(WARNING, CONNECTIONS_FILE, note.line, note.uid, note.message))
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
