"""benchmarks/search.py runs at toy size and reports what it says it measures (its speed is not asserted)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))


def _records(stdout: str) -> list[dict]:
    return [json.loads(s) for s in stdout.splitlines() if s.startswith("{")]


def test_crop_box_covers_a_fifth_to_two_fifths_of_the_picture():
    import search

    rng = np.random.default_rng(0)
    for size in [(384, 250), (97, 384), (64, 64)]:
        for _ in range(50):
            x, y, w, h = search.random_crop(size, rng)
            assert 0 <= x and 0 <= y and x + w <= size[0] and y + h <= size[1]
            assert 0.17 <= w * h / (size[0] * size[1]) <= 0.43  # 20-40%, give or take whole pixels


def test_iou():
    import search

    assert search.iou([0, 0, 10, 10], [0, 0, 10, 10]) == 1.0
    assert search.iou([0, 0, 10, 10], [10, 0, 10, 10]) == 0.0
    assert search.iou([0, 0, 10, 10], [5, 0, 10, 10]) == pytest.approx(50 / 150)
    assert search.iou([0, 0, 100, 100], [10, 10, 20, 30]) == pytest.approx(0.06)


def test_latency_part_runs_without_optional_packages_and_leaves_nothing(tmp_path):
    """The GPU box has no grain, tfds, umap or flask; the synthetic index is removed after each size."""
    code = (
        "import sys, json, runpy\n"
        f"sys.argv = ['search.py', '--part', 'latency', '--sizes', '300,600', '--dims', '16', '--reps', '1',"
        f" '--batch', '4', '--work-dir', {str(tmp_path)!r}]\n"
        "try:\n    runpy.run_path('benchmarks/search.py', run_name='__main__')\nexcept SystemExit:\n    pass\n"
        "bad = [m for m in ('grain', 'tensorflow_datasets', 'umap', 'flask') if m in sys.modules]\n"
        "print(json.dumps({'bad': bad}))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, capture_output=True, text=True)
    recs = _records(out.stdout)
    assert recs[-1]["bad"] == []
    timed = [r for r in recs if r.get("part") == "latency"]
    assert {(r["n"], r["mode"], r["batch"]) for r in timed} == {
        (n, m, b) for n in (300, 600) for m in ("streaming", "resident") for b in (1, 4)}
    assert all(r["median_s"] > 0 and r["regions"] == 13 and r["vector_bytes"] == r["n"] * 14 * 16 * 2 for r in timed)
    assert any(r.get("part") == "latency-growth" for r in recs)
    assert list(tmp_path.iterdir()) == []


def test_synthetic_index_is_searchable(tmp_path):
    """The latency part times a real index: every image is found, by its own global vector, first."""
    import search

    from model.index import SearchIndex
    from model.search import Searcher

    search.synthetic_index(tmp_path / "idx", 50, 8, seed=0, part_images=20)
    index = SearchIndex.open(tmp_path / "idx")
    assert index.count == 50 and len(index.parts) == 3
    glob = np.concatenate([np.asarray(p.global_, np.float32) for p in index.parts])
    hits = Searcher(index).search(glob[:5], 1)
    assert [h[0].number for h in hits] == [0, 1, 2, 3, 4]


def test_quality_part_on_a_tiny_collection(tmp_path):
    """Crop, box and whole-image figures for a handful of images with random weights, without PCA and with it
    (calibrated)."""
    from tests.model.search_fixtures import write_collection

    coll = write_collection(tmp_path / "coll", 5)
    (coll / "connections.csv").write_text("a,b,type\na00,a01,POSITIVE\na03,a04,POSITIVE\n", encoding="utf-8")
    code = (
        "import runpy, sys\n"
        f"sys.argv = ['search.py', '--part', 'quality', '--collection', {str(coll)!r}, '--resolution', '64',"
        f" '--pca', '0,8', '--work-dir', {str(tmp_path)!r}]\n"
        "runpy.run_path('benchmarks/search.py', run_name='__main__')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, capture_output=True, text=True)
    recs = _records(out.stdout)
    crop = next(r for r in recs if r["query"] == "crop")
    assert crop["crops"] == 5 and crop["weights"] == "random" and crop["images"] == 5
    assert 1 <= crop["median_rank"] <= 5 and 0 <= crop["recall@1"] <= crop["recall@5"] == 1.0
    assert 0.17 <= crop["iou_whole_image_mean"] <= 0.43 and crop["iou_grid_ceiling_mean"] >= crop["iou_whole_image_mean"]
    whole = next(r for r in recs if r["query"] == "whole-image" and r["split"] == "all")
    assert whole["global"]["num_queries"] == 4 and 0 < whole["global"]["mAP"] <= 1
    assert 0 < whole["global+regions"]["mAP"] <= 1
    cal = crop["calibration"]  # no PCA: regions scored on the global scale, ranked as by raw cosines
    assert (cal["region_mean"], cal["region_std"]) == (cal["global_mean"], cal["global_std"])
    assert crop["uncalibrated"]["recall@1"] == crop["recall@1"]
    assert whole["global+regions uncalibrated"] == whole["global+regions"]
    boxes = [r for r in recs if r["query"] == "box"]
    assert [r["pca"] for r in boxes] == [None, 8]
    for box in boxes:  # sources a00, a01, a03, a04 have a partner; the source is left out: 4 candidates
        assert box["box_queries"] == 4
        for name in ("file", "box", "box_crop_vector"):
            figs = box[name]
            assert figs["partner_recall@1"] <= figs["partner_recall@5"] == 1.0 and 1 <= figs["partner_median_rank"] <= 4
            assert 0 <= figs["box_returned"] <= 1
    pca = next(r for r in recs if r["query"] == "crop" and r["pca"] == 8)
    assert pca["calibration"]["region_mean"] != pca["calibration"]["global_mean"]  # regions scored apart
    assert sorted(p.name for p in tmp_path.iterdir()) == ["coll"]
