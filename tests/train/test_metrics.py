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


@pytest.mark.parametrize("tile_elements", [1 << 24, 8 * 8 * 8])
def test_blocked_ranks_equal_the_full_ranking_with_exact_ties(tmp_path, monkeypatch, tile_elements):
    """Small integer rows: every product is exact in float32, so ties are real ties in any summation order."""
    import train.metrics as metrics

    monkeypatch.setattr(metrics, "_TILE_ELEMENTS", tile_elements)  # 8 gallery rows per tile: many tiles
    rng = np.random.default_rng(2)
    n = 70
    sig = rng.integers(-3, 4, size=(n, 6)).astype(np.float16)
    sig[10:14] = sig[2]  # duplicates: ties among partners and non-partners
    path = tmp_path / "sig.f16"
    sig.tofile(path)
    mm = np.memmap(path, dtype=np.float16, mode="r", shape=sig.shape)
    ok = rng.random(n) > 0.1
    queries = np.array([0, 2, 11, 69, 5])
    partners = [[2, 10, 13], [10, 11, 12, 13, 40], [2], list(range(30, 45)), [1]]
    got = metrics.partner_ranks(mm, queries, partners, gallery_ok=ok, block=8)
    s64 = sig.astype(np.int64)
    for q, parts, r in zip(queries, partners, got, strict=True):
        sims = s64 @ s64[q]
        valid = ok & (np.arange(n) != q)
        psims = np.where(valid[parts], sims[parts], np.iinfo(np.int64).min)
        want = np.sort([1 + int(np.sum(valid & (sims > v))) for v in psims])
        for i in range(1, len(want)):
            want[i] = max(want[i], want[i - 1] + 1)
        np.testing.assert_array_equal(r, want)


def test_evaluate_command_ranks_a_float16_store_in_tiles(tmp_path, monkeypatch):
    """`python -m train evaluate` on a memory-mapped float16 store, ranked tile by tile (many gallery tiles),
    gives the figures of a float64 brute-force ranking."""
    import json

    from click.testing import CliRunner

    import train.metrics as metrics
    from data.collection import Connection, ImageRecord, write_connections, write_images
    from data.signatures import Signatures, save_signatures
    from train.__main__ import cli

    monkeypatch.setattr(metrics, "_TILE_ELEMENTS", 8 * 8 * 16)
    rng = np.random.default_rng(3)
    n = 120
    uids = [f"u{i}" for i in range(n)]
    centres = rng.normal(size=(10, 8))
    vec = rng.normal(size=(n, 8))
    vec[:40] = centres[np.arange(40) // 4] + 0.5 * rng.normal(size=(40, 8))  # ten groups of four
    vec /= np.linalg.norm(vec, axis=1, keepdims=True)
    conns = [Connection(f"u{4 * g + i}", f"u{4 * g + i + 1}", "POSITIVE", split="test" if g < 5 else "train")
             for g in range(10) for i in range(3)]
    write_images(tmp_path / "images.csv", [ImageRecord(u, f"{u}.jpg", None, {}, 0) for u in uids])
    write_connections(tmp_path / "connections.csv", conns)
    save_signatures(tmp_path / "sig.npz", Signatures(uids, vec.astype(np.float32)), dtype="float16")
    res = CliRunner().invoke(cli, ["evaluate", str(tmp_path / "sig.npz"), "--collection", str(tmp_path)])
    assert res.exit_code == 0, res.output
    out = json.loads(res.output)
    v = np.load(tmp_path / "sig.npz")["vectors"].astype(np.float64)
    ranks = []
    for q in range(20):
        sims = v @ v[q]
        sims[q] = -np.inf
        parts = [j for j in range(4 * (q // 4), 4 * (q // 4) + 4) if j != q]
        ranks.append(np.sort([1 + int(np.sum(sims > sims[j])) for j in parts]))
    assert out["num_queries"] == 20
    assert out["mAP"] == pytest.approx(summarize_ranks(ranks)["mAP"], rel=1e-12)
