"""Run in a subprocess with 4 simulated CPU devices (XLA_FLAGS set by the caller before jax loads).

Prints one JSON line: max parameter difference between the step on a 4-device mesh and on a 1-device
mesh (same global batch, two steps), the losses of both, and the all-gathers / all-reduces found in the
sharded step's compiled HLO. The network is a small stack of the model's own layers with a *native*
grouped convolution and BatchNorm (the case where XLA's partitioner would all-gather activations),
so that compiling stays quick on CPU; the ResNets themselves are exercised by the loop tests.
"""

from __future__ import annotations

import json
import sys

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from train.config import apply_overrides, preset
from train.optim import make_optimizer
from train.step import (
    all_gathers,
    global_batch,
    global_groups,
    init_state,
    make_mesh,
    make_train_step,
    replicate,
    split_model,
)


class TinyNet(nnx.Module):
    """Conv, BN, a native grouped conv (G=4), BN, 1x1 conv, mean pool, per-row L2 norm."""

    def __init__(self, seed: int = 0, live_bn: bool = False):
        rngs = nnx.Rngs(params=jax.random.key(seed))
        ra = not live_bn
        self.conv1 = nnx.Conv(3, 16, (3, 3), strides=2, padding=((1, 1), (1, 1)), use_bias=False, rngs=rngs)
        self.bn1 = nnx.BatchNorm(16, use_running_average=ra, rngs=rngs)
        self.conv2 = nnx.Conv(16, 32, (3, 3), padding=((1, 1), (1, 1)), feature_group_count=4, use_bias=False,
                              rngs=rngs)
        self.bn2 = nnx.BatchNorm(32, use_running_average=ra, rngs=rngs)
        self.conv3 = nnx.Conv(32, 32, (1, 1), rngs=rngs)

    def __call__(self, x, *, rngs=None):
        x = jax.nn.relu(self.bn1(self.conv1(x)))
        x = jax.nn.relu(self.bn2(self.conv2(x)))
        x = jnp.mean(self.conv3(x), axis=(1, 2))
        return x / jnp.linalg.norm(x, axis=1, keepdims=True)


def run(devices, cfg, images, groups, steps=2):
    model = TinyNet(live_bn=not cfg.freeze_bn)
    graphdef, params, rest = split_model(model)
    start = jax.tree.map(np.asarray, params)
    opt = make_optimizer(cfg, params, total_steps=10)
    mesh = make_mesh(devices)
    state = replicate(init_state(params, rest, opt, 0), mesh)
    fn = make_train_step(graphdef, opt, cfg, mesh, with_groups=groups is not None)
    losses, hlo = [], ""
    for s in range(steps):
        args = [state, global_batch(images[s], mesh)]
        if groups is not None:
            args.append(global_groups(groups[s], mesh))
        if s == 0:
            compiled = fn.lower(*args).compile()
            hlo = compiled.as_text()
        state, m = compiled(*args)
        losses.append(float(m["loss"]))
    params = jax.tree.map(np.asarray, state.params)
    # a non-finite loss must leave the state untouched (and say so)
    bad = images[0].astype(np.float32).copy()
    bad[0, 0, 0, 0] = np.nan
    args = [state, global_batch(bad, mesh)] + ([global_groups(groups[0], mesh)] if groups is not None else [])
    state, m = fn(*args)
    nan_kept = bool(not m["finite"]) and _maxdiff(params, jax.tree.map(np.asarray, state.params)) == 0.0
    return start, params, jax.tree.map(np.asarray, state.rest), losses, hlo, nan_kept


def resnext_hlo(cfg) -> dict:
    """Compile (not run) the 4-device step for a tiny ResNeXt built from model/ with native grouped convs."""
    from model.resnet import ResNet, ResNetConfig
    from model.signature import SignatureNet, set_conv_impl, set_mode
    from model.state import initialize

    backbone = ResNet(ResNetConfig("bottleneck", (1, 1, 1, 1), groups=8, width_per_group=4), rngs=nnx.Rngs(0))
    net = set_conv_impl(SignatureNet("tiny_resnext", backbone), "native")
    initialize(net, 0)
    set_mode(net, training=True, freeze_bn=True)
    graphdef, params, rest = split_model(net)
    opt = make_optimizer(cfg, params, total_steps=10)
    mesh = make_mesh()
    state = replicate(init_state(params, rest, opt, 0), mesh)
    fn = make_train_step(graphdef, opt, cfg, mesh)
    images = np.zeros((3 * 8, 32, 32, 3), np.uint8)
    hlo = fn.lower(state, global_batch(images, mesh)).compile().as_text()
    return {"resnext_grouped_convs": hlo.count("feature_group_count=8"), "resnext_all_gathers": all_gathers(hlo)}


def _maxdiff(a, b):
    return max(float(np.max(np.abs(x - y))) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True))


def main() -> None:
    assert len(jax.devices()) == 4, jax.devices()
    in_batch = "--in-batch" in sys.argv
    live_bn = "--live-bn" in sys.argv
    cfg = apply_overrides(preset("demo"), {"lr": 1e-3, "warmup_steps": 0, "in_batch_negatives": in_batch,
                                           "margin": 0.5, "freeze_bn": not live_bn})
    rng = np.random.default_rng(0)
    n = 8  # triplets per global batch: 2 per device
    images = [rng.normal(size=(3 * n, 16, 16, 3)).astype(np.float32) for _ in range(2)]
    groups = [rng.integers(0, 5, size=(3, n)).astype(np.int32) for _ in range(2)] if in_batch else None
    start, p4, r4, l4, hlo, nan_kept = run(jax.devices(), cfg, images, groups)
    _, p1, r1, l1, _, _ = run(jax.devices()[:1], cfg, images, groups)
    out = {
        "max_param_diff": _maxdiff(p4, p1),
        "max_param_moved": _maxdiff(p4, start),
        "max_rest_diff": _maxdiff(r4, r1),
        "nan_step_kept_state": nan_kept,
        "loss4": l4,
        "loss1": l1,
        "grouped_convs_in_hlo": hlo.count("feature_group_count=4"),
        "all_gathers": all_gathers(hlo),
        "all_reduces": sum(1 for ln in hlo.splitlines() if " all-reduce(" in ln or "all-reduce-start(" in ln),
    }
    if "--resnext" in sys.argv:
        out.update(resnext_hlo(cfg))
    print(json.dumps(out))


if __name__ == "__main__":
    main()
