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
    """A worker dies while the caller is slow (progress, a write): whether the broken pool shows at a result or
    at the next submission (which of the two depends on timing), the run stops with the one sentence."""

    def progress(n: int) -> None:
        time.sleep(1.5)  # the worker that took item 5 is likely gone by the time the next chunk is queued

    with pytest.raises(WorkerDiedError, match="worker process ended abruptly"):
        list(map_chunks(die_on_five, list(range(60)), workers=2, chunk_size=1, on_done=progress))


def test_a_pool_broken_at_a_submission_is_worker_died_error(monkeypatch):
    """The submission case made certain: `pool.submit` raising BrokenProcessPool reached `data thumbs` /
    `data check` as a traceback instead of the one sentence that `fut.result()`'s case gives."""
    from concurrent.futures import ProcessPoolExecutor
    from concurrent.futures.process import BrokenProcessPool

    real, calls = ProcessPoolExecutor.submit, []

    def breaks_third(self, *a, **k):
        calls.append(1)
        if len(calls) == 3:
            raise BrokenProcessPool("a child process terminated abruptly")
        return real(self, *a, **k)

    monkeypatch.setattr(ProcessPoolExecutor, "submit", breaks_third)
    with pytest.raises(WorkerDiedError, match="worker process ended abruptly"):
        list(map_chunks(sorted, [[3, 1], [2], [5, 4], [6]], workers=2, chunk_size=1, min_items=1))
    assert len(calls) == 3
