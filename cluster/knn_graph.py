"""OPTICS on an exact k-nearest-neighbour graph: the "knn" engine, memory O(n k), never O(n^2).

Why: the "graph" engine (cluster/optics.py) finds the radius graph with one pass over a triangle of the
distance matrix in float64 tiles. At archive scale the kNN search of `data.knn` (float32/bf16 products on
the device, certified and rechecked in float64) does the same O(n^2 d) work several times faster, and its
output has a fixed size per row. OPTICS needs, for each processed point, every unprocessed point within
max_eps, so a row's kNN list is enough exactly when it holds all of them:

    a row is *complete* when its k-th neighbour lies beyond max_eps (or fewer than k other rows exist):
    then every row within max_eps of it is in its list.

When every row is complete, the pairs of the lists within max_eps are the radius graph, and OPTICS on it,
with cluster/optics.py's exact machinery (scikit-learn's arithmetic for core distances, for membership of
pairs within 1e-9 of max_eps and for every reachability: `exact_core_distances`, `_recheck_boundary`,
`order_graph`), is bit for bit scikit-learn's OPTICS. The kNN lists use `data.knn`'s float64 definition of a
distance, which can differ from scikit-learn's in the last ulps: a tolerance of 1e-9 on max_eps, and two spare
candidates for the core distance, absorb that (the same margins the graph engine uses).

Rows that are not complete are queried again, alone, with twice the k, until they are complete or the
memory budget's cap on k is reached (`KnnPlan.k_cap`). Rows still incomplete then make the run refuse
(`KnnIncompleteError`: --engine auto falls back to the radius-graph engine, which is exact within the same
budget, or to dense/stream), unless `cfg.approximate`: then OPTICS runs on the truncated lists (made
symmetric: a pair in either list is an edge), core distances still exact, and the result says so
(`KnnInfo.exact = False`, how many rows were truncated).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

from cluster.config import OpticsConfig, knn_metric
from cluster.optics import (
    POINT_BYTES,
    OpticsMemoryError,
    _Graph,
    _mb,
    _recheck_boundary,
    _round,
    exact_core_distances,
    order_graph,
    prepare,
)
from data.knn import radius_within

TOL = 1e-9  # relative margin on max_eps: data.knn's float64 distances vs scikit-learn's (ulps apart)
# Bytes per kNN list entry over the run: the query's float64 distance and int64 index, the edge key (int64)
# and its symmetric copy, the sort's temporaries, the CSR column (int32).
LIST_ENTRY_BYTES = 64
# data.knn's working set, measured (RSS, 1,600-20,000 rows, k 32-1024): ~32 bytes per element of its
# block x block tile (the product, masks, the top-k's folds, the next tile in flight), and ~256 bytes per
# candidate of the block of queries in flight (device values and indices, the float64 recheck on the host).
SEARCH_TILE_BYTES = 32
QUERY_BLOCK = 1024  # data.knn's default query block (its gallery block: 8 times that)
CANDIDATE_BYTES = 256
KNN_MARGIN = 8  # data.knn keeps k + 8 candidates per query


class KnnIncompleteError(OpticsMemoryError):
    """Some rows have more neighbours within max_eps than the memory budget lets the kNN lists hold."""


@dataclass
class KnnInfo:
    """What clusters.json records of a knn run: whether it is exact, and why."""

    exact: bool
    knn_k: int  # the largest k queried
    incomplete_rows: int  # rows whose list was truncated (approximate mode only; else 0)
    grown_rows: int  # rows queried again with a larger k
    reason: str

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class KnnPlan:
    """The knn engine's memory (bytes): points, O(n) state, data.knn's working set for one block x gallery
    tile (`search`, both shrunk when the budget needs it), then list entries."""

    budget: int
    n: int
    block: int  # queries per device step
    gallery: int  # rows of the gallery per device step (the tile is block x gallery)
    points: int
    per_point: int
    search: int
    k0: int

    @property
    def fixed(self) -> int:
        return self.points + self.per_point + self.search

    @property
    def room(self) -> int:
        """Bytes left for list entries and candidates beyond the first query's n x k0."""
        return self.budget - self.fixed - _lists_bytes(self.n, self.k0, self.block)

    def k_cap(self, rows: int) -> int:
        """The largest k that `rows` rows may be queried again with: their lists and candidates fit the room."""
        per_k = rows * LIST_ENTRY_BYTES + min(rows, self.block) * CANDIDATE_BYTES
        spare = self.room - min(rows, self.block) * CANDIDATE_BYTES * KNN_MARGIN
        return int(max(0, min(self.n - 1, spare // max(1, per_k))))


def _lists_bytes(rows: int, k: int, block: int) -> int:
    """rows x k list entries, and data.knn's candidates (k + its margin) for one block of those rows."""
    return rows * k * LIST_ENTRY_BYTES + min(rows, block) * (k + KNN_MARGIN) * CANDIDATE_BYTES


def first_k(n: int, cfg: OpticsConfig) -> int:
    """k of the first query: cfg.knn_k, at least min_samples + 1 (the core distance and two spare candidates)."""
    return max(1, min(n - 1, max(cfg.min_samples + 1, cfg.knn_k)))


def knn_plan(n: int, d: int, cfg: OpticsConfig) -> KnnPlan:
    """The knn engine's memory plan: the largest query block <= min(cfg.block_size, QUERY_BLOCK), with a gallery
    block 8 times that, whose search tile takes at most half of what the points leave; refuses a budget that
    cannot hold the points, a block of 8 and the first lists.

    Everything is linear in n (float64 rows in exact mode, what scikit-learn's arithmetic runs on; the
    float32 copy data.knn puts on the device; O(n) state; n x k list entries) or fixed (the search block).
    """
    budget = int(cfg.memory_budget_mb * 2**20)
    points = (8 if cfg.precision == "float64" else 0) * n * d + 4 * n * d
    per_point = n * POINT_BYTES
    k0 = first_k(n, cfg)
    n8 = -(-n // 8) * 8
    block = max(8, min(cfg.block_size, QUERY_BLOCK, n8))
    while True:  # shrink the tile until it takes at most half of what the points leave and the lists fit
        gallery = min(8 * block, n8)
        plan = KnnPlan(budget=budget, n=n, block=block, gallery=gallery, points=points, per_point=per_point,
                       search=SEARCH_TILE_BYTES * block * gallery, k0=k0)  # fmt: skip
        if block == 8 or (plan.search <= (budget - points - per_point) // 2 and plan.room >= 0):
            break
        block = max(8, int(block * 0.7) // 8 * 8)
    if plan.room < 0:
        need = plan.fixed + _lists_bytes(n, k0, block)
        raise OpticsMemoryError(
            f"a memory budget of {cfg.memory_budget_mb:g} MB is too small for {n} signatures of dimension {d} "
            f"with the knn engine: its points and first lists (k={k0}) need at least {_mb(need)}; raise "
            "--memory-budget-mb, lower --knn-k, or reduce the dimension with --pca."
        )
    return plan


def least_budget_mb(n: int, d: int, cfg: OpticsConfig) -> float:
    """The smallest --memory-budget-mb (to 0.01 MB) the knn engine accepts for n x d: room for the first
    lists and nothing more (what the benchmark's approximate check and the tests run at)."""
    lo, hi = 0.0, 1.0
    while not _fits(n, d, cfg, hi):
        lo, hi = hi, 2 * hi
    while hi - lo > 0.01:
        mid = (lo + hi) / 2
        lo, hi = (lo, mid) if _fits(n, d, cfg, mid) else (mid, hi)
    return math.ceil(hi * 100) / 100


def _fits(n: int, d: int, cfg: OpticsConfig, mb: float) -> bool:
    try:
        knn_plan(n, d, OpticsConfig(**{**cfg.to_dict(), "memory_budget_mb": mb}))
    except OpticsMemoryError:
        return False
    return True


def _knn(x, k: int, *, metric: str, queries=None, exact: bool = True, block: int = 1024, gallery_block: int = 8192):
    """data.knn.knn (imported here: data.knn imports JAX inside its functions); the tests replace this."""
    from data.knn import knn

    return knn(x, k, metric=metric, queries=queries, exact=exact, block=block, gallery_block=gallery_block)


def _device_bound(d: int) -> float:
    """data.knn's bound on |device float32 cosine distance - exact distance| (twice the textbook bound)."""
    from data.knn import error_bound

    return float(error_bound(d, "float32", "cosine"))


@dataclass(frozen=True)
class _Search:
    """How the lists are queried. Exact mode, cosine: data.knn's device top k without its float64 recheck
    (exact=False), every decision then allowing `slack` = its error bound (a pair is kept up to max_eps +
    slack, a row is complete beyond max_eps + slack, pairs within slack of max_eps and the core distance's
    candidates are rechecked here with scikit-learn's arithmetic): the same exact result, without
    recomputing every candidate in float64 on the host. Otherwise: data.knn's exact lists (slack 0), or in
    float32 mode its device lists taken as they are."""

    metric: str
    exact_lists: bool
    slack: float

    @classmethod
    def plan(cls, cfg: OpticsConfig, d: int) -> _Search:
        metric = knn_metric(cfg.metric)
        if cfg.precision == "float64" and metric == "cosine":
            return cls(metric=metric, exact_lists=False, slack=_device_bound(d))
        return cls(metric=metric, exact_lists=cfg.precision == "float64", slack=0.0)

    def query(self, x, k: int, plan: KnnPlan, queries=None) -> tuple[np.ndarray, np.ndarray]:
        return _knn(x, k, metric=self.metric, queries=queries, exact=self.exact_lists, block=plan.block,
                    gallery_block=plan.gallery)  # fmt: skip


@dataclass
class _Lists:
    """The kNN lists' pairs within the radius, as unordered keys min * n + max (int64), and their distances."""

    n: int
    keys: list[np.ndarray]
    dists: list[np.ndarray]

    def add(self, rows: np.ndarray, dist: np.ndarray, idx: np.ndarray, radius: float) -> None:
        mask = (dist <= radius) & (idx >= 0)
        src = np.broadcast_to(rows[:, None], idx.shape)[mask].astype(np.int64)
        dst = idx[mask].astype(np.int64)
        self.keys.append(np.minimum(src, dst) * self.n + np.maximum(src, dst))
        self.dists.append(dist[mask])

    def unique(self) -> tuple[np.ndarray, np.ndarray]:
        """Each unordered pair once (a pair in either row's list, or in a row's list of several rounds)."""
        keys = np.concatenate(self.keys) if self.keys else np.zeros(0, np.int64)
        dists = np.concatenate(self.dists) if self.dists else np.zeros(0)
        self.keys, self.dists = [], []
        keys, first = np.unique(keys, return_index=True)
        return keys, dists[first]


def _csr(n: int, keys: np.ndarray, dists: np.ndarray | None) -> _Graph:
    """The symmetric graph of unordered pairs `keys`, CSR with each row's columns ascending."""
    a, b = keys // n, keys % n
    src = np.concatenate([a, b])
    dst = np.concatenate([b, a])
    del a, b
    order = np.lexsort((dst, src))
    indptr = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(np.bincount(src, minlength=n), out=indptr[1:])
    indices = dst[order].astype(np.int32)
    vals = None if dists is None else np.concatenate([dists, dists])[order].astype(np.float32)
    return _Graph(indptr=indptr, indices=indices, dists=vals)


def _grow(x, search: _Search, plan: KnnPlan, lists: _Lists, todo: np.ndarray, k: int,
          radius: float) -> tuple[np.ndarray, int, int]:  # fmt: skip
    """Query the incomplete rows `todo` again with k doubled until they are complete or k hits the cap.

    Returns the rows still incomplete, the largest k queried and how many rows were queried again.
    """
    grown = 0
    n = plan.n
    while todo.size and k < n - 1:
        k_next = min(n - 1, 2 * k)
        if k_next > plan.k_cap(todo.size):
            break
        dist, idx = search.query(x, k_next, plan, queries=todo)
        lists.add(todo, dist, idx, radius)
        grown += todo.size if k == plan.k0 else 0
        k = k_next
        todo = todo[_incomplete(dist, idx, radius, n)]
    return todo, k, grown


def _incomplete(dist: np.ndarray, idx: np.ndarray, radius: float, n: int) -> np.ndarray:
    """Rows whose k-th neighbour exists and lies within the radius: there may be more than k within it
    (`data.knn.radius_within`). A list of k = n - 1 holds every other row: complete whatever the radius
    (max_eps = inf included)."""
    if idx.shape[1] >= n - 1:
        return np.zeros(idx.shape[0], dtype=bool)
    return ~radius_within(dist, radius)[1]


CORE_MARGIN = 6  # spare candidates for the core distance when the lists' distances carry a slack


def _core(x, pts, cfg: OpticsConfig, search: _Search, plan: KnnPlan, dist: np.ndarray,
          idx: np.ndarray) -> np.ndarray:  # fmt: skip
    """Core distances: scikit-learn's k-th distance (the point itself first) from each row's candidates.

    The candidates must hold the ms - 1 nearest other rows in scikit-learn's arithmetic. Exact lists: their
    first ms + 1 (two spare for ulp-level ties). Lists with a slack: the first m = ms + 1 + CORE_MARGIN, which
    hold every row within the (ms - 1)-th listed distance + 2 slack when the m-th lies beyond that; the
    rows where it does not are queried again with exact lists.
    """
    ms = cfg.min_samples
    if pts is None:  # float32 mode: the (ms - 1)-th neighbour other than the point itself
        core = np.asarray(dist[:, ms - 2], dtype=np.float64).copy()
    else:
        n = idx.shape[0]
        m = min(idx.shape[1], ms + 1 + (CORE_MARGIN if search.slack else 0))
        cand = idx[:, :m].copy()
        if search.slack and m < n - 1:
            redo = np.flatnonzero(dist[:, m - 1] <= dist[:, ms - 2] + 2 * search.slack)
            if redo.size:
                cand[redo] = _knn(x, m, metric=search.metric, queries=redo, exact=True, block=plan.block,
                                  gallery_block=plan.gallery)[1]  # fmt: skip
        cand = np.concatenate([np.arange(n)[:, None], cand], axis=1)
        cand = np.where(cand >= 0, cand, np.arange(n)[:, None])  # padding (n tiny): the point itself again
        core = exact_core_distances(pts, cand, ms)
    core[core > cfg.max_eps] = np.inf
    return _round(core)


def knn_optics_graph(
    x, cfg: OpticsConfig, keep: dict | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, KnnInfo]:
    """ordering, core distances, reachability, predecessor (scikit-learn's meaning) on the kNN graph, and KnnInfo.

    `keep`, if given, receives `neighbours`: the first query's lists (int32 indices, float32 distances, each
    row's nearest first, without the row itself), which `cluster map` reuses so that the neighbour search is
    done once. Raises KnnIncompleteError when rows stay incomplete within the budget and cfg.approximate is off.
    """
    n, d = (int(s) for s in np.shape(x))
    plan = knn_plan(n, d, cfg)
    exact = cfg.precision == "float64"
    pts = prepare(x, cfg.metric, cfg.min_samples) if exact else None  # without it, data.knn checks the rows
    search = _Search.plan(cfg, d)
    tol = TOL * max(1.0, cfg.max_eps) + search.slack if exact and math.isfinite(cfg.max_eps) else 0.0
    radius = cfg.max_eps + tol
    lists = _Lists(n=n, keys=[], dists=[])
    dist, idx = search.query(x, plan.k0, plan)
    core = _core(x, pts, cfg, search, plan, dist, idx)
    lists.add(np.arange(n), dist, idx, radius)
    todo = np.flatnonzero(_incomplete(dist, idx, radius, n))
    if keep is not None:
        keep["neighbours"] = (idx.astype(np.int32), dist.astype(np.float32))
    del dist, idx
    todo, k, grown = _grow(x, search, plan, lists, todo, plan.k0, radius)
    info = _info(cfg, plan, todo.size, k, grown)
    keys, dists = lists.unique()
    graph = _csr(n, keys, None if exact else dists)
    if tol:
        near = keys[dists > cfg.max_eps - tol]
        graph = _recheck_boundary(pts, graph, near // n, near % n, cfg.max_eps)
    del keys, dists
    ordering, reach, pred = order_graph(core, graph, pts)
    return ordering, core, reach, pred, info


def _info(cfg: OpticsConfig, plan: KnnPlan, incomplete: int, k: int, grown: int) -> KnnInfo:
    """KnnInfo for the run, or KnnIncompleteError when it cannot be exact and approximate was not asked for."""
    if not incomplete and k >= plan.n - 1:
        why = f"exact: every signature's list holds all {plan.n - 1} others"
        return KnnInfo(exact=True, knn_k=k, incomplete_rows=0, grown_rows=grown, reason=why)
    if not incomplete:
        grew = f", {grown} of them grown up to k={k}" if grown else ""
        why = (f"exact: every signature's list of nearest neighbours (k={plan.k0}{grew}) reaches beyond "
               f"max_eps={cfg.max_eps:g}, so the lists hold every pair within max_eps")  # fmt: skip
        return KnnInfo(exact=True, knn_k=k, incomplete_rows=0, grown_rows=grown, reason=why)
    if not math.isfinite(cfg.max_eps):
        detail = (f"max_eps is inf, so only lists of all {plan.n - 1} other signatures are complete, and they do not "
                  f"fit a memory budget of {cfg.memory_budget_mb:g} MB")  # fmt: skip
    else:
        detail = (f"{incomplete} of {plan.n} signatures have more than {k} neighbours within max_eps={cfg.max_eps:g}, "
                  f"more than the kNN lists can hold in a memory budget of {cfg.memory_budget_mb:g} MB")  # fmt: skip
    if cfg.approximate:
        why = (f"approximate (--approximate): {detail}; their lists were truncated to the {k} nearest, the "
               "ordering may differ from scikit-learn's")  # fmt: skip
        return KnnInfo(exact=False, knn_k=k, incomplete_rows=incomplete, grown_rows=grown, reason=why)
    raise KnnIncompleteError(
        f"the knn engine cannot be exact: {detail}. Raise --memory-budget-mb, lower --max-eps, pass --approximate "
        "(truncated lists; clusters.json records exact: false), or use --method hdbscan (no max_eps)."
    )
