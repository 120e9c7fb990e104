"""Crash-point injection for the fault suite, loaded by Python at start-up (`sitecustomize`).

A test puts this folder on PYTHONPATH of a subprocess and sets
- `VS_CRASH_ROOT`: only file-system steps on paths under this folder count (library caches elsewhere do not);
- `VS_CRASH_AT=N`: the process kills itself with SIGKILL just before its N-th step (0: never);
- `VS_CRASH_LOG`: a file that receives one line per step ("N kind path"), so that a first, uninterrupted
  run tells the test how many steps the command takes;
- `VS_CRASH_MATCH`: if set, only steps whose path contains this text are counted (e.g. "checkpoints", to
  kill a training run inside its N-th checkpoint write whatever came before).

A *step* is any call that changes the file system: opening a file for writing, closing a written file,
fsync, rename/replace, unlink, truncate, mkdir, rmdir. Killing the process just before each of them in
turn is a kill "at any moment" as far as the files are concerned: between two steps nothing on disk
changes. SIGKILL is what a scheduler's OOM killer or `kill -9` does: no handler, no `finally`, no flush.

This is test scaffolding only; nothing of the product imports it.
"""

from __future__ import annotations

import builtins
import io
import os
import signal

_ROOT = os.environ.get("VS_CRASH_ROOT")
_AT = int(os.environ.get("VS_CRASH_AT", "0") or 0)
_LOG = os.environ.get("VS_CRASH_LOG")
_MATCH = os.environ.get("VS_CRASH_MATCH", "")


def _install() -> None:  # noqa: C901 - one closure per patched call, kept together on purpose
    root = os.path.realpath(_ROOT)
    log_fd = os.open(_LOG, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644) if _LOG else None
    state = {"n": 0}
    real = {
        "open": builtins.open,
        "replace": os.replace,
        "rename": os.rename,
        "unlink": os.unlink,
        "remove": os.remove,
        "rmdir": os.rmdir,
        "mkdir": os.mkdir,
        "truncate": os.truncate,
        "fsync": os.fsync,
        "ftruncate": os.ftruncate,
    }

    def under_root(path) -> bool:
        try:
            p = os.fspath(path)
        except TypeError:
            return False
        if isinstance(p, bytes):
            p = os.fsdecode(p)
        return os.path.realpath(os.path.abspath(p)).startswith(root)

    def fd_path(fd: int) -> str:
        try:
            return os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            return ""

    def step(kind: str, path) -> None:
        if not under_root(path) or _MATCH not in os.fsdecode(os.fspath(path)):
            return
        state["n"] += 1
        if log_fd is not None:
            os.write(log_fd, f"{state['n']} {kind} {os.fspath(path)}\n".encode())
        if state["n"] == _AT:
            os.kill(os.getpid(), signal.SIGKILL)

    class _Written(io.IOBase):
        """A file opened for writing: closing it is a step (the data may still be in Python's buffer)."""

        def __init__(self, fh, path):
            object.__setattr__(self, "_fh", fh)
            object.__setattr__(self, "_path", path)

        def __getattr__(self, name):
            return getattr(self._fh, name)

        def __iter__(self):
            return iter(self._fh)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.close()

        def write(self, data):
            return self._fh.write(data)

        def writelines(self, lines):
            return self._fh.writelines(lines)

        def read(self, *a):
            return self._fh.read(*a)

        def readline(self, *a):
            return self._fh.readline(*a)

        def seek(self, *a):
            return self._fh.seek(*a)

        def tell(self):
            return self._fh.tell()

        def flush(self):
            return self._fh.flush()

        def fileno(self):
            return self._fh.fileno()

        def readable(self):
            return self._fh.readable()

        def writable(self):
            return self._fh.writable()

        def seekable(self):
            return self._fh.seekable()

        def truncate(self, *a):
            return self._fh.truncate(*a)

        @property
        def closed(self):
            return self._fh.closed

        def close(self):
            if not self._fh.closed:
                step("close", self._path)
            self._fh.close()

    def open_(file, mode="r", *args, **kwargs):
        writing = isinstance(mode, str) and any(c in mode for c in "wax+")
        if writing and not isinstance(file, int):
            step("open", file)
        fh = real["open"](file, mode, *args, **kwargs)
        return _Written(fh, file) if writing and not isinstance(file, int) and under_root(file) else fh

    def two(kind):
        def f(src, dst, *a, **k):
            step(kind, dst)
            return real[kind](src, dst, *a, **k)

        return f

    def one(kind):
        def f(path, *a, **k):
            step(kind, path)
            return real[kind](path, *a, **k)

        return f

    def by_fd(kind):
        def f(fd, *a):
            step(kind, fd_path(fd))
            return real[kind](fd, *a)

        return f

    builtins.open = io.open = open_
    os.replace, os.rename = two("replace"), two("rename")
    for kind in ("unlink", "remove", "rmdir", "mkdir", "truncate"):
        setattr(os, kind, one(kind))
    os.fsync, os.ftruncate = by_fd("fsync"), by_fd("ftruncate")


if _ROOT:
    _install()
