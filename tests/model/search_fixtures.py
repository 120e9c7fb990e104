"""A small collection for the index and search tests: pictures of different sizes, one turned by its EXIF
orientation, one unreadable; and helpers to build an index of it with random resnet18 weights."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
from PIL import Image

R = 128  # resnet18's last map is 4 x 4 here: scales 2, 3 give 4 + 9 regions
SIZES = [(80, 60), (64, 96), (120, 90), (70, 70), (90, 50)]


def write_collection(root: Path, n: int = 5, *, seed: int = 0, extra_rows: list[tuple] = ()) -> Path:
    """`n` readable images (a02 is a JPEG stored 60 x 40 with EXIF orientation 6: shown 40 x 60), then a
    corrupt file, then `extra_rows` (uid, path)."""
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n):
        w, h = SIZES[i % len(SIZES)]
        name = f"images/a{i:02d}.png"
        pixels = rng.integers(0, 256, (h // 8 + 1, w // 8 + 1, 3), dtype=np.uint8)
        img = Image.fromarray(pixels).resize((w, h), Image.Resampling.NEAREST)
        if i == 2:
            name = "images/a02.jpg"
            img = img.resize((60, 40))
            exif = Image.Exif()
            exif[0x0112] = 6
            img.save(root / name, exif=exif.tobytes(), quality=95)
        else:
            img.save(root / name)
        rows.append((f"a{i:02d}", name, f"title {i}"))
    (root / "images" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not a jpeg")
    rows.append(("broken", "images/broken.jpg", "broken"))
    rows += [(*r, "extra") for r in extra_rows]
    with open(root / "images.csv", "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["uid", "path", "title"])
        w.writerows(rows)
    return root


def settings(**kw):
    from model.index_build import IndexSettings

    return IndexSettings(**{"resolution": R, "batch_size": 2, "chunk_images": 2, "progress": False, **kw})


def build(coll, net, out, **kw):
    from model.index_build import build_index

    return build_index(coll, net, out, settings(**kw), weights={"weights": "random", "seed": 0})
