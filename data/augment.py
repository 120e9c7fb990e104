"""Train-time augmentation, as the original system did it (torchvision transforms on PIL images).

Order and parameters follow the original: squash-resize to (R+100)^2 -> RandomResizedCrop(R,
scale 0.08-1, ratio 3/4-4/3) -> ColorJitter(brightness, contrast, saturation 0.3, random order)
-> horizontal flip with p=0.3 -> rotation by U(-5, 5) degrees (nearest, black corners) -> the
caller normalises (ImageNet mean/std). Every step can be switched off in `AugmentConfig`; with all
off the result equals test-time preprocessing (`data.preprocess.load_uint8`).

Randomness comes only from the `np.random.Generator` passed in, so a pipeline that seeds it from
(seed, epoch, element) replays exactly after a resume. Everything here is pure: PIL image in, PIL
image out.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np
from PIL import Image, ImageEnhance

from data.preprocess import squash_resize


@dataclass(frozen=True)
class AugmentConfig:
    """Switches and strengths of each train-time step (defaults: the original's values)."""

    resize_margin: int = 100  # squash-resize to (R + margin)^2 before the crop; 0 = to R directly
    random_resized_crop: bool = True
    crop_scale: tuple[float, float] = (0.08, 1.0)
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    brightness: float = 0.3
    contrast: float = 0.3
    saturation: float = 0.3
    hflip_p: float = 0.3
    rotation: float = 5.0  # degrees; 0 = off
    # Resample once: the crop box is drawn in the (R + margin)^2 frame as the original did, mapped
    # back onto the source image and resized from there. Same crop geometry and distribution, one
    # interpolation instead of two, and ~40% less CPU per image. False: resize, then crop (two steps).
    fuse_resize: bool = True

    @classmethod
    def off(cls) -> AugmentConfig:
        """No augmentation: squash-resize to R, exactly the test-time preprocessing."""
        return cls(resize_margin=0, random_resized_crop=False, brightness=0.0, contrast=0.0, saturation=0.0,
                   hflip_p=0.0, rotation=0.0)

    def with_(self, **changes) -> AugmentConfig:
        return replace(self, **changes)


MIN_PREPARED_SIDE = 256  # the prepared images' longest side, at least


def prepared_side(resolution: int) -> int:
    """The longest side the prepared (downscaled once, `data.prepare`) images keep for training at `resolution`.

    The train-time squash size R + `AugmentConfig.resize_margin` (the crop is drawn in that frame), never
    less than MIN_PREPARED_SIDE; the same with augmentation off, so that switching it does not prepare the
    collection again. Training prepares at this side; `data prepare --max-side` beforehand should use it.
    """
    return max(resolution + AugmentConfig.resize_margin, MIN_PREPARED_SIDE)


def random_resized_crop_box(
    width: int, height: int, rng: np.random.Generator, scale: tuple[float, float], ratio: tuple[float, float]
) -> tuple[int, int, int, int]:
    """(left, top, w, h) of a crop like torchvision's RandomResizedCrop.get_params (10 tries, then centre)."""
    area = width * height
    log_r = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target = area * rng.uniform(scale[0], scale[1])
        aspect = math.exp(rng.uniform(log_r[0], log_r[1]))
        w = int(round(math.sqrt(target * aspect)))
        h = int(round(math.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            top = int(rng.integers(0, height - h + 1))
            left = int(rng.integers(0, width - w + 1))
            return left, top, w, h
    in_ratio = width / height
    if in_ratio < ratio[0]:
        w, h = width, int(round(width / ratio[0]))
    elif in_ratio > ratio[1]:
        h, w = height, int(round(height * ratio[1]))
    else:
        w, h = width, height
    return (width - w) // 2, (height - h) // 2, w, h


def color_jitter(img: Image.Image, rng: np.random.Generator, brightness: float, contrast: float,
                 saturation: float) -> Image.Image:
    """Brightness, contrast and saturation factors in [1-s, 1+s], applied in a random order."""
    ops = []
    if brightness > 0:
        ops.append((ImageEnhance.Brightness, rng.uniform(max(0.0, 1 - brightness), 1 + brightness)))
    if contrast > 0:
        ops.append((ImageEnhance.Contrast, rng.uniform(max(0.0, 1 - contrast), 1 + contrast)))
    if saturation > 0:
        ops.append((ImageEnhance.Color, rng.uniform(max(0.0, 1 - saturation), 1 + saturation)))
    for k in rng.permutation(len(ops)):
        enhancer, factor = ops[int(k)]
        img = enhancer(img).enhance(factor)
    return img


def augment(img: Image.Image, resolution: int, cfg: AugmentConfig, rng: np.random.Generator) -> Image.Image:
    """One train-time view of `img`: a (resolution x resolution) RGB PIL image."""
    r = resolution
    if cfg.random_resized_crop:
        if cfg.resize_margin and cfg.fuse_resize:
            frame = r + cfg.resize_margin
            left, top, w, h = random_resized_crop_box(frame, frame, rng, cfg.crop_scale, cfg.crop_ratio)
            sx, sy = img.width / frame, img.height / frame
            box = (left * sx, top * sy, (left + w) * sx, (top + h) * sy)
            img = img.resize((r, r), Image.Resampling.BILINEAR, box=box)
        else:
            base = squash_resize(img, r + cfg.resize_margin) if cfg.resize_margin else img
            left, top, w, h = random_resized_crop_box(base.width, base.height, rng, cfg.crop_scale, cfg.crop_ratio)
            img = base.resize((r, r), Image.Resampling.BILINEAR, box=(left, top, left + w, top + h))
    else:
        img = squash_resize(img, r + cfg.resize_margin) if cfg.resize_margin else img
        img = squash_resize(img, r)
    if cfg.brightness or cfg.contrast or cfg.saturation:
        img = color_jitter(img, rng, cfg.brightness, cfg.contrast, cfg.saturation)
    if cfg.hflip_p > 0 and rng.random() < cfg.hflip_p:
        img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    if cfg.rotation > 0:
        img = img.rotate(rng.uniform(-cfg.rotation, cfg.rotation), resample=Image.Resampling.NEAREST, fillcolor=0)
    return img
