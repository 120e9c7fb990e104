"""Regional signatures: the last convolutional feature map pooled over a fixed grid of square regions.

Why regions: a whole-image signature averages everything in the picture, so a figure that fills a fifth of
one print and the whole of another drawing lands far from it. Pooling the same feature map over regions
gives each part of the picture a signature of its own, and a detail (a crop used as query) then meets the
region that holds it. The grid is the one of R-MAC (Tolias, Sicre and Jegou, "Particular object retrieval
with integral max-pooling of CNN activations", ICLR 2016): at scale l, square regions of side
2 min(H, W) / (l + 1), l per side, evenly spaced, so that neighbours overlap by about 40%. Scale 1 is the
whole map, which the global signature already is, so the default scales are 2 and 3: 4 + 9 = 13 regions.

What differs from R-MAC, and why: each region is pooled with the network's own pooling (mean or GeM,
`SignatureNet.pooling`), not max-pooled, so that a region's vector lives in the same space as a whole
image's signature: a cropped query is embedded whole by the same network and compared with both. Images
are squash-resized to R x R before the network, so the map is square and the grid is the same for every
image; a region's box, as a fraction of the map, is a box of the same fractions of the original picture.

Everything here is pure (no I/O): `region_grid` is plain Python, `pool_regions` a jax function traced into
the index's forward.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

DEFAULT_SCALES = (2, 3)
MAX_SCALE = 6  # 2..6 -> 4 + 9 + 16 + 25 + 36 = 90 regions per image, already more than any index wants


def check_scales(scales: Sequence[int]) -> tuple[int, ...]:
    """Distinct scales in 1..MAX_SCALE, sorted; scale 1 (the whole image) is the global signature, refused."""
    out = tuple(sorted(set(int(s) for s in scales)))
    if not out:
        raise ValueError("pass at least one region scale, e.g. --scales 2,3")
    bad = [s for s in out if not 2 <= s <= MAX_SCALE]
    if bad:
        raise ValueError(f"region scales must lie in 2..{MAX_SCALE} (1 is the whole image, which the global "
                         f"signature already covers), got {bad}")
    return out


def region_cells(side: int, scales: Sequence[int]) -> list[tuple[int, int, int]]:
    """(x0, y0, width) in cells of a side x side feature map for every region, scale by scale, row by row.

    Width round(2 side / (l + 1)), at least one cell; l positions per axis from 0 to side - width.
    Duplicates (a small map where two scales round to the same squares) are kept once."""
    out: list[tuple[int, int, int]] = []
    for level in check_scales(scales):
        width = max(1, min(side, round(2 * side / (level + 1))))
        starts = [round(i * (side - width) / (level - 1)) for i in range(level)]
        for y in starts:
            for x in starts:
                if (x, y, width) not in out:
                    out.append((x, y, width))
    return out


def region_grid(side: int, scales: Sequence[int]) -> np.ndarray:
    """(R, 4) float64 boxes [x, y, w, h] as fractions of the picture, one per region of `region_cells`."""
    return np.asarray([(x / side, y / side, w / side, w / side) for x, y, w in region_cells(side, scales)],
                      np.float64).reshape(-1, 4)


def region_masks(side: int, scales: Sequence[int]) -> np.ndarray:
    """(R, side, side) float32: 1 / area inside each region, 0 elsewhere, so a contraction is a mean."""
    cells = region_cells(side, scales)
    masks = np.zeros((len(cells), side, side), np.float32)
    for r, (x, y, w) in enumerate(cells):
        masks[r, y:y + w, x:x + w] = 1.0 / (w * w)
    return masks


def pool_regions(fmap: jax.Array, masks: jax.Array, *, gem_p: jax.Array | float | None = None,
                 eps: float = 1e-6) -> jax.Array:
    """(B, H, W, C) feature map -> (B, R, C) float32 region features, pooled like the network pools.

    `gem_p` None: mean pooling (the contraction with `region_masks`); else generalised mean with exponent p
    (mean of max(x, eps)^p, then the p-th root), the network's `GeMPool` restricted to each region."""
    x = fmap.astype(jnp.float32)
    if gem_p is None:
        return jnp.einsum("bhwc,rhw->brc", x, masks)
    p = jnp.asarray(gem_p, jnp.float32)
    return jnp.einsum("bhwc,rhw->brc", jnp.maximum(x, eps) ** p, masks) ** (1.0 / p)


def box_in_pixels(fraction_box: Sequence[float], size: tuple[int, int]) -> list[int]:
    """A [x, y, w, h] box in fractions of a picture -> whole pixels of a (width, height) picture."""
    fx, fy, fw, fh = fraction_box
    width, height = size
    x0, y0 = round(fx * width), round(fy * height)
    x1, y1 = round((fx + fw) * width), round((fy + fh) * height)
    return [x0, y0, max(1, x1 - x0), max(1, y1 - y0)]
