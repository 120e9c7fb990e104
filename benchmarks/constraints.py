"""One round of the expert's loop without retraining: do the expert's decisions improve the next proposals?

    python benchmarks/constraints.py --signatures RUN/signatures.npz --collection DIR [--method optics] [--no-centre]

The collection's connections are the ground truth (its pattern groups, `data.graph.pattern_groups`); the simulated
expert starts knowing none of them. Round 1 clusters the signatures (`cluster optics`'s defaults) and decides every
proposal from the truth (`decide`): a proposal is confirmed when most of its members share one pattern group
(POSITIVE along those members, NEGATIVE from each other member to the first of them: "confirm, reject the rest"),
else rejected ("wrong cluster": NEGATIVE along its members, as cluster/review.py writes it). Round 2 clusters the
same signatures again, with those decisions as constraints (`cluster.constraints`) and without them, and counts
what the expert is shown: proposals, confirmed, repeats of a rejected proposal (the same members again), repeats
of a confirmed one, and the confirmed proposals that are new. One JSON line per variant, then a human line.
Importable without grain/tfds/umap/flask.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from cluster.clustering import cluster_signatures  # noqa: E402
from cluster.config import COMMAND_DEFAULTS  # noqa: E402
from cluster.constraints import connection_constraints  # noqa: E402
from data.collection import NEGATIVE, POSITIVE, Connection, load_collection  # noqa: E402
from data.graph import pattern_groups  # noqa: E402


def decide(clusters: dict[int, list[str]], truth: dict[str, str]) -> tuple[list[Connection], dict[int, bool]]:
    """The simulated expert's connections for each proposal, and whether it was confirmed (module docstring).

    `truth`: uid -> pattern group (images without a group are in none). Confirmed: more than half of the members
    share one group."""
    out: list[Connection] = []
    confirmed: dict[int, bool] = {}
    for lab, members in sorted(clusters.items()):
        group, count = Counter(truth.get(u) for u in members).most_common(1)[0]
        ok = group is not None and count * 2 > len(members)
        confirmed[lab] = ok
        if ok:
            inside = [u for u in members if truth.get(u) == group]
            out += [Connection(a, b, POSITIVE, source="simulated") for a, b in zip(inside, inside[1:], strict=False)]
            out += [Connection(inside[0], u, NEGATIVE, source="simulated") for u in members if truth.get(u) != group]
        else:
            out += [Connection(a, b, NEGATIVE, source="simulated") for a, b in zip(members, members[1:], strict=False)]
    return out, confirmed


def _cluster(signatures: Path, args, constraints=None) -> dict[int, list[str]]:
    table, _ = cluster_signatures(signatures, COMMAND_DEFAULTS, method=args.method, centre=args.centre,
                                  max_eps_auto=True, eps_auto=True, constraints=constraints)  # fmt: skip
    return table.clusters()


def round_two(first: dict[int, list[str]], second: dict[int, list[str]], truth: dict[str, str],
              confirmed_first: dict[int, bool]) -> dict:
    """What the expert is shown in round 2, compared with what round 1 showed and how it was decided."""
    judged = {frozenset(m): confirmed_first[lab] for lab, m in first.items()}
    _, confirmed = decide(second, truth)
    sets = {lab: frozenset(m) for lab, m in second.items()}
    repeats_rejected = sum(1 for s in sets.values() if judged.get(s) is False)
    repeats_confirmed = sum(1 for s in sets.values() if judged.get(s) is True)
    n_conf = sum(confirmed.values())
    new_confirmed = sum(1 for lab, ok in confirmed.items() if ok and sets[lab] not in judged)
    return {"proposals": len(second), "confirmed": n_conf,
            "confirmation_rate": round(n_conf / len(second), 4) if second else None,
            "repeats_of_rejected": repeats_rejected, "repeats_of_confirmed": repeats_confirmed,
            "new_confirmed": new_confirmed}  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--signatures", type=Path, required=True)
    p.add_argument("--collection", type=Path, required=True, help="its connections are the ground truth")
    p.add_argument("--method", default="optics", choices=("optics", "dbscan", "hdbscan"))
    p.add_argument("--no-centre", dest="centre", action="store_false")
    args = p.parse_args(argv)
    truth = pattern_groups(load_collection(args.collection, quiet=True))
    first = _cluster(args.signatures, args)
    decisions, confirmed_first = decide(first, truth)
    r1 = sum(confirmed_first.values())
    base = {"bench": "constraints", "method": args.method, "centre": args.centre, "round1_proposals": len(first),
            "round1_confirmed": r1, "decisions": len(decisions)}  # fmt: skip
    results = {}
    # without constraints, round 2 clusters the same signatures with the same settings: round 1's proposals again
    for variant, second in (("without", first), ("with", _cluster(args.signatures, args, connection_constraints(decisions)))):
        results[variant] = round_two(first, second, truth, confirmed_first)
        print(json.dumps({**base, "round2": variant, **results[variant]}))
    w, o = results["with"], results["without"]
    print(f"round 1: {r1} of {len(first)} proposals confirmed; round 2 without constraints: {o['confirmed']} of "
          f"{o['proposals']} confirmed ({o['repeats_of_rejected']} rejected ones again, {o['new_confirmed']} new); "
          f"with: {w['confirmed']} of {w['proposals']} ({w['repeats_of_rejected']} rejected ones again, "
          f"{w['new_confirmed']} new)")


if __name__ == "__main__":
    main()
