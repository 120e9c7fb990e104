"""Images per second of `model.embed.embed_collection` (decode + resize on the host, network on the device).

Runs the whole embedding twice on the same collection: the first run includes XLA compilation, the
second is the steady-state figure. Without --collection it writes N random JPEGs (640x480) to a temporary
collection, so that decoding and resizing cost what real photographs cost.
Prints one JSON line and a human line.

    python benchmarks/embed_throughput.py --arch resnext101_32x8d --resolution 320 --images 256 --batch-size 32
"""

from __future__ import annotations

import csv
import json
import tempfile
import time
from pathlib import Path

import click
import jax
import numpy as np
from PIL import Image

from model.embed import embed_collection
from model.registry import build


def synthetic_collection(root: Path, n: int) -> Path:
    (root / "images").mkdir(parents=True)
    rng = np.random.default_rng(0)
    with open(root / "images.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["uid", "path"])
        for i in range(n):
            # Smooth random images (like photographs, unlike white noise) compress like real JPEGs.
            small = rng.integers(0, 256, (30, 40, 3), dtype=np.uint8)
            Image.fromarray(small).resize((640, 480), Image.Resampling.BICUBIC).save(root / f"images/{i}.jpg", quality=90)
            w.writerow([f"img{i}", f"images/{i}.jpg"])
    return root


@click.command()
@click.option("--arch", default="resnext101_32x8d", show_default=True)
@click.option("--resolution", default=320, show_default=True)
@click.option("--batch-size", default=32, show_default=True)
@click.option("--images", default=256, show_default=True, help="Size of the synthetic collection.")
@click.option("--collection", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--dtype", type=click.Choice(["float32", "bfloat16"]), default="float32", show_default=True)
def main(arch, resolution, batch_size, images, collection, dtype) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        coll = collection or synthetic_collection(Path(tmp) / "coll", images)
        model = build(arch, seed=0, dtype=dtype)
        t0 = time.perf_counter()
        embed_collection(coll, model, resolution=resolution, batch_size=batch_size, progress=False)
        first = time.perf_counter() - t0
        t0 = time.perf_counter()
        sig = embed_collection(coll, model, resolution=resolution, batch_size=batch_size, progress=False)
        steady = time.perf_counter() - t0
    n = len(sig) + len(sig.skipped)
    row = {
        "benchmark": "embed_throughput",
        "arch": arch,
        "resolution": resolution,
        "batch_size": batch_size,
        "dtype": dtype,
        "images": n,
        "backend": jax.default_backend(),
        "device": str(jax.devices()[0].device_kind),
        "first_run_s": round(first, 2),
        "steady_run_s": round(steady, 2),
        "images_per_s": round(n / steady, 2),
    }
    print(json.dumps(row))
    print(
        f"{arch} at {resolution}px, batch {batch_size}, {dtype} on {row['device']}: {row['images_per_s']} images/s "
        f"({n} images in {steady:.1f} s; first run with compilation {first:.1f} s)"
    )


if __name__ == "__main__":
    main()
