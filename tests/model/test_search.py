"""The exact search: the same top k as a brute-force NumPy scoring of the stored vectors, whatever the block
size, across parts, resident or streamed; the query's own image left out; a region's box in the hit's pixels."""

from __future__ import annotations

import numpy as np
import pytest

from model.index import FORMAT, VERSION, SearchIndex, append_part, write_manifest
from model.regions import box_in_pixels, region_grid
from model.search import SAME_PICTURE_COSINE, Calibration, Searcher, calibrate

D = 16


def _unit(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _synthetic(folder, parts=(5, 7, 3), seed=0):
    rng = np.random.default_rng(seed)
    grid = region_grid(4, (2, 3))
    manifest = {"format": FORMAT, "version": VERSION, "grid": grid.tolist(), "dim": D, "parts": []}
    folder.mkdir()
    write_manifest(folder, manifest)
    n = 0
    for count in parts:
        uids = [f"u{n + i}" for i in range(count)]
        g = _unit(rng.standard_normal((count, D))).astype(np.float16)
        r = _unit(rng.standard_normal((count, len(grid), D))).astype(np.float16)
        sizes = rng.integers(20, 500, (count, 2))
        manifest = append_part(folder, manifest, uids, g, r, sizes, collection="nowhere")
        n += count
    return SearchIndex.open(folder)


def _brute(index, q, exclude=None, cal=None):
    cal = cal or Calibration()
    g = np.concatenate([np.asarray(p.global_, np.float32) for p in index.parts])
    r = np.concatenate([np.asarray(p.regions, np.float32) for p in index.parts])
    raw_r = np.einsum("nrd,d->nr", r, q)
    sg = (g @ q - cal.global_mean) / cal.global_std
    sr = (raw_r.max(1) - cal.region_mean) / cal.region_std
    same = g @ q >= SAME_PICTURE_COSINE
    score = np.maximum(sg, sr)
    which = np.where((sr > sg) & ~same, raw_r.argmax(1), -1)
    if exclude is not None:
        score[exclude] = -np.inf
    order = np.argsort(-score, kind="stable")
    return score, which, order


@pytest.mark.parametrize("block", [1, 3, 4, 100])
@pytest.mark.parametrize("resident", [False, True])
def test_top_k_equals_brute_force_for_any_block_size(tmp_path, block, resident):
    index = _synthetic(tmp_path / "idx")
    queries = _unit(np.random.default_rng(1).standard_normal((4, D))).astype(np.float32)
    cal = Calibration(0.1, 0.2, -0.05, 0.1)
    searcher = Searcher(index, block=block, resident=resident, calibration=cal)
    hits = searcher.search(queries, 6, exclude=[None, 3, None, 14])
    for q, ex, got in zip(queries, [None, 3, None, 14], hits, strict=True):
        score, which, order = _brute(index, q, ex, cal)
        assert [h.number for h in got] == order[:6].tolist()
        np.testing.assert_allclose([h.score for h in got], score[order[:6]], rtol=1e-5, atol=1e-6)
        for h in got:
            assert h.uid == f"u{h.number}" and h.region == which[h.number]
            glob, regions = index.vectors_of(h.number)
            if h.region >= 0:
                assert h.box == box_in_pixels(index.grid[h.region], index.size_of(h.number))
                assert h.similarity == pytest.approx(float(regions[h.region] @ q), abs=1e-5)
            else:
                assert h.box is None and h.similarity == pytest.approx(float(glob @ q), abs=1e-5)
                assert h.score == pytest.approx((h.similarity - cal.global_mean) / cal.global_std, abs=1e-4)
        if ex is not None:
            assert ex not in [h.number for h in got]


def test_k_beyond_the_index_and_an_index_of_one_image_with_its_query_left_out(tmp_path):
    index = _synthetic(tmp_path / "idx", parts=(2, 1))
    q = np.asarray(index.vectors_of(0)[0], np.float32)
    got = Searcher(index).search(q[None], 50, exclude=[0])[0]
    assert sorted(h.number for h in got) == [1, 2]
    one = _synthetic(tmp_path / "one", parts=(1,))
    assert Searcher(one).search(q[None], 5, exclude=[0])[0] == []


def test_the_best_region_wins_over_the_whole_image_and_carries_its_box(tmp_path):
    index = _synthetic(tmp_path / "idx")
    number, region = 9, 7
    q = np.asarray(index.vectors_of(number)[1][region], np.float32)  # exactly one region of image 9
    best = Searcher(index, block=4, calibration=Calibration()).search(q[None], 1)[0][0]
    assert (best.number, best.region) == (number, region) and best.score == pytest.approx(1.0, abs=2e-3)
    assert best.box == box_in_pixels(index.grid[region], index.size_of(number))


def test_calibration_describes_unrelated_pairs_and_lets_a_standing_out_region_win(tmp_path):
    index = _synthetic(tmp_path / "idx", parts=(30, 20))
    cal = calibrate(index, images=40, seed=3)
    numbers = np.sort(np.random.default_rng(3).choice(50, size=40, replace=False))
    g = np.stack([index.vectors_of(int(i))[0] for i in numbers])
    r = np.stack([index.vectors_of(int(i))[1] for i in numbers])
    off = ~np.eye(40, dtype=bool)
    sr = np.einsum("qd,srd->qsr", g, r).max(-1)[off]
    assert cal.region_mean == pytest.approx(sr.mean(), rel=1e-5) and cal.region_std == pytest.approx(sr.std(), rel=1e-4)
    assert cal.region_mean > cal.global_mean  # the best of 13 random cosines beats one
    # a query half-way between image 4's global vector and its region 2: raw cosines equal, the region's
    # standing above unrelated regions is what decides
    glob, regions = index.vectors_of(4)
    q = glob + regions[2]
    q = (q / np.linalg.norm(q)).astype(np.float32)
    raw = Searcher(index, calibration=Calibration()).search(q[None], 1)[0][0]
    assert raw.number == 4
    strict = Searcher(index, calibration=Calibration(0.0, 0.1, 0.0, 0.3)).search(q[None], 1)[0][0]
    assert strict.number == 4 and strict.region == -1  # regions spread 3x wider: the whole image wins
    lenient = Searcher(index, calibration=Calibration(0.0, 0.3, 0.0, 0.1)).search(q[None], 1)[0][0]
    assert lenient.number == 4 and lenient.region == 2 and lenient.box is not None


def test_an_identical_picture_is_a_whole_image_match_even_when_a_region_scores_higher(tmp_path):
    index = _synthetic(tmp_path / "idx")
    glob, regions = index.vectors_of(8)
    q = np.asarray(glob, np.float32)  # the same picture's signature, e.g. a re-scan's
    lenient = Calibration(0.0, 0.3, 0.0, 0.01)  # regions' spread so narrow that any region would win
    hits = Searcher(index, calibration=lenient).search(q[None], 50)[0]
    best = next(h for h in hits if h.number == 8)
    assert best.region == -1 and best.box is None
    assert all(h.region >= 0 for h in hits if h.number != 8)  # the others still matched through a region
    assert best.similarity == pytest.approx(1.0, abs=2e-3)
