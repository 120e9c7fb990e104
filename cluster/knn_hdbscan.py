"""HDBSCAN on the kNN graph, for archives where no max_eps fits: memory O(n k), never the n x n matrix.

Which library, and why: scikit-learn's own `HDBSCAN` (already a dependency, maintained with the rest of
scikit-learn, the implementation `--method hdbscan` compares against on small data). Given a sparse CSR
distance matrix with `metric="precomputed"` it takes core distances from each row's stored entries,
weights each stored pair by the mutual reachability max(core_a, core_b, d), and builds the minimum
spanning tree with `scipy.sparse.csgraph.minimum_spanning_tree` (Kruskal on the stored edges): memory
O(edges), here O(n k). The `hdbscan` and `fast_hdbscan` packages (dual-tree Boruvka) would be exact at
scale but are not installed here.

The sparse matrix holds each row's k nearest (data.knn, exact float64 distances), made symmetric. Two
details make it match the dense computation:
- scikit-learn's core distance counts the point itself; a sparse row does not store its zero self-distance,
  so HDBSCAN is asked for min_samples - 1 (the (min_samples - 1)-th stored neighbour), which is the same
  distance; entries a row receives from other rows' lists are never nearer than its own k-th neighbour, so
  they do not change it (k >= min_samples - 1).
- scikit-learn refuses a disconnected graph. Components of the kNN graph are joined by a star of edges at a
  distance above every stored one, so they merge at the root of the hierarchy (what separate groups of
  unrelated images are); the run is then not exact, and says so.

When it is exact (`exact_mst`): the minimum spanning tree of the kNN graph is the one of the full mutual
reachability graph if every pair missing from the graph weighs at least as much as the tree path between
its ends. A missing pair (a, b) weighs at least max(r_a, r_b), r = the distance to a row's k-th neighbour,
so it is enough that no tree edge of weight w joins two parts that both hold a point with r < w (checked
with a union-find over the tree's edges in increasing order, O(n)). Then the labels are scikit-learn's
dense HDBSCAN's (ties aside: pairs at exactly equal distances can be merged in another order).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from scipy.sparse import csr_matrix
from scipy.sparse.csgraph import connected_components, minimum_spanning_tree

from cluster import knn_graph

MIN_CLUSTER_SIZE = 5  # scikit-learn's HDBSCAN default, what `--method hdbscan` has always used


@dataclass
class HdbscanInfo:
    exact: bool
    knn_k: int
    components: int  # connected components of the kNN graph (joined at the root when > 1)
    reason: str

    def to_dict(self) -> dict:
        return asdict(self)


def _sparse_graph(n: int, dist: np.ndarray, idx: np.ndarray) -> csr_matrix:
    """The kNN lists as a symmetric CSR distance matrix (a pair in either list; zero distances kept > 0)."""
    lists = knn_graph._Lists(n=n, keys=[], dists=[])
    lists.add(np.arange(n), dist, idx, np.inf)
    keys, d = lists.unique()
    a, b = keys // n, keys % n
    # a stored zero is "no edge" to scipy's graph routines: duplicates get the smallest positive distance
    d = np.maximum(d, np.finfo(np.float64).tiny)
    return csr_matrix((np.concatenate([d, d]), (np.concatenate([a, b]), np.concatenate([b, a]))), shape=(n, n))


def _join_components(graph: csr_matrix) -> tuple[csr_matrix, int, float]:
    """Join the graph's components with a star of edges at a distance above every stored one."""
    n_comp, comp = connected_components(graph, directed=False)
    if n_comp == 1:
        return graph, 1, np.inf
    far = 2.0 * float(graph.data.max(initial=1.0)) + 1.0
    reps = np.unique(comp, return_index=True)[1]  # first row of each component
    a = np.full(n_comp - 1, reps[0])
    b = reps[1:]
    link = csr_matrix((np.full(2 * a.size, far), (np.concatenate([a, b]), np.concatenate([b, a]))),
                      shape=graph.shape)  # fmt: skip
    return (graph + link).tocsr(), n_comp, far


def exact_mst(graph: csr_matrix, core: np.ndarray, kth: np.ndarray) -> bool:
    """Whether the kNN graph's mutual-reachability MST is the full graph's (module docstring's condition)."""
    coo = graph.tocoo()
    w = np.maximum(np.maximum(core[coo.row], core[coo.col]), coo.data)
    mst = minimum_spanning_tree(csr_matrix((w, (coo.row, coo.col)), shape=graph.shape)).tocoo()
    order = np.argsort(mst.data, kind="stable")
    parent = np.arange(graph.shape[0])
    low = kth.astype(np.float64).copy()  # per root: the smallest k-th distance in its part

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for a, b, wt in zip(mst.row[order].tolist(), mst.col[order].tolist(), mst.data[order].tolist(), strict=True):
        ra, rb = find(a), find(b)
        if low[ra] < wt and low[rb] < wt:
            return False
        parent[rb] = ra
        low[ra] = min(low[ra], low[rb])
    return True


def knn_hdbscan(x, *, min_samples: int, metric: str, knn_k: int = 32, block: int = 2048,
                min_cluster_size: int = MIN_CLUSTER_SIZE, keep: dict | None = None
                ) -> tuple[np.ndarray, HdbscanInfo, object]:  # fmt: skip
    """Labels of scikit-learn's HDBSCAN(min_samples, min_cluster_size) run on the kNN graph, HdbscanInfo, and
    the fitted estimator (its `_single_linkage_tree_` is the dendrogram the tests compare). `keep`, if given,
    receives `neighbours` (int32 indices, float32 distances): the lists `cluster map` lays out from."""
    from sklearn.cluster import HDBSCAN

    n = int(np.shape(x)[0])
    if not 2 <= min_samples <= n:
        raise ValueError(f"min_samples must be between 2 and the number of signatures ({n}), got {min_samples}.")
    k = max(1, min(n - 1, max(min_samples, knn_k)))
    dist, idx = knn_graph._knn(x, k, metric=metric, exact=True, block=block)
    graph = _sparse_graph(n, dist, idx)
    core = np.maximum(dist[:, min_samples - 2], np.finfo(np.float64).tiny)
    kth = np.where(idx[:, -1] >= 0, dist[:, -1], np.inf)  # fewer than k other rows: the list holds them all
    if keep is not None:
        keep["neighbours"] = (idx.astype(np.int32), dist.astype(np.float32))
    del dist, idx
    graph, n_comp, _ = _join_components(graph)
    exact = n_comp == 1 and exact_mst(graph, core, kth)
    if exact:
        why = f"exact: the minimum spanning tree of the {k}-NN graph is the full graph's"
    elif n_comp > 1:
        why = (f"approximate: the {k}-NN graph has {n_comp} connected components, joined at the root of the "
               "hierarchy (raise --knn-k to connect them)")  # fmt: skip
    else:
        why = (f"approximate: pairs outside the {k}-NN lists could change the minimum spanning tree above the "
               "lists' reach (raise --knn-k)")  # fmt: skip
    fitted = HDBSCAN(min_samples=max(1, min_samples - 1), min_cluster_size=min_cluster_size, metric="precomputed",
                     copy=False).fit(graph)  # fmt: skip
    info = HdbscanInfo(exact=exact, knn_k=k, components=n_comp, reason=why)
    return fitted.labels_.astype(np.int64), info, fitted
