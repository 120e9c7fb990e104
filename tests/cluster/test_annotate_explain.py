"""Explaining a proposal in the annotation app (issue 16, item 4), through flask's test client: each card's
nearest member and OPTICS distances, its known partners and pattern group, the known groups no cluster found
("missed"), and, with a search index, where an image's stored regions match the other members'."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from click.testing import CliRunner

from cluster.annotate.app import create_app
from cluster.clusters_file import read_clusters
from cluster.explain import GroupIndex, found_by, missed_groups
from data.collection import Connection, load_collection, write_connections
from data.signatures import Signatures, save_signatures
from tests.cluster.conftest import CLUSTERS, KNOWN
from tests.cluster.test_annotate_search import search_index  # noqa: F401  (the session's index fixture)


def _signatures(coll, path=None, dim=8):
    """Random unit signatures for the collection's uids; member 5 of cluster 2 is a near-copy of member 4."""
    rng = np.random.default_rng(3)
    v = rng.normal(size=(len(coll.uids), dim)).astype(np.float32)
    v[5] = v[4] + 0.01 * rng.normal(size=dim)
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    path = path or coll.root / "sig.npz"
    save_signatures(path, Signatures(uids=list(coll.uids), vectors=v))
    return path, v


def _name_signatures(coll, path):
    side = coll.clusters.with_suffix(".json")
    params = json.loads(side.read_text()) if side.exists() else {}
    side.write_text(json.dumps({**params, "signatures": str(path)}))


def _view(client, cid, **kw):
    r = client.get(f"/api/cluster/{cid}", **kw)
    assert r.status_code == 200, r.get_json()
    return r.get_json()


def test_each_card_carries_its_nearest_member_and_optics_distances(annot_collection):
    path, v = _signatures(annot_collection)
    _name_signatures(annot_collection, path)
    c = create_app(annot_collection.root, annot_collection.clusters, "ada").test_client()
    view = _view(c, 2)
    assert view["explain_note"] is None
    members = [m["uid"] for m in view["members"]]
    row = {u: i for i, u in enumerate(annot_collection.uids)}
    table = read_clusters(annot_collection.clusters)
    at = {u: i for i, u in enumerate(table.uids)}
    for m in view["members"]:
        e = m["explain"]
        # brute force over the cluster: the nearest other member by cosine distance
        d = {o: 1 - float(v[row[m["uid"]]] @ v[row[o]]) for o in members if o != m["uid"]}
        best = min(d, key=d.get)
        assert e["nearest"]["uid"] == best and e["nearest"]["n"] == members.index(best) + 1
        assert e["nearest"]["distance"] == pytest.approx(d[best], abs=1e-5)
        assert e["reachability"] == pytest.approx(table.reachability[at[m["uid"]]])
        assert e["core_distance"] == pytest.approx(table.core_distance[at[m["uid"]]])
    four, five = annot_collection.uids[4], annot_collection.uids[5]
    by_uid = {m["uid"]: m["explain"] for m in view["members"]}
    assert by_uid[four]["nearest"]["uid"] == five and by_uid[four]["nearest"]["distance"] < 1e-3


def test_without_the_signatures_the_cards_say_why_and_another_file_can_be_given(annot_collection, tmp_path):
    _name_signatures(annot_collection, tmp_path / "moved.npz")
    c = create_app(annot_collection.root, annot_collection.clusters, "ada").test_client()
    view = _view(c, 2)
    assert "moved.npz" in view["explain_note"] and "--signatures" in view["explain_note"]
    assert all(m["explain"]["nearest"] is None for m in view["members"])
    assert all(m["explain"]["reachability"] is not None for m in view["members"])  # clusters.csv still says those
    path, _ = _signatures(annot_collection, tmp_path / "here.npz")
    c = create_app(annot_collection.root, annot_collection.clusters, "ada", signatures_path=path).test_client()
    assert all(m["explain"]["nearest"] is not None for m in _view(c, 2)["members"])


def test_the_cli_warns_when_the_signatures_are_not_there(annot_collection, tmp_path, monkeypatch):
    from cluster.annotate import cli as annotate_cli

    _name_signatures(annot_collection, tmp_path / "gone.npz")

    def no_server(*a, **k):
        raise OSError(98, "in use")

    monkeypatch.setattr(annotate_cli, "make_server", no_server)
    r = CliRunner().invoke(annotate_cli.annotate, ["--collection", str(annot_collection.root), "--clusters",
                                                   str(annot_collection.clusters), "--port", "0"])
    assert "warning: nearest-member distances are not shown" in r.output and "gone.npz" in r.output
    assert "Traceback" not in r.output


def test_partners_by_type_and_pattern_group_on_each_card(annot_collection):
    c = create_app(annot_collection.root, annot_collection.clusters, "ada").test_client()
    u = annot_collection.uids
    titles = {x: load_collection(annot_collection.root).record(x).meta["title"] for x in u}
    view = _view(c, 1)  # members 11, 12, 13: all POSITIVE with each other
    first = next(m for m in view["members"] if m["uid"] == u[11])["explain"]
    pos = first["partners"]["POSITIVE"]
    assert pos["count"] == 2 and {p["uid"] for p in pos["shown"]} == {u[12], u[13]}
    assert all(p["title"] == titles[p["uid"]] and p["n"] is not None for p in pos["shown"])
    name = min(u[11], u[12], u[13])  # a known group is named by a member's uid, and read by that member's title
    assert first["group"] == {"name": name, "title": titles[name], "size": 3, "in_cluster": 3}
    view = _view(c, 2)
    e = {m["uid"]: m["explain"] for m in view["members"]}
    assert e[u[2]]["partners"]["DUPLICATE"]["count"] == 1 and e[u[2]]["group"] is None
    assert e[u[4]]["partners"]["NEGATIVE"]["shown"][0]["uid"] == u[5]
    assert e[u[0]]["group"]["size"] == 2


def test_partners_outside_the_cluster_are_listed_without_a_number(annot_collection):
    u = annot_collection.uids
    links = [Connection(u[a], u[b], t) for a, b, t in KNOWN] + [Connection(u[0], u[14], "SIMILAR")]
    write_connections(annot_collection.root / "connections.csv", links)
    c = create_app(annot_collection.root, annot_collection.clusters, "ada").test_client()
    e = {m["uid"]: m["explain"] for m in _view(c, 2)["members"]}
    sim = e[u[0]]["partners"]["SIMILAR"]
    assert sim["count"] == 1 and sim["shown"][0] == {"uid": u[14], "title": sim["shown"][0]["title"], "n": None}


def test_missed_groups_list_where_each_member_went(annot_collection):
    u = annot_collection.uids
    # a group split over clusters 0 and 3 (u8, u10), and the known pair u14-u15 left as noise
    links = [Connection(u[a], u[b], t) for a, b, t in KNOWN] + [Connection(u[8], u[10], "POSITIVE")]
    write_connections(annot_collection.root / "connections.csv", links)
    c = create_app(annot_collection.root, annot_collection.clusters, "ada").test_client()
    doc = c.get("/api/missed").get_json()
    groups = {g["name"]: g for g in doc["groups"]}
    assert set(groups) == {min(u[8], u[10]), min(u[14], u[15])}
    where = {m["uid"]: m["cluster"] for g in doc["groups"] for m in g["members"]}
    assert where == {u[8]: 0, u[10]: 3, u[14]: -1, u[15]: -1}
    assert all(m["title"] for g in doc["groups"] for m in g["members"])
    title_of = {m["uid"]: m["title"] for g in doc["groups"] for m in g["members"]}
    assert all(g["title"] == title_of[g["name"]] for g in doc["groups"])
    assert "2 known pattern group(s) of 4 images" in doc["summary"] and "2 of their images are noise" in doc["summary"]
    assert doc["total"] == 2
    one = c.get("/api/missed?limit=1").get_json()
    assert one["total"] == 2 and len(one["groups"]) == 1 and one["summary"] == doc["summary"]
    assert c.get("/api/missed?limit=0").status_code == 400 and c.get("/api/missed?limit=x").status_code == 400


def test_found_by_needs_two_members_and_half_of_the_group():
    labels = {"a": 1, "b": 1, "c": 2, "d": -1, "e": 3}
    assert found_by(["a", "b", "c"], labels) == 1
    assert found_by(["a", "b", "c", "d"], labels) == 1  # half
    assert found_by(["a", "b", "c", "d", "e"], labels) is None  # 2 of 5
    assert found_by(["a", "c"], labels) is None  # one each
    assert found_by(["d", "x"], labels) is None  # noise, and an image the clustering did not see
    groups = GroupIndex.from_map({"a": "a", "c": "a", "x": "x", "d": "x"})
    missed = missed_groups(groups, labels)
    assert [g["name"] for g in missed] == ["a", "x"]
    assert missed[1]["members"] == [{"uid": "d", "cluster": -1}, {"uid": "x", "cluster": None}]


def test_match_needs_an_index_and_the_app_without_one_never_imports_the_network(annot_collection):
    path, _ = _signatures(annot_collection)
    _name_signatures(annot_collection, path)
    c = create_app(annot_collection.root, annot_collection.clusters, "ada").test_client()
    r = c.get(f"/api/match?uid={annot_collection.uids[0]}&cluster=2")
    assert r.status_code == 409 and "--index INDEX" in r.get_json()["error"]
    code = ("import sys; from cluster.annotate.app import create_app; "
            f"c = create_app({str(annot_collection.root)!r}, {str(annot_collection.clusters)!r}, 'ada').test_client(); "
            "assert c.get('/api/state').get_json()['cluster']['members'][0]['explain']['nearest']; "
            "assert c.get('/api/missed').status_code == 200; "
            "bad = [m for m in ('jax', 'model.search_service', 'flax') if m in sys.modules]; print(bad)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


@pytest.mark.slow
def test_match_draws_the_best_region_pair_of_each_member(annot_collection, search_index):  # noqa: F811
    from model.index import SearchIndex

    c = create_app(annot_collection.root, annot_collection.clusters, "ada", index_dir=search_index).test_client()
    u = annot_collection.uids
    r = c.get(f"/api/match?uid={u[0]}&cluster=2")
    assert r.status_code == 200, r.get_json()
    doc = r.get_json()
    index = SearchIndex.open(search_index)
    assert doc["uid"] == u[0] and doc["size"] == list(index.size_of(index.number_of(u[0])))
    assert {p["uid"] for p in doc["pairs"]} == {u[i] for i in CLUSTERS[2][1:]}
    ga, ra = index.vectors_of(index.number_of(u[0]))
    for p in doc["pairs"]:
        gb, rb = index.vectors_of(index.number_of(p["uid"]))
        assert p["regions"] == pytest.approx(float((ra @ rb.T).max()), abs=1e-5)
        assert p["whole"] == pytest.approx(float(ga @ gb), abs=1e-5)
        for box, size in ((p["box"], doc["size"]), (p["other_box"], p["other_size"])):
            x, y, w, h = box
            assert 0 <= x and 0 <= y and w > 0 and h > 0 and x + w <= size[0] + 1 and y + h <= size[1] + 1
    assert [p["regions"] for p in doc["pairs"]] == sorted((p["regions"] for p in doc["pairs"]), reverse=True)
    assert c.get(f"/api/match?uid={u[9]}&cluster=2").status_code == 400  # not a member
    assert c.get(f"/api/match?uid={u[0]}&cluster=77").status_code == 404
    assert c.get(f"/api/match?uid={u[0]}&cluster=2&page=9").status_code == 400


def test_a_cluster_opened_at_an_image_gives_the_page_that_holds_it(annot_collection):
    from cluster.annotate.app import _page_of

    u = annot_collection.uids
    c = create_app(annot_collection.root, annot_collection.clusters, "ada").test_client()
    view = _view(c, 2, query_string={"uid": u[5]})
    assert view["page"] == 1 and u[5] in [m["uid"] for m in view["members"]]
    r = c.get("/api/cluster/2", query_string={"uid": u[9]})
    assert r.status_code == 404 and u[9] in r.get_json()["error"]
    members = [f"m{i}" for i in range(130)]
    assert [_page_of(members, m, 7) for m in ("m0", "m59", "m60", "m125")] == [1, 1, 2, 3]


def test_nearest_members_of_a_centred_clustering_are_measured_on_centred_signatures(annot_collection):
    path, v = _signatures(annot_collection)
    _name_signatures(annot_collection, path)
    side = annot_collection.clusters.with_suffix(".json")
    side.write_text(json.dumps({**json.loads(side.read_text()), "centre": True}))  # `cluster optics --centre`
    c = create_app(annot_collection.root, annot_collection.clusters, "ada").test_client()
    view = _view(c, 2)
    x = v - v.mean(axis=0)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    row = {u: i for i, u in enumerate(annot_collection.uids)}
    members = [m["uid"] for m in view["members"]]
    for m in view["members"]:
        d = {o: 1 - float(x[row[m["uid"]]] @ x[row[o]]) for o in members if o != m["uid"]}
        best = min(d, key=d.get)
        assert m["explain"]["nearest"]["uid"] == best
        assert m["explain"]["nearest"]["distance"] == pytest.approx(d[best], abs=1e-5)


def test_a_recorded_centre_mean_spares_the_pass_over_the_signatures(annot_collection, tmp_path, monkeypatch):
    """`cluster optics` records the mean it subtracted (clusters.json `centre_mean`): the page centres by it and
    does not read the whole signatures file for it (8 GB at 10^6 x 2048; nor to check its rows: those it reads
    are checked as read); the mean is the file's own mean."""
    from cluster.__main__ import cli as cluster_cli
    from cluster.explain import NearestMembers
    from data.signatures import Signatures

    path, v = _signatures(annot_collection)
    out = tmp_path / "clusters.csv"
    r = CliRunner().invoke(cluster_cli, ["optics", str(path), "--out", str(out), "--min-samples", "2"])
    assert r.exit_code == 0, r.output
    params = json.loads(out.with_suffix(".json").read_text())
    assert params["centre"] is True
    np.testing.assert_allclose(params["centre_mean"], v.mean(axis=0), atol=1e-6)
    r = CliRunner().invoke(cluster_cli, ["optics", str(path), "--out", str(tmp_path / "p.csv"), "--min-samples", "2",
                                         "--pca", "4"])  # fmt: skip
    assert r.exit_code == 0, r.output
    assert "centre_mean" not in json.loads((tmp_path / "p.json").read_text())  # PCA's space: not the file's

    passes, blocks = [], Signatures.blocks

    def counted(self, *a, **k):
        passes.append(1)
        return blocks(self, *a, **k)

    monkeypatch.setattr(Signatures, "blocks", counted)
    u = annot_collection.uids
    pages = {}
    for name, p in (("recorded", params), ("older clusters.json", {k: v for k, v in params.items() if k != "centre_mean"})):
        passes.clear()
        near = NearestMembers.for_clusters(p)
        pages[name] = near.page(2, [u[i] for i in range(6)], [u[0], u[4]])
        assert near.note is None and pages[name][u[4]]["uid"] == u[5]
        assert len(passes) == (0 if name == "recorded" else 1), name  # no row check on load; the mean's pass
    assert pages["recorded"] == pages["older clusters.json"]


def test_a_row_that_is_not_finite_is_nobodys_nearest_member(annot_collection, tmp_path):
    """The page reads only the rows it shows (no pass over the whole file to check them): a NaN row among the
    members is never anyone's nearest, and gets no distance itself; the others' answers are unchanged."""
    from cluster.explain import NearestMembers
    from data.signatures import Signatures, save_signatures

    path, v = _signatures(annot_collection)
    u = annot_collection.uids
    members, shown = [u[i] for i in range(6)], [u[0], u[4], u[5]]
    clean = NearestMembers(path).page(2, members, shown)
    bad = v.copy()
    bad[5] = np.nan  # u5 was u4's nearest
    broken = tmp_path / "broken.npz"
    save_signatures(broken, Signatures(uids=list(annot_collection.uids), vectors=bad))
    got = NearestMembers(broken).page(2, members, shown)
    assert u[5] not in got and got[u[4]]["uid"] != u[5] and all(g["uid"] != u[5] for g in got.values())
    assert got[u[0]] == clean[u[0]] or clean[u[0]]["uid"] == u[5]
    assert np.isfinite([g["distance"] for g in got.values()]).all()
