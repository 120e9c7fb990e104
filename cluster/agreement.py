"""Several annotators on one collection: where their decisions differ, and which decisions a policy keeps.

Every decision keeps its `annotator` and nothing is ever replaced (`cluster.annotations`): when two annotators
decide the same cluster, both decisions stay in the log and in force. This module compares them and chooses,
for `cluster accept --policy` and the annotation page's disagreements view. Pure functions over the log's
records; no web app.

- *The same cluster* is the same member set (as the review queue has it: a re-run that proposes the same images
  again is the same cluster), whatever its id. Additions from a search ("add") are claims about one image, not
  verdicts on a cluster: they are never compared, and every policy keeps them.
- Each annotator's verdict on a cluster is their latest decision in force on it.
- Two verdicts *disagree* when their decisions differ (confirm vs wrong) or when they assert different
  connections (other members ticked, other sub-groups of a split). The same decision asserting the same
  connections is agreement (two "skip" verdicts agree whatever was ticked: they assert nothing).

Policies (`choose`):
- `all` (the default; what `accept` always did): every decision in force counts; where they clash pair by pair,
  accept reports the contradiction and writes the first;
- `latest`: per cluster, only the most recent decision in force, whoever made it;
- `agreed`: per cluster, only the connections that every annotator who decided it asserted (their verdicts'
  common edges); a cluster one annotator decided counts as that annotator decided it;
- `annotator:NAME`: per cluster NAME decided, NAME's verdict only; the other clusters as under `all`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from cluster.annotations import ADD, members_key
from cluster.review import decision_label

POLICIES = ("all", "latest", "agreed", "annotator:NAME")
MAX_LISTED = 10  # members named per difference (the rest are counted)


class PolicyError(ValueError):
    """A policy that cannot be applied (unknown name, an annotator who decided nothing)."""


@dataclass
class Disagreement:
    """One cluster decided differently by several annotators: each one's verdict, and what differs."""

    cluster: int  # its id in the latest of these decisions
    size: int
    verdicts: list[dict]  # per annotator (first decided first), their latest decision in force on it
    differs: list[str]
    outcome: str = ""  # what a policy did with it (`choose`)

    def summary(self) -> dict:
        """The JSON the page's disagreements view shows."""
        return {
            "cluster": self.cluster,
            "size": self.size,
            "annotators": [{"annotator": v.get("annotator", "?"), "decision": v["decision"], "id": v["id"],
                            "time": v.get("time"), "ticked": len(v["ticked"]), "groups": v.get("groups")}
                           for v in self.verdicts],
            "differs": self.differs,
        }

    def line(self) -> str:
        who = ", ".join(f"{v.get('annotator', '?')}: {decision_label(v['decision'])}" for v in self.verdicts)
        out = f"  cluster {self.cluster} ({self.size} images): {who}; " + "; ".join(self.differs)
        return out + (f" -> {self.outcome}" if self.outcome else "")


@dataclass
class Choice:
    """What a policy kept: the decisions (possibly with fewer edges, under `agreed`) and the clusters it judged."""

    policy: str
    decisions: list[dict]
    disagreements: list[Disagreement] = field(default_factory=list)
    left_out: int = 0  # decisions in force that the policy did not take (whole)


def _edge_set(rec: dict) -> frozenset[tuple[str, str, str]]:
    return frozenset((*sorted((a, b)), t) for a, b, t in rec["edges"])


def by_cluster(active: Sequence[dict]) -> dict[bytes, list[dict]]:
    """The verdicts (decisions in force, additions left out) per cluster, in file order."""
    out: dict[tuple[str, ...], list[dict]] = {}
    for rec in active:
        if rec.get("decision") != ADD:
            out.setdefault(members_key(rec["members"]), []).append(rec)
    return out


def verdicts(decisions: Sequence[dict]) -> list[dict]:
    """Each annotator's latest decision among `decisions` (one cluster's), ordered by who decided first."""
    latest: dict[str, dict] = {}
    for rec in decisions:
        who = rec.get("annotator", "?")
        latest.pop(who, None)
        latest[who] = rec
    first = list(dict.fromkeys(r.get("annotator", "?") for r in decisions))
    return [latest[w] for w in first]


def _numbers(rec: dict, uids: set[str]) -> str:
    """Member numbers (1-based, in the cluster's order, as the page shows them) of some uids, at most MAX_LISTED."""
    ns = [i + 1 for i, u in enumerate(rec["members"]) if u in uids]
    shown = ", ".join(f"#{n}" for n in ns[:MAX_LISTED])
    return shown + (f" and {len(ns) - MAX_LISTED} more" if len(ns) > MAX_LISTED else "")


def _groups_text(rec: dict) -> str:
    return " | ".join(_numbers(rec, set(g)) for g in rec.get("groups") or [])


def differences(vs: Sequence[dict]) -> list[str]:
    """What differs between these verdicts on one cluster ([] when they agree)."""
    if len({v["decision"] for v in vs}) > 1:
        return ["decisions differ"]
    if len({_edge_set(v) for v in vs}) == 1:
        return []
    if vs[0]["decision"] == "split":
        return ["sub-groups differ: " + "; ".join(f"{v.get('annotator', '?')} {_groups_text(v)}" for v in vs)]
    out = []
    ticked = [set(v["ticked"]) for v in vs]
    common = set.intersection(*ticked)
    for v, t in zip(vs, ticked, strict=True):
        if t - common:
            out.append(f"ticked only by {v.get('annotator', '?')}: {_numbers(v, t - common)}")
    return out or ["connections differ"]


def _disagreement(decisions: Sequence[dict]) -> Disagreement | None:
    """One cluster's decisions (`by_cluster`) as a disagreement, or None when its annotators agree."""
    vs = verdicts(decisions)
    diff = differences(vs) if len(vs) > 1 else []
    if not diff:
        return None
    last = decisions[-1]
    return Disagreement(cluster=last["cluster"], size=len(last["members"]), verdicts=vs, differs=diff)


def disagreements(active: Sequence[dict]) -> list[Disagreement]:
    """The clusters that several annotators decided differently, in the order they were first decided."""
    return [d for decisions in by_cluster(active).values() if (d := _disagreement(decisions)) is not None]


def parse_policy(policy: str, active: Sequence[dict]) -> str:
    """The policy checked against the log: one of POLICIES; `annotator:NAME` must name someone who decided."""
    if policy in ("all", "latest", "agreed"):
        return policy
    if policy.startswith("annotator:"):
        name = policy.split(":", 1)[1]
        names = sorted({r.get("annotator", "?") for r in active})
        if name not in names:
            raise PolicyError(f"--policy {policy}: no decision in force was made by {name!r}; the annotators in "
                              f"annotations.jsonl are: {', '.join(names) or 'none'}.")
        return policy
    raise PolicyError(f"unknown --policy {policy!r}; use one of: {', '.join(POLICIES)}.")


def _agreed(vs: Sequence[dict], last: dict) -> dict | None:
    """`last` (the cluster's latest decision, always one of the verdicts) with only the edges every verdict asserts
    (None when they share none)."""
    common = frozenset.intersection(*(_edge_set(v) for v in vs))
    if not common:
        return None
    return {**last, "edges": [e for e in last["edges"] if (*sorted(e[:2]), e[2]) in common]}


def _pick(policy: str, decisions: list[dict]) -> list[dict]:
    """The decisions of one cluster that `policy` keeps (under `agreed`, one with the common edges)."""
    if policy == "all":
        return decisions
    if policy == "latest":
        return decisions[-1:]
    if policy == "agreed":
        one = _agreed(verdicts(decisions), decisions[-1])
        return [one] if one is not None else []
    name = policy.split(":", 1)[1]
    theirs = [r for r in decisions if r.get("annotator") == name]
    return theirs[-1:] if theirs else decisions


def _outcome(policy: str, kept: list[dict], vs: list[dict]) -> str:
    if policy == "all" or len(kept) > 1:
        return "all kept (pairs that clash are listed as contradictions)"
    if not kept:
        return "left out (no connection that all asserted)"
    if policy == "agreed":
        return f"kept the {len(kept[0]['edges'])} connection(s) all asserted"
    who = kept[0].get("annotator", "?")
    others = [v.get("annotator", "?") for v in vs if v["id"] != kept[0]["id"]]
    return f"took {who}'s \"{decision_label(kept[0]['decision'])}\", left out {', '.join(others)}'s"


def choose(active: Sequence[dict], policy: str = "all") -> Choice:
    """The decisions in force that `policy` keeps (module doc), in file order, and the clusters in disagreement
    with what the policy did with each."""
    policy = parse_policy(policy, active)
    kept_ids: dict[str, dict] = {}
    found = []
    for decisions in by_cluster(active).values():
        kept = _pick(policy, decisions)
        kept_ids.update((rec["id"], rec) for rec in kept)
        d = _disagreement(decisions)
        if d is not None:
            d.outcome = _outcome(policy, kept, d.verdicts)
            found.append(d)
    out = [kept_ids.get(r["id"], r) for r in active if r.get("decision") == ADD or r["id"] in kept_ids]
    return Choice(policy=policy, decisions=out, disagreements=found, left_out=len(active) - len(out))
