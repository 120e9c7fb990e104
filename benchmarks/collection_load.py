"""Reading a collection of an archive's size: `data.collection.load_collection` against the CSV floor.

    python benchmarks/collection_load.py                      # 100,000 and 1,000,000 images
    python benchmarks/collection_load.py --images 300000 --links-per-image 0.2

Every command starts by reading images.csv and connections.csv (`data/collection.py`), so at 10^6 images its
cost is paid by `data check`, `train`, `model embed`, `cluster annotate`, `accept`, `report`... Each size runs
three ways, each in a fresh Python process (its time and its peak RSS are its own):
- `floor`: Python's csv.reader over both files, rows kept as lists: what any reader of these files pays;
- `library`: `load_collection` called from a Python program (the collector as that program leaves it);
- `command`: the same where a command line owns the process (`data.gc_policy.for_this_process()`, as
  `python -m data|model|train|cluster` do): what the collection was read into is frozen, not walked again.
Rows: uid, path and four metadata columns (a title with a comma, quoted), `--links-per-image` x images
POSITIVE connections between random images. One JSON line per size and way, then a human line per size.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import random
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

_CHILD = r"""
import csv, json, resource, sys, time
way, folder = sys.argv[1], sys.argv[2]
t0 = time.perf_counter()
if way == "floor":
    n = 0
    for name in ("images.csv", "connections.csv"):
        with open(f"{folder}/{name}", newline="", encoding="utf-8") as f:
            rows = list(csv.reader(f))
            n += len(rows) - 1
else:
    from data.gc_policy import for_this_process
    if way == "command":
        for_this_process()
    from data.collection import load_collection
    t0 = time.perf_counter()
    c = load_collection(folder, quiet=True)
    n = len(c.images) + len(c.connections)
print(json.dumps({"seconds": time.perf_counter() - t0, "rows": n,
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def write_collection(folder: Path, images: int, links: int, seed: int = 0) -> None:
    rng = random.Random(seed)
    with open(folder / "images.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["uid", "path", "title", "artist", "date", "inventory"])
        for i in range(images):
            w.writerow([f"cini{i:07d}", f"img/{i // 1000:04d}/cini{i:07d}.jpg",
                        f"Madonna col Bambino, fototeca n. {i}", "Anonimo veneziano", 1400 + i % 300, f"INV-{i}"])
    with open(folder / "connections.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["a", "b", "type"])
        for _ in range(links):
            w.writerow([f"cini{rng.randrange(images):07d}", f"cini{rng.randrange(images):07d}", "POSITIVE"])


def run_way(way: str, folder: Path) -> dict:
    proc = subprocess.run([sys.executable, "-c", _CHILD, way, str(folder)], cwd=ROOT, capture_output=True,
                          text=True, check=True)  # fmt: skip
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", default="100000,1000000", help="comma-separated sizes")
    ap.add_argument("--links-per-image", type=float, default=0.2)
    args = ap.parse_args()
    for images in (int(s) for s in args.images.split(",")):
        links = int(images * args.links_per_image)
        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(tmp)
            write_collection(folder, images, links)
            mb = sum(p.stat().st_size for p in folder.iterdir()) / 2**20
            got = {way: run_way(way, folder) for way in ("floor", "library", "command")}
        for way, r in got.items():
            print(json.dumps({"bench": "collection_load", "images": images, "connections": links, "csv_mb": round(mb, 1),
                              "way": way, "seconds": round(r["seconds"], 2), "peak_rss_mb": round(r["peak_rss_mb"]),
                              "machine": f"{platform.machine()} {os.cpu_count()} cpus"}))  # fmt: skip
        f, lib, cmd = (got[w]["seconds"] for w in ("floor", "library", "command"))
        print(f"{images:,} images + {links:,} connections ({mb:.0f} MB of CSV): csv.reader floor {f:.2f} s, "
              f"load_collection {lib:.2f} s ({lib / f:.1f}x the floor), in a command {cmd:.2f} s ({cmd / f:.1f}x); "
              f"peak RSS {got['command']['peak_rss_mb'] / 1024:.2f} GB")


if __name__ == "__main__":
    main()
