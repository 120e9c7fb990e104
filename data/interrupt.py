"""Ctrl-C in a command line: one line saying what is kept and what to do, exit 130.

Why: click turns a KeyboardInterrupt into a bare "Aborted!" and exit 1, which says nothing of what is left in
the output folder; a user who stopped a long run needs to know whether to delete anything (never: every
stage writes atomically, data.atomic) and how to go on. 130 is the shell's code for a process ended by SIGINT.
Shared by the commands of data/ and cluster/.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import click


@contextmanager
def ctrl_c_says(what: str | Callable[[], str]) -> Iterator[None]:
    """Ctrl-C in the block: `interrupted: WHAT` on stderr and exit 130; WHAT may be a function, asked then
    (what is kept depends on how far the work got)."""
    try:
        yield
    except KeyboardInterrupt:
        click.echo(f"interrupted: {what() if callable(what) else what}", err=True)
        sys.exit(130)
