"""The visual signature: backbone feature map -> global pooling -> L2 normalisation per row.

The original system divided the whole batch by one norm (a bug: a signature then depended on the other
images of its batch). Here every row is normalised on its own, so a signature depends only on its image.

Modes (`set_mode`):
- inference (the default after building): BN on running statistics, no stochastic depth;
- training with frozen BN (the default for fine-tuning: with a handful of images per batch, batch
  statistics are noise): BN on running statistics, never updated; stochastic depth active;
- training with live BN (`freeze_bn=False`): BN on batch statistics, running statistics updated.
Changing the mode changes static attributes, so re-split the module (`nnx.split`) after `set_mode`.

Randomness: stochastic depth draws from the "dropout" stream. Each layer holds its own stream, forked
at build time from the build seed (its keys are `nnx.RngState` variables, carried in the state a trainer
splits off); alternatively pass `rngs=nnx.Rngs(dropout=key)` to `__call__`, which takes precedence.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from model.layers import BatchNorm, GeMPool, MeanPool

POOLINGS = ("mean", "gem")


def l2_normalize(x: jax.Array, eps: float = 1e-12) -> jax.Array:
    """Each row divided by its own L2 norm (like torch.nn.functional.normalize(dim=1))."""
    norm = jnp.sqrt(jnp.sum(jnp.square(x), axis=-1, keepdims=True))
    return x / jnp.maximum(norm, eps)


def make_pool(pooling: str, *, gem_p: float = 3.0, gem_learnable: bool = True) -> nnx.Module:
    if pooling == "mean":
        return MeanPool()
    if pooling == "gem":
        return GeMPool(gem_p, learnable=gem_learnable)
    raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")


class SignatureNet(nnx.Module):
    """Backbone + pooling + per-row L2 norm.

    `__call__(x)`: x (N, H, W, 3) ImageNet-normalised floats -> (N, D) float32 unit rows.
    `features(x)`: the pooled, un-normalised (N, D) float32 features.
    """

    def __init__(
        self,
        arch: str,
        backbone: nnx.Module,
        *,
        pooling: str = "mean",
        gem_p: float = 3.0,
        gem_learnable: bool = True,
        grouped_impl: str = "auto",
    ):
        self.arch = arch
        self.backbone = backbone
        self.pooling = pooling
        self.gem_p = gem_p
        self.gem_learnable = gem_learnable
        self.grouped_impl = grouped_impl
        self.pool = make_pool(pooling, gem_p=gem_p, gem_learnable=gem_learnable)

    @property
    def dtype(self):
        return self.backbone.dtype

    def features(self, x: jax.Array, *, rngs: nnx.Rngs | None = None) -> jax.Array:
        return self.pool(self.backbone(x, rngs=rngs))

    def __call__(self, x: jax.Array, *, rngs: nnx.Rngs | None = None) -> jax.Array:
        return l2_normalize(self.features(x, rngs=rngs))


def set_mode(model: nnx.Module, *, training: bool, freeze_bn: bool = True) -> nnx.Module:
    """Switch stochastic depth and BatchNorm behaviour in place (see the module docstring); returns model."""
    for _, m in nnx.iter_modules(model):
        if isinstance(m, BatchNorm):
            m.use_running_average = (not training) or freeze_bn
        elif isinstance(m, nnx.Dropout):
            m.deterministic = not training
    return model
