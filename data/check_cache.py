"""The cache of `data check`: an image file's result is reused while the file is unchanged.

Keyed by (path, size, mtime_ns, mode): `COLLECTION/.cache/check.jsonl` (beside the thumbnail cache,
`data/thumbs.py`) holds one JSON line per image checked: the path (relative to the collection when the
file is inside it, so a moved collection keeps its cache), the size and mtime the file had when it was
checked, the mode (`quick`: header only; `full`: decoded) and the result (the error, the decoder's notes).
A full result also answers a quick check of the unchanged file (it knows more); a full check after a
quick one decodes.

Written whole and atomically (`data.atomic`) at the end of a check, on Ctrl-C, and every `SAVE_EVERY`
seconds of a long one: a kill loses at most the results since the last save, never the file. Entries of
files that the run did not look at are dropped, so the file follows images.csv. A file this version
cannot read (damaged, another version, not a cache at all) is ignored with a warning and rebuilt; a
cache folder that cannot be written (a read-only collection) gives one warning and the check runs on.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from pathlib import Path

from data.atomic import atomic_write_text
from data.thumbs import cache_root

CHECK_CACHE_FILE = "check.jsonl"
FORMAT = {"format": "visual-signatures data check cache", "version": 1}
QUICK, FULL = "quick", "full"
SAVE_EVERY = 300.0
_PATH = "\x00path\x00"  # the checked file's path inside stored messages (so a moved collection reads right)

Result = tuple[str | None, tuple[str, ...]]  # (error, notes)


class CheckCache:
    """Results of `data check` by (path, size, mtime_ns, mode); see the module docstring."""

    def __init__(self, file: Path, base: Path, warn: Callable[[str], None]) -> None:
        self.file = Path(file)
        self.base = Path(base)
        self._prefix = str(self.base) if str(self.base).endswith(os.sep) else str(self.base) + os.sep
        self.warn = warn
        self.entries: dict[tuple[str, str], dict] = {}
        self.seen: set[str] = set()
        self.canonical = False  # the file on disk is exactly what `save` would write
        self.dirty = False
        self.hits = 0
        self._saved_at = time.monotonic()
        self._writable = True

    @classmethod
    def for_collection(cls, root: str | Path, warn: Callable[[str], None]) -> CheckCache:
        cache = cls(cache_root(root) / CHECK_CACHE_FILE, Path(root), warn)
        cache.load()
        return cache

    def key(self, path: Path) -> str:
        """The file's path relative to the collection folder (absolute when outside it), lexically as
        `Path.relative_to` gives it, by string: at 10^6 images pathlib's parsing was ~10 s of `data check`."""
        name = str(path)
        return name[len(self._prefix):] if name.startswith(self._prefix) else name

    # -- reading -----------------------------------------------------------------------------------------------
    def load(self) -> None:
        try:
            text = self.file.read_text(encoding="utf-8")
        except (FileNotFoundError, NotADirectoryError):  # no cache yet (or no folder for one: `save` says so)
            return
        except (OSError, UnicodeDecodeError) as e:
            self.warn(f"{self.file}: the check cache cannot be read ({e}); it is rebuilt")
            return
        lines = text.splitlines()
        try:
            header_ok = json.loads(lines[0]) == FORMAT if lines else False
        except ValueError:
            header_ok = False
        if not header_ok:
            self.warn(f"{self.file}: not a check cache this version reads; it is rebuilt")
            return
        bad = sum(not self._add_line(line) for line in lines[1:])
        if bad:
            self.warn(f"{self.file}: {bad} damaged lines of the check cache ignored; those images are checked again")
        self.canonical = not bad and text == self._text(self.entries)

    def _add_line(self, line: str) -> bool:
        try:
            e = json.loads(line)
            key = (str(e["path"]), str(e["mode"]))
            entry = {"size": int(e["size"]), "mtime_ns": int(e["mtime_ns"]),
                     "error": None if e["error"] is None else str(e["error"]),
                     "notes": [str(n) for n in e["notes"]]}
        except (ValueError, KeyError, TypeError):
            return False
        if key[1] not in (QUICK, FULL):
            return False
        self.entries[key] = entry
        return True

    def lookup(self, path: Path, st: os.stat_result, mode: str) -> Result | None:
        """The stored result for this file as it is now (`st`), or None. A full result answers a quick check."""
        rel = self.key(path)
        self.seen.add(rel)
        for m in (FULL, QUICK) if mode == QUICK else (FULL,):
            e = self.entries.get((rel, m))
            if e is not None and e["size"] == st.st_size and e["mtime_ns"] == st.st_mtime_ns:
                self.hits += 1
                name = str(path)
                return (None if e["error"] is None else e["error"].replace(_PATH, name),
                        tuple(n.replace(_PATH, name) for n in e["notes"]))
        return None

    # -- writing -----------------------------------------------------------------------------------------------
    def store(self, path: Path, size: int, mtime_ns: int, mode: str, result: Result) -> None:
        rel, name = self.key(path), str(path)
        self.seen.add(rel)
        err, notes = result
        self.entries[(rel, mode)] = {"size": size, "mtime_ns": mtime_ns,
                                     "error": None if err is None else err.replace(name, _PATH),
                                     "notes": [n.replace(name, _PATH) for n in notes]}
        if mode == FULL:
            self.entries.pop((rel, QUICK), None)
        self.dirty = True
        if time.monotonic() - self._saved_at > SAVE_EVERY:
            self.save(final=False)

    @staticmethod
    def _text(entries: dict[tuple[str, str], dict]) -> str:
        lines = [json.dumps(FORMAT, sort_keys=True)]
        for (rel, mode), e in sorted(entries.items()):
            lines.append(json.dumps({"path": rel, "mode": mode, **e}, sort_keys=True, ensure_ascii=False,
                                    separators=(",", ":")))
        return "\n".join(lines) + "\n"

    def save(self, final: bool = True) -> None:
        """Write the cache (atomically) if it changed; at the end of a run, only the files it looked at stay."""
        self._saved_at = time.monotonic()
        entries = {k: v for k, v in self.entries.items() if k[0] in self.seen} if final else self.entries
        if not self._writable or (self.canonical and not self.dirty and len(entries) == len(self.entries)):
            return
        try:
            atomic_write_text(self.file, self._text(entries))
        except OSError as e:
            self._writable = False
            self.warn(f"{self.file.parent}: cannot write the check cache there ({e.strerror or e}); results "
                      f"are not kept for the next check (use --no-cache to skip it)")
            return
        if final:
            self.entries, self.canonical, self.dirty = entries, True, False
