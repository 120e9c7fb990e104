"""The thumbnail cache of a collection: one JPEG per image, shared by the map, the report and the annotation page.

Where: `COLLECTION/.cache/thumbs-256/` by default (`ThumbCache.for_collection`); `root=DIR` (`--thumb-cache
DIR`) puts it in `DIR/thumbs-256/` instead, for a collection on a read-only disk (use one DIR per collection).
One size, 256 px on the longest side, serves every page: browsers downscale it, and a second size would
double the work and the disk. The folder is flat: the thumbnail of uid `u` is `<folder>/<thumb_name(u)>`,
which is `u + ".jpg"` for a plain uid (letters of any script, digits, `-`, `_`; see `data.collection.safe_file_stem`).

Made by `data.image.jpeg_thumbnail`, the one decoder of every stage (EXIF orientation, transparency on
white, 16-bit greyscale, the pixel limit); a JPEG is decoded in draft mode at the smallest libjpeg scale
that still covers 256 px (1/8 of a 4000 x 3000 scan's pixels), which is what makes an archive affordable.

Up to date: each thumbnail is written to a temp file, given its source's modification time (`os.utime`,
in ns) and then renamed onto its name; a thumbnail is up to date iff its mtime equals the source's. A kill
leaves the thumbnail absent or complete (a remake at worst), and a changed source (new mtime) is remade.
The files are not fsynced: the cache can always be made again, and `read` refuses a file that is not a
complete JPEG (what a power cut can leave).

Unreadable images get no thumbnail (never a blank picture): `unreadable.json` in the folder records
(uid, path, source size and mtime, why), so a re-run reports them again without decoding unchanged bad
files; a changed file is tried again.

API:
- `ThumbCache.for_collection(collection, size=256, root=None)` -> `ThumbCache`;
- `cache.path(uid)` where its thumbnail is (present or not); `cache.is_fresh(uid)`;
- `cache.read(uid) -> bytes | None`: the thumbnail if present and up to date, never decoding;
- `cache.get(uid) -> bytes`: read, or make it now (in this thread) and store it; raises
  `data.image.ImageReadError` for an unreadable image (what `cache.errors[uid]` then says too; what the
  decoder corrected in an image it made is in `cache.notes[uid]`); `ThumbCacheError` if it must make one
  and cannot write the folder;
- `cache.ensure(uids=None, workers=N, progress=True) -> ThumbReport(made, up_to_date, unreadable, notes)`:
  every missing or stale thumbnail, in N worker processes (`data.parallel`), progress on stderr;
  `ensure(collection, uids, ...)` is the same as a function.
Errors: `ThumbCacheError` (a ValueError) when the folder cannot be written, naming it and saying to pass
`--thumb-cache DIR`.
"""

from __future__ import annotations

import json
import os
import re
import threading
from dataclasses import dataclass, field
from pathlib import Path

from data.atomic import atomic_write_text, owner_gone, writer_tag
from data.collection import Collection, load_collection, safe_file_stem
from data.image import ImageReadError, jpeg_thumbnail
from data.parallel import Progress, default_workers, map_chunks

CACHE_DIR = ".cache"  # inside the collection: every cache of the collection (thumbnails, `data check`)
DEFAULT_SIZE = 256
QUALITY = 85
UNREADABLE_FILE = "unreadable.json"  # not a thumbnail name: those all end in .jpg
_TEMP = re.compile(r"^\.(\d+@[A-Za-z0-9-]+)\.\d+\..+\.tmp$")


class ThumbCacheError(ValueError):
    """The cache folder cannot be written; the message names it and says what to do."""


def thumb_name(uid: str) -> str:
    """A file name for a uid: readable when the uid is plain and short, with a hash when characters were
    replaced or it is long (a 256-character uid is allowed; a file name is not), safe in a relative URL."""
    return f"{safe_file_stem(uid, keep='-_')}.jpg"


def cache_root(collection_root: str | Path) -> Path:
    """The folder of every cache of a collection."""
    return Path(collection_root) / CACHE_DIR


@dataclass
class ThumbReport:
    made: int = 0
    up_to_date: int = 0
    unreadable: list[tuple[str, str]] = field(default_factory=list)  # (uid, why), in the order asked
    notes: list[tuple[str, str, tuple[str, ...]]] = field(default_factory=list)  # (uid, path, decoder notes)


def _stat(path: Path) -> os.stat_result | None:
    try:
        return os.stat(path)
    except OSError:
        return None


def _temp_name(dest: Path) -> Path:
    """A hidden temp file per process and thread (the annotation server makes thumbnails in threads)."""
    return dest.with_name(f".{writer_tag()}.{threading.get_ident()}.{dest.name}.tmp")


def write_thumbnail(dest: Path, data: bytes, mtime_ns: int) -> None:
    """Complete or absent: temp file, its mtime set to the source's, then renamed onto `dest`."""
    tmp = _temp_name(dest)
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
        os.utime(tmp, ns=(mtime_ns, mtime_ns))
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)


def _looks_complete(data: bytes) -> bool:
    return data[:2] == b"\xff\xd8" and data[-2:] == b"\xff\xd9"


def make_thumbnail(src: Path, dest: Path, size: int) -> tuple[str | None, tuple[str, ...], tuple[int, int] | None]:
    """Make one thumbnail: (why unreadable or None, decoder notes, (source size, mtime_ns) or None if missing).

    The source's stat is taken before decoding, so a source changed meanwhile is seen as changed next time.
    An unreadable source loses any older thumbnail it had.
    """
    st = _stat(src)
    try:
        if st is None:
            dest.unlink(missing_ok=True)
            return f"image file missing: {src}", (), None
        try:
            thumb = jpeg_thumbnail(src, size, quality=QUALITY)
        except ImageReadError as e:
            dest.unlink(missing_ok=True)
            return str(e), (), (st.st_size, st.st_mtime_ns)
        write_thumbnail(dest, thumb.jpeg, st.st_mtime_ns)
    except OSError as e:  # a full disk, a folder made read-only meanwhile
        raise ThumbCacheError(f"{dest.parent}: cannot write the thumbnail cache there ({e.strerror or e}); free "
                              f"space, or pass --thumb-cache DIR with a folder you can write.") from None
    return None, thumb.notes, (st.st_size, st.st_mtime_ns)


def _make_chunk(tasks: list[tuple[str, str, int]]) -> list[tuple[str | None, tuple[str, ...], tuple[int, int] | None]]:
    """Worker: (source, thumbnail, size) -> make_thumbnail's result, for a chunk of images."""
    return [make_thumbnail(Path(src), Path(dest), size) for src, dest, size in tasks]


class ThumbCache:
    """The thumbnails of one collection at one size (see the module docstring)."""

    def __init__(self, collection: Collection, folder: Path, size: int = DEFAULT_SIZE) -> None:
        self.collection = collection
        self.folder = Path(folder)
        self.size = size
        self.errors: dict[str, str] = {}  # uid -> why, of images found unreadable by `get`
        self.notes: dict[str, tuple[str, ...]] = {}  # uid -> what the decoder corrected, of images `get` made
        self._ready = False
        self._recorded_bad: dict[str, dict] | None = None  # `unreadable.json`, read by the first `get`
        self._lock = threading.Lock()

    @classmethod
    def for_collection(cls, collection: Collection | str | Path, size: int = DEFAULT_SIZE,
                       root: str | Path | None = None) -> ThumbCache:
        coll = collection if isinstance(collection, Collection) else load_collection(collection, quiet=True)
        base = Path(root) if root is not None else cache_root(coll.root)
        return cls(coll, base / f"thumbs-{size}", size)

    # -- reading ---------------------------------------------------------------------------------------------
    def path(self, uid: str) -> Path:
        return self.folder / thumb_name(uid)

    def source(self, uid: str) -> Path:
        return self.collection.image_path(uid)

    def is_fresh(self, uid: str) -> bool:
        """The thumbnail exists and was made from the source as it is now (same mtime)."""
        thumb, src = _stat(self.path(uid)), _stat(self.source(uid))
        return thumb is not None and src is not None and thumb.st_size > 0 and thumb.st_mtime_ns == src.st_mtime_ns

    def read(self, uid: str) -> bytes | None:
        """The thumbnail if present, up to date and complete; None otherwise (never decodes)."""
        if uid not in self.collection or not self.is_fresh(uid):
            return None
        try:
            data = self.path(uid).read_bytes()
        except OSError:
            return None
        return data if _looks_complete(data) else None

    # -- making ----------------------------------------------------------------------------------------------
    def prepare(self) -> None:
        """Create the folder (or say clearly why not) and remove temp files of killed writers, once."""
        with self._lock:
            if self._ready:
                return
            try:
                self.folder.mkdir(parents=True, exist_ok=True)
                probe = self.folder / f".{writer_tag()}.probe.tmp"
                probe.write_bytes(b"")
                probe.unlink()
            except OSError as e:
                raise ThumbCacheError(
                    f"{self.folder}: cannot write the thumbnail cache there ({e.strerror or e}); pass "
                    f"--thumb-cache DIR with a folder you can write (one per collection).") from None
            _remove_stale_temps(self.folder)
            self._ready = True

    def known_unreadable(self, uid: str) -> str | None:
        """Why `uid` cannot be shown, when that is known without decoding: not in images.csv, its file
        missing, or recorded unreadable (unreadable.json, found by `ensure`) and unchanged since; else None."""
        if uid in self.errors:
            return self.errors[uid]
        state, why = self._state(uid, self._recorded())
        return why if state == "bad" else None

    def _recorded(self) -> dict[str, dict]:
        """`unreadable.json`, read once (on the first question that needs it)."""
        if self._recorded_bad is None:
            self._recorded_bad = _read_unreadable(self.folder)
        return self._recorded_bad

    def get(self, uid: str) -> bytes:
        """The thumbnail, made now if missing or stale. Raises ImageReadError for an unreadable image (one
        that `ensure` recorded as unreadable is not decoded again while it is unchanged)."""
        data = self.read(uid)
        if data is not None:
            return data
        state, why = self._state(uid, self._recorded())
        if state == "bad":  # not in images.csv, missing, or recorded as unreadable and unchanged
            self.errors[uid] = why
            raise ImageReadError(why)
        self.prepare()
        why, notes, _st = make_thumbnail(self.source(uid), self.path(uid), self.size)
        if why is not None:
            self.errors[uid] = why
            raise ImageReadError(why)
        self.errors.pop(uid, None)
        if notes:
            self.notes[uid] = notes
        data = self.read(uid)
        if data is None:  # changed again while it was made: what was made is still the newest picture
            data = self.path(uid).read_bytes()
        return data

    def ensure(self, uids: list[str] | None = None, *, workers: int | None = None,
               progress: bool = True) -> ThumbReport:
        """Make every missing or stale thumbnail of `uids` (default: every image) in worker processes."""
        uids = list(self.collection.uids) if uids is None else list(uids)
        self.prepare()
        known_bad = _read_unreadable(self.folder)
        report, todo, bad = ThumbReport(), [], {}
        for uid in uids:
            state, why = self._state(uid, known_bad)
            if state == "bad":
                bad[uid] = why
            elif state == "fresh":
                report.up_to_date += 1
            else:
                todo.append(uid)
        bad.update(self._make(todo, workers, progress, report, known_bad))
        report.unreadable = [(u, bad[u]) for u in uids if u in bad]
        return report

    def _state(self, uid: str, known_bad: dict[str, dict]) -> tuple[str, str]:
        """("bad", why) when `uid` is unreadable without decoding it (not in images.csv, missing, recorded
        as bad and unchanged), ("fresh", "") when its thumbnail is up to date, else ("make", "")."""
        if uid not in self.collection:
            return "bad", "uid not in images.csv"
        src = self.source(uid)
        st = _stat(src)
        if st is None:
            return "bad", f"image file missing: {src}"
        rec = known_bad.get(uid)
        if rec and rec.get("path") == str(src) and rec.get("size") == st.st_size and rec.get("mtime_ns") == st.st_mtime_ns:
            return "bad", str(rec.get("why", "unreadable"))
        thumb = _stat(self.path(uid))
        if thumb is not None and thumb.st_size > 0 and thumb.st_mtime_ns == st.st_mtime_ns:
            return "fresh", ""
        return "make", ""

    def _make(self, todo: list[str], workers: int | None, progress: bool, report: ThumbReport,
              known_bad: dict[str, dict]) -> dict[str, str]:
        workers = default_workers() if workers is None else workers
        tasks = [(str(self.source(u)), str(self.path(u)), self.size) for u in todo]
        bar = Progress(f"thumbnails {self.size} px", len(tasks)) if progress and tasks else None
        bad: dict[str, str] = {}
        remade = set(todo)
        records = {u: r for u, r in known_bad.items() if u not in remade}
        try:
            results = map_chunks(_make_chunk, tasks, workers=workers, on_done=bar.advance if bar else None)
            for uid, (src, _dest, _size), (why, notes, st) in zip(todo, tasks, results, strict=False):
                if why is None:
                    report.made += 1
                    if notes:
                        report.notes.append((uid, src, notes))
                    continue
                bad[uid] = why
                if st is not None:
                    records[uid] = {"path": src, "size": st[0], "mtime_ns": st[1], "why": why}
        finally:  # also after Ctrl-C: what was found so far is not decoded again
            if bar is not None:
                bar.close()
            if records != known_bad:
                _write_unreadable(self.folder, records)
        return bad


def _read_unreadable(folder: Path) -> dict[str, dict]:
    """The record of unreadable images; an unreadable record is ignored (those images are tried again)."""
    try:
        data = json.loads((folder / UNREADABLE_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return {k: v for k, v in data.items() if isinstance(v, dict)} if isinstance(data, dict) else {}


def _write_unreadable(folder: Path, records: dict[str, dict]) -> None:
    """Keep the record of unreadable images; if it cannot be written, they are only decoded again next time."""
    try:
        atomic_write_text(folder / UNREADABLE_FILE,
                          json.dumps(dict(sorted(records.items())), indent=0, ensure_ascii=False) + "\n")
    except OSError:
        pass


def _remove_stale_temps(folder: Path) -> None:
    """Temp files of thumbnail writers that were killed (dead processes of this host), in one folder scan."""
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return
    for entry in entries:
        m = _TEMP.match(entry.name)
        if m and owner_gone(m.group(1)):
            Path(entry.path).unlink(missing_ok=True)


def ensure(collection: Collection | str | Path, uids: list[str] | None = None, *, size: int = DEFAULT_SIZE,
           root: str | Path | None = None, workers: int | None = None, progress: bool = True) -> ThumbReport:
    """`ThumbCache.for_collection(collection, size, root).ensure(uids, workers=..., progress=...)`."""
    return ThumbCache.for_collection(collection, size, root).ensure(uids, workers=workers, progress=progress)
