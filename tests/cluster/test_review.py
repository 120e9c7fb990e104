"""Review order and the edges implied by each decision (pure functions)."""

import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from cluster.review import DecisionError, implied_edges, new_pairs, order_clusters

ROOT = Path(__file__).resolve().parents[2]


def test_order_is_largest_new_first_with_deterministic_ties():
    clusters = {
        5: ["a", "b", "c"],  # 3 pairs, 2 known -> 1 new
        1: ["d", "e"],  # 1 new
        2: ["f", "g", "h", "i"],  # 6 new
        0: ["j", "k"],  # 1 new, same size as 1 -> id 0 first
        7: ["l", "m", "n"],  # 3 new
    }
    known = {("a", "b"), ("b", "c"), ("x", "y")}
    assert new_pairs(clusters[5], known) == 1
    assert order_clusters(clusters, known) == [2, 7, 5, 0, 1]
    # a known pair is normalised: ("c", "b") is the same pair
    assert new_pairs(["c", "b"], {("b", "c")}) == 0


def test_implied_edges():
    m = ["u3", "u1", "u2", "u4"]
    assert implied_edges("confirm", m, ["u2", "u3"]) == [["u2", "u3", "POSITIVE"]]
    assert implied_edges("similar", m, ["u1", "u2", "u4"]) == [
        ["u1", "u2", "SIMILAR"], ["u1", "u4", "SIMILAR"], ["u2", "u4", "SIMILAR"]]
    assert implied_edges("duplicate", m, ["u4", "u1"]) == [["u1", "u4", "DUPLICATE"]]
    assert implied_edges("confirm_reject", m, ["u1"]) == [
        ["u1", "u3", "NEGATIVE"], ["u1", "u2", "NEGATIVE"], ["u1", "u4", "NEGATIVE"]]
    e = implied_edges("confirm_reject", m, ["u1", "u4"])
    assert [x for x in e if x[2] == "POSITIVE"] == [["u1", "u4", "POSITIVE"]]
    assert sorted(x[:2] for x in e if x[2] == "NEGATIVE") == [["u1", "u2"], ["u1", "u3"], ["u2", "u4"], ["u3", "u4"]]
    assert implied_edges("skip", m, m) == []
    # wrong cluster (issue 16): cannot-link evidence, each member with its next two in member (OPTICS) order
    assert implied_edges("wrong", m, []) == [
        ["u1", "u3", "NEGATIVE"], ["u2", "u3", "NEGATIVE"], ["u1", "u2", "NEGATIVE"], ["u1", "u4", "NEGATIVE"],
        ["u2", "u4", "NEGATIVE"]]
    assert implied_edges("wrong", m, ["u1"]) == implied_edges("wrong", m, [])  # ticks do not change it


def test_wrong_cluster_edges_are_linear_and_join_neighbours_in_member_order():
    from cluster.review import WRONG_NEXT

    members = [f"m{i:05d}" for i in range(5000)]
    edges = implied_edges("wrong", members, [])
    assert len(edges) == WRONG_NEXT * len(members) - WRONG_NEXT * (WRONG_NEXT + 1) // 2
    assert {e[2] for e in edges} == {"NEGATIVE"}
    position = {m: i for i, m in enumerate(members)}
    assert all(0 < abs(position[a] - position[b]) <= WRONG_NEXT for a, b, _ in edges)
    assert implied_edges("wrong", ["a", "b"], []) == [["a", "b", "NEGATIVE"]]


@pytest.mark.parametrize(
    ("decision", "ticked", "match"),
    [
        ("confirm", ["u1"], "at least two"),
        ("duplicate", [], "at least two"),
        ("confirm_reject", [], "one ticked"),
        ("confirm_reject", ["u1", "u2", "u3"], "one unticked"),
        ("confirm", ["u1", "zz"], "not in this cluster"),
        ("approve", ["u1", "u2"], "unknown decision"),
    ],
)
def test_impossible_decisions_are_refused(decision, ticked, match):
    with pytest.raises(DecisionError, match=match):
        implied_edges(decision, ["u1", "u2", "u3"], ticked)


def test_accept_and_the_report_do_not_depend_on_the_web_app():
    """The log format, the review order and the decision edges are cluster-level: `accept` and `report` use
    them without importing the annotation web app (flask)."""
    code = ("import sys, cluster.accept, cluster.report, cluster.annotations, cluster.review; "
            "print(sorted(m for m in sys.modules if m.startswith('cluster.annotate') or m == 'flask'))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip() == "[]", out.stdout


# -- the O(size^2) code this module had before (issue 14), kept here as the reference on small inputs -------------
def _old_new_pairs(members, known):
    from itertools import combinations

    from cluster.review import pair
    return sum(1 for a, b in combinations(members, 2) if pair(a, b) not in known)


def _old_order(clusters, known):
    return sorted(clusters, key=lambda c: (-_old_new_pairs(clusters[c], known), -len(clusters[c]), c))


def _old_implied_edges(decision, members, ticked):
    from itertools import combinations

    from cluster.review import pair
    chosen = [m for m in members if m in set(ticked)]
    rest = [m for m in members if m not in set(ticked)]
    if decision in ("wrong", "skip"):
        return []
    if decision == "confirm_reject":
        return ([[*pair(a, b), "POSITIVE"] for a, b in combinations(chosen, 2)]
                + [[*pair(a, b), "NEGATIVE"] for a in chosen for b in rest])
    kind = {"confirm": "POSITIVE", "similar": "SIMILAR", "duplicate": "DUPLICATE"}[decision]
    return [[*pair(a, b), kind] for a, b in combinations(chosen, 2)]


def _random_case(rng, n_uids=60, n_clusters=8, n_known=120):
    uids = [f"u{i:03d}" for i in range(n_uids)]
    order = list(rng.permutation(n_uids))
    clusters, at = {}, 0
    for cid in rng.choice(1000, n_clusters, replace=False).tolist():
        size = int(rng.integers(0, 12))
        clusters[cid] = [uids[i] for i in order[at:at + size]]
        at += size
    known = set()
    for _ in range(n_known):
        a, b = rng.choice(uids, 2).tolist()
        known.add((a, b) if rng.random() < 0.8 else (b, a))  # some not normalised, some listed both ways
    known.add((uids[0], uids[0]))
    return clusters, known


@pytest.mark.parametrize("seed", range(25))
def test_counting_known_pairs_from_the_links_gives_the_old_pair_enumeration(seed):
    from cluster.review import new_pairs_by_cluster
    rng = np.random.default_rng(seed)
    clusters, known = _random_case(rng)
    assert order_clusters(clusters, known) == _old_order(clusters, known)
    assert new_pairs_by_cluster(clusters, known) == {c: _old_new_pairs(m, known) for c, m in clusters.items()}
    for members in clusters.values():
        assert new_pairs(members, known) == _old_new_pairs(members, known)


def test_overlapping_clusters_count_each_ones_known_pairs():
    """A proposal made on the map shares members with clusters.csv's clusters."""
    clusters = {0: ["a", "b", "c"], -2: ["b", "c", "d"], 5: ["c", "d"]}
    known = {("b", "c"), ("c", "d"), ("a", "d")}
    assert order_clusters(clusters, known) == _old_order(clusters, known)
    assert {c: new_pairs(m, known) for c, m in clusters.items()} == {0: 2, -2: 1, 5: 0}


@pytest.mark.parametrize("seed", range(20))
def test_decision_edges_equal_the_old_ones_on_small_clusters(seed):
    rng = np.random.default_rng(seed)
    members = [f"m{i}" for i in rng.permutation(int(rng.integers(3, 34)))]
    ticked = [m for m in members if rng.random() < 0.6] or members[:2]
    if len(ticked) < 2:
        ticked = members[:2]
    for decision in ("confirm", "similar", "duplicate", "skip"):  # "wrong" writes edges since issue 16
        assert implied_edges(decision, members, ticked) == _old_implied_edges(decision, members, ticked)
    if len(ticked) < len(members):
        assert implied_edges("confirm_reject", members, ticked) == _old_implied_edges(
            "confirm_reject", members, ticked)


def _components(edges, nodes):
    from data.graph import components
    return components([(a, b) for a, b, _ in edges], nodes)


def test_a_big_confirmed_group_is_one_pattern_group_in_linear_edges():
    from cluster.review import RING
    members = [f"m{i:05d}" for i in range(5000)]
    edges = implied_edges("confirm", members, members)
    assert len(edges) == RING * len(members)  # not 12.5 million
    assert len({(a, b) for a, b, _ in edges}) == len(edges) and all(a < b for a, b, _ in edges)
    assert list(_components(edges, members).values()) == [sorted(members)]
    degree = Counter(u for a, b, _ in edges for u in (a, b))
    assert set(degree.values()) == {2 * RING}  # every member keeps 2 * RING training partners


def test_a_big_rejection_keeps_a_bounded_window_of_negatives_per_rejected_image():
    from cluster.review import NEGATIVES_PER_REJECTED as K
    members = [f"m{i:04d}" for i in range(3000)]
    ticked, rest = members[:1000], members[1000:]
    edges = implied_edges("confirm_reject", members, ticked)
    neg = [(a, b) for a, b, t in edges if t == "NEGATIVE"]
    assert len(neg) == K * len(rest) and len(set(neg)) == len(neg)
    per_rejected = Counter(b if b in set(rest) else a for a, b in neg)
    assert set(per_rejected.values()) == {K}
    assert {a if a in set(ticked) else b for a, b in neg} == set(ticked)  # together they reach every ticked one
    assert list(_components([e for e in edges if e[2] == "POSITIVE"], ticked).values()) == [sorted(ticked)]
