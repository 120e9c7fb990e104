"""The expert's loop, simulated: propose -> decide (from ground truth, with errors) -> accept -> retrain -> recluster.

    python benchmarks/expert_loop.py --rounds 3 [--collection DIR] [--known-fraction 0.3] [--noise 0.05]

prints one JSON line per round (`round`, `confirmation_rate`, `new_pairs`, `test_mAP`, `wall_s`, and the detail
below), then a human line per round. Without `--collection` it builds the bundled demo collection itself
(`python -m data demo`, offline).

What is simulated, and why so:
- The ground truth is the collection's pattern groups (connections.csv, POSITIVE and DUPLICATE links). The loop
  starts from a collection in which only part of it is known: every val and test group stays known (the held-out
  retrieval figure needs them, and training never sees them), and `--known-fraction` of the train groups; the other
  train groups are hidden, for the expert to find. NEGATIVE rows are kept.
- Each round trains (`python -m train`, round 1 from `--weights`, later rounds `--resume-from` the previous round,
  as a user would), clusters the exported signatures (`python -m cluster optics`), and the simulated expert judges
  the proposals in the page's order (`cluster.review.order_clusters`: most new pairs first), those with a new pair,
  at most `--budget` of them. Their decisions are written to annotations.jsonl exactly as the annotation page
  writes them (`cluster.annotations.decision_record` with `cluster.review.implied_edges`), and `python -m cluster
  accept` turns them into connections.csv rows.
- The expert: a cluster in which at least two members share a true pattern group is confirmed (all members of the
  largest such group ticked; "confirm" when that is every member, else "confirm, reject the rest"), any other is
  "wrong cluster". With probability `--noise` a verdict is flipped (a confirmation becomes "wrong", a "wrong"
  becomes a confirmation of every member), drawn from a generator seeded by the cluster's members, so one
  cluster gets one verdict however often it is shown.
- `confirmation_rate` = proposals confirmed / proposals judged (the figure the original thesis reports per round:
  0.41, 0.44, 0.51); `new_pairs` = POSITIVE pairs the round's accept added (`true_new_pairs`: those right by the
  ground truth); `new_images` = images that had no POSITIVE connection before the round and have one after.
- Rows accept adds between images outside the held-out groups are pinned to `split=train` (what a curator does to
  train on what was found and keep the test set fixed): `test_mAP` is then over the same test groups every round.
- With constraints (the default; `--no-constraints` to leave them out), each round also clusters the same signatures without them and
  judges those proposals the same way (`confirmation_rate_without_constraints`): the effect of the expert's
  earlier decisions on the next proposals, before any retraining. The loop follows the constrained proposals.

Cost: each round is one training run of the chosen preset (demo: ~2-4 minutes on a 2-core CPU), a clustering of
n signatures and an accept over the connections: time grows with the training steps, i.e. with the known
POSITIVE pairs (annotated NEGATIVE pairs add no steps), and memory with the collection.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import replace
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from cluster.annotations import decision_record, record_line  # noqa: E402
from cluster.clusters_file import file_sha256, read_clusters  # noqa: E402
from cluster.review import implied_edges, new_pairs_by_cluster, order_clusters  # noqa: E402
from data.collection import (  # noqa: E402
    ANNOTATIONS_FILE,
    CONNECTIONS_FILE,
    NEGATIVE,
    POSITIVE,
    load_collection,
    read_connections,
    write_connections,
)
from data.graph import pattern_groups  # noqa: E402

CONFIRMING = ("confirm", "confirm_reject")


def run(cmd: list[str], log: Path) -> float:
    """Run one of the tool's commands, its output appended to `log`; seconds taken. A failure stops the loop."""
    t0 = time.perf_counter()
    with open(log, "ab") as out:
        out.write(("$ " + " ".join(cmd) + "\n").encode())
        out.flush()
        rc = subprocess.call(cmd, cwd=REPO, stdout=out, stderr=subprocess.STDOUT)
    if rc != 0:
        sys.exit(f"expert_loop: `{' '.join(cmd)}` failed (exit {rc}); its output is in {log}")
    return time.perf_counter() - t0


def truth_groups(collection_dir: Path) -> dict[str, str]:
    """uid -> its true pattern group (POSITIVE and DUPLICATE links of the full collection, `data.graph`)."""
    return pattern_groups(load_collection(collection_dir, quiet=True), with_duplicates=True)


def _keep_group(name: str, fraction: float, seed: int) -> bool:
    h = hashlib.sha256(f"{seed}:{name}".encode()).digest()
    return int.from_bytes(h[:8], "big") / 2**64 < fraction


def hide_train_groups(full: Path, work: Path, truth: dict[str, str], fraction: float,
                      seed: int) -> tuple[Path, dict, set[str]]:
    """A copy of the collection in which only `fraction` of the train groups are known (module doc); also the
    images of the held-out (val, test) groups."""
    coll = work / "collection"
    coll.mkdir(parents=True)
    shutil.copy2(full / "images.csv", coll / "images.csv")
    os.symlink((full / "images").resolve(), coll / "images")
    rows = read_connections(full / CONNECTIONS_FILE)
    held = {truth[u] for c in rows if c.split in ("val", "test") for u in (c.a, c.b) if u in truth}
    kept, hidden_groups = [], set()
    for c in rows:
        g = truth.get(c.a)
        if c.type == NEGATIVE or g in held or g is None or _keep_group(g, fraction, seed):
            kept.append(c)
        else:
            hidden_groups.add(g)
    write_connections(coll / CONNECTIONS_FILE, kept)
    groups = Counter(truth.values())
    held_images = sorted(u for u, g in truth.items() if g in held)
    info = {"groups": len(groups), "held_out_groups": len(held), "hidden_groups": len(hidden_groups),
            "hidden_pairs": sum(groups[g] * (groups[g] - 1) // 2 for g in hidden_groups),
            "known_rows": len(kept), "rows": len(rows)}
    return coll, info, set(held_images)


def decide(members: list[str], truth: dict[str, str], noise: float, seed: int) -> tuple[str, list[str]]:
    """The simulated expert's verdict on one proposal: (decision, ticked members) (module doc)."""
    counts = Counter(truth[u] for u in members if u in truth)
    best, c = counts.most_common(1)[0] if counts else (None, 0)
    if c >= 2:
        decision, ticked = ("confirm" if c == len(members) else "confirm_reject"), [u for u in members if truth.get(u) == best]
    else:
        decision, ticked = "wrong", []
    key = hashlib.sha256((f"{seed}:" + ",".join(sorted(members))).encode()).digest()
    if np.random.default_rng(int.from_bytes(key[:8], "big")).random() < noise:
        decision, ticked = ("wrong", []) if decision in CONFIRMING else ("confirm", list(members))
    return decision, ticked


def known_pairs(coll: Path) -> set[tuple[str, str]]:
    return {c.pair for c in read_connections(coll / CONNECTIONS_FILE)}


def judge(clusters_csv: Path, coll: Path, truth: dict[str, str], args) -> list[dict]:
    """The decision records for the proposals the expert looks at this round (at most --budget, news only)."""
    table = read_clusters(clusters_csv)
    clusters = table.clusters()
    known = known_pairs(coll)
    news = new_pairs_by_cluster(clusters, known)
    shown = [c for c in order_clusters(clusters, known) if news[c] > 0][: args.budget]
    sha = file_sha256(clusters_csv)
    records = []
    for cid in shown:
        members = clusters[cid]
        decision, ticked = decide(members, truth, args.noise, args.seed)
        records.append(decision_record(
            cluster=cid, decision=decision, members=members, ticked=ticked,
            edges=implied_edges(decision, members, ticked), clusters_file=str(clusters_csv),
            clusters_sha256=sha, annotator="simulated-expert"))
    return records


def rate(records: list[dict]) -> float | None:
    return sum(r["decision"] in CONFIRMING for r in records) / len(records) if records else None


def positive_state(coll: Path) -> tuple[set[tuple[str, str]], set[str]]:
    pos = {c.pair for c in read_connections(coll / CONNECTIONS_FILE) if c.type == POSITIVE}
    return pos, {u for p in pos for u in p}


def test_map(run_dir: Path) -> tuple[float, float]:
    ev = json.loads((run_dir / "eval.json").read_text())
    row = ev["trained"] if ev.get("selected") == "trained" else ev["start"]
    return row["test"]["mAP"], row["val"]["mAP"]


def optics_cmd(py: str, sig: Path, out: Path, coll: Path, args, constraints: bool | None) -> list[str]:
    cmd = [py, "-m", "cluster", "optics", str(sig), "--out", str(out), "--min-samples", str(args.min_samples)]
    cmd += args.optics_arg
    if constraints is not None:
        cmd += ["--collection", str(coll), "--constraints" if constraints else "--no-constraints"]
    return cmd


def pin_found_to_train(coll: Path, held_out: set[str]) -> None:
    """Rows accept added between images outside the held-out groups get `split=train`: the curator trains on
    what was found and keeps the test set fixed, so that rounds compare (left alone, `data.splits` would send a
    third of the newly found groups to val and test, and each round's test mAP would be over other groups)."""
    rows = read_connections(coll / CONNECTIONS_FILE)
    changed = [replace(c, split="train") if not c.split and (c.source or "").startswith("annotation:")
               and c.a not in held_out and c.b not in held_out else c for c in rows]
    if changed != rows:
        write_connections(coll / CONNECTIONS_FILE, changed)


def one_round(r: int, work: Path, coll: Path, truth: dict[str, str], held_out: set[str], args, py: str,
              log: Path) -> dict:
    t0 = time.perf_counter()
    run_dir = work / f"run{r}"
    start = ["--weights", args.weights] if r == 1 else ["--resume-from", str(work / f"run{r - 1}")]
    train = [py, "-m", "train", "run", "--collection", str(coll), "--out", str(run_dir), "--no-progress",
             "--seed", str(args.seed), *start, *(["--preset", args.preset] if r == 1 else [])]
    for kv in args.set:
        train += ["--set", kv]
    train_s = run(train, log)
    test_mAP, val_mAP = test_map(run_dir)
    sig = run_dir / "signatures.npz"
    constrained = args.constraints
    t1 = time.perf_counter()
    clusters_csv = work / f"clusters{r}.csv"
    run(optics_cmd(py, sig, clusters_csv, coll, args, True if constrained else None), log)
    cluster_s = time.perf_counter() - t1
    records = judge(clusters_csv, coll, truth, args)
    extra = {}
    if constrained:
        plain = work / f"clusters{r}-unconstrained.csv"
        run(optics_cmd(py, sig, plain, coll, args, False), log)
        other = judge(plain, coll, truth, args)
        extra = {"confirmation_rate_without_constraints": rate(other), "judged_without_constraints": len(other)}
    pos0, img0 = positive_state(coll)
    with open(coll / ANNOTATIONS_FILE, "ab") as f:
        for rec in records:
            f.write(record_line(rec))
    run([py, "-m", "cluster", "accept", "--collection", str(coll)], log)
    pin_found_to_train(coll, held_out)
    pos1, img1 = positive_state(coll)
    added = pos1 - pos0
    decisions = Counter(rec["decision"] for rec in records)
    return {
        "round": r, "confirmation_rate": rate(records), "judged": len(records),
        "decisions": dict(sorted(decisions.items())), "new_pairs": len(added),
        "true_new_pairs": sum(truth.get(a) is not None and truth.get(a) == truth.get(b) for a, b in added),
        "new_images": len(img1 - img0), "positive_pairs": len(pos1), "test_mAP": test_mAP, "val_mAP": val_mAP,
        "constraints": constrained, **extra, "train_s": round(train_s, 1), "cluster_s": round(cluster_s, 1),
        "wall_s": round(time.perf_counter() - t0, 1),
    }


def human(row: dict) -> str:
    def f(x):
        return "-" if x is None else f"{x:.2f}"
    without = f"  (without constraints {f(row['confirmation_rate_without_constraints'])})" \
        if "confirmation_rate_without_constraints" in row else ""
    return (f"round {row['round']}: confirmed {f(row['confirmation_rate'])} of {row['judged']} proposals{without}, "
            f"{row['new_pairs']} new pairs ({row['true_new_pairs']} right), {row['new_images']} new images, "
            f"test mAP {row['test_mAP']:.3f}, {row['wall_s']:.0f} s")


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--collection", type=Path, help="A collection with its ground truth [default: build the demo].")
    p.add_argument("--demo-arg", action="append", default=[],
                   help="Extra `data demo` argument when the demo is built (repeatable), e.g. --demo-arg=--sources=30.")
    p.add_argument("--work", type=Path, help="Working folder (kept) [default: a temporary one, removed].")
    p.add_argument("--known-fraction", type=float, default=0.3, help="Share of the train groups known at the start.")
    p.add_argument("--noise", type=float, default=0.05, help="Probability that the expert's verdict is flipped.")
    p.add_argument("--budget", type=int, default=40, help="Proposals judged per round, at most.")
    p.add_argument("--preset", default="demo")
    p.add_argument("--weights", default="random")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="Training override (repeatable).")
    p.add_argument("--min-samples", type=int, default=2)
    p.add_argument("--optics-arg", action="append", default=[], help="Extra `cluster optics` argument (repeatable).")
    p.add_argument("--no-constraints", dest="constraints", action="store_false",
                   help="Cluster without the expert's constraints (and do not compare).")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", type=Path, help="Also write the JSON lines to this file.")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse(argv)
    py = sys.executable
    work = args.work or Path(tempfile.mkdtemp(prefix="expert-loop-"))
    work.mkdir(parents=True, exist_ok=True)
    log = work / "commands.log"
    try:
        full = args.collection
        if full is None:
            full = work / "full"
            if not (full / "images.csv").exists():
                run([py, "-m", "data", "demo", str(full), *args.demo_arg], log)
        truth = truth_groups(full)
        coll = work / "collection"
        if coll.exists():
            sys.exit(f"expert_loop: {coll} exists already; give an empty --work folder")
        coll, info, held_out = hide_train_groups(full, work, truth, args.known_fraction, args.seed)
        load_collection(coll, quiet=True)  # a collection the tool reads, before any round starts
        print(json.dumps({"setup": info, "known_fraction": args.known_fraction, "noise": args.noise,
                          "budget": args.budget, "preset": args.preset, "rounds": args.rounds}), flush=True)
        rows = []
        for r in range(1, args.rounds + 1):
            row = one_round(r, work, coll, truth, held_out, args, py, log)
            rows.append(row)
            print(json.dumps(row), flush=True)
            if args.json:
                with open(args.json, "a") as f:
                    f.write(json.dumps(row) + "\n")
        for row in rows:
            print(human(row))
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
