"""Several annotators on one collection: each keeps their decisions, disagreements are shown, accept's policies."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from cluster.accept import accept
from cluster.agreement import PolicyError, choose, disagreements
from cluster.annotate.app import create_app
from data.collection import read_connections, write_connections
from tests.cluster.conftest import EXPECTED_QUEUE


def _client(coll, annotator, independent=True):
    return create_app(coll.root, coll.clusters, annotator, independent=independent).test_client()


def _decide(client, cid, decision, ticked, **extra):
    return client.post("/api/decision", json={"cluster": cid, "decision": decision, "ticked": ticked, **extra})


def _lines(coll):
    return [json.loads(x) for x in (coll.root / "annotations.jsonl").read_text().splitlines()]


def _members(client):
    return [m["uid"] for m in client.get("/api/state").get_json()["cluster"]["members"]]


def test_independent_annotators_each_judge_every_cluster_and_keep_their_decisions(annot_collection):
    ada, bob = _client(annot_collection, "ada"), _client(annot_collection, "bob")
    m = _members(ada)
    cid = EXPECTED_QUEUE[0]
    assert _decide(ada, cid, "confirm", m[:3]).status_code == 200
    # bob still has the cluster in his queue and gives his own verdict
    s = bob.get("/api/state").get_json()
    assert s["cluster"]["id"] == cid and s["progress"]["done"] == 0 and s["independent"] is True
    assert [v["annotator"] for v in s["cluster"]["verdicts"]] == ["ada"]
    assert _decide(bob, cid, "confirm", m[1:4]).status_code == 200
    assert _decide(ada, cid, "wrong", []).status_code == 409  # ada decided it already
    # bob's undo cancels only his own decision, never ada's
    sb = bob.get("/api/state").get_json()
    ada_id, bob_id = (r["id"] for r in _lines(annot_collection))
    assert sb["last_decision"]["id"] == bob_id
    assert bob.post("/api/undo", json={"decision": ada_id}).status_code == 409
    assert ada.get("/api/state").get_json()["last_decision"]["id"] == ada_id
    assert bob.post("/api/undo", json={"decision": bob_id}).status_code == 200
    assert _decide(bob, cid, "wrong", []).status_code == 200
    recs = _lines(annot_collection)
    assert [(r.get("annotator"), r["kind"], r.get("decision")) for r in recs] == [
        ("ada", "decision", "confirm"), ("bob", "decision", "confirm"), ("bob", "undo", None),
        ("bob", "decision", "wrong")]
    view = ada.get(f"/api/cluster/{cid}").get_json()
    assert {v["annotator"]: v["decision"] for v in view["verdicts"]} == {"ada": "confirm", "bob": "wrong"}
    assert view["decision"]["annotator"] == "ada"


def test_shared_queue_says_who_decided(annot_collection):
    ada, bob = _client(annot_collection, "ada", False), _client(annot_collection, "bob", False)
    assert _decide(ada, EXPECTED_QUEUE[0], "wrong", []).status_code == 200
    r = _decide(bob, EXPECTED_QUEUE[0], "skip", [])
    assert r.status_code == 409 and "decided by ada (\"Wrong cluster\")" in r.get_json()["error"]
    assert "--independent" in r.get_json()["error"]


def test_disagreements_route_lists_cluster_annotators_and_what_differs(annot_collection):
    ada, bob, cy = (_client(annot_collection, n) for n in ("ada", "bob", "cy"))
    m = _members(ada)
    c0, c1, c2 = EXPECTED_QUEUE[:3]
    assert _decide(ada, c0, "confirm", m[:3]).status_code == 200
    assert _decide(bob, c0, "confirm", [m[0], m[1], m[4]]).status_code == 200  # other ticks
    m1 = annot_collection.members(c1)
    assert _decide(ada, c1, "confirm", m1[:2]).status_code == 200
    assert _decide(bob, c1, "wrong", []).status_code == 200  # another decision
    assert _decide(ada, c2, "wrong", []).status_code == 200
    assert _decide(cy, c2, "wrong", []).status_code == 200  # agreement: not listed
    doc = ada.get("/api/disagreements").get_json()
    assert doc["annotators"] == ["ada", "bob", "cy"]
    got = {d["cluster"]: d for d in doc["disagreements"]}
    assert set(got) == {c0, c1}
    assert [(a["annotator"], a["decision"]) for a in got[c1]["annotators"]] == [("ada", "confirm"), ("bob", "wrong")]
    assert got[c1]["differs"] == ["decisions differ"]
    assert got[c0]["differs"] == ["ticked only by ada: #3", "ticked only by bob: #5"]
    assert got[c0]["in_queue"] is True and got[c0]["size"] == 6


def _two_views(coll):
    """ada and bob judge the first cluster differently, ada alone judges the second (no known links in the way)."""
    write_connections(coll.root / "connections.csv", [])
    ada, bob = _client(coll, "ada"), _client(coll, "bob")
    m = _members(ada)
    c0, c1 = EXPECTED_QUEUE[:2]
    assert _decide(ada, c0, "confirm", [m[0], m[2], m[3]]).status_code == 200
    assert _decide(bob, c0, "confirm", [m[0], m[2], m[5]]).status_code == 200
    m1 = coll.members(c1)
    assert _decide(ada, c1, "similar", m1[1:3]).status_code == 200
    return m, m1


def _pairs(coll, source_prefix="annotation:"):
    return {(c.a, c.b, c.type) for c in read_connections(coll.root / "connections.csv")
            if c.source and c.source.startswith(source_prefix)}


def _p(a, b, t="POSITIVE"):
    return (*sorted((a, b)), t)


def test_accept_default_policy_is_every_decision_and_lists_the_disagreement(annot_collection):
    m, m1 = _two_views(annot_collection)
    res = CliRunner().invoke(accept, ["--collection", str(annot_collection.root)])
    assert res.exit_code == 0, res.output
    got = _pairs(annot_collection)
    assert {_p(m[0], m[2]), _p(m[0], m[3]), _p(m[0], m[5]), _p(m1[1], m1[2], "SIMILAR")} <= got
    assert "disagreements: 1 cluster(s) decided differently by several annotators (policy all):" in res.output
    assert f"cluster {EXPECTED_QUEUE[0]} (6 images): ada: Confirm pattern, bob: Confirm pattern; ticked only by ada: #4; " \
           "ticked only by bob: #6 -> all kept" in res.output


@pytest.mark.parametrize(
    ("policy", "want", "outcome"),
    [
        ("agreed", lambda m: {_p(m[0], m[2])}, "kept the 1 connection(s) all asserted"),
        ("latest", lambda m: {_p(m[0], m[2]), _p(m[0], m[5]), _p(m[2], m[5])}, 'took bob\'s "Confirm pattern", left out ada\'s'),
        ("annotator:ada", lambda m: {_p(m[0], m[2]), _p(m[0], m[3]), _p(m[2], m[3])},
         'took ada\'s "Confirm pattern", left out bob\'s'),
    ],
)
def test_accept_policies(annot_collection, policy, want, outcome):
    m, m1 = _two_views(annot_collection)
    res = CliRunner().invoke(accept, ["--collection", str(annot_collection.root), "--policy", policy])
    assert res.exit_code == 0, res.output
    got = _pairs(annot_collection)
    in_c0 = {p for p in got if p[0] in m and p[1] in m}
    assert in_c0 == want(m)
    assert _p(m1[1], m1[2], "SIMILAR") in got  # the cluster ada judged alone counts under every policy
    assert f"policy {policy}: 1 decision(s) in force left out" in res.output
    assert "-> " + outcome in res.output


def test_accept_refuses_an_unknown_policy_or_annotator_with_one_clear_message(annot_collection):
    _two_views(annot_collection)
    before = (annot_collection.root / "connections.csv").read_bytes()
    for policy, match in (("majority", "unknown --policy 'majority'"),
                          ("annotator:zoe", "no decision in force was made by 'zoe'; the annotators in "
                                            "annotations.jsonl are: ada, bob")):
        res = CliRunner().invoke(accept, ["--collection", str(annot_collection.root), "--policy", policy])
        assert res.exit_code != 0 and match in res.output and "Traceback" not in res.output, res.output
    assert (annot_collection.root / "connections.csv").read_bytes() == before


def test_choose_keeps_additions_and_splits_compare_by_groups():
    def rec(i, who, decision, groups=None, edges=(), members=("a", "b", "c", "d")):
        r = {"kind": "decision", "id": f"d{i}", "annotator": who, "cluster": 5, "decision": decision,
             "members": list(members), "ticked": sorted({u for g in groups or [] for u in g}),
             "edges": [list(e) for e in edges]}
        if groups is not None:
            r["groups"] = groups
        return r

    s1 = rec(1, "ada", "split", [["a", "b"], ["c", "d"]], [("a", "b", "POSITIVE"), ("c", "d", "POSITIVE")])
    s2 = rec(2, "bob", "split", [["a", "b", "c"], ["d"]], [("a", "b", "POSITIVE"), ("a", "c", "POSITIVE")])
    add = rec(3, "bob", "add", None, [("a", "e", "POSITIVE")], members=("e",))
    (d,) = disagreements([s1, s2, add])
    assert d.differs == ["sub-groups differ: ada #1, #2 | #3, #4; bob #1, #2, #3 | #4"]
    ch = choose([s1, s2, add], "agreed")
    assert [(r["id"], r["edges"]) for r in ch.decisions] == [("d2", [["a", "b", "POSITIVE"]]), ("d3", [["a", "e", "POSITIVE"]])]
    with pytest.raises(PolicyError):
        choose([s1], "annotator:")


def test_annotate_command_independent_flag(annot_collection, monkeypatch):
    """`cluster annotate --independent`: the queue counts only this annotator's decisions (ada's decision leaves
    bob 4 clusters to judge); without the flag a cluster ada decided is done for bob too."""
    import cluster.annotate.cli as cli_mod

    class FakeServer:  # no socket: the command prints its summary, then "Ctrl-C"
        server_port = 1

        def serve_forever(self):
            raise KeyboardInterrupt

        def server_close(self):
            pass

    monkeypatch.setattr(cli_mod, "make_server", lambda *a, **k: FakeServer())
    ada = _client(annot_collection, "ada", False)
    assert _decide(ada, EXPECTED_QUEUE[0], "wrong", []).status_code == 200
    args = ["--collection", str(annot_collection.root), "--clusters", str(annot_collection.clusters),
            "--annotator", "bob"]
    res = CliRunner().invoke(cli_mod.annotate, [*args, "--independent"])
    assert res.exit_code == 0, res.output
    assert "4 clusters (0 done, 4 left)" in res.output
    res = CliRunner().invoke(cli_mod.annotate, args)
    assert res.exit_code == 0 and "4 clusters (1 done, 3 left)" in res.output, res.output
