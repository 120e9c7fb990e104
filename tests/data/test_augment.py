from __future__ import annotations

import numpy as np
from PIL import Image

from data.augment import AugmentConfig, augment, random_resized_crop_box
from data.preprocess import squash_resize


def _img(seed=0, size=(90, 60)):
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8))


def test_off_equals_test_time_preprocessing():
    img = _img()
    out = augment(img, 32, AugmentConfig.off(), np.random.default_rng(0))
    assert np.array_equal(np.asarray(out), np.asarray(squash_resize(img, 32)))


def test_same_generator_same_view_and_views_vary():
    img = _img()
    a = np.asarray(augment(img, 40, AugmentConfig(), np.random.default_rng(5)))
    b = np.asarray(augment(img, 40, AugmentConfig(), np.random.default_rng(5)))
    c = np.asarray(augment(img, 40, AugmentConfig(), np.random.default_rng(6)))
    assert a.shape == (40, 40, 3) and np.array_equal(a, b) and not np.array_equal(a, c)


def test_crop_box_follows_scale_and_ratio():
    rng = np.random.default_rng(0)
    for _ in range(200):
        left, top, w, h = random_resized_crop_box(420, 420, rng, (0.08, 1.0), (3 / 4, 4 / 3))
        assert 0 <= left and left + w <= 420 and 0 <= top and top + h <= 420
        assert 0.08 * 0.95 <= w * h / 420**2 <= 1.0
        assert 3 / 4 * 0.95 <= w / h <= 4 / 3 * 1.05
    # impossible ratio -> centre crop fallback
    assert random_resized_crop_box(100, 10, rng, (0.99, 1.0), (1.0, 1.0)) == (45, 0, 10, 10)


def test_each_switch_changes_only_its_step():
    img = Image.new("RGB", (50, 50), (100, 150, 200))
    base = AugmentConfig.off()
    jitter = np.asarray(augment(img, 20, base.with_(brightness=0.3), np.random.default_rng(1)))
    assert len(np.unique(jitter.reshape(-1, 3), axis=0)) == 1  # still solid, other colour
    assert not np.array_equal(jitter[0, 0], [100, 150, 200])
    grad = Image.fromarray(np.tile(np.arange(50, dtype=np.uint8)[None, :, None], (50, 1, 3)))
    flipped = np.asarray(augment(grad, 50, base.with_(hflip_p=1.0), np.random.default_rng(0)))
    assert np.array_equal(flipped, np.asarray(grad)[:, ::-1])
    rotated = np.asarray(augment(Image.new("RGB", (50, 50), (255, 255, 255)), 50, base.with_(rotation=5.0),
                                 np.random.default_rng(0)))
    assert rotated.min() == 0 and rotated[25, 25].tolist() == [255, 255, 255]  # black corners, centre kept


def test_fused_resize_matches_two_step_geometry():
    # A left-half-black, right-half-white image: the fused and the two-step crop see the same region.
    arr = np.zeros((60, 90, 3), np.uint8)
    arr[:, 45:] = 255
    img = Image.fromarray(arr)
    for seed in range(5):
        fused = np.asarray(augment(img, 32, AugmentConfig.off().with_(random_resized_crop=True, resize_margin=100),
                                   np.random.default_rng(seed)), np.float32)
        two = np.asarray(augment(img, 32, AugmentConfig.off().with_(random_resized_crop=True, resize_margin=100,
                                                                     fuse_resize=False),
                                 np.random.default_rng(seed)), np.float32)
        assert np.abs(fused - two).mean() < 6.0, seed
