"""Building blocks shared by the backbones: conv, BatchNorm, stochastic depth, global pooling.

Conventions (why they matter for an exact torchvision port):
- NHWC activations, HWIO kernels (kh, kw, in/groups, out), explicit symmetric padding.
- Parameters are float32 `nnx.Param`; BN running statistics are float32 `nnx.BatchStat`; computation
  runs in the layer's `dtype` (float32 or bfloat16).
- BN follows torch's conventions: `momentum` is torch's (new = (1 - m) * old + m * batch), the
  running variance is updated with the unbiased batch variance, normalisation uses the biased one.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx
from jax import lax

from model.lowering import conv2d, resolve_conv_impl, symmetric_padding


class Conv2d(nnx.Module):
    """2-D convolution, kernel (kh, kw, in/groups, out), torchvision's symmetric padding.

    The conv is lowered to XLA as "auto" asks (see `model.lowering`: on CPU 1x1 convs become matrix
    products, 3x3/7x7 weight gradients products too); `set_conv_impl` asks otherwise. The lowering is a
    choice of how to compute, not part of the network, so no constructor takes it; the parameters never
    change with it.
    Variables are created as zeros: their values come from `model.state.initialize` (torchvision's
    initialisation, drawn from a seed) or from loaded weights. Building without random draws keeps
    `registry.build` free of XLA compilations.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        *,
        stride: int = 1,
        groups: int = 1,
        use_bias: bool = False,
        dtype=jnp.float32,
    ):
        if in_channels % groups or out_channels % groups:
            raise ValueError(f"channels {in_channels}->{out_channels} not divisible by groups={groups}")
        shape = (kernel_size, kernel_size, in_channels // groups, out_channels)
        self.kernel = nnx.Param(jnp.zeros(shape, jnp.float32))
        self.bias = nnx.Param(jnp.zeros((out_channels,), jnp.float32)) if use_bias else None
        self.stride = stride
        self.groups = groups
        self.padding = symmetric_padding(kernel_size)
        self.dtype = dtype
        self.impl = resolve_conv_impl("auto", groups, in_channels, kernel_size)

    def set_conv_impl(self, conv_impl: str) -> None:
        """Lower this conv as `conv_impl` requests (`model.lowering.CONV_IMPLS`); re-split the module after."""
        kernel_size, _, in_per_group, _ = self.kernel.shape
        self.impl = resolve_conv_impl(conv_impl, self.groups, in_per_group * self.groups, kernel_size)

    def __call__(self, x: jax.Array) -> jax.Array:
        y = conv2d(
            x.astype(self.dtype),
            self.kernel[...].astype(self.dtype),
            stride=self.stride,
            padding=self.padding,
            groups=self.groups,
            impl=self.impl,
        )
        if self.bias is not None:
            y = y + self.bias[...].astype(self.dtype)
        return y


class BatchNorm(nnx.Module):
    """BatchNorm2d over NHWC with torch semantics.

    `use_running_average=True` (the default, and what `set_mode` uses for frozen-BN fine-tuning)
    normalises with the running statistics and never changes them. False: batch statistics, and the
    running statistics are updated (torch momentum convention, unbiased variance like torch).
    """

    def __init__(self, channels: int, *, eps: float = 1e-5, momentum: float = 0.1, dtype=jnp.float32):
        self.scale = nnx.Param(jnp.ones((channels,), jnp.float32))
        self.bias = nnx.Param(jnp.zeros((channels,), jnp.float32))
        self.mean = nnx.BatchStat(jnp.zeros((channels,), jnp.float32))
        self.var = nnx.BatchStat(jnp.ones((channels,), jnp.float32))
        self.eps = eps
        self.momentum = momentum
        self.dtype = dtype
        self.use_running_average = True

    def __call__(self, x: jax.Array) -> jax.Array:
        if self.use_running_average:
            mean, var = self.mean[...], self.var[...]
        else:
            xf = x.astype(jnp.float32)
            mean = jnp.mean(xf, axis=(0, 1, 2))
            var = jnp.mean(jnp.square(xf - mean), axis=(0, 1, 2))
            n = x.shape[0] * x.shape[1] * x.shape[2]
            unbiased = var * (n / max(n - 1, 1))
            m = self.momentum
            self.mean[...] = (1.0 - m) * self.mean[...] + m * lax.stop_gradient(mean)
            self.var[...] = (1.0 - m) * self.var[...] + m * lax.stop_gradient(unbiased)
        # Fold into one multiply-add, computed in float32, applied in the compute dtype.
        inv = self.scale[...] * lax.rsqrt(var + self.eps)
        shift = self.bias[...] - mean * inv
        return x * inv.astype(self.dtype) + shift.astype(self.dtype)


def stochastic_depth(rate: float, rngs: nnx.Rngs) -> nnx.Dropout:
    """torchvision's StochasticDepth(mode="row"): drop a whole residual branch per sample, scale by 1/(1-p).

    That is exactly dropout with the mask broadcast over H, W, C. It is inactive (deterministic) until
    `set_mode(training=True)`; its randomness comes from the "dropout" stream of `rngs` (forked per
    layer at build time; a trainer may also pass `rngs=` to the network's call).
    """
    return nnx.Dropout(rate, broadcast_dims=(1, 2, 3), deterministic=True, rng_collection="dropout", rngs=rngs)


def max_pool_3x3_s2(x: jax.Array) -> jax.Array:
    """torch MaxPool2d(3, stride 2, padding 1): padding never wins the max (-inf)."""
    return lax.reduce_window(
        x, -jnp.inf, lax.max, (1, 3, 3, 1), (1, 2, 2, 1), ((0, 0), (1, 1), (1, 1), (0, 0))
    )


class MeanPool(nnx.Module):
    """Global average pooling over H, W, accumulated in float32."""

    def __call__(self, x: jax.Array) -> jax.Array:
        return jnp.mean(x.astype(jnp.float32), axis=(1, 2))


class GeMPool(nnx.Module):
    """Generalised-mean pooling: (mean(max(x, eps)^p))^(1/p), in float32.

    p = 1 is average pooling, p -> inf max pooling; 3 is the usual starting point for retrieval.
    learnable=True: p is an `nnx.Param` (trained with the network, saved with the weights).
    learnable=False: p is a fixed constant (recorded in the checkpoint metadata).
    """

    def __init__(self, p: float = 3.0, *, learnable: bool = True, eps: float = 1e-6):
        self.p = nnx.Param(jnp.asarray(p, jnp.float32)) if learnable else float(p)
        self.learnable = learnable
        self.eps = eps

    def __call__(self, x: jax.Array) -> jax.Array:
        p = self.p[...] if self.learnable else self.p
        xf = jnp.maximum(x.astype(jnp.float32), self.eps)
        return jnp.mean(xf**p, axis=(1, 2)) ** (1.0 / p)
