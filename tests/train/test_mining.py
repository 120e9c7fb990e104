import numpy as np
import pytest

from data.collection import Collection, Connection, ImageRecord
from train.mining import MiningInputs, mine_triplets, mining_inputs, nearest_non_group


def _unit(x):
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def _brute(sig, q, group, k, pool):
    sims = sig @ sig[q].T  # (n,)
    order = []
    for j in np.argsort(-sims, kind="stable"):
        if j != q and group[j] != group[q] and pool[j]:
            order.append(j)
    return order[:k]


@pytest.mark.parametrize("gallery_block,query_block", [(16, 8), (1000, 1000)])
def test_matches_brute_force_and_never_returns_group(gallery_block, query_block):
    rng = np.random.default_rng(0)
    n, k = 77, 5
    # clustered data: group members are each other's nearest neighbours, so masking matters
    centers = rng.normal(size=(12, 8))
    labels = rng.integers(0, 12, size=n)
    sig = _unit(centers[labels] + 0.3 * rng.normal(size=(n, 8)))
    group = np.where(labels < 8, labels, -1 - np.arange(n))  # groups 0-7, the rest ungrouped
    pool = rng.random(n) > 0.1
    queries = np.arange(0, n, 3)
    idx, sims = nearest_non_group(sig, queries, group, k, pool=pool, gallery_block=gallery_block,
                                  query_block=query_block)
    assert idx.shape == (len(queries), k)
    for row, q in enumerate(queries):
        assert all(group[j] != group[q] and j != q for j in idx[row])
        assert all(pool[j] for j in idx[row])
        np.testing.assert_array_equal(idx[row], _brute(sig, q, group, k, pool))
        np.testing.assert_allclose(sims[row], sig[idx[row]] @ sig[q], atol=1e-5)


def test_fewer_candidates_than_k_gives_minus_one():
    sig = _unit(np.eye(4) + 0.1)
    group = np.array([0, 0, 0, 1])
    idx, _ = nearest_non_group(sig, np.array([0]), group, 3)
    assert idx[0, 0] == 3 and (idx[0, 1:] == -1).all()


def _toy_collection():
    uids = [f"u{i}" for i in range(10)]
    imgs = [ImageRecord(uid=u, path=f"{u}.jpg", url=None, meta={}, line=i + 2) for i, u in enumerate(uids)]
    conns = [
        Connection("u0", "u1", "POSITIVE"), Connection("u1", "u2", "POSITIVE"),  # group {0,1,2}
        Connection("u2", "u3", "DUPLICATE"),  # duplicate of a mate: never a negative
        Connection("u4", "u5", "POSITIVE"),  # held-out group
        Connection("u0", "u9", "NEGATIVE"),  # annotated negative
        Connection("u0", "u4", "NEGATIVE"),  # negative with a held-out image: not used (leak)
    ]
    return Collection(root=__import__("pathlib").Path("."), images=imgs, connections=conns)


def test_mining_inputs_and_triplets():
    col = _toy_collection()
    split_of = {"u0": "train", "u1": "train", "u2": "train", "u3": "train", "u4": "test", "u5": "test"}
    inp = mining_inputs(col, split_of)
    np.testing.assert_array_equal(inp.positives, [[0, 1], [1, 2]])
    assert inp.group[0] == inp.group[1] == inp.group[2] == inp.group[3]
    assert not inp.pool[4] and not inp.pool[5] and inp.pool[6]
    np.testing.assert_array_equal(inp.negatives, [[0, 9]])
    # signatures: make 3 (duplicate of a mate) and 4 (held out) the closest to everyone
    rng = np.random.default_rng(0)
    base = rng.normal(size=(10, 6))
    base[3] = base[:3].mean(0)
    base[4] = base[:3].mean(0) * 1.01
    sig = _unit(base)
    t = mine_triplets(sig, inp, num_negatives=2)
    assert t.shape[1] == 3 and len(t) > 0
    assert set(t[:, 2]).isdisjoint({0, 1, 2, 3, 4, 5})
    assert (0, 1, 9) in {tuple(r) for r in t}
    # anchors with every partner: 0->1, 1->0, 1->2, 2->1; 2 negatives each (+ annotated one)
    assert {(int(a), int(b)) for a, b, _ in t} == {(0, 1), (1, 0), (1, 2), (2, 1)}
    # deterministic
    np.testing.assert_array_equal(t, mine_triplets(sig, inp, num_negatives=2))


def test_no_positives_is_an_error():
    inp = MiningInputs(np.zeros((0, 2), np.int64), -1 - np.arange(3), np.zeros((0, 2), np.int64), np.ones(3, bool))
    with pytest.raises(ValueError, match="POSITIVE"):
        mine_triplets(np.eye(3, dtype=np.float32), inp)


def _exact_brute(sig, q, group, k, pool):
    """float64 cosine, ties to the smaller index: the definition mining follows (data.knn)."""
    from data.knn import exact_distances

    n = len(sig)
    d = exact_distances(sig, np.full(n, q), np.arange(n))
    ok = (np.arange(n) != q) & (group != group[q]) & pool
    cols = np.nonzero(ok)[0]
    return cols[np.lexsort((cols, d[cols]))][:k]


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_mining_is_the_float64_brute_force_with_ties_on_a_float16_memmap(tmp_path, dtype):
    rng = np.random.default_rng(1)
    n, k = 96, 6
    base = rng.normal(size=(n, 16))
    base[40:52] = base[7]  # twelve duplicates of row 7: ties beyond k + margin
    base[60:64] = base[8] + 1e-5 * rng.normal(size=(4, 16))  # near-ties below float32's resolution of a distance
    sig = _unit(base).astype(np.float16)
    path = tmp_path / "sig.f16"
    sig.tofile(path)
    mm = np.memmap(path, dtype=np.float16, mode="r", shape=sig.shape)
    group = np.where(np.arange(n) < 20, np.arange(n) // 4, -1 - np.arange(n))
    pool = rng.random(n) > 0.1
    queries = np.array([7, 8, 41, 0, 95, 60])
    idx, sims = nearest_non_group(mm, queries, group, k, pool=pool, query_block=16, gallery_block=32,
                                  dtype=dtype)
    for row, q in enumerate(queries):
        np.testing.assert_array_equal(idx[row], _exact_brute(sig, q, group, k, pool))
    assert np.all(np.diff(sims, axis=1) <= 0)


# --- annotated negatives: candidates with a bounded share (issue 16) ------------------------------------------


def _inputs_with_negatives(num_neg: int, seed: int = 0):
    """40 images: groups {0,1,2} and {3,4} in training, the rest distractors; `num_neg` annotated NEGATIVE pairs
    between the grouped images and distractors."""
    rng = np.random.default_rng(seed)
    n = 40
    group = -1 - np.arange(n)
    group[[0, 1, 2]] = 0
    group[[3, 4]] = 1
    pos = np.array([[0, 1], [1, 2], [3, 4]], np.int64)
    every = [(a, b) for a in (0, 1, 3) for b in range(5, n)]  # 105 possible pairs, a random num_neg of them
    pairs = [every[i] for i in sorted(rng.permutation(len(every))[:num_neg])]
    neg = np.asarray(pairs[:num_neg], np.int64).reshape(-1, 2)
    sig = _unit(rng.normal(size=(n, 8)))
    return sig, MiningInputs(positives=pos, group=group, negatives=neg, pool=np.ones(n, bool))


def test_triplet_count_does_not_depend_on_the_annotated_negatives():
    from train.mining import planned_triplets

    counts = set()
    for num_neg in (0, 1, 5, 30, 60):
        sig, inp = _inputs_with_negatives(num_neg)
        t = mine_triplets(sig, inp, num_negatives=4)
        counts.add(len(t))
        assert len(t) == planned_triplets(inp, 4)
        assert len({tuple(r) for r in t}) == len(t)  # no row twice
    # 3 positive pairs, 2 ends each, 4 negatives: 24 triplets whatever the number of annotated negatives
    assert counts == {24}


def test_annotated_negatives_appear_within_their_share_and_rotate_by_epoch():
    sig, inp = _inputs_with_negatives(30)
    mine = {int(y) for x, y in inp.negatives if x == 0}
    assert len(mine) > 4
    seen: set[int] = set()
    for epoch in range(len(mine)):
        t = mine_triplets(sig, inp, num_negatives=4, annotated_share=0.5, epoch=epoch)
        for p in (1,):  # anchor 0's only partner
            negs = [int(c) for a, b, c in t if a == 0 and b == p]
            assert len(negs) == 4
            annotated = [c for c in negs if c in mine]
            # half the slots are annotated; a mined neighbour may happen to be annotated too, never fewer
            assert len(annotated) >= 2
            seen.update(annotated)
    assert seen == mine  # rotating through every annotated negative over the epochs
    # the first epoch takes the hardest (most similar) two
    ranked = sorted(mine, key=lambda y: (-float(sig[y] @ sig[0]), y))
    t0 = mine_triplets(sig, inp, num_negatives=4, epoch=0)
    assert set(ranked[:2]) <= {int(c) for a, b, c in t0 if a == 0}


def test_annotated_share_bounds_and_at_least_one_slot():
    from train.mining import annotated_slots

    assert annotated_slots(10, 0.5, 414) == 5
    assert annotated_slots(10, 0.5, 3) == 3
    assert annotated_slots(1, 0.5, 9) == 1  # at least one slot when the anchor has any
    assert annotated_slots(10, 0.0, 9) == 0  # share 0: off
    assert annotated_slots(10, 1.0, 0) == 0
    sig, inp = _inputs_with_negatives(30)
    t = mine_triplets(sig, inp, num_negatives=1, annotated_share=0.5)
    mine = {int(y) for x, y in inp.negatives if x == 0}
    assert [int(c) for a, b, c in t if a == 0][0] in mine


def test_mining_with_annotated_negatives_is_deterministic():
    sig, inp = _inputs_with_negatives(30)
    a = mine_triplets(sig, inp, num_negatives=4, epoch=3)
    b = mine_triplets(sig.copy(), inp, num_negatives=4, epoch=3)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, mine_triplets(sig, inp, num_negatives=4, epoch=4))  # the window moved on
