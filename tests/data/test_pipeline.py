from __future__ import annotations

import csv

import numpy as np
import pytest

from data.augment import AugmentConfig
from data.pipeline import eval_dataset, open_prepared, triplet_dataset
from data.prepare import prepare_collection
from data.preprocess import IMAGENET_MEAN, IMAGENET_STD, load_for_test

from .conftest import write_image

COLOURS = {"red": (230, 20, 40), "green": (30, 200, 60), "blue": (20, 40, 220), "gray": (128, 128, 128)}


@pytest.fixture(scope="module")
def solid_source(tmp_path_factory):
    root = tmp_path_factory.mktemp("solid")
    with open(root / "images.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["uid", "path"])
        for name, colour in COLOURS.items():
            write_image(root / f"{name}.png", colour, size=(40, 30))
            w.writerow([name, f"{name}.png"])
    prepare_collection(root, max_side=64)
    return open_prepared(root / "prepared")


def _expected(colour):
    return (np.asarray(colour) / 255.0 - np.asarray(IMAGENET_MEAN)) / np.asarray(IMAGENET_STD)


def test_triplet_batches_are_stacked_and_normalised(solid_source):
    trip = np.tile([[0, 1, 2]], (6, 1))  # A red, B green, C blue
    it = triplet_dataset(solid_source, trip, resolution=16, batch_size=3, seed=0, augment=AugmentConfig.off(),
                         shuffle=False)
    batches = list(it)
    assert len(batches) == 2
    b = batches[0]
    assert b["images"].shape == (9, 16, 16, 3) and b["images"].dtype == np.float32
    assert b["triplets"].tolist() == [[0, 1, 2]] * 3
    for k, name in enumerate(["red", "green", "blue"]):
        part = b["images"][3 * k : 3 * (k + 1)]
        # JPEG (prepare re-encodes) moves a solid colour by at most a couple of levels
        np.testing.assert_allclose(part, np.broadcast_to(_expected(COLOURS[name]), part.shape), atol=3 / 255 / 0.224)
    gray = next(iter(triplet_dataset(solid_source, np.array([[3, 3, 3]]), resolution=8, batch_size=1, seed=0,
                                     augment=AugmentConfig.off())))
    np.testing.assert_allclose(gray["images"][0, 0, 0], _expected(COLOURS["gray"]), atol=1e-5)
    raw = next(iter(triplet_dataset(solid_source, trip, resolution=8, batch_size=2, seed=0, output="uint8",
                                    augment=AugmentConfig.off())))
    assert raw["images"].dtype == np.uint8 and raw["images"].shape == (6, 8, 8, 3)


def test_augmented_batches_resume_exactly(demo_small):
    _, _, prepared = demo_small
    src = open_prepared(prepared.path)
    rng = np.random.default_rng(0)
    trip = src.indices[rng.integers(0, len(src), (30, 3))]
    kw = dict(resolution=24, batch_size=4, seed=7, augment=AugmentConfig(), num_epochs=2)
    it = triplet_dataset(src, trip, **kw)
    first = [next(it) for _ in range(3)]
    state = it.get_state()
    rest = list(it)
    assert len(first) + len(rest) == 60 // 4
    resumed = triplet_dataset(src, trip, **kw)
    resumed.set_state(state)
    again = list(resumed)
    assert len(again) == len(rest)
    for x, y in zip(rest, again, strict=True):
        np.testing.assert_array_equal(x["images"], y["images"])
        np.testing.assert_array_equal(x["triplets"], y["triplets"])
    # a fresh run replays the same pixels; another seed gives other views and order
    fresh = triplet_dataset(src, trip, **kw)
    np.testing.assert_array_equal(next(fresh)["images"], first[0]["images"])
    other = next(triplet_dataset(src, trip, **{**kw, "seed": 8}))
    assert not np.array_equal(other["images"], first[0]["images"])
    # epochs: every triplet once per epoch (7 full batches = 28 of 30 per epoch), reshuffled
    seen = np.concatenate([b["triplets"] for b in first + rest])
    assert len(seen) == 60


def test_shards_partition_the_elements(demo_small):
    _, _, prepared = demo_small
    src = open_prepared(prepared.path)
    trip = np.stack([src.indices[:12]] * 3, axis=1)
    kw = dict(resolution=8, batch_size=2, seed=1, augment=AugmentConfig.off())
    shards = [np.concatenate([b["triplets"][:, 0] for b in triplet_dataset(src, trip, shard_index=i, shard_count=2,
                                                                          **kw)]) for i in range(2)]
    assert len(shards[0]) == len(shards[1]) == 6
    assert sorted(np.concatenate(shards).tolist()) == sorted(src.indices[:12].tolist())


def test_shards_together_are_the_global_batches_with_the_same_augmentation(demo_small):
    """Under jax.distributed each process reads one shard with batch B/P. Before, an element's augmentation
    was seeded by its place in the shard, so two processes trained on other views than one process (and
    learnt another network). Shard i's batch k is now global batch k's elements i, i+P, ... with the pixels
    one process gives them."""
    _, _, prepared = demo_small
    src = open_prepared(prepared.path)
    trip = src.indices[np.random.default_rng(1).integers(0, len(src), (16, 3))]
    kw = dict(resolution=16, seed=5, augment=AugmentConfig(), output="uint8")
    whole = list(triplet_dataset(src, trip, batch_size=4, **kw))
    parts = [list(triplet_dataset(src, trip, batch_size=2, shard_index=i, shard_count=2, **kw)) for i in range(2)]
    assert len(parts[0]) == len(parts[1]) == len(whole) == 4
    for k, batch in enumerate(whole):
        imgs = batch["images"].reshape(3, 4, 16, 16, 3)  # [A_1..A_4, B_1..B_4, C_1..C_4]
        for i in range(2):
            mine = parts[i][k]["images"].reshape(3, 2, 16, 16, 3)
            np.testing.assert_array_equal(mine, imgs[:, i::2])
            np.testing.assert_array_equal(parts[i][k]["triplets"], batch["triplets"][i::2])


@pytest.mark.slow
def test_worker_processes_give_the_same_batches(demo_small):
    _, _, prepared = demo_small
    src = open_prepared(prepared.path)
    trip = src.indices[np.random.default_rng(1).integers(0, len(src), (12, 3))]
    kw = dict(resolution=16, batch_size=3, seed=3, augment=AugmentConfig())
    local = list(triplet_dataset(src, trip, **kw))
    it = triplet_dataset(src, trip, workers=2, **kw)
    try:
        b0 = next(it)
        state = it.get_state()
        remote = [b0] + list(it)
    finally:
        it.close()
    assert len(remote) == len(local) == 4
    for x, y in zip(local, remote, strict=True):
        np.testing.assert_array_equal(x["images"], y["images"])
    it2 = triplet_dataset(src, trip, workers=2, **kw)
    try:
        it2.set_state(state)
        np.testing.assert_array_equal(next(it2)["images"], local[1]["images"])
    finally:
        it2.close()


def test_eval_batches_pad_and_match_test_time(demo_small):
    root, _, prepared = demo_small
    src = open_prepared(prepared.path)
    idx = src.indices[[5, 1, 9, 30, 2]]
    batches = list(eval_dataset(src, idx, resolution=20, batch_size=2))
    assert [b["images"].shape for b in batches] == [(2, 20, 20, 3)] * 3
    assert np.concatenate([b["index"] for b in batches]).tolist() == idx.tolist() + [-1]
    assert np.concatenate([b["valid"] for b in batches]).tolist() == [True] * 5 + [False]
    np.testing.assert_array_equal(batches[0]["images"][0], load_for_test(src[int(idx[0])][1], 20))
    assert not batches[-1]["images"][1].any()
    with pytest.raises(KeyError, match="not in the prepared dataset"):
        eval_dataset(src, [10**6], resolution=20, batch_size=2)
