"""A cluster split into sub-groups in one decision: its edges (bounded), the route, the record, undo, accept."""

from __future__ import annotations

import json
import re
from itertools import combinations

import pytest
from click.testing import CliRunner

from cluster.accept import accept
from cluster.annotate.app import create_app
from cluster.annotations import read_log
from cluster.review import (
    DECISIONS,
    NEGATIVES_PER_REJECTED,
    DecisionError,
    addition_anchors,
    group_pairs,
    implied_edges,
    split_edges,
    split_negative_pairs,
)
from data.collection import read_connections
from tests.cluster.conftest import EXPECTED_QUEUE


def _lines(coll):
    return [json.loads(x) for x in (coll.root / "annotations.jsonl").read_text().splitlines()]


def test_split_is_a_decision_with_its_own_key():
    assert "split" in DECISIONS
    keys = [k for _, k in DECISIONS.values()]
    assert len(keys) == len(set(keys)) and DECISIONS["split"][1] not in "au0123456789jk"
    with pytest.raises(DecisionError, match="sub-groups"):
        implied_edges("split", ["u1", "u2"], ["u1", "u2"])


def test_small_split_edges_every_pair_inside_and_across():
    m = [f"u{i}" for i in range(7)]
    e = split_edges(m, [["u2", "u0", "u1"], ["u4", "u5"], ["u6"]])  # u3 in no group: undecided
    pos = {tuple(x[:2]) for x in e if x[2] == "POSITIVE"}
    neg = {tuple(x[:2]) for x in e if x[2] == "NEGATIVE"}
    assert pos == {("u0", "u1"), ("u0", "u2"), ("u1", "u2"), ("u4", "u5")}
    groups = [["u0", "u1", "u2"], ["u4", "u5"], ["u6"]]
    assert neg == {tuple(sorted((a, b))) for g, h in combinations(groups, 2) for a in g for b in h}
    assert all("u3" not in x[:2] for x in e)
    assert e[: len(pos)] == [[*p, "POSITIVE"] for p in sorted(pos)]  # POSITIVE first, group by group


@pytest.mark.parametrize(
    ("groups", "match"),
    [
        ([["u1", "u2"]], "at least two"),
        ([["u1"], []], "empty"),
        ([["u1"], ["zz"]], "not in this cluster"),
        ([["u1", "u2"], ["u2", "u3"]], "one sub-group only"),
        ([["u1", "u1"], ["u3"]], "one sub-group only"),
    ],
)
def test_impossible_splits_are_refused(groups, match):
    with pytest.raises(DecisionError, match=match):
        split_edges(["u1", "u2", "u3"], groups)


def test_big_split_is_bounded_and_separates_every_pair_of_groups():
    sizes = [400, 300, 50, 7, 1, 1]
    k = sum(sizes)
    pairs = split_negative_pairs(sizes)
    assert len(pairs) <= NEGATIVES_PER_REJECTED * k  # O(k), not the ~190,000 pairs across groups
    assert len(set(pairs)) == len(pairs)
    assert all(a[0] != b[0] for a, b in pairs)
    assert {(a[0], b[0]) for a, b in pairs} == set(combinations(range(len(sizes)), 2))
    # every member of every group has at least one NEGATIVE partner
    touched = {x for p in pairs for x in p}
    assert touched == {(g, i) for g, n in enumerate(sizes) for i in range(n)}
    members = [f"m{i:04d}" for i in range(k + 5)]
    groups, at = [], 0
    for n in sizes:
        groups.append(members[at:at + n])
        at += n
    edges = split_edges(members, groups)
    assert sum(1 for x in edges if x[2] == "POSITIVE") == sum(len(group_pairs(n)) for n in sizes)
    assert sum(1 for x in edges if x[2] == "NEGATIVE") == len(pairs)


def test_an_image_added_to_a_split_cluster_joins_the_group_ticked():
    rec = {"decision": "split", "groups": [["u1", "u2"], ["u3", "u4"]], "ticked": ["u1", "u2", "u3", "u4"]}
    assert addition_anchors(["u1", "u2", "u3", "u4"], rec, ["u3"]) == ["u3", "u4"]
    with pytest.raises(DecisionError, match="one sub-group"):
        addition_anchors(["u1", "u2", "u3", "u4"], rec, [])
    with pytest.raises(DecisionError, match="one sub-group"):
        addition_anchors(["u1", "u2", "u3", "u4"], rec, ["u1", "u3"])


def test_split_route_records_groups_undo_and_accept(annot_collection):
    app = create_app(annot_collection.root, annot_collection.clusters, "ada")
    c = app.test_client()
    cid = EXPECTED_QUEUE[0]
    m = [x["uid"] for x in c.get("/api/state").get_json()["cluster"]["members"]]  # six, in page order
    r = c.post("/api/decision", json={"cluster": cid, "decision": "split", "groups": [[m[2], m[0]], [m[3], m[4]]]})
    assert r.status_code == 200, r.get_json()
    rec = _lines(annot_collection)[-1]
    assert rec["decision"] == "split" and rec["groups"] == [[m[0], m[2]], [m[3], m[4]]]
    assert rec["ticked"] == [m[0], m[2], m[3], m[4]] and rec["members"] == m
    assert rec["edges"] == split_edges(m, rec["groups"])
    assert r.get_json()["n_edges"] == 2 + 4
    s = r.get_json()["state"]
    assert s["progress"]["done"] == 1 and s["cluster"]["id"] == EXPECTED_QUEUE[1]
    assert read_log(annot_collection.root / "annotations.jsonl").active_decisions()[0]["groups"] == rec["groups"]

    # undo brings it back; a split with the rest as a group
    assert c.post("/api/undo", json={"decision": rec["id"]}).status_code == 200
    r = c.post("/api/decision", json={"cluster": cid, "decision": "split", "groups": [[m[5]]], "rest_group": True})
    assert r.status_code == 200, r.get_json()
    rec2 = _lines(annot_collection)[-1]
    assert rec2["groups"] == [[m[5]], m[:5]] and rec2["ticked"] == m

    # accept: the groups' POSITIVE links and the NEGATIVE ones between them; the undone split adds nothing
    res = CliRunner().invoke(accept, ["--collection", str(annot_collection.root)])
    assert res.exit_code == 0, res.output
    rows = {(x.a, x.b, x.type) for x in read_connections(annot_collection.root / "connections.csv")}
    written = [e for e in rec2["edges"] if tuple(e) in rows]
    clashes = [e for e in rec2["edges"] if tuple(e) not in rows]
    # every edge is written, or named: a contradiction of a row already there, or a pair already known by a type
    # that implies it (a DUPLICATE for a POSITIVE)
    contradicted = int(re.search(r"contradictions \(not written\): (\d+)", res.output).group(1))
    implied = int(re.search(r"skipped \(already known[^)]*\): (\d+)", res.output).group(1))
    assert len(written) == len(rec2["edges"]) - len(clashes) and len(clashes) == contradicted + implied > 0
    assert {tuple(e) for e in rec["edges"]} - {tuple(e) for e in rec2["edges"]} - rows  # the undone split's own


@pytest.mark.parametrize(
    ("body", "status", "match"),
    [
        ({"decision": "split", "groups": [["A"]]}, 400, "at least two"),
        ({"decision": "split"}, 400, "at least two"),
        ({"decision": "split", "groups": "x"}, 400, "list of lists"),
        ({"decision": "split", "groups": [["A"], ["B"]], "rest_group": "yes"}, 400, "true or false"),
        ({"decision": "split", "groups": [["A"], ["nobody"]]}, 400, "not in this cluster"),
    ],
)
def test_bad_splits_get_a_clear_400_and_write_nothing(annot_collection, body, status, match):
    app = create_app(annot_collection.root, annot_collection.clusters, "ada")
    c = app.test_client()
    m = annot_collection.members(EXPECTED_QUEUE[0])
    body = json.loads(json.dumps(body).replace('"A"', json.dumps(m[0])).replace('"B"', json.dumps(m[1])))
    r = c.post("/api/decision", json={"cluster": EXPECTED_QUEUE[0], **body})
    assert r.status_code == status and match in r.get_json()["error"], r.get_json()
    assert not (annot_collection.root / "annotations.jsonl").exists()
