"""Search from the annotation page: "more like this" and "where else does this detail appear", and adding a hit
to the cluster being judged.

Routes (JSON; registered by `create_app` always, so that a page of an app started without `--index` is told why)
- `GET /api/search?uid=U[&box=X,Y,W,H][&k=K][&cluster=C]`: the images most like U (a whole-image query, answered
  from the index alone) or like the detail BOX of U (pixels of U's image as shown, EXIF orientation applied:
  the network embeds the crop). Answer: `{"query": {"uid", "box", "size": [w, h], "k", "notes"}, "results":
  [{"uid", "score", "box", "title", "author", "date", "thumb", "size", "in_cluster", "added"}, ...]}`; `box` of a
  hit is its best-matching region in its own pixels (null: the whole image), `size` its width and height, so
  the page draws the box in percent of the thumbnail. `in_cluster`, `added`: the hit is a member of cluster C,
  or was added to it already;
- `GET /api/search/size?uid=U`: U's width and height in pixels (from the index, else read from the image), so
  that the page turns a box drawn on the enlarged picture into the image's own pixels before searching;
- `POST /api/add`: `{"cluster": C, "uid": HIT, "query": {"uid", "box", "score"}}` (optionally `ticked` or
  `unticked` as for a decision): HIT belongs with cluster C. Journaled in annotations.jsonl like every decision
  (`cluster.annotations.addition_record`; fsynced before the reply), undone like one.

The network and the index come from `model.search_service` (imported only when the app is started with
`--index`: an app without it never loads jax). Hits are this collection's images when their uid is in its
images.csv (the normal case: the index was built on this collection); a hit from another collection the index
holds is shown with the metadata of that collection and no thumbnail, and cannot be added.
"""

from __future__ import annotations

import math
import threading
from pathlib import Path

from flask import Flask, abort, jsonify, request

from cluster.annotate.queue import ticked_from
from cluster.annotations import addition_record
from cluster.review import DecisionError, addition_anchors, addition_edges
from data.metadata import meta_value

MAX_K = 200
DEFAULT_K = 24
NO_INDEX = ("search is off: this server was started without an index. Build one with `python -m model index "
            "--collection C --weights W --out INDEX`, then start the app with `python -m cluster annotate ... "
            "--index INDEX`.")


class SearchSetupError(ValueError):
    """The index given with --index cannot be opened (the message says what to do)."""


class AppSearch:
    """The app's search service (`model.search_service.SearchService`, its blocks resident on the device), with
    a lock: jax's first compilation and the encoder's loading must not run twice at once."""

    def __init__(self, index_dir: str | Path, weights: str | None = None) -> None:
        from model.index import IndexError_
        from model.search_service import SearchService

        try:
            self.service = SearchService(index_dir, weights=weights, resident=True)
        except (IndexError_, OSError) as e:
            raise SearchSetupError(f"--index {index_dir}: {e}") from e
        self.lock = threading.Lock()

    def ask(self, **kw):
        from model.query import QueryError

        with self.lock:
            try:
                return self.service.ask(**kw)
            except QueryError as e:
                abort(400, description=app_wording(str(e)))

    def weights_problem(self) -> str | None:
        """Why box searches will fail (the index's weights moved), said once at start-up; None when they are there."""
        recorded = (self.service.index.manifest.get("weights") or {}).get("weights")
        given = self.service.encoder.weights
        where = given or recorded
        if where and where != "random" and not Path(where).exists():
            return (f"the weights the index was built with are not at {where}: searching a drawn box will fail "
                    f"until the app is started with --index-weights and where they are now.")
        return None

    def size_of(self, uid: str) -> tuple[int, int] | None:
        number = self.service.index.number_of(uid)
        return None if number is None else self.service.index.size_of(number)


def app_wording(message: str) -> str:
    """The command line's option names in a query error, as the app's (its options, the page's box)."""
    return message.replace("--weights", "--index-weights").replace("--box", "box").replace(
        "pass --image FILE", "search another image")


def _box_arg() -> tuple[int, int, int, int] | None:
    raw = request.args.get("box")
    if raw is None or raw == "":
        return None
    from model.query import QueryError, parse_box

    try:
        return parse_box(raw)
    except QueryError as e:
        abort(400, description=app_wording(str(e)))


def _k_arg() -> int:
    raw = request.args.get("k", str(DEFAULT_K))
    if not raw.isdigit() or not 1 <= int(raw) <= MAX_K:
        abort(400, description=f"k must be a whole number from 1 to {MAX_K}.")
    return int(raw)


def _cluster_arg(session) -> int | None:
    raw = request.args.get("cluster")
    if raw is None or raw == "":
        return None
    try:
        cid = int(raw)
    except ValueError:
        abort(400, description="cluster must be an integer cluster id.")
    if cid not in session.queue:
        abort(404, description=f"cluster {cid} is not in {session.clusters_path.name} nor a proposal.")
    return cid


def _hit_json(session, search: AppSearch, hit, members: set[str], added: dict) -> dict:
    """One result as the page shows it: score, box, size, caption fields, thumbnail and cluster state."""
    ours = hit.uid in session.collection
    if ours:
        caption = dict(map(tuple, session._describe(hit.uid)["caption"]))
    else:
        meta = search.service.metadata([hit]).get(hit.uid, {})
        caption = {k: meta_value(meta, k) or None for k in ("title", "author", "date")}
    return {
        "uid": hit.uid,
        "score": round(float(hit.score), 6),
        "similarity": round(float(hit.similarity), 6),
        "box": hit.box,
        "title": caption.get("title"),
        "author": caption.get("author"),
        "date": caption.get("date"),
        "thumb": f"/image/{_quote(hit.uid)}?size=256" if ours else None,
        "size": list(search.service.index.size_of(hit.number)),
        "in_collection": ours,
        "in_cluster": hit.uid in members,
        "added": hit.uid in added,
    }


def _quote(uid: str) -> str:
    from urllib.parse import quote

    return quote(uid, safe="")


def search_answer(session, search: AppSearch) -> dict:
    """The JSON of `GET /api/search` (module docstring)."""
    uid = request.args.get("uid", "")
    if not uid:
        abort(400, description="pass uid=UID, the image to search from.")
    box, k = _box_arg(), _k_arg()
    with session.store.lock:
        session.sync()
        cid = _cluster_arg(session)
        members = set(session.queue.clusters[cid]) if cid is not None else set()
        added = dict(session.queue.added(cid)) if cid is not None else {}
    if uid not in session.collection and search.size_of(uid) is None:
        abort(400, description=f"uid {uid!r} is neither in {session.collection.images_file} nor in the index.")
    answer = search.ask(uid=uid, box=box, k=k, collection=str(session.collection.root))
    q = answer.query
    query = {"uid": q.uid, "box": list(q.box) if q.box else None, "size": list(q.size) if q.size else None,
             "k": k, "cluster": cid, "notes": [app_wording(n) for n in q.notes]}
    return {"query": query, "results": [_hit_json(session, search, h, members, added) for h in answer.hits]}


def image_size(session, search: AppSearch) -> dict:
    """`GET /api/search/size`: the image's width and height as shown (the index's record, else decoded)."""
    uid = request.args.get("uid", "")
    size = search.size_of(uid)
    if size is None:
        if uid not in session.collection:
            abort(400, description=f"uid {uid!r} is neither in {session.collection.images_file} nor in the index.")
        from data.image import ImageReadError, decode_image

        try:
            size = decode_image(session.collection.image_path(uid), name=f"uid {uid}").image.size
        except ImageReadError as e:
            abort(400, description=str(e))
    return {"uid": uid, "size": [int(size[0]), int(size[1])]}


def _query_of(body: dict) -> dict:
    """The provenance of an addition (`{"uid", "box", "score"}` of the search that found it), or a 400."""
    q = body.get("query")
    if not isinstance(q, dict) or not isinstance(q.get("uid"), str):
        abort(400, description="'query' must be {\"uid\": ..., \"box\": [x, y, w, h] or null, \"score\": ...}: the "
              "search that found the image.")
    box, score = q.get("box"), q.get("score")
    if box is not None and not (isinstance(box, list) and len(box) == 4
                                and all(isinstance(v, int) and not isinstance(v, bool) for v in box)):
        abort(400, description="'query.box' must be null or [x, y, w, h] in whole pixels.")
    if score is not None and (not isinstance(score, int | float) or isinstance(score, bool) or not math.isfinite(score)):
        abort(400, description="'query.score' must be a finite number or null.")
    return {"uid": q["uid"], "box": box, "score": score}


def _anchors(session, cid: int, uid: str, ticked, unticked) -> list[str]:
    """The members the added image is joined to (`cluster.review.addition_anchors`), or a 4xx."""
    members = session.queue.clusters[cid]
    if uid in members:
        abort(409, description=f"{uid} is a member of this cluster already.")
    if uid in session.queue.added(cid):
        abort(409, description=f"{uid} was added to this cluster already; undo that to add it again.")
    try:
        return addition_anchors(members, session.queue.decision_of(cid), ticked_from(members, ticked, unticked))
    except DecisionError as e:
        abort(409, description=str(e))


def add_to_cluster(session, body: dict, uid_list) -> dict:
    """Record "HIT belongs with cluster C" (`POST /api/add`): an "add" decision whose edges join the hit to the
    cluster's group (`cluster.review.addition_edges`), appended and fsynced like every decision."""
    cid, uid = body.get("cluster"), body.get("uid")
    if not isinstance(cid, int) or isinstance(cid, bool):
        abort(400, description="'cluster' must be an integer cluster id.")
    if not isinstance(uid, str) or uid not in session.collection:
        abort(400, description=f"'uid' must be an image of {session.collection.images_file}.")
    sha = body.get("clusters_sha256")
    if sha is not None and sha != session.clusters_sha256:
        abort(409, description="the clusters file changed since this page was loaded; reload the page.")
    query = _query_of(body)
    ticked, unticked = uid_list(body, "ticked"), uid_list(body, "unticked")
    with session.store.lock:
        session.sync()
        if cid not in session.queue:
            abort(404, description=f"cluster {cid} is not in {session.clusters_path.name} nor a proposal.")
        anchors = _anchors(session, cid, uid, ticked, unticked)
        try:
            edges = addition_edges(uid, anchors)
        except DecisionError as e:
            abort(409, description=str(e))
        return session.store.append(addition_record(
            cluster=cid, uid=uid, edges=edges, query=query, clusters_file=str(session.clusters_path),
            clusters_sha256=session.clusters_sha256, annotator=session.annotator))


def add_search_routes(app: Flask, session, search: AppSearch | None, json_body, uid_list) -> None:
    """The routes of the module docstring; without an index each answers 409 saying how to start with one."""

    def need_index() -> AppSearch:
        if search is None:
            abort(409, description=NO_INDEX)
        return search

    @app.get("/api/search")
    def search_route():
        return jsonify(search_answer(session, need_index()))

    @app.get("/api/search/size")
    def search_size():
        return jsonify(image_size(session, need_index()))

    @app.post("/api/add")
    def add_route():
        need_index()
        rec = add_to_cluster(session, json_body(), uid_list)
        with session.store.lock:
            view = session.cluster_view(rec["cluster"])
            return jsonify({"ok": True, "id": rec["id"], "n_edges": len(rec["edges"]), "view": view,
                            "state": session.state()})
