"""Exact k nearest neighbours on the device, in fixed-shape blocks, rechecked in float64 on the host.

API (shared by train/mining.py, train/metrics.py and cluster/; jax is imported inside the functions, so
importing data.knn stays light):

    knn(x, k, *, metric="cosine", block=1024, gallery_block=8192, queries=None, exclude_groups=None,
        allowed=None, exact=True, dtype="float32", margin=None, stats=None) -> (dist, idx)

    x: (n, d) float16/float32/float64 array (a np.memmap is fine: it is read in row chunks).
    k: neighbours per query; the query itself is never one of them.
    metric: "cosine" (1 - u_r.u_c with u = x / |x|; a zero row is at distance 1 from everything) or
        "euclidean".
    queries: (q,) row indices to answer for; None = every row (the kNN graph).
    exclude_groups: (n,) ints; row j is never a neighbour of query i when group[j] == group[i]
        (e.g. "not in my own pattern group").  allowed: (n,) bool, the rows that may be neighbours.
    exact: True = the result IS the float64 brute force (below); False = the device's top k
        (its float32 distances, returned as float64; ties and near-ties may differ from the brute force).
    dtype: the device copy of the rows: "float32" (default), "bfloat16" or "float16": half the device
        memory and faster products, still exact with exact=True, but the certificate's bound grows with the
        dtype's roundoff (unit rows, d=256: 3e-5 float32, 2e-3 float16, 1.6e-2 bfloat16), and where the
        k-th and (k + margin)-th distances are closer than that the row is recomputed on the host: on
        archive-like signatures 0% of rows with float32, ~2% with float16, ~100% with bfloat16 (5,000 x 256,
        k=15).  So float32 for exact graphs; bfloat16 with exact=False, or a larger margin.
    block, gallery_block: a tile is `block` queries x about `gallery_block` gallery rows (the n rows are
        split into ceil(n / gallery_block) tiles of equal size, a multiple of block, so padding stays small);
        the device holds the rows plus O(block * (gallery_block + k + margin)) for one tile and its merge;
        the host O(q * k) for the result plus 16 MB chunks for the recheck (one per thread: 1 thread below
        8 cores, up to 8 above).  Wide gallery tiles are the fast shape on a CPU (the per-row cost of the
        top-k selection is spread over more columns); 1024 x 8192 float32 is a 32 MB tile.
    stats: a dict to fill with counts (queries, recomputed = rows that failed the certificate, ...).
    margin: extra candidates per query kept on the device (default 8); more margin, fewer rows
        that fail the certificate.
    returns dist float64 (q, k) ascending and idx int64 (q, k); where fewer than k rows qualify, the
        missing places are dist=inf, idx=-1.

    exact_distances(x, rows, cols, metric) -> float64: THE definition of a distance (the reference that
        tests and callers compare with): float64 rows, cosine = clip(1 - sum(u_r * u_c), 0, 2) with
        u = x / sqrt(sum(x * x)) (u = 0 for a zero row), euclidean = sqrt(sum((x_r - x_c)^2)), numpy's
        pairwise sum over d, so each value depends only on its own two rows (duplicate rows give equal
        distances, bit for bit).  The float64 brute force = for each query, all allowed rows sorted by
        (exact distance, index): ties go to the smallest index, as scikit-learn's kneighbors does.

    radius_within(dist, max_eps) -> (counts, complete): how many of each row's neighbours are within
        max_eps (inclusive), and whether the list holds EVERY row within max_eps (its k-th distance is
        beyond max_eps, or fewer than k rows qualify).  OPTICS on the kNN graph is exact where complete.

How exactness is kept (exact=True).  The device works on scores s: cosine s = 1 - u.v with the unit rows
rounded to the device dtype; euclidean s = |y|^2 + |z|^2 - 2 y.z on rows scaled by a power of two M
(y = x / M, |y| <= 1, exact in binary), i.e. s = d^2 / M^2.  For rows with |u| <= 1 stored with unit
roundoff e (2^-24 float32, 2^-8 bfloat16, 2^-11 float16, plus float16's underflow) and a float32
accumulation over D terms in any order (gamma_D = D 2^-24 / (1 - D 2^-24)), the textbook bound
|fl(a.b) - a.b| <= gamma_D sum|a_i b_i| gives

    cosine:     |s32 - s| <= gamma_D (1 + e)^2 + 2e + e^2                          (~ D * eps32 for float32)
    euclidean:  |s32 - s| <= 4 (gamma_D (1 + e)^2 + 2e + e^2) + 12 * 2^-24 (1 + ...)

and `error_bound` returns twice that (the factor covers the float64 reference's own rounding).  On the
device each query keeps its k + margin best candidates (largest similarity, a running lax.top_k over the
gallery tiles, after a strided two-stage pre-selection that is exact as a set bound: see `_merge`; products
at Precision.HIGHEST, so no TF32 on GPUs).  Rows that may not be neighbours (not `allowed`, padding) carry
-2^15 in an extra column that a query meets with 1, so the product itself rules them out (no mask pass over
the tile); the query's own group is masked, or, without groups, the query itself is dropped on the host from
k + margin + 1 candidates.  On the host the candidates are recomputed with `exact_distances` and sorted by
(distance, index); let v_k be the k-th of them (as a score, with a relative margin of 1e-12 for the
conversion) and t the device score of the last candidate.  Every row
that is not a candidate has device score >= t, so exact score >= t - B.  If v_k (as a score) < t - B
strictly, no such row can enter the top k, not even by a tie with a smaller index: the row is certified.
Rows that fail (near-ties at the k-th place, duplicates beyond k + margin) are recomputed by a blocked
float64 brute force on the host (a float64 matrix product with its own bound, collecting every row within
that bound of the k-th, then `exact_distances` on those).  Rows with fewer than k + margin qualifying rows
are certified trivially (every qualifying row is a candidate).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import cache

import numpy as np

METRICS = ("cosine", "euclidean")
DEVICE_DTYPES = ("float32", "bfloat16", "float16")
_U32 = 2.0 ** -24
_UNIT_ROUNDOFF = {"float32": _U32, "bfloat16": 2.0 ** -8, "float16": 2.0 ** -11, "float64": 2.0 ** -53}
_HOST_BYTES = 16 << 20  # what one host-side float64 temporary may hold (one per recheck thread)
# Threads for the float64 recheck: only on machines with many cores (an accelerator's host), where it would
# otherwise trail the device; each thread's temporaries stay in its own malloc arena (~300 MB measured), and on
# a small CPU the device's tiles already use every core.
RECHECK_THREADS = 1 if (os.cpu_count() or 1) < 8 else min(8, (os.cpu_count() or 1) // 2)
_BIAS = 32768.0  # exact in float16/bfloat16/float32; similarities lie in [-1, 1] (cosine), [-4, 0] (euclidean)
_INVALID = -1000.0  # device values below this are "not a neighbour" (padding, not allowed)


class KnnError(ValueError):
    """Arguments knn cannot answer (a bad shape, metric or dtype, non-finite rows); the message says which."""


# -- the definition of a distance ------------------------------------------------------------------------


def _rows64(x, rows, metric: str) -> np.ndarray:
    """float64 rows of x (unit rows for cosine, zero rows stay zero), each computed from its own row only.

    rows: an index array or a slice (the same values either way: each row is scaled by its own norm)."""
    r = np.asarray(x[rows if isinstance(rows, slice) else np.asarray(rows, np.int64)], dtype=np.float64)
    if metric == "cosine":
        norm = np.sqrt(np.sum(r * r, axis=-1))
        r = r / np.where(norm > 0, norm, 1.0)[..., None]
    return r


def _pair_distances(a: np.ndarray, b: np.ndarray, metric: str) -> np.ndarray:
    """Distances between float64 rows a (..., d) and b (..., d) (broadcast), per pair: see module doc."""
    if metric == "cosine":
        return np.clip(1.0 - np.sum(a * b, axis=-1), 0.0, 2.0)
    diff = a - b
    return np.sqrt(np.sum(diff * diff, axis=-1))


def exact_distances(x, rows, cols, metric: str = "cosine") -> np.ndarray:
    """float64 distances of rows[i] to cols[i, j] (cols (m, c)) or to cols[i] (cols (m,)): THE reference.

    Memory: the caller chunks; this holds m * c * d float64.
    """
    _check_metric(metric)
    rows = np.asarray(rows, np.int64)
    cols = np.asarray(cols, np.int64)
    a = _rows64(x, rows, metric)
    b = _rows64(x, cols.reshape(-1), metric).reshape(cols.shape + (a.shape[-1],))
    if cols.ndim == rows.ndim + 1:
        a = a[..., None, :]
    return _pair_distances(a, b, metric)


def radius_within(dist: np.ndarray, max_eps: float) -> tuple[np.ndarray, np.ndarray]:
    """(counts, complete): neighbours within max_eps (inclusive) per row, and whether that is ALL of them.

    A row's list is complete when its k-th distance is beyond max_eps or it has fewer than k neighbours
    (inf at the end): then no row outside the list is within max_eps.
    """
    dist = np.asarray(dist, np.float64)
    counts = np.sum(dist <= max_eps, axis=1).astype(np.int64)
    if dist.shape[1] == 0:
        return counts, np.zeros(dist.shape[0], bool)
    last = dist[:, -1]
    return counts, (last > max_eps) | np.isinf(last)


# -- error bound -------------------------------------------------------------------------------------------


def error_bound(dim: int, dtype: str = "float32", metric: str = "cosine", *, accumulate: str = "float32") -> float:
    """Bound B on |device score - exact score| for rows of norm <= 1 (see the module docstring)."""
    u_acc = _UNIT_ROUNDOFF[accumulate]
    gamma = dim * u_acc / (1.0 - dim * u_acc)
    e = _UNIT_ROUNDOFF[dtype]
    if dtype != "float32" and dtype != "float64":
        e += _U32  # rows rounded to float32 first, then to the device dtype
    if dtype == "float16":
        e += np.sqrt(dim) * 2.0 ** -25  # float16 underflow: an absolute error per component, |.|_2 <= sqrt(d) of it
    dot = gamma * (1.0 + e) ** 2 + 2.0 * e + e * e
    bound = dot if metric == "cosine" else 4.0 * dot + 12.0 * u_acc * (1.0 + 4.0 * dot)
    return 2.0 * bound + 1e-12


# -- arguments -------------------------------------------------------------------------------------------


def _check_metric(metric: str) -> None:
    if metric not in METRICS:
        raise KnnError(f"unknown metric {metric!r}: use one of {', '.join(METRICS)}")


@dataclass(frozen=True)
class _Plan:
    """Everything a search needs besides the rows: sizes, masks, scale and the certificate's bound."""

    n: int
    d: int
    k: int
    kk: int  # candidates kept per query on the device (k + margin)
    block: int  # query rows per tile
    gblock: int  # gallery rows per tile (a multiple of block)
    nb: int  # gallery blocks
    metric: str
    dtype: str
    scale: float  # euclidean: rows are divided by this power of two on the device
    bound: float
    group: np.ndarray  # (n,) int32, compacted
    allowed: np.ndarray  # (n,) bool
    grouped: bool


def _dev_width(d: int) -> int:
    return -(-(d + 1) // 8) * 8


def _round_up(x: int, m: int) -> int:
    return max(m, -(-x // m) * m)


def _chunk_rows(d: int) -> int:
    return max(1, _HOST_BYTES // (8 * max(1, d)))


def _refuse_non_finite(r: np.ndarray, start: int) -> None:
    if not np.all(np.isfinite(r)):
        bad = start + int(np.nonzero(~np.all(np.isfinite(r), axis=1))[0][0])
        raise KnnError(f"row {bad} holds a NaN or infinity: distances to it are undefined")


def _max_norm(x, n: int, d: int) -> float:
    """Largest row norm of x, read in row chunks (euclidean scaling); also refuses non-finite rows."""
    best = 0.0
    step = _chunk_rows(d)
    for s in range(0, n, step):
        r = np.asarray(x[s : s + step], np.float64)
        _refuse_non_finite(r, s)
        if len(r):
            best = max(best, float(np.sqrt(np.max(np.sum(r * r, axis=1)))))
    return best


def _plan(x, k, metric, block, gallery_block, exclude_groups, allowed, dtype, margin) -> _Plan:
    _check_metric(metric)
    if dtype not in DEVICE_DTYPES:
        raise KnnError(f"unknown device dtype {dtype!r}: use one of {', '.join(DEVICE_DTYPES)}")
    if len(getattr(x, "shape", ())) != 2:
        raise KnnError(f"x must be a 2-d array (rows x dimensions), got shape {getattr(x, 'shape', None)}")
    n, d = (int(v) for v in x.shape)
    if k < 1:
        raise KnnError(f"k must be at least 1, got {k}")
    if exclude_groups is None:
        group, grouped = np.zeros(n, np.int32), False
    else:
        g = np.asarray(exclude_groups)
        if g.shape != (n,):
            raise KnnError(f"exclude_groups must have shape ({n},), got {g.shape}")
        group, grouped = np.unique(g, return_inverse=True)[1].astype(np.int32).reshape(n), True
    ok = np.ones(n, bool) if allowed is None else np.asarray(allowed, bool)
    if ok.shape != (n,):
        raise KnnError(f"allowed must have shape ({n},), got {ok.shape}")
    margin = 8 if margin is None else int(margin)
    block = max(8, min(int(block), _round_up(n, 8)))
    nb = max(1, -(-n // max(8, int(gallery_block))))
    gblock = _round_up(-(-max(n, 1) // nb), block)  # nb tiles of (nearly) equal size: little padding
    norm = _max_norm(x, n, d) if metric == "euclidean" else 0.0  # cosine: no scaling, no extra pass
    scale = 1.0 if norm == 0 else float(2.0 ** np.ceil(np.log2(norm)))
    # the device's row width: d, zeros to a multiple of 8 (aligned for matrix units), the bias column last;
    # the zeros and the bias column add exactly 0 to an allowed row's sums, the bound counts them anyway
    return _Plan(n=n, d=d, k=int(k), kk=int(k) + max(0, margin), block=block, gblock=gblock, nb=nb,
                 metric=metric, dtype=dtype, scale=scale, bound=error_bound(_dev_width(d), dtype, metric),
                 group=group, allowed=ok, grouped=grouped)


# -- the device part -----------------------------------------------------------------------------------


def _host_rows(x, start: int, stop: int, plan: _Plan) -> np.ndarray:
    """Rows start:stop as the device sees them before rounding: unit (cosine) or scaled (euclidean)."""
    r = _rows64(x, slice(start, stop), plan.metric)
    _refuse_non_finite(r, start)
    return r / plan.scale if plan.metric == "euclidean" else r


def _device_rows(x, plan: _Plan):
    """The rows on the device, (nb * gblock, _dev_width(d)) in the device dtype, copied block by block.

    The last column is the row's bias as a neighbour: 0, or -_BIAS for padding and rows that are not `allowed`.
    A query's copy has 1 there, so the tile's product itself pushes those columns below _INVALID: no
    mask pass over the tile (adding 0 leaves every other sum unchanged, bit for bit).
    """
    import jax
    import jax.numpy as jnp

    dt = jnp.dtype(plan.dtype)
    width = _dev_width(plan.d)
    rows = jnp.zeros((plan.nb * plan.gblock, width), dt).at[:, -1].set(-_BIAS)
    put = row_setter()
    for s in range(0, plan.n, plan.block):
        chunk = np.zeros((plan.block, width), np.float32)
        chunk[:, -1] = -_BIAS
        stop = min(plan.n, s + plan.block)
        chunk[: stop - s, : plan.d] = _host_rows(x, s, stop, plan)
        chunk[: stop - s, -1] = np.where(plan.allowed[s:stop], 0.0, -_BIAS)
        rows = put(rows, jax.device_put(chunk).astype(dt), s)
    return rows


@cache
def row_setter():
    """jit (rows, chunk, start) -> rows with `chunk` written at row `start`, the rows' buffer donated: a
    device array filled block by block without a second copy (here and in `train.metrics`)."""
    import jax

    return jax.jit(lambda rows, chunk, start: jax.lax.dynamic_update_slice(rows, chunk, (start, 0)),
                   donate_argnums=0)


def _fold(width: int, kk: int) -> int:
    """Columns per strided chunk for the two-stage selection (1 = plain top_k), about sqrt(width / kk).

    Why: XLA's CPU top_k costs a few ns per element, as much as the tile's product; selecting the kk best
    of width/c chunk maxima first, then the kk best of those chunks' kk * c values, looks at
    width/c + kk * c values instead of width.
    """
    c = 1
    while width % (2 * c) == 0 and 2 * c * kk * 2 * c <= width and width // (2 * c) >= kk:
        c *= 2
    return c


def _merge(best_v, best_i, vals, cols, kk: int, fold: int):
    """The kk largest of best_v (r, kk) and vals (r, w) with their indices (cols (w,) int32 row indices).

    Exact as a set bound: every value left out is <= the kk-th value kept.  With fold c > 1 the columns are
    split into w/c strided chunks; a value among the kk largest lies in a chunk whose maximum is among the
    kk largest chunk maxima, and the chunks not picked hold only values <= the kk-th picked maximum <= the
    kk-th value kept (each picked chunk contributes its maximum).
    """
    import jax.numpy as jnp
    from jax import lax

    r, w = vals.shape
    if fold > 1:
        stride = w // fold
        v3 = vals.reshape(r, fold, stride)
        _, cpos = lax.top_k(jnp.max(v3, axis=1), kk)  # (r, kk) chunk numbers
        vals = jnp.take_along_axis(v3, cpos[:, None, :], axis=2).reshape(r, fold * kk)
        picked = cpos[:, None, :] + (jnp.arange(fold, dtype=jnp.int32) * stride)[None, :, None]
        idx = cols[picked.reshape(r, fold * kk)]
    else:
        idx = jnp.broadcast_to(cols, (r, w))
    top, pos = lax.top_k(jnp.concatenate([best_v, vals], axis=1), kk)
    return top, jnp.take_along_axis(jnp.concatenate([best_i, idx], axis=1), pos, axis=1)


def similarity_tile(q, q_sq, g, g_sq, metric: str):
    """Similarities to MAXIMISE of one tile: cosine u.v, euclidean -(|y|^2 + |z|^2 - 2 y.z); float32, exact
    products (HIGHEST: no TF32 on GPUs, the error bound assumes float32 arithmetic)."""
    import jax.numpy as jnp
    from jax import lax

    dot = lax.dot_general(q, g, (((1,), (1,)), ((), ())), precision=lax.Precision.HIGHEST,
                          preferred_element_type=jnp.float32)
    return dot if metric == "cosine" else 2.0 * dot - q_sq[:, None] - g_sq[None, :]


def _squares(rows, metric: str):
    """Squared norms of the rows without their bias column (euclidean only)."""
    import jax.numpy as jnp

    if metric == "cosine":
        return jnp.zeros(rows.shape[0], jnp.float32)
    return jnp.sum(jnp.square(rows[:, :-1].astype(jnp.float32)), axis=1)


@cache
def _search_fn(kk: int, block: int, metric: str, grouped: bool):
    """jit: top-kk similarities of a query block over every gallery tile of `block` rows (a scan; fixed
    shapes; the query block's size is its argument's).

    Rows that are not allowed (and padding) fall below _INVALID through the bias column; with groups, the
    query's own group (itself included) is masked; without, the query itself is one of the kk candidates
    (the caller asks for one more and drops it on the host).
    """
    import jax
    import jax.numpy as jnp
    from jax import lax

    fold = _fold(block, kk)

    def run(rows, q_idx, q_grp, g_grp):
        nb = rows.shape[0] // block
        q = rows[q_idx].at[:, -1].set(1)
        sq = _squares(rows, metric)
        xs = (rows.reshape(nb, block, -1), sq.reshape(nb, block), g_grp.reshape(nb, block),
              jnp.arange(nb, dtype=jnp.int32) * block)
        q_sq = sq[q_idx]
        bq = q_idx.shape[0]

        def body(carry, xs):
            g, g_sq, gg, off = xs
            idx = off + jnp.arange(block, dtype=jnp.int32)
            v = similarity_tile(q, q_sq, g, g_sq, metric)
            if grouped:
                v = jnp.where(gg[None, :] != q_grp[:, None], v, -jnp.inf)
            return _merge(*carry, v, idx, kk, fold), None

        init = (jnp.full((bq, kk), -jnp.inf, jnp.float32), jnp.full((bq, kk), -1, jnp.int32))
        return lax.scan(body, init, xs)[0]

    return jax.jit(run)


def _device_candidates(x, queries: np.ndarray, plan: _Plan):
    """Yield (start, device scores (m, kk) float64 ascending, candidate indices (m, kk)) per query block."""
    import jax.numpy as jnp

    rows = _device_rows(x, plan)
    n_pad = plan.nb * plan.gblock
    g_grp = np.full(n_pad, -1, np.int32)
    g_grp[: plan.n] = plan.group
    g_grp = jnp.asarray(g_grp)
    fn = _search_fn(plan.kk + (not plan.grouped), plan.gblock, plan.metric, plan.grouped)

    def launch(s):
        qi = queries[s : s + plan.block]
        pad = np.zeros(plan.block, np.int32)
        pad[: len(qi)] = qi
        qg = plan.group[pad] if plan.grouped else np.full(plan.block, -2, np.int32)
        return len(qi), fn(rows, jnp.asarray(pad), jnp.asarray(qg), g_grp)

    starts = list(range(0, len(queries), plan.block))
    pending = launch(starts[0]) if starts else None
    for i, s in enumerate(starts):
        m, (vals, idx) = pending
        if i + 1 < len(starts):
            pending = launch(starts[i + 1])  # dispatched before this block is read back: device and host overlap
        vals = np.asarray(vals, np.float64)[:m]
        idx = np.asarray(idx, np.int64)[:m]
        vals, idx = _drop_self_and_invalid(vals, idx, queries[s : s + m], plan.kk)
        yield s, (1.0 - vals if plan.metric == "cosine" else -vals), idx


def _drop_self_and_invalid(vals: np.ndarray, idx: np.ndarray, q: np.ndarray, kk: int):
    """Device candidates (descending) -> kk candidates without the query itself; -inf/-1 for none.

    Dropping the query (at most one entry) from the kk + 1 largest keeps the set bound: whatever is not
    kept is <= the last value kept."""
    bad = (vals < _INVALID) | (idx == q[:, None])
    vals = np.where(bad, -np.inf, vals)
    order = np.argsort(bad, axis=1, kind="stable")[:, :kk]
    vals, idx = np.take_along_axis(vals, order, 1), np.take_along_axis(idx, order, 1)
    idx[~np.isfinite(vals)] = -1
    return vals, idx


# -- the host part: recheck, certificate, fallback --------------------------------------------------------


def _to_score(dist: np.ndarray, plan: _Plan) -> np.ndarray:
    return dist if plan.metric == "cosine" else (dist / plan.scale) ** 2


def _in_threads(fn, items) -> None:
    """fn over items on up to RECHECK_THREADS threads (NumPy releases the GIL in its loops): the float64
    recheck is the host's share of the work, about d * (k + margin) multiply-adds per query."""
    items = list(items)
    workers = min(RECHECK_THREADS, len(items))
    if workers <= 1:
        for it in items:
            fn(it)
        return
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(fn, items))


def _exact_sorted(x, q: np.ndarray, cand: np.ndarray, plan: _Plan) -> tuple[np.ndarray, np.ndarray]:
    """Exact distances of queries q to their candidates cand (-1 = none), sorted by (distance, index)."""
    dist = np.full(cand.shape, np.inf)
    step = max(1, _HOST_BYTES // (8 * plan.d * max(1, cand.shape[1])))

    def chunk(s: int) -> None:
        c = cand[s : s + step]
        dist[s : s + step] = np.where(c >= 0, exact_distances(x, q[s : s + step], np.maximum(c, 0), plan.metric),
                                      np.inf)

    _in_threads(chunk, range(0, len(q), step))
    key = np.where(cand >= 0, cand, np.iinfo(np.int64).max)
    order = np.lexsort((key, dist), axis=-1)
    return np.take_along_axis(dist, order, 1), np.take_along_axis(cand, order, 1)


def _certified(dist: np.ndarray, dev_last: np.ndarray, plan: _Plan) -> np.ndarray:
    """Rows whose exact top k among the candidates is the exact top k overall (module doc)."""
    kth = _to_score(dist[:, plan.k - 1], plan) if dist.shape[1] >= plan.k else np.full(len(dist), np.inf)
    return np.isinf(dev_last) | (kth * (1 + 1e-12) + 1e-300 < dev_last - plan.bound)


def _pad_k(dist: np.ndarray, idx: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    if dist.shape[1] >= k:
        return dist[:, :k], idx[:, :k]
    m = len(dist)
    return (np.concatenate([dist, np.full((m, k - dist.shape[1]), np.inf)], 1),
            np.concatenate([idx, np.full((m, k - idx.shape[1]), -1, np.int64)], 1))


def _host_scores(qr: np.ndarray, q: np.ndarray, g: np.ndarray, start: int, plan: _Plan) -> np.ndarray:
    """float64 matrix-product scores of query rows qr to gallery rows g (from `start`), inf where excluded."""
    dot = qr @ g.T
    if plan.metric == "cosine":
        s = 1.0 - dot
    else:
        s = np.sum(qr * qr, 1)[:, None] + np.sum(g * g, 1)[None, :] - 2.0 * dot
    cols = np.arange(start, start + len(g))
    bad = ~plan.allowed[cols][None, :] | (cols[None, :] == q[:, None])
    if plan.grouped:
        bad |= plan.group[cols][None, :] == plan.group[q][:, None]
    return np.where(bad, np.inf, s)


def _pair_distances_chunked(x, rows: np.ndarray, cols: np.ndarray, plan: _Plan) -> np.ndarray:
    """exact_distances of the pairs (rows[i], cols[i]), in chunks of _HOST_BYTES."""
    out = np.empty(len(rows))
    step = max(1, _HOST_BYTES // (8 * max(1, plan.d)))
    for s in range(0, len(rows), step):
        out[s : s + step] = exact_distances(x, rows[s : s + step], cols[s : s + step], plan.metric)
    return out


def _keep_k(r: np.ndarray, c: np.ndarray, d: np.ndarray, k: int):
    """The k smallest (distance, index) pairs of each query r: (r, c, d) sorted by (r, d, c), at most k per r."""
    order = np.lexsort((c, d, r))
    r, c, d = r[order], c[order], d[order]
    keep = np.arange(len(r)) - np.searchsorted(r, r) < k
    return r[keep], c[keep], d[keep]


def _brute_force(x, q: np.ndarray, plan: _Plan) -> tuple[np.ndarray, np.ndarray]:
    """The exact top k of queries q by a blocked float64 pass over the gallery (rows that failed the certificate).

    Pass 1 finds each query's k-th smallest float64 product score m_k; pass 2 takes, block by block, every row
    with score <= m_k + 2 B64 (B64 the float64 product's bound; these hold the exact top k and all its ties),
    ranks them by `exact_distances` and keeps the k best by (distance, index) so far.  Memory O(len(q) *
    gallery block + len(q) * k), whatever the number of ties (a zero row is at cosine distance 1 from all).
    """
    b64 = error_bound(plan.d, "float64", plan.metric, accumulate="float64") + 1e-9 * (plan.metric == "euclidean")
    qr = _rows64(x, q, plan.metric) / (plan.scale if plan.metric == "euclidean" else 1.0)
    step = max(plan.k, _HOST_BYTES // (8 * max(1, len(q))))
    best = np.full((len(q), plan.k), np.inf)
    for s in range(0, plan.n, step):
        sc = _host_scores(qr, q, _host_rows(x, s, min(plan.n, s + step), plan), s, plan)
        best = np.partition(np.concatenate([best, sc], 1), plan.k - 1, axis=1)[:, : plan.k]
    thr = np.max(best, axis=1) + 2.0 * b64
    r = c = np.zeros(0, np.int64)
    d = np.zeros(0)
    for s in range(0, plan.n, step):
        sc = _host_scores(qr, q, _host_rows(x, s, min(plan.n, s + step), plan), s, plan)
        nr, nc = np.nonzero((sc <= thr[:, None]) & np.isfinite(sc))
        nc = nc + s
        nd = _pair_distances_chunked(x, q[nr], nc, plan)
        r, c, d = _keep_k(np.concatenate([r, nr]), np.concatenate([c, nc]), np.concatenate([d, nd]), plan.k)
    dist = np.full((len(q), plan.k), np.inf)
    idx = np.full((len(q), plan.k), -1, np.int64)
    pos = np.arange(len(r)) - np.searchsorted(r, r)
    dist[r, pos], idx[r, pos] = d, c
    return dist, idx


def _device_result(dev: np.ndarray, cand: np.ndarray, plan: _Plan) -> tuple[np.ndarray, np.ndarray]:
    """exact=False: the device's distances (clipped like exact_distances), sorted by (distance, index)."""
    dd = np.clip(dev, 0.0, 2.0) if plan.metric == "cosine" else plan.scale * np.sqrt(np.maximum(dev, 0.0))
    dd = np.where(cand >= 0, dd, np.inf)
    order = np.lexsort((np.where(cand >= 0, cand, np.iinfo(np.int64).max), dd), axis=-1)
    return _pad_k(np.take_along_axis(dd, order, 1), np.take_along_axis(cand, order, 1), plan.k)


def knn(x, k: int, *, metric: str = "cosine", block: int = 1024, gallery_block: int = 8192, queries=None,
        exclude_groups=None, allowed=None, exact: bool = True, dtype: str = "float32", margin: int | None = None,
        stats: dict | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Exact k nearest rows of x for each query (module docstring).  `stats`, if given, gets counts filled in."""
    plan = _plan(x, k, metric, block, gallery_block, exclude_groups, allowed, dtype, margin)
    q = np.arange(plan.n, dtype=np.int64) if queries is None else np.asarray(queries, np.int64).reshape(-1)
    if len(q) and (q.min() < 0 or q.max() >= plan.n):
        raise KnnError(f"queries must be row indices in [0, {plan.n}), got {int(q.min())}..{int(q.max())}")
    dist = np.full((len(q), plan.k), np.inf)
    idx = np.full((len(q), plan.k), -1, np.int64)
    failed: list[np.ndarray] = []
    for s, dev, cand in _device_candidates(x, q, plan) if plan.n else ():
        m = len(cand)
        if not exact:
            dist[s : s + m], idx[s : s + m] = _device_result(dev, cand, plan)
            continue
        d_ex, i_ex = _exact_sorted(x, q[s : s + m], cand, plan)
        dist[s : s + m], idx[s : s + m] = _pad_k(d_ex, i_ex, plan.k)
        failed.append(s + np.nonzero(~_certified(d_ex, dev[:, -1], plan))[0])
    bad = np.concatenate(failed) if failed else np.zeros(0, np.int64)
    step = 4096
    for s in range(0, len(bad), step):
        rows = bad[s : s + step]
        dist[rows], idx[rows] = _brute_force(x, q[rows], plan)
    if stats is not None:
        stats.update(queries=len(q), recomputed=len(bad), candidates=plan.kk, bound=plan.bound, block=plan.block,
                     gallery_block=plan.gblock)
    return dist, idx
