"""Atomic file writes: a reader (or a crash) never sees half a file.

Every output of the project (collections, signatures, splits, configs, run files, clusters, reports)
is written the same way: into a hidden temp file beside the target, flushed to disk, then renamed
over the target (`os.replace` is atomic on POSIX), and the folder is synced so that the rename itself
survives a power cut. The temp name keeps the target's suffix, so writers that infer a format from it
(`np.savez`, matplotlib) still work.

Folders (weights, a prepared dataset) are written the same way by `atomic_dir`: built complete in a
hidden scratch folder beside the target, then swapped in with two renames (the old folder is moved
aside first and deleted last).

A process killed with SIGKILL (a scheduler, the OOM killer) runs no clean-up, so its temp file or
scratch folder stays. Their names carry the process id and the host (`PID@HOST`); the next write of the
same target removes those of this host's dead processes (never those of a live process, nor another
host's on a shared filesystem), so a crash leaves no litter behind once the command is run again. A
folder killed between its two renames is put back from the moved-aside copy.

It lives in `data/` because every other package may import `data/`.
"""

from __future__ import annotations

import errno
import os
import shutil
import socket
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

_HOST = "".join(ch if ch.isalnum() or ch == "-" else "-" for ch in socket.gethostname()) or "host"
# Scratch folders named by versions before the PID@HOST tag (`.NAME.tmp-XXXXXXXX`, `.NAME.old-PID`) are
# removed once nobody can still be writing them.
LEGACY_STALE_SECONDS = 3600.0


def writer_tag(pid: int | None = None) -> str:
    """`PID@HOST` of this process (or of `pid` on this host): the owner part of every temp name."""
    return f"{os.getpid() if pid is None else pid}@{_HOST}"


def temp_path(path: Path, pid: int | None = None) -> Path:
    """A hidden, per-process temp file in the target's folder, with the target's suffix."""
    return path.with_name(f".{path.stem}.{writer_tag(pid)}.tmp{path.suffix}")


def pid_alive(pid: int) -> bool:
    """Whether a process with this id exists on this machine (a permission error means it does)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def owner_gone(owner: str) -> bool:
    """Whether the writer named by a `PID@HOST` tag is a dead process of this host."""
    pid, _, host = owner.partition("@")
    return pid.isdigit() and host == _HOST and int(pid) != os.getpid() and not pid_alive(int(pid))


def _siblings(path: Path) -> list[Path]:
    try:
        return sorted(path.parent.iterdir())
    except OSError:
        return []


def stale_temps(path: Path) -> list[Path]:
    """Temp files of `path` left by dead processes of this host (see the module docstring)."""
    prefix, suffix = f".{path.stem}.", f".tmp{path.suffix}"
    return [p for p in _siblings(path)
            if p.name.startswith(prefix) and p.name.endswith(suffix) and p.is_file()
            and owner_gone(p.name[len(prefix) : len(p.name) - len(suffix)])]


def fsync_dir(path: Path) -> None:
    """Make a rename or a new entry in `path` durable (no-op where folders cannot be opened)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def fsync_file(path: Path) -> None:
    with open(path, "rb+") as fh:
        os.fsync(fh.fileno())


class NotARegularFileError(OSError):
    """The output path names a device, a pipe or a socket: the rename would replace it with a plain file."""


def atomic_write(path: str | Path, write: Callable[[Path], None]) -> None:
    """Call `write(tmp)` to produce the file, fsync it, then rename it over `path`.

    Refused (NotARegularFileError, an OSError) when `path` is a device, a pipe or a socket: renaming over it
    would put a plain file where /dev/null or a named pipe was (a user's `--json /dev/stdout` did that)."""
    path = Path(path)
    if path.exists() and not path.is_file() and not path.is_dir():
        raise NotARegularFileError(errno.EINVAL, "not a regular file (a device or a pipe): give a file name", str(path))
    path.parent.mkdir(parents=True, exist_ok=True)
    for stale in stale_temps(path):
        stale.unlink(missing_ok=True)
    tmp = temp_path(path)
    try:
        write(tmp)
        fsync_file(tmp)
        os.replace(tmp, path)
        fsync_dir(path.parent)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write UTF-8 text atomically (newlines written as given)."""
    atomic_write(path, lambda p: p.write_text(text, encoding="utf-8", newline=""))


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    atomic_write(path, lambda p: p.write_bytes(data))


def _scratch_owner(path: Path, name: str) -> tuple[str, str] | None:
    """("tmp"|"old", owner) when `path` is a scratch folder of `name`, else None."""
    for kind in ("tmp", "old"):
        prefix = f".{name}.{kind}-"
        if path.name.startswith(prefix) and path.is_dir():
            owner = path.name[len(prefix):]
            return kind, owner.rsplit(".", 1)[0] if kind == "tmp" else owner  # drop mkdtemp's suffix
    return None


def _scratch_stale(path: Path, owner: str) -> bool:
    if "@" not in owner:  # an older version's name
        return time.time() - path.stat().st_mtime > LEGACY_STALE_SECONDS
    return owner_gone(owner)


def recover_dir(directory: str | Path, is_complete: Callable[[Path], bool] = lambda p: True) -> list[Path]:
    """Clean up after `atomic_dir` calls that were killed; returns the scratch folders dealt with.

    Scratch folders of dead writers are deleted, except that when `directory` itself is missing (a kill
    between the two renames) a moved-aside old folder that `is_complete` accepts is put back instead.
    """
    directory = Path(directory)
    dealt = []
    for path in _siblings(directory):
        found = _scratch_owner(path, directory.name)
        if found is None or not _scratch_stale(path, found[1]):
            continue
        if found[0] == "old" and not directory.exists() and is_complete(path):
            os.replace(path, directory)
        else:
            shutil.rmtree(path, ignore_errors=True)
        dealt.append(path)
    return dealt


def _umask() -> int:
    """The process's umask (read by setting it and back: there is no getter)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_dir(directory: str | Path, write: Callable[[Path], None],
               is_complete: Callable[[Path], bool] = lambda p: True) -> Path:
    """Call `write(scratch)` to build the folder's content, then swap it in for `directory`.

    A reader sees the old folder or the whole new one; during the instant between the two renames the
    target is missing and the old one sits beside it, which `recover_dir` (run first, here) puts back.
    """
    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    recover_dir(directory, is_complete)
    tmp = Path(tempfile.mkdtemp(prefix=f".{directory.name}.tmp-{writer_tag()}.", dir=directory.parent))
    old = None
    try:
        os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp's 0700 would lock colleagues and web servers out
        write(tmp)
        fsync_dir(tmp)
        if directory.exists():
            old = directory.with_name(f".{directory.name}.old-{writer_tag()}")
            os.replace(directory, old)
        os.replace(tmp, directory)
    except BaseException:
        if old is not None and not directory.exists():
            os.replace(old, directory)
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    fsync_dir(directory.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return directory


def lock_folder(folder: str | Path, busy: Callable[[], Exception]) -> int | None:
    """Hold an exclusive `flock` on `folder` (created if missing) until `unlock_folder` or the process ends, so
    that two runs writing into it stop at once instead of overwriting each other's files. Raises `busy()` when
    another process holds it; returns None, locking nothing, on a file system without locks (some network
    mounts)."""
    import fcntl

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    fd = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise busy() from None
    except OSError:
        os.close(fd)
        return None
    return fd


def unlock_folder(fd: int | None) -> None:
    if fd is not None:
        os.close(fd)

