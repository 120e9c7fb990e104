"""Test-time image preprocessing, as the original system did it.

decode to RGB -> squash-resize to R x R (aspect ratio not kept; an image already R x R is not
resampled) -> scale to [0, 1] -> ImageNet mean/std.

The resize happens on the host in uint8 (PIL, bilinear with antialiasing, like torchvision's
`Resize` on PIL images); `normalize` is plain arithmetic that works on NumPy and JAX arrays, so
pipelines can ship uint8 to the accelerator (4x less traffic) and normalise there.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# Archive scans can be huge; PIL's default bomb guard (~89 Mpx) would reject real scans.
Image.MAX_IMAGE_PIXELS = 400_000_000


class ImageReadError(ValueError):
    """An image file that cannot be decoded. The caller reports it by uid and path and skips it."""


def decode_rgb(source: str | Path | bytes) -> Image.Image:
    """Decode a file or encoded bytes to a fully loaded RGB PIL image, or raise ImageReadError."""
    try:
        fh = io.BytesIO(source) if isinstance(source, bytes) else open(source, "rb")
    except OSError as e:
        raise ImageReadError(f"{source}: cannot open ({e.strerror})") from e
    try:
        with fh, Image.open(fh) as im:
            im.load()  # force the full decode now: truncated files fail here, not later
            return im.convert("RGB")
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        name = "<bytes>" if isinstance(source, bytes) else str(source)
        raise ImageReadError(f"{name}: not a readable image ({e})") from e


def squash_resize(img: Image.Image, resolution: int) -> Image.Image:
    """Resize to resolution x resolution ignoring aspect ratio; no resampling if already that size."""
    if img.size == (resolution, resolution):
        return img
    return img.resize((resolution, resolution), Image.Resampling.BILINEAR)


def load_uint8(source: str | Path | bytes, resolution: int) -> np.ndarray:
    """Decode + squash-resize: a (R, R, 3) uint8 array."""
    return np.asarray(squash_resize(decode_rgb(source), resolution), dtype=np.uint8)


def normalize(x, xp=np):
    """uint8 (or [0, 255] float) HWC pixels -> ImageNet-normalised float32; works for NumPy and jax.numpy."""
    mean = xp.asarray(IMAGENET_MEAN, dtype=xp.float32) * 255.0
    std = xp.asarray(IMAGENET_STD, dtype=xp.float32) * 255.0
    return (xp.asarray(x, dtype=xp.float32) - mean) / std


def load_for_test(source: str | Path | bytes, resolution: int) -> np.ndarray:
    """Test-time preprocessing end to end: (R, R, 3) float32, ImageNet-normalised."""
    return normalize(load_uint8(source, resolution))
