"""The flask application of the annotation page (`create_app`).

Routes
- `GET /`                      the page (HTML; the script fetches the state below);
- `GET /api/state`             progress, the current cluster (or null when all are done), the last decision;
- `GET /api/cluster/<id>`      one cluster (members, metadata, known links), e.g. opened from the map;
- `POST /api/decision`         `{"cluster": id, "decision": name, "ticked": [uid, ...]}`;
- `POST /api/undo`             `{"decision": id}` (must be the last decision still in force);
- `GET /image/<uid>?size=256`  a resized JPEG of one image of the collection.

Safety, for a server that only ever needs to talk to the expert's own browser:
- images are looked up by uid in images.csv; no part of the request is ever used as a path;
- requests whose Host header is not a name of the bound address get 400, which defeats DNS-rebinding
  pages that would otherwise reach a loopback server from the expert's browser;
- POST bodies must be JSON (`Content-Type: application/json`, which a cross-site form cannot send
  without a preflight that this server never approves) and at most 64 KiB;
- a POST whose `Origin` header names another origin than the server's own (scheme://host:port), or
  whose `Sec-Fetch-Site` says it comes from another site or another port of this one, gets 403: another
  page open in the expert's browser (another local web app included) cannot record or undo decisions.
  Requests without these headers (curl, scripts) are let through: they are not a browser acting for a page;
- every malformed request gets a 4xx with a JSON `{"error": ...}` explaining it; a decision is fsynced
  to annotations.jsonl before the reply (see `store`).
"""

from __future__ import annotations

import json
import logging
import threading
from collections import OrderedDict
from pathlib import Path
from urllib.parse import urlsplit

from flask import Flask, abort, jsonify, render_template, request
from werkzeug.exceptions import HTTPException
from werkzeug.routing import BaseConverter

from cluster.accept import undo_note
from cluster.annotate.store import AnnotationStore
from cluster.annotations import AnnotationError
from cluster.clusters_file import file_sha256, read_clusters
from cluster.review import DECISIONS, DecisionError, implied_edges, order_clusters, pair
from data.collection import Collection, load_collection
from data.image import ImageReadError, is_damaged, jpeg_thumbnail

log = logging.getLogger(__name__)

MAX_BODY = 64 * 1024
THUMB_SIZES = (256, 1024)
THUMB_CACHE_ENTRIES = 2048
LOOPBACK_NAMES = frozenset({"127.0.0.1", "localhost", "::1", "[::1]"})
WILDCARD_HOSTS = frozenset({"0.0.0.0", "::", ""})

# images.csv metadata shown under each thumbnail: the first present column of each group (case-insensitive).
CAPTION_FIELDS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("title", ("title", "description")),
    ("author", ("author", "artist", "authororiginal")),
    ("date", ("date", "begindate", "object_date", "year")),
    ("place", ("place", "city", "country", "culture")),
)


class AnnotateSetupError(ValueError):
    """The collection and the clusters file do not fit together (the message says what to do)."""


def _caption(meta: dict[str, str]) -> list[list[str]]:
    lower = {k.lower(): v for k, v in meta.items() if v}
    out = []
    for label, keys in CAPTION_FIELDS:
        for k in keys:
            if k in lower:
                out.append([label, lower[k]])
                break
    return out


class _Thumbs:
    """Resized JPEGs, made on first request and kept in a bounded in-memory LRU.

    Decoded by `data.image` like every other stage (EXIF orientation, transparency on white, 16-bit
    scaled; JPEGs at a reduced scale), under the same pixel limit and decode budget, so the server's
    threads cannot decode many huge scans at once. Why an image could not be shown is kept by uid
    (`errors`) for the 404 the page receives.
    """

    def __init__(self, collection: Collection) -> None:
        self.collection = collection
        self.cache: OrderedDict[tuple[str, int], bytes] = OrderedDict()
        self.errors: dict[str, str] = {}
        self.lock = threading.Lock()

    def get(self, uid: str, size: int) -> bytes | None:
        key = (uid, size)
        with self.lock:
            if key in self.cache:
                self.cache.move_to_end(key)
                return self.cache[key]
        path = self.collection.image_path(uid)
        try:
            thumb = jpeg_thumbnail(path, size)
        except ImageReadError as e:
            log.warning("uid %s: %s (the page shows it as unreadable)", uid, e)
            with self.lock:
                self.errors[uid] = str(e)
            return None
        if is_damaged(thumb.notes):
            log.warning("uid %s (%s): %s", uid, path, "; ".join(thumb.notes))
        data = thumb.jpeg
        with self.lock:
            self.errors.pop(uid, None)
            self.cache[key] = data
            while len(self.cache) > THUMB_CACHE_ENTRIES:
                self.cache.popitem(last=False)
        return data


class UidConverter(BaseConverter):
    """Any uid in a URL path, slashes included (`/image/sl/ash`, `/image//lead`).

    The page sends `encodeURIComponent(uid)`; the server sees the path already decoded, so `%2F` is a
    `/` again and `?` or `#` arrive as themselves. flask's own `path` converter refuses a leading `/`.
    """

    regex = ".+"
    part_isolating = False


class AnnotationSession:
    """Everything the routes need: the clusters in review order, the known links, the log."""

    def __init__(self, collection_dir: str | Path, clusters_path: str | Path, annotator: str) -> None:
        self.collection = load_collection(collection_dir)
        self.clusters_path = Path(clusters_path).resolve()
        table = read_clusters(self.clusters_path)
        self.clusters_sha256 = file_sha256(self.clusters_path)
        self.annotator = annotator
        missing = [u for u in table.uids if u not in self.collection]
        if missing:
            raise AnnotateSetupError(
                f"{clusters_path}: {len(missing)} uid(s) are not in {self.collection.images_file} "
                f"(first: {missing[0]!r}); were the signatures computed from another collection?"
            )
        order = dict(zip(table.uids, table.order.tolist(), strict=True))
        self.clusters: dict[int, list[str]] = {
            int(c): sorted(m, key=order.__getitem__) for c, m in table.clusters().items()
        }
        self.known: dict[tuple[str, str], set[str]] = {}
        for c in self.collection.connections:
            if c.a != c.b:
                self.known.setdefault(c.pair, set()).add(c.type)
        self.member_sets = {c: frozenset(m) for c, m in self.clusters.items()}
        self.queue = order_clusters(self.clusters, set(self.known))
        self.position = {c: i for i, c in enumerate(self.queue)}
        self.store = AnnotationStore(self.collection.root)
        self.thumbs = _Thumbs(self.collection)

    # -- state -------------------------------------------------------------------------------------
    def decided_sets(self) -> dict[frozenset[str], dict]:
        """Member sets already decided (undo removes them): a re-run that proposes the same cluster skips it."""
        return {frozenset(r["members"]): r for r in self.store.log.active_decisions()}

    def is_done(self, cid: int, decided: dict[frozenset[str], dict] | None = None) -> bool:
        decided = self.decided_sets() if decided is None else decided
        return self.member_sets[cid] in decided

    def current(self) -> int | None:
        decided = self.decided_sets()
        for cid in self.queue:
            if not self.is_done(cid, decided):
                return cid
        return None

    def progress(self) -> dict:
        decided = self.decided_sets()
        done = sum(1 for c in self.queue if self.is_done(c, decided))
        return {"done": done, "left": len(self.queue) - done, "total": len(self.queue)}

    def cluster_view(self, cid: int) -> dict:
        self.store.refresh()
        members = self.clusters[cid]
        number = {u: i + 1 for i, u in enumerate(members)}
        links = []
        for i, a in enumerate(members):
            for b in members[i + 1 :]:
                for t in sorted(self.known.get(pair(a, b), ())):
                    links.append({"a": number[a], "b": number[b], "type": t, "source": "connections.csv"})
        seen = {(x["a"], x["b"], x["type"]) for x in links}
        for rec in self.store.log.active_decisions():
            for ea, eb, t in rec["edges"]:
                if ea in number and eb in number:
                    na, nb = sorted((number[ea], number[eb]))
                    if (na, nb, t) not in seen:
                        seen.add((na, nb, t))
                        links.append({"a": na, "b": nb, "type": t, "source": "annotated"})
        links.sort(key=lambda x: (x["a"], x["b"], x["type"]))
        done = self.decided_sets().get(self.member_sets[cid])
        return {
            "id": cid,
            "position": self.position[cid] + 1,
            "size": len(members),
            "new_pairs": sum(1 for i, a in enumerate(members) for b in members[i + 1 :] if pair(a, b) not in self.known),
            "members": [
                {"n": number[u], "uid": u, "caption": _caption(self.collection.record(u).meta),
                 "meta": self.collection.record(u).meta}
                for u in members
            ],
            "links": links,
            "decision": None if done is None else {"id": done["id"], "decision": done["decision"]},
        }

    def state(self) -> dict:
        self.store.refresh()
        cur = self.current()
        last = self.store.last_active_decision()
        return {
            "progress": self.progress(),
            "cluster": None if cur is None else self.cluster_view(cur),
            "last_decision": None
            if last is None
            else {"id": last["id"], "cluster": last["cluster"], "decision": last["decision"]},
            "annotator": self.annotator,
            "clusters_sha256": self.clusters_sha256,
            "notes": self.store.notes,
        }

    # -- actions -----------------------------------------------------------------------------------
    def decide(self, cid: int, decision: str, ticked: list[str]) -> dict:
        with self.store.lock:
            if cid not in self.clusters:
                abort(404, description=f"cluster {cid} is not in {self.clusters_path.name}.")
            members = self.clusters[cid]
            self.store.refresh()
            if self.is_done(cid):
                abort(409, description=f"cluster {cid} is already decided; undo that decision first.")
            try:
                edges = implied_edges(decision, members, ticked)
            except DecisionError as e:
                abort(400, description=str(e))
            ticked_in_order = [m for m in members if m in set(ticked)]
            return self.store.decide(
                cluster=cid,
                decision=decision,
                members=members,
                ticked=ticked_in_order,
                edges=edges,
                clusters_file=str(self.clusters_path),
                clusters_sha256=self.clusters_sha256,
                annotator=self.annotator,
            )

    def undo(self, decision_id: str) -> dict:
        with self.store.lock:
            last = self.store.last_active_decision()
            if last is None:
                abort(409, description="there is no decision to undo.")
            if last["id"] != decision_id:
                abort(409, description=f"decision {decision_id!r} is not the last decision; the last is {last['id']!r}.")
            return self.store.undo(decision_id, self.annotator)

    def undo_note(self, decision_id: str) -> str | None:
        """What to tell the expert when the undone decision was already accepted into connections.csv."""
        undone = next((r for r in self.store.log.records if r["id"] == decision_id), None)
        return undo_note(self.collection.root, undone) if undone is not None else None


def _json_body() -> dict:
    if request.mimetype != "application/json":
        abort(415, description="send the body as JSON with Content-Type: application/json.")
    if request.content_length is not None and request.content_length > MAX_BODY:
        abort(413, description=f"request body over {MAX_BODY} bytes.")
    # Read at most one byte past the limit: a chunked body has no Content-Length to check up front.
    raw = request.stream.read(MAX_BODY + 1)
    if len(raw) > MAX_BODY:
        abort(413, description=f"request body over {MAX_BODY} bytes.")
    try:
        body = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):  # RecursionError: absurdly nested arrays
        abort(400, description="the body is not valid UTF-8 JSON.")
    if not isinstance(body, dict):
        abort(400, description="the body must be a JSON object.")
    return body


UNSAFE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
SAME_ORIGIN_FETCH_SITES = frozenset({"same-origin", "none"})  # "none": the user typed or bookmarked it
DEFAULT_PORTS = {"http": 80, "https": 443}


def _origin_key(url: str) -> tuple[str, str, int] | None:
    """(scheme, host, port) of an origin such as `http://127.0.0.1:8765`, or None if it is not one."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return None
    scheme = parts.scheme.lower()
    if scheme not in DEFAULT_PORTS or not parts.hostname:
        return None
    return scheme, parts.hostname.lower(), DEFAULT_PORTS[scheme] if port is None else port


def _foreign_origin(origin: str | None, fetch_site: str | None, scheme: str, host: str) -> str | None:
    """Why a state-changing request comes from another origin than this server's, or None if it does not.

    A browser sends `Origin` with every POST from a script and `Sec-Fetch-Site` with every request;
    `Origin: null` (a sandboxed frame, a file:// page) is foreign too.
    """
    if fetch_site is not None and fetch_site.lower() not in SAME_ORIGIN_FETCH_SITES:
        return f"Sec-Fetch-Site is {fetch_site!r}"
    if origin is None:
        return None
    own = _origin_key(f"{scheme}://{host}")
    theirs = _origin_key(origin)
    if theirs is None or theirs != own:
        return f"Origin {origin!r} is not this server's {scheme}://{host}"
    return None


def _host_guard(bound_host: str):
    """A before-request hook: 400 unless the Host header names the bound address or a loopback name (None:
    no check, for a wildcard address)."""
    if bound_host in WILDCARD_HOSTS:
        return None
    allowed_hosts = set(LOOPBACK_NAMES) | {bound_host.lower()}

    def guard():
        host = (request.host or "").lower()
        name = host.rsplit(":", 1)[0] if not host.endswith("]") else host
        if name not in allowed_hosts:
            abort(400, description=f"unexpected Host header {request.host!r}; open the page via http://{bound_host}.")

    return guard


def _origin_guard() -> None:
    """A before-request hook, whatever the bound address: a page on another origin must never change the log."""
    if request.method not in UNSAFE_METHODS:
        return
    why = _foreign_origin(
        request.headers.get("Origin"), request.headers.get("Sec-Fetch-Site"), request.scheme, request.host
    )
    if why is not None:
        abort(403, description=f"refused a request from another web page ({why}); decisions can only be "
              "made on this server's own page.")


def _http_error(e: HTTPException):
    resp = jsonify({"error": e.description, "status": e.code})
    resp.status_code = e.code or 400
    if e.code == 405 and hasattr(e, "valid_methods") and e.valid_methods:
        resp.headers["Allow"] = ", ".join(e.valid_methods)
    return resp


def _damaged_log(e: AnnotationError):
    """annotations.jsonl was damaged while the server ran (a hand edit): not the page's fault, and no decision
    can be recorded safely until a person repairs the line the message names."""
    resp = jsonify({"error": f"cannot record decisions: {e}", "status": 503})
    resp.status_code = 503
    return resp


def _security_headers(resp):
    resp.headers.setdefault("X-Content-Type-Options", "nosniff")
    resp.headers.setdefault("Referrer-Policy", "no-referrer")
    resp.headers.setdefault(
        "Content-Security-Policy",
        "default-src 'self'; img-src 'self'; style-src 'self'; script-src 'self'; connect-src 'self'",
    )
    return resp


def _decision_request(body: dict, session: AnnotationSession) -> tuple[int, str, list[str]]:
    """(cluster, decision, ticked) of a POST /api/decision body, or a 4xx saying what is wrong."""
    cid, name, ticked = body.get("cluster"), body.get("decision"), body.get("ticked", [])
    sha = body.get("clusters_sha256")
    if sha is not None and sha != session.clusters_sha256:
        # the page was loaded from a server showing another clusters file: its cluster ids mean other images
        abort(409, description="the clusters file changed since this page was loaded; reload the page.")
    if not isinstance(cid, int) or isinstance(cid, bool):
        abort(400, description="'cluster' must be an integer cluster id.")
    if not isinstance(name, str) or name not in DECISIONS:
        abort(400, description=f"'decision' must be one of {', '.join(DECISIONS)}.")
    if not isinstance(ticked, list) or not all(isinstance(u, str) for u in ticked) or len(set(ticked)) != len(ticked):
        abort(400, description="'ticked' must be a list of distinct uid strings.")
    return cid, name, ticked


def _add_routes(app: Flask, session: AnnotationSession) -> None:
    """The routes of the module docstring, each a thin call into `session`."""

    @app.get("/")
    def index():
        return render_template(
            "index.html",
            decisions=[{"name": k, "label": v[0], "key": v[1]} for k, v in DECISIONS.items()],
            collection=session.collection.root.name,
            collection_path=str(session.collection.root),
            clusters_file=session.clusters_path.name,
        )

    @app.get("/api/state")
    def state():
        with session.store.lock:
            return jsonify(session.state())

    @app.get("/api/cluster/<int:cid>")
    def cluster(cid: int):
        if cid not in session.clusters:
            abort(404, description=f"cluster {cid} is not in {session.clusters_path.name}.")
        with session.store.lock:
            return jsonify(session.cluster_view(cid))

    @app.post("/api/decision")
    def decision():
        rec = session.decide(*_decision_request(_json_body(), session))
        with session.store.lock:
            return jsonify({"ok": True, "id": rec["id"], "edges": rec["edges"], "state": session.state()})

    @app.post("/api/undo")
    def undo():
        did = _json_body().get("decision")
        if not isinstance(did, str) or not did:
            abort(400, description="'decision' must be the id of the decision to undo.")
        rec = session.undo(did)
        note = session.undo_note(did)
        with session.store.lock:
            return jsonify({"ok": True, "undone": rec["undoes"], "note": note, "state": session.state()})

    @app.get("/image/<uid:uid>", merge_slashes=False)
    def image(uid: str):
        if uid not in session.collection:
            abort(404, description="no image with this uid in the collection.")
        size_arg = request.args.get("size", "256")
        if not size_arg.isdigit() or int(size_arg) not in THUMB_SIZES:
            abort(400, description=f"size must be one of {THUMB_SIZES}.")
        data = session.thumbs.get(uid, int(size_arg))
        if data is None:
            why = session.thumbs.errors.get(uid, "the image file is missing or unreadable.")
            abort(404, description=f"uid {uid}: {why}")
        resp = app.response_class(data, mimetype="image/jpeg")
        resp.headers["Cache-Control"] = "private, max-age=3600"
        return resp


def create_app(
    collection_dir: str | Path,
    clusters_path: str | Path,
    annotator: str,
    *,
    bound_host: str = "127.0.0.1",
) -> Flask:
    """Build the app. `bound_host` is the address the server listens on; requests must name it (or a
    loopback name) in their Host header. Binding to a wildcard address turns that check off."""
    session = AnnotationSession(collection_dir, clusters_path, annotator)
    app = Flask(__name__)
    # one byte of slack so that `_json_body` sees an oversized chunked body and answers 413 itself
    app.config["MAX_CONTENT_LENGTH"] = MAX_BODY + 1
    app.json.sort_keys = False  # keep the documented field order in API replies
    app.extensions["annotation_session"] = session
    app.url_map.converters["uid"] = UidConverter
    host_guard = _host_guard(bound_host)
    if host_guard is not None:
        app.before_request(host_guard)
    app.before_request(_origin_guard)
    app.register_error_handler(HTTPException, _http_error)
    app.register_error_handler(AnnotationError, _damaged_log)
    app.after_request(_security_headers)
    _add_routes(app, session)
    return app
