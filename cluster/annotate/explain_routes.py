"""Explaining a proposal on the annotation page (`cluster.explain` does the counting), and its read-only routes.

What each card of `GET /api/cluster/<id>` carries under `explain` (added by `Explainer.annotate_view`):
- `nearest`: `{"uid", "n", "distance"}`, the other member of the cluster nearest to this one by the cosine
  distance of the signatures the clustering used (the file clusters.json names, or `--signatures`); absent
  when they cannot be read (the view's `explain_note` says why);
- `reachability`, `core_distance`: the image's OPTICS distances from clusters.csv (null where infinite);
- `partners`: its known connections in connections.csv by type, `{"TYPE": {"count", "shown": [{"uid", "title",
  "n"}]}}` (`n`: the partner's number in this cluster, null when it is not a member);
- `group`: its known pattern group (`data.graph.pattern_groups`), `{"name", "title", "size", "in_cluster"}` (title:
  the title of the member whose uid names the group, or null), or null.

Routes (GET, JSON)
- `GET /api/missed[?limit=N]`: the known pattern groups no cluster found (`cluster.explain.missed_groups`), the
  N biggest (default 100, at most 1,000; `total` says how many there are), each member with its cluster (-1
  noise, null not clustered) and title;
- `GET /api/match?uid=U&cluster=C[&page=N]`: with a search index only (`--index`), where U matches each other
  member of cluster C shown on page N: for every pair the best pair of stored regions (a box in each image's
  own pixels, and their cosine) and the two whole images' cosine. A direct comparison of the vectors the index
  stored (numpy on its memory map: no network, no device); 409 without an index.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from flask import Flask, abort, jsonify, request

from cluster.annotate.queue import PAGE_SIZE
from cluster.explain import (
    ByUid,
    GroupIndex,
    NearestMembers,
    OpticsDistances,
    Partners,
    missed_groups,
    missed_summary,
)
from data.graph import pattern_groups
from data.metadata import meta_value

MISSED_SHOWN, MISSED_MAX = 100, 1000  # missed groups sent to the page by default, and at most
NO_INDEX_MATCH = ("matching regions need the search index: start the app with `--index INDEX` (built by "
                  "`python -m model index`).")


class Explainer:
    """What the cards explain, indexed once when the app starts (O(images + links))."""

    def __init__(self, session, table, signatures_path: str | Path | None = None) -> None:
        self.session = session
        collection = session.collection
        row = {u: i for i, u in enumerate(table.uids)}
        self.optics = OpticsDistances(row, table.reachability, table.core_distance)
        self.label_of = ByUid(row, table.labels.tolist())
        self.partners = Partners((c.a, c.b, c.type) for c in collection.connections)
        self.groups = GroupIndex.from_map(pattern_groups(collection))
        self.nearest = NearestMembers.for_clusters(table.params, signatures_path)
        self._missed: list[dict] | None = None

    def title(self, uid: str) -> str | None:
        if uid not in self.session.collection:
            return None
        return meta_value(self.session.collection.record(uid).meta, "title") or None

    def annotate_view(self, view: dict) -> dict:
        """Add `explain` to each member of a page of a cluster (see the module docstring), and `explain_note`."""
        members = self.session.queue.clusters[view["id"]]
        number = {u: i + 1 for i, u in enumerate(members)}
        shown = [m["uid"] for m in view["members"]]
        nearest = self.nearest.page(view["id"], members, shown)
        for m in view["members"]:
            uid = m["uid"]
            reach, core = self.optics.get(uid, (None, None))
            near = nearest.get(uid)
            m["explain"] = {
                "nearest": None if near is None else {**near, "n": number.get(near["uid"])},
                "reachability": reach,
                "core_distance": core,
                "partners": self.partners.by_type(uid, number, self.title),
                "group": self._group(uid, number),
            }
        view["explain_note"] = self.nearest.note
        return view

    def _group(self, uid: str, number: dict) -> dict | None:
        """The image's known group with a title to read it by: the title of the member that names the group."""
        g = self.groups.describe(uid, number)
        return None if g is None else {**g, "title": self.title(g["name"])}

    def missed(self, limit: int = MISSED_SHOWN) -> dict:
        """`GET /api/missed` (computed once: the clusters and the known groups do not change while the app runs);
        titles are looked up for the groups sent only."""
        if self._missed is None:
            self._missed = missed_groups(self.groups, self.label_of)
        shown = [{**g, "title": self.title(g["name"]), "members": [{**m, "title": self.title(m["uid"])}
                                                                    for m in g["members"]]}
                 for g in self._missed[:limit]]
        return {"total": len(self._missed), "groups": shown, "summary": missed_summary(self._missed)}


def _box(grid_row: np.ndarray, size: tuple[int, int]) -> list[int]:
    """A region of the index's grid (fractions of the picture) in the picture's own pixels."""
    w, h = size
    x, y, bw, bh = grid_row
    return [int(round(x * w)), int(round(y * h)), max(1, int(round(bw * w))), max(1, int(round(bh * h)))]


def match_regions(index, uid: str, others: list[tuple[int, str]]) -> dict:
    """Where `uid` matches each of `others` ((n, uid) members): the best pair of stored regions and the whole
    images' cosine, from the index's own vectors (model.index.SearchIndex)."""
    number = index.number_of(uid)
    if number is None:
        abort(400, description=f"uid {uid!r} is not in the search index; index the collection again.")
    g_a, r_a = index.vectors_of(number)
    grid, size_a = index.grid, index.size_of(number)
    pairs = []
    for n, other in others:
        k = index.number_of(other)
        if k is None or other == uid:
            continue
        g_b, r_b = index.vectors_of(k)
        sims = r_a @ r_b.T  # (R, R) cosines of unit vectors
        i, j = np.unravel_index(int(np.argmax(sims)), sims.shape)
        pairs.append({"uid": other, "n": n, "whole": round(float(g_a @ g_b), 6),
                      "regions": round(float(sims[i, j]), 6), "box": _box(grid[i], size_a),
                      "other_box": _box(grid[j], index.size_of(k)), "other_size": list(index.size_of(k))})
    pairs.sort(key=lambda p: -p["regions"])
    return {"uid": uid, "size": list(size_a), "pairs": pairs}


def _int_arg(name: str, default: int | None = None) -> int:
    raw = request.args.get(name)
    if raw is None or raw == "":
        if default is None:
            abort(400, description=f"pass {name}=N.")
        return default
    try:
        return int(raw)
    except ValueError:
        abort(400, description=f"{name} must be a whole number.")


def add_explain_routes(app: Flask, session, search) -> None:
    """The routes of the module docstring."""

    @app.get("/api/missed")
    def missed():
        limit = _int_arg("limit", MISSED_SHOWN)
        if not 1 <= limit <= MISSED_MAX:
            abort(400, description=f"limit must be a whole number from 1 to {MISSED_MAX}.")
        return jsonify(session.explain.missed(limit))

    @app.get("/api/match")
    def match():
        if search is None:
            abort(409, description=NO_INDEX_MATCH)
        uid, cid, page = request.args.get("uid", ""), _int_arg("cluster"), _int_arg("page", 1)
        with session.store.lock:
            session.sync()
            if cid not in session.queue:
                abort(404, description=f"cluster {cid} is not in {session.clusters_path.name} nor a proposal.")
            members = session.queue.clusters[cid]
        if uid not in members:
            abort(400, description=f"uid {uid!r} is not a member of cluster {cid}.")
        if page < 1 or (page - 1) * PAGE_SIZE >= len(members):
            abort(400, description=f"page {page} of cluster {cid} does not exist.")
        start = (page - 1) * PAGE_SIZE
        others = [(start + i + 1, u) for i, u in enumerate(members[start:start + PAGE_SIZE])]
        with search.lock:
            return jsonify({"cluster": cid, **match_regions(search.service.index, uid, others)})
