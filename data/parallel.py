"""Per-file work over a whole archive in worker processes: `data thumbs` and `data check` share it.

Why processes: decoding is CPU work that holds the GIL for most of its time in PIL's Python parts (the
JPEG damage checks of `data.image` walk the compressed data in Python), so threads do not scale.

- Items go to the workers in chunks (one pickled call per chunk, not per image), at most a few chunks per
  worker in flight, so a million items never sit in the queue at once; results come back in the order of
  the items, so a parallel run gives exactly what a serial run gives.
- `workers <= 1` runs in this process (no pool): the serial reference, and what the fault suite kills.
- Workers are started with `spawn` (a fork of a process that already runs threads, e.g. JAX's, can hang).
- Ctrl-C at a terminal signals the whole process group: the workers ignore it and the main process alone
  stops them (no traceback from each worker). A main process killed outright stops nobody, so each
  worker watches its parent and exits when it is gone.
- A worker that dies (killed, out of memory) stops the run with `WorkerDiedError`, a sentence, not a
  traceback; finished files are kept (each is written atomically), so running again does the rest.
- `Progress` prints `what: done/total (N/s)` on stderr, at most once a second.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import TextIO, TypeVar

T = TypeVar("T")
R = TypeVar("R")


def default_workers() -> int:
    """One worker per CPU core this process may use."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def _watch_parent(parent: int) -> None:
    while os.getppid() == parent:
        time.sleep(1.0)
    os._exit(0)


def _init_worker(parent: int) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    threading.Thread(target=_watch_parent, args=(parent,), daemon=True).start()


class Progress:
    """`what: done/total (rate/s)` on stderr: rewritten in place at a terminal, one line per update otherwise."""

    def __init__(self, what: str, total: int, *, unit: str = "images", stream: TextIO | None = None,
                 every: float = 1.0) -> None:
        self.what, self.total, self.unit, self.every = what, total, unit, every
        self.stream = stream if stream is not None else sys.stderr
        self.done = 0
        self.start = self._last = time.monotonic()
        self._tty = bool(getattr(self.stream, "isatty", lambda: False)())

    def rate(self) -> float:
        return self.done / max(time.monotonic() - self.start, 1e-9)

    def line(self) -> str:
        return f"{self.what}: {self.done}/{self.total} {self.unit} ({self.rate():.1f} {self.unit}/s)"

    def advance(self, n: int = 1) -> None:
        self.done += n
        now = time.monotonic()
        if now - self._last >= self.every:
            self._last = now
            self._write(self.line())

    def close(self) -> None:
        if self.total:
            self._write(self.line(), final=True)

    def _write(self, text: str, final: bool = False) -> None:
        if self._tty:
            self.stream.write("\r" + text + ("\n" if final else ""))
        else:
            self.stream.write(text + "\n")
        self.stream.flush()


def map_chunks(fn: Callable[[list[T]], list[R]], items: Sequence[T], *, workers: int, chunk_size: int = 16,
               on_done: Callable[[int], None] | None = None, min_items: int = 8) -> Iterator[R]:
    """`fn` over `items` in chunks, in `workers` processes (`fn` must be a module-level function); yields
    one result per item, in the items' order. `on_done(n)` after each chunk (progress). Chunks hold at most
    `chunk_size` items, fewer when there are few items, so that every worker gets several. Fewer than
    `min_items` items run in this process: starting workers (~0.3 s each) would cost more than they save."""
    if len(items) < min_items:
        workers = 1
    if workers > 1:
        chunk_size = max(1, min(chunk_size, -(-len(items) // (4 * workers))))
    chunks = [list(items[i : i + chunk_size]) for i in range(0, len(items), chunk_size)]
    if workers <= 1 or len(chunks) <= 1:
        for chunk in chunks:
            results = fn(chunk)
            if on_done is not None:
                on_done(len(chunk))
            yield from results
        return
    ctx = multiprocessing.get_context("spawn")
    pool = ProcessPoolExecutor(min(workers, len(chunks)), mp_context=ctx, initializer=_init_worker,
                               initargs=(os.getpid(),))
    pending: deque[tuple[int, Future]] = deque()
    todo = iter(chunks)
    try:
        for chunk in todo:
            pending.append((len(chunk), pool.submit(fn, chunk)))
            if len(pending) >= 4 * workers:
                yield from _next_done(pending, on_done)
        while pending:
            yield from _next_done(pending, on_done)
    except BrokenProcessPool as e:  # at a result, or at a submission (a worker killed while the caller wrote):
        raise WorkerDiedError(WORKER_DIED) from e  # what is done is kept by the callers' atomic writes
    finally:  # also on Ctrl-C or when the caller stops early: nothing queued runs any more
        pool.shutdown(wait=True, cancel_futures=True)


class WorkerDiedError(RuntimeError):
    """A worker process ended without finishing its chunk (killed, or out of memory)."""


WORKER_DIED = ("a worker process ended abruptly (killed, or out of memory: try fewer --workers); what was finished "
               "is kept, run the command again to do the rest.")


def _next_done(pending: deque[tuple[int, Future]], on_done: Callable[[int], None] | None) -> list:
    n, fut = pending.popleft()
    results = fut.result()
    if on_done is not None:
        on_done(n)
    return results
