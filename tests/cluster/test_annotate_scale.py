"""The annotation app on big clusters (pages, select all) and on proposals made on the map (issue 14)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from cluster.__main__ import cli
from cluster.annotate.app import create_app
from cluster.annotate.queue import PAGE_SIZE
from cluster.clusters_file import ClusterTable, write_clusters
from cluster.review import RING
from data.collection import Connection, read_connections, write_connections

BIG = 1000  # members of the big cluster: 17 pages of 60


def big_collection(root: Path, size: int = BIG, images_from: Path | None = None) -> list[str]:
    """A collection of `size` + 6 uids: one cluster of `size` (label 0), three pairs (labels 1-3); a chain of
    POSITIVE links through the first 10 members of the big cluster. Rows point at the images of
    `images_from` (reused in turn) if given, else at files that do not exist (images.csv rows only)."""
    root.mkdir(parents=True)
    n = size + 6
    uids = [f"u{i:06d}" for i in range(n)]
    files = sorted(images_from.glob("images/*.jpg")) if images_from else []
    if files:
        shutil.copytree(images_from / "images", root / "images")
    paths = [f"images/{files[i % len(files)].name}" if files else f"images/{u}.jpg" for i, u in enumerate(uids)]
    (root / "images.csv").write_text("uid,path,title\n" + "".join(
        f"{u},{p},Print {i}\n" for i, (u, p) in enumerate(zip(uids, paths, strict=True))))
    write_connections(root / "connections.csv", [Connection(uids[i], uids[i + 1], "POSITIVE") for i in range(9)])
    labels = np.array([0] * size + [1, 1, 2, 2, 3, 3])
    write_clusters(root / "clusters.csv", ClusterTable(
        uids=uids, labels=labels, order=np.arange(n), reachability=np.full(n, 0.1),
        core_distance=np.full(n, 0.05), params={"method": "test"}))
    return uids


def _client(root: Path):
    app = create_app(root, root / "clusters.csv", "ada")
    app.testing = True
    return app.test_client()


def _lines(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []


def test_a_big_cluster_comes_page_by_page(tmp_path):
    uids = big_collection(tmp_path / "c")
    c = _client(tmp_path / "c")
    view = c.get("/api/state").get_json()["cluster"]
    assert view["id"] == 0 and view["size"] == BIG and view["pages"] == 17 and view["page"] == 1
    assert view["new_pairs"] == BIG * (BIG - 1) // 2 - 9
    assert [m["uid"] for m in view["members"]] == uids[:PAGE_SIZE]
    assert {(x["a"], x["b"]) for x in view["links"]} == {(i, i + 1) for i in range(1, 10)}
    last = c.get("/api/cluster/0?page=17").get_json()
    assert [m["n"] for m in last["members"]] == list(range(16 * PAGE_SIZE + 1, BIG + 1)) and last["links"] == []
    assert c.get("/api/cluster/0?page=18").status_code == 404
    for bad in ("0", "x", "-1"):
        r = c.get(f"/api/cluster/0?page={bad}")
        assert r.status_code == 400 and "page" in r.get_json()["error"]


def test_select_all_but_one_of_a_big_cluster_writes_a_ring_not_every_pair(tmp_path):
    root = tmp_path / "c"
    uids = big_collection(root)
    c = _client(root)
    r = c.post("/api/decision", json={"cluster": 0, "decision": "confirm", "unticked": [uids[5]]})
    assert r.status_code == 200, r.get_json()
    assert r.get_json()["n_edges"] == RING * (BIG - 1)
    rec = _lines(root / "annotations.jsonl")[0]
    assert len(rec["ticked"]) == BIG - 1 and uids[5] not in rec["ticked"] and len(rec["members"]) == BIG
    assert len(rec["edges"]) == RING * (BIG - 1)
    assert r.get_json()["state"]["progress"] == {"done": 1, "left": 3, "total": 4}
    # the decided cluster's pages show the annotated links that touch them
    page2 = c.get("/api/cluster/0?page=2").get_json()
    assert page2["decision"]["decision"] == "confirm"
    assert any(x["source"] == "annotated" and x["a"] > PAGE_SIZE for x in page2["links"])
    res = CliRunner().invoke(cli, ["accept", "--collection", str(root)])
    assert res.exit_code == 0, res.output
    assert len(read_connections(root / "connections.csv")) == 9 + RING * (BIG - 1) - 7  # 7 chain links (those without uids[5]) were there
    bad = c.post("/api/decision", json={"cluster": 1, "decision": "confirm", "ticked": [], "unticked": []})
    assert bad.status_code == 400 and "not both" in bad.get_json()["error"]
    stray = c.post("/api/decision", json={"cluster": 1, "decision": "confirm", "unticked": [uids[0]]})
    assert stray.status_code == 400 and "not in this cluster" in stray.get_json()["error"]


def test_a_proposal_from_the_map_is_queued_judged_accepted_and_survives_a_restart(tmp_path):
    root = tmp_path / "c"
    uids = big_collection(root)
    c = _client(root)
    chosen = [uids[BIG + 1], uids[3], uids[BIG + 4], uids[3]]  # across clusters, one repeated
    r = c.post("/api/proposal", json={"uids": chosen, "note": "lasso"})
    assert r.status_code == 201, r.get_json()
    body = r.get_json()
    assert body["cluster"] == -2 and body["new"] and body["view"]["kind"] == "proposal"
    assert [m["uid"] for m in body["view"]["members"]] == [uids[3], uids[BIG + 1], uids[BIG + 4]]  # OPTICS order
    assert body["view"]["note"] == "lasso" and body["view"]["position"] == 1
    recs = _lines(root / "proposals.jsonl")
    assert [(x["cluster"], x["uids"]) for x in recs] == [(-2, [uids[3], uids[BIG + 1], uids[BIG + 4]])]
    # the same selection again is the same proposal; another one gets the next id
    again = c.post("/api/proposal", json={"uids": chosen[:3]})
    assert again.status_code == 200 and again.get_json()["cluster"] == -2
    assert c.post("/api/proposal", json={"uids": uids[:2]}).get_json()["cluster"] == -3
    state = c.get("/api/state").get_json()
    assert state["cluster"]["id"] == -2 and state["progress"]["total"] == 6  # proposals first
    # a restart (a new server on the folder) finds them; judged and accepted like any cluster
    c = _client(root)
    assert c.get("/api/state").get_json()["cluster"]["id"] == -2
    assert c.get("/api/cluster/-3").get_json()["size"] == 2
    r = c.post("/api/decision", json={"cluster": -2, "decision": "confirm", "ticked": [uids[3], uids[BIG + 4]]})
    assert r.status_code == 200, r.get_json()
    assert r.get_json()["state"]["cluster"]["id"] == -3
    assert _lines(root / "annotations.jsonl")[0]["cluster"] == -2
    res = CliRunner().invoke(cli, ["accept", "--collection", str(root)])
    assert res.exit_code == 0, res.output
    assert (uids[3], uids[BIG + 4]) in {c.pair for c in read_connections(root / "connections.csv")}


def test_bad_proposals_are_refused_with_a_clear_4xx(tmp_path):
    root = tmp_path / "c"
    uids = big_collection(root)
    c = _client(root)
    cases = [
        (c.post("/api/proposal", json={"uids": [uids[0], "ghost_1"]}), 400, "ghost_1"),
        (c.post("/api/proposal", json={"uids": [uids[0], uids[0]]}), 400, "two distinct"),
        (c.post("/api/proposal", json={"uids": []}), 400, "non-empty list"),
        (c.post("/api/proposal", json={"uids": "u000001"}), 400, "list"),
        (c.post("/api/proposal", json={"uids": uids[:2], "note": 5}), 400, "note"),
        (c.post("/api/proposal", data="uids=1", content_type="application/x-www-form-urlencoded"), 415, "JSON"),
        (c.post("/api/proposal", json={"uids": uids[:2]}, headers={"Origin": "http://evil.example"}), 403, "another"),
        (c.post("/api/proposal", data="x" * (4 * 1024 * 1024 + 1), content_type="application/json"), 413, "over"),
        (c.get("/api/cluster/-9"), 404, "nor a proposal"),
    ]
    for resp, code, words in cases:
        assert resp.status_code == code, resp.get_json()
        assert words in resp.get_json()["error"]
    assert not (root / "proposals.jsonl").exists()


def test_a_lasso_of_20000_uids_fits_in_one_request(tmp_path):
    root = tmp_path / "c"
    uids = big_collection(root, size=20_000)
    r = _client(root).post("/api/proposal", json={"uids": uids[5:20_005], "note": "big lasso"})
    assert r.status_code == 201, r.get_json()
    assert r.get_json()["view"]["size"] == 20_000 and len(r.get_json()["view"]["members"]) == PAGE_SIZE


def test_a_torn_proposal_line_is_set_aside_and_the_next_one_is_whole(tmp_path):
    root = tmp_path / "c"
    uids = big_collection(root)
    c = _client(root)
    assert c.post("/api/proposal", json={"uids": uids[:3]}).status_code == 201
    with (root / "proposals.jsonl").open("ab") as f:
        f.write(b'{"kind":"proposal","cluster":-3,"uids":["u0')  # a kill in the middle of a write
    c = _client(root)  # a restart: the torn line is moved aside, the proposal before it stays
    state = c.get("/api/state").get_json()
    assert state["cluster"]["id"] == -2 and any("proposal" in n and "torn" in n for n in state["notes"])
    assert c.post("/api/proposal", json={"uids": uids[4:6]}).get_json()["cluster"] == -3
    assert [x["cluster"] for x in _lines(root / "proposals.jsonl")] == [-2, -3]


def test_a_damaged_proposals_file_is_a_clear_error(tmp_path):
    root = tmp_path / "c"
    big_collection(root, size=10)
    (root / "proposals.jsonl").write_text('{"kind": "proposal", "id": "a", "cluster": 4, "uids": []}\n')
    res = CliRunner().invoke(cli, ["annotate", "--collection", str(root), "--clusters", str(root / "clusters.csv"),
                                   "--port", "0"])
    assert res.exit_code != 0 and "proposals.jsonl:1" in res.output and "<= -2" in res.output
    assert "Traceback" not in res.output


@pytest.mark.parametrize("size", [33, 34, 200])
def test_the_ring_keeps_each_confirmed_member_connected(size):
    from cluster.review import implied_edges
    from data.graph import components
    members = [f"m{i:04d}" for i in range(size)]
    edges = implied_edges("confirm", members, members)
    assert len(components([(a, b) for a, b, _ in edges], members)) == 1
    assert len(edges) == (size * (size - 1) // 2 if size <= 2 * RING + 1 else RING * size)
