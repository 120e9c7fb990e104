"""Report and annotation at archive scale: a synthetic collection of images.csv rows only (no image files).

    python benchmarks/review_scale.py [--images 1000000] [--clusters 100000] [--big 50000] [--links 200000]
                                      [--old-size 5000] [--stages order,report,app,decide,accept,old]
                                      [--keep DIR]

The collection: `--images` rows in images.csv (paths to files that do not exist: every thumbnail is the
"unreadable" placeholder, so nothing here measures decoding), one cluster of `--big` members, `--clusters` - 1
clusters of 5 members, the rest noise; `--links` known connections: a POSITIVE chain through the first 1,000
members of the big cluster, one POSITIVE link inside every small cluster, the others between random images.

Each stage runs in a fresh Python process that, like the command line, owns it (`data.gc_policy`), so its
`peak_rss_mb` is its own (getrusage's maximum resident set of that process: interpreter, imports and the
collection's load included; `load_seconds` is the load alone):
- `order`: the review order of every cluster (`cluster.review.order_clusters`);
- `report`: `cluster.report.build_report` (the whole page: checks, gallery, thumbnails of what it shows);
- `app`: the annotation app: `create_app`, `GET /api/state`, then the middle page of the big cluster;
- `decide`: confirm the whole big cluster through the app's `POST /api/decision` (sent as `unticked: []`);
- `accept`: then `cluster accept`'s work (`accept_annotations`: that decision's rows into connections.csv);
- `old`: the code before issue 14 (pairs enumerated) on one cluster of `--old-size` members, next to today's:
  counting its new pairs and the edges of a confirm.
Prints one JSON line per stage, then a human line. Imports neither flask (the `app` and `accept` children do)
nor grain, tfds or umap.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from itertools import combinations
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SMALL = 5  # members of every cluster but the big one


def build(root: Path, n: int, n_clusters: int, big: int, n_links: int, seed: int = 0) -> dict:
    """Write images.csv, connections.csv and clusters.csv; returns the sizes."""
    from cluster.clusters_file import ClusterTable, write_clusters

    if big + SMALL * (n_clusters - 1) > n:
        raise SystemExit(f"--images {n} is too few for a cluster of {big} and {n_clusters - 1} of {SMALL}.")
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    uids = [f"img{i:07d}" for i in range(n)]
    with open(root / "images.csv", "w", encoding="utf-8") as f:
        f.write("uid,path,title,author\n")
        f.writelines(f"{u},images/{u}.jpg,Print {i},Workshop {i % 97}\n" for i, u in enumerate(uids))
    labels = np.full(n, -1, np.int64)
    labels[:big] = 0
    small_end = big + SMALL * (n_clusters - 1)
    labels[big:small_end] = 1 + np.arange(n_clusters - 1).repeat(SMALL)
    links = [(uids[i], uids[i + 1]) for i in range(min(big, 1000) - 1)]
    links += [(uids[big + SMALL * c], uids[big + SMALL * c + 1]) for c in range(n_clusters - 1)]
    rest = max(0, n_links - len(links))
    a, b = rng.integers(0, n, rest), rng.integers(0, n, rest)
    links += [(uids[x], uids[y]) for x, y in zip(a.tolist(), b.tolist(), strict=True) if x != y]
    with open(root / "connections.csv", "w", encoding="utf-8") as f:
        f.write("a,b,type\n")
        f.writelines(f"{x},{y},POSITIVE\n" for x, y in dict.fromkeys(tuple(sorted(p)) for p in links))
    order = rng.permutation(n)
    write_clusters(root / "clusters.csv", ClusterTable(
        uids=uids, labels=labels, order=order, reachability=np.full(n, 0.1), core_distance=np.full(n, 0.05),
        params={"method": "benchmark"}))
    return {"images": n, "clusters": n_clusters, "big": big, "links": len(links)}


# -- children: one stage each, in a fresh process -----------------------------------------------------------------
def _peak_mb() -> int:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)


def child_order(root: Path, _args) -> dict:
    from cluster.clusters_file import read_clusters
    from cluster.review import order_clusters
    from data.collection import load_collection

    t0 = time.perf_counter()
    coll = load_collection(root, quiet=True)
    clusters = read_clusters(root / "clusters.csv").clusters()
    known = {c.pair for c in coll.connections if c.a != c.b}
    t1 = time.perf_counter()
    queue = order_clusters(clusters, known)
    return {"load_seconds": round(t1 - t0, 2), "seconds": round(time.perf_counter() - t1, 2), "first": queue[0]}


def child_report(root: Path, _args) -> dict:
    from cluster.report import ReportInputs, build_report

    t0 = time.perf_counter()
    page = build_report(ReportInputs(collection=root, clusters=root / "clusters.csv"))
    return {"seconds": round(time.perf_counter() - t0, 2), "page_mb": round(len(page) / 2**20, 2),
            "cut": "showing 8 of" in page}


def child_app(root: Path, _args) -> dict:
    from cluster.annotate.app import create_app

    t0 = time.perf_counter()
    client = create_app(root, root / "clusters.csv", "bench").test_client()
    t1 = time.perf_counter()
    state = client.get("/api/state")
    t2 = time.perf_counter()
    middle = max(1, state.get_json()["cluster"]["pages"] // 2)
    page = client.get(f"/api/cluster/0?page={middle}")
    t3 = time.perf_counter()
    assert state.status_code == 200 and page.status_code == 200, page.get_json()["error"]
    return {"load_seconds": round(t1 - t0, 2), "state_seconds": round(t2 - t1, 3), "page_seconds": round(t3 - t2, 3),
            "seconds": round(t3 - t0, 2), "page": middle, "state_kb": round(len(state.data) / 1024), "page_kb": round(len(page.data) / 1024)}


def child_decide(root: Path, _args) -> dict:
    from cluster.annotate.app import create_app

    client = create_app(root, root / "clusters.csv", "bench").test_client()
    t0 = time.perf_counter()
    r = client.post("/api/decision", json={"cluster": 0, "decision": "confirm", "unticked": []})
    t1 = time.perf_counter()
    assert r.status_code == 200, r.get_json()
    page = client.get("/api/cluster/0?page=2")  # the decided cluster, with its annotated links
    t2 = time.perf_counter()
    assert page.status_code == 200
    return {"seconds": round(t1 - t0, 2), "edges": r.get_json()["n_edges"], "page_after_seconds": round(t2 - t1, 3),
            "log_mb": round((root / "annotations.jsonl").stat().st_size / 2**20, 1)}


def child_accept(root: Path, _args) -> dict:
    from cluster.accept import accept_annotations

    t0 = time.perf_counter()
    report = accept_annotations(root)
    return {"seconds": round(time.perf_counter() - t0, 2), "added": sum(report.added.values()),
            "connections_mb": round((root / "connections.csv").stat().st_size / 2**20, 1)}


def _old_new_pairs(members: list[str], known: set[tuple[str, str]]) -> int:
    return sum(1 for a, b in combinations(members, 2) if (min(a, b), max(a, b)) not in known)


def _old_confirm_edges(members: list[str]) -> list[list[str]]:
    return [[min(a, b), max(a, b), "POSITIVE"] for a, b in combinations(members, 2)]


def child_old(_root: Path, args) -> dict:
    """Before issue 14 against today, on one cluster of --old-size members (runs on its own, no collection)."""
    from cluster.review import implied_edges, new_pairs

    k = args.old_size
    members = [f"m{i:07d}" for i in range(k)]
    known = {(members[i], members[i + 1]) for i in range(k - 1)}
    out = {"members": k}
    for name, fn in (("new_pairs", lambda: new_pairs(members, known)),
                     ("confirm_edges", lambda: len(implied_edges("confirm", members, members)))):
        t0 = time.perf_counter()
        out[f"{name}_value"] = fn()
        out[f"{name}_seconds"] = round(time.perf_counter() - t0, 3)
    base = _peak_mb()
    t0 = time.perf_counter()
    out["old_new_pairs_value"] = _old_new_pairs(members, known)
    out["old_new_pairs_seconds"] = round(time.perf_counter() - t0, 2)
    t0 = time.perf_counter()
    out["old_confirm_edges_value"] = len(_old_confirm_edges(members))
    out["old_confirm_edges_seconds"] = round(time.perf_counter() - t0, 2)
    out["old_confirm_peak_rss_mb_above_start"] = _peak_mb() - base
    out["seconds"] = round(out["old_new_pairs_seconds"] + out["old_confirm_edges_seconds"], 2)
    return out


CHILDREN = {"order": child_order, "report": child_report, "app": child_app, "decide": child_decide,
            "accept": child_accept, "old": child_old}


def _run_child(stage: str, root: Path, args) -> dict:
    cmd = [sys.executable, __file__, "--child", stage, "--keep", str(root), "--old-size", str(args.old_size)]
    t0 = time.perf_counter()
    res = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if res.returncode != 0:
        return {"stage": stage, "error": res.stderr.strip().splitlines()[-1:] or [f"exit {res.returncode}"]}
    rec = json.loads(res.stdout.strip().splitlines()[-1])
    rec["process_seconds"] = round(time.perf_counter() - t0, 2)
    return rec


def _human(rec: dict) -> str:
    rest = ", ".join(f"{k}={v}" for k, v in rec.items() if k not in ("stage", "seconds", "peak_rss_mb"))
    return f"{rec['stage']}: {rec.get('seconds')} s, peak RSS {rec.get('peak_rss_mb')} MB; {rest}"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=1_000_000)
    p.add_argument("--clusters", type=int, default=100_000)
    p.add_argument("--big", type=int, default=50_000)
    p.add_argument("--links", type=int, default=200_000)
    p.add_argument("--old-size", type=int, default=5_000)
    p.add_argument("--stages", default="order,report,app,decide,accept,old")
    p.add_argument("--keep", type=Path, default=None, help="build the collection here and keep it")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        from data.gc_policy import for_this_process

        for_this_process()  # as the stage's command line does (`python -m cluster ...`: data.gc_policy)
        rec = {"stage": args.child, **CHILDREN[args.child](args.keep, args), "peak_rss_mb": _peak_mb()}
        print(json.dumps(rec), flush=True)
        return
    root = args.keep or Path(tempfile.mkdtemp(prefix="review-scale-"))
    try:
        t0 = time.perf_counter()
        sizes = build(root, args.images, args.clusters, args.big, args.links)
        base = {"machine": f"{platform.machine()} {os.cpu_count()} cpus, python {platform.python_version()}", **sizes}
        print(json.dumps({"stage": "build", "seconds": round(time.perf_counter() - t0, 2), **base}), flush=True)
        for stage in args.stages.split(","):
            rec = {**_run_child(stage, root, args), **{k: v for k, v in sizes.items() if stage != "old"}}
            print(json.dumps(rec), flush=True)
            print(_human(rec), flush=True)
    finally:
        if args.keep is None:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
