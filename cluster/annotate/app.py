"""The flask application of the annotation page (`create_app`).

Routes
- `GET /`                      the page (HTML; the script fetches the state below);
- `GET /api/state`             progress, the current cluster's first page (or null when all are done), the last
                               decision;
- `GET /api/cluster/<id>?page=N` (or `?uid=U`: the page holding U)  one page (`queue.PAGE_SIZE` members, their metadata, the links that touch them)
                               of a cluster or proposal, e.g. opened from the map; a big cluster never comes whole;
- `POST /api/decision`         `{"cluster": id, "decision": name, "ticked": [uid, ...]}`, or `"unticked"` instead
                               of `"ticked"` (every other member is ticked: a "select all" of a big cluster);
- `POST /api/proposal`         `{"uids": [...], "note": "..."}`: a selection made on the map, queued as a new
                               cluster (negative id) and journaled in proposals.jsonl (see `store.ProposalStore`);
- `POST /api/decision` with `"decision": "split"`: `"groups": [[uid, ...], ...]` (the sub-groups) and optionally
                               `"rest_group": true` (the members in no group form one more);
- `POST /api/undo`             `{"decision": id}` (must be the last decision still in force; with `independent`,
                               the last of this annotator's);
- `GET /api/disagreements`     the clusters several annotators decided differently (`cluster.agreement`);
- `GET /api/search`, `GET /api/search/size`, `POST /api/add`: search by image or detail and add a hit to the
                               cluster (`search_routes`; answered only when the app was started with an index);
- `GET /image/<uid>?size=256`  a resized JPEG of one image of the collection;
- `GET /api/missed`, `GET /api/match`: known groups no cluster found, where an image's regions match the other
                               members' (`explain_routes`, which also adds `explain` to each card of a cluster view).

Safety, for a server that only ever needs to talk to the expert's own browser:
- images are looked up by uid in images.csv; no part of the request is ever used as a path;
- requests whose Host header is not a name of the bound address get 400, which defeats DNS-rebinding
  pages that would otherwise reach a loopback server from the expert's browser;
- POST bodies must be JSON (`Content-Type: application/json`, which a cross-site form cannot send
  without a preflight that this server never approves) and at most 64 KiB (4 MiB for decisions and proposals,
  which carry lists of uids);
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
from cluster.agreement import disagreements
from cluster.annotate.explain_routes import Explainer, add_explain_routes
from cluster.annotate.map_routes import add_map_routes
from cluster.annotate.queue import PAGE_SIZE, PageError, ReviewQueue, ticked_from
from cluster.annotate.search_routes import AppSearch, add_search_routes
from cluster.annotate.store import AnnotationStore, ProposalStore
from cluster.annotations import AnnotationError
from cluster.clusters_file import file_sha256, read_clusters
from cluster.review import (
    DECISION_HINTS,
    DECISIONS,
    SPLIT,
    DecisionError,
    decision_label,
    implied_edges,
    split_edges,
    split_groups,
)
from data.collection import Collection, load_collection
from data.image import ImageReadError, is_damaged, jpeg_thumbnail
from data.metadata import meta_values
from data.thumbs import ThumbCache, ThumbCacheError

log = logging.getLogger(__name__)

MAX_BODY = 64 * 1024
# decisions and proposals carry uid lists: ~20,000 uids of up to ~150 bytes (a big cluster's ticks, a lasso)
LARGE_BODY = 4 * 1024 * 1024
THUMB_SIZES = (256, 1024)
THUMB_CACHE_ENTRIES = 2048
LOOPBACK_NAMES = frozenset({"127.0.0.1", "localhost", "::1", "[::1]"})
WILDCARD_HOSTS = frozenset({"0.0.0.0", "::", ""})



class AnnotateSetupError(ValueError):
    """The collection and the clusters file do not fit together (the message says what to do)."""


def _caption(meta: dict[str, str]) -> list[list[str]]:
    """images.csv's title, author, date and place under each thumbnail, whatever the columns' names (data.metadata)."""
    return [[k, v] for k, v in meta_values(meta).items()]


class _Thumbs:
    """Resized JPEGs for the page. Sizes up to the collection's thumbnail cache size (256) are the cache's
    files (`data.thumbs`: the same ones the map and the report show), made into it on first request and
    read from disk afterwards, also by the next session; larger views (1024) are made on request and kept
    in a bounded in-memory LRU, as is everything when the cache folder cannot be written (a read-only disk).

    Decoded by `data.image` like every other stage (EXIF orientation, transparency on white, 16-bit
    scaled; JPEGs at a reduced scale), under the same pixel limit and decode budget, so the server's
    threads cannot decode many huge scans at once. Why an image could not be shown is kept by uid
    (`errors`) for the 404 the page receives.
    """

    def __init__(self, collection: Collection) -> None:
        self.collection = collection
        self.disk = ThumbCache.for_collection(collection)
        self.cache: OrderedDict[tuple[str, int], bytes] = OrderedDict()
        self.errors: dict[str, str] = {}
        self.lock = threading.Lock()

    def _unreadable(self, uid: str, why: str) -> None:
        log.warning("uid %s: %s (the page shows it as unreadable)", uid, why)
        with self.lock:
            self.errors[uid] = why

    def _from_disk(self, uid: str) -> bytes | None:
        """The cached thumbnail (made if missing); None when the cache cannot be written (then: in memory)."""
        data = self.disk.read(uid)
        if data is not None:
            return data
        try:
            data = self.disk.get(uid)
        except ThumbCacheError:
            return None
        notes = self.disk.notes.pop(uid, ())
        if is_damaged(notes):
            log.warning("uid %s (%s): %s", uid, self.disk.source(uid), "; ".join(notes))
        with self.lock:
            self.errors.pop(uid, None)
        return data

    def get(self, uid: str, size: int) -> bytes | None:
        try:
            if size <= self.disk.size:
                data = self._from_disk(uid)
                if data is not None:
                    return data
            return self._in_memory(uid, size)
        except ImageReadError as e:
            self._unreadable(uid, str(e))
            return None

    def _in_memory(self, uid: str, size: int) -> bytes:
        key = (uid, size)
        with self.lock:
            if key in self.cache:
                self.cache.move_to_end(key)
                return self.cache[key]
        path = self.collection.image_path(uid)
        thumb = jpeg_thumbnail(path, size)
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
    """Everything the routes need: the review queue (clusters and proposals, `queue.ReviewQueue`), the logs."""

    def __init__(self, collection_dir: str | Path, clusters_path: str | Path, annotator: str,
                 signatures_path: str | Path | None = None, independent: bool = False) -> None:
        self.collection = load_collection(collection_dir)
        # independent: this annotator judges every cluster, whatever others decided (their verdicts are compared:
        # `cluster.agreement`), and undoes only their own decisions; else a cluster anyone decided is done
        self.independent = independent
        self.clusters_path = Path(clusters_path).resolve()
        table = read_clusters(self.clusters_path)
        self.clusters_sha256 = file_sha256(self.clusters_path)
        self.annotator = annotator
        known = self.collection.uid_index
        missing = [u for u in table.uids if u not in known]
        if missing:
            raise AnnotateSetupError(
                f"{clusters_path}: {len(missing)} uid(s) are not in {self.collection.images_file} "
                f"(first: {missing[0]!r}); were the signatures computed from another collection?"
            )
        self.order = dict(zip(table.uids, table.order.tolist(), strict=True))  # uid -> OPTICS position
        self.clusters: dict[int, list[str]] = {
            int(c): sorted(m, key=self.order.__getitem__) for c, m in table.clusters().items()
        }
        self.known: dict[tuple[str, str], set[str]] = {}
        for c in self.collection.connections:
            if c.a != c.b:
                self.known.setdefault(c.pair, set()).add(c.type)
        self.queue = ReviewQueue(self.clusters, self.known, self.clusters_sha256,
                                 annotator if independent else None)
        self.store = AnnotationStore(self.collection.root)
        self.proposal_store = ProposalStore(self.collection.root)
        self._proposal_notes: list[str] = []
        self._left_out: set[int] = set()  # proposals of the file with fewer than two uids still in the collection
        self._queue_proposals()
        self.thumbs = _Thumbs(self.collection)
        self.explain = Explainer(self, table, signatures_path)  # what the cards explain (explain_routes)

    # -- state -------------------------------------------------------------------------------------
    def _queue_proposals(self) -> None:
        """Queue the proposals of proposals.jsonl not queued yet (made by this server or another one)."""
        self.proposal_store.refresh()
        for rec in self.proposal_store.log.records:
            if rec["cluster"] in self.queue.proposals or rec["cluster"] in self._left_out:
                continue
            gone = [u for u in rec["uids"] if u not in self.collection]
            members = self.proposal_members([u for u in rec["uids"] if u in self.collection])
            if len(members) < 2:
                self._left_out.add(rec["cluster"])
            if gone:
                self._proposal_notes.append(
                    f"{self.proposal_store.path}: proposal {rec['cluster']} names {len(gone)} uid(s) no longer in "
                    f"{self.collection.images_file} (first: {gone[0]!r}); they are left out of it.")
            if len(members) >= 2:
                self.queue.add_proposal(rec, members)

    def notes(self) -> list[str]:
        """What the page and the command line say about the logs (repaired lines, proposals left out...)."""
        return self.store.notes + self.proposal_store.notes + self._proposal_notes

    def proposal_members(self, uids: list[str]) -> list[str]:
        """A proposal's members in OPTICS order (as a cluster's are; images clusters.csv lacks come last, in the
        order given), duplicates dropped."""
        unique = list(dict.fromkeys(uids))
        last = len(self.order)
        return sorted(unique, key=lambda u: self.order.get(u, last))

    def sync(self) -> None:
        """Read what other servers appended, and index the decisions in force."""
        self.store.refresh()
        self._queue_proposals()
        self.queue.sync(self.store.log)

    def progress(self) -> dict:
        self.sync()
        return self.queue.progress()

    def _describe(self, uid: str) -> dict:
        """What a member's card shows; `unreadable` (why) when the image is known not to decode, so that the
        page shows the reason instead of asking for a picture that is not there (one stat per member shown)."""
        meta = self.collection.record(uid).meta
        out = {"caption": _caption(meta), "meta": meta}
        why = self.thumbs.errors.get(uid) or self.thumbs.disk.known_unreadable(uid)
        if why:
            out["unreadable"] = why
        return out

    def cluster_view(self, cid: int, page: int = 1) -> dict:
        self.sync()
        try:
            return self.explain.annotate_view(self.queue.view(cid, page, self._describe))
        except PageError as e:
            abort(404, description=str(e))

    def state(self) -> dict:
        self.sync()
        cur = self.queue.current()
        last = self.store.last_active_decision(self._undoer())
        return {
            "progress": self.queue.progress(),
            "cluster": None if cur is None else self.cluster_view(cur),
            "last_decision": None
            if last is None
            else {"id": last["id"], "cluster": last["cluster"], "decision": last["decision"]},
            "annotator": self.annotator,
            "independent": self.independent,
            "clusters_sha256": self.clusters_sha256,
            "notes": self.notes(),
        }

    # -- actions -----------------------------------------------------------------------------------
    def decide(self, cid: int, decision: str, ticked: list[str] | None, unticked: list[str] | None = None,
               groups: list[list[str]] | None = None, rest_group: bool = False) -> dict:
        """Record a decision on cluster `cid`. A split comes with its `groups` (`cluster.review.split_edges`);
        with `rest_group`, the members in none of them form one more group."""
        with self.store.lock:
            self.sync()
            if cid not in self.queue:
                abort(404, description=f"cluster {cid} is not in {self.clusters_path.name} nor a proposal.")
            members = self.queue.clusters[cid]
            if self.queue.is_done(cid):
                abort(409, description=self._decided_message(cid))
            if unticked is not None:
                stray = set(unticked).difference(members)
                if stray:
                    abort(400, description=f"unticked uids not in this cluster: {', '.join(sorted(stray)[:5])}.")
            ticked = ticked_from(members, ticked, unticked)
            try:
                if decision == SPLIT:
                    groups = split_groups(members, _with_rest(members, groups or [], rest_group))
                    ticked = [u for g in groups for u in g]
                    edges = split_edges(members, groups)
                else:
                    groups = None
                    edges = implied_edges(decision, members, ticked)
            except DecisionError as e:
                abort(400, description=str(e))
            ticked_set = set(ticked)
            return self.store.decide(
                cluster=cid,
                decision=decision,
                members=members,
                ticked=[m for m in members if m in ticked_set],
                edges=edges,
                clusters_file=str(self.clusters_path),
                clusters_sha256=self.clusters_sha256,
                annotator=self.annotator,
                groups=groups,
            )

    def _undoer(self) -> str | None:
        """Whose decisions undo may cancel: this annotator's when independent, else anyone's (the last in the file)."""
        return self.annotator if self.independent else None

    def _decided_message(self, cid: int) -> str:
        done = self.queue.decision_of(cid)
        who = done.get("annotator") if done else None
        if who and who != self.annotator:
            return (f"cluster {cid} is already decided by {who} (\"{decision_label(done['decision'])}\"); undo that decision first, or "
                    "start `cluster annotate` with --independent to give your own verdict on every cluster.")
        return f"cluster {cid} is already decided; undo that decision first."

    def disagreements(self) -> dict:
        """The clusters several annotators decided differently (`cluster.agreement`), for the page's view."""
        self.sync()
        active = self.store.log.active_decisions()
        found = disagreements(active)
        return {"annotators": sorted({r.get("annotator", "?") for r in active}),
                "disagreements": [d.summary() | {"in_queue": d.cluster in self.queue} for d in found]}

    def propose(self, uids: list[str], note: str) -> tuple[int, bool]:
        """Queue a selection made on the map as a proposal: (its cluster id, whether it is new). The same
        selection sent twice (a page reloaded) gives the proposal made the first time."""
        missing = [u for u in uids if u not in self.collection]
        if missing:
            abort(400, description=f"{len(missing)} uid(s) are not in {self.collection.images_file} (first: "
                  f"{', '.join(repr(u) for u in missing[:5])}); was the map made from another collection?")
        members = self.proposal_members(uids)
        if len(members) < 2:
            abort(400, description="a proposal needs at least two distinct uids.")
        with self.store.lock:
            self.sync()
            existing = self.queue.proposal_with(members)
            if existing is not None:
                return existing, False
            rec = self.proposal_store.propose(members, note, self.annotator)
            self.queue.add_proposal(rec, members)
            return rec["cluster"], True

    def undo(self, decision_id: str) -> dict:
        with self.store.lock:
            last = self.store.last_active_decision(self._undoer())
            if last is None:
                abort(409, description="there is no decision to undo.")
            if last["id"] != decision_id:
                abort(409, description=f"decision {decision_id!r} is not the last decision; the last is {last['id']!r}.")
            return self.store.undo(decision_id, self.annotator)

    def undo_note(self, decision_id: str) -> str | None:
        """What to tell the expert when the undone decision was already accepted into connections.csv."""
        undone = next((r for r in self.store.log.records if r["id"] == decision_id), None)
        return undo_note(self.collection.root, undone) if undone is not None else None


def _with_rest(members: list[str], groups: list[list[str]], rest_group: bool) -> list[list[str]]:
    """The groups of a split, plus (with `rest_group`) the members in none of them as one more group."""
    if not rest_group:
        return groups
    assigned = {u for g in groups for u in g}
    rest = [m for m in members if m not in assigned]
    return [*groups, rest] if rest else groups


def _json_body(limit: int = MAX_BODY) -> dict:
    """The JSON object of a POST, at most `limit` bytes (LARGE_BODY for the routes that carry uid lists)."""
    if request.mimetype != "application/json":
        abort(415, description="send the body as JSON with Content-Type: application/json.")
    if request.content_length is not None and request.content_length > limit:
        abort(413, description=f"request body over {limit} bytes.")
    # Read at most one byte past the limit: a chunked body has no Content-Length to check up front.
    raw = request.stream.read(limit + 1)
    if len(raw) > limit:
        abort(413, description=f"request body over {limit} bytes.")
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


def _uid_list(body: dict, key: str) -> list[str] | None:
    """A list of distinct uid strings under `key` (None if absent), or a 400."""
    value = body.get(key)
    if value is None:
        return None
    if not isinstance(value, list) or not all(isinstance(u, str) for u in value) or len(set(value)) != len(value):
        abort(400, description=f"'{key}' must be a list of distinct uid strings.")
    return value


def _decision_request(body: dict, session: AnnotationSession) -> tuple[int, str, list[str] | None, list[str] | None]:
    """(cluster, decision, ticked, unticked) of a POST /api/decision body, or a 4xx saying what is wrong.

    The ticked members come as `ticked`, or as `unticked` (every other member is ticked: what the page sends
    when most of a big cluster is), never both."""
    cid, name = body.get("cluster"), body.get("decision")
    sha = body.get("clusters_sha256")
    if sha is not None and sha != session.clusters_sha256:
        # the page was loaded from a server showing another clusters file: its cluster ids mean other images
        abort(409, description="the clusters file changed since this page was loaded; reload the page.")
    if not isinstance(cid, int) or isinstance(cid, bool):
        abort(400, description="'cluster' must be an integer cluster id.")
    if not isinstance(name, str) or name not in DECISIONS:
        abort(400, description=f"'decision' must be one of {', '.join(DECISIONS)}.")
    ticked, unticked = _uid_list(body, "ticked"), _uid_list(body, "unticked")
    if ticked is not None and unticked is not None:
        abort(400, description="send either 'ticked' or 'unticked', not both.")
    return cid, name, (ticked if unticked is not None or ticked is not None else []), unticked


def _split_request(body: dict) -> dict:
    """A split's sub-groups (`groups`: lists of uids) and whether the members in no group form one more
    (`rest_group`: what the page sends when most of a big cluster is one group), as keyword arguments of
    `decide`; {} when the body has neither. A 400 when they are not lists of uid strings."""
    groups, rest = body.get("groups"), body.get("rest_group", False)
    if groups is None and not rest:
        return {}
    if groups is None:
        groups = []
    if not isinstance(groups, list) or not all(isinstance(g, list) and all(isinstance(u, str) for u in g)
                                               for g in groups):
        abort(400, description="'groups' must be a list of lists of uid strings (the sub-groups of a split).")
    if not isinstance(rest, bool):
        abort(400, description="'rest_group' must be true or false.")
    return {"groups": groups, "rest_group": rest}


def _proposal_request(body: dict) -> tuple[list[str], str]:
    """(uids, note) of a POST /api/proposal body, or a 400."""
    uids = body.get("uids")
    note = body.get("note", "")
    if not isinstance(uids, list) or not uids or not all(isinstance(u, str) for u in uids):
        abort(400, description="'uids' must be a non-empty list of uid strings (the images selected on the map).")
    if not isinstance(note, str) or len(note) > 2000:
        abort(400, description="'note' must be a string of at most 2000 characters.")
    return uids, note


def _page_arg() -> int:
    raw = request.args.get("page", "1")
    if not raw.isdigit() or int(raw) < 1:
        abort(400, description="page must be a whole number >= 1.")
    return int(raw)


def _page_of(members: list[str], uid: str, cid: int) -> int:
    """The page of a cluster that shows `uid` (`?uid=`: an image clicked on the map), or a 404 saying where it is not."""
    try:
        return members.index(uid) // PAGE_SIZE + 1
    except ValueError:
        abort(404, description=f"image {uid!r} is not a member of cluster {cid}.")


def _add_routes(app: Flask, session: AnnotationSession) -> None:
    """The routes of the module docstring, each a thin call into `session`."""

    @app.get("/")
    def index():
        return render_template(
            "index.html",
            decisions=[{"name": k, "label": v[0], "key": v[1], "hint": DECISION_HINTS.get(k, "")}
                       for k, v in DECISIONS.items()],
            collection=session.collection.root.name,
            collection_path=str(session.collection.root),
            clusters_file=session.clusters_path.name,
            search=app.extensions.get("annotation_search") is not None,
        )

    @app.get("/api/state")
    def state():
        with session.store.lock:
            return jsonify(session.state())

    @app.get("/api/cluster/<int(signed=True):cid>")
    def cluster(cid: int):
        page = _page_arg()
        with session.store.lock:
            session.sync()
            if cid not in session.queue:
                abort(404, description=f"cluster {cid} is not in {session.clusters_path.name} nor a proposal.")
            if request.args.get("uid"):  # an image clicked on the map: the page that holds it
                page = _page_of(session.queue.clusters[cid], request.args["uid"], cid)
            return jsonify(session.cluster_view(cid, page))

    @app.post("/api/decision")
    def decision():
        body = _json_body(LARGE_BODY)
        rec = session.decide(*_decision_request(body, session), **_split_request(body))
        with session.store.lock:
            return jsonify({"ok": True, "id": rec["id"], "n_edges": len(rec["edges"]), "state": session.state()})

    @app.post("/api/proposal")
    def proposal():
        cid, new = session.propose(*_proposal_request(_json_body(LARGE_BODY)))
        with session.store.lock:
            resp = jsonify({"ok": True, "cluster": cid, "new": new, "view": session.cluster_view(cid)})
        resp.status_code = 201 if new else 200
        return resp

    @app.get("/api/disagreements")
    def disagreements_route():
        with session.store.lock:
            return jsonify(session.disagreements())

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
    map_dir: str | Path | None = None,
    index_dir: str | Path | None = None,
    index_weights: str | None = None,
    signatures_path: str | Path | None = None,
    independent: bool = False,
) -> Flask:
    """Build the app. `bound_host` is the address the server listens on; requests must name it (or a
    loopback name) in their Host header. Binding to a wildcard address turns that check off. `map_dir`: a
    folder written by `cluster map`, served at /map/ (`map_routes`). `index_dir`: a search index (`python -m
    model index`), opened with the network `index_weights` (default: the one it records) for the page's
    search (`search_routes`); without it the app never imports the network. `signatures_path`: the signatures the
    cards' nearest-member distances come from (default: the file clusters.json names; `explain_routes`)."""
    session = AnnotationSession(collection_dir, clusters_path, annotator, signatures_path, independent)
    search = AppSearch(index_dir, index_weights) if index_dir is not None else None
    app = Flask(__name__)
    # one byte of slack so that `_json_body` sees an oversized chunked body and answers 413 itself
    app.config["MAX_CONTENT_LENGTH"] = LARGE_BODY + 1
    app.json.sort_keys = False  # keep the documented field order in API replies
    app.extensions["annotation_session"] = session
    app.extensions["annotation_search"] = search
    app.url_map.converters["uid"] = UidConverter
    host_guard = _host_guard(bound_host)
    if host_guard is not None:
        app.before_request(host_guard)
    app.before_request(_origin_guard)
    app.register_error_handler(HTTPException, _http_error)
    app.register_error_handler(AnnotationError, _damaged_log)
    app.after_request(_security_headers)
    _add_routes(app, session)
    add_search_routes(app, session, search, lambda: _json_body(LARGE_BODY), _uid_list)
    add_explain_routes(app, session, search)
    if map_dir is not None:
        add_map_routes(app, session.collection, map_dir)
    return app
