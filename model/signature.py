"""The visual signature: backbone feature map -> global pooling -> L2 normalisation per row.

The original system divided the whole batch by one norm (a bug: a signature then depended on the other
images of its batch). Here every row is normalised on its own, so a signature depends only on its image.

Modes (`set_mode`):
- inference (the default after building): BN on running statistics, no stochastic depth;
- training with frozen BN (the default for fine-tuning: with a handful of images per batch, batch
  statistics are noise): BN on running statistics, never updated; stochastic depth active;
- training with live BN (`freeze_bn=False`): BN on batch statistics, running statistics updated.
Changing the mode changes static attributes, so re-split the module (`nnx.split`) after `set_mode`.

Conv lowering (`set_conv_impl`): how each convolution is computed ("auto": per backend, see
`model.lowering`) is set the same way, on a built network, not passed through its constructors: it is a
choice of computation, never part of the parameters or the checkpoint.

Randomness: stochastic depth draws from the "dropout" stream. Each layer holds its own stream, forked
at build time from the build seed (its keys are `nnx.RngState` variables, carried in the state a trainer
splits off); alternatively pass `rngs=nnx.Rngs(dropout=key)` to `__call__`, which takes precedence.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from model.layers import BatchNorm, Conv2d, GeMPool, MeanPool
from model.lowering import check_conv_impl

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
    ):
        self.arch = arch
        self.backbone = backbone
        self.pooling = pooling
        self.gem_p = gem_p
        self.gem_learnable = gem_learnable
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


def set_conv_impl(model: nnx.Module, conv_impl: str) -> nnx.Module:
    """Lower every convolution of `model` as `conv_impl` asks (`model.lowering.CONV_IMPLS`); returns model.

    Networks are built with "auto" (the backend's fastest formulation); this is how a caller (the CLI's
    `--conv-impl`, a benchmark, a parity test) asks for another. Outputs agree up to float rounding, the
    parameters do not change. Like `set_mode`, it changes static attributes: re-split after it.
    """
    check_conv_impl(conv_impl)
    for _, m in nnx.iter_modules(model):
        if isinstance(m, Conv2d):
            m.set_conv_impl(conv_impl)
    return model
