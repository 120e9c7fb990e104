"""The annotation app through flask's test client: decisions, undo, resume, images, malformed requests."""

from __future__ import annotations

import io
import json
import os
from itertools import combinations

import pytest
from PIL import Image

from cluster.annotate.app import create_app
from cluster.clusters_file import file_sha256
from tests.cluster.conftest import EXPECTED_QUEUE


def _app(coll, annotator="ada"):
    app = create_app(coll.root, coll.clusters, annotator)
    return app, app.test_client()


def _lines(coll):
    path = coll.root / "annotations.jsonl"
    return [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []


def _decide(client, cid, decision, ticked):
    return client.post("/api/decision", json={"cluster": cid, "decision": decision, "ticked": ticked})


def test_state_shows_largest_new_first_with_known_links(annot_collection):
    _, c = _app(annot_collection)
    s = c.get("/api/state").get_json()
    assert s["progress"] == {"done": 0, "left": 4, "total": 4}
    cl = s["cluster"]
    assert cl["id"] == EXPECTED_QUEUE[0] and cl["size"] == 6 and cl["new_pairs"] == 15 - 3
    assert sorted(m["uid"] for m in cl["members"]) == sorted(annot_collection.members(2))
    assert [m["n"] for m in cl["members"]] == [1, 2, 3, 4, 5, 6]
    caption = dict(map(tuple, cl["members"][0]["caption"]))
    assert {"title", "author", "date"} <= set(caption)
    number = {m["uid"]: m["n"] for m in cl["members"]}
    u = annot_collection.uids
    want = {
        (*sorted((number[u[0]], number[u[1]])), "POSITIVE"),
        (*sorted((number[u[2]], number[u[3]])), "DUPLICATE"),
        (*sorted((number[u[4]], number[u[5]])), "NEGATIVE"),
    }
    assert {(x["a"], x["b"], x["type"]) for x in cl["links"]} == want
    assert all(x["source"] == "connections.csv" for x in cl["links"])
    assert s["last_decision"] is None


def test_confirm_appends_decision_with_edges_and_moves_on(annot_collection):
    app, c = _app(annot_collection)
    members = c.get("/api/state").get_json()["cluster"]["members"]
    ticked = [members[0]["uid"], members[2]["uid"], members[3]["uid"]]
    r = _decide(c, 2, "confirm", ticked)
    assert r.status_code == 200, r.get_json()
    body = r.get_json()
    recs = _lines(annot_collection)
    assert len(recs) == 1
    rec = recs[0]
    assert rec["kind"] == "decision" and rec["id"] == body["id"]
    assert rec["cluster"] == 2 and rec["decision"] == "confirm" and rec["annotator"] == "ada"
    assert rec["ticked"] == ticked and sorted(rec["members"]) == sorted(annot_collection.members(2))
    assert rec["clusters_sha256"] == file_sha256(annot_collection.clusters)
    assert rec["clusters_file"].endswith("clusters.csv") and rec["time"].endswith("Z")
    assert sorted(map(tuple, rec["edges"])) == sorted((*sorted(p), "POSITIVE") for p in combinations(ticked, 2))
    s = body["state"]
    assert s["cluster"]["id"] == EXPECTED_QUEUE[1]
    assert s["progress"] == {"done": 1, "left": 3, "total": 4}
    assert s["last_decision"]["id"] == rec["id"]
    # the decided cluster can still be viewed, with its pending edges and decision
    view = c.get("/api/cluster/2").get_json()
    assert view["decision"]["decision"] == "confirm"
    assert sum(1 for x in view["links"] if x["source"] == "annotated") == 3


@pytest.mark.parametrize(
    ("decision", "n_ticked", "expected"),
    [
        ("confirm_reject", 2, {"POSITIVE": 1, "NEGATIVE": 2 * 4}),
        ("similar", 3, {"SIMILAR": 3}),
        ("duplicate", 2, {"DUPLICATE": 1}),
        ("wrong", 0, {"NEGATIVE": 2 * 6 - 3}),  # issue 16: each member with its next two in member order
        ("skip", 1, {}),
    ],
)
def test_each_decision_stores_its_edges(annot_collection, decision, n_ticked, expected):
    _, c = _app(annot_collection)
    members = [m["uid"] for m in c.get("/api/state").get_json()["cluster"]["members"]]
    ticked = members[:n_ticked]
    r = _decide(c, 2, decision, ticked)
    assert r.status_code == 200, r.get_json()
    rec = _lines(annot_collection)[0]
    counts: dict[str, int] = {}
    for a, b, t in rec["edges"]:
        counts[t] = counts.get(t, 0) + 1
        assert a < b
        if decision == "wrong":
            assert abs(members.index(a) - members.index(b)) <= 2
        elif t == "NEGATIVE":
            assert (a in ticked) != (b in ticked)
        else:
            assert a in ticked and b in ticked
    assert counts == expected
    assert rec["decision"] == decision


def test_undo_brings_the_cluster_back_and_resume_after_restart(annot_collection):
    _, c = _app(annot_collection)
    m = [x["uid"] for x in c.get("/api/state").get_json()["cluster"]["members"]]
    first = _decide(c, 2, "confirm", m[:2]).get_json()["id"]
    second = _decide(c, 0, "skip", []).get_json()["id"]
    # only the last decision in force can be undone
    assert c.post("/api/undo", json={"decision": first}).status_code == 409
    r = c.post("/api/undo", json={"decision": second})
    assert r.status_code == 200
    s = r.get_json()["state"]
    assert s["cluster"]["id"] == 0 and s["progress"]["done"] == 1 and s["last_decision"]["id"] == first
    recs = _lines(annot_collection)
    assert [x["kind"] for x in recs] == ["decision", "decision", "undo"] and recs[2]["undoes"] == second
    # a fresh server on the same folder resumes at the same place
    _, c2 = _app(annot_collection, annotator="bob")
    s2 = c2.get("/api/state").get_json()
    assert s2["cluster"]["id"] == 0 and s2["progress"] == s["progress"] and s2["last_decision"]["id"] == first
    assert c2.post("/api/undo", json={"decision": first}).status_code == 200
    assert c2.post("/api/undo", json={"decision": first}).status_code == 409  # nothing left to undo
    s3 = c2.get("/api/state").get_json()
    assert s3["cluster"]["id"] == 2 and s3["progress"]["done"] == 0 and s3["last_decision"] is None


def test_finishing_every_cluster(annot_collection):
    _, c = _app(annot_collection)
    for cid in EXPECTED_QUEUE:
        assert c.get("/api/state").get_json()["cluster"]["id"] == cid
        assert _decide(c, cid, "wrong", []).status_code == 200
    s = c.get("/api/state").get_json()
    assert s["cluster"] is None and s["progress"] == {"done": 4, "left": 0, "total": 4}
    assert _decide(c, EXPECTED_QUEUE[0], "skip", []).status_code == 409  # already decided


def test_decision_errors_are_4xx_and_write_nothing(annot_collection):
    app, c = _app(annot_collection)
    members = annot_collection.members(2)
    other = annot_collection.members(0)[0]
    cases = [
        (_decide(c, 2, "confirm", members[:1]), 400),  # needs two ticked
        (_decide(c, 2, "confirm_reject", members), 400),  # nothing left to reject
        (_decide(c, 2, "confirm", [members[0], other]), 400),  # uid of another cluster
        (_decide(c, 2, "confirm", [members[0], members[0]]), 400),  # repeated uid
        (_decide(c, 2, "bless", members[:2]), 400),
        (_decide(c, 99, "confirm", members[:2]), 404),
        (_decide(c, "2", "confirm", members[:2]), 400),
        (_decide(c, True, "confirm", members[:2]), 400),
        (c.post("/api/decision", json={"cluster": 2, "decision": "confirm", "ticked": "abc"}), 400),
        (c.post("/api/decision", json=[1, 2]), 400),
        (c.post("/api/decision", data="{not json", content_type="application/json"), 400),
        (c.post("/api/decision", data=b"\xff\xfe", content_type="application/json"), 400),
        (c.post("/api/decision", data="cluster=2", content_type="application/x-www-form-urlencoded"), 415),
        # decisions carry uid lists (a big cluster's ticks): 4 MiB; other POSTs 64 KiB
        (c.post("/api/decision", data="x" * (4 * 1024 * 1024 + 1), content_type="application/json"), 413),
        (c.post("/api/undo", data="x" * (70 * 1024), content_type="application/json"), 413),
        (c.post("/api/decision", data="[" * 60000 + "]" * 60000, content_type="application/json"), 400),
        (c.post("/api/decision", data="[" * 30000 + "]" * 30000, content_type="application/json"), 400),
        (c.get("/api/decision"), 405),
        (c.delete("/api/state"), 405),
        (c.post("/api/decision", json={"cluster": 2, "decision": "wrong", "clusters_sha256": "f" * 64}), 409),
        (c.post("/api/undo", json={}), 400),
        (c.post("/api/undo", json={"decision": "nope"}), 409),
        (c.get("/api/cluster/99"), 404),
        (c.get("/api/cluster/-1"), 404),
        (c.get("/no/such/page"), 404),
    ]
    for resp, code in cases:
        assert resp.status_code == code, (resp.request.path, resp.get_json())
        assert "error" in resp.get_json()
    assert not (annot_collection.root / "annotations.jsonl").exists()


def test_images_are_served_by_uid_only(annot_collection):
    _, c = _app(annot_collection)
    uid = annot_collection.uids[0]
    r = c.get(f"/image/{uid}")
    assert r.status_code == 200 and r.mimetype == "image/jpeg"
    with Image.open(io.BytesIO(r.data)) as im:
        assert max(im.size) <= 256
    assert c.get(f"/image/{uid}?size=1024").status_code == 200
    for bad in ("17", "abc", "-256", "256.0"):
        assert c.get(f"/image/{uid}?size={bad}").status_code == 400
    traversal = [
        "/image/../../etc/passwd",
        "/image/..%2F..%2Fetc%2Fpasswd",
        "/image/%2e%2e%2f%2e%2e%2fetc%2fpasswd",
        "/image/%252e%252e%252fetc%252fpasswd",
        "/image/images%2F" + uid + ".jpg",
        "/image/..",
        "/image/%2e%2e",
        "/image/" + uid + "%00",
        "/image/nosuchuid",
        "/image/clusters.csv",
        "/static/../images.csv",
        "/static/%2e%2e/app.py",
        "/static/..%2fapp.py",
    ]
    for path in traversal:
        r = c.get(path)
        assert 400 <= r.status_code < 500, path
        assert b"root:" not in r.data and b"uid,path" not in r.data and b"import" not in r.data, path
    assert c.get("/static/annotate.js").status_code == 200


def test_unreadable_image_is_404_not_a_crash(annot_collection):
    uid = annot_collection.uids[3]
    (annot_collection.root / "images" / f"{uid}.jpg").write_bytes(b"not a jpeg")
    _, c = _app(annot_collection)
    r = c.get(f"/image/{uid}")
    assert r.status_code == 404 and "unreadable" in r.get_json()["error"]
    (annot_collection.root / "images" / f"{uid}.jpg").unlink()
    assert c.get(f"/image/{uid}?size=1024").status_code == 404


def test_foreign_host_header_is_rejected(annot_collection):
    _, c = _app(annot_collection)
    assert c.get("/api/state", headers={"Host": "attacker.example:8765"}).status_code == 400
    assert c.get("/api/state", headers={"Host": "127.0.0.1:8765"}).status_code == 200
    assert c.get("/api/state", headers={"Host": "localhost"}).status_code == 200
    app = create_app(annot_collection.root, annot_collection.clusters, "ada", bound_host="0.0.0.0")
    assert app.test_client().get("/api/state", headers={"Host": "box.lan:8765"}).status_code == 200


def test_page_lists_every_decision_with_its_key(annot_collection):
    _, c = _app(annot_collection)
    html = c.get("/").get_data(as_text=True)
    for name, key in [("confirm", "c"), ("confirm_reject", "r"), ("similar", "s"), ("duplicate", "d"),
                      ("wrong", "w"), ("skip", "n")]:
        assert f'data-decision="{name}" data-key="{key}"' in html
    assert "<kbd>u</kbd> Undo" in html
    assert "http" not in html.replace("http-equiv", "")  # nothing loaded from the network
    # issue 16: what "wrong cluster" records is said on its button
    assert 'title="Wrong cluster: these images do not share one pattern.' in html
    assert "tick them and use confirm-and-reject instead" in html


def test_torn_last_line_is_cut_off_and_reported(annot_collection):
    _, c = _app(annot_collection)
    m = annot_collection.members(2)
    assert _decide(c, 2, "confirm", m[:2]).status_code == 200
    log = annot_collection.root / "annotations.jsonl"
    good = log.read_bytes()
    with open(log, "ab") as fh:
        fh.write(b'{"kind":"decision","id":"torn","clu')
    _, c2 = _app(annot_collection)
    s = c2.get("/api/state").get_json()
    assert s["progress"]["done"] == 1 and s["cluster"]["id"] == EXPECTED_QUEUE[1]
    assert any("incomplete last line" in n for n in s["notes"])
    assert log.read_bytes() == good  # the torn bytes moved to a side file
    sides = list(annot_collection.root.glob("annotations.jsonl.torn-*"))
    assert len(sides) == 1 and sides[0].read_bytes().startswith(b'{"kind":"decision","id":"torn"')
    assert _decide(c2, 0, "skip", []).status_code == 200
    assert len(_lines(annot_collection)) == 2


def test_clusters_with_unknown_uids_are_refused(annot_collection):
    from cluster.annotate.app import AnnotateSetupError

    text = annot_collection.clusters.read_text().replace(annot_collection.uids[5], "stranger")
    annot_collection.clusters.write_text(text)
    with pytest.raises(AnnotateSetupError, match="stranger"):
        create_app(annot_collection.root, annot_collection.clusters, "ada")



def test_two_servers_on_one_collection_see_each_other(annot_collection):
    _, a = _app(annot_collection, annotator="ada")
    _, b = _app(annot_collection, annotator="bob")
    m = annot_collection.members(2)
    assert _decide(a, 2, "confirm", m[:2]).status_code == 200
    s = b.get("/api/state").get_json()
    assert s["cluster"]["id"] == EXPECTED_QUEUE[1] and s["progress"]["done"] == 1
    assert _decide(b, 2, "skip", []).status_code == 409  # already decided by the other server
    rb = _decide(b, EXPECTED_QUEUE[1], "wrong", [])
    assert rb.status_code == 200
    # ada's page: the last decision is now bob's, so ada's stale undo is refused
    first = _lines(annot_collection)[0]["id"]
    assert a.post("/api/undo", json={"decision": first}).status_code == 409
    assert a.get("/api/state").get_json()["progress"]["done"] == 2
    assert [r["annotator"] for r in _lines(annot_collection)] == ["ada", "bob"]


def test_log_damaged_while_running_is_a_clear_503(annot_collection):
    _, c = _app(annot_collection)
    assert _decide(c, 2, "wrong", []).status_code == 200
    with open(annot_collection.root / "annotations.jsonl", "a") as fh:
        fh.write("{hand edit\n")
    r = _decide(c, EXPECTED_QUEUE[1], "wrong", [])
    assert r.status_code == 503 and "annotations.jsonl:2" in r.get_json()["error"]
    assert c.get("/api/state").status_code == 503


@pytest.mark.parametrize(
    "tail",
    [
        b'{"kind":"decision","id":"torn","clu',  # a second server crashed mid-write
        b'{"kind":"undo","id":"t2","undoes":"no\xc3',  # ... inside a multi-byte character
        b"\r",  # a stray byte from an editor
    ],
)
def test_torn_line_appearing_while_running_is_cut_before_the_next_decision(annot_collection, tail):
    """Issue 11, defect 8: the next decision used to be glued onto the torn bytes; then 503 for good."""
    from click.testing import CliRunner

    from cluster.__main__ import cli
    from cluster.annotations import read_log

    _, c = _app(annot_collection)
    m = annot_collection.members(2)
    acked = [_decide(c, 2, "confirm", m[1:3]).get_json()["id"]]  # a new POSITIVE pair
    log = annot_collection.root / "annotations.jsonl"
    with open(log, "ab") as fh:  # behind the server's back
        fh.write(tail)
    r = _decide(c, EXPECTED_QUEUE[1], "wrong", [])
    assert r.status_code == 200, r.get_json()
    acked.append(r.get_json()["id"])
    assert any("incomplete last line" in n and ".torn-" in n for n in r.get_json()["state"]["notes"])
    parsed = read_log(log)
    assert not parsed.torn_tail and [x["id"] for x in parsed.records] == acked
    sides = list(annot_collection.root.glob("annotations.jsonl.torn-*"))
    assert len(sides) == 1 and sides[0].read_bytes() == tail
    r = _decide(c, EXPECTED_QUEUE[2], "skip", [])
    assert r.status_code == 200
    acked.append(r.get_json()["id"])
    res = CliRunner().invoke(cli, ["accept", "--collection", str(annot_collection.root)])
    assert res.exit_code == 0, res.output
    # issue 16: "wrong" on cluster 0 (3 members) asserts NEGATIVE between neighbours, bar its known POSITIVE pair
    assert "added: 2 NEGATIVE, 1 POSITIVE" in res.output
    _, c2 = _app(annot_collection)  # a restarted server resumes where the first one was
    s = c2.get("/api/state").get_json()
    assert s["progress"]["done"] == 3 and s["last_decision"]["id"] == acked[-1]
    assert _decide(c2, EXPECTED_QUEUE[3], "wrong", []).status_code == 200
    assert [x["id"] for x in _lines(annot_collection)][:3] == acked


def test_acknowledged_decision_cut_off_the_log_while_running_is_written_back(annot_collection):
    """Issue 11 trial: `truncate -s -60 annotations.jsonl` while the server ran, then a decision: the server moved
    the cut line aside as "never acknowledged" and the acknowledged decision was lost."""
    _, c = _app(annot_collection)
    first = _decide(c, 2, "wrong", []).get_json()["id"]
    second = _decide(c, EXPECTED_QUEUE[1], "confirm", annot_collection.members(EXPECTED_QUEUE[1])[:2]).get_json()["id"]
    log = annot_collection.root / "annotations.jsonl"
    whole = log.read_bytes()
    os.truncate(log, len(whole) - 60)
    s = c.get("/api/state").get_json()  # the page never shows the cut decision's cluster as undecided ...
    assert s["progress"]["done"] == 2 and s["last_decision"]["id"] == second
    assert _decide(c, EXPECTED_QUEUE[1], "wrong", []).status_code == 409  # ... so it is not decided twice
    r = _decide(c, EXPECTED_QUEUE[2], "skip", [])
    assert r.status_code == 200, r.get_json()
    assert [x["id"] for x in _lines(annot_collection)] == [first, second, r.get_json()["id"]]
    assert log.read_bytes().startswith(whole)  # the cut line is whole again, byte for byte
    notes = r.get_json()["state"]["notes"]
    assert any("written back" in n and second in n and "acknowledged" in n for n in notes), notes
    assert not any("never acknowledged" in n for n in notes)
    assert not list(annot_collection.root.glob("annotations.jsonl.torn-*"))


def test_cut_log_read_without_the_decision_in_memory_says_it_may_be_lost(annot_collection):
    """Nobody holds the cut decision (accept, a restarted server): the message says what may have happened and
    what to do, never that the line was "never acknowledged"."""
    from click.testing import CliRunner

    from cluster.__main__ import cli

    _, c = _app(annot_collection)
    assert _decide(c, 2, "wrong", []).status_code == 200
    assert _decide(c, EXPECTED_QUEUE[1], "wrong", []).status_code == 200
    log = annot_collection.root / "annotations.jsonl"
    os.truncate(log, log.stat().st_size - 60)
    res = CliRunner().invoke(cli, ["accept", "--collection", str(annot_collection.root)])
    assert res.exit_code == 0, res.output
    notes = _app(annot_collection)[1].get("/api/state").get_json()["notes"]  # a restarted server
    for text in (res.output, "\n".join(notes)):
        assert "interrupted, or the end of a file that was cut" in text, text
        assert f"a decision on cluster {EXPECTED_QUEUE[1]}" in text and "make it again" in text
        assert "acknowledged" not in text
    assert len(list(annot_collection.root.glob("annotations.jsonl.torn-*"))) == 1


def test_last_record_saved_without_newline_while_running_is_kept(annot_collection):
    """An editor saved annotations.jsonl without its final newline: the acknowledged decision stays."""
    _, c = _app(annot_collection)
    first = _decide(c, 2, "wrong", []).get_json()["id"]
    log = annot_collection.root / "annotations.jsonl"
    log.write_bytes(log.read_bytes().rstrip(b"\n"))
    r = _decide(c, EXPECTED_QUEUE[1], "wrong", [])
    assert r.status_code == 200, r.get_json()
    assert [x["id"] for x in _lines(annot_collection)] == [first, r.get_json()["id"]]
    assert any("no final newline" in n for n in r.get_json()["state"]["notes"])
    assert not list(annot_collection.root.glob("annotations.jsonl.torn-*"))


def test_log_replaced_or_shrunk_while_running_is_read_again(annot_collection):
    """The server notices a log restored from a backup or cut by hand, even at the same size."""
    _, c = _app(annot_collection)
    first = _decide(c, 2, "wrong", []).get_json()["id"]
    second = _decide(c, EXPECTED_QUEUE[1], "wrong", []).get_json()["id"]
    log = annot_collection.root / "annotations.jsonl"
    # same length, other content: the second record under another id, written as a new file (a restore)
    tmp = log.with_name("restore.tmp")
    tmp.write_bytes(log.read_bytes().replace(second.encode(), b"f" * len(second)))
    tmp.replace(log)
    s = c.get("/api/state").get_json()
    assert s["progress"]["done"] == 2 and s["last_decision"]["id"] == "f" * len(second)
    assert c.post("/api/undo", json={"decision": second}).status_code == 409
    assert c.post("/api/undo", json={"decision": "f" * len(second)}).status_code == 200
    assert [x["kind"] for x in _lines(annot_collection)] == ["decision", "decision", "undo"]
    assert _lines(annot_collection)[0]["id"] == first
    log.write_bytes(b"")  # shrunk to nothing by hand
    assert c.get("/api/state").get_json()["progress"]["done"] == 0


def test_posts_from_another_origin_are_refused(annot_collection):
    """Issue 11, defect 10: another page in the expert's browser (another port included) must not decide."""
    _, c = _app(annot_collection)
    own = {"Host": "127.0.0.1:8765"}
    body = {"cluster": 2, "decision": "wrong", "ticked": []}
    foreign = [
        {"Origin": "http://evil.example"},
        {"Origin": "http://127.0.0.1:3000"},  # another local web app
        {"Origin": "https://127.0.0.1:8765"},
        {"Origin": "http://localhost:8765"},  # another origin, even if it is the same machine
        {"Origin": "null"},  # a sandboxed frame or a file:// page
        {"Origin": "http://127.0.0.1:8765", "Sec-Fetch-Site": "same-site"},
        {"Sec-Fetch-Site": "cross-site"},
    ]
    for extra in foreign:
        for path, payload in (("/api/decision", body), ("/api/undo", {"decision": "x"})):
            r = c.post(path, json=payload, headers={**own, **extra})
            assert r.status_code == 403, (extra, r.get_json())
            assert "another web page" in r.get_json()["error"]
    assert not (annot_collection.root / "annotations.jsonl").exists()
    # GETs stay readable (the page's own images and state need no Origin)
    assert c.get("/api/state", headers={**own, "Origin": "http://evil.example"}).status_code == 200
    # the page itself (same origin), curl (no Origin), and the default port spelled out
    same = {**own, "Origin": "http://127.0.0.1:8765", "Sec-Fetch-Site": "same-origin"}
    assert c.post("/api/decision", json=body, headers=same).status_code == 200
    assert _decide(c, EXPECTED_QUEUE[1], "wrong", []).status_code == 200
    r = c.post("/api/decision", json={**body, "cluster": EXPECTED_QUEUE[2]},
               headers={"Host": "localhost", "Origin": "http://LOCALHOST:80"})
    assert r.status_code == 200, r.get_json()
    assert len(_lines(annot_collection)) == 3


def test_a_member_known_not_to_decode_says_why_in_the_cluster_view(annot_collection):
    """Trial of issue 14: the page asked for a picture of a missing file (a 404 in the console) and showed
    only "image unreadable"; the view now carries the reason, found without decoding."""
    gone, broken, fine = annot_collection.members(2)[:3]
    (annot_collection.root / "images" / f"{gone}.jpg").unlink()
    (annot_collection.root / "images" / f"{broken}.jpg").write_bytes(b"not a jpeg")
    c = create_app(annot_collection.root, annot_collection.clusters, "ada").test_client()
    assert c.get(f"/image/{broken}?size=256").status_code == 404  # found unreadable once...
    members = {m["uid"]: m for m in c.get("/api/cluster/2").get_json()["members"]}
    assert "image file missing" in members[gone]["unreadable"]
    assert "not a readable image" in members[broken]["unreadable"]  # ...then said on the card
    assert "unreadable" not in members[fine]
