from __future__ import annotations

import csv
import hashlib

import numpy as np
from PIL import Image

from data.demo import build_demo
from data.validate import validate

# The documented counts (docs/collection.md); fixed by construction, independent of seed and size.
EXPECTED = {
    "images": 243,
    "originals": 174,
    "derivatives": {"detail": 8, "engraving": 14, "mirror": 14, "partial": 15, "rephoto": 4, "rescale": 14},
    "connections": {"DUPLICATE": 4, "NEGATIVE": 10, "POSITIVE": 73},
    "groups": 40,
    "group_sizes": {"2": 12, "3": 23, "4": 5},
    "distractors": 126,
}


def _digest(root):
    h = {}
    for p in sorted(root.rglob("*")):
        if p.is_file():
            h[str(p.relative_to(root))] = hashlib.sha256(p.read_bytes()).hexdigest()
    return h


def test_demo_counts_and_valid(demo_small):
    root, result, _ = demo_small
    assert result.as_dict() == EXPECTED
    rep = validate(root)
    assert rep.ok and rep.warnings == [], [str(p) for p in rep.problems]
    assert rep.summary["images"] == EXPECTED["images"]
    assert rep.summary["groups"] == EXPECTED["groups"]
    rows = list(csv.DictReader(open(root / "images.csv")))
    assert {"title", "author", "date", "medium", "kind", "derived_from"} <= set(rows[0])
    assert all(r["title"] for r in rows)


def test_demo_is_deterministic(tmp_path, demo_small):
    a = build_demo(tmp_path / "a", seed=0, max_side=48)
    b = build_demo(tmp_path / "b", seed=0, max_side=48)
    assert a.as_dict() == b.as_dict() == EXPECTED
    da, db = _digest(tmp_path / "a"), _digest(tmp_path / "b")
    assert da == db and len(da) == EXPECTED["images"] + 3
    c = build_demo(tmp_path / "c", seed=1, max_side=48)
    assert c.as_dict() == EXPECTED
    assert _digest(tmp_path / "c") != da


def _small(path):
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB").resize((32, 32), Image.Resampling.BILINEAR), dtype=np.float32)


def test_derivatives_are_not_trivial_copies(demo_small):
    root, _, _ = demo_small
    rows = list(csv.DictReader(open(root / "images.csv")))
    derived = [r for r in rows if r["derived_from"]]
    diffs = {}
    for r in derived:
        d = np.abs(_small(root / r["path"]) - _small(root / f"images/{r['derived_from']}.jpg")).mean()
        diffs.setdefault(r["kind"], []).append(d)
    # every kind changes the pixels noticeably; only a second photograph may stay close to its original
    for kind, ds in diffs.items():
        floor = 2.0 if kind == "rephoto" else 8.0
        assert min(ds) > floor, (kind, min(ds))
    assert set(diffs) == set(EXPECTED["derivatives"])
