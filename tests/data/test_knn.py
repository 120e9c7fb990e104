"""data.knn: the blocked device search with its float64 certificate equals the float64 brute force, exactly."""

from __future__ import annotations

import numpy as np
import pytest

from data.knn import KnnError, error_bound, exact_distances, knn, radius_within


def brute(x, k, metric="cosine", queries=None, groups=None, allowed=None):
    """The definition: every allowed row but the query, sorted by (exact float64 distance, index)."""
    n = len(x)
    qs = np.arange(n) if queries is None else np.asarray(queries)
    dist, idx = [], []
    for i in qs:
        d = exact_distances(x, np.full(n, i), np.arange(n), metric)
        ok = np.arange(n) != i
        if groups is not None:
            ok &= groups != groups[i]
        if allowed is not None:
            ok &= allowed
        cols = np.nonzero(ok)[0]
        c = cols[np.lexsort((cols, d[cols]))][:k]
        dist.append(np.concatenate([d[c], np.full(k - len(c), np.inf)]))
        idx.append(np.concatenate([c, np.full(k - len(c), -1)]))
    return np.array(dist).reshape(len(qs), k), np.array(idx, np.int64).reshape(len(qs), k)


def tied_rows(n=90, d=12, seed=0):
    """Random rows with exact duplicates, a scaled copy (cosine tie), zero rows and a tight cluster."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d)).astype(np.float32)
    x[10:16] = x[3]  # six duplicates of row 3: seven rows at distance 0 of each other
    x[16] = 2 * x[3]  # same direction: cosine distance 0 too
    x[20] = 0
    x[21] = 0
    x[30:40] = x[5] + 1e-4 * rng.normal(size=(10, d))  # near-ties below the float32 resolution of a distance
    return x


def assert_same(got, want):
    np.testing.assert_array_equal(got[1], want[1])
    np.testing.assert_array_equal(got[0], want[0])


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
@pytest.mark.parametrize("k,block,gallery_block,margin",
                         [(1, 16, 16, None), (4, 8, 32, 0), (7, 32, 32, 2), (20, 2048, 8192, None)])
def test_equals_float64_brute_force_with_ties(metric, k, block, gallery_block, margin):
    x = tied_rows()
    stats = {}
    got = knn(x, k, metric=metric, block=block, gallery_block=gallery_block, margin=margin, stats=stats)
    assert_same(got, brute(x, k, metric))
    assert got[0].dtype == np.float64 and got[1].dtype == np.int64
    assert np.all(np.diff(got[0], axis=1) >= 0)


def test_archive_like_rows_with_many_tiles_and_groups():
    """Tight planted groups (the certificate's hard case: neighbours ~1e-3 apart) over many tiles."""
    rng = np.random.default_rng(9)
    n, d = 500, 24
    centres = rng.normal(size=(60, d))
    x = centres[rng.integers(0, 60, n)] + 0.02 * rng.normal(size=(n, d))
    x[::7] = rng.normal(size=(len(x[::7]), d))
    x[100:104] = x[50]
    x = x.astype(np.float32)
    groups = np.where(rng.random(n) < 0.3, rng.integers(0, 40, n), -1 - np.arange(n))
    stats = {}
    got = knn(x, 10, block=32, gallery_block=96, exclude_groups=groups, stats=stats)
    assert_same(got, brute(x, 10, groups=groups))


def test_duplicates_beyond_the_margin_are_recomputed_and_tie_to_the_smallest_index():
    x = np.repeat(np.random.default_rng(1).normal(size=(3, 8)), 15, axis=0)  # three points, 15 copies each
    stats = {}
    dist, idx = knn(x, 5, block=8, gallery_block=16, margin=0, stats=stats)
    assert stats["recomputed"] > 0  # the certificate cannot hold: the rest of the ties were never candidates
    assert_same((dist, idx), brute(x, 5))
    assert idx[14].tolist() == [0, 1, 2, 3, 4] and (dist[14] == 0).all()


def test_rows_at_equal_euclidean_distance():
    grid = np.array([[i, j] for i in range(6) for j in range(6)], np.float32)  # many exactly equal distances
    for k in (4, 8):
        assert_same(knn(grid, k, metric="euclidean", block=8, gallery_block=16), brute(grid, k, "euclidean"))


def test_zero_rows_are_at_cosine_distance_one():
    x = tied_rows()
    dist, idx = knn(x, 3, queries=[20])
    np.testing.assert_array_equal(dist[0], [1.0, 1.0, 1.0])
    np.testing.assert_array_equal(idx[0], [0, 1, 2])


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_low_precision_device_copy_is_still_exact(dtype):
    x = tied_rows(seed=3)
    assert_same(knn(x, 6, block=16, gallery_block=32, dtype=dtype), brute(x, 6))


def test_float16_and_memmap_input(tmp_path):
    x = tied_rows(seed=4).astype(np.float16)
    path = tmp_path / "rows.f16"
    x.tofile(path)
    mm = np.memmap(path, dtype=np.float16, mode="r", shape=x.shape)
    want = brute(x, 5)
    assert_same(knn(x, 5, block=16, gallery_block=32), want)
    assert_same(knn(mm, 5, block=16, gallery_block=32), want)


def test_queries_subset_groups_and_allowed():
    x = tied_rows(seed=5)
    rng = np.random.default_rng(0)
    groups = rng.integers(0, 6, size=len(x))
    allowed = rng.random(len(x)) > 0.2
    queries = np.array([3, 10, 0, 89, 3])
    got = knn(x, 6, block=8, gallery_block=24, queries=queries, exclude_groups=groups, allowed=allowed)
    assert_same(got, brute(x, 6, queries=queries, groups=groups, allowed=allowed))
    assert all(groups[j] != groups[q] for q, row in zip(queries, got[1], strict=True) for j in row if j >= 0)
    for metric in ("cosine", "euclidean"):  # allowed without groups: the bias column, the query dropped on the host
        got = knn(x, 6, metric=metric, block=8, gallery_block=24, queries=queries, allowed=allowed)
        assert_same(got, brute(x, 6, metric, queries=queries, allowed=allowed))


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
def test_k_at_least_n_pads_with_inf_and_minus_one(metric):
    x = tied_rows()[:11]
    dist, idx = knn(x, 15, metric=metric, block=8, gallery_block=8)
    assert_same((dist, idx), brute(x, 15, metric))
    assert (idx[:, 10:] == -1).all() and np.isinf(dist[:, 10:]).all() and (idx[:, :10] >= 0).all()


def test_group_leaving_fewer_than_k():
    x = np.eye(4, dtype=np.float32) + 0.1
    dist, idx = knn(x, 3, queries=[0], exclude_groups=np.array([0, 0, 0, 1]))
    assert idx[0].tolist() == [3, -1, -1] and np.isinf(dist[0, 1:]).all()


def test_matches_scikit_learn_kneighbors():
    from sklearn.neighbors import NearestNeighbors

    x = np.random.default_rng(6).normal(size=(120, 10))
    dist, idx = knn(x, 5, metric="euclidean", block=32, gallery_block=64)
    sk_d, sk_i = NearestNeighbors(n_neighbors=6, algorithm="brute").fit(x).kneighbors(x)
    np.testing.assert_array_equal(idx, sk_i[:, 1:])
    np.testing.assert_allclose(dist, sk_d[:, 1:], rtol=1e-12)


def test_inexact_mode_agrees_away_from_ties():
    x = np.random.default_rng(7).normal(size=(100, 16))
    dist, idx = knn(x, 5, block=16, gallery_block=32, exact=False)
    want = brute(x, 5)
    np.testing.assert_array_equal(idx, want[1])
    np.testing.assert_allclose(dist, want[0], atol=error_bound(16))


@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "float16"])
@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
def test_device_distances_are_within_the_bound(dtype, metric):
    """The bound the certificate relies on, checked on the device's own products (exact=False returns them)."""
    x = np.random.default_rng(13).normal(size=(150, 40)) * np.random.default_rng(14).choice([1e-3, 1.0], size=40)
    dist, idx = knn(x, 8, metric=metric, block=32, gallery_block=64, exact=False, dtype=dtype)
    ref = exact_distances(x, np.arange(150), idx, metric)
    if metric == "cosine":
        assert np.max(np.abs(dist - ref)) <= error_bound(48, dtype, metric)
    else:  # the bound holds for squared distances of rows scaled by M, a power of two >= the largest norm
        m = 2.0 ** np.ceil(np.log2(np.max(np.linalg.norm(x, axis=1))))
        assert np.max(np.abs((dist / m) ** 2 - (ref / m) ** 2)) <= error_bound(48, dtype, metric)


def test_error_bound_holds_for_float32_products():
    rng = np.random.default_rng(8)
    for d in (8, 256, 2048):
        u = rng.normal(size=(200, d)) * rng.choice([1e-3, 1.0], size=(200, d))  # uneven magnitudes
        u /= np.linalg.norm(u, axis=1, keepdims=True)
        u[1::2] = u[::2] + 1e-3 * rng.normal(size=(100, d))  # near-parallel pairs (cancellation)
        u /= np.linalg.norm(u, axis=1, keepdims=True)
        f32 = (u.astype(np.float32) @ u.astype(np.float32).T).astype(np.float64)
        assert np.max(np.abs(f32 - u @ u.T)) <= error_bound(d)


def test_exact_distances_depend_only_on_the_pair():
    x = tied_rows()
    alone = np.array([exact_distances(x, [i], [j])[0] for i, j in [(3, 10), (3, 16), (5, 30)]])
    batch = exact_distances(x, [3, 3, 5], [[10, 16, 30], [10, 16, 30], [10, 16, 30]])
    np.testing.assert_array_equal(alone, [batch[0, 0], batch[1, 1], batch[2, 2]])
    assert alone[0] == 0.0


def test_radius_within():
    dist = np.array([[0.1, 0.2, 0.3], [0.1, 0.5, 0.6], [0.1, np.inf, np.inf], [0.2, 0.2, 0.2]])
    counts, complete = radius_within(dist, 0.2)
    assert counts.tolist() == [2, 1, 1, 3]
    assert complete.tolist() == [True, True, True, False]
    counts, complete = radius_within(dist, np.inf)
    assert complete.tolist() == [False, False, True, False]


def test_bad_arguments_raise_knn_error():
    x = np.ones((5, 3), np.float32)
    with pytest.raises(KnnError, match="metric"):
        knn(x, 2, metric="manhattan")
    with pytest.raises(KnnError, match="exclude_groups"):
        knn(x, 2, exclude_groups=np.zeros(4))
    with pytest.raises(KnnError, match="queries"):
        knn(x, 2, queries=[7])
    x[2, 1] = np.nan
    with pytest.raises(KnnError, match="row 2"):
        knn(x, 2)


def test_importing_data_knn_does_not_import_jax():
    import subprocess
    import sys

    code = "import sys, data.knn; assert 'jax' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize("fold", [1, 2, 4, 8])
def test_two_stage_selection_keeps_the_largest_values(fold):
    """The strided chunk pre-selection (`_merge`) returns the kk largest values, ties included."""
    import jax.numpy as jnp

    from data.knn import _merge

    rng = np.random.default_rng(fold)
    vals = rng.integers(0, 40, size=(16, 64)).astype(np.float32)  # many ties
    vals[3] = -np.inf
    vals[4, :5] = 100.0
    kk = 6
    best_v = np.full((16, kk), -np.inf, np.float32)
    best_v[:, 0] = rng.integers(0, 40, size=16)
    best_i = np.where(np.isfinite(best_v), 1000 + np.arange(16)[:, None], -1).astype(np.int32)
    top, idx = _merge(jnp.asarray(best_v), jnp.asarray(best_i), jnp.asarray(vals),
                      jnp.arange(64, dtype=jnp.int32), kk, fold)
    top, idx = np.asarray(top), np.asarray(idx)
    both = np.concatenate([best_v, vals], 1)
    np.testing.assert_array_equal(top, -np.sort(-both, axis=1)[:, :kk])
    for r in range(16):
        for v, i in zip(top[r], idx[r], strict=True):
            if np.isfinite(v):
                assert v == (best_v[r, 0] if i >= 1000 else vals[r, i])


def test_benchmark_stages_run_without_optional_packages():
    """benchmarks/scale_stages.py (the kNN graph, mining and evaluation stages of benchmarks/scale.py) runs on
    a small input and imports none of grain, tfds, umap, flask (the GPU box lacks them)."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    code = (
        "import sys, json; sys.path.insert(0, 'benchmarks'); import scale_stages as s\n"
        "x, g = s.archive_like(300, 16)\n"
        "rows = [s.time_knn(x, 5, block=64, gallery_block=128), s.time_mining(x, g, k=3, block=64),"
        " s.time_eval(x, g, block=64), s.check_knn(x, 5, sample=20, block=64, gallery_block=128)]\n"
        "bad = [m for m in ('grain', 'tensorflow_datasets', 'umap', 'flask') if m in sys.modules]\n"
        "print(json.dumps({'rows': rows, 'bad': bad}))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=root, check=True, capture_output=True, text=True)
    res = json.loads(out.stdout.strip().splitlines()[-1])
    assert res["bad"] == []
    knn_row, mining_row, eval_row, check_row = res["rows"]
    assert check_row["bound_holds"] and check_row["exact_equals_brute_force"]
    assert knn_row["stage"] == "knn_graph" and knn_row["recomputed"] is not None and knn_row["seconds"] > 0
    assert mining_row["queries"] == 148 and eval_row["mAP"] > 0.9  # tight planted groups: found first
    assert all(r["peak_rss_mb"] > 0 for r in res["rows"][:3])


def test_threaded_recheck_gives_the_same_result(monkeypatch):
    import data.knn as knn_module

    x = tied_rows(seed=11)
    want = brute(x, 5)
    monkeypatch.setattr(knn_module, "RECHECK_THREADS", 3)
    monkeypatch.setattr(knn_module, "_HOST_BYTES", 8 * 12 * 13 * 4)  # 4 query rows per chunk: many chunks
    assert_same(knn(x, 5, block=16, gallery_block=32), want)


def test_a_query_tied_with_every_row_is_answered_in_bounded_memory(monkeypatch):
    """A zero row is at cosine distance 1 from every row: all n tie; the fallback keeps k at a time."""
    import data.knn as knn_module

    x = tied_rows(seed=12)
    monkeypatch.setattr(knn_module, "_HOST_BYTES", 8 * 12 * 5)  # five pairs per exact-distance chunk
    stats = {}
    got = knn(x, 4, block=8, gallery_block=16, margin=0, queries=[20, 21, 3], stats=stats)
    assert stats["recomputed"] >= 2
    assert_same(got, brute(x, 4, queries=[20, 21, 3]))
    assert got[1][0].tolist() == [0, 1, 2, 3] and got[1][1].tolist() == [0, 1, 2, 3]
