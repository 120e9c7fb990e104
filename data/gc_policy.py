"""When Python's cyclic garbage collector runs: not while work makes millions of objects and no garbage.

The collector starts a pass every ~700 new container objects, and a full pass walks every object alive. Work
that builds a million long-lived objects (imports, a million rows of images.csv) pays for passes that find
nothing. Measured on the 2-core CPU of benchmarks/RESULTS.md: `python -m cluster optics`'s imports of jax,
scikit-learn (with scipy.stats) and matplotlib, 1.4 s -> 1.0 s with the collector off (`python -c "import
gc; gc.disable(); import jax, sklearn.cluster, matplotlib.pyplot; gc.freeze()"` against the same imports
alone), and ~0.3 s of its shutdown (the interpreter's last full pass); reading a collection of 10^6 images
and 2 x 10^5 connections, 9.6 s -> 5.1 s.

- `paused_collection()`: the collector off for a block (a command's heavy imports, data.collection's reading),
  back as it was after; where a command line owns the process, then `gc.freeze()`: every object alive moves
  to a generation no pass walks again, and later passes look only at what the command makes next.
- `for_this_process()` / `owns_process()`: a command line owns this process (called where a `__main__`
  module runs its command line): only then does `paused_collection` freeze, and is the last pass
  at exit skipped (everything frozen when the atexit handlers run; atexit runs handlers last-registered
  first, so this runs after the libraries' own, jax's backend clean-up among them). Commands invoked
  inside a longer-lived process (the tests' CliRunner, a notebook) never freeze: frozen objects that later
  become cyclic garbage would never be freed. Objects are freed by reference counting as usual; outputs are
  written and closed by the commands themselves (data.atomic), and the interpreter flushes stdout/stderr.
"""

from __future__ import annotations

import atexit
import gc
from collections.abc import Iterator
from contextlib import contextmanager

_process = False  # set by for_this_process()


@contextmanager
def paused_collection() -> Iterator[None]:
    """The collector off for the block (heavy imports, a big file read into objects), then as it was.

    In a process a command line owns, what exists at the end of the block is also frozen: those objects live
    as long as the command, and re-enabling the collector would otherwise start a pass over all of them at the
    next allocation (~1 s after reading 10^6 images). Elsewhere they are collected as usual. Nests."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if _process:
            gc.freeze()
        if was_enabled:
            gc.enable()


def owns_process() -> bool:
    """Whether a command line owns this process (`for_this_process()` was called): process-wide settings
    (JAX's compilation cache) are then the command's to make."""
    return _process


def for_this_process() -> None:
    """The command line owns this process (module docstring). Idempotent."""
    global _process
    if not _process:
        atexit.register(gc.freeze)
        _process = True
