"""Optimizer and learning-rate schedule (optax), built from a TrainConfig and the parameter tree.

Parameter groups are chosen by *path* ("layer1/0/conv1/kernel"), so presets can name stages:
- weight decay applies to tensors of rank >= 2 (conv kernels, dense weights) unless `decay_all`:
  decaying BN scales and biases pulls them to 0, which is not a regulariser but a change of the
  network's function;
- `frozen_stages`: updates multiplied by 0 (their Adam moments still exist, but cost nothing else);
- `slow_stages`: updates multiplied by `slow_lr_mult`, for early, generic features.
"Adam" is torch's Adam with L2 weight decay added to the gradient before the moments (what the
original used); "AdamW" decays the weights directly, scaled by the learning rate.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax

from train.config import TrainConfig


def path_str(path) -> str:
    parts = []
    for k in path:
        for attr in ("key", "name", "idx"):
            if hasattr(k, attr):
                parts.append(str(getattr(k, attr)))
                break
        else:
            parts.append(str(k))
    return "/".join(parts)


def _matches(path: str, prefixes) -> bool:
    return any(path == p or path.startswith(p.rstrip("/") + "/") for p in prefixes)


def decay_mask(params, decay_all: bool = False):
    return jax.tree_util.tree_map(lambda p: bool(decay_all or jnp.ndim(p) >= 2), params)


def lr_multipliers(params, cfg: TrainConfig):
    def mult(path, _):
        s = path_str(path)
        if _matches(s, cfg.frozen_stages):
            return 0.0
        if _matches(s, cfg.slow_stages):
            return cfg.slow_lr_mult
        return 1.0

    return jax.tree_util.tree_map_with_path(mult, params)


def scale_by_tree(multipliers) -> optax.GradientTransformation:
    """Multiply each update by a fixed per-parameter factor (a Python float tree)."""

    def init_fn(params):
        del params
        return optax.EmptyState()

    def update_fn(updates, state, params=None):
        del params
        return jax.tree_util.tree_map(lambda u, m: u * m if m != 1.0 else u, updates, multipliers), state

    return optax.GradientTransformation(init_fn, update_fn)


def make_schedule(cfg: TrainConfig, total_steps: int) -> optax.Schedule:
    warm = max(0, min(cfg.warmup_steps, max(total_steps - 1, 0)))
    if cfg.schedule == "constant":
        if warm:
            return optax.join_schedules(
                [optax.linear_schedule(0.0, cfg.lr, warm), optax.constant_schedule(cfg.lr)], [warm]
            )
        return optax.constant_schedule(cfg.lr)
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0 if warm else cfg.lr, peak_value=cfg.lr, warmup_steps=warm,
        decay_steps=max(total_steps, warm + 1), end_value=0.0,
    )


def make_optimizer(cfg: TrainConfig, params: Any, total_steps: int) -> optax.GradientTransformation:
    """The full transformation chain: clip -> (L2) -> Adam -> (decoupled decay) -> stage multipliers -> -lr."""
    sched = make_schedule(cfg, total_steps)
    mask = decay_mask(params, cfg.decay_all)
    chain: list[optax.GradientTransformation] = []
    if cfg.grad_clip > 0:
        chain.append(optax.clip_by_global_norm(cfg.grad_clip))
    if cfg.optimizer == "adam":
        if cfg.weight_decay:
            chain.append(optax.add_decayed_weights(cfg.weight_decay, mask))
        chain.append(optax.scale_by_adam())
    else:
        chain.append(optax.scale_by_adam())
        if cfg.weight_decay:
            chain.append(optax.add_decayed_weights(cfg.weight_decay, mask))
    if cfg.frozen_stages or cfg.slow_stages:
        chain.append(scale_by_tree(lr_multipliers(params, cfg)))
    chain.append(optax.scale_by_learning_rate(sched))
    return optax.chain(*chain)
