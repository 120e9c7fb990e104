"""Connected components of the connection graph: pattern groups.

A *pattern group* is a connected component of the POSITIVE graph (two images are in one group
if a chain of known connections joins them). Components are named by their smallest uid, so a
group's name does not depend on the order of rows in connections.csv.
"""

from __future__ import annotations

from collections.abc import Iterable

from data.collection import DUPLICATE, POSITIVE, Collection


class UnionFind:
    """Disjoint sets over hashable keys, with path halving and union by size."""

    def __init__(self) -> None:
        self._parent: dict[str, str] = {}
        self._size: dict[str, int] = {}

    def add(self, x: str) -> None:
        if x not in self._parent:
            self._parent[x] = x
            self._size[x] = 1

    def find(self, x: str) -> str:
        self.add(x)
        p = self._parent
        while p[x] != x:
            p[x] = p[p[x]]
            x = p[x]
        return x

    def union(self, a: str, b: str) -> str:
        ra, rb = self.find(a), self.find(b)
        if ra == rb:
            return ra
        if self._size[ra] < self._size[rb]:
            ra, rb = rb, ra
        self._parent[rb] = ra
        self._size[ra] += self._size[rb]
        return ra

    def groups(self) -> dict[str, list[str]]:
        """Members of each set, keyed by its smallest member; members sorted."""
        by_root: dict[str, list[str]] = {}
        for x in self._parent:
            by_root.setdefault(self.find(x), []).append(x)
        return {min(m): sorted(m) for m in by_root.values()}


def components(edges: Iterable[tuple[str, str]], nodes: Iterable[str] = ()) -> dict[str, list[str]]:
    """Connected components of an undirected graph, keyed by their smallest member."""
    uf = UnionFind()
    for n in nodes:
        uf.add(n)
    for a, b in edges:
        uf.union(a, b)
    return uf.groups()


def pattern_groups(collection: Collection, *, with_duplicates: bool = False) -> dict[str, str]:
    """Map each uid that has a POSITIVE connection to the name of its pattern group.

    With `with_duplicates`, DUPLICATE edges also join components (used for splitting and for
    mining, where a duplicate of a group member must never be a negative). Uids unknown to
    images.csv are ignored: validation reports them.
    """
    types = (POSITIVE, DUPLICATE) if with_duplicates else (POSITIVE,)
    edges = [
        (c.a, c.b)
        for c in collection.connections
        if c.type in types and c.a != c.b and c.a in collection and c.b in collection
    ]
    positive_nodes = {u for c in collection.connections if c.type == POSITIVE for u in (c.a, c.b) if u in collection}
    out: dict[str, str] = {}
    for name, members in components(edges).items():
        if positive_nodes.intersection(members):
            for m in members:
                out[m] = name
    return out
