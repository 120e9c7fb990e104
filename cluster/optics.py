"""Exact OPTICS with the distance work in JAX: scikit-learn's results, without its O(n^2) Python loop.

scikit-learn's `compute_optics_graph` (sklearn/cluster/_optics.py, read for this port) does, on float64 data:

1. core distance of each point = distance to its `min_samples`-th nearest neighbour, the point itself
   counted as the first; values above `max_eps` become inf; then `np.around(.., 15)`;
2. an ordering loop: take the unprocessed point with the smallest reachability (ties: the smallest
   row index, `np.argmin` over the unprocessed indices in increasing order; all-inf: the smallest
   unprocessed index); if its core distance is finite, for every *unprocessed* point within `max_eps`
   (inclusive) compute `np.around(max(dist, core), 15)` and take it when it is *strictly* smaller
   than the current reachability, recording the point as predecessor.

Where the time goes: step 2 asks, for every point, for its neighbours within max_eps, which
scikit-learn answers with one pass over all n points per point (n matrix-vector products plus Python
overhead). Here one blocked pass on the device (JAX; row block x column block tiles of a fixed shape,
so XLA compiles once; only tiles on and above the diagonal, the matrix is symmetric) finds, for every
point, its min_samples + 2 nearest candidates and every pair within max_eps (the radius graph, kept
sparse on the host). The ordering loop then walks the graph on the host with a heap keyed
(reachability, index), which is exactly "argmin, ties to the smallest index".

Why equal, not just close: the result depends on exact float ties (e.g. several points whose
reachability is the same core distance), and two float64 computations of one distance differ in the
last ulps, which the 1e-15 rounding usually, but not always, erases. So every distance that enters the
result is recomputed on the host with scikit-learn's own arithmetic, on the few pairs that matter:
core distances from the candidates (cosine: the normalised-rows GEMM that `kneighbors` runs;
euclidean: `ArgKmin`, or the KD-tree's formula when sklearn would use a tree), reachability distances
with the exact product `_set_reach_dist` makes (one row against the unprocessed neighbours in
ascending index order), and membership in the radius for pairs within 1e-9 of max_eps. The heavy
O(n^2 d) work stays on the device; the host work is O(edges * d).

Engines (memory O(n d) plus what `memory_budget_mb` allows):
- "graph" (above; needs finite max_eps and a graph within the budget): exact.
- "dense": the whole n x n distance matrix on the device and the whole ordering loop on the device in
  one `lax.fori_loop` (no host round trip per point); "stream": the same loop computing each processed
  point's distances on the fly (one matrix-vector product per point, memory O(n d) for any n).
  These use XLA's distances for reachability (core distances are still exact): equal to scikit-learn
  up to ulp-level ties (tested equal at min_samples=2; with larger min_samples tied
  reachabilities can be ordered differently).
"auto" takes "graph" when max_eps is finite and the graph fits the budget, else "dense" if the matrix
fits, else "stream". `precision="float32"` runs the device part in float32 and skips the exact
recomputation: faster, approximate.

Cluster extraction uses scikit-learn's own public functions `cluster_optics_xi` and
`cluster_optics_dbscan`, so labels follow from equal graphs.
"""

from __future__ import annotations

import heapq
import math
from dataclasses import asdict, dataclass
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
from sklearn.cluster import cluster_optics_dbscan, cluster_optics_xi
from sklearn.metrics._pairwise_distances_reduction import ArgKmin
from sklearn.preprocessing import normalize
from sklearn.utils.extmath import row_norms

METRICS = ("cosine", "euclidean")
ENGINES = ("auto", "graph", "dense", "stream")
CLUSTER_METHODS = ("xi", "dbscan")
PRECISIONS = ("float64", "float32")
DECIMALS = 15  # np.finfo(np.float64).precision: scikit-learn's rounding of core and reachability distances


@dataclass(frozen=True)
class OpticsConfig:
    """OPTICS parameters (scikit-learn's names and defaults) plus how to run it."""

    min_samples: int = 5
    max_eps: float = math.inf
    metric: str = "cosine"
    cluster_method: str = "xi"
    xi: float = 0.05
    eps: float | None = None  # for cluster_method="dbscan"; None = max_eps, as in scikit-learn
    min_cluster_size: int | float | None = None
    predecessor_correction: bool = True
    engine: str = "auto"
    precision: str = "float64"
    block_size: int = 2048
    memory_budget_mb: float = 2048.0  # radius graph (24 bytes per pair while built) or the dense n x n matrix

    def validate(self, n: int) -> None:
        if self.metric not in METRICS:
            raise ValueError(f"metric {self.metric!r} is not supported; use one of {METRICS}.")
        if self.engine not in ENGINES:
            raise ValueError(f"engine {self.engine!r}: use one of {ENGINES}.")
        if self.cluster_method not in CLUSTER_METHODS:
            raise ValueError(f"cluster_method {self.cluster_method!r}: use one of {CLUSTER_METHODS}.")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision {self.precision!r}: use one of {PRECISIONS}.")
        if not isinstance(self.min_samples, int | np.integer) or self.min_samples < 2:
            raise ValueError(f"min_samples must be an integer >= 2, got {self.min_samples!r}.")
        if self.min_samples > n:
            raise ValueError(f"min_samples ({self.min_samples}) is larger than the number of points ({n}).")
        if not self.max_eps >= 0:
            raise ValueError(f"max_eps must be >= 0, got {self.max_eps}.")
        if self.cluster_method == "dbscan" and self.eps is not None and self.eps > self.max_eps:
            raise ValueError(f"eps ({self.eps}) must not exceed max_eps ({self.max_eps}).")
        if self.block_size < 1:
            raise ValueError("block_size must be positive.")

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class OpticsResult:
    """Same meaning as scikit-learn's OPTICS attributes (ordering_, core_distances_, ...)."""

    ordering: np.ndarray  # int64 (n,): row indices in processing order
    core_distances: np.ndarray  # float64 (n,), inf = never core
    reachability: np.ndarray  # float64 (n,), inf = seed point
    predecessor: np.ndarray  # int64 (n,), -1 = seed point
    labels: np.ndarray  # int64 (n,), -1 = noise
    cluster_hierarchy: np.ndarray | None  # (k, 2) start/end in ordering (xi only)
    engine: str  # the engine that ran

    @property
    def order(self) -> np.ndarray:
        """Position of each row in the ordering (the inverse permutation)."""
        out = np.empty_like(self.ordering)
        out[self.ordering] = np.arange(len(self.ordering))
        return out


def _round(x: np.ndarray) -> np.ndarray:
    return np.around(x, decimals=DECIMALS)


def _round_jax(x: jax.Array) -> jax.Array:
    # numpy's around(x, 15) on float64 is rint(x * 1e15) / 1e15: the same IEEE operations here.
    f = 10.0**DECIMALS
    return jnp.rint(x * f) / f


@dataclass
class _Points:
    """The data as scikit-learn's distance functions see it, precomputed once.

    raw: float64 rows (what OPTICS.fit validates X to); unit: rows normalised with sklearn's `normalize`
    (cosine_distances normalises its inputs row by row, so precomputing gives bitwise the same rows);
    sq: squared norms with sklearn's `row_norms` (euclidean_distances does the same per row).
    `tree`: whether scikit-learn's NearestNeighbors would pick a KD-tree for the core distances
    (euclidean, <= 15 features, min_samples < n // 2), whose distances are sqrt(sum (x - y)^2).
    """

    raw: np.ndarray
    unit: np.ndarray
    sq: np.ndarray
    metric: str
    tree: bool

    @property
    def work(self) -> np.ndarray:
        """Rows the distance formula runs on: unit rows for cosine, raw rows for euclidean."""
        return self.unit if self.metric == "cosine" else self.raw

    def dist_1xm(self, p: int, cols: np.ndarray) -> np.ndarray:
        """Distances of row p to `cols`, bitwise as sklearn's pairwise_distances(X[[p]], X[cols]).

        This is the call `_set_reach_dist` makes; the same arithmetic on precomputed rows (checked bitwise
        against sklearn in the tests).
        """
        if self.metric == "cosine":
            s = self.unit[p : p + 1] @ self.unit[cols].T
            s *= -1
            s += 1
            return np.clip(s, 0.0, 2.0)[0]
        e = -2 * (self.raw[p : p + 1] @ self.raw[cols].T)
        e += self.sq[p]
        e += self.sq[cols][None, :]
        np.maximum(e, 0, out=e)
        return np.sqrt(e, out=e)[0]

    def dist_block(self, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        """Distances rows x cols as sklearn's kneighbors computes them (a GEMM, or the tree's formula).

        At least two rows and two columns are passed to the product so NumPy takes its matrix-matrix path,
        like the kneighbors chunk does (its matrix-vector path rounds differently).
        """
        if self.tree:
            acc = np.zeros((rows.size, cols.size))
            for f in range(self.raw.shape[1]):  # feature by feature, as the tree's rdist loop accumulates
                t = self.raw[rows, f][:, None] - self.raw[cols, f][None, :]
                acc += t * t
            return np.sqrt(acc)
        r = rows if rows.size >= 2 else np.concatenate([rows, rows])
        c = cols if cols.size >= 2 else np.concatenate([cols, cols])
        if self.metric == "cosine":
            s = self.unit[r] @ self.unit[c].T
            s *= -1
            s += 1
            out = np.clip(s, 0.0, 2.0)
        else:
            e = -2 * (self.raw[r] @ self.raw[c].T)
            e += self.sq[r][:, None]
            e += self.sq[c][None, :]
            np.maximum(e, 0, out=e)
            out = np.sqrt(e, out=e)
        return out[: rows.size, : cols.size]


def prepare(x: np.ndarray, metric: str, min_samples: int) -> _Points:
    raw = np.ascontiguousarray(x, dtype=np.float64)
    if raw.ndim != 2:
        raise ValueError(f"expected a 2-D array of points, got shape {raw.shape}.")
    if not np.all(np.isfinite(raw)):
        bad = int(np.flatnonzero(~np.all(np.isfinite(raw), axis=1))[0])
        raise ValueError(f"row {bad} has a NaN or infinite value; fix the signatures.")
    unit = normalize(raw, norm="l2") if metric == "cosine" else raw
    sq = row_norms(raw, squared=True)
    n, d = raw.shape
    tree = metric == "euclidean" and d <= 15 and min_samples < n // 2
    return _Points(raw=raw, unit=unit, sq=sq, metric=metric, tree=tree)


def _dist(xr, xc, sq_r, sq_c, metric: str):
    """Distances between two row blocks on the device, with the formulas of sklearn's pairwise_distances."""
    dot = jnp.matmul(xr, xc.T, precision=jax.lax.Precision.HIGHEST)
    if metric == "cosine":
        return jnp.clip(1.0 - dot, 0.0, 2.0)
    d2 = (-2.0 * dot + sq_r[:, None]) + sq_c[None, :]
    return jnp.sqrt(jnp.maximum(d2, 0.0))


def _smallest(vals, cols, m):
    """The m smallest of each row of `vals` and their entries of `cols`, smallest first.

    m is tiny (min_samples + 2): m passes of (min, first position of the min, mask it) cost a few
    streaming reductions, far less on XLA:CPU than `lax.top_k` (which sorts every row) or argmin.
    """
    pos = jnp.arange(vals.shape[1], dtype=jnp.int32)[None, :]
    out_d, out_i = [], []
    for _ in range(m):
        mn = jnp.min(vals, axis=1, keepdims=True)
        j = jnp.argmax(vals == mn, axis=1).astype(jnp.int32)[:, None]
        out_d.append(mn)
        out_i.append(jnp.take_along_axis(cols, j, axis=1))
        vals = jnp.where(pos == j, jnp.inf, vals)
    return jnp.concatenate(out_d, axis=1), jnp.concatenate(out_i, axis=1)


def _merge(best_d, best_i, d, cols, m):
    """Running m nearest per row, updated with one tile: the tile's own m smallest, then a tiny merge."""
    td, ti = _smallest(d, cols, m)
    return _smallest(jnp.concatenate([best_d, td], axis=1), jnp.concatenate([best_i, ti], axis=1), m)


@partial(jax.jit, static_argnames=("metric", "m", "b"), donate_argnames=("best_d", "best_i"))
def _tile_step(xp, sqp, valid, best_d, best_i, r0, c0, radius, *, metric, m, b):
    """One tile (rows r0.., columns c0.. with c0 >= r0) of the symmetric distance matrix.

    It updates the running m nearest of the row block with the tile and of the column block with its
    transpose (the product is symmetric; only the distance's last-ulp arithmetic is not, which the exact
    recomputation on the host makes irrelevant), and counts the pairs within `radius`.
    """
    xr, sr, vr = (jax.lax.dynamic_slice_in_dim(a, r0, b) for a in (xp, sqp, valid))
    xc, sc, vc = (jax.lax.dynamic_slice_in_dim(a, c0, b) for a in (xp, sqp, valid))
    d = _dist(xr, xc, sr, sc, metric)
    mask = vr[:, None] & vc[None, :]
    d = jnp.where(mask, d, jnp.inf)
    ar = jnp.arange(b, dtype=best_i.dtype)
    bd, bi = _merge(
        jax.lax.dynamic_slice_in_dim(best_d, r0, b),
        jax.lax.dynamic_slice_in_dim(best_i, r0, b),
        d,
        jnp.broadcast_to((c0 + ar)[None, :], d.shape),
        m,
    )
    best_d = jax.lax.dynamic_update_slice_in_dim(best_d, bd, r0, 0)
    best_i = jax.lax.dynamic_update_slice_in_dim(best_i, bi, r0, 0)
    dt = jnp.where(r0 == c0, jnp.inf, d.T)  # a diagonal tile is its own transpose: count it once
    bd, bi = _merge(
        jax.lax.dynamic_slice_in_dim(best_d, c0, b),
        jax.lax.dynamic_slice_in_dim(best_i, c0, b),
        dt,
        jnp.broadcast_to((r0 + ar)[None, :], d.shape),
        m,
    )
    best_d = jax.lax.dynamic_update_slice_in_dim(best_d, bd, c0, 0)
    best_i = jax.lax.dynamic_update_slice_in_dim(best_i, bi, c0, 0)
    count = jnp.sum(mask & (d <= radius))
    return d, best_d, best_i, count


@partial(jax.jit, static_argnames=("cap",))
def _extract_edges(d, radius, *, cap):
    r, c = jnp.nonzero((d <= radius) & jnp.isfinite(d), size=cap, fill_value=0)  # inf marks padding
    return r, c, d[r, c]


def _pad_rows(a: np.ndarray, m: int) -> np.ndarray:
    if a.shape[0] == m:
        return a
    return np.pad(a, [(0, m - a.shape[0])] + [(0, 0)] * (a.ndim - 1))


def _blocks(n: int, block_size: int) -> tuple[int, int]:
    """Tile size and padded n: one fixed tile shape for the whole run, so XLA compiles once."""
    n_blocks = -(-n // block_size)
    b = max(8, 8 * math.ceil(math.ceil(n / n_blocks) / 8))
    return b, -(-n // b) * b


@dataclass
class _Graph:
    """Pairs within the radius, CSR by row, columns ascending (the order sklearn's radius query returns)."""

    indptr: np.ndarray
    indices: np.ndarray
    dists: np.ndarray

    def row(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        a, b = self.indptr[i], self.indptr[i + 1]
        return self.indices[a:b], self.dists[a:b]


def neighbours_pass(
    pts: _Points, cfg: OpticsConfig, dtype, m: int, radius: float, edge_budget: int | None
) -> tuple[np.ndarray, np.ndarray, _Graph | None]:
    """The O(n^2 d) part, on the device, blocked: every point's m nearest (distances and indices) and,
    when `edge_budget` allows, all pairs within `radius`. Memory: O(n d + tile + edges)."""
    n = pts.raw.shape[0]
    b, n_pad = _blocks(n, cfg.block_size)
    xp = jnp.asarray(_pad_rows(pts.work, n_pad), dtype=dtype)
    sqp = jnp.asarray(_pad_rows(pts.sq, n_pad), dtype=dtype)
    valid = jnp.asarray(np.arange(n_pad) < n)
    rad = jnp.asarray(radius, dtype=dtype)
    on_cpu = jax.default_backend() == "cpu"
    best_d = jnp.full((n_pad, m), jnp.inf, dtype=dtype)
    best_i = jnp.zeros((n_pad, m), dtype=jnp.int32)
    collect = edge_budget is not None
    rows: list[np.ndarray] = []
    cols: list[np.ndarray] = []
    vals: list[np.ndarray] = []
    n_edges = 0
    for r0 in range(0, n_pad, b):
        for c0 in range(r0, n_pad, b):
            d, best_d, best_i, count = _tile_step(
                xp, sqp, valid, best_d, best_i, r0, c0, rad, metric=pts.metric, m=m, b=b
            )
            if not collect:
                continue
            count = int(count)
            if not count:
                continue
            n_edges += count if r0 == c0 else 2 * count
            if n_edges > edge_budget:
                collect, rows, cols, vals = False, [], [], []
                continue
            if on_cpu:  # the tile already lives in host memory: numpy finds the pairs without a copy
                dh = np.asarray(d)
                r, c = np.nonzero((dh <= radius) & np.isfinite(dh))  # inf marks padding
                v = dh[r, c]
            else:  # on an accelerator only the pairs cross to the host
                cap = max(1024, 1 << (count - 1).bit_length())  # few distinct shapes, few compilations
                r, c, v = (np.asarray(a)[:count] for a in _extract_edges(d, rad, cap=cap))  # host-side slice
            r, c, v = r.astype(np.int64) + r0, c.astype(np.int64) + c0, v.astype(np.float64)
            rows.append(r)
            cols.append(c)
            vals.append(v)
            if r0 != c0:
                rows.append(c)
                cols.append(r)
                vals.append(v)
    knn_d = np.asarray(best_d, dtype=np.float64)
    knn_i = np.asarray(best_i, dtype=np.int64)
    knn_d, knn_i = knn_d[:n], knn_i[:n]
    if not collect:
        return knn_d, knn_i, None
    r = np.concatenate(rows) if rows else np.zeros(0, np.int64)
    c = np.concatenate(cols) if cols else np.zeros(0, np.int64)
    v = np.concatenate(vals) if vals else np.zeros(0, np.float64)
    keep = r != c  # a point is processed before its own neighbours are updated: self pairs never matter
    r, c, v = r[keep], c[keep], v[keep]
    perm = np.lexsort((c, r))
    r, c, v = r[perm], c[perm], v[perm]
    indptr = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(np.bincount(r, minlength=n), out=indptr[1:])
    return knn_d, knn_i, _Graph(indptr=indptr, indices=c, dists=v)


def exact_core_distances(pts: _Points, knn_i: np.ndarray, k: int, chunk: int = 8) -> np.ndarray:
    """The k-th nearest distance recomputed the way scikit-learn's `kneighbors` computes it.

    Rows go in small chunks against the union of their candidates (the device's k + 2 nearest); the k-th
    smallest over any superset of a row's true k nearest is its true k-th distance. The arithmetic is
    sklearn's: the KD-tree formula, or `ArgKmin` (euclidean brute force), or the cosine GEMM.
    """
    n = knn_i.shape[0]
    core = np.empty(n)
    use_argkmin = not pts.tree and ArgKmin.is_usable_for(pts.raw[:2], pts.raw[:2], pts.metric)
    # ArgKmin has a fixed cost per call, while the GEMM of a chunk grows with the union of its candidates
    step = 16 * chunk if use_argkmin else chunk
    for s in range(0, n, step):
        rows = np.arange(s, min(s + step, n))
        uniq = np.unique(knn_i[rows])
        if use_argkmin:
            d, _ = ArgKmin.compute(
                X=pts.raw[rows],
                Y=pts.raw[uniq],
                k=k,
                metric=pts.metric,
                strategy="auto",
                return_distance=True,
            )
            core[rows] = d[:, k - 1]
        else:
            core[rows] = np.sort(pts.dist_block(rows, uniq), axis=1)[:, k - 1]
    return core


def _recheck_boundary(pts: _Points, graph: _Graph, max_eps: float, tol: float) -> _Graph:
    """Pairs whose device distance is within `tol` of max_eps: decide membership with sklearn's arithmetic."""
    near = graph.dists > max_eps - tol
    if not near.any():
        return graph
    row_of = np.repeat(np.arange(len(graph.indptr) - 1), np.diff(graph.indptr))
    keep = np.ones(graph.indices.size, dtype=bool)
    for p in np.unique(row_of[near]):
        a, b = graph.indptr[p], graph.indptr[p + 1]
        sel = np.flatnonzero(near[a:b]) + a
        keep[sel] = pts.dist_1xm(int(p), graph.indices[sel]) <= max_eps
    counts = np.bincount(row_of[keep], minlength=len(graph.indptr) - 1)
    indptr = np.zeros_like(graph.indptr)
    np.cumsum(counts, out=indptr[1:])
    return _Graph(indptr=indptr, indices=graph.indices[keep], dists=graph.dists[keep])


def order_graph(
    core: np.ndarray, graph: _Graph, pts: _Points | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """scikit-learn's ordering loop over the radius graph, on the host, with a heap keyed (reachability, index).

    The heap minimum is sklearn's `argmin` with ties to the smallest index; stale entries (point
    processed, or its reachability improved since the push) are dropped when popped. With `pts`, the
    distances to the unprocessed neighbours are recomputed exactly as sklearn's `_set_reach_dist` does
    (same rows, same column order, same arithmetic); without, the device's distances are used.
    """
    n = core.shape[0]
    reach = np.full(n, np.inf)
    pred = np.full(n, -1, dtype=np.int64)
    processed = np.zeros(n, dtype=bool)
    ordering = np.empty(n, dtype=np.int64)
    heap: list[tuple[float, int]] = []
    next_seed = 0
    for pos in range(n):
        point = -1
        while heap:
            r, p = heapq.heappop(heap)
            if not processed[p] and r == reach[p]:
                point = p
                break
        if point < 0:  # every unprocessed point has reachability inf: sklearn takes the smallest index
            while processed[next_seed]:
                next_seed += 1
            point = next_seed
        processed[point] = True
        ordering[pos] = point
        c = core[point]
        if c == np.inf:
            continue
        nb, d = graph.row(point)
        unproc = ~processed[nb]
        if not unproc.any():
            continue
        nb = nb[unproc]
        d = pts.dist_1xm(point, nb) if pts is not None else d[unproc]
        rd = _round(np.maximum(d, c))
        better = rd < reach[nb]
        nb, rd = nb[better], rd[better]
        reach[nb] = rd
        pred[nb] = point
        for q, v in zip(nb.tolist(), rd.tolist(), strict=True):
            heapq.heappush(heap, (v, q))
    return ordering, reach, pred


@partial(jax.jit, static_argnames=("metric", "dense"))
def _order_device(x, sq, core, max_eps, dmat, *, metric, dense):
    """The whole ordering loop on the device: one `fori_loop`, state = (reach, pred, processed, ordering)."""
    n = core.shape[0]

    def body(i, state):
        reach, pred, processed, ordering = state
        m = jnp.min(jnp.where(processed, jnp.inf, reach))
        point = jnp.argmax((~processed) & (reach == m))  # first index among the minima (inf included)
        processed = processed.at[point].set(True)
        ordering = ordering.at[i].set(point.astype(ordering.dtype))
        c = core[point]

        def update(rp):
            reach, pred = rp
            if dense:
                d = dmat[point]
            else:
                d = _dist(x[point][None, :], x, sq[point][None], sq, metric)[0]
            rd = _round_jax(jnp.maximum(d, c))
            better = (~processed) & (d <= max_eps) & (rd < reach)
            return jnp.where(better, rd, reach), jnp.where(better, point.astype(pred.dtype), pred)

        reach, pred = jax.lax.cond(jnp.isfinite(c), update, lambda rp: rp, (reach, pred))
        return reach, pred, processed, ordering

    init = (
        jnp.full(n, jnp.inf, dtype=core.dtype),
        jnp.full(n, -1, dtype=jnp.int32),
        jnp.zeros(n, dtype=bool),
        jnp.zeros(n, dtype=jnp.int32),
    )
    reach, pred, _, ordering = jax.lax.fori_loop(0, n, body, init)
    return ordering, reach, pred


def _dense_matrix(pts: _Points, cfg: OpticsConfig, dtype) -> jax.Array:
    n = pts.raw.shape[0]
    b, n_pad = _blocks(n, cfg.block_size)
    xp = jnp.asarray(_pad_rows(pts.work, n_pad), dtype=dtype)
    sqp = jnp.asarray(_pad_rows(pts.sq, n_pad), dtype=dtype)
    dist = jax.jit(partial(_dist, metric=cfg.metric))
    strips = [dist(xp[r0 : r0 + b], xp, sqp[r0 : r0 + b], sqp) for r0 in range(0, n_pad, b)]
    return jnp.concatenate(strips, axis=0)[:n, :n]


def compute_optics_graph(
    x: np.ndarray, cfg: OpticsConfig
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, str]:
    """ordering, core distances, reachability, predecessor (as sklearn's `compute_optics_graph`) and the engine used."""
    n = int(np.shape(x)[0])
    cfg.validate(n)
    pts = prepare(x, cfg.metric, cfg.min_samples)
    budget = int(cfg.memory_budget_mb * 2**20)
    exact = cfg.precision == "float64"
    k = cfg.min_samples
    m = min(n, k + 2) if exact else k
    # collect a little beyond max_eps so the boundary can be decided with sklearn's arithmetic
    tol = 1e-9 * max(1.0, cfg.max_eps) if exact and math.isfinite(cfg.max_eps) else 0.0
    with jax.enable_x64(True):
        dtype = jnp.float64 if exact else jnp.float32
        itemsize = 8 if exact else 4
        engine = cfg.engine
        want_graph = engine == "graph" or (engine == "auto" and math.isfinite(cfg.max_eps))
        knn_d, knn_i, graph = neighbours_pass(
            pts, cfg, dtype, m, cfg.max_eps + tol, budget // 24 if want_graph else None
        )
        core = exact_core_distances(pts, knn_i, k) if exact else knn_d[:, k - 1]
        core[core > cfg.max_eps] = np.inf
        core = _round(core)
        if graph is not None:
            if tol:
                graph = _recheck_boundary(pts, graph, cfg.max_eps, tol)
            ordering, reach, pred = order_graph(core, graph, pts if exact else None)
            return ordering, core, reach, pred, "graph"
        if engine == "graph":
            raise MemoryError(
                f"the radius graph for max_eps={cfg.max_eps} needs more than {cfg.memory_budget_mb} MB; "
                "raise --memory-budget-mb, lower --max-eps, or use --engine stream."
            )
        if engine == "dense" or (engine == "auto" and n * n * itemsize <= budget):
            dmat, engine = _dense_matrix(pts, cfg, dtype), "dense"
        else:
            dmat, engine = jnp.zeros((1, 1), dtype=dtype), "stream"
        out = _order_device(
            jnp.asarray(pts.work, dtype=dtype),
            jnp.asarray(pts.sq, dtype=dtype),
            jnp.asarray(core, dtype=dtype),
            jnp.asarray(cfg.max_eps, dtype=dtype),
            dmat,
            metric=cfg.metric,
            dense=engine == "dense",
        )
        ordering, reach, pred = (np.asarray(a) for a in out)
    return ordering.astype(np.int64), core, reach.astype(np.float64), pred.astype(np.int64), engine


def extract_labels(
    ordering: np.ndarray, core: np.ndarray, reach: np.ndarray, pred: np.ndarray, cfg: OpticsConfig
) -> tuple[np.ndarray, np.ndarray | None]:
    """Labels from the OPTICS graph, with scikit-learn's own extraction functions (as `OPTICS.fit` calls them)."""
    if cfg.cluster_method == "xi":
        # sklearn's xi code divides by zero reachabilities (duplicates): harmless, and noisy on the terminal
        with np.errstate(divide="ignore", invalid="ignore"):
            labels, hierarchy = cluster_optics_xi(
                reachability=reach,
                predecessor=pred,
                ordering=ordering,
                min_samples=cfg.min_samples,
                min_cluster_size=cfg.min_cluster_size,
                xi=cfg.xi,
                predecessor_correction=cfg.predecessor_correction,
            )
        return labels.astype(np.int64), hierarchy
    eps = cfg.max_eps if cfg.eps is None else cfg.eps
    labels = cluster_optics_dbscan(reachability=reach, core_distances=core, ordering=ordering, eps=eps)
    return labels.astype(np.int64), None


def optics(x: np.ndarray, cfg: OpticsConfig) -> OpticsResult:
    """OPTICS on the rows of x, equal to `sklearn.cluster.OPTICS(**same parameters).fit(x)`."""
    ordering, core, reach, pred, engine = compute_optics_graph(x, cfg)
    labels, hierarchy = extract_labels(ordering, core, reach, pred, cfg)
    return OpticsResult(
        ordering=ordering,
        core_distances=core,
        reachability=reach,
        predecessor=pred,
        labels=labels,
        cluster_hierarchy=hierarchy,
        engine=engine,
    )


METHODS = ("optics", "hdbscan", "dbscan")


def reduce_pca(x: np.ndarray, k: int, seed: int = 0) -> np.ndarray:
    """PCA to k dimensions (scikit-learn, seeded); OPTICS then runs on the projected rows."""
    from sklearn.decomposition import PCA

    if not 1 <= k <= min(x.shape):
        raise ValueError(f"--pca {k}: must be between 1 and min(n, d) = {min(x.shape)}.")
    return PCA(n_components=k, random_state=seed).fit_transform(np.asarray(x, dtype=np.float64))


def cluster_signatures(
    signatures_path: str,
    cfg: OpticsConfig,
    *,
    method: str = "optics",
    pca: int | None = None,
    eps: float = 0.08,
):
    """Signatures file -> ClusterTable (what `python -m cluster optics` writes), with provenance in params.

    method "optics" is this module's exact OPTICS; "hdbscan" and "dbscan" call scikit-learn's HDBSCAN /
    DBSCAN for comparison: they have no ordering, so `order` is the row index and reachability/core
    distance are NaN.
    """
    from cluster.clusters_file import ClusterTable, file_sha256
    from data.signatures import load_signatures

    if method not in METHODS:
        raise ValueError(f"method {method!r}: use one of {METHODS}.")
    sig = load_signatures(signatures_path)
    if len(sig) < 2:
        raise ValueError(f"{signatures_path}: {len(sig)} signatures; clustering needs at least 2.")
    x = sig.vectors
    if pca:
        x = reduce_pca(x, pca)
    n = len(sig)
    params = {
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
    if method == "optics":
        res = optics(x, cfg)
        params.update(engine=res.engine, precision=cfg.precision, ordering="optics")
        if cfg.cluster_method == "dbscan":
            params["eps"] = cfg.max_eps if cfg.eps is None else cfg.eps
        return ClusterTable(
            uids=sig.uids,
            labels=res.labels,
            order=res.order,
            reachability=res.reachability,
            core_distance=res.core_distances,
            params=params,
        ), res
    from sklearn.cluster import DBSCAN, HDBSCAN

    if method == "dbscan":
        labels = DBSCAN(eps=eps, min_samples=cfg.min_samples, metric=cfg.metric).fit_predict(x)
        params["eps"] = eps
    else:
        algo = "brute" if cfg.metric == "cosine" else "auto"  # the trees have no cosine metric
        labels = HDBSCAN(
            min_samples=cfg.min_samples, metric=cfg.metric, algorithm=algo, copy=True
        ).fit_predict(x)
    params.update(ordering="row index (this method has no ordering)")
    nan = np.full(n, np.nan)
    return ClusterTable(
        uids=sig.uids,
        labels=labels,
        order=np.arange(n),
        reachability=nan,
        core_distance=nan.copy(),
        params=params,
    ), None
