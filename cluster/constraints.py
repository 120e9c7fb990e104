"""The expert's decisions as constraints on the next clustering, before any retraining (issue 16, item 2).

Must-link: images that a POSITIVE or DUPLICATE connection joins, directly or by a chain (the components of that
graph, `data.graph.components`): a confirmed group should not be split. Cannot-link: the two images of a
NEGATIVE connection should never be in one cluster: a rejected proposal (a "wrong cluster" decision writes
NEGATIVE edges along the cluster's members, cluster/review.py) is then not proposed again.

Applied after any method's labels, as pure functions on row indices (`apply_constraints`):

1. Cannot-link. Every cluster holding a cannot-link pair (a, b) is cut where it is weakest between them: at the
   heaviest edge on the path from a to b in a tree over the cluster's members. For OPTICS the tree is the
   cluster's members in OPTICS order, each joined to the one before it at its reachability distance, so the cut
   falls at the highest reachability between the positions of a and b (the valley between two sub-clusters of
   the reachability plot); for the other methods it is the minimum spanning tree of the members' distances (the
   single-linkage tree). Every pair is cut at its own weakest point: an edge is cut when it is the heaviest on
   the path of some pair, i.e. when it is the merge of the (single-linkage) dendrogram that first joins a
   cannot-link pair; ties go to the first edge. This is "split where weakest, repeat" taken top-down (an edge
   is cut, in decreasing weight, when a pair not yet separated spans it), and it does not depend on the order
   in which the pairs are listed (taken pair by pair in the order given, a cut for one pair could separate
   another before its own weakest point was reached). Computed at once: Kruskal's order over the tree's edges
   with, at each root, the pairs still waiting for their other end (small-to-large merging),
   O((s + p) log(s + p)) for s members and p pairs.
   Pieces smaller than min_cluster_size become noise.
2. Must-link. A group whose members fall in several clusters, or in one cluster and the noise, is brought
   together: its members join the cluster holding most of them (ties: the smaller label), each one only where
   none of its cannot-link partners is in that cluster (the cannot-link rule wins: its members stay apart
   rather than making a proposal the expert has rejected). A group all in the noise is left there (nothing was
   split), unless step 1 put it there (a member was in a cluster before the cuts): the group then becomes a
   cluster of its own (each member only where no cannot-link partner is already in it; at least
   min_cluster_size). Without this, a split whose sub-groups interleave in OPTICS order (every neighbour pair a
   cannot-link pair, so the cuts leave single images) dropped every confirmed sub-group into the noise, and a
   known pair proposed with an outsider that the expert rejected ("wrong cluster") was never proposed again.
   A cluster left smaller than min_cluster_size by the moves becomes noise.

Time and memory O(n + constraints + the sizes of the clusters that hold a cannot-link pair), never n²; the one
exception is the spanning tree for non-OPTICS methods, O(s² d) time (O(s d) memory) for a cluster of s members
holding a cannot-link pair (Prim's algorithm on rows computed as needed: a few seconds at s = 5,000, d = 512).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np

from data.collection import DUPLICATE, NEGATIVE, POSITIVE, Collection, Connection
from data.graph import components


def connection_constraints(connections: Iterable[Connection]) -> tuple[list[list[str]], list[tuple[str, str]]]:
    """(must-link groups, cannot-link pairs) of uids from connections (module docstring)."""
    connections = list(connections)
    joined = [(c.a, c.b) for c in connections if c.type in (POSITIVE, DUPLICATE) and c.a != c.b]
    groups = [members for members in components(joined).values() if len(members) > 1]
    apart = sorted({c.pair for c in connections if c.type == NEGATIVE and c.a != c.b})
    return groups, apart


def collection_constraints(collection: Collection) -> tuple[list[list[str]], list[tuple[str, str]]]:
    """(must-link groups, cannot-link pairs) of uids from the collection's connections."""
    return connection_constraints(collection.connections)


def to_indices(uids: Sequence[str], groups: Iterable[Sequence[str]], pairs: Iterable[tuple[str, str]]
               ) -> tuple[list[np.ndarray], np.ndarray, int]:
    """The constraints on row indices of `uids`; uids not among them are left out. Returns (groups, pairs,
    how many connections' images were not all among the rows)."""
    index = {u: i for i, u in enumerate(uids)}
    pairs = list(pairs)
    out_groups, outside = [], 0
    for g in groups:
        rows = [index[u] for u in g if u in index]
        outside += len(rows) < len(g)
        if len(rows) > 1:
            out_groups.append(np.asarray(rows, np.int64))
    kept = [(index[a], index[b]) for a, b in pairs if a in index and b in index]
    return out_groups, np.asarray(kept, np.int64).reshape(-1, 2), outside + len(pairs) - len(kept)


def _heaviest_path_edges(n: int, edges: np.ndarray, weights: np.ndarray, pairs: np.ndarray) -> np.ndarray:
    """For a tree on nodes 0..n-1: a mask of the edges that are the heaviest on the path of some pair.

    Kruskal's order: the edge whose union first joins a pair's two ends is the heaviest on its path. Each root
    keeps the pairs waiting for their other end; the smaller list is walked on a union (small-to-large)."""
    parent = np.arange(n)
    waiting: dict[int, list[int]] = {}
    for k, (a, b) in enumerate(pairs.tolist()):
        waiting.setdefault(a, []).append(k)
        waiting.setdefault(b, []).append(k)

    def find(x: int) -> int:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = int(parent[x])
        return x

    cut = np.zeros(len(edges), bool)
    resolved = np.zeros(len(pairs), bool)  # a pair sits in two lists until joined; the second copy is skipped
    for e in np.lexsort((-np.arange(len(edges)), weights)).tolist():  # ties: the first edge counts as heaviest
        ra, rb = find(int(edges[e, 0])), find(int(edges[e, 1]))
        la, lb = waiting.pop(ra, []), waiting.pop(rb, [])
        if len(la) < len(lb):
            ra, rb, la, lb = rb, ra, lb, la
        parent[rb] = ra
        for k in lb:  # one end under rb; joined by this edge iff the other end was under ra
            if resolved[k]:
                continue
            if find(int(pairs[k, 0])) == find(int(pairs[k, 1])):
                resolved[k] = cut[e] = True
            else:
                la.append(k)
        if la:
            waiting[ra] = la
    return cut


def _components_without(n: int, edges: np.ndarray, cut: np.ndarray) -> np.ndarray:
    """Component of each node once the cut edges are removed (scipy's connected components)."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    kept = edges[~cut]
    graph = coo_matrix((np.ones(len(kept)), (kept[:, 0], kept[:, 1])), shape=(n, n))
    return connected_components(graph, directed=False)[1]


def ordering_tree(members_in_order: np.ndarray, reachability: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """OPTICS: the members (row indices, in OPTICS order) as a chain, each joined to the one before it at its
    reachability. Edges are on local positions 0..s-1."""
    s = len(members_in_order)
    edges = np.stack([np.arange(s - 1), np.arange(1, s)], axis=1)
    return edges, np.asarray(reachability, np.float64)[members_in_order[1:]]


def spanning_tree(rows: np.ndarray, metric: str = "cosine") -> tuple[np.ndarray, np.ndarray]:
    """Minimum spanning tree of the rows' distances (Prim; O(s² d) time, O(s d) memory): local edges, weights."""
    x = np.asarray(rows, np.float64)
    if metric == "cosine":
        norms = np.linalg.norm(x, axis=1, keepdims=True)
        x = x / np.where(norms > 0, norms, 1.0)
    s = len(x)
    best = np.full(s, np.inf)
    link = np.zeros(s, np.int64)
    done = np.zeros(s, bool)
    edges, weights = [], []
    current = 0
    for _ in range(s - 1):
        done[current] = True
        if metric == "cosine":
            d = 1.0 - x @ x[current]
        else:
            d = np.sqrt(np.maximum(((x - x[current]) ** 2).sum(axis=1), 0.0))
        closer = ~done & (d < best)
        best[closer], link[closer] = d[closer], current
        best[done] = np.inf
        current = int(np.argmin(best))
        edges.append((int(link[current]), current))
        weights.append(float(max(best[current], 0.0)))
    return np.asarray(edges, np.int64).reshape(-1, 2), np.asarray(weights)


def _violations(labels: np.ndarray, pairs: np.ndarray) -> np.ndarray:
    """The cannot-link pairs whose two rows share a cluster."""
    if not len(pairs):
        return pairs
    la, lb = labels[pairs[:, 0]], labels[pairs[:, 1]]
    return pairs[(la >= 0) & (la == lb)]


def _split_cluster(members: np.ndarray, pairs: np.ndarray, ordering_pos: np.ndarray | None,
                   reachability: np.ndarray | None, x: np.ndarray | None, metric: str
                   ) -> tuple[np.ndarray, np.ndarray]:
    """(members, piece number of each) for one cluster cut at the heaviest tree edge between every pair."""
    if ordering_pos is not None and reachability is not None:
        members = members[np.argsort(ordering_pos[members], kind="stable")]
        edges, weights = ordering_tree(members, reachability)
    elif x is not None:
        edges, weights = spanning_tree(x[members], metric)
    else:
        raise ValueError("cannot-link constraints on a clustering without an ordering need the signatures (x).")
    by_row = np.argsort(members, kind="stable")
    local = by_row[np.searchsorted(members[by_row], pairs)]  # the pairs on local positions 0..s-1
    cut = _heaviest_path_edges(len(members), edges, weights, local)
    return members, _components_without(len(members), edges, cut)


def _apply_cannot_link(labels: np.ndarray, pairs: np.ndarray, min_size: int, ordering_pos, reachability, x,
                       metric: str, report: dict) -> np.ndarray:
    """Step 1 of the module docstring: cut every cluster that holds a cannot-link pair."""
    bad = _violations(labels, pairs)
    report.update(cannot_link_violated=int(len(bad)), clusters_split=0, pieces_to_noise=0, rows_to_noise=0)
    next_label = int(labels.max()) + 1 if len(labels) else 0
    by_label = np.argsort(labels, kind="stable")  # each cluster's rows found in O(its size), not O(n)
    sorted_labels = labels[by_label]
    for lab in np.unique(labels[bad[:, 0]]).tolist() if len(bad) else []:
        lo, hi = np.searchsorted(sorted_labels, [lab, lab + 1])
        members = by_label[lo:hi]
        members, pieces = _split_cluster(members, bad[labels[bad[:, 0]] == lab], ordering_pos, reachability, x,
                                         metric)  # fmt: skip
        report["clusters_split"] += 1
        sizes = np.bincount(pieces)
        keep = int(np.argmax(sizes))  # the largest piece keeps the label
        for piece, size in enumerate(sizes.tolist()):
            rows = members[pieces == piece]
            if size < min_size:
                labels[rows] = -1
                report["pieces_to_noise"] += 1
                report["rows_to_noise"] += size
            elif piece != keep:
                labels[rows] = next_label
                next_label += 1
    return labels


def _partners(pairs: np.ndarray) -> dict[int, list[int]]:
    out: dict[int, list[int]] = {}
    for a, b in pairs.tolist():
        out.setdefault(a, []).append(b)
        out.setdefault(b, []).append(a)
    return out


def _reform(group: np.ndarray, before: np.ndarray, labels: np.ndarray, partners: dict[int, list[int]],
            min_size: int) -> bool:
    """A group that the cuts of step 1 left all in the noise, and that had a row in a cluster before them, becomes
    a new cluster: all its rows, as must-link brings a group's noise rows into its cluster (those clustered before
    first; a row whose cannot-link partner is already in it stays out). False when none was clustered before, or
    fewer than min_size rows are left."""
    was_clustered = before[group] >= 0
    if not was_clustered.any():
        return False
    rows: list[int] = []
    taken: set[int] = set()
    for row in np.concatenate([group[was_clustered], group[~was_clustered]]).tolist():
        if not taken.intersection(partners.get(row, ())):
            rows.append(row)
            taken.add(row)
    if len(rows) < min_size:
        return False
    labels[rows] = int(max(labels.max(), before.max())) + 1
    return True


def _apply_must_link(labels: np.ndarray, groups: Sequence[np.ndarray], pairs: np.ndarray, min_size: int,
                     report: dict, before: np.ndarray) -> np.ndarray:
    """Step 2 of the module docstring: a split group's members join the cluster holding most of them; a group
    that step 1 (`before` it: the labels) put all in the noise is made a cluster again."""
    partners = _partners(pairs)
    report.update(groups_split=0, rows_moved=0, rows_kept_apart=0, clusters_to_noise=0, groups_reformed=0)
    sizes = np.bincount(labels[labels >= 0], minlength=int(labels.max()) + 1 if len(labels) else 0)
    lost: set[int] = set()
    for g in groups:
        labs = labels[g]
        clustered = labs[labs >= 0]
        if not len(clustered):
            report["groups_reformed"] += _reform(g, before, labels, partners, min_size)
            continue  # all noise: left there unless the cuts put it there
        if len(clustered) == len(g) and (clustered == clustered[0]).all():
            continue  # all in one cluster
        report["groups_split"] += 1
        counts = np.bincount(clustered)
        target = int(np.argmax(counts))
        for row in g[labs != target].tolist():
            if any(labels[p] == target for p in partners.get(row, ())):
                report["rows_kept_apart"] += 1
                continue
            if labels[row] >= 0:
                sizes[labels[row]] -= 1
                lost.add(int(labels[row]))
            sizes[target] += 1
            labels[row] = target
            report["rows_moved"] += 1
    small = [lab for lab in sorted(lost) if 0 < sizes[lab] < min_size]
    if small:  # clusters that the moves left too small
        labels[np.isin(labels, small)] = -1
        report["clusters_to_noise"] += len(small)
    return labels


def _renumber(labels: np.ndarray) -> np.ndarray:
    """Clusters numbered 0..k-1 again, in the order of their old numbers (noise stays -1)."""
    out = np.full_like(labels, -1)
    clustered = labels >= 0
    if clustered.any():
        out[clustered] = np.unique(labels[clustered], return_inverse=True)[1]
    return out


def apply_constraints(labels: np.ndarray, must_link_groups: Sequence[np.ndarray], cannot_link_pairs: np.ndarray,
                      *, min_cluster_size: int = 2, ordering: np.ndarray | None = None,
                      reachability: np.ndarray | None = None, x: np.ndarray | None = None,
                      metric: str = "cosine") -> tuple[np.ndarray, dict]:
    """Labels that respect the expert's decisions (module docstring), and what was done, as counts.

    labels: (n,) cluster per row, -1 = noise (not changed; a new array is returned).
    must_link_groups: arrays of row indices that belong together (`to_indices(*collection_constraints(c))`).
    cannot_link_pairs: (p, 2) row indices that must not share a cluster.
    ordering, reachability: OPTICS's (row indices in processing order; each row's reachability): clusters are cut
        at the highest reachability between a pair. Without them, `x` (the rows as clustered) and `metric` give
        each cluster's minimum spanning tree, cut at its heaviest edge between a pair.
    min_cluster_size: pieces (and clusters emptied by must-link moves) below it become noise.
    The result holds no cannot-link pair inside a cluster; the report counts the pairs and groups given, the
    violations found, the clusters split, the rows sent to noise, the groups brought together and the rows moved.
    """
    labels = np.asarray(labels, np.int64).copy()
    pairs = np.asarray(cannot_link_pairs, np.int64).reshape(-1, 2)
    pairs = pairs[pairs[:, 0] != pairs[:, 1]]
    min_size = max(int(min_cluster_size), 1)
    ordering_pos = None
    if ordering is not None:
        ordering_pos = np.empty(len(ordering), np.int64)
        ordering_pos[np.asarray(ordering, np.int64)] = np.arange(len(ordering))
    report: dict = {"must_link_groups": len(must_link_groups), "cannot_link_pairs": int(len(pairs))}
    before = labels.copy()
    labels = _apply_cannot_link(labels, pairs, min_size, ordering_pos, reachability, x, metric, report)
    labels = _apply_must_link(labels, must_link_groups, pairs, min_size, report, before)
    return _renumber(labels), report
