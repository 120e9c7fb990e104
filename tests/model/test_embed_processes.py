"""`embed_collection` (training's start and final export) under jax.distributed: each process computes its share
of the chunks and the chunks are all-gathered, so every process returns one process's signatures, byte for byte.
Two processes simulated here (`_process` and the all-gather faked); a real two-process training run is
tests/train/test_distributed.py::test_two_process_training_exports_what_one_process_exports."""

from __future__ import annotations

import numpy as np
import pytest
from jax.experimental import multihost_utils

import model.embed as E
from model.registry import build

R = 32


@pytest.fixture(scope="module")
def r18():
    return build("resnet18", seed=0)


def test_chunks_hold_whole_batches_and_give_every_process_a_share():
    assert E.memory_plan(5, 2, 2) == E.ChunkPlan(5, 4)  # chunk 0: rows 0-3 (process 0), chunk 1: row 4 (process 1)
    assert E.memory_plan(5, 2, 1) == E.ChunkPlan(5, 6)  # one process: one chunk
    assert E.memory_plan(100_000, 48, 4).chunk_rows == (E.CHUNK_IMAGES // 48) * 48  # never more than CHUNK_IMAGES
    assert E.memory_plan(3, 8192, 2) == E.ChunkPlan(3, 8192)  # a batch larger than a chunk: one batch
    assert E.memory_plan(0, 4, 2).count == 0


def test_two_processes_compute_their_chunks_and_each_gets_the_single_process_signatures(tiny_collection, r18,
                                                                                         monkeypatch):
    def embed():
        return E.embed_collection(tiny_collection, r18, resolution=R, batch_size=1, progress=False, quiet=True)

    ref = embed()
    process = [0]
    monkeypatch.setattr(E, "_process", lambda: (process[0], 2))
    computed: dict[int, list[int]] = {}
    real_chunks = E.embed_chunks

    def spy(coll, embedder, plan, chunks, **kw):
        computed.setdefault(process[0], []).extend(chunks)
        yield from real_chunks(coll, embedder, plan, chunks, **kw)

    sent: dict[int, list] = {0: [], 1: []}  # what each process contributed, round by round

    def allgather(tree):  # the other process's contribution of this round, once it has run
        me = process[0]
        sent[me].append(tree)
        rnd = len(sent[me]) - 1
        theirs = sent[1 - me][rnd] if rnd < len(sent[1 - me]) else tree
        pair = (tree, theirs) if me == 0 else (theirs, tree)
        return tuple(np.stack([a, b]) for a, b in zip(*pair, strict=True))

    monkeypatch.setattr(E, "embed_chunks", spy)
    monkeypatch.setattr(multihost_utils, "process_allgather", allgather)
    embed()  # process 0 first: process 1 has not contributed yet (its result is not looked at)
    process[0] = 1
    got = {1: embed()}
    process[0], sent[0] = 0, []
    got[0] = embed()
    # 5 rows in chunks of 3: process 0 embedded rows 0-2 (u3, u1, bad), process 1 rows 3-4 (u2, gone)
    assert computed == {0: [0, 0], 1: [1]}
    for sig in got.values():
        assert sig.uids == ref.uids == ["u3", "u1", "u2"] and sig.skipped == ref.skipped == ["bad", "gone"]
        assert sig.vectors.dtype == np.float32 and sig.vectors.tobytes() == ref.vectors.tobytes()
        assert sig.meta == ref.meta
