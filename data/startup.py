"""How the command-line tools keep start-up and exit cheap: Python's cyclic garbage collector.

The collector runs neither during a command's imports nor at its exit. Why: a command such as
`python -m cluster optics` imports jax, scikit-learn (with scipy.stats) and matplotlib, about a million
objects, none of them garbage. While they are made, the collector runs many times, and each
full collection walks every object made so far; at exit the interpreter collects once more over all of them.
On the 2-core CPU of benchmarks/RESULTS.md that is ~0.45 s of a 1.4 s import (measured with
`python -c "import gc; gc.disable(); import jax, sklearn.cluster, matplotlib.pyplot; gc.freeze()"` against the
same imports alone) and ~0.25 s of shutdown, a quarter of the whole 8,000-signature clustering command (2.8 s).

`gc.freeze()` (CPython >= 3.7) moves every object alive now into a generation the collector never scans:
later collections look only at what the command itself makes, so cycles made by the work are still freed.
Objects are still freed by reference counting as usual; what freezing at exit gives up is only the final
collection of cyclic garbage a process is about to return to the system anyway. Outputs are written and
closed by the commands themselves (data.atomic), and the interpreter flushes stdout and stderr itself.

Only for a process of its own: `for_this_process()` is called where a `__main__` module runs its command
line. Commands invoked inside a longer-lived process (the tests' CliRunner, a notebook) do not freeze, as
frozen objects that later become cyclic garbage are never freed.
"""

from __future__ import annotations

import atexit
import gc
from collections.abc import Iterator
from contextlib import contextmanager

_process = False  # set by for_this_process()


@contextmanager
def imports_without_collection() -> Iterator[None]:
    """Run the block (heavy imports) with the collector off, then freeze what it made and restore the collector.

    Nests: an inner block leaves the collector off for the outer one. Without `for_this_process()`: a no-op."""
    if not _process:
        yield
        return
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        gc.freeze()
        if was_enabled:
            gc.enable()


def owns_process() -> bool:
    """Whether a command line owns this process (`for_this_process()` was called): process-wide settings
    (JAX's compilation cache) are then the command's to make."""
    return _process


def for_this_process() -> None:
    """The command line owns this process: imports run without the collector, and the interpreter's last full
    collection is skipped (everything frozen once the atexit handlers run; atexit runs handlers last-registered
    first, so registered at start-up this runs after the libraries' own, jax's backend clean-up among them).
    Idempotent."""
    global _process
    if not _process:
        atexit.register(gc.freeze)
        _process = True
