"""Test-time image preprocessing, as the original system did it.

decode to RGB -> squash-resize to R x R (aspect ratio not kept; an image already R x R is not
resampled) -> scale to [0, 1] -> ImageNet mean/std.

The resize happens on the host in uint8 (PIL, bilinear with antialiasing, like torchvision's
`Resize` on PIL images); `normalize` is plain arithmetic that works on NumPy and JAX arrays, so
pipelines can ship uint8 to the accelerator (4x less traffic) and normalise there.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from data.image import DecodedImage, decode_image

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def squash_resize(img: Image.Image, resolution: int) -> Image.Image:
    """Resize to resolution x resolution ignoring aspect ratio; no resampling if already that size."""
    if img.size == (resolution, resolution):
        return img
    return img.resize((resolution, resolution), Image.Resampling.BILINEAR)


def load_uint8(source: str | Path | bytes, resolution: int) -> np.ndarray:
    """Decode + squash-resize: a (R, R, 3) uint8 array."""
    return np.asarray(load_resized(source, resolution).image, dtype=np.uint8)


def load_resized(source: str | Path | bytes, resolution: int, *, name: str | None = None) -> DecodedImage:
    """Decode + squash-resize inside the decode budget (the full-size picture is dropped there); a
    `data.image.DecodedImage` whose notes say what the decoder corrected."""
    return decode_image(source, finish=lambda img: squash_resize(img, resolution), name=name)


def normalize(x, xp=np):
    """uint8 (or [0, 255] float) HWC pixels -> ImageNet-normalised float32; works for NumPy and jax.numpy."""
    mean = xp.asarray(IMAGENET_MEAN, dtype=xp.float32) * 255.0
    std = xp.asarray(IMAGENET_STD, dtype=xp.float32) * 255.0
    return (xp.asarray(x, dtype=xp.float32) - mean) / std


def load_for_test(source: str | Path | bytes, resolution: int) -> np.ndarray:
    """Test-time preprocessing end to end: (R, R, 3) float32, ImageNet-normalised."""
    return normalize(load_uint8(source, resolution))
