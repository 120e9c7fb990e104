"""`python -m cluster optics`'s work: a signatures file in, clusters.csv + clusters.json + the plot out.

The algorithm is `cluster.optics` (arrays in, arrays out); this module is what turns a file into a
`ClusterTable` with its provenance (parameters, the signatures file and its sha256) and writes the
outputs. `--method hdbscan` and `dbscan` run scikit-learn's HDBSCAN / DBSCAN on the same signatures for
comparison: they have no ordering, so `order` is the row index, reachability and core distance are NaN
and no reachability plot is drawn.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np

from cluster.clusters_file import ClusterTable, file_sha256, remove_previous, write_clusters
from cluster.config import DBSCAN_EPS, METHODS, OpticsConfig, knn_metric
from cluster.neighbours_file import neighbours_path, write_neighbours
from cluster.optics import OpticsResult, optics
from cluster.plots import reachability_plot
from cluster.settings_check import (
    auto_thresholds,
    describe_auto,
    neighbour_distances,
    random_pair_distances,
    setting_warnings,
)
from data.signatures import Signatures, load_signatures


def reduce_pca(x: np.ndarray, k: int, seed: int = 0) -> np.ndarray:
    """PCA to k dimensions (scikit-learn, seeded); OPTICS then runs on the projected rows."""
    from sklearn.decomposition import PCA

    if not 1 <= k <= min(x.shape):
        raise ValueError(f"--pca {k}: must be between 1 and min(n, d) = {min(x.shape)}.")
    return PCA(n_components=k, random_state=seed).fit_transform(np.asarray(x, dtype=np.float64))


def _provenance(signatures_path: str | Path, n: int, cfg: OpticsConfig, method: str, pca: int | None) -> dict:
    """What clusters.json records of every run: the method, its parameters and the signatures file."""
    return {
        "method": method,
        "min_samples": cfg.min_samples,
        "max_eps": cfg.max_eps if math.isfinite(cfg.max_eps) else "inf",
        "xi": cfg.xi,
        "metric": cfg.metric,
        "cluster_method": cfg.cluster_method,
        "pca": pca,
        "signatures": str(signatures_path),
        "signatures_sha256": file_sha256(signatures_path),
        "n": n,
    }


def _optics_table(sig: Signatures, x: np.ndarray, cfg: OpticsConfig, params: dict) -> tuple[ClusterTable, OpticsResult]:
    res = optics(x, cfg)
    params.update(engine=res.engine, precision=cfg.precision, ordering="optics", approximate=cfg.approximate)
    params.update(res.info)  # knn engine: exact, knn_k, incomplete_rows, grown_rows, reason (cluster/knn_graph.py)
    if cfg.cluster_method == "dbscan":
        params["eps"] = cfg.extraction_eps
    table = ClusterTable(uids=sig.uids, labels=res.labels, order=res.order, reachability=res.reachability,
                         core_distance=res.core_distances, params=params, neighbours=res.neighbours)  # fmt: skip
    return table, res


DENSE_HDBSCAN_PAIR_BYTES = 16  # scikit-learn's dense HDBSCAN: the n x n float64 distances and their sort


def _hdbscan_on_knn(cfg: OpticsConfig, n: int) -> bool:
    """HDBSCAN on the kNN graph (cluster/knn_hdbscan.py) for --engine knn, or for auto when the n x n matrix
    of scikit-learn's dense HDBSCAN would not fit the memory budget; else scikit-learn's dense HDBSCAN."""
    too_big = DENSE_HDBSCAN_PAIR_BYTES * n * n > cfg.memory_budget_mb * 2**20
    return cfg.engine == "knn" or (cfg.engine == "auto" and too_big)


def _comparison_table(sig: Signatures, x: np.ndarray, cfg: OpticsConfig, method: str, params: dict) -> ClusterTable:
    """scikit-learn's HDBSCAN or DBSCAN (eps: `cfg.eps`, else DBSCAN_EPS) in the same table format."""
    keep: dict = {}  # HDBSCAN on the kNN graph: its lists, for `cluster map`
    from sklearn.cluster import DBSCAN, HDBSCAN

    if method == "dbscan":
        params["eps"] = DBSCAN_EPS if cfg.eps is None else cfg.eps
        labels = DBSCAN(eps=params["eps"], min_samples=cfg.min_samples, metric=cfg.metric).fit_predict(x)
    elif _hdbscan_on_knn(cfg, len(x)):
        from cluster.knn_hdbscan import knn_hdbscan

        labels, info, _ = knn_hdbscan(x, min_samples=cfg.min_samples, metric=cfg.metric, knn_k=cfg.knn_k,
                                      block=cfg.block_size, keep=keep)  # fmt: skip
        params.update(engine="knn", **info.to_dict())
    else:
        algo = "brute" if cfg.metric == "cosine" else "auto"  # the trees have no cosine metric
        labels = HDBSCAN(min_samples=cfg.min_samples, metric=cfg.metric, algorithm=algo, copy=True).fit_predict(x)
        params.update(engine="dense")
    params.update(ordering="row index (this method has no ordering)")
    n = len(sig)
    nan = np.full(n, np.nan)
    return ClusterTable(uids=sig.uids, labels=labels, order=np.arange(n), reachability=nan,
                        core_distance=nan.copy(), params=params, neighbours=keep.get("neighbours"))  # fmt: skip


LONG_RUN_N = 5000  # above this many signatures, OPTICS with max_eps = inf is worth a word before it starts


def long_run_notice(n: int, d: int, cfg: OpticsConfig, method: str) -> str | None:
    """What to tell the user before a run that will be long and silent, or None.

    OPTICS with max_eps = inf makes every pair a candidate: the exact result needs all n² distances and, on
    the dense and stream engines, host work for a large share of the points (83 s at 8,000 x 512 on a 2-core
    CPU). A user who left max_eps at inf by accident should hear it at the start, with the faster choices,
    not after minutes of silence.
    """
    if method != "optics" or math.isfinite(cfg.max_eps) or n <= LONG_RUN_N:
        return None
    return (f"max_eps is inf: every pair of the {n:,} signatures ({d}-d) is a candidate, so exact OPTICS does "
            f"O(n²) work here and may take many minutes. A finite --max-eps (signatures in one pattern group lie "
            f"within ~0.13 in cosine distance) or --method hdbscan runs on a k-nearest-neighbour graph instead.")


def centre_rows(x: np.ndarray) -> np.ndarray | None:
    """Subtract the mean signature and bring every row back to unit length (in place); returns the mean that was
    subtracted (x's dtype), or None where a row would vanish (it equals the mean: e.g. all signatures
    identical), x then unchanged, so that the caller can say so.

    Why: after fine-tuning, the signatures share one dominant direction (on the demo every cosine distance lies
    in 0.003-0.016, the mean signature has norm 0.998), so the differences that tell groups apart are a thin
    shell around it and density clustering sees them compressed into a few hundredths. Removing the shared
    direction spreads them out again (docs/clustering.md, "Centring", for the measurement).
    """
    if not len(x):
        return None
    mean = x.mean(axis=0, dtype=np.float64)
    # |x_i - mean|² without a copy of x, so that x stays as given when centring is refused
    squares = np.einsum("ij,ij->i", x, x, dtype=np.float64) - 2.0 * (x @ mean.astype(x.dtype)) + mean @ mean
    if squares.min() <= 1e-5 * float(np.einsum("ij,ij->", x, x, dtype=np.float64)) / len(x):  # float32 rounding
        return None
    subtracted = mean.astype(x.dtype)
    x -= subtracted
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return subtracted


def _prepare(x: np.ndarray, cfg: OpticsConfig, method: str, choices: dict, params: dict, notify) -> OpticsConfig:
    """Centring and the thresholds from the data (`choices`: centre, max_eps_auto, eps_auto); records them."""
    params["centre"] = False
    if choices.get("centre"):
        mean = centre_rows(x)
        if mean is None:
            params.setdefault("warnings", []).append(
                "--centre skipped: a signature equals the mean of all (are they all the same?); clustered as given.")
        else:
            params["centre"] = True
            if not choices.get("pca"):  # the signatures' own space: the annotation page centres them alike
                params["centre_mean"] = mean.astype(np.float32).tolist()  # exact floats; without it, the page
                # read the whole signatures file once for the mean (8 GB at 10^6 x 2048)
    want = {"max_eps": choices.get("max_eps_auto") and method == "optics",
            "eps": choices.get("eps_auto") and (method == "dbscan" or cfg.cluster_method == "dbscan")}
    if not any(want.values()):
        return cfg
    auto = auto_thresholds(neighbour_distances(x, cfg.min_samples, cfg.metric),
                           random_pair_distances(x, knn_metric(cfg.metric)), len(x))  # fmt: skip
    chosen = {name: auto[name] for name, on in want.items() if on}
    if "eps" in chosen and method == "optics":  # the extraction eps may not exceed max_eps
        chosen["eps"] = min(chosen["eps"], chosen.get("max_eps", cfg.max_eps))
    params["auto"] = {**auto, "chosen": sorted(chosen)}
    if notify is not None:
        notify(describe_auto(auto, chosen, centred=bool(params.get("centre"))))
    return replace(cfg, **chosen)


def cluster_signatures(
    signatures_path: str | Path, cfg: OpticsConfig, *, method: str = "optics", pca: int | None = None,
    notify=None, centre: bool = False, max_eps_auto: bool = False, eps_auto: bool = False,
    constraints: tuple[list[list[str]], list[tuple[str, str]]] | None = None,
    check_uids: Callable[[list[str]], None] | None = None,
) -> tuple[ClusterTable, OpticsResult | None]:
    """Signatures file -> ClusterTable (what `python -m cluster optics` writes), with provenance in params.

    method "optics" is `cluster.optics.optics` with `cfg` (its OpticsResult is returned too, for the plot);
    "hdbscan" and "dbscan" are scikit-learn's, for comparison (no OpticsResult). `cfg.eps` is the
    extraction eps of `cluster_method="dbscan"` for OPTICS, and DBSCAN's eps for `method="dbscan"`.
    `notify(text)` hears, before the work starts, that a run will be long (`long_run_notice`), and the
    thresholds chosen from the data. `centre`: subtract the mean signature and re-normalise the rows first
    (`centre_rows`, after `pca`); `max_eps_auto` / `eps_auto`: replace cfg.max_eps (OPTICS) / cfg.eps (DBSCAN, and
    OPTICS' dbscan extraction) by values from the signatures' own neighbour distances
    (`cluster.settings_check.auto_thresholds`); clusters.json records both (`centre`, `auto`).
    `constraints` (must-link groups, cannot-link pairs of uids: `cluster.constraints.collection_constraints`) are
    applied to the method's labels (`cluster.constraints.apply_constraints`); clusters.json records the counts
    (`constraints`). `check_uids(uids)` is called once the signatures are read, before any work: it raises to refuse
    them (e.g. signatures of another collection than the constraints').
    """
    if method not in METHODS:
        raise ValueError(f"method {method!r}: use one of {METHODS}.")
    sig = load_signatures(signatures_path)
    if check_uids is not None:
        check_uids(sig.uids)
    if len(sig) < 2:
        raise ValueError(f"{signatures_path}: {len(sig)} signatures; clustering needs at least 2.")
    x = sig.dense()  # float32 in memory, whatever the store holds (float16 rows are upcast)
    x = reduce_pca(x, pca) if pca else x
    prepared: dict = {}
    cfg = _prepare(x, cfg, method, {"centre": centre, "max_eps_auto": max_eps_auto, "eps_auto": eps_auto, "pca": pca},
                   prepared, notify)  # fmt: skip
    notice = long_run_notice(len(sig), x.shape[1], cfg, method)
    if notice and notify is not None:
        notify(notice)
    params = _provenance(signatures_path, len(sig), cfg, method, pca)
    params.update(prepared)
    if method == "optics":
        table, res = _optics_table(sig, x, cfg, params)
        core = res.core_distances
    else:
        table, res = _comparison_table(sig, x, cfg, method, params), None
        core = _core_distances(x, cfg) if len(x) <= CORE_DISTANCES_MAX else None
    if constraints is not None:
        res = _constrain(table, res, x, cfg, method, constraints)
    eps = cfg.eps if cfg.eps is not None or method != "dbscan" else DBSCAN_EPS
    table.params["warnings"] = prepared.get("warnings", []) + setting_warnings(
        table.labels, method=method, max_eps=cfg.max_eps, eps=eps, core_distances=core, centred=prepared["centre"])
    return table, res


def _min_cluster_size(cfg: OpticsConfig, n: int) -> int:
    """The smallest piece a split cluster may leave (smaller ones become noise): OPTICS' min_cluster_size
    (scikit-learn's rule: min_samples when not given, a fraction of n below 1), else min_samples, for every
    method; HDBSCAN itself makes no cluster below 5, but a piece of a cluster cut by the expert's decisions may
    be a pattern known from two images (the reason for the command's min_samples 2)."""
    size = cfg.min_samples if cfg.min_cluster_size is None else cfg.min_cluster_size
    return int(size) if size > 1 else max(2, int(size * n))


def _constrain(table: ClusterTable, res: OpticsResult | None, x: np.ndarray, cfg: OpticsConfig, method: str,
               constraints: tuple[list[list[str]], list[tuple[str, str]]]) -> OpticsResult | None:
    """The expert's decisions applied to the table's labels (and the OpticsResult's, which the plot shows)."""
    from cluster.constraints import apply_constraints, to_indices

    groups, pairs, outside = to_indices(table.uids, *constraints)
    tree = {"ordering": res.ordering, "reachability": res.reachability} if res is not None else {"x": x}
    labels, report = apply_constraints(table.labels, groups, pairs, min_cluster_size=_min_cluster_size(cfg, len(table)),
                                       metric=knn_metric(cfg.metric), **tree)  # fmt: skip
    table.labels = labels
    table.params["constraints"] = {**report, "connections_outside": outside}
    return replace(res, labels=labels) if res is not None else None


CORE_DISTANCES_MAX = 50_000  # DBSCAN/HDBSCAN: the neighbour distances shown in a warning, computed up to here


def _core_distances(x: np.ndarray, cfg: OpticsConfig) -> np.ndarray:
    """Each row's distance to its min_samples-th neighbour (itself counted, as OPTICS's core distance), every row."""
    return neighbour_distances(x, cfg.min_samples, cfg.metric, sample=len(x))


def write_clustering(
    out: Path, table: ClusterTable, res: OpticsResult | None, *, max_eps: float, plot: Path | None = None
) -> Path | None:
    """Write clusters.csv + clusters.json and, for OPTICS, the reachability plot; returns the plot's path.

    The knn engine's neighbour lists go to clusters.knn.npz beside them (`cluster.neighbours_file`).

    The plot goes to `plot`, by default reachability.png beside `out`, and clusters.json names it. The files
    of an older run there are removed first (`remove_previous`), so no file of it sits beside the new ones.
    """
    plot = (plot or out.with_name("reachability.png")) if res is not None else None
    table.params["plot"] = os.path.relpath(plot.resolve(), out.resolve().parent) if plot else None
    knn_file = neighbours_path(out)
    remove_previous(out, *([plot] if plot else []), knn_file)
    write_clusters(out, table)
    if table.neighbours is not None:  # the knn engine's lists (OPTICS or HDBSCAN), for `cluster map`
        write_neighbours(knn_file, *table.neighbours, signatures_sha256=table.params.get("signatures_sha256", ""),
                         metric=str(table.params.get("metric", "")))  # fmt: skip
    if plot is not None:
        reachability_plot(plot, res.ordering, res.reachability, res.labels,
                          max_eps=max_eps if math.isfinite(max_eps) else None)  # fmt: skip
    return plot
