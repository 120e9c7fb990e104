"""Thumbnails and `data check` on full-size archive scans, per 1,000 images (issue 14, item 5).

    python benchmarks/thumbs_check.py [--n 150] [--width 4000] [--height 3000] [--workers 2] [--keep DIR]

Generates N scans (RGB JPEGs, quality 90, WIDTH x HEIGHT: paper-coloured smooth gradients, ink shapes and
grain, so each file is a few MB like a real scan) in a temporary folder, then times, on that collection:
- `thumbs cold, full decode`: the way thumbnails were made before the cache (decode the whole scan, then
  shrink), on the first 20 scans: the reference for draft-mode decoding;
- `thumbs cold`: `data.thumbs.ensure` into an empty cache with 1 worker process, then with `--workers`;
- `thumbs re-run`: the same again, every thumbnail up to date;
- `check quick` (1 worker and `--workers`), `check full` (no cache), `check full filling the cache`, `re-check with cache`.
Each stage prints one JSON line (stage, images, workers, seconds, seconds_per_1000, images_per_s) and one human
line. The scans are deleted at the end (also on Ctrl-C or an error) unless `--keep DIR` names where to keep them.
Imports neither grain, tfds, umap nor flask.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def scan(width: int, height: int, seed: int, grain: np.ndarray) -> Image.Image:
    """A synthetic archive scan: a paper-coloured gradient, ink shapes and lines, and grain."""
    rng = np.random.default_rng(seed)
    y = np.linspace(0.0, 1.0, height, dtype=np.float32)[:, None]
    x = np.linspace(0.0, 1.0, width, dtype=np.float32)[None, :]
    base = np.array([222, 210, 182], np.float32) + rng.uniform(-20, 20, 3).astype(np.float32)
    shade = 18 * (x - 0.5) + 14 * (y - 0.5) * rng.uniform(-1, 1)
    img = Image.fromarray(np.clip(base[None, None, :] + shade[..., None], 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(img)
    for _ in range(60):
        x0, y0 = int(rng.integers(0, width)), int(rng.integers(0, height))
        w, h = int(rng.integers(20, width // 4)), int(rng.integers(20, height // 4))
        ink = tuple(int(v) for v in rng.integers(20, 140, 3))
        kind = rng.integers(0, 3)
        if kind == 0:
            draw.ellipse((x0, y0, x0 + w, y0 + h), outline=ink, width=int(rng.integers(2, 12)))
        elif kind == 1:
            draw.rectangle((x0, y0, x0 + w, y0 + h), fill=ink)
        else:
            draw.line((x0, y0, x0 + w, y0 + h), fill=ink, width=int(rng.integers(1, 8)))
    a = np.asarray(img, np.int16)
    off = int(rng.integers(0, grain.shape[0] - height + 1)), int(rng.integers(0, grain.shape[1] - width + 1))
    a = a + grain[off[0] : off[0] + height, off[1] : off[1] + width, None]
    return Image.fromarray(np.clip(a, 0, 255).astype(np.uint8))


def make_collection(root: Path, n: int, width: int, height: int) -> float:
    """N scans and their images.csv in `root`; returns the mean file size in MB."""
    (root / "scans").mkdir(parents=True)
    grain = np.random.default_rng(1).normal(0, 7, (height + 64, width + 64)).astype(np.int16)
    rows, total = [], 0
    for i in range(n):
        p = root / "scans" / f"scan_{i:05d}.jpg"
        scan(width, height, i, grain).save(p, quality=90)
        total += p.stat().st_size
        rows.append(f"scan_{i:05d},scans/{p.name}\n")
    (root / "images.csv").write_text("uid,path\n" + "".join(rows))
    (root / "connections.csv").write_text("a,b,type\n")
    return total / n / 1e6


def timed(stage: str, n: int, workers: int, fn: Callable[[], object], **extra) -> dict:
    t = time.perf_counter()
    fn()
    seconds = time.perf_counter() - t
    row = {"bench": "thumbs_check", "stage": stage, "images": n, "workers": workers, "seconds": round(seconds, 3),
           "seconds_per_1000": round(seconds * 1000 / n, 1), "images_per_s": round(n / seconds, 2), **extra}
    print(json.dumps(row), flush=True)
    print(f"# {stage}: {n} images, {workers} worker(s): {seconds:.1f} s = {row['seconds_per_1000']:.0f} s per 1,000 "
          f"images ({row['images_per_s']:.1f} images/s)", flush=True)
    return row


def full_decode_thumbs(coll, uids: list[str]) -> None:
    """The thumbnail as it was made before the cache: the whole scan decoded, then shrunk."""
    from data.image import decode_image

    for u in uids:
        img = decode_image(coll.image_path(u)).image
        img.thumbnail((256, 256), Image.Resampling.LANCZOS)


def run(root: Path, n: int, workers: int) -> None:
    from data.collection import load_collection
    from data.thumbs import ensure
    from data.validate import validate

    coll = load_collection(root, quiet=True)
    first = coll.uids[:20]
    timed("thumbs cold, full decode (before: no draft)", len(first), 1, lambda: full_decode_thumbs(coll, first))
    for w in sorted({1, workers}):
        cache = root / f"cache-w{w}"
        timed("thumbs cold", n, w, lambda c=cache, w=w: ensure(coll, root=c, workers=w, progress=False))
    timed("thumbs re-run (all up to date)", n, workers,
          lambda: ensure(coll, root=root / f"cache-w{workers}", workers=workers, progress=False))
    for w in sorted({1, workers}):
        timed("check quick (no cache)", n, w, lambda w=w: validate(coll, mode="quick", workers=w))
    timed("check full (no cache)", n, workers, lambda: validate(coll, mode="full", workers=workers))
    timed("check full filling the cache", n, workers,
          lambda: validate(coll, mode="full", workers=workers, cache=True))
    timed("re-check with cache (nothing changed)", n, workers,
          lambda: validate(coll, mode="full", workers=workers, cache=True))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=150)
    ap.add_argument("--width", type=int, default=4000)
    ap.add_argument("--height", type=int, default=3000)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--keep", type=Path, default=None, help="Keep the generated collection in this folder.")
    args = ap.parse_args()
    root = args.keep or Path(tempfile.mkdtemp(prefix="vs-thumbs-check-"))
    try:
        t = time.perf_counter()
        mb = make_collection(root / "coll", args.n, args.width, args.height)
        print(json.dumps({"bench": "thumbs_check", "stage": "generate", "images": args.n, "width": args.width,
                          "height": args.height, "mean_file_mb": round(mb, 2),
                          "seconds": round(time.perf_counter() - t, 1), "cpus": os.cpu_count(),
                          "machine": platform.processor() or platform.machine()}), flush=True)
        print(f"# generated {args.n} scans of {args.width} x {args.height}, {mb:.1f} MB each on average", flush=True)
        run(root / "coll", args.n, args.workers)
    finally:
        if args.keep is None:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
