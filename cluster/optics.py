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

Metrics: "cosine" and "euclidean" (sklearn's formulas), and in the library "minkowski" with p=2,
scikit-learn's default: its reachability distances are SciPy's `cdist` by coordinate differences (what
sklearn's pairwise_distances calls), its neighbour queries sklearn's euclidean ones (NearestNeighbors
turns minkowski p=2 into euclidean). scikit-learn's own OPTICS test-suite, its ELKI comparison
included, runs on that metric (tests/cluster/test_sklearn_optics_suite.py).

Memory: `memory_budget_mb` bounds everything the run allocates beyond the input array (`memory_plan`):
float64 working rows and their device copy, O(n) state, one tile (shrunk below `block_size` when the
budget needs it), and then the radius graph (6 bytes per directed edge: int32 CSR columns, no
distances, since the exact path recomputes them; 12 in float32 mode) or the dense matrix. A budget
that cannot hold the points and the smallest tile is refused up front with the figure that would do.

Engines:
- "graph" (above; needs finite max_eps and a graph within the budget): exact.
- "dense": the whole n x n distance matrix on the device (O(n^2) memory, only when it fits the budget);
  "stream": each processed point's distances computed on the device when it is processed (one
  matrix-vector product per point, memory O(n d) for any n). Both feed `order_rows`, the host loop:
  per point O(n) vectorised NumPy (`argmin` over the unprocessed reachabilities is sklearn's choice,
  ties and all-inf included). Exact too: a device distance is within `distance_error_bound` of
  sklearn's (two float64 evaluations of one formula, any summation order), so the device decides every
  comparison the bound settles (a point that cannot improve, a distance surely below the core distance,
  whose value is then round(core)); when some unprocessed neighbour could improve with a distance above
  the core distance, the row is recomputed with `_set_reach_dist`'s product against all of the point's
  unprocessed neighbours, ascending (the same columns, so the same BLAS blocking and the same bits: a
  product's value depends on which other columns it is computed with, in ~0.1% of entries at d=512).
  That is O(n d) host work for such points: with max_eps=inf it is most of them (see docs/clustering.md).
  Radius membership near max_eps is decided as "graph" decides it.
- "knn" (cluster/knn_graph.py): the same exact machinery on a k-nearest-neighbour graph from `data.knn`,
  memory O(n k); exact when every row's k-th neighbour lies beyond max_eps (detected, k grown per row).
"auto" takes "knn" when max_eps is finite (falling back to the rest of this rule when its lists cannot be
exact, unless `approximate`), then "graph" when max_eps is finite and the graph fits the budget, else
"dense" if the matrix fits, else "stream"; an engine asked for by name that does not fit raises OpticsMemoryError.
`precision="float32"` runs the device part in float32 and skips the exact recomputation: faster,
approximate.

Cluster extraction uses scikit-learn's own public functions `cluster_optics_xi` and
`cluster_optics_dbscan`, so labels follow from equal graphs.
"""

from __future__ import annotations

import heapq
import math
from dataclasses import dataclass, field
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
from scipy.spatial.distance import cdist
from sklearn.cluster import cluster_optics_dbscan, cluster_optics_xi
from sklearn.metrics._pairwise_distances_reduction import ArgKmin
from sklearn.preprocessing import normalize
from sklearn.utils.extmath import row_norms

from cluster.config import OpticsConfig, knn_metric

DECIMALS = 15  # np.finfo(np.float64).precision: scikit-learn's rounding of core and reachability distances


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
    info: dict = field(default_factory=dict)  # engine "knn": exact or not, and why (cluster.knn_graph.KnnInfo)
    # engine "knn": each row's nearest neighbours (int32 indices, float32 distances; the row itself left out),
    # which `cluster map` reuses instead of searching again; None for the other engines
    neighbours: tuple[np.ndarray, np.ndarray] | None = None

    @property
    def order(self) -> np.ndarray:
        """Position of each row in the ordering (the inverse permutation)."""
        out = np.empty_like(self.ordering)
        out[self.ordering] = np.arange(len(self.ordering))
        return out


def _round(x: np.ndarray) -> np.ndarray:
    return np.around(x, decimals=DECIMALS)


@dataclass
class _Points:
    """The data as scikit-learn's distance functions see it, precomputed once.

    raw: float64 rows (what OPTICS.fit validates X to; for cosine the same array as `unit`, since only the
    euclidean formulas read raw rows); unit: rows normalised with sklearn's `normalize`
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

    @property
    def knn_metric(self) -> str:
        """The metric of sklearn's neighbour queries (`cluster.config.knn_metric`)."""
        return knn_metric(self.metric)

    def dist_1xm(self, p: int, cols: np.ndarray) -> np.ndarray:
        """Distances of row p to `cols`, bitwise as sklearn's pairwise_distances(X[[p]], X[cols]).

        This is the call `_set_reach_dist` makes; the same arithmetic on precomputed rows (checked bitwise
        against sklearn in the tests). "minkowski" (p=2, scikit-learn's default metric, library only) is
        SciPy's `cdist`, which sklearn's pairwise_distances calls for it: sqrt of summed squared differences.
        """
        if self.metric == "minkowski":
            return cdist(self.raw[p : p + 1], self.raw[cols], "minkowski", p=2)[0]
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
    """One float64 copy of the rows (for cosine, normalised in place: the raw rows are not needed again)."""
    raw = np.array(x, dtype=np.float64, order="C", copy=True)  # never the caller's array: it is changed below
    if raw.ndim != 2:
        raise ValueError(f"expected a 2-D array of points, got shape {raw.shape}.")
    if not np.all(np.isfinite(raw)):
        bad = int(np.flatnonzero(~np.all(np.isfinite(raw), axis=1))[0])
        raise ValueError(f"row {bad} has a NaN or infinite value; fix the signatures.")
    sq = row_norms(raw, squared=True)
    # normalize(copy=False) divides in place with the same arithmetic as its copying form
    unit = normalize(raw, norm="l2", copy=False) if metric == "cosine" else raw
    n, d = raw.shape
    tree = metric in ("euclidean", "minkowski") and d <= 15 and min_samples < n // 2
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
    upper = (r0 != c0) | (ar[None, :] > ar[:, None])  # a diagonal tile holds each pair twice
    count = jnp.sum(mask & (d <= radius) & upper)  # unordered pairs within the radius
    return d, best_d, best_i, count


def _blocks(n: int, block_size: int) -> tuple[int, int]:
    """Tile size and padded n: one fixed tile shape for the whole run, so XLA compiles once."""
    n_blocks = -(-n // block_size)
    b = max(8, 8 * math.ceil(math.ceil(n / n_blocks) / 8))
    return b, -(-n // b) * b


def _to_device(a: np.ndarray, n_pad: int, dtype) -> jax.Array:
    """Rows of `a` zero-padded to n_pad, on the device; the host staging copy is freed on return."""
    host = np.zeros((n_pad, *a.shape[1:]), dtype=np.dtype(dtype))
    host[: a.shape[0]] = a
    return jax.device_put(host)  # device_put, not jnp.asarray: no XLA compilation for the transfer


# -- memory ------------------------------------------------------------------------------------------
# What each structure costs, in bytes, measured (tests/cluster/test_optics_memory.py holds the whole run
# to the budget, and checks the tile figure against XLA's own memory analysis).
GRAPH_EDGE_BYTES = 6  # exact: int32 column in the CSR (4) + half of an int32 pair index kept per tile (2)
GRAPH_EDGE_BYTES_APPROX = 12  # float32: the same plus a float32 distance in both (4 + 2)
NEAR_PAIR_BYTES = 48  # a pair within tol of max_eps: int32 pair, both directions in int64, sorted, on recheck
POINT_BYTES = 1024  # per point: nearest candidates, core/reach/pred/order, the ordering heap (<= 2n tuples)
POINT_BYTES_PER_CANDIDATE = 48  # per point and candidate: device (value, index) and their host float64/int64
TILE_SQUARE = 7  # device: the tile and ~4 XLA temporaries of its size, plus the next tile dispatched early
TILE_HOST_SQUARE = 8  # host: masks, indices and ranks of one strip (1/8 of a tile), ~60 bytes per element
TILE_ROWS = 3  # device: the row and column blocks of the points
DENSE_STRIP = 4  # dense engine: one strip of distance rows and XLA's temporaries of its size


class OpticsMemoryError(MemoryError):
    """The run cannot stay within `memory_budget_mb`; the message says what would fit."""


@dataclass(frozen=True)
class MemoryPlan:
    """How a run spends its memory budget (bytes). Every allocation that grows with n is counted:

    - `points`: the signatures as the run holds them: float64 host rows (what scikit-learn's arithmetic
      runs on) and padded device rows with their host staging copy;
    - `per_point`: O(n) state (nearest candidates, core distances, reachability, the ordering heap);
    - `tile`: one b x b tile of the distance matrix on the device and its host-side work;
    - what is left (`room`) is for the radius graph (`edge_bytes` per directed edge) or the dense matrix.
    The signatures as loaded (the input) are not counted: peak memory is about budget + input.
    """

    budget: int
    block: int
    n_pad: int
    points: int
    per_point: int
    tile: int
    edge_bytes: int
    itemsize: int

    @property
    def room(self) -> int:
        return self.budget - self.points - self.per_point - self.tile

    def dense_bytes(self, rows: int = 8) -> int:
        """The n_pad x n_pad matrix plus one strip of `rows` rows being computed (and its temporaries)."""
        return (self.n_pad * self.n_pad + DENSE_STRIP * rows * self.n_pad) * self.itemsize

    def dense_rows(self) -> int:
        """Rows per strip of the dense matrix (a multiple of 8, at most the tile's): as many as fit, 0 if none."""
        spare = self.budget - self.points - self.per_point - self.dense_bytes(0)
        rows = min(self.block, spare // (DENSE_STRIP * self.n_pad * self.itemsize)) // 8 * 8
        return int(rows) if rows >= 8 else 0


def _tile_bytes(b: int, d: int, itemsize: int) -> int:
    return TILE_SQUARE * b * b * itemsize + TILE_HOST_SQUARE * b * b + TILE_ROWS * b * d * itemsize


def memory_plan(n: int, d: int, cfg: OpticsConfig) -> MemoryPlan:
    """The largest tile (<= cfg.block_size) that leaves room in the budget, and what is left for the graph.

    Raises OpticsMemoryError when not even the points and the smallest tile fit.
    """
    budget = int(cfg.memory_budget_mb * 2**20)
    exact = cfg.precision == "float64"
    itemsize = 8 if exact else 4
    m = min(n, cfg.min_samples + 2) if exact else cfg.min_samples
    per_point = n * (POINT_BYTES + POINT_BYTES_PER_CANDIDATE * m)
    block = max(8, min(cfg.block_size, n))
    while True:
        b, n_pad = _blocks(n, block)
        points = 8 * n * d + 2 * n_pad * d * itemsize
        tile = _tile_bytes(b, d, itemsize)
        fixed = points + per_point
        if fixed + tile <= budget and (tile <= (budget - fixed) // 4 or b <= 8):
            break  # the tile takes at most a quarter of what the points leave (the rest is for the graph)
        if b <= 8:
            need = (fixed + _tile_bytes(8, d, itemsize)) / 2**20
            raise OpticsMemoryError(
                f"a memory budget of {cfg.memory_budget_mb:g} MB is too small for {n} signatures of dimension "
                f"{d}: OPTICS needs at least {math.ceil(need * 10) / 10:g} MB for the points and the per-point "
                "state; raise --memory-budget-mb, or reduce the dimension with --pca."
            )
        block = max(8, min(block - 8, int(block * 0.7)))
    edge = GRAPH_EDGE_BYTES if exact else GRAPH_EDGE_BYTES_APPROX
    return MemoryPlan(budget, b, n_pad, points, per_point, tile, edge, itemsize)


@dataclass
class _Graph:
    """Pairs within the radius, CSR by row, columns ascending (the order sklearn's radius query returns).

    `indices` are int32; `dists` (float32) only without the exact recomputation, which needs no distances.
    """

    indptr: np.ndarray
    indices: np.ndarray
    dists: np.ndarray | None

    def row(self, i: int) -> tuple[np.ndarray, np.ndarray | None]:
        a, b = self.indptr[i], self.indptr[i + 1]
        return self.indices[a:b], None if self.dists is None else self.dists[a:b]


@dataclass
class _Strip:
    """The pairs of rows s.. s+strip of one tile within the radius (diagonal tiles: col > row only).

    `flat` = row * b + col within the tile, int32, ascending (row-major); `vals`: float32 distances
    (approximate mode only); `near`: the entries of `flat` within tol of max_eps (exact mode only).
    """

    s: int
    flat: np.ndarray
    vals: np.ndarray | None
    near: np.ndarray | None


class _GraphBuilder:
    """Collects the radius pairs tile by tile in compact form, then lays them out as CSR without sorting.

    Memory, per directed edge: 2 bytes while collected (one int32 per unordered pair) + 4 in the CSR
    (+ 2 + 4 with float32 distances): `MemoryPlan.edge_bytes`. Host work goes strip by strip (b/8 rows
    of a tile), so its temporaries are bounded by the tile size, not by the number of pairs.
    """

    def __init__(self, n: int, b: int, radius: float, near_above: float | None, keep_vals: bool) -> None:
        self.n, self.b, self.radius = n, b, radius
        self.near_above, self.keep_vals = near_above, keep_vals
        self.strip = max(1, b // 8)
        self.tiles: list[tuple[int, int, list[_Strip]]] = []
        self.degree = np.zeros(n + b, dtype=np.int64)
        self.n_edges = 0  # directed
        self.n_near = 0  # unordered
        self.cols = np.arange(b)[None, :]

    def add_tile(self, dh: np.ndarray, r0: int, c0: int) -> None:
        """Take the pairs of one tile held on the host (padding rows and columns are inf)."""
        strips = []
        for s in range(0, self.b, self.strip):
            sub = dh[s : s + self.strip]
            mask = sub <= self.radius
            if not math.isfinite(self.radius):
                mask &= np.isfinite(sub)
            if r0 == c0:  # a diagonal tile holds each pair twice (and the point itself): keep col > row
                mask &= self.cols > np.arange(s, s + sub.shape[0])[:, None]
            local = np.flatnonzero(mask)
            del mask
            if local.size:
                strips.append(self._strip(s, (local + s * self.b).astype(np.int32), sub.ravel()[local]))
        self._keep(r0, c0, strips)

    def add_pairs(self, flat: np.ndarray, vals: np.ndarray, r0: int, c0: int) -> None:
        """Take the pairs of one tile found on the device: flat indices (ascending) and distances."""
        bounds = np.searchsorted(flat, np.arange(0, self.b + self.strip, self.strip) * self.b)
        strips = [
            self._strip(s, flat[lo:hi], vals[lo:hi])
            for s, lo, hi in zip(range(0, self.b, self.strip), bounds[:-1], bounds[1:], strict=False)
            if hi > lo
        ]
        self._keep(r0, c0, strips)

    def _strip(self, s: int, flat: np.ndarray, v: np.ndarray) -> _Strip:
        return _Strip(
            s=s,
            flat=flat,
            vals=v.astype(np.float32) if self.keep_vals else None,
            near=flat[v > self.near_above] if self.near_above is not None else None,
        )

    def _keep(self, r0: int, c0: int, strips: list[_Strip]) -> None:
        if not strips:
            return
        for st in strips:
            self.degree[r0 : r0 + self.b] += np.bincount(st.flat // self.b, minlength=self.b)
            self.degree[c0 : c0 + self.b] += np.bincount(st.flat % self.b, minlength=self.b)
            self.n_edges += 2 * st.flat.size
            self.n_near += 0 if st.near is None else st.near.size
        self.tiles.append((r0, c0, strips))

    def build(self) -> tuple[_Graph, np.ndarray, np.ndarray]:
        """The CSR graph, and the near-boundary pairs as (row, col), each unordered pair once."""
        n = self.n
        indptr = np.zeros(n + 1, dtype=np.int64)
        np.cumsum(self.degree[:n], out=indptr[1:])
        indices = np.empty(int(indptr[-1]), dtype=np.int32)
        dists = np.empty(indices.size, dtype=np.float32) if self.keep_vals else None
        ptr = np.concatenate([indptr[:-1], np.zeros(self.b, dtype=np.int64)])  # next free slot of each row
        near_r, near_c = [], []
        self.tiles.reverse()
        while self.tiles:  # in collection order: each row then receives its columns in ascending order
            r0, c0, strips = self.tiles.pop()
            for st in strips:
                self._place(r0, c0, st, indices, dists, ptr)
                if st.near is not None and st.near.size:
                    near_r.append(r0 + st.near.astype(np.int64) // self.b)
                    near_c.append(c0 + st.near.astype(np.int64) % self.b)
        nr = np.concatenate(near_r) if near_r else np.zeros(0, np.int64)
        nc = np.concatenate(near_c) if near_c else np.zeros(0, np.int64)
        return _Graph(indptr=indptr, indices=indices, dists=dists), nr, nc

    def _place(self, r0: int, c0: int, st: _Strip, indices: np.ndarray, dists: np.ndarray | None,
               ptr: np.ndarray) -> None:  # fmt: skip
        """Write one strip's pairs into the CSR. For each row, the pairs where it is the column (sources
        above it, in this tile or an earlier one) come before those where it is the row (columns to its
        right): strips and tiles are placed in collection order, transposed before direct."""
        b, s = self.b, st.s
        flat = st.flat.astype(np.int64)
        rows, cols = flat // b - s, flat % b  # rows relative to the strip
        del flat
        height = min(self.strip, b - s)
        # transposed: row c0 + col gets column r0 + s + row; within a column, rows ascend (row-major order)
        pos = ptr[c0 + cols] + _rank_within(cols, rows, height, b)
        indices[pos] = r0 + s + rows
        if dists is not None:
            dists[pos] = st.vals
        ptr[c0 : c0 + b] += np.bincount(cols, minlength=b)
        # direct: row r0 + s + row gets column c0 + col; each row's run is ascending and contiguous
        counts = np.bincount(rows, minlength=height)
        first = np.cumsum(counts) - counts
        pos = ptr[r0 + s + rows] + (np.arange(rows.size) - first[rows])
        indices[pos] = c0 + cols
        if dists is not None:
            dists[pos] = st.vals
        ptr[r0 + s : r0 + s + height] += counts


def _rank_within(cols: np.ndarray, rows: np.ndarray, height: int, b: int) -> np.ndarray:
    """For pairs in row-major order, how many earlier pairs share each one's column.

    Dense strips: a running count down the columns of a height x b grid; sparse ones: a stable sort.
    """
    if 16 * cols.size >= height * b:
        seen = np.zeros((height, b), dtype=np.int32)
        seen[rows, cols] = 1
        np.cumsum(seen, axis=0, out=seen)
        return seen[rows, cols] - 1
    order = np.argsort(cols, kind="stable")
    sorted_cols = cols[order]
    first = np.searchsorted(sorted_cols, sorted_cols, side="left")
    rank = np.empty_like(order)
    rank[order] = np.arange(order.size) - first
    return rank


def neighbours_pass(
    pts: _Points,
    cfg: OpticsConfig,
    dtype,
    m: int,
    radius: float,
    plan: MemoryPlan,
    *,
    collect: bool,
    near_above: float | None = None,
) -> tuple[np.ndarray, np.ndarray, _Graph | None, tuple[np.ndarray, np.ndarray]]:
    """The O(n^2 d) part, on the device, blocked: every point's m nearest (distances and indices) and,
    with `collect` and while the plan has room for them, all pairs within `radius` (and which of them are
    farther than `near_above`, for the exact recheck). Memory: O(n d + tile + edges), as `plan` counts it."""
    n = pts.raw.shape[0]
    b, n_pad = plan.block, plan.n_pad
    xp = _to_device(pts.work, n_pad, dtype)
    sqp = _to_device(pts.sq, n_pad, dtype)
    # made with NumPy and device_put: jnp.asarray/full would each compile a small XLA program (~0.2 s in all)
    valid = jax.device_put(np.arange(n_pad) < n)
    rad = jax.device_put(np.asarray(radius, dtype=np.dtype(dtype)))
    on_cpu = jax.default_backend() == "cpu"
    best_d = jax.device_put(np.full((n_pad, m), np.inf, dtype=np.dtype(dtype)))
    best_i = jax.device_put(np.zeros((n_pad, m), dtype=np.int32))
    builder = None
    if collect:
        builder = _GraphBuilder(n, b, radius, near_above, keep_vals=cfg.precision != "float64")
    pending = None
    for r0 in range(0, n_pad, b):
        for c0 in range(r0, n_pad, b):
            d, best_d, best_i, count = _tile_step(
                xp, sqp, valid, best_d, best_i, r0, c0, rad, metric=pts.metric, m=m, b=b
            )
            if pending is not None:  # at most two tiles in flight: async dispatch would queue them all
                pending.block_until_ready()
            pending = count
            if builder is None or not int(count):
                continue
            if on_cpu:  # the tile already lives in host memory: numpy reads it without a copy
                builder.add_tile(np.asarray(d), r0, c0)
            else:  # on an accelerator only the pairs cross to the host
                cap = max(1024, 1 << (int(count) - 1).bit_length())  # few distinct shapes, few compilations
                flat, v = (np.asarray(a)[: int(count)] for a in _tile_pairs(d, rad, r0 == c0, cap=cap, b=b))
                builder.add_pairs(flat, v, r0, c0)
            used = builder.n_edges * plan.edge_bytes + builder.n_near * NEAR_PAIR_BYTES
            if used > plan.room:
                builder = None  # over budget: the caller falls back (or says so)
    del d
    knn_d = np.asarray(best_d, dtype=np.float64)[:n]
    knn_i = np.asarray(best_i, dtype=np.int64)[:n]
    del xp, sqp, best_d, best_i
    if builder is None:
        return knn_d, knn_i, None, (np.zeros(0, np.int64), np.zeros(0, np.int64))
    graph, nr, nc = builder.build()
    return knn_d, knn_i, graph, (nr, nc)


@partial(jax.jit, static_argnames=("cap", "b"))
def _tile_pairs(d, radius, diagonal, *, cap, b):
    """The pairs of a tile within `radius` as row-major flat indices (int32) and distances, `cap` slots."""
    ar = jnp.arange(b)
    mask = (d <= radius) & jnp.isfinite(d) & (~diagonal | (ar[None, :] > ar[:, None]))
    flat = jnp.flatnonzero(mask, size=cap, fill_value=0)
    return flat.astype(jnp.int32), d.ravel()[flat]


def exact_core_distances(pts: _Points, knn_i: np.ndarray, k: int, chunk: int = 8) -> np.ndarray:
    """The k-th nearest distance recomputed the way scikit-learn's `kneighbors` computes it.

    Rows go in small chunks against the union of their candidates (the device's k + 2 nearest); the k-th
    smallest over any superset of a row's true k nearest is its true k-th distance. The arithmetic is
    sklearn's: the KD-tree formula, or `ArgKmin` (euclidean brute force), or the cosine GEMM.
    """
    n = knn_i.shape[0]
    core = np.empty(n)
    use_argkmin = not pts.tree and ArgKmin.is_usable_for(pts.raw[:2], pts.raw[:2], pts.knn_metric)
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
                metric=pts.knn_metric,
                strategy="auto",
                return_distance=True,
            )
            core[rows] = d[:, k - 1]
        else:
            core[rows] = np.sort(pts.dist_block(rows, uniq), axis=1)[:, k - 1]
    return core


def _recheck_boundary(
    pts: _Points, graph: _Graph, near_r: np.ndarray, near_c: np.ndarray, max_eps: float
) -> _Graph:
    """Pairs whose device distance is within tol of max_eps: decide membership with sklearn's arithmetic.

    Row by row, on that row's near columns in ascending order (the one-row product `_set_reach_dist`
    makes); entries found outside the radius are removed from the CSR in place, window by window.
    """
    if not near_r.size:
        return graph
    rows = np.concatenate([near_r, near_c])
    cols = np.concatenate([near_c, near_r])
    perm = np.lexsort((cols, rows))
    rows, cols = rows[perm], cols[perm]
    starts = np.flatnonzero(np.r_[True, rows[1:] != rows[:-1]])
    drop: list[np.ndarray] = []
    for a, b in zip(starts, np.r_[starts[1:], rows.size], strict=True):
        p = int(rows[a])
        out = pts.dist_1xm(p, cols[a:b]) > max_eps
        if out.any():
            lo, hi = graph.indptr[p], graph.indptr[p + 1]
            drop.append(lo + np.searchsorted(graph.indices[lo:hi], cols[a:b][out]))
    if not drop:
        return graph
    gone = np.sort(np.concatenate(drop))
    _compact(graph, gone)
    return graph


def _compact(graph: _Graph, gone: np.ndarray, window: int = 1 << 20) -> None:
    """Remove the CSR entries at the sorted positions `gone`, in place, with O(window) temporaries."""
    n = len(graph.indptr) - 1
    row_of_gone = np.searchsorted(graph.indptr, gone, side="right") - 1
    write = 0
    total = graph.indices.size
    for lo in range(0, total, window):
        hi = min(lo + window, total)
        keep = np.ones(hi - lo, dtype=bool)
        keep[gone[(gone >= lo) & (gone < hi)] - lo] = False
        k = int(keep.sum())
        graph.indices[write : write + k] = graph.indices[lo:hi][keep]
        if graph.dists is not None:
            graph.dists[write : write + k] = graph.dists[lo:hi][keep]
        write += k
    graph.indices = graph.indices[:write]
    if graph.dists is not None:
        graph.dists = graph.dists[:write]
    graph.indptr = graph.indptr - np.concatenate([[0], np.cumsum(np.bincount(row_of_gone, minlength=n))])


def order_graph(
    core: np.ndarray, graph: _Graph, pts: _Points | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """scikit-learn's ordering loop over the radius graph, on the host, with a heap keyed (reachability, index).

    The heap minimum is sklearn's `argmin` with ties to the smallest index; stale entries (point
    processed, or its reachability improved since the push) are dropped when popped, and the heap is
    rebuilt from the live entries when it grows past 2n (so its memory is O(n), not O(edges)). With `pts`,
    the distances to the unprocessed neighbours are recomputed exactly as sklearn's `_set_reach_dist` does
    (same rows, same column order, same arithmetic); without, the graph's (device) distances are used.
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
        d = pts.dist_1xm(point, nb) if pts is not None else d[unproc].astype(np.float64)
        rd = _round(np.maximum(d, c))
        better = rd < reach[nb]
        nb, rd = nb[better], rd[better]
        reach[nb] = rd
        pred[nb] = point
        for q, v in zip(nb.tolist(), rd.tolist(), strict=True):
            heapq.heappush(heap, (v, q))
        if len(heap) > 2 * n:  # mostly stale entries: keep the live ones, one per point
            live = np.flatnonzero(~processed & np.isfinite(reach))
            heap = list(zip(reach[live].tolist(), live.tolist(), strict=True))
            heapq.heapify(heap)
    return ordering, reach, pred


UNIT_ROUNDOFF = np.finfo(np.float64).eps / 2


def distance_error_bound(pts: _Points, p: int, d: np.ndarray) -> np.ndarray | float:
    """A bound on |device distance - scikit-learn's distance| for row p against columns at device distances d.

    Both are float64 evaluations of one formula in different summation orders (BLAS kernels, XLA's
    dot, with or without FMA). A dot product of length D in any order is off by at most
    gamma_D * sum |a_i b_i| <= gamma_D * |a| |b| (gamma_D = D u / (1 - D u), u the unit roundoff), so two
    evaluations differ by at most twice that; the few additions around it add a few u. Cosine: rows are
    unit length, so the bound is a constant. Euclidean (and minkowski, whose sklearn value by differences
    is within gamma_{D+2} * d of the true distance): the error of d^2 is at most E2 ~ 4 (gamma_D + 4 u)
    (|p|^2 + |q|^2), and |sqrt(a) - sqrt(b)| <= min(sqrt(|a - b|), |a - b| / sqrt(a)). A factor 2 on top.
    """
    dim = pts.raw.shape[1]
    gamma = (dim + 2) * UNIT_ROUNDOFF / (1 - (dim + 2) * UNIT_ROUNDOFF)
    if pts.metric == "cosine":
        return 2.0 * (2.0 * gamma * (1 + 1e-9) + 4 * UNIT_ROUNDOFF)
    e2 = 4.0 * (gamma + 4 * UNIT_ROUNDOFF) * (pts.sq[p] + np.max(pts.sq))
    root = math.sqrt(e2)
    err = np.minimum(root, e2 / np.maximum(d, root)) + 2.0 * gamma * (d + root)
    return 2.0 * err


@dataclass
class _Rows:
    """One processed point's device distances to every point, for the host ordering loop.

    dense: rows of the n_pad x n_pad matrix (on the CPU backend read in place, zero copy; on an
    accelerator fetched one row at a time); stream: computed on the fly, one matrix-vector product per
    point (memory O(n d)).
    """

    n: int
    dense: jax.Array | None
    host: np.ndarray | None
    xp: jax.Array | None
    sqp: jax.Array | None
    metric: str

    def __call__(self, p: int) -> np.ndarray:
        if self.host is not None:
            return self.host[p, : self.n].astype(np.float64, copy=False)
        if self.dense is not None:
            return np.asarray(_matrix_row(self.dense, p))[: self.n].astype(np.float64)
        return np.asarray(_stream_row(self.xp, self.sqp, p, metric=self.metric))[: self.n].astype(np.float64)


@jax.jit
def _matrix_row(dmat, p):
    return jax.lax.dynamic_index_in_dim(dmat, p, 0, keepdims=False)


@partial(jax.jit, static_argnames=("metric",))
def _stream_row(xp, sqp, p, *, metric):
    xr = jax.lax.dynamic_slice_in_dim(xp, p, 1)
    sr = jax.lax.dynamic_slice_in_dim(sqp, p, 1)
    return _dist(xr, xp, sr, sqp, metric)[0]


def _members(pts: _Points, p: int, d: np.ndarray, unproc: np.ndarray, max_eps: float, tol: float, err) -> np.ndarray:
    """The unprocessed points within max_eps of p, ascending: sklearn's `unproc` of `_set_reach_dist`.

    Pairs whose device distance is within tol (the graph engine's 1e-9, or the error bound where that is
    larger: euclidean rows of large norm) of max_eps are decided as the graph engine decides them
    (`_recheck_boundary`): sklearn's one-row product over all of p's near columns, in ascending order.
    """
    if not math.isfinite(max_eps):
        return np.flatnonzero(unproc)
    t = np.maximum(tol, err(p, d))
    inside = d <= max_eps - t
    near = np.flatnonzero((d > max_eps - t) & (d <= max_eps + t))
    near = near[near != p]
    if near.size:
        inside[near[pts.dist_1xm(p, near) <= max_eps]] = True
    return np.flatnonzero(inside & unproc)


def _exact_update(pts, p, c, rc, d, s, reach, err):
    """sklearn's `_set_reach_dist` on the members s of p: the new reachabilities, and which of them improve.

    Device distances decide every comparison whose outcome their error bound settles; scikit-learn's
    product (one row against all of s, ascending, so bitwise its value) is computed only when some member
    could improve with a distance above the core distance, where the distance's own bits are kept.
    """
    ds = d[s]
    e = err(p, ds)
    could = _round(np.maximum(ds - e, c)) < reach[s]  # rounding is monotone: a lower bound of sklearn's value
    if not could.any():
        return None, None
    if np.any(could & (ds + e > c)):
        rd = _round(np.maximum(pts.dist_1xm(p, s), c))
        return rd, rd < reach[s]
    return np.full(s.size, rc), could & (rc < reach[s])  # their distances are surely <= c: the value is round(c)


def order_rows(
    core: np.ndarray, pts: _Points, rows: _Rows, max_eps: float, exact: bool
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """scikit-learn's ordering loop for the dense and stream engines, driven by device distance rows.

    Each step is O(n) vectorised NumPy: the next point is `argmin` over the unprocessed reachabilities
    (ties to the smallest index, as sklearn's `argmin` over unprocessed indices in increasing order; all
    inf: the smallest unprocessed index); its members within max_eps and their updates follow
    `_members` and `_exact_update`, which recompute with sklearn's arithmetic wherever the device's
    distance (within `distance_error_bound`) could change the outcome. With exact=False (float32) the
    device distances are used as they are.
    """
    n = core.shape[0]
    reach = np.full(n, np.inf)
    key = np.full(n, np.inf)  # reach of the unprocessed points, inf once processed: argmin = sklearn's choice
    pred = np.full(n, -1, dtype=np.int64)
    processed = np.zeros(n, dtype=bool)
    ordering = np.empty(n, dtype=np.int64)
    rcore = _round(core)  # round(max(d, c)) where d <= c: sklearn rounds the (already rounded) core distance
    tol = 1e-9 * max(1.0, max_eps) if exact and math.isfinite(max_eps) else 0.0
    err = (lambda p, d: distance_error_bound(pts, p, d)) if exact else (lambda p, d: 0.0)
    next_seed = 0
    for pos in range(n):
        point = int(np.argmin(key))
        if key[point] == np.inf:
            while processed[next_seed]:
                next_seed += 1
            point = next_seed
        processed[point] = True
        key[point] = np.inf
        ordering[pos] = point
        c = core[point]
        if c == np.inf:
            continue
        d = rows(point)
        s = _members(pts, point, d, ~processed, max_eps, tol, err) if exact else np.flatnonzero(~processed & (d <= max_eps))
        if not s.size:
            continue
        if exact:
            rd, better = _exact_update(pts, point, c, rcore[point], d, s, reach, err)
        else:
            rd = _round(np.maximum(d[s], c))
            better = rd < reach[s]
        if rd is None:
            continue
        upd = s[better]
        reach[upd] = rd[better]
        key[upd] = rd[better]
        pred[upd] = point
    return ordering, reach, pred


def _device_rows(pts: _Points, plan: MemoryPlan, engine: str, metric: str, dtype) -> _Rows:
    """The row source of the dense engine (the whole matrix, built on the device) or the stream engine."""
    n = pts.raw.shape[0]
    if engine == "dense":
        dmat = _dense_matrix(pts, plan, metric, dtype)
        host = np.asarray(dmat) if jax.default_backend() == "cpu" else None  # a view of XLA's buffer, no copy
        return _Rows(n=n, dense=dmat, host=host, xp=None, sqp=None, metric=metric)
    xp = _to_device(pts.work, plan.n_pad, dtype)
    sqp = _to_device(pts.sq, plan.n_pad, dtype)
    return _Rows(n=n, dense=None, host=None, xp=xp, sqp=sqp, metric=metric)


@partial(jax.jit, static_argnames=("metric", "b"), donate_argnames=("dmat",))
def _dense_strip(dmat, xp, sqp, r0, *, metric, b):
    """Rows r0..r0+b of the distance matrix, written in place into the (donated) n_pad x n_pad matrix."""
    xr, sr = (jax.lax.dynamic_slice_in_dim(a, r0, b) for a in (xp, sqp))
    return jax.lax.dynamic_update_slice_in_dim(dmat, _dist(xr, xp, sr, sqp, metric), r0, 0)


def _dense_matrix(pts: _Points, plan: MemoryPlan, metric: str, dtype) -> jax.Array:
    """The padded n_pad x n_pad distance matrix, built strip by strip in one buffer (no concatenation).

    A last strip that would run past n_pad is clamped to end there by XLA (slice and update alike), so it
    rewrites a few rows with the same values.
    """
    xp = _to_device(pts.work, plan.n_pad, dtype)
    sqp = _to_device(pts.sq, plan.n_pad, dtype)
    dmat = jnp.zeros((plan.n_pad, plan.n_pad), dtype=dtype)
    rows = plan.dense_rows()
    for r0 in range(0, plan.n_pad, rows):
        dmat = _dense_strip(dmat, xp, sqp, r0, metric=metric, b=rows)
        dmat.block_until_ready()  # one strip's temporaries at a time, not every strip queued at once
    return dmat


def _mb(nbytes: float) -> str:
    return f"{math.ceil(nbytes / 2**20 * 10) / 10:g} MB"


def compute_optics_graph(
    x: np.ndarray, cfg: OpticsConfig, info: dict | None = None, keep: dict | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, str]:
    """ordering, core distances, reachability, predecessor (as sklearn's `compute_optics_graph`) and the engine used.

    `keep` receives the knn engine's neighbour lists (`knn_optics_graph`), when that engine ran.

    Memory stays within `cfg.memory_budget_mb` as `memory_plan` counts it (beyond the input array): the
    graph engine stops collecting pairs when they would not fit and "auto" falls back to the dense matrix
    if that fits, else to the stream engine; an explicit engine that cannot fit raises OpticsMemoryError.
    """
    n = int(np.shape(x)[0])
    cfg.validate(n)
    if np.ndim(x) != 2:
        raise ValueError(f"expected a 2-D array of points, got shape {np.shape(x)}.")
    if cfg.engine == "knn" or (cfg.engine == "auto" and math.isfinite(cfg.max_eps)):
        knn_out = _knn_engine(x, cfg, info if info is not None else {}, keep)
        if knn_out is not None:
            return knn_out
    plan = memory_plan(n, int(np.shape(x)[1]), cfg)  # before any allocation: a budget too small says so first
    pts = prepare(x, cfg.metric, cfg.min_samples)
    exact = cfg.precision == "float64"
    k = cfg.min_samples
    m = min(n, k + 2) if exact else k
    # collect a little beyond max_eps so the boundary can be decided with sklearn's arithmetic
    tol = 1e-9 * max(1.0, cfg.max_eps) if exact and math.isfinite(cfg.max_eps) else 0.0
    with jax.enable_x64(True):
        dtype = jnp.float64 if exact else jnp.float32
        engine = cfg.engine
        want_graph = engine == "graph" or (engine == "auto" and math.isfinite(cfg.max_eps))
        knn_d, knn_i, graph, (near_r, near_c) = neighbours_pass(
            pts, cfg, dtype, m, cfg.max_eps + tol, plan, collect=want_graph,
            near_above=cfg.max_eps - tol if tol else None,
        )  # fmt: skip
        core = exact_core_distances(pts, knn_i, k) if exact else knn_d[:, k - 1]
        del knn_d, knn_i
        core[core > cfg.max_eps] = np.inf
        core = _round(core)
        if graph is not None:
            if tol:
                graph = _recheck_boundary(pts, graph, near_r, near_c, cfg.max_eps)
            del near_r, near_c
            ordering, reach, pred = order_graph(core, graph, pts if exact else None)
            return ordering, core, reach, pred, "graph"
        engine = _device_engine(cfg, plan, n)
        rows = _device_rows(pts, plan, engine, cfg.metric, dtype)
        ordering, reach, pred = order_rows(core, pts, rows, cfg.max_eps, exact)
    return ordering, core, reach, pred, engine


def _knn_engine(x: np.ndarray, cfg: OpticsConfig, info: dict, keep: dict | None = None):
    """The "knn" engine (cluster/knn_graph.py); None when auto must fall back (the kNN lists cannot be exact).

    `info` receives KnnInfo's fields (exact, knn_k, incomplete_rows, grown_rows, reason), or on a fallback
    the reason the radius-graph path runs instead.
    """
    from cluster.knn_graph import knn_optics_graph

    try:
        ordering, core, reach, pred, knn_info = knn_optics_graph(x, cfg, keep)
    except (OpticsMemoryError, ImportError) as e:  # lists not exact, first lists over budget, no data.knn
        if cfg.engine == "knn":
            raise
        info["reason"] = f"knn engine not used: {e} --engine auto ran the rest of its rule instead."
        return None
    info.update(knn_info.to_dict())
    return ordering, core, reach, pred, "knn"


def _device_engine(cfg: OpticsConfig, plan: MemoryPlan, n: int) -> str:
    """The engine once the radius graph is out: the dense matrix if it fits the budget, else streaming."""
    room = plan.budget - plan.points - plan.per_point
    if cfg.engine == "graph":
        raise OpticsMemoryError(
            f"the radius graph for max_eps={cfg.max_eps} does not fit a memory budget of {cfg.memory_budget_mb:g} "
            f"MB ({_mb(room - plan.tile)} left for it after the points and one {plan.block}x{plan.block} tile); "
            "raise --memory-budget-mb, lower --max-eps, or use --engine stream (slower, memory O(n d))."
        )
    fits = plan.dense_rows() > 0
    if cfg.engine == "dense" and not fits:
        raise OpticsMemoryError(
            f"the dense {n}x{n} distance matrix needs {_mb(plan.dense_bytes())}, more than the "
            f"{_mb(room)} a memory budget of {cfg.memory_budget_mb:g} MB leaves; raise --memory-budget-mb or use "
            "--engine stream (slower, memory O(n d))."
        )
    if cfg.engine == "dense" or (cfg.engine == "auto" and fits):
        return "dense"
    return "stream"


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
    labels = cluster_optics_dbscan(reachability=reach, core_distances=core, ordering=ordering,
                                   eps=cfg.extraction_eps)
    return labels.astype(np.int64), None


def optics(x: np.ndarray, cfg: OpticsConfig) -> OpticsResult:
    """OPTICS on the rows of x, equal to `sklearn.cluster.OPTICS(**same parameters).fit(x)`."""
    info: dict = {}
    keep: dict = {}
    ordering, core, reach, pred, engine = compute_optics_graph(x, cfg, info, keep)
    labels, hierarchy = extract_labels(ordering, core, reach, pred, cfg)
    return OpticsResult(
        ordering=ordering,
        core_distances=core,
        reachability=reach,
        predecessor=pred,
        labels=labels,
        cluster_hierarchy=hierarchy,
        engine=engine,
        info=info,
        neighbours=keep.get("neighbours"),
    )

