from __future__ import annotations

import csv
import hashlib

import numpy as np
import pytest
from PIL import Image

from data.collection import load_collection
from data.demo import CYCLE, NUM_SOURCES, SPLIT_CYCLE, build_demo, plan_roles
from data.splits import assign_splits
from data.validate import validate

# The documented counts (docs/collection.md); fixed by construction, independent of seed and size.
EXPECTED = {
    "images": 443,
    "originals": 174,
    "derivatives": {"detail": 20, "engraving": 31, "mirror": 31, "monochrome": 59, "partial": 59, "recolour": 59,
                    "rephoto": 10},
    "connections": {"DUPLICATE": 10, "NEGATIVE": 20, "POSITIVE": 279},
    "groups": 140,
    "group_sizes": {"2": 36, "3": 72, "4": 29, "5": 3},
    "distractors": 14,
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


def test_demo_splits_are_pinned_and_balanced(demo_small):
    root, _, _ = demo_small
    asg = assign_splits(load_collection(root))
    per_split = {s: sum(1 for members in asg.groups.values() if asg.split_of[members[0]] == s)
                 for s in ("train", "val", "test")}
    assert per_split == {"train": 94, "val": 23, "test": 23}
    assert asg.excluded == [] and asg.notes == []
    # every kind of copy reaches the held-out splits (the split cycle and the kind cycle are coprime)
    kinds = {r["uid"]: r["kind"] for r in csv.DictReader(open(root / "images.csv"))}
    for split in ("val", "test"):
        assert {kinds[u] for u in asg.uids(split)} >= set(CYCLE) | {"painting", "detail"}


def test_demo_is_deterministic(tmp_path, demo_small):
    a = build_demo(tmp_path / "a", seed=0, max_side=48)
    b = build_demo(tmp_path / "b", seed=0, max_side=48)
    assert a.as_dict() == b.as_dict() == EXPECTED
    da, db = _digest(tmp_path / "a"), _digest(tmp_path / "b")
    assert da == db and len(da) == EXPECTED["images"] + 3
    c = build_demo(tmp_path / "c", seed=1, max_side=48)
    assert c.as_dict() == EXPECTED
    assert _digest(tmp_path / "c") != da


def test_smaller_demo_follows_the_same_rules(tmp_path):
    res = build_demo(tmp_path / "s", seed=0, max_side=32, num_sources=14)
    d = res.as_dict()
    assert d["groups"] == 14 and d["originals"] == 174
    assert d["derivatives"]["detail"] == 14 // 7
    # distractors: every painting that is neither a source nor a host
    assert d["distractors"] == 174 - 14 - 2
    assert d["images"] == 174 + sum(d["derivatives"].values())
    rep = validate(tmp_path / "s")
    assert rep.ok and rep.warnings == [], [str(p) for p in rep.problems]
    for bad in (0, NUM_SOURCES + 1):
        with pytest.raises(ValueError, match="num_sources"):
            build_demo(tmp_path / "x", num_sources=bad)


def test_plan_roles_copies_differ_from_the_first():
    for k in range(NUM_SOURCES):
        r = plan_roles(k, NUM_SOURCES // 7)
        assert r.second != r.first and r.grand != r.first
        assert r.split == SPLIT_CYCLE[k % len(SPLIT_CYCLE)]
    assert [plan_roles(k, 2).first for k in range(3)] == ["detail", "detail", CYCLE[2]]


def _small(path):
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB").resize((32, 32), Image.Resampling.BILINEAR), dtype=np.float32)


def _saturation(x):
    return float((x.max(-1) - x.min(-1)).mean())


def test_derivatives_are_not_trivial_copies(demo_small):
    root, _, _ = demo_small
    rows = list(csv.DictReader(open(root / "images.csv")))
    derived = [r for r in rows if r["derived_from"]]
    diffs, sats = {}, {}
    for r in derived:
        x, src = _small(root / r["path"]), _small(root / f"images/{r['derived_from']}.jpg")
        diffs.setdefault(r["kind"], []).append(np.abs(x - src).mean())
        sats.setdefault(r["kind"], []).append(_saturation(x) - _saturation(src))
    # every kind changes the pixels noticeably; only a second photograph may stay close to its original
    for kind, ds in diffs.items():
        floor = 2.0 if kind == "rephoto" else 8.0
        assert min(ds) > floor, (kind, min(ds))
    assert set(diffs) == set(EXPECTED["derivatives"])
    # the black-and-white photographs carry one hue at most (grey or a sepia tint: R >= G >= B)
    for r in derived:
        if r["kind"] == "monochrome":
            x = _small(root / r["path"])
            off = (x[..., 1] > x[..., 0] + 12) | (x[..., 2] > x[..., 1] + 12)
            assert off.mean() < 0.02, (r["uid"], off.mean())
    # and on average they lose colour compared with what they copy
    assert np.mean(sats["monochrome"]) < -5.0, np.mean(sats["monochrome"])


def test_demo_command_rejects_a_bad_source_count(tmp_path):
    from click.testing import CliRunner

    from data.__main__ import cli

    res = CliRunner().invoke(cli, ["demo", str(tmp_path / "c"), "--sources", str(NUM_SOURCES + 1)])
    assert res.exit_code != 0
    assert "num_sources must be in 1..140" in res.output
