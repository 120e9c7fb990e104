"""OPTICS parity with scikit-learn: ordering, reachability, core distances, predecessors and labels.

The graph engine recomputes every distance that enters the result with scikit-learn's arithmetic, so
the comparison is exact (array_equal), not approximate. The dense and stream engines take XLA's
distances with an error bound and recompute with sklearn's arithmetic wherever the bound leaves the outcome
open: also exact. scikit-learn's own test-suite runs against all three in test_sklearn_optics_suite.py.
"""

import warnings

import numpy as np
import pytest
from sklearn.cluster import OPTICS
from sklearn.datasets import make_blobs
from sklearn.metrics import adjusted_rand_score, pairwise_distances

from cluster.optics import OpticsConfig, OpticsMemoryError, memory_plan, optics, prepare


def _unit(x):
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _clustered_unit(n, d, seed, spread=0.3, noise=0.4):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(max(2, n // 12), d))
    lab = rng.integers(0, len(centres), n)
    g = rng.normal(size=(n, d))
    x = np.where((rng.random(n) < noise)[:, None], g, centres[lab] + spread * g)
    return _unit(x).astype(np.float32)


def _datasets():
    rng = np.random.default_rng(7)
    blobs2, _ = make_blobs(300, n_features=2, centers=5, random_state=0)
    blobs64, _ = make_blobs(150, n_features=64, centers=4, cluster_std=2.0, random_state=1)
    cos = _clustered_unit(300, 32, seed=2)
    cos_big_d = _clustered_unit(200, 512, seed=3)
    # ties: exact duplicate rows and a lattice (many equal distances)
    dup = np.concatenate([cos[:120], cos[:40], cos[10:20]])
    lattice = np.stack(np.meshgrid(np.arange(12), np.arange(10)), -1).reshape(-1, 2).astype(float)
    lattice = np.concatenate([lattice, lattice[:15], rng.normal(size=(30, 2)) * 4 + 5])
    return {
        "blobs2": (blobs2, "euclidean"),
        "blobs64": (blobs64, "euclidean"),
        "cos32": (cos, "cosine"),
        "cos512": (cos_big_d, "cosine"),
        "dup_cos": (dup, "cosine"),
        "lattice": (lattice, "euclidean"),
    }


DATA = _datasets()
EPS = {"blobs2": 1.0, "blobs64": 25.0, "cos32": 0.5, "cos512": 0.6, "dup_cos": 0.5, "lattice": 1.5}

CASES = [
    # (data, min_samples, finite max_eps?, xi, cluster_method)
    ("blobs2", 5, True, 0.05, "xi"),
    ("blobs2", 2, False, 0.1, "xi"),
    ("blobs64", 5, True, 0.05, "dbscan"),
    ("blobs64", 2, True, 0.1, "xi"),
    ("cos32", 2, True, 0.05, "xi"),
    ("cos32", 5, False, 0.1, "dbscan"),
    ("cos512", 2, True, 0.05, "xi"),
    ("cos512", 5, True, 0.1, "xi"),
    ("dup_cos", 2, True, 0.05, "xi"),
    ("dup_cos", 5, False, 0.05, "xi"),
    ("lattice", 2, True, 0.05, "xi"),
    ("lattice", 5, True, 0.1, "dbscan"),
]


def _sklearn(x, metric, min_samples, max_eps, xi, method, eps=None):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return OPTICS(
            min_samples=min_samples, max_eps=max_eps, metric=metric, xi=xi, cluster_method=method, eps=eps
        ).fit(x)


def _assert_equal(ours, sk):
    np.testing.assert_array_equal(ours.ordering, sk.ordering_)
    np.testing.assert_array_equal(ours.predecessor, sk.predecessor_)
    np.testing.assert_array_equal(ours.core_distances, sk.core_distances_)
    np.testing.assert_array_equal(ours.reachability, sk.reachability_)
    np.testing.assert_array_equal(ours.labels, sk.labels_)


@pytest.mark.parametrize(("name", "min_samples", "finite", "xi", "method"), CASES)
def test_graph_engine_equals_sklearn_exactly(name, min_samples, finite, xi, method):
    x, metric = DATA[name]
    max_eps = EPS[name] if finite else np.inf
    eps = 0.8 * EPS[name] if method == "dbscan" else None
    sk = _sklearn(x, metric, min_samples, max_eps, xi, method, eps)
    cfg = OpticsConfig(
        min_samples=min_samples,
        max_eps=max_eps,
        metric=metric,
        xi=xi,
        cluster_method=method,
        eps=eps,
        engine="graph",
    )
    ours = optics(x, cfg)
    assert ours.engine == "graph"
    _assert_equal(ours, sk)
    assert len(set(sk.labels_.tolist()) - {-1}) >= 1  # the case has real clusters, so labels are a real check


@pytest.mark.parametrize("min_samples", [2, 4])
def test_pairs_exactly_at_max_eps(min_samples):
    """On an integer lattice many distances are exactly max_eps (1.0): inclusive, as sklearn's radius query."""
    x, metric = DATA["lattice"]
    sk = _sklearn(x, metric, min_samples, 1.0, 0.05, "xi")
    ours = optics(x, OpticsConfig(min_samples=min_samples, max_eps=1.0, metric=metric))
    _assert_equal(ours, sk)
    assert np.sum(ours.reachability == 1.0) > 50  # the boundary really is exercised


@pytest.mark.parametrize("engine", ["dense", "stream"])
@pytest.mark.parametrize(("name", "min_samples", "finite", "xi", "method"), CASES)
def test_device_engines_equal_sklearn_exactly(engine, name, min_samples, finite, xi, method):
    """dense and stream, bit for bit, on ties too (duplicates, a lattice, min_samples 5): the device's distances
    decide only comparisons their error bound settles; the values kept are sklearn's arithmetic."""
    x, metric = DATA[name]
    max_eps = EPS[name] if finite else np.inf
    eps = 0.8 * EPS[name] if method == "dbscan" else None
    sk = _sklearn(x, metric, min_samples, max_eps, xi, method, eps)
    cfg = OpticsConfig(min_samples=min_samples, max_eps=max_eps, metric=metric, xi=xi, cluster_method=method,
                       eps=eps, engine=engine)  # fmt: skip
    ours = optics(x, cfg)
    assert ours.engine == engine
    _assert_equal(ours, sk)


@pytest.mark.parametrize("engine", ["graph", "dense", "stream"])
def test_minkowski_is_sklearns_default_metric_exactly(engine):
    """metric="minkowski" (p=2): reachability by coordinate differences (SciPy's cdist, as sklearn), core
    distances by sklearn's euclidean neighbour query; the ELKI comparison of sklearn's suite needs it."""
    x = np.concatenate([DATA["lattice"][0], DATA["blobs2"][0][:100]])
    sk = _sklearn(x, "minkowski", 5, np.inf, 0.05, "xi")
    ours = optics(x, OpticsConfig(min_samples=5, max_eps=np.inf, metric="minkowski", engine=engine))
    _assert_equal(ours, sk)


def _least_budget_mb(x, **kwargs):
    """The smallest budget a run accepts: the points, the per-point state and the smallest tile."""
    plan = memory_plan(len(x), x.shape[1], OpticsConfig(block_size=8, memory_budget_mb=1e6, **kwargs))
    return (plan.points + plan.per_point + plan.tile) / 2**20


def test_auto_engine_picks_knn_for_finite_eps_and_device_for_inf():
    x, metric = DATA["cos32"]
    assert optics(x, OpticsConfig(min_samples=2, max_eps=0.5, metric=metric)).engine == "knn"
    assert optics(x, OpticsConfig(min_samples=2, metric=metric)).engine == "dense"
    tiny = OpticsConfig(
        min_samples=2, metric=metric, memory_budget_mb=_least_budget_mb(x, min_samples=2) + 0.05
    )
    assert optics(x, tiny).engine == "stream"  # the 300 x 300 matrix (0.7 MB) does not fit


def test_graph_over_budget_falls_back_and_stays_correct():
    x, metric = DATA["cos32"]
    sk = _sklearn(x, metric, 2, 1.0, 0.05, "xi")
    small = _least_budget_mb(x, min_samples=2) + 0.02  # room for ~3,000 edges; the graph has ~45,000
    ours = optics(x, OpticsConfig(min_samples=2, max_eps=1.0, metric=metric, memory_budget_mb=small))
    assert ours.engine == "stream"
    np.testing.assert_array_equal(ours.labels, sk.labels_)
    with pytest.raises(MemoryError, match="memory-budget-mb"):
        optics(
            x, OpticsConfig(min_samples=2, max_eps=1.0, metric=metric, engine="graph", memory_budget_mb=small)
        )
    with pytest.raises(MemoryError, match="dense 300x300 distance matrix needs"):
        optics(
            x, OpticsConfig(min_samples=2, max_eps=1.0, metric=metric, engine="dense", memory_budget_mb=small)
        )


def test_budget_below_the_points_is_a_clear_error():
    x, metric = DATA["cos32"]
    with pytest.raises(
        OpticsMemoryError, match=r"too small for 300 signatures of dimension 32: .* at least 0\.6 MB"
    ):
        optics(x, OpticsConfig(min_samples=2, max_eps=0.5, metric=metric, memory_budget_mb=0.3))


def test_small_blocks_give_the_same_result():
    """Several tiles (and padding) must not change anything: the blocking is only about memory."""
    x, metric = DATA["cos32"]
    a = optics(x, OpticsConfig(min_samples=3, max_eps=0.5, metric=metric))
    b = optics(x, OpticsConfig(min_samples=3, max_eps=0.5, metric=metric, block_size=100))
    assert a.labels.max() >= 1
    for f in ("ordering", "reachability", "core_distances", "predecessor", "labels"):
        np.testing.assert_array_equal(getattr(a, f), getattr(b, f))


def test_float32_mode_finds_the_same_clusters_on_separated_data():
    x, metric = DATA["cos32"]
    sk = _sklearn(x, metric, 2, 0.5, 0.05, "xi")
    ours = optics(x, OpticsConfig(min_samples=2, max_eps=0.5, metric=metric, precision="float32"))
    np.testing.assert_allclose(ours.reachability, sk.reachability_, atol=1e-5)
    assert adjusted_rand_score(sk.labels_, ours.labels) > 0.99


@pytest.mark.parametrize("metric", ["cosine", "euclidean", "minkowski"])
def test_host_distances_are_bitwise_sklearns(metric):
    """The claim the exact path stands on: our 1 x m distances are sklearn's pairwise_distances, bit for bit."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 300)) * 3
    pts = prepare(x, metric, 2)
    for p in (0, 17, 199):
        cols = np.sort(rng.choice(200, 57, replace=False))
        np.testing.assert_array_equal(
            pts.dist_1xm(p, cols), pairwise_distances(x[[p]], x[cols], metric=metric)[0]
        )
    rows = np.arange(10, 30)
    cols = np.arange(0, 200, 3)
    np.testing.assert_array_equal(
        pts.dist_block(rows, cols), pairwise_distances(x[rows], x[cols], metric=pts.knn_metric)
    )  # the neighbour query's arithmetic: sklearn's NearestNeighbors runs minkowski p=2 as euclidean


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"min_samples": 500}, "larger than the number of points"),
        ({"min_samples": 1}, "integer >= 2"),
        ({"metric": "manhattan"}, "not supported"),
        ({"cluster_method": "dbscan", "eps": 2.0, "max_eps": 1.0}, "must not exceed"),
    ],
)
def test_bad_parameters_are_reported(kwargs, message):
    x, _ = DATA["cos32"]
    with pytest.raises(ValueError, match=message):
        optics(x, OpticsConfig(**kwargs))


def test_non_finite_rows_are_named():
    x = np.ones((5, 3))
    x[3, 1] = np.nan
    with pytest.raises(ValueError, match="row 3"):
        optics(x, OpticsConfig(min_samples=2))


@pytest.fixture(scope="module")
def demo_signatures(tmp_path_factory):
    """Real signatures: the demo collection (offline Met paintings and their derivatives) embedded by a
    randomly initialised ResNet-18 at 64 px (no pretrained weights can be downloaded here)."""
    from data.demo import build_demo
    from model.embed import embed_collection
    from model.registry import build

    root = tmp_path_factory.mktemp("demo")
    build_demo(root, seed=0, max_side=96)
    sig = embed_collection(root, build("resnet18", seed=0), resolution=64, batch_size=32, progress=False)
    return sig.vectors


@pytest.mark.slow
@pytest.mark.parametrize(
    "kwargs",
    [
        {"min_samples": 2, "max_eps": 0.13, "xi": 0.05},  # the thesis's setting
        {"min_samples": 5, "max_eps": 0.02, "xi": 0.1},
        {"min_samples": 3, "max_eps": 0.03, "xi": 0.05},
        {"min_samples": 2, "max_eps": np.inf, "cluster_method": "dbscan", "eps": 0.01},
    ],
)
def test_parity_on_demo_signatures(demo_signatures, kwargs):
    x = demo_signatures
    sk = _sklearn(x, "cosine", kwargs["min_samples"], kwargs["max_eps"], kwargs.get("xi", 0.05),
                  kwargs.get("cluster_method", "xi"), kwargs.get("eps"))  # fmt: skip
    ours = optics(x, OpticsConfig(metric="cosine", engine="graph", **kwargs))
    _assert_equal(ours, sk)
    assert sk.labels_.max() >= 0


@pytest.mark.parametrize("block_size", [16, 40])
@pytest.mark.parametrize("name", ["lattice", "dup_cos", "blobs64"])
def test_graph_engine_with_many_small_tiles_equals_sklearn(name, block_size):
    """The radius graph is laid out tile by tile and strip by strip (diagonal tiles hold each pair once,
    the last tile is padded): with tiles far smaller than n it must still be exactly sklearn's."""
    x, metric = DATA[name]
    sk = _sklearn(x, metric, 3, EPS[name], 0.05, "xi")
    ours = optics(x, OpticsConfig(min_samples=3, max_eps=EPS[name], metric=metric, engine="graph",
                                  block_size=block_size))  # fmt: skip
    _assert_equal(ours, sk)


def test_float32_graph_is_the_same_with_small_tiles():
    x, metric = DATA["cos32"]
    cfg = {"min_samples": 2, "max_eps": 0.5, "metric": metric, "precision": "float32", "engine": "graph"}
    a, b = optics(x, OpticsConfig(**cfg)), optics(x, OpticsConfig(block_size=24, **cfg))
    np.testing.assert_array_equal(a.ordering, b.ordering)
    np.testing.assert_array_equal(a.labels, b.labels)
    np.testing.assert_allclose(a.reachability, b.reachability, rtol=1e-6)


@pytest.mark.parametrize("precision", ["float64", "float32"])
def test_accelerator_pair_extraction_gives_the_same_graph(monkeypatch, precision):
    """On an accelerator only the pairs of a tile cross to the host (`_tile_pairs`); run that path here on
    the CPU and compare it with the host path, tile for tile."""
    import cluster.optics as co

    x, metric = DATA["lattice"]
    cfg = OpticsConfig(min_samples=3, max_eps=1.0, metric=metric, block_size=24, precision=precision)
    exact = precision == "float64"
    graphs = []
    for backend in ("cpu", "gpu"):
        monkeypatch.setattr(co.jax, "default_backend", lambda b=backend: b)
        with co.jax.enable_x64(True):
            pts = co.prepare(x, metric, 3)
            plan = co.memory_plan(len(x), x.shape[1], cfg)
            _, _, g, near = co.neighbours_pass(
                pts, cfg, co.jnp.float64 if exact else co.jnp.float32, 5, 1.0 + 1e-9 * exact, plan,
                collect=True, near_above=1.0 - 1e-9 if exact else None,
            )  # fmt: skip
        graphs.append((g, near))
    (a, na), (b, nb) = graphs
    assert a.indices.size > 500 and (na[0].size > 50 or not exact)
    np.testing.assert_array_equal(a.indptr, b.indptr)
    np.testing.assert_array_equal(a.indices, b.indices)
    if not exact:
        np.testing.assert_array_equal(a.dists, b.dists)
    np.testing.assert_array_equal(na[0], nb[0])
    np.testing.assert_array_equal(na[1], nb[1])


@pytest.mark.parametrize("engine", ["dense", "stream"])
def test_cli_dense_and_stream_equal_sklearn_on_ties(tmp_path, engine):
    """The user's command with max_eps inf and min_samples 5 on signatures with exact duplicates: before issue 13
    these engines ordered tied reachabilities by XLA's distances and differed from scikit-learn."""
    from click.testing import CliRunner

    from cluster.__main__ import cli
    from cluster.clusters_file import read_clusters
    from data.signatures import Signatures, save_signatures

    x = DATA["dup_cos"][0].astype(np.float32)
    uids = [f"img{i}" for i in range(len(x))]
    save_signatures(tmp_path / "sig.npz", Signatures(uids=uids, vectors=x))
    out = tmp_path / "clusters.csv"
    r = CliRunner().invoke(cli, ["optics", str(tmp_path / "sig.npz"), "--out", str(out), "--max-eps", "inf",
                                 "--min-samples", "5", "--engine", engine])  # fmt: skip
    assert r.exit_code == 0, r.output
    t = read_clusters(out)
    sk = _sklearn(x, "cosine", 5, np.inf, 0.05, "xi")
    np.testing.assert_array_equal(np.argsort(t.order), sk.ordering_)
    np.testing.assert_array_equal(t.reachability, sk.reachability_)
    np.testing.assert_array_equal(t.core_distance, sk.core_distances_)
    np.testing.assert_array_equal(t.labels, sk.labels_)


def test_dense_rows_fetched_from_an_accelerator_give_the_same_result(monkeypatch):
    """On an accelerator the dense engine fetches one matrix row per processed point (`_matrix_row`) instead of
    reading XLA's buffer in place: run that path on the CPU."""
    import cluster.optics as co

    monkeypatch.setattr(co.jax, "default_backend", lambda: "gpu")
    x, metric = DATA["lattice"]
    sk = _sklearn(x, metric, 5, np.inf, 0.05, "xi")
    _assert_equal(optics(x, OpticsConfig(min_samples=5, max_eps=np.inf, metric=metric, engine="dense")), sk)
