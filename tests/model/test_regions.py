"""The region grid (R-MAC's) and region pooling: boxes inside the picture, a region pooled like the network
pools the whole map, boxes back in pixels."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

from model.layers import GeMPool, MeanPool
from model.regions import box_in_pixels, check_scales, pool_regions, region_cells, region_grid, region_masks


def test_grid_at_scales_2_and_3_is_13_overlapping_squares_inside_the_map():
    cells = region_cells(7, (2, 3))
    assert len(cells) == 13
    widths = [w for _, _, w in cells]
    assert widths[:4] == [5] * 4 and widths[4:] == [4] * 9  # round(2*7/3) = 5, round(2*7/4) = 4
    for x, y, w in cells:
        assert 0 <= x and 0 <= y and x + w <= 7 and y + w <= 7
    starts = sorted({x for x, _, w in cells if w == 4})
    assert starts[0] == 0 and starts[-1] == 3  # the last region touches the far edge


def test_tiny_maps_keep_each_square_once_and_scale_1_is_refused():
    assert region_cells(1, (2, 3)) == [(0, 0, 1)]
    assert len(region_cells(2, (2, 3, 4))) == len(set(region_cells(2, (2, 3, 4))))
    with pytest.raises(ValueError, match="1 is the whole image"):
        check_scales([1, 2])
    with pytest.raises(ValueError, match="at least one"):
        check_scales([])


def test_masks_and_grid_describe_the_same_regions():
    side, scales = 10, (2, 3, 4)
    masks, grid = region_masks(side, scales), region_grid(side, scales)
    assert masks.shape[0] == grid.shape[0] == len(region_cells(side, scales))
    np.testing.assert_allclose(masks.sum(axis=(1, 2)), 1.0, rtol=1e-6)  # each a mean
    for m, (fx, fy, fw, fh) in zip(masks, grid, strict=True):
        ys, xs = np.nonzero(m)
        assert (xs.min() / side, ys.min() / side) == pytest.approx((fx, fy))
        assert ((xs.max() + 1 - xs.min()) / side, (ys.max() + 1 - ys.min()) / side) == pytest.approx((fw, fh))


def test_a_region_is_pooled_as_the_network_pools_that_part_of_the_map():
    rng = np.random.default_rng(0)
    fmap = jnp.asarray(rng.random((2, 6, 6, 5), np.float32))
    cells = region_cells(6, (2, 3))
    masks = jnp.asarray(region_masks(6, (2, 3)))
    mean = np.asarray(pool_regions(fmap, masks))
    gem = np.asarray(pool_regions(fmap, masks, gem_p=3.0))
    for r, (x, y, w) in enumerate(cells):
        part = fmap[:, y:y + w, x:x + w, :]
        np.testing.assert_allclose(mean[:, r], np.asarray(MeanPool()(part)), rtol=1e-5)
        np.testing.assert_allclose(gem[:, r], np.asarray(GeMPool(3.0, learnable=False)(part)), rtol=1e-4)


def test_boxes_in_pixels_of_a_non_square_picture():
    assert box_in_pixels((0.0, 0.0, 0.5, 0.5), (400, 200)) == [0, 0, 200, 100]
    assert box_in_pixels((2 / 7, 3 / 7, 4 / 7, 4 / 7), (700, 350)) == [200, 150, 400, 200]
    assert box_in_pixels((0.99, 0.99, 0.001, 0.001), (10, 10))[2:] == [1, 1]  # never an empty box
