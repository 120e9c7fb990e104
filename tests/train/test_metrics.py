import numpy as np
import pytest

from train.metrics import evaluate_split, partner_ranks, split_queries, summarize_ranks


def test_summarize_hand_computed():
    # query 1: partners at ranks 1 and 3; query 2: one partner at rank 500 (beyond the thesis cut-off)
    m = summarize_ranks([np.array([1, 3]), np.array([500])], ks=(1, 5), thesis_ks=(20,), cutoff=400)
    assert m["num_queries"] == 2
    assert m["recall@1"] == pytest.approx((0.5 + 0) / 2)
    assert m["recall@5"] == pytest.approx((1 + 0) / 2)
    assert m["hit@1"] == pytest.approx(0.5)
    # AP1 = (1/1 + 2/3) / 2 = 5/6; AP2 = 1/500
    assert m["mAP"] == pytest.approx((5 / 6 + 1 / 500) / 2)
    assert m["median_first_rank"] == pytest.approx((1 + 500) / 2)
    # thesis: AP over hits in the top 400 only: 5/6 and 0 (no hit)
    assert m["thesis_mAP"] == pytest.approx(5 / 12)
    # positions padded with 400: pooled [1, 3, 400]
    assert m["thesis_mean_position"] == pytest.approx(404 / 3)
    assert m["thesis_median_position"] == pytest.approx(3)
    assert m["thesis_min_position"] == pytest.approx((1 + 400) / 2)
    assert m["thesis_recall@20"] == pytest.approx(0.5)


def test_thesis_map_differs_from_standard():
    # one hit at rank 1 out of 10 partners, the rest beyond the list
    r = np.array([1] + list(range(1001, 1010)))
    m = summarize_ranks([r])
    assert m["thesis_mAP"] == pytest.approx(1.0)
    assert m["mAP"] < 0.11


def test_partner_ranks_on_hand_made_ranking():
    # 1-d "signatures" on a circle: angle order gives a known ranking for query 0
    ang = np.array([0.0, 0.3, 0.1, 0.2, 2.0, 0.5])
    sig = np.stack([np.cos(ang), np.sin(ang)], 1).astype(np.float32)
    # query 0 ranks: 2 (0.1) ->1, 3 (0.2) ->2, 1 (0.3) ->3, 5 (0.5) ->4, 4 (2.0) ->5
    ranks = partner_ranks(sig, np.array([0, 4]), [[1, 5], [0]], block=8)
    np.testing.assert_array_equal(ranks[0], [3, 4])
    # query 4 (angle 2.0): nearest by angle distance: 5 (1.5), 1 (1.7), 3 (1.8), 2 (1.9), 0 (2.0) -> 5th
    np.testing.assert_array_equal(ranks[1], [5])
    # a gallery mask drops rows from the ranking
    ok = np.ones(6, bool)
    ok[2] = False
    np.testing.assert_array_equal(partner_ranks(sig, np.array([0]), [[1, 5]], gallery_ok=ok)[0], [2, 3])


def test_tied_partners_get_distinct_ranks():
    sig = np.array([[1, 0], [0.6, 0.8], [0.6, 0.8], [0, 1]], np.float32)
    r = partner_ranks(sig, np.array([0]), [[1, 2]])
    np.testing.assert_array_equal(r[0], [1, 2])
    assert summarize_ranks(r)["mAP"] == pytest.approx(1.0)


def test_evaluate_split_against_brute_force():
    rng = np.random.default_rng(0)
    n = 40
    sig = rng.normal(size=(n, 5)).astype(np.float32)
    sig /= np.linalg.norm(sig, axis=1, keepdims=True)
    uids = [f"u{i}" for i in range(n)]
    group = {f"u{i}": f"g{i // 4}" for i in range(20)}  # 5 groups of 4; u20.. ungrouped
    split_of = {f"u{i}": ("val" if i < 8 else "train") for i in range(20)}
    q, p = split_queries(uids, group, split_of, "val")
    assert list(q) == list(range(8))
    m = evaluate_split(sig, uids, group, split_of, "val", block=8)
    aps = []
    for qi, parts in zip(q, p, strict=True):
        sims = sig @ sig[qi]
        sims[qi] = -np.inf
        order = np.argsort(-sims, kind="stable")
        ranks = np.sort([int(np.where(order == j)[0][0]) + 1 for j in parts])
        aps.append(np.mean(np.arange(1, len(ranks) + 1) / ranks))
    assert m["mAP"] == pytest.approx(np.mean(aps), rel=1e-6)
