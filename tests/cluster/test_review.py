"""Review order and the edges implied by each decision (pure functions)."""

import subprocess
import sys
from pathlib import Path

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
    assert implied_edges("wrong", m, []) == [] and implied_edges("skip", m, m) == []


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
