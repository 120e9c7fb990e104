"""Connected components of the connection graph: pattern groups.

A *pattern group* is a connected component of the POSITIVE graph (two images are in one group
if a chain of known connections joins them). Components are named by their smallest uid, so a
group's name does not depend on the order of rows in connections.csv.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from data.collection import DUPLICATE, POSITIVE, Collection


def components(edges: Iterable[tuple[str, str]], nodes: Iterable[str] = ()) -> dict[str, list[str]]:
    """Connected components of an undirected graph, keyed by their smallest member; members sorted.

    The keys are numbered once and SciPy's connected_components (C) joins them: at 10^6 images and
    2 x 10^5 links a Python union-find took ~1.5 s per call, and accept, the annotation app, splits and
    mining each call this more than once."""
    index: dict[str, int] = {}
    for n in nodes:
        index.setdefault(n, len(index))
    ends: list[int] = []
    for a, b in edges:
        ends.append(index.setdefault(a, len(index)))
        ends.append(index.setdefault(b, len(index)))
    if not index:
        return {}
    pairs = np.asarray(ends, np.int64).reshape(-1, 2)
    graph = coo_matrix((np.ones(len(pairs), np.int8), (pairs[:, 0], pairs[:, 1])), shape=(len(index), len(index)))
    label = connected_components(graph, directed=False)[1].tolist()
    out: dict[int, list[str]] = {}
    for key in sorted(index):  # each component's list comes out sorted, its first member the smallest
        out.setdefault(label[index[key]], []).append(key)
    return {m[0]: m for m in out.values()}


def group_members(collection: Collection, *, with_duplicates: bool = False) -> dict[str, list[str]]:
    """The pattern groups: name (smallest uid) -> sorted members, the components of the POSITIVE links (and,
    with `with_duplicates`, the DUPLICATE ones) that hold at least one POSITIVE link. Only links between two
    different uids of images.csv count (validation reports the others). One definition for splits, mining,
    evaluation, the app and the report."""
    types = (POSITIVE, DUPLICATE) if with_duplicates else (POSITIVE,)
    known = collection.uid_index
    links = [c for c in collection.connections if c.type in types and c.a != c.b and c.a in known and c.b in known]
    positive_nodes = {u for c in links if c.type == POSITIVE for u in (c.a, c.b)}
    return {name: members for name, members in components((c.a, c.b) for c in links).items()
            if not positive_nodes.isdisjoint(members)}


def pattern_groups(collection: Collection, *, with_duplicates: bool = False) -> dict[str, str]:
    """Map each uid of a pattern group (`group_members`) to the group's name.

    With `with_duplicates`, DUPLICATE edges also join components (used for splitting and for
    mining, where a duplicate of a group member must never be a negative).
    """
    return {m: name for name, members in group_members(collection, with_duplicates=with_duplicates).items()
            for m in members}
