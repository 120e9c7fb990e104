"""Search inside the annotation app (`cluster annotate --index`): "more like this", a detail's search, adding a
hit to the cluster being judged (journaled, kept over a restart, turned into POSITIVE links by `cluster accept`).

The index is built once per session on the cluster tests' collection, with random resnet18 weights at 64 px.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from click.testing import CliRunner

from cluster.__main__ import cli
from cluster.annotate.app import create_app
from cluster.review import RING
from data.collection import load_collection
from tests.cluster.conftest import AnnotCollection

R = 64


@pytest.fixture(scope="session")
def search_index(_annot_template, tmp_path_factory):
    from model.index_build import IndexSettings, build_index
    from model.registry import build

    out = tmp_path_factory.mktemp("annot-index") / "index"
    settings = IndexSettings(resolution=R, batch_size=8, progress=False)
    build_index(_annot_template, build("resnet18", seed=0), out, settings, weights={"weights": "random", "seed": 0})
    return out


@pytest.fixture
def coll(annot_collection):
    return annot_collection


def _client(coll: AnnotCollection, index=None):
    app = create_app(coll.root, coll.clusters, "ada", index_dir=index)
    return app, app.test_client()


def _records(coll):
    path = coll.root / "annotations.jsonl"
    return [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []


def test_more_like_this_ranks_the_collection_with_metadata_and_thumbnails(coll, search_index):
    _, c = _client(coll, search_index)
    uid = coll.members(2)[0]
    r = c.get(f"/api/search?uid={uid}&k=5&cluster=2")
    assert r.status_code == 200, r.get_json()
    doc = r.get_json()
    assert doc["query"]["uid"] == uid and doc["query"]["box"] is None and doc["query"]["cluster"] == 2
    assert len(doc["query"]["size"]) == 2 and min(doc["query"]["size"]) > 0
    hits = doc["results"]
    assert len(hits) == 5 and uid not in {h["uid"] for h in hits}  # the query itself is left out
    assert [h["score"] for h in hits] == sorted((h["score"] for h in hits), reverse=True)
    members = set(coll.members(2))
    meta = load_collection(coll.root).record(hits[0]["uid"]).meta
    for h in hits:
        assert h["in_cluster"] == (h["uid"] in members) and h["added"] is False
        assert h["thumb"].startswith("/image/") and c.get(h["thumb"]).status_code == 200
        w, hh = h["size"]
        assert w > 0 and hh > 0
        if h["box"] is not None:
            x, y, bw, bh = h["box"]
            assert 0 <= x and 0 <= y and x + bw <= w + 1 and y + bh <= hh + 1
    assert hits[0]["title"] == meta["title"] and hits[0]["author"] == meta["author"]


def test_a_detail_box_is_searched_in_the_images_pixels(coll, search_index):
    _, c = _client(coll, search_index)
    uid = coll.uids[3]
    w, h = c.get(f"/api/search/size?uid={uid}").get_json()["size"]
    r = c.get(f"/api/search?uid={uid}&box=4,6,{w // 2},{h // 2}&k=4")
    assert r.status_code == 200, r.get_json()
    q = r.get_json()["query"]
    assert q["box"] == [4, 6, w // 2, h // 2] and q["size"] == [w, h]
    assert len(r.get_json()["results"]) == 4
    # a box reaching outside is cut to the picture, and the page is told
    r = c.get(f"/api/search?uid={uid}&box={w - 20},0,500,500&k=2")
    assert r.status_code == 200 and r.get_json()["query"]["box"] == [w - 20, 0, 20, h]
    assert "reaches outside" in r.get_json()["query"]["notes"][0]


@pytest.mark.parametrize("query, says", [
    ("box=1,2,3", "expected X,Y,W,H"),
    ("box=0,0,0,10", "at least 1 pixel"),
    ("box=9000,9000,20,20", "less than 8 x 8"),
    ("k=0", "k must be"),
])
def test_bad_boxes_and_ks_are_400_with_the_reason(coll, search_index, query, says):
    _, c = _client(coll, search_index)
    r = c.get(f"/api/search?uid={coll.uids[0]}&{query}")
    assert r.status_code == 400 and says in r.get_json()["error"]


def test_unknown_uid_is_400(coll, search_index):
    _, c = _client(coll, search_index)
    for url in ("/api/search?uid=nobody", "/api/search/size?uid=nobody", "/api/search"):
        r = c.get(url)
        assert r.status_code == 400, url
        assert "uid" in r.get_json()["error"]


def test_without_an_index_search_says_how_to_start_with_one(coll):
    _, c = _client(coll)
    for r in (c.get(f"/api/search?uid={coll.uids[0]}"), c.get(f"/api/search/size?uid={coll.uids[0]}"),
              c.post("/api/add", json={"cluster": 2, "uid": coll.uids[9], "query": {"uid": coll.uids[0]}})):
        assert r.status_code == 409 and "--index INDEX" in r.get_json()["error"]
    assert 'data-search="0"' in c.get("/").get_data(as_text=True)


def test_the_app_without_an_index_never_imports_the_network(coll):
    code = ("import sys; from cluster.annotate.app import create_app; "
            f"create_app({str(coll.root)!r}, {str(coll.clusters)!r}, 'ada'); "
            "bad = [m for m in ('jax', 'model.search_service', 'flax') if m in sys.modules]; print(bad)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def _add(c, cid, uid, query_uid, **kw):
    return c.post("/api/add", json={"cluster": cid, "uid": uid, "query": {"uid": query_uid, "box": [1, 2, 30, 40],
                                                                         "score": 0.5}, **kw})


def test_add_to_cluster_is_journaled_kept_over_a_restart_and_accepted_as_positive(coll, search_index):
    members = coll.members(2)
    hit = coll.uids[14]  # noise: in no cluster
    _, c = _client(coll, search_index)
    r = _add(c, 2, hit, members[0])
    assert r.status_code == 200, r.get_json()
    body = r.get_json()
    assert body["n_edges"] == len(members) and [a["uid"] for a in body["view"]["added"]] == [hit]
    (rec,) = _records(coll)
    assert rec["kind"] == "decision" and rec["decision"] == "add" and rec["cluster"] == 2
    assert rec["members"] == [hit] and rec["id"] == body["id"]
    assert rec["query"] == {"uid": members[0], "box": [1, 2, 30, 40], "score": 0.5}
    assert sorted(map(tuple, rec["edges"])) == sorted((*sorted((hit, m)), "POSITIVE") for m in members)
    # an addition is no verdict: the cluster is still to be judged, and the hit cannot be added twice
    state = c.get("/api/state").get_json()
    assert state["cluster"]["id"] == 2 and state["progress"]["done"] == 0
    assert _add(c, 2, hit, members[0]).status_code == 409
    assert _add(c, 2, members[1], members[0]).status_code == 409  # a member already

    # a new server on the same collection (a restart) sees it: marked in search results and in the view
    _, c2 = _client(coll, search_index)
    assert [a["uid"] for a in c2.get("/api/cluster/2").get_json()["added"]] == [hit]
    hits = c2.get(f"/api/search?uid={members[0]}&k=15&cluster=2").get_json()["results"]
    assert next(h for h in hits if h["uid"] == hit)["added"] is True

    res = CliRunner().invoke(cli, ["accept", "--collection", str(coll.root)])
    assert res.exit_code == 0, res.output
    rows = {(c.a, c.b, c.type) for c in load_collection(coll.root).connections}
    assert {(*sorted((hit, m)), "POSITIVE") for m in members} <= rows


def test_added_to_a_confirmed_cluster_joins_the_confirmed_members_only(coll, search_index):
    members = coll.members(2)
    _, c = _client(coll, search_index)
    chosen = members[:3]
    assert c.post("/api/decision", json={"cluster": 2, "decision": "confirm_reject", "ticked": chosen}).status_code == 200
    r = _add(c, 2, coll.uids[15], members[0])
    assert r.status_code == 200, r.get_json()
    rec = _records(coll)[-1]
    assert {m for e in rec["edges"] for m in e[:2]} == {coll.uids[15], *chosen}
    # undone like any decision (it is the last one)
    assert c.post("/api/undo", json={"decision": rec["id"]}).status_code == 200
    assert c.get("/api/cluster/2").get_json()["added"] == []


def test_added_to_a_wrong_cluster_is_refused(coll, search_index):
    _, c = _client(coll, search_index)
    assert c.post("/api/decision", json={"cluster": 0, "decision": "wrong", "ticked": []}).status_code == 200
    r = _add(c, 0, coll.uids[15], coll.uids[6])
    assert r.status_code == 409 and "wrong cluster" in r.get_json()["error"]


@pytest.mark.parametrize("body, says", [
    ({"cluster": 2, "uid": "nobody", "query": {"uid": "x"}}, "'uid'"),
    ({"cluster": "2", "uid": "U14", "query": {"uid": "x"}}, "'cluster'"),
    ({"cluster": 2, "uid": "U14"}, "'query'"),
    ({"cluster": 2, "uid": "U14", "query": {"uid": "x", "box": [1, 2]}}, "query.box"),
    ({"cluster": 99, "uid": "U14", "query": {"uid": "x"}}, "cluster 99"),
])
def test_malformed_additions_say_what_is_wrong(coll, search_index, body, says):
    _, c = _client(coll, search_index)
    body = {**body, "uid": coll.uids[14] if body["uid"] == "U14" else body["uid"]}
    r = c.post("/api/add", json=body)
    assert 400 <= r.status_code < 500 and says in r.get_json()["error"]
    assert _records(coll) == []


def test_addition_edges_are_bounded_by_the_ring():
    from cluster.review import addition_edges

    anchors = [f"m{i:04d}" for i in range(1000)]
    edges = addition_edges("hit", anchors)
    assert len(edges) == 2 * RING and len({tuple(e) for e in edges}) == 2 * RING
    picked = sorted(m for e in edges for m in e[:2] if m != "hit")
    assert picked[0] == "m0000" and picked[-1] >= "m0900"  # spread over the whole group, not its first members


def test_cli_index_option_refuses_a_folder_that_is_no_index(coll, tmp_path):
    (tmp_path / "empty").mkdir()
    res = CliRunner().invoke(cli, ["annotate", "--collection", str(coll.root), "--clusters", str(coll.clusters),
                                   "--index", str(tmp_path / "empty"), "--port", "0"])
    assert res.exit_code != 0 and "not a search index" in res.output and "Traceback" not in res.output



def test_sigkill_loses_no_acknowledged_addition(coll, search_index):
    """A real `cluster annotate --index` process, killed with SIGKILL while additions stream in: every addition
    it acknowledged is in annotations.jsonl, and a new server lists them."""
    import os
    import re
    import subprocess as sp
    import threading
    import time

    from cluster.annotations import read_log
    from tests.cluster.test_annotate_cli import REPO, kill_during, post

    proc = sp.Popen([sys.executable, "-m", "cluster", "annotate", "--collection", str(coll.root), "--clusters",
                     str(coll.clusters), "--port", "0", "--index", str(search_index)],
                    cwd=REPO, stdout=sp.PIPE, stderr=sp.STDOUT, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    seen, base = [], None
    deadline = time.monotonic() + 90
    while base is None and time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        seen.append(line)
        m = re.search(r"Open (http://127\.0\.0\.1:\d+)/", line)
        base = m and m.group(1)
    if base is None:
        proc.kill()
        raise AssertionError("server did not start:\n" + "".join(seen))
    threading.Thread(target=proc.stdout.read, daemon=True).start()
    assert any("Search: 16 images indexed" in s for s in seen)
    jobs = [(cid, u) for cid in (2, 0, 3, 1) for u in coll.uids if u not in coll.members(cid)]
    acked: list[str] = []
    stop = threading.Event()

    def hammer():
        for cid, u in jobs:
            if stop.is_set():
                return
            try:
                status, body = post(base, "/api/add", {"cluster": cid, "uid": u, "query": {"uid": coll.uids[0]}})
            except OSError:
                return
            if status == 200:
                acked.append(body["id"])

    kill_during(proc, hammer, stop, lambda: len(acked) >= 5)
    assert len(acked) >= 5
    ids = {r["id"] for r in read_log(coll.root / "annotations.jsonl").records}
    assert set(acked) <= ids
    _, c = _client(coll)
    listed = {a["id"] for cid in (2, 0, 3, 1) for a in c.get(f"/api/cluster/{cid}").get_json()["added"]}
    assert set(acked) <= listed


def test_moved_weights_are_said_at_start_and_errors_name_the_apps_options(coll, search_index, tmp_path):
    import shutil

    copy = tmp_path / "index"
    shutil.copytree(search_index, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["weights"] = {"weights": str(tmp_path / "moved-weights")}
    (copy / "manifest.json").write_text(json.dumps(manifest))
    app, c = _client(coll, copy)
    assert "--index-weights" in app.extensions["annotation_search"].weights_problem()
    uid = coll.uids[3]
    r = c.get(f"/api/search?uid={uid}&box=0,0,20,20")
    assert r.status_code == 400
    text = r.get_json()["error"] if "error" in (r.get_json() or {}) else r.get_data(as_text=True)
    assert "--index-weights" in text and "--weights " not in text.replace("--index-weights", "")
    assert c.get(f"/api/search?uid={uid}").status_code == 200  # a whole-image search needs no network
    app, _ = _client(coll, search_index)
    assert app.extensions["annotation_search"].weights_problem() is None
