"""Weights directories: round trip, random-init determinism, clear errors."""

from __future__ import annotations

import json

import jax
import numpy as np
import pytest
from flax import nnx

from model.registry import build
from model.weights import WeightsError, load_or_init, load_weights, read_meta, save_weights
from tests.model.helpers import run_features

X = np.random.default_rng(3).standard_normal((2, 32, 32, 3)).astype(np.float32)


def _params(m):
    return [np.asarray(v) for v in jax.tree.leaves(nnx.state(m, nnx.Any(nnx.Param, nnx.BatchStat)))]


def test_round_trip_gives_identical_outputs(tmp_path):
    m = build("resnet18", seed=5, pooling="gem")
    m.pool.p[...] = 2.5  # a "trained" p must survive the round trip
    m.backbone.bn1.mean[...] = m.backbone.bn1.mean[...] + 0.3  # and BN statistics
    save_weights(m, tmp_path / "w", meta={"note": "test"})
    meta = read_meta(tmp_path / "w")
    assert meta["arch"] == "resnet18" and meta["pooling"] == "gem" and meta["meta"] == {"note": "test"}
    back = load_weights(tmp_path / "w")
    assert back.pooling == "gem" and float(back.pool.p[...]) == 2.5
    for a, b in zip(_params(m), _params(back), strict=True):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(run_features(m, X)[1], run_features(back, X)[1])
    as_mean = load_weights(tmp_path / "w", pooling="mean")  # another pooling on the same backbone
    assert as_mean.pooling == "mean"
    bf16 = load_weights(tmp_path / "w", dtype="bfloat16")
    assert bf16.dtype == np.dtype("bfloat16") and run_features(bf16, X)[1].dtype == np.float32


def test_overwrite_is_atomic_and_guarded(tmp_path):
    a, b = build("resnet18", seed=0), build("resnet18", seed=1)
    save_weights(a, tmp_path / "w")
    save_weights(b, tmp_path / "w")  # replacing earlier weights is fine
    np.testing.assert_array_equal(_params(load_weights(tmp_path / "w"))[0], _params(b)[0])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["w"]  # no temporary leftovers
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "thesis.txt").write_text("precious")
    with pytest.raises(WeightsError, match="not a weights directory"):
        save_weights(a, tmp_path / "notes")
    assert (tmp_path / "notes" / "thesis.txt").read_text() == "precious"


def test_load_or_init_random_is_deterministic():
    a = load_or_init("random", "resnet18", seed=0)
    b = load_or_init("random", "resnet18", seed=0)
    c = load_or_init("random", "resnet18", seed=1)
    assert all(np.array_equal(x, y) for x, y in zip(_params(a), _params(b), strict=True))
    ka, kc = (np.asarray(m.backbone.layer4[1].conv2.kernel[...]) for m in (a, c))
    assert not np.array_equal(ka, kc)
    with pytest.raises(WeightsError, match="--arch"):
        load_or_init("random", None)


def test_clear_errors(tmp_path):
    with pytest.raises(WeightsError, match="no such weights directory"):
        load_weights(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(WeightsError, match="not a weights directory"):
        load_weights(tmp_path / "empty")
    save_weights(build("resnet18"), tmp_path / "w")
    with pytest.raises(WeightsError, match="holds resnet18 weights, not resnet34"):
        load_or_init(str(tmp_path / "w"), "resnet34")
    assert load_or_init(str(tmp_path / "w"), None).arch == "resnet18"
    meta = json.loads((tmp_path / "w" / "meta.json").read_text())
    meta["arch"] = "resnet34"  # a checkpoint whose contents do not fit the recorded arch
    (tmp_path / "w" / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(WeightsError, match="does not fit resnet34"):
        load_weights(tmp_path / "w")
