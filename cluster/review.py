"""The review of proposed clusters: which one the expert sees next, and the edges each decision implies.

Pure functions, shared by the annotation page (`cluster.annotate`), which shows the clusters in this order
and records what `implied_edges` returns, and by the report (`cluster.report`), which shows the same order.

Order: largest-new-first. A cluster is worth the expert's time in proportion to what it can add, so
clusters are ranked by the number of member pairs that are *not* already a known connection (of any
type: a pair known as NEGATIVE is not news either), then by size, then by cluster id, so the order is
fully deterministic.
"""

from __future__ import annotations

from collections.abc import Iterable
from itertools import combinations

from data.collection import DUPLICATE, NEGATIVE, POSITIVE, SIMILAR

# decision name -> (label shown on the page, keyboard shortcut)
DECISIONS: dict[str, tuple[str, str]] = {
    "confirm": ("Confirm pattern", "c"),
    "confirm_reject": ("Confirm, reject the rest", "r"),
    "similar": ("Similar", "s"),
    "duplicate": ("Duplicates", "d"),
    "wrong": ("Wrong cluster", "w"),
    "skip": ("Skip", "n"),
}


class DecisionError(ValueError):
    """A decision that cannot be applied to this cluster (the message says what to tick)."""


def pair(a: str, b: str) -> tuple[str, str]:
    return (a, b) if a <= b else (b, a)


def new_pairs(members: list[str], known: set[tuple[str, str]]) -> int:
    """Number of member pairs that are not already a known connection."""
    return sum(1 for a, b in combinations(members, 2) if pair(a, b) not in known)


def order_clusters(clusters: dict[int, list[str]], known: set[tuple[str, str]]) -> list[int]:
    """Cluster ids, largest-new-first (ties: larger cluster first, then smaller id)."""
    return sorted(clusters, key=lambda c: (-new_pairs(clusters[c], known), -len(clusters[c]), c))


def implied_edges(decision: str, members: list[str], ticked: Iterable[str]) -> list[list[str]]:
    """The connections a decision asserts, as `[a, b, TYPE]` with a < b, in member order.

    - confirm: POSITIVE among the ticked members (at least two);
    - confirm_reject: POSITIVE among the ticked, NEGATIVE between each ticked and each unticked member;
    - similar / duplicate: SIMILAR / DUPLICATE among the ticked (at least two);
    - wrong, skip: nothing. "Wrong cluster" is a verdict on the proposal, not a claim about each pair
      (the original tool stored no positive edge for it either); it is recorded so that the cluster is
      done and the confirmation rate can be measured. Explicit NEGATIVE pairs come from confirm_reject.
    """
    if decision not in DECISIONS:
        raise DecisionError(f"unknown decision {decision!r}; expected one of {', '.join(DECISIONS)}.")
    ticked_set = set(ticked)
    unknown = ticked_set - set(members)
    if unknown:
        raise DecisionError(f"ticked uids not in this cluster: {', '.join(sorted(unknown))}.")
    chosen = [m for m in members if m in ticked_set]
    rest = [m for m in members if m not in ticked_set]
    if decision in ("wrong", "skip"):
        return []
    if decision == "confirm_reject":
        if not chosen or not rest:
            raise DecisionError("confirm-and-reject needs at least one ticked and one unticked member.")
        edges = [[*pair(a, b), POSITIVE] for a, b in combinations(chosen, 2)]
        edges += [[*pair(a, b), NEGATIVE] for a in chosen for b in rest]
        return edges
    if len(chosen) < 2:
        raise DecisionError(f"tick at least two members for '{DECISIONS[decision][0]}'.")
    kind = {"confirm": POSITIVE, "similar": SIMILAR, "duplicate": DUPLICATE}[decision]
    return [[*pair(a, b), kind] for a, b in combinations(chosen, 2)]

