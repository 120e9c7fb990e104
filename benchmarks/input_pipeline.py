"""Input pipeline throughput: grain triplet batches per worker count vs a plain single-process PIL loop.

Both do the same work per image (read, decode, train-time augmentation at resolution R, ImageNet
normalisation, stacking into 3N-image batches); the PIL loop reads the collection's files one by one,
the pipeline reads the prepared ArrayRecord dataset. Worker start-up is timed apart (first batch)
and left out of the rate. One JSON line per measurement, then a human line.

    python benchmarks/input_pipeline.py [--collection DIR] [--resolution 320] [--workers 0,1,2]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from data.augment import AugmentConfig, augment  # noqa: E402
from data.collection import load_collection  # noqa: E402
from data.demo import build_demo  # noqa: E402
from data.image import decode_rgb  # noqa: E402
from data.pipeline import open_prepared, triplet_dataset  # noqa: E402
from data.prepare import prepare_collection  # noqa: E402
from data.preprocess import normalize  # noqa: E402


def pil_loop(coll, triplets: np.ndarray, resolution: int, batch_size: int, cfg: AugmentConfig, seed: int) -> float:
    """Images per second of the naive loop (no warm-up needed: nothing to start)."""
    rng = np.random.default_rng(seed)
    paths = [coll.image_path(r) for r in coll.images]
    n_batches = len(triplets) // batch_size
    t0 = time.perf_counter()
    for b in range(n_batches):
        rows = triplets[b * batch_size : (b + 1) * batch_size]
        views = [
            np.asarray(augment(decode_rgb(paths[i]), resolution, cfg, rng), np.uint8) for i in rows.T.reshape(-1)
        ]
        batch = normalize(np.stack(views))
        assert batch.shape == (3 * batch_size, resolution, resolution, 3)
    return 3 * batch_size * n_batches / (time.perf_counter() - t0)


def grain_rate(src, triplets, resolution, batch_size, cfg, seed, workers, output) -> tuple[float, float, int]:
    t0 = time.perf_counter()
    it = triplet_dataset(src, triplets, resolution=resolution, batch_size=batch_size, seed=seed, augment=cfg,
                         shuffle=True, workers=workers, output=output)
    try:
        next(it)
        startup = time.perf_counter() - t0
        t1 = time.perf_counter()
        n = 0
        for batch in it:
            assert batch["images"].shape == (3 * batch_size, resolution, resolution, 3)
            n += 1
        rate = 3 * batch_size * n / (time.perf_counter() - t1)
    finally:
        if hasattr(it, "close"):
            it.close()
    return rate, startup, n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--collection", type=Path, default=None, help="Default: the demo, built in a temp folder.")
    ap.add_argument("--resolution", type=int, default=320)
    ap.add_argument("--batch-size", type=int, default=4, help="Triplets per batch (the original used 4).")
    ap.add_argument("--batches", type=int, default=30, help="Timed batches per measurement.")
    ap.add_argument("--workers", default="0,1,2")
    ap.add_argument("--max-side", type=int, default=512)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--output", choices=("float32", "uint8"), default="float32",
                    help="uint8 leaves normalisation to the accelerator (4x less data between processes).")
    args = ap.parse_args()

    tmp = tempfile.TemporaryDirectory()
    root = args.collection
    if root is None:
        root = Path(tmp.name) / "demo"
        build_demo(root, seed=0)
    coll = load_collection(root)
    prepared = prepare_collection(coll, max_side=args.max_side, out=Path(tmp.name) / "prepared")
    src = open_prepared(prepared.path)
    rng = np.random.default_rng(args.seed)
    n_trip = args.batch_size * (args.batches + 1)
    triplets = src.indices[rng.integers(0, len(src), (n_trip, 3))]
    cfg = AugmentConfig()
    common = {"bench": "input_pipeline", "resolution": args.resolution, "batch_triplets": args.batch_size,
              "images": len(src), "cpus": os.cpu_count(), "collection": str(root)}

    base = pil_loop(coll, triplets[args.batch_size :], args.resolution, args.batch_size, cfg, args.seed)
    print(json.dumps({**common, "mode": "pil_loop", "workers": 0, "images_per_s": round(base, 1)}), flush=True)
    human = [f"PIL loop {base:.1f} img/s"]
    for w in [int(x) for x in args.workers.split(",")]:
        rate, startup, n = grain_rate(src, triplets, args.resolution, args.batch_size, cfg, args.seed, w, args.output)
        print(json.dumps({**common, "mode": "grain", "workers": w, "images_per_s": round(rate, 1),
                          "ratio_vs_pil": round(rate / base, 2), "output": args.output, "startup_s": round(startup, 2),
                          "timed_batches": n}), flush=True)
        human.append(f"grain workers={w}: {rate:.1f} img/s ({rate / base:.2f}x, start-up {startup:.1f}s)")
    print(f"input pipeline at R={args.resolution}, {os.cpu_count()} CPUs: " + "; ".join(human))
    tmp.cleanup()


if __name__ == "__main__":
    main()
