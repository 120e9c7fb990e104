"""A tiny synthetic collection for training tests: pattern groups of noisy variants of a base texture.

Each group has a random smooth base image; members are the base with a different crop, a flip or a
colour shift and pixel noise, so a network can learn that members belong together. Splits are pinned
in connections.csv (train / val / test groups), plus unconnected distractors and one NEGATIVE edge.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
from PIL import Image

from data.collection import Connection, ImageRecord, write_connections, write_images

os.environ.setdefault("JAX_PLATFORMS", "cpu")


def _base(rng, size):
    low = rng.uniform(0, 255, size=(6, 6, 3))
    img = Image.fromarray(low.astype(np.uint8)).resize((size, size), Image.Resampling.BICUBIC)
    return np.asarray(img, np.float32)


def _variant(base, rng):
    x = base.copy()
    if rng.random() < 0.5:
        x = x[:, ::-1]
    x = x * rng.uniform(0.8, 1.2, size=(1, 1, 3)) + rng.normal(0, 12, size=x.shape)
    s = x.shape[0]
    o = rng.integers(0, s // 8 + 1, size=2)
    x = x[o[0] : o[0] + s - s // 8, o[1] : o[1] + s - s // 8]
    return Image.fromarray(np.clip(x, 0, 255).astype(np.uint8))


def build_tiny_collection(root, *, groups=(10, 3, 3), members=3, distractors=10, size=48, seed=0):
    rng = np.random.default_rng(seed)
    (root / "img").mkdir(parents=True, exist_ok=True)
    images, conns = [], []
    k = 0
    for split, count in zip(("train", "val", "test"), groups, strict=True):
        for g in range(count):
            base = _base(rng, size)
            uids = []
            for _ in range(members):
                uid = f"{split}{g:02d}_{k:03d}"
                _variant(base, rng).save(root / "img" / f"{uid}.png")
                images.append(ImageRecord(uid=uid, path=f"img/{uid}.png", url=None, meta={}, line=0))
                uids.append(uid)
                k += 1
            for a, b in zip(uids, uids[1:], strict=False):
                conns.append(Connection(a, b, "POSITIVE", split=split))
    for d in range(distractors):
        uid = f"distractor_{d:03d}"
        _variant(_base(rng, size), rng).save(root / "img" / f"{uid}.png")
        images.append(ImageRecord(uid=uid, path=f"img/{uid}.png", url=None, meta={}, line=0))
    conns.append(Connection(images[0].uid, images[3].uid, "NEGATIVE"))
    write_images(root / "images.csv", images)
    write_connections(root / "connections.csv", conns)
    return root


@pytest.fixture(scope="session")
def tiny_collection(tmp_path_factory):
    """A prepared-on-first-use tiny collection (shared: prepare writes into it once)."""
    return build_tiny_collection(tmp_path_factory.mktemp("tiny") / "coll")


@pytest.fixture(scope="session", autouse=True)
def _compilation_cache(tmp_path_factory):
    """Runs in one test session compile the same programs: share them through JAX's persistent cache.

    The checkout's cache (tests/conftest.py sets JAX_COMPILATION_CACHE_DIR) when there is one, so that a
    second test run also skips the compiles; a per-session folder otherwise.
    """
    import jax

    if not jax.config.jax_compilation_cache_dir:
        jax.config.update("jax_compilation_cache_dir", str(tmp_path_factory.mktemp("jax_cache")))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
    yield


def assert_runs_end_alike(ref_out, out) -> None:
    """Two finished runs end bit-identical: newest checkpoint's parameters, exported signatures, eval figures."""
    import json

    import jax

    from data.signatures import load_signatures
    from train.loop import final_params

    a, b = final_params(ref_out), final_params(out)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    sa, sb = load_signatures(ref_out / "signatures.npz"), load_signatures(out / "signatures.npz")
    assert sa.uids == sb.uids
    np.testing.assert_array_equal(sa.vectors, sb.vectors)
    assert json.loads((out / "eval.json").read_text())["trained"] == json.loads(
        (ref_out / "eval.json").read_text())["trained"]
