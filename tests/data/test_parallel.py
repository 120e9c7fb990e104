"""data.parallel: a worker that dies stops the run with WorkerDiedError (one sentence), whenever it dies."""

from __future__ import annotations

import os
import time

import pytest

from data.parallel import WorkerDiedError, map_chunks


def die_on_five(chunk: list[int]) -> list[int]:
    """Module-level so that spawned workers can import it: the worker that gets item 5 dies (killed, OOM)."""
    if 5 in chunk:
        os._exit(3)
    return chunk


def test_a_worker_dying_while_chunks_are_still_queued_is_worker_died_error():
    """The pool broke between two submissions (the caller was slow: progress, a write): `pool.submit` raised
    BrokenProcessPool, which reached `data thumbs` / `data check` as a traceback instead of the one sentence
    that `fut.result()`'s case gives."""
    slow = []

    def progress(n: int) -> None:
        slow.append(n)
        time.sleep(1.5)  # the worker that took item 5 is gone by the time the next chunk is queued

    with pytest.raises(WorkerDiedError, match="worker process ended abruptly"):
        list(map_chunks(die_on_five, list(range(60)), workers=2, chunk_size=1, on_done=progress))
    assert slow  # the first chunks did finish
