"""Atomic file writes: a reader (or a crash) never sees half a file.

Every output of the project (collections, signatures, splits, configs, run files, clusters, reports)
is written the same way: into a hidden temp file beside the target, flushed to disk, then renamed
over the target (`os.replace` is atomic on POSIX). The temp name keeps the target's suffix, so
writers that infer a format from it (`np.savez`, matplotlib) still work.

It lives in `data/` because every other package may import `data/`.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path


def temp_path(path: Path) -> Path:
    """A hidden, per-process temp file in the target's folder, with the target's suffix."""
    return path.with_name(f".{path.stem}.{os.getpid()}.tmp{path.suffix}")


def atomic_write(path: str | Path, write: Callable[[Path], None]) -> None:
    """Call `write(tmp)` to produce the file, fsync it, then rename it over `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(path)
    try:
        write(tmp)
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write UTF-8 text atomically (newlines written as given)."""
    atomic_write(path, lambda p: p.write_text(text, encoding="utf-8", newline=""))
