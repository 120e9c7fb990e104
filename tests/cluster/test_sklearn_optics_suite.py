"""scikit-learn's own OPTICS test-suite (sklearn/cluster/tests/test_optics.py, from the installed package),
run against every exact engine of cluster/optics.py: "graph", "dense", "stream" and "knn".

How: the suite's module is loaded from scikit-learn's package path, its test functions and their
`pytest.mark.parametrize` marks are expanded here, and each runs with the module-global `OPTICS`
replaced (monkeypatch) by `EngineOPTICS`, a class with scikit-learn's constructor, `fit` and attributes
that calls our engine. The suite's fixtures `global_dtype` (float64 and float32, as sklearn's
SKLEARN_RUN_FLOAT32_TESTS=1 runs them) and `global_random_seed` (42, sklearn's default) are supplied here.

On top of the suite's own assertions, every fit the suite makes is compared with scikit-learn's real
OPTICS on the same input and parameters: ordering, core distances, reachability and predecessor
bit-identical, labels and cluster hierarchy equal (`_assert_fits_equal_sklearn`).

"graph" needs no finite max_eps here: with max_eps=inf it runs on the complete graph (every pair within
the radius), which the project allows. Tests of inputs the project does not take are listed in
`DESELECTED` (whole functions) and `_deselect_params` (one parametrisation) with a reason each; they
appear in the report as skipped with "deselected: <reason>" and in their test id.
"""

from __future__ import annotations

import importlib.util
import inspect
import itertools
import math
import warnings
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import sklearn
from sklearn.cluster import OPTICS as SklearnOPTICS

from cluster.config import LIBRARY_METRICS
from cluster.optics import OpticsConfig, compute_optics_graph, extract_labels

SUITE_PATH = Path(sklearn.__file__).parent / "cluster" / "tests" / "test_optics.py"
ENGINES = ("graph", "dense", "stream", "knn")  # every exact engine; "knn" is cluster/knn_graph.py's


def _load_suite():
    spec = importlib.util.spec_from_file_location("sklearn_optics_suite", SUITE_PATH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


SUITE = _load_suite()

# Whole test functions of the suite that test inputs or messages the project does not have.
DESELECTED = {
    "test_minimum_number_of_sample_check": "parameter validation message: ours says 'min_samples (10) is larger "
    "than the number of points (1)' (OpticsConfig.validate), not sklearn's wording",
    "test_bad_extract": "parameter validation message: ours says 'eps (0.3) must not exceed max_eps (0.15)' "
    "(OpticsConfig.validate), not sklearn's wording",
    "test_nowarn_if_metric_bool_data_bool": "boolean metric rogerstanimoto: the project takes cosine, euclidean "
    "and minkowski (p=2)",
    "test_warn_if_metric_bool_data_no_bool": "boolean metric rogerstanimoto and sklearn's DataConversionWarning",
    "test_min_cluster_size_invalid2": "sparse (CSR) input in its second half: signatures are dense arrays",
    "test_precomputed_dists": "metric='precomputed': the project computes its own distances",
    "test_optics_input_not_modified_precomputed_sparse_nodiag": "metric='precomputed' on a sparse matrix",
    "test_optics_precomputed_sparse_no_warning": "metric='precomputed' on a sparse graph (sklearn's "
    "EfficiencyWarning)",
}
# Test functions that never call OPTICS (sklearn's private xi helpers, which our extraction calls): run once.
NO_ENGINE = {"test_extend_downward", "test_extend_upward", "test_the_extract_xi_labels"}
FIXTURES = {"global_dtype": [np.float64, np.float32], "global_random_seed": [42]}
# Tests whose CSR cases carry something no dense case has (metric="euclidean" in test_correct_number_of_clusters,
# the min_cluster_size check with metric="euclidean"): besides being deselected as sparse, each runs once more
# with its CSR container replaced by `as_dense` (the same points as a dense array), id "...-csr-as-dense".
DENSE_STANDIN = {"test_correct_number_of_clusters", "test_min_cluster_size_invalid2"}


def as_dense(x):
    """Stand-in for a CSR container: the points as the dense array the project reads."""
    return np.asarray(x)


def _deselect_params(params: dict) -> str | None:
    """Why one parametrisation is not run (None: it runs)."""
    if params.get("csr_container") not in (None, as_dense):
        return "sparse (CSR) input: signatures are dense arrays"
    metric = params.get("metric")
    if metric is not None and metric not in LIBRARY_METRICS:
        return f"metric {metric!r}: the project takes cosine, euclidean and minkowski (p=2)"
    return None


class EngineOPTICS:
    """scikit-learn's OPTICS interface over `cluster.optics` with one engine (subclassed per engine).

    Only what the project supports is accepted; anything else raises NotImplementedError, so a test can
    never pass on a silently different computation. `fits` records every fit for the comparison with
    scikit-learn's real OPTICS after the test.
    """

    engine = "auto"
    fits: list = []  # completed fits (input, parameters, result)
    calls: list = []  # every fit begun, also those that raise as the test expects

    def __init__(self, *, min_samples=5, max_eps=np.inf, metric="minkowski", p=2, metric_params=None,
                 cluster_method="xi", eps=None, xi=0.05, predecessor_correction=True, min_cluster_size=None,
                 algorithm="auto", leaf_size=30, memory=None, n_jobs=None):  # fmt: skip
        if metric not in LIBRARY_METRICS or p != 2 or metric_params or algorithm != "auto":
            raise NotImplementedError(f"metric={metric!r}, p={p}, metric_params, algorithm={algorithm!r}")
        self.params = dict(min_samples=min_samples, max_eps=max_eps, metric=metric, cluster_method=cluster_method,
                           eps=eps, xi=xi, predecessor_correction=predecessor_correction,
                           min_cluster_size=min_cluster_size)  # fmt: skip

    def fit(self, X, y=None):
        type(self).calls.append(self.params)
        x = np.asarray(X)
        if x.dtype.kind not in "fiub" or x.ndim != 2:
            raise NotImplementedError(f"input of dtype {x.dtype} and shape {x.shape}")
        x = x.astype(np.float64)
        n = x.shape[0]
        ms = self.params["min_samples"]
        # sklearn's rule: a fraction <= 1 is max(2, int(fraction * n)) for the graph; the extraction takes it as given
        k = max(2, int(ms * n)) if ms <= 1 else int(ms)
        cfg = OpticsConfig(
            engine=self.engine, **{**self.params, "min_samples": k, "max_eps": float(self.params["max_eps"])}
        )
        ordering, core, reach, pred, engine = compute_optics_graph(x, cfg)
        assert engine == self.engine, f"asked for engine {self.engine}, ran {engine}"
        if np.all(np.isinf(reach)):  # sklearn's compute_optics_graph warns so
            warnings.warn("All reachability values are inf. Set a larger max_eps or all data will be considered "
                          "outliers.", UserWarning, stacklevel=2)  # fmt: skip
        labels, hierarchy = extract_labels(ordering, core, reach, pred, replace(cfg, min_samples=ms))
        self.ordering_, self.core_distances_, self.reachability_, self.predecessor_ = (
            ordering,
            core,
            reach,
            pred,
        )
        self.labels_ = labels
        if hierarchy is not None:
            self.cluster_hierarchy_ = hierarchy
        type(self).fits.append((x, dict(self.params), self))
        return self


def _param_sets(fn) -> list[dict]:
    """The function's parametrisations: the product of its parametrize marks and of the fixtures it names."""
    axes: list[list[dict]] = []
    for mark in getattr(fn, "pytestmark", []):
        if mark.name != "parametrize":
            continue
        names, values = mark.args[0], mark.args[1]
        names = [s.strip() for s in names.split(",")] if isinstance(names, str) else list(names)
        axes.append([dict(zip(names, v if len(names) > 1 else (v,), strict=True)) for v in values])
    for name in inspect.signature(fn).parameters:
        if name in FIXTURES:
            axes.append([{name: v} for v in FIXTURES[name]])
        elif not any(name in a[0] for a in axes if a):
            raise LookupError(f"{fn.__name__} needs fixture {name!r}, which this adapter does not supply")
    return [dict(kv for d in combo for kv in d.items()) for combo in itertools.product(*axes)]


def _id(params: dict) -> str:
    def show(v):
        if isinstance(v, type) or callable(v):
            return getattr(v, "__name__", str(v))
        if isinstance(v, np.dtype | type(np.float64)):
            return np.dtype(v).name
        return str(v)

    return ",".join(f"{k}={show(v)}" for k, v in params.items())


def _cases():
    cases = []
    for name, fn in sorted(vars(SUITE).items()):
        if not name.startswith("test_") or not inspect.isfunction(fn):
            continue
        engines = [None] if name in NO_ENGINE else ENGINES
        for params in _param_sets(fn) + _dense_standins(name, fn):
            why = (
                DESELECTED.get(name) if params.get("csr_container") is not as_dense else None
            ) or _deselect_params(params)
            for engine in engines:
                tag = f"{engine or 'no-optics'}-{name}[{_id(params)}]".replace(
                    "csr_container=as_dense", "csr-as-dense"
                )
                marks = [pytest.mark.skip(reason=f"deselected: {why}")] if why else []
                cases.append(pytest.param(name, params, engine, id=tag + ("-DESELECTED" if why else ""),
                                          marks=marks))  # fmt: skip
    return cases


def _dense_standins(name: str, fn) -> list[dict]:
    """One extra parametrisation per distinct CSR case of a DENSE_STANDIN test, its container made `as_dense`."""
    if name not in DENSE_STANDIN:
        return []
    out = []
    for params in _param_sets(fn):
        if params.get("csr_container") is not None:
            standin = {**params, "csr_container": as_dense}
            if standin not in out:
                out.append(standin)
    return out


def _assert_fits_equal_sklearn(fits: list) -> None:
    for x, params, ours in fits:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            sk = SklearnOPTICS(**params).fit(x)
        for attr in ("ordering_", "core_distances_", "reachability_", "predecessor_", "labels_"):
            a, b = getattr(ours, attr), getattr(sk, attr)
            assert a.shape == b.shape and a.tobytes() == b.astype(a.dtype).tobytes(), (attr, params)
        if hasattr(sk, "cluster_hierarchy_"):
            np.testing.assert_array_equal(ours.cluster_hierarchy_, sk.cluster_hierarchy_)


@pytest.mark.parametrize(("name", "params", "engine"), _cases())
def test_sklearn_optics_suite(monkeypatch, name, params, engine):
    fn = getattr(SUITE, name)
    if engine is not None:
        adapter = type(f"OPTICS_{engine}", (EngineOPTICS,), {"engine": engine, "fits": [], "calls": []})
        monkeypatch.setattr(SUITE, "OPTICS", adapter)
    fn(**params)
    if engine is not None:
        assert adapter.calls, "the test made no fit: the adapter was not used"
        _assert_fits_equal_sklearn(adapter.fits)


def test_every_suite_function_is_run_or_deselected_with_a_reason():
    """The lists above name real tests of the installed suite, and nothing is left out silently."""
    names = {n for n, f in vars(SUITE).items() if n.startswith("test_") and inspect.isfunction(f)}
    assert set(DESELECTED) <= names and NO_ENGINE <= names
    assert all(len(reason) > 20 for reason in DESELECTED.values())
    assert "test_compare_to_ELKI" in names and "test_compare_to_ELKI" not in DESELECTED
    ran = {c.values[0] for c in _cases() if not c.marks}
    assert ran | set(DESELECTED) == names
    assert sum("csr-as-dense" in c.id for c in _cases()) == len(DENSE_STANDIN) * len(ENGINES)
    assert math.isinf(inspect.signature(SklearnOPTICS).parameters["max_eps"].default)
