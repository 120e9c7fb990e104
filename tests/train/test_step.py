"""The data-parallel step on 4 simulated CPU devices equals the single-device step.

Runs tests/train/sharded_check.py in a subprocess: XLA_FLAGS must be set before jax is imported,
and other tests in this pytest worker have imported jax already.
"""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]


def _check(*flags):
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4", PYTHONPATH=str(ROOT),
               JAX_PLATFORMS="cpu")
    r = subprocess.run([sys.executable, str(ROOT / "tests/train/sharded_check.py"), *flags], env=env,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_sharded_step_equals_single_device_and_has_no_activation_all_gather():
    out = _check("--resnext")
    np.testing.assert_allclose(out["loss4"], out["loss1"], rtol=1e-5)
    # parameters moved by ~2e-3 (two Adam steps at lr 1e-3); float summation order is all that differs.
    # Adam divides by sqrt(v), so rounding in tiny gradient entries is amplified: compare at 2% of a step.
    assert out["max_param_moved"] > 1e-3
    assert out["max_param_diff"] < 1e-4 * 2
    assert out["grouped_convs_in_hlo"] >= 1  # the grouped conv really is native inside the step
    assert out["all_gathers"] == []  # nothing gathered: each device keeps its activations
    assert out["all_reduces"] >= 1  # the explicit gradient sum
    assert out["nan_step_kept_state"]
    # the same for a (tiny) ResNeXt built by model/: its grouped convs stay native and nothing is gathered
    assert out["resnext_grouped_convs"] >= 4
    assert out["resnext_all_gathers"] == []


@pytest.mark.slow
def test_in_batch_negatives_sharded_gathers_only_signatures():
    out = _check("--in-batch")
    np.testing.assert_allclose(out["loss4"], out["loss1"], rtol=1e-5)
    assert out["max_param_diff"] < 2e-4
    assert out["all_gathers"]
    for line in out["all_gathers"]:
        shape = re.search(r"= \w+\[([\d,]*)\]", line).group(1)
        dims = [int(d) for d in shape.split(",") if d]
        assert len(dims) == 2 and np.prod(dims) <= 8 * 32, line  # (N, D) signatures or (3, N) group ids


@pytest.mark.slow
def test_remat_step_equals_plain_step():
    """`remat=true` in a real (shard_map, donated, live-BN) train step: same loss, parameters and BN statistics."""
    import jax

    from model.registry import build
    from model.signature import set_mode
    from train.config import apply_overrides, preset
    from train.optim import make_optimizer
    from train.step import global_batch, init_state, make_mesh, make_train_step, replicate, split_model

    cfg = apply_overrides(preset("demo"), {"resolution": 32, "batch_size": 2, "warmup_steps": 0, "margin": 0.5,
                                           "freeze_bn": False})
    mesh = make_mesh(jax.devices()[:1])
    images = np.random.default_rng(0).integers(0, 256, (6, 32, 32, 3), dtype=np.uint8)
    out = {}
    for remat in (False, True):
        net = build("resnet18", seed=0, remat=remat)
        set_mode(net, training=True, freeze_bn=False)
        graphdef, params, rest = split_model(net)
        opt = make_optimizer(cfg, params, total_steps=10)
        state = replicate(init_state(params, rest, opt, 0), mesh)
        fn = make_train_step(graphdef, opt, cfg, mesh)
        losses = []
        for _ in range(2):
            state, m = fn(state, global_batch(images, mesh))
            losses.append(float(m["loss"]))
        out[remat] = (losses, jax.tree.leaves(jax.device_get(state.params)), jax.tree.leaves(jax.device_get(state.rest)))
    (l0, p0, r0), (l1, p1, r1) = out[False], out[True]
    np.testing.assert_allclose(l1, l0, rtol=1e-5)
    assert l0[1] != l0[0]  # the first update changed something
    for a, b in zip(p0 + r0, p1 + r1, strict=True):
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-4, atol=1e-6)
