"""The "knn" OPTICS engine (cluster/knn_graph.py): exact against scikit-learn when every kNN list is complete,
incomplete lists detected and grown per row, refused or (with approximate) run and flagged; memory O(n k).

The kNN search is `data.knn.knn`; these tests replace it with a NumPy brute force of the same API and the same
definition of a distance (float64, ties to the smallest index), so they test this module's logic alone, and
count its calls. One test runs the real `data.knn` when it is there.
"""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
from click.testing import CliRunner
from sklearn.cluster import OPTICS
from sklearn.datasets import make_blobs
from sklearn.metrics import adjusted_rand_score

import cluster.knn_graph as kg
from cluster.__main__ import cli
from cluster.config import OpticsConfig
from cluster.knn_graph import (
    CANDIDATE_BYTES,
    LIST_ENTRY_BYTES,
    SEARCH_TILE_BYTES,
    KnnIncompleteError,
    knn_plan,
    least_budget_mb,
)
from cluster.optics import OpticsMemoryError, optics
from data.signatures import Signatures, save_signatures


def reference_knn(x, k, *, metric="cosine", queries=None, exact=True, block=1024, gallery_block=8192):
    """data.knn.knn's contract by brute force: (dist float64 ascending, idx int64), self excluded, inf/-1 padding."""
    x = np.asarray(x, dtype=np.float64)
    n = x.shape[0]
    q = np.arange(n) if queries is None else np.asarray(queries, dtype=np.int64)
    if metric == "cosine":
        u = x / np.linalg.norm(x, axis=1, keepdims=True)
        d = 1.0 - u[q] @ u.T
    else:
        d = np.sqrt(((x[q][:, None, :] - x[None, :, :]) ** 2).sum(-1))
    d[np.arange(q.size), q] = np.inf
    order = np.argsort(d, axis=1, kind="stable")[:, :k]  # ties: the smallest index
    dist = np.take_along_axis(d, order, axis=1)
    idx = np.where(np.isfinite(dist), order, -1)
    pad = k - dist.shape[1]
    if pad > 0:
        dist = np.pad(dist, ((0, 0), (0, pad)), constant_values=np.inf)
        idx = np.pad(idx, ((0, 0), (0, pad)), constant_values=-1)
    return dist, idx.astype(np.int64)


@pytest.fixture
def calls(monkeypatch):
    """Replace data.knn with the reference; record (k, number of query rows) of every call."""
    log: list[tuple[int, int]] = []

    def fake(x, k, *, metric, queries=None, exact=True, block=1024, gallery_block=8192):
        log.append((k, len(x) if queries is None else len(queries)))
        return reference_knn(x, k, metric=metric, queries=queries, exact=exact)

    monkeypatch.setattr(kg, "_knn", fake)
    return log


@pytest.fixture
def noisy(monkeypatch):
    """data.knn's device lists (exact=False) as they could come: each distance off by up to half of a
    (deliberately large) error bound, lists ordered by the perturbed values; exact=True stays exact."""
    slack = 1e-3
    log: list[tuple[int, int, bool]] = []

    def fake(x, k, *, metric, queries=None, exact=True, block=1024, gallery_block=8192):
        q = np.arange(len(x)) if queries is None else np.asarray(queries)
        log.append((k, len(q), exact))
        if exact:
            return reference_knn(x, k, metric=metric, queries=queries)
        full, order = reference_knn(x, len(x) - 1, metric=metric, queries=queries)
        rng = np.random.default_rng(len(log))
        dev = np.where(order >= 0, full + rng.uniform(-slack / 2, slack / 2, full.shape), np.inf)
        pick = np.argsort(dev, axis=1, kind="stable")[:, :k]
        return np.take_along_axis(dev, pick, 1), np.take_along_axis(order, pick, 1)

    monkeypatch.setattr(kg, "_knn", fake)
    monkeypatch.setattr(kg, "_device_bound", lambda d: slack)
    return log


def archive_like(n_groups, group_size, n_single, d, seed, spread=0.12):
    """Unrelated unit rows ~0.5 apart (cosine), plus planted groups within ~0.05; labels -1 for the unrelated."""
    rng = np.random.default_rng(seed)
    n_centres = n_groups + n_single
    common = rng.normal(size=d)
    common /= np.linalg.norm(common)
    r = rng.normal(size=(n_centres, d)) / np.sqrt(d)
    centres = np.sqrt(0.5) * common + np.sqrt(0.5) * r
    rows = [centres[n_groups:]]
    labels = [np.full(n_single, -1)]
    for g in range(n_groups):
        rows.append(centres[g] + spread * rng.normal(size=(group_size, d)) / np.sqrt(d))
        labels.append(np.full(group_size, g))
    x = np.concatenate(rows)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    perm = rng.permutation(len(x))
    return x[perm].astype(np.float32), np.concatenate(labels)[perm]


def _datasets():
    arch, _ = archive_like(12, 8, 150, 48, seed=0)
    blobs2, _ = make_blobs(200, n_features=2, centers=5, random_state=0)
    blobs64, _ = make_blobs(150, n_features=64, centers=4, cluster_std=2.0, random_state=1)
    dup = np.concatenate([arch[:100], arch[:30], arch[5:15]])  # exact duplicates: zero distances, ties
    lattice = np.stack(np.meshgrid(np.arange(10), np.arange(8)), -1).reshape(-1, 2).astype(float)
    return {
        "archive": (arch, "cosine", 0.13),
        "blobs2": (blobs2, "euclidean", 0.6),
        "blobs64": (blobs64, "euclidean", 14.0),
        "dup_cos": (dup, "cosine", 0.13),
        "lattice": (lattice, "euclidean", 1.0),
    }


DATA = _datasets()


def _sklearn(x, metric, min_samples, max_eps, method="xi"):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return OPTICS(min_samples=min_samples, max_eps=max_eps, metric=metric, cluster_method=method).fit(x)


@pytest.mark.parametrize(
    ("name", "min_samples", "method", "knn_k"),
    [
        ("archive", 2, "xi", 32),
        ("archive", 5, "dbscan", 6),  # groups of 8 > k: rows grown
        ("blobs2", 3, "xi", 4),  # every row grown (dense blobs), twice or more
        ("blobs64", 5, "xi", 8),
        ("dup_cos", 2, "xi", 4),
        ("dup_cos", 5, "xi", 32),
        ("lattice", 2, "xi", 3),  # equal distances everywhere: ties at the list's end
        ("lattice", 5, "dbscan", 8),
    ],
)
def test_knn_engine_equals_sklearn_exactly_when_complete(calls, name, min_samples, method, knn_k):
    x, metric, max_eps = DATA[name]
    cfg = OpticsConfig(min_samples=min_samples, max_eps=max_eps, metric=metric, cluster_method=method,
                       engine="knn", knn_k=knn_k)  # fmt: skip
    ours = optics(x, cfg)
    sk = _sklearn(x, metric, min_samples, max_eps, method)
    assert ours.engine == "knn" and ours.info["exact"] is True and ours.info["incomplete_rows"] == 0
    np.testing.assert_array_equal(ours.ordering, sk.ordering_)
    np.testing.assert_array_equal(ours.reachability, sk.reachability_)
    np.testing.assert_array_equal(ours.core_distances, sk.core_distances_)
    np.testing.assert_array_equal(ours.predecessor, sk.predecessor_)
    np.testing.assert_array_equal(ours.labels, sk.labels_)


@pytest.mark.parametrize(("name", "min_samples", "knn_k"), [("archive", 2, 4), ("archive", 5, 8), ("dup_cos", 3, 4)])
def test_device_lists_with_an_error_bound_give_the_exact_result(noisy, name, min_samples, knn_k):
    """Exact mode, cosine: the lists come from the device without data.knn's float64 recheck; every decision
    allows the error bound and the pairs it cannot settle are rechecked, so the result is still sklearn's.
    max_eps 0.0135 lies amid the groups' distances: many pairs and k-th distances within the bound of it."""
    x, metric, _ = DATA[name]
    max_eps = 0.0135
    ours = optics(x, OpticsConfig(min_samples=min_samples, max_eps=max_eps, metric=metric, engine="knn",
                                  knn_k=knn_k))  # fmt: skip
    sk = _sklearn(x, metric, min_samples, max_eps)
    assert ours.info["exact"] and any(not exact for _, _, exact in noisy)
    np.testing.assert_array_equal(ours.ordering, sk.ordering_)
    np.testing.assert_array_equal(ours.reachability, sk.reachability_)
    np.testing.assert_array_equal(ours.core_distances, sk.core_distances_)
    np.testing.assert_array_equal(ours.predecessor, sk.predecessor_)
    np.testing.assert_array_equal(ours.labels, sk.labels_)


def test_incomplete_rows_are_detected_and_grown_alone(calls):
    x, metric, max_eps = DATA["archive"]  # groups of 8: with k=4 only the group members are incomplete
    res = optics(x, OpticsConfig(min_samples=2, max_eps=max_eps, metric=metric, engine="knn", knn_k=4))
    assert calls[0] == (4, len(x))  # every row once
    assert calls[1] == (8, 12 * 8)  # then the 96 group members alone, k doubled
    assert all(k > 4 and rows <= 96 for k, rows in calls[1:])
    assert res.info["exact"] and res.info["grown_rows"] == 96 and res.info["knn_k"] >= 8


def _tight(cfg: OpticsConfig, n: int, d: int) -> float:
    """The smallest budget the knn engine accepts: the first lists fit, doubling k does not."""
    mb = least_budget_mb(n, d, cfg)
    with pytest.raises(OpticsMemoryError):
        knn_plan(n, d, OpticsConfig(**{**cfg.to_dict(), "memory_budget_mb": mb - 0.01}))
    assert knn_plan(n, d, OpticsConfig(**{**cfg.to_dict(), "memory_budget_mb": mb})).k_cap(n // 2) < 2 * cfg.knn_k
    return mb


def test_lists_beyond_the_budget_are_refused_with_a_clear_message(calls):
    x, metric, max_eps = DATA["blobs2"]
    n, d = x.shape
    cfg = OpticsConfig(min_samples=3, max_eps=max_eps, metric=metric, engine="knn", knn_k=4, block_size=64)
    tight = _tight(cfg, n, d)
    with pytest.raises(KnnIncompleteError, match=r"signatures have more than 4 neighbours within max_eps=0\.6.*"
                       r"--approximate"):  # fmt: skip
        optics(x, OpticsConfig(**{**cfg.to_dict(), "memory_budget_mb": tight}))


def test_auto_falls_back_to_the_exact_radius_graph_and_says_why(calls):
    x, metric, _ = DATA["blobs2"]
    max_eps = 5.0  # most rows have 40 to 200 neighbours within it; 1 MB holds lists of ~50
    cfg = OpticsConfig(min_samples=3, max_eps=max_eps, metric=metric, knn_k=4, memory_budget_mb=1.0)
    res = optics(x, cfg)
    assert res.engine == "graph" and "knn engine not used" in res.info["reason"]
    np.testing.assert_array_equal(res.labels, _sklearn(x, metric, 3, max_eps).labels_)
    max_eps = DATA["blobs2"][2]
    cfg = OpticsConfig(min_samples=3, max_eps=max_eps, metric=metric, knn_k=4, memory_budget_mb=1.0)
    # and auto takes knn when the lists are complete
    assert optics(x, OpticsConfig(**{**cfg.to_dict(), "memory_budget_mb": 64})).engine == "knn"


def test_approximate_mode_runs_on_truncated_lists_and_says_so(calls):
    x, metric, max_eps = DATA["blobs2"]
    cfg = OpticsConfig(min_samples=3, max_eps=max_eps, metric=metric, engine="knn", knn_k=4, approximate=True,
                       block_size=64)  # fmt: skip
    tight = _tight(cfg, len(x), 2)
    res = optics(x, OpticsConfig(**{**cfg.to_dict(), "memory_budget_mb": tight}))
    assert res.engine == "knn" and res.info["exact"] is False and res.info["incomplete_rows"] > 0
    assert "approximate" in res.info["reason"]
    auto = optics(x, OpticsConfig(**{**cfg.to_dict(), "engine": "auto", "memory_budget_mb": tight}))
    assert auto.engine == "knn" and auto.info["exact"] is False  # asked for: no fallback to the radius graph
    sk = _sklearn(x, metric, 3, max_eps)
    np.testing.assert_array_equal(res.core_distances, sk.core_distances_)  # core distances stay exact
    assert adjusted_rand_score(sk.labels_, res.labels) > 0.5


def test_inf_max_eps_needs_the_full_lists_or_approximate(calls):
    x, metric, _ = DATA["archive"]
    small = OpticsConfig(min_samples=3, metric=metric, engine="knn", block_size=64, memory_budget_mb=2)
    with pytest.raises(KnnIncompleteError, match="max_eps is inf, so only lists of all 245 other"):
        optics(x, small)
    res = optics(x, OpticsConfig(**{**small.to_dict(), "approximate": True}))
    assert res.info["exact"] is False and res.info["incomplete_rows"] == len(x)
    full = optics(x, OpticsConfig(**{**small.to_dict(), "memory_budget_mb": 64}))  # k grows to n - 1
    assert full.info["exact"] is True and full.info["knn_k"] == len(x) - 1
    sk = _sklearn(x, metric, 3, np.inf)
    np.testing.assert_array_equal(full.ordering, sk.ordering_)
    np.testing.assert_array_equal(full.reachability, sk.reachability_)
    np.testing.assert_array_equal(full.labels, sk.labels_)


def test_minkowski_is_euclidean_for_the_knn_search(calls):
    x, _, max_eps = DATA["blobs2"]
    ours = optics(x, OpticsConfig(min_samples=5, max_eps=max_eps, metric="minkowski", engine="knn", knn_k=8))
    sk = _sklearn(x, "minkowski", 5, max_eps)
    assert {k for k, _ in calls} >= {8} and ours.info["exact"]
    np.testing.assert_array_equal(ours.ordering, sk.ordering_)
    np.testing.assert_array_equal(ours.reachability, sk.reachability_)
    np.testing.assert_array_equal(ours.labels, sk.labels_)


def test_float32_precision_runs_without_the_float64_recheck(calls):
    x, metric, max_eps = DATA["archive"]
    res = optics(x, OpticsConfig(min_samples=2, max_eps=max_eps, metric=metric, engine="knn", precision="float32"))
    sk = _sklearn(x, metric, 2, max_eps)
    assert res.engine == "knn" and adjusted_rand_score(sk.labels_, res.labels) > 0.99


def test_memory_plan_is_linear_in_n():
    cfg = OpticsConfig(min_samples=2, max_eps=0.13, engine="knn", memory_budget_mb=1e9)

    def need(n, d):
        p = knn_plan(n, d, cfg)
        return p.budget - p.room

    step = need(2_000_000, 256) - need(1_000_000, 256)
    assert need(3_000_000, 256) - need(2_000_000, 256) == step  # affine in n: nothing O(n^2)
    fixed = need(1_000_000, 256) - step  # one block x gallery tile and one block of candidates
    assert fixed <= SEARCH_TILE_BYTES * 1024 * 8192 + 1024 * 40 * CANDIDATE_BYTES
    assert need(1_000_000, 2048) < 40 * 2**30  # 1M x 2048, exact: ~30 GB, mostly the float64 rows
    p = knn_plan(100_000, 256, cfg)
    k = p.k_cap(1000)
    assert k > 1000 and 1000 * k * LIST_ENTRY_BYTES + 1000 * (k + 8) * CANDIDATE_BYTES <= p.room  # within budget
    small = knn_plan(10_000, 256, OpticsConfig(**{**cfg.to_dict(), "memory_budget_mb": 100}))
    assert small.block < 1024 and small.fixed + (small.room if small.room > 0 else 0) <= small.budget


def test_real_data_knn_gives_the_same_exact_result():
    knn_mod = pytest.importorskip("data.knn")
    if not hasattr(knn_mod, "knn"):
        pytest.skip("data.knn.knn not implemented yet")
    x, metric, max_eps = DATA["archive"]
    ours = optics(x, OpticsConfig(min_samples=3, max_eps=max_eps, metric=metric, engine="knn", knn_k=4))
    sk = _sklearn(x, metric, 3, max_eps)
    np.testing.assert_array_equal(ours.ordering, sk.ordering_)
    np.testing.assert_array_equal(ours.reachability, sk.reachability_)
    np.testing.assert_array_equal(ours.labels, sk.labels_)


# -- the command ------------------------------------------------------------------------------------------


@pytest.fixture
def sig_file(tmp_path):
    x, _, _ = DATA["blobs2"]
    x = np.concatenate([x, 12 * np.ones((len(x), 1))], axis=1)  # cosine on 3-D rows, dense within max_eps
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    save_signatures(tmp_path / "sig.npz", Signatures(uids=[f"u{i}" for i in range(len(x))], vectors=x))
    return tmp_path / "sig.npz"


def _run(sig, out, *extra):
    return CliRunner().invoke(cli, ["optics", str(sig), "--out", str(out), "--max-eps", "0.02",
                                    "--min-samples", "3", "--engine", "knn", "--knn-k", "4",
                                    "--memory-budget-mb", "0.7", "--block-size", "64", *extra])  # fmt: skip


def test_cli_refuses_incomplete_lists_without_a_traceback(calls, sig_file, tmp_path):
    r = _run(sig_file, tmp_path / "c.csv")
    assert r.exit_code != 0 and "Traceback" not in r.output
    assert "knn engine cannot be exact" in r.output and "--approximate" in r.output
    assert not (tmp_path / "c.csv").exists()


def test_cli_approximate_records_it_in_clusters_json(calls, sig_file, tmp_path):
    r = _run(sig_file, tmp_path / "c.csv", "--approximate")
    assert r.exit_code == 0, r.output
    params = json.loads((tmp_path / "c.json").read_text())
    assert params["engine"] == "knn" and params["exact"] is False and params["incomplete_rows"] > 0
    assert params["approximate"] is True and params["knn_k"] >= 4
    assert "approximate" in r.output and "engine knn" in r.output


def test_cli_exact_knn_says_so(calls, sig_file, tmp_path):
    r = CliRunner().invoke(cli, ["optics", str(sig_file), "--out", str(tmp_path / "c.csv"), "--max-eps", "0.02",
                                 "--min-samples", "3", "--engine", "knn"])  # fmt: skip
    assert r.exit_code == 0, r.output
    params = json.loads((tmp_path / "c.json").read_text())
    assert params["engine"] == "knn" and params["exact"] is True and params["incomplete_rows"] == 0
    assert "engine knn: exact" in r.output



@pytest.mark.parametrize(("extra", "warning"), [
    (["--engine", "dense", "--approximate"], "warning: --approximate has no effect with --engine dense"),
    (["--method", "hdbscan", "--approximate"], "warning: --approximate has no effect with --method hdbscan"),
    (["--method", "dbscan", "--engine", "knn"], "warning: --engine knn has no effect with --method dbscan"),
    (["--method", "hdbscan", "--engine", "stream"], "warning: --engine stream has no effect with --method hdbscan"),
])  # fmt: skip
def test_cli_says_when_an_option_has_no_effect(sig_file, tmp_path, extra, warning):
    """A user who asks for --approximate or an engine that the chosen method does not use is told so on stderr,
    instead of reading a result that silently ignored the option."""
    r = CliRunner().invoke(cli, ["optics", str(sig_file), "--out", str(tmp_path / "c.csv"), "--max-eps", "0.02",
                                 "--min-samples", "3", *extra])  # fmt: skip
    assert r.exit_code == 0, r.output
    assert warning in r.stderr and "Traceback" not in r.output
    plain = CliRunner().invoke(cli, ["optics", str(sig_file), "--out", str(tmp_path / "d.csv"), "--max-eps", "0.02",
                                     "--min-samples", "3", "--engine", "knn", "--approximate"])  # fmt: skip
    assert plain.exit_code == 0 and "no effect" not in plain.stderr


def test_cli_warns_before_a_long_run_with_max_eps_inf(sig_file, tmp_path, monkeypatch):
    """A user who left max_eps at inf on an archive waited minutes in silence (a new user's trial: 50,000
    signatures, nothing printed for over a minute). The command now says so before the work starts, with the
    faster choices; a finite max_eps or a small collection prints nothing of the kind."""
    import cluster.clustering as clustering

    monkeypatch.setattr(clustering, "LONG_RUN_N", 10)
    r = CliRunner().invoke(cli, ["optics", str(sig_file), "--out", str(tmp_path / "c.csv"), "--max-eps", "inf",
                                 "--min-samples", "3"])  # fmt: skip
    assert r.exit_code == 0, r.output
    assert "note: max_eps is inf" in r.stderr and "--max-eps" in r.stderr and "--method hdbscan" in r.stderr
    finite = CliRunner().invoke(cli, ["optics", str(sig_file), "--out", str(tmp_path / "d.csv"), "--max-eps", "0.02",
                                      "--min-samples", "3"])  # fmt: skip
    assert finite.exit_code == 0 and "note: max_eps is inf" not in finite.stderr
    monkeypatch.setattr(clustering, "LONG_RUN_N", 10**6)
    small = CliRunner().invoke(cli, ["optics", str(sig_file), "--out", str(tmp_path / "e.csv"), "--max-eps", "inf",
                                     "--min-samples", "3"])  # fmt: skip
    assert small.exit_code == 0 and "note:" not in small.stderr


# -- HDBSCAN on the kNN graph (cluster/knn_hdbscan.py) ----------------------------------------------------


def _dense_hdbscan(x, metric, min_samples):
    from sklearn.cluster import HDBSCAN

    algo = "brute" if metric == "cosine" else "auto"
    return HDBSCAN(min_samples=min_samples, metric=metric, algorithm=algo, copy=True).fit(x)


def _heights(fitted):
    return np.sort(fitted._single_linkage_tree_["value"])


def test_hdbscan_on_an_exact_knn_graph_equals_sklearn_dense(calls):
    from cluster.knn_hdbscan import knn_hdbscan

    x, metric, _ = DATA["archive"]
    labels, info, fitted = knn_hdbscan(x, min_samples=2, metric=metric, knn_k=32)
    dense = _dense_hdbscan(x, metric, 2)
    assert info.exact and info.components == 1 and calls == [(32, len(x))]
    np.testing.assert_allclose(_heights(fitted), _heights(dense), rtol=1e-9, atol=0)  # the same dendrogram
    assert adjusted_rand_score(dense.labels_, labels) == 1.0  # the same clusters (numbered in another order)
    np.testing.assert_array_equal(labels < 0, dense.labels_ < 0)


def test_hdbscan_min_samples_above_2_gives_sklearns_dendrogram(calls):
    """min_samples > 2: mutual reachability ties (equal core distances) make the tree's edges ambiguous, and
    scikit-learn's own dense and sparse paths pick different ones; the merge heights are the same."""
    from scipy.sparse import csr_matrix
    from sklearn.cluster import HDBSCAN
    from sklearn.metrics import pairwise_distances

    from cluster.knn_hdbscan import knn_hdbscan

    x, metric, _ = DATA["archive"]
    labels, info, fitted = knn_hdbscan(x, min_samples=5, metric=metric, knn_k=32)
    dense = _dense_hdbscan(x, metric, 5)
    assert info.exact
    np.testing.assert_allclose(_heights(fitted), _heights(dense), rtol=1e-9, atol=0)
    full = pairwise_distances(x.astype(np.float64), metric=metric)
    sparse = HDBSCAN(min_samples=4, metric="precomputed", copy=True).fit(
        csr_matrix(np.maximum(full, 1e-300) * (1 - np.eye(len(x))))
    )  # scikit-learn's sparse path on the complete matrix: the same edges among ties as on the kNN graph
    np.testing.assert_array_equal(labels, sparse.labels_)
    assert adjusted_rand_score(dense.labels_, labels) > 0.95


def test_hdbscan_joins_a_disconnected_knn_graph_and_flags_it(calls):
    from cluster.knn_hdbscan import knn_hdbscan

    x, metric, _ = DATA["blobs64"]  # 4 far-apart blobs: 8-NN lists never leave a blob
    labels, info, _ = knn_hdbscan(x, min_samples=2, metric=metric, knn_k=8)
    assert info.components == 4 and not info.exact and "4 connected components" in info.reason
    assert adjusted_rand_score(_dense_hdbscan(x, metric, 2).labels_, labels) == 1.0


def test_hdbscan_exactness_check_catches_a_tree_the_lists_cannot_certify(calls):
    from cluster.knn_hdbscan import knn_hdbscan

    x, _ = make_blobs(200, n_features=2, centers=3, cluster_std=1.5, random_state=3)
    _, short, _ = knn_hdbscan(x, min_samples=2, metric="euclidean", knn_k=8)
    _, longer, _ = knn_hdbscan(x, min_samples=2, metric="euclidean", knn_k=32)
    assert short.components == 1 and not short.exact and "outside the 8-NN lists" in short.reason
    assert longer.exact


def test_cli_hdbscan_on_the_knn_graph_records_it(calls, sig_file, tmp_path):
    r = CliRunner().invoke(cli, ["optics", str(sig_file), "--out", str(tmp_path / "c.csv"), "--method", "hdbscan",
                                 "--engine", "knn", "--knn-k", "4", "--min-samples", "3"])  # fmt: skip
    assert r.exit_code == 0, r.output
    params = json.loads((tmp_path / "c.json").read_text())
    assert params["method"] == "hdbscan" and params["engine"] == "knn" and params["knn_k"] == 4
    assert isinstance(params["exact"], bool) and params["components"] >= 1 and "engine knn: " in r.output
    assert calls == [(4, 200)]


def _peak_rss_mb(args: list[str]) -> float:
    """Peak RSS of one child process (wait4's rusage, KiB on Linux)."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    proc = subprocess.Popen([sys.executable, "-m", "cluster", *args], cwd=Path(__file__).resolve().parents[2],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)  # fmt: skip
    stderr = proc.stderr.read().decode(errors="replace")
    _, status, usage = os.wait4(proc.pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, stderr
    return usage.ru_maxrss / 1024


@pytest.mark.skipif(__import__("sys").platform != "linux", reason="ru_maxrss units and wait4 as on Linux")
def test_knn_engine_keeps_to_the_memory_budget(tmp_path):
    """The real data.knn, in a subprocess: peak RSS over a 50-signature baseline <= 1.5 x (budget + input)."""
    pytest.importorskip("data.knn").knn  # noqa: B018
    budget = 48

    def run(n, name):
        x, _ = archive_like(n // 40, 12, n - 12 * (n // 40), 64, seed=5)  # groups of 12 > k=8: rows grown
        save_signatures(tmp_path / f"{name}.npz", Signatures(uids=[f"u{i}" for i in range(len(x))], vectors=x))
        args = ["optics", str(tmp_path / f"{name}.npz"), "--out", str(tmp_path / f"{name}.csv"), "--engine", "knn",
                "--knn-k", "8", "--memory-budget-mb", str(budget)]  # fmt: skip
        return _peak_rss_mb(args), (tmp_path / f"{name}.npz").stat().st_size / 2**20

    base, _ = run(50, "tiny")
    peak, input_mb = run(6000, "sig")
    params = json.loads((tmp_path / "sig.json").read_text())
    assert params["engine"] == "knn" and params["exact"] is True and params["grown_rows"] > 0
    print(f"knn engine: peak {peak:.0f} MB, baseline {base:.0f} MB, input {input_mb:.1f} MB")
    assert peak - base <= 1.5 * (budget + input_mb), f"peak {peak:.0f} MB, baseline {base:.0f} MB"


def test_scale_benchmark_runs_without_optional_packages():
    """benchmarks/scale.py (the clustering stages at toy size) prints its JSON lines and imports none of grain,
    tfds, umap, flask (the GPU box lacks them)."""
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    code = (
        "import sys, json, runpy\n"
        "sys.argv = ['scale.py', '--n', '400', '--dim', '16', '--stages', 'optics,hdbscan,approx', '--approx-n', '300']\n"
        "try:\n    runpy.run_path('benchmarks/scale.py', run_name='__main__')\nexcept SystemExit:\n    pass\n"
        "bad = [m for m in ('grain', 'tensorflow_datasets', 'umap', 'flask') if m in sys.modules]\n"
        "print(json.dumps({'bad': bad}))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=root, check=True, capture_output=True, text=True)
    lines = [json.loads(s) for s in out.stdout.splitlines() if s.startswith("{")]
    assert lines[-1]["bad"] == []
    recs = {r["stage"]: r for r in lines[:-1]}
    assert recs["optics"]["engine"] == "knn" and recs["optics"]["exact"] is True and recs["optics"]["seconds"] > 0
    assert recs["optics"]["ari_planted_cut_at_max_eps"] > 0.9  # the planted groups are found
    assert recs["hdbscan"]["components"] >= 1 and recs["approx"]["exact"] is False
