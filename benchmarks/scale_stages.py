"""Timed stages of the archive-scale benchmark: the kNN graph, hard-negative mining, retrieval evaluation.

    python benchmarks/scale_stages.py [--n 20000] [--d 256] [--k 15] [--block 1024] [--gallery-block 8192]
                                      [--dtype float32] [--stages matmul,knn,mining,eval,check]

On a GPU, `--stages check` is the device check of data.knn (`check_knn`): the bound and the exact result.

`benchmarks/scale.py` calls `time_knn`, `time_mining` and `time_eval`; each returns a dict (one JSON line):
the stage, its sizes, `seconds` (wall clock, including the first call's compilation, reported apart as
`compile_seconds` where a warm-up call was made), `pairs_per_s` (distance pairs the stage scores per second),
`peak_rss_mb` / `rss_delta_mb` (the process's resident memory at its peak during the stage, and above what it
was when the stage began; sampled every 5 ms from /proc/self/statm) and, on an accelerator, `device_peak_mb`.
Run alone, the script also times a plain NumPy float32 matrix product of the same size (`time_matmul`), the
yardstick for the kNN graph's rate.  Imports neither grain, tfds, umap nor flask (the GPU box lacks them).
"""

from __future__ import annotations

import json
import os
import platform
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def archive_like(n: int, d: int, *, seed: int = 0, group_size: int = 4, grouped: float = 0.5,
                 dtype=np.float32) -> tuple[np.ndarray, np.ndarray]:
    """(unit rows, group ids): unrelated rows ~0.5 apart in cosine distance, pattern groups within ~0.05.

    Every row shares one direction with weight 1 (cos 0.5 between unrelated rows); a `grouped` fraction of
    rows come in groups of `group_size` around a common centre (noise 0.33: distances ~0.05 within a group).
    Ungrouped rows get their own group id (-1 - row).
    """
    rng = np.random.default_rng(seed)
    n_groups = int(n * grouped) // group_size
    group = -1 - np.arange(n, dtype=np.int64)
    group[: n_groups * group_size] = np.repeat(np.arange(n_groups), group_size)
    x = np.empty((n, d), dtype)
    step = max(1, (32 << 20) // (8 * d))
    centres = rng.normal(size=(n_groups, d)) / np.sqrt(d)
    for s in range(0, n, step):
        g = group[s : s + step]
        r = rng.normal(size=(len(g), d)) / np.sqrt(d)
        own = g >= 0
        r[own] = centres[g[own]] + 0.33 * r[own]
        r[own] /= np.linalg.norm(r[own], axis=1, keepdims=True)
        r[:, 0] = 0.0
        r /= np.linalg.norm(r, axis=1, keepdims=True)
        r[:, 0] = 1.0
        x[s : s + step] = r / np.linalg.norm(r, axis=1, keepdims=True)
    return x, group


class _PeakRss:
    """Peak resident memory of this process while the `with` block runs (a 5 ms sampling thread)."""

    def __init__(self) -> None:
        self.start = self.peak = _rss_mb()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.005):
            self.peak = max(self.peak, _rss_mb())

    def __enter__(self) -> _PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _rss_mb())


def _rss_mb() -> float:
    try:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except OSError:  # not Linux: no sampling
        return 0.0


def _device_peak_mb() -> float | None:
    import jax

    stats = jax.devices()[0].memory_stats() or {}
    peak = stats.get("peak_bytes_in_use")
    return None if peak is None else peak / 2**20


def _measure(stage: str, fn: Callable[[], dict], pairs: float, **info) -> dict:
    with _PeakRss() as mem:
        t0 = time.perf_counter()
        extra = fn() or {}
        seconds = time.perf_counter() - t0
    out = {"stage": stage, **info, "seconds": round(seconds, 3), "pairs_per_s": pairs / seconds if seconds else None,
           "peak_rss_mb": round(mem.peak, 1), "rss_delta_mb": round(mem.peak - mem.start, 1),
           "device_peak_mb": _device_peak_mb(), **extra}
    return out


def time_knn(x, k: int, *, block: int = 1024, gallery_block: int = 8192, dtype: str = "float32",
             metric: str = "cosine", warmup: bool = True) -> dict:
    """The all-rows kNN graph (`data.knn.knn`, exact) of x: seconds, pairs/s, rows recomputed, memory."""
    from data.knn import knn

    n, d = x.shape
    compile_s = None
    kw = dict(block=block, gallery_block=gallery_block, dtype=dtype, metric=metric)
    if warmup:  # the same tile shapes (queries are a slice, the gallery whole): compilation out of the timed call
        t0 = time.perf_counter()
        knn(x, k, queries=np.arange(min(n, block)), **kw)
        compile_s = round(time.perf_counter() - t0, 3)
    stats: dict = {}
    out = _measure("knn_graph", lambda: knn(x, k, stats=stats, **kw) and None,
                   float(n) * n, n=n, d=d, k=k, **kw)
    out.update(compile_seconds=compile_s, recomputed=stats.get("recomputed"))
    return out


def time_mining(x, groups, *, k: int = 10, queries=None, pool=None, block: int = 1024,
                gallery_block: int = 8192, dtype: str = "float32") -> dict:
    """Hard negatives (`train.mining.nearest_non_group`) for `queries` (default: every grouped row)."""
    from train.mining import nearest_non_group

    groups = np.asarray(groups)
    q = np.flatnonzero(groups >= 0) if queries is None else np.asarray(queries, np.int64)
    n, d = x.shape

    def run() -> dict:
        nearest_non_group(x, q, groups, k, pool=pool, query_block=block, gallery_block=gallery_block, dtype=dtype)
        return {}

    return _measure("mining", run, float(len(q)) * n, n=n, d=d, k=k, queries=int(len(q)), block=block,
                    gallery_block=gallery_block, dtype=dtype)


def time_eval(x, groups, *, queries=None, block: int = 1024) -> dict:
    """Retrieval evaluation (`train.metrics.partner_ranks` + `summarize_ranks`): queries = grouped rows."""
    from train.metrics import partner_ranks, summarize_ranks

    groups = np.asarray(groups)
    q = np.flatnonzero(groups >= 0) if queries is None else np.asarray(queries, np.int64)
    members: dict[int, list[int]] = {}
    for i in np.flatnonzero(groups >= 0):
        members.setdefault(int(groups[i]), []).append(int(i))
    partners = [[j for j in members.get(int(groups[i]), []) if j != i] for i in q]
    keep = [i for i, p in enumerate(partners) if p]
    q, partners = q[keep], [partners[i] for i in keep]
    n, d = x.shape
    result: dict = {}

    def run() -> dict:
        result.update(summarize_ranks(partner_ranks(x, q, partners, block=block)))
        return {"mAP": result.get("mAP"), "recall@1": result.get("recall@1")}

    return _measure("retrieval_eval", run, 2.0 * len(q) * n, n=n, d=d, queries=int(len(q)), block=block)


def check_knn(x, k: int, *, sample: int = 256, block: int = 1024, gallery_block: int = 8192,
              dtype: str = "float32", seed: int = 0) -> dict:
    """What only the device can confirm: its products stay within `data.knn.error_bound` (the certificate's
    premise; on a GPU, that Precision.HIGHEST really keeps TF32 out), and exact=True equals a NumPy float64
    brute force, on `sample` random queries against all rows."""
    from data.knn import exact_distances, knn

    n, d = x.shape
    q = np.sort(np.random.default_rng(seed).choice(n, size=min(sample, n), replace=False))
    kw = dict(block=block, gallery_block=gallery_block, dtype=dtype, queries=q)
    stats: dict = {}
    dev_d, dev_i = knn(x, k, exact=False, stats=stats, **kw)
    ref = exact_distances(x, q, np.maximum(dev_i, 0))
    err = float(np.max(np.where(dev_i >= 0, np.abs(dev_d - ref), 0.0))) if len(q) else 0.0
    bound = stats["bound"]  # error_bound of the device's row width
    got_d, got_i = knn(x, k, exact=True, **kw)
    want = np.empty_like(got_i)
    for r, i in enumerate(q):
        dist = np.concatenate([exact_distances(x, np.full(min(4096, n - s), i), np.arange(s, min(n, s + 4096)))
                               for s in range(0, n, 4096)])
        dist[i] = np.inf
        order = np.lexsort((np.arange(n), dist))[:k]
        want[r] = order
    return {"stage": "knn_check", "n": n, "d": d, "k": k, "dtype": dtype, "queries": int(len(q)),
            "max_error": err, "bound": bound, "bound_holds": bool(err <= bound),
            "exact_equals_brute_force": bool(np.array_equal(got_i, want))}


def time_matmul(x, *, block: int = 2048) -> dict:
    """A plain NumPy float32 product x @ x.T in row blocks (no selection): the yardstick for the graph."""
    x32 = np.asarray(x, np.float32)
    n, d = x32.shape

    def run() -> dict:
        for s in range(0, n, block):
            x32[s : s + block] @ x32.T
        return {}

    return _measure("numpy_matmul", run, float(n) * n, n=n, d=d, block=block)


def main(argv: list[str] | None = None) -> None:
    import argparse

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--n", type=int, default=20000)
    p.add_argument("--d", type=int, default=256)
    p.add_argument("--k", type=int, default=15)
    p.add_argument("--block", type=int, default=1024)
    p.add_argument("--gallery-block", type=int, default=8192)
    p.add_argument("--dtype", default="float32")
    p.add_argument("--stages", default="matmul,knn,mining,eval", help="any of matmul,knn,mining,eval,check")
    a = p.parse_args(argv)
    x, groups = archive_like(a.n, a.d)
    host = {"host": platform.node(), "cpus": os.cpu_count()}
    rows = []
    stages = a.stages.split(",")
    if "matmul" in stages:
        rows.append(time_matmul(x, block=a.block))
    if "knn" in stages:
        rows.append(time_knn(x, a.k, block=a.block, gallery_block=a.gallery_block, dtype=a.dtype))
    if "mining" in stages:
        rows.append(time_mining(x, groups, k=a.k, block=a.block, gallery_block=a.gallery_block, dtype=a.dtype))
    if "eval" in stages:
        rows.append(time_eval(x, groups))
    if "check" in stages:
        rows.append(check_knn(x, a.k, block=a.block, gallery_block=a.gallery_block, dtype=a.dtype))
    for r in rows:
        print(json.dumps({**r, **host}))
    for r in rows:
        if r["stage"] == "knn_check":
            print(f"knn_check: device error {r['max_error']:.3g} <= bound {r['bound']:.3g}: {r['bound_holds']}; "
                  f"exact == float64 brute force on {r['queries']} queries: {r['exact_equals_brute_force']}")
            continue
        rate = f"{r['pairs_per_s']:.3g} pairs/s" if r.get("pairs_per_s") else ""
        print(f"{r['stage']}: n={a.n} d={a.d}: {r['seconds']:.2f} s, {rate}, peak RSS {r['peak_rss_mb']:.0f} MB "
              f"(+{r['rss_delta_mb']:.0f} MB)")
    if "matmul" in stages and "knn" in stages:
        print(f"kNN graph rate / numpy float32 matmul rate: {rows[1]['pairs_per_s'] / rows[0]['pairs_per_s']:.2f}")


if __name__ == "__main__":
    main()
