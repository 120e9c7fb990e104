"""Issue 16, item 2: the expert's decisions constrain the next clustering (cluster/constraints.py), driven through
`cluster optics --collection DIR [--constraints/--no-constraints]` as a user runs it."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from cluster.__main__ import cli
from cluster.clusters_file import read_clusters
from cluster.constraints import _heaviest_path_edges, apply_constraints, spanning_tree
from data.collection import Connection, write_connections
from data.signatures import Signatures, save_signatures

METHODS = ("optics", "dbscan", "hdbscan")


@pytest.fixture
def workspace(tmp_path):
    """8 groups of 6 signatures (each two sub-groups of 3) and 20 isolated ones; a collection without connections."""
    rng = np.random.default_rng(7)
    centres = rng.normal(size=(8, 24))
    rows = []
    for c in centres:
        for sub in (0.35 * rng.normal(size=24), 0.35 * rng.normal(size=24)):
            rows.extend(c + sub + 0.08 * rng.normal(size=(3, 24)))
    rows.extend(rng.normal(size=(20, 24)) * 1.5)
    x = np.asarray(rows)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    uids = [f"img{i:03d}" for i in range(len(x))]
    save_signatures(tmp_path / "sig.npz", Signatures(uids=uids, vectors=x.astype(np.float32)))
    coll = tmp_path / "coll"
    coll.mkdir()
    (coll / "images.csv").write_text("uid,path\n" + "".join(f"{u},{u}.jpg\n" for u in uids))
    write_connections(coll / "connections.csv", [])
    return tmp_path, uids


def _run(tmp, out: str, *extra: str) -> tuple[dict[int, list[str]], dict]:
    res = CliRunner().invoke(cli, ["optics", str(tmp / "sig.npz"), "--out", str(tmp / out), *extra])
    assert res.exit_code == 0, res.output
    table = read_clusters(tmp / out)
    return table.clusters(), json.loads((tmp / out).with_suffix(".json").read_text())


def _label_of(clusters: dict[int, list[str]]) -> dict[str, int]:
    return {u: lab for lab, members in clusters.items() for u in members}


@pytest.mark.parametrize("method", METHODS)
def test_a_rejected_cluster_is_not_proposed_again(workspace, method):
    """'Wrong cluster' writes NEGATIVE edges along the cluster's members (a chain); the next clustering holds no
    cannot-link pair in any cluster, so the rejected cluster does not come back whole."""
    tmp, _ = workspace
    before, params = _run(tmp, "before.csv", "--method", method, "--collection", str(tmp / "coll"))
    assert "constraints" not in params  # no decisions yet: off by default
    rejected = max(before.values(), key=len)
    assert len(rejected) >= 3
    chain = [Connection(a, b, "NEGATIVE") for a, b in zip(rejected, rejected[1:], strict=False)]
    write_connections(tmp / "coll" / "connections.csv", chain)
    after, params = _run(tmp, "after.csv", "--method", method, "--collection", str(tmp / "coll"))
    label = _label_of(after)
    for c in chain:
        assert label.get(c.a, -1) < 0 or label.get(c.a) != label.get(c.b), (c.a, c.b)
    assert sorted(rejected) not in [sorted(m) for m in after.values()]
    report = params["constraints"]
    assert report["cannot_link_pairs"] == len(chain) and report["cannot_link_violated"] >= 1
    assert report["clusters_split"] == 1


@pytest.mark.parametrize("method", METHODS)
def test_a_confirmed_group_is_not_split(workspace, method):
    """A POSITIVE group whose members the method put in two clusters and the noise comes back in one cluster."""
    tmp, _ = workspace
    before, _ = _run(tmp, "before.csv", "--method", method, "--no-centre", "--no-constraints")
    big, other = sorted(before.values(), key=len, reverse=True)[:2]
    clustered = {u for m in before.values() for u in m}
    noise = sorted(set(read_clusters(tmp / "before.csv").uids) - clustered)
    group = [*big[:2], other[0], *noise[:1]]
    links = [Connection(a, b, "POSITIVE") for a, b in zip(group, group[1:], strict=False)]
    write_connections(tmp / "coll" / "connections.csv", links)
    after, params = _run(tmp, "after.csv", "--method", method, "--no-centre", "--collection", str(tmp / "coll"))
    label = _label_of(after)
    assert {label.get(u, -1) for u in group} == {label[big[0]]} and label[big[0]] >= 0
    assert params["constraints"]["groups_split"] == 1 and params["constraints"]["rows_moved"] == len(group) - 2


def test_no_constraints_is_todays_output_and_constraints_need_a_collection(workspace):
    tmp, uids = workspace
    write_connections(tmp / "coll" / "connections.csv", [Connection(uids[0], uids[1], "NEGATIVE"),
                                                         Connection(uids[2], uids[40], "POSITIVE")])  # fmt: skip
    today, params_today = _run(tmp, "today.csv")
    off, params_off = _run(tmp, "off.csv", "--collection", str(tmp / "coll"), "--no-constraints")
    assert today == off and "constraints" not in params_today and "constraints" not in params_off
    np.testing.assert_array_equal(read_clusters(tmp / "today.csv").order, read_clusters(tmp / "off.csv").order)
    on, params_on = _run(tmp, "on.csv", "--collection", str(tmp / "coll"))  # default: on, since it has connections
    assert params_on["constraints"]["must_link_groups"] == 1 and params_on["constraints"]["cannot_link_pairs"] == 1
    res = CliRunner().invoke(cli, ["optics", str(tmp / "sig.npz"), "--out", str(tmp / "x.csv"), "--constraints"])
    assert res.exit_code != 0 and "--constraints needs --collection DIR" in res.output and "Traceback" not in res.output


def test_a_group_member_stays_apart_from_its_cannot_link_partner():
    """Must-link never undoes a cannot-link: a member whose NEGATIVE partner is in the group's cluster stays out."""
    labels = np.array([0, 0, 0, 1, 1, 1])
    out, report = apply_constraints(labels, [np.array([0, 1, 3])], np.array([[3, 2]]), min_cluster_size=2)
    assert out[0] == out[1] and out[3] != out[0] and report["rows_kept_apart"] == 1


def test_each_pair_is_cut_at_its_own_weakest_point():
    """On a chain (OPTICS order) the cut edges are exactly each pair's highest reachability between its two ends
    (the first one on ties), whatever the order of the pairs; no output cluster holds a pair."""
    rng = np.random.default_rng(0)
    for _ in range(200):
        n = int(rng.integers(2, 40))
        w = rng.integers(0, 5, n - 1).astype(float)
        pairs = rng.integers(0, n, (int(rng.integers(0, 8)), 2))
        pairs = pairs[pairs[:, 0] != pairs[:, 1]]
        expected = np.zeros(n - 1, bool)
        for a, b in pairs:
            lo, hi = min(a, b), max(a, b)
            expected[lo + int(np.argmax(w[lo:hi]))] = True
        edges = np.stack([np.arange(n - 1), np.arange(1, n)], axis=1)
        np.testing.assert_array_equal(_heaviest_path_edges(n, edges, w, pairs), expected)
        np.testing.assert_array_equal(_heaviest_path_edges(n, edges, w, pairs[::-1]), expected)
    for _ in range(50):
        labels = rng.integers(-1, 4, 60)
        pairs = rng.integers(0, 60, (10, 2))
        x = rng.normal(size=(60, 5))
        for tree in ({"ordering": rng.permutation(60), "reachability": rng.random(60)}, {"x": x}):
            out, _ = apply_constraints(labels, [rng.choice(60, 3, replace=False)], pairs, **tree)
            same = (out[pairs[:, 0]] >= 0) & (out[pairs[:, 0]] == out[pairs[:, 1]]) & (pairs[:, 0] != pairs[:, 1])
            assert not same.any()


def test_sub_groups_of_a_split_whose_members_interleave_stay_clusters(workspace):
    """A split of a cluster whose sub-groups interleave in OPTICS order (every neighbour pair is a cannot-link
    pair, so the cuts leave single images) must not drop the confirmed sub-groups into the noise: each comes back
    as a cluster of its own (found in a trial: a 9-image cluster split into four groups came back as one cluster
    and 7 noise images). DBSCAN and HDBSCAN cut their spanning tree, where the sub-groups do not interleave."""
    tmp, _ = workspace
    before, _ = _run(tmp, "before.csv", "--no-constraints")
    table = read_clusters(tmp / "before.csv")
    members = max(before.values(), key=len)
    assert len(members) >= 4
    pos = dict(zip(table.uids, table.order.tolist(), strict=True))
    members = sorted(members, key=pos.__getitem__)
    group_a, group_b = members[0::2], members[1::2]
    links = [Connection(a, b, "POSITIVE") for g in (group_a, group_b) for a, b in zip(g, g[1:], strict=False)]
    links += [Connection(a, b, "NEGATIVE") for a in group_a for b in group_b]
    write_connections(tmp / "coll" / "connections.csv", links)
    after, params = _run(tmp, "after.csv", "--collection", str(tmp / "coll"))
    found = [sorted(m) for m in after.values()]
    assert sorted(group_a) in found and sorted(group_b) in found, found
    assert params["constraints"]["groups_reformed"] == 2


def test_a_known_pair_proposed_with_a_rejected_outsider_is_proposed_again_without_it(workspace):
    """'Wrong cluster' on [a, x, b] (OPTICS order) where a-b is a known POSITIVE pair: accept writes a-x and x-b
    NEGATIVE (not a-b). The cuts leave three single images; the known pair must come back as a cluster, without x."""
    tmp, _ = workspace
    before, _ = _run(tmp, "before.csv", "--no-constraints")
    table = read_clusters(tmp / "before.csv")
    pos = dict(zip(table.uids, table.order.tolist(), strict=True))
    a, x, b = sorted(next(m for m in before.values() if len(m) == 3), key=pos.__getitem__)
    links = [Connection(a, b, "POSITIVE"), Connection(a, x, "NEGATIVE"), Connection(x, b, "NEGATIVE")]
    write_connections(tmp / "coll" / "connections.csv", links)
    after, _ = _run(tmp, "after.csv", "--collection", str(tmp / "coll"))
    found = [sorted(m) for m in after.values()]
    assert sorted([a, b]) in found and sorted([a, x, b]) not in found, found


def test_spanning_tree_is_minimal():
    from scipy.sparse.csgraph import minimum_spanning_tree
    from sklearn.metrics import pairwise_distances

    x = np.random.default_rng(1).normal(size=(40, 6))
    for metric in ("cosine", "euclidean"):
        edges, weights = spanning_tree(x, metric)
        assert len(edges) == 39 and len({*edges.ravel().tolist()}) == 40
        d = pairwise_distances(x, metric=metric)
        assert weights.sum() == pytest.approx(minimum_spanning_tree(d).sum(), rel=1e-9)


def test_the_benchmark_runs_a_round_and_no_rejected_proposal_comes_back(workspace, capsys):
    """benchmarks/constraints.py (one simulated round, issue 16's measurement) on the toy collection: its truth is
    the 16 planted sub-groups; without constraints the rejected proposals come back, with them none does and
    new ones are confirmed."""
    import runpy

    tmp, uids = workspace
    # the truth: each half of a planted group is a pattern of its own, so a proposal of a whole group is wrong
    truth = [Connection(uids[g * 3 + i], uids[g * 3 + i + 1], "POSITIVE") for g in range(16) for i in range(2)]
    write_connections(tmp / "coll" / "connections.csv", truth)
    bench = runpy.run_path(str(__import__("pathlib").Path(__file__).resolve().parents[2] / "benchmarks" / "constraints.py"))
    bench["main"](["--signatures", str(tmp / "sig.npz"), "--collection", str(tmp / "coll"), "--method", "hdbscan"])
    lines = [json.loads(s) for s in capsys.readouterr().out.splitlines() if s.startswith("{")]
    rows = {r["round2"]: r for r in lines}
    assert set(rows) == {"with", "without"} and rows["with"]["repeats_of_rejected"] == 0
    assert rows["without"]["proposals"] == rows["without"]["round1_proposals"]  # no retraining: the same again
    assert rows["without"]["repeats_of_rejected"] >= 1 and rows["with"]["new_confirmed"] >= 1
