"""torchvision's EfficientNet B0-B7 `features` (stem, MBConv stages, final 1x1 conv) in Flax NNX, NHWC.

Follows torchvision's construction exactly (the port is tested against it):
- stage table (expand ratio, kernel, stride, in, out, layers) scaled by width_mult (channels rounded with
  `make_divisible(c * w, 8)`) and depth_mult (layers rounded up);
- MBConv = [1x1 expand + BN + SiLU if expand != 1] -> depthwise kxk + BN + SiLU -> squeeze-excitation
  (squeeze width = block *input* channels // 4, SiLU, sigmoid) -> 1x1 project + BN; residual only when
  stride 1 and in == out, with stochastic depth whose rate grows linearly with the block index
  (0.2 * index / total blocks);
- final 1x1 conv to 4 x the last stage width (1280 for B0), BN, SiLU.
Attribute names mirror torchvision's (features[i][j].block[k], fc1/fc2) for the weight converter;
a torchvision Conv2dNormActivation's ".0"/".1" are `conv`/`bn` here.

`remat=True` wraps every MBConv block in `nnx.remat` (activations recomputed in the backward pass,
less memory per image; values, gradients and stochastic-depth draws unchanged).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import jax
import jax.numpy as jnp
from flax import nnx

from model.layers import BatchNorm, Conv2d, stochastic_depth


def _apply_block(block: nnx.Module, x: jax.Array, rngs: nnx.Rngs | None) -> jax.Array:
    return block(x, rngs=rngs)


_apply_block_remat = nnx.remat(_apply_block)

# (expand_ratio, kernel, stride, in_channels, out_channels, num_layers) for B0; scaled per variant.
_B0_STAGES = (
    (1, 3, 1, 32, 16, 1),
    (6, 3, 2, 16, 24, 2),
    (6, 5, 2, 24, 40, 2),
    (6, 3, 2, 40, 80, 3),
    (6, 5, 1, 80, 112, 3),
    (6, 5, 2, 112, 192, 4),
    (6, 3, 1, 192, 320, 1),
)


def make_divisible(v: float, divisor: int = 8, min_value: int | None = None) -> int:
    """Round to the nearest multiple of `divisor`, never more than 10% below v (torchvision/TF rule)."""
    min_value = divisor if min_value is None else min_value
    new_v = max(min_value, int(v + divisor / 2) // divisor * divisor)
    if new_v < 0.9 * v:
        new_v += divisor
    return new_v


@dataclass(frozen=True)
class EfficientNetConfig:
    width_mult: float
    depth_mult: float
    bn_eps: float = 1e-5
    bn_momentum: float = 0.1  # torch convention
    stochastic_depth_prob: float = 0.2

    def stages(self) -> list[tuple[int, int, int, int, int, int]]:
        out = []
        for e, k, s, cin, cout, n in _B0_STAGES:
            out.append(
                (
                    e,
                    k,
                    s,
                    make_divisible(cin * self.width_mult),
                    make_divisible(cout * self.width_mult),
                    int(math.ceil(n * self.depth_mult)),
                )
            )
        return out

    @property
    def out_channels(self) -> int:
        return 4 * self.stages()[-1][4]

    def param_count(self) -> int:
        """Trainable parameters of `features`, counted from the config (no network built)."""

        def conv_bn(cin, cout, k, groups=1):
            return k * k * (cin // groups) * cout + 2 * cout

        stages = self.stages()
        n = conv_bn(3, stages[0][3], 3)
        for expand, k, _stride, cin, cout, layers in stages:
            for j in range(layers):
                c_in = cin if j == 0 else cout
                expanded = make_divisible(c_in * expand)
                squeeze = max(1, c_in // 4)
                if expanded != c_in:
                    n += conv_bn(c_in, expanded, 1)
                n += conv_bn(expanded, expanded, k, expanded)
                n += expanded * squeeze + squeeze + squeeze * expanded + expanded  # SE: two 1x1 convs with bias
                n += conv_bn(expanded, cout, 1)
        return n + conv_bn(stages[-1][4], self.out_channels, 1)


class ConvBNAct(nnx.Module):
    """torchvision's Conv2dNormActivation: conv (no bias) + BN (+ SiLU)."""

    def __init__(self, cin, cout, k, *, stride=1, groups=1, act=True, cfg, dtype):
        self.conv = Conv2d(cin, cout, k, stride=stride, groups=groups, dtype=dtype)
        self.bn = BatchNorm(cout, eps=cfg.bn_eps, momentum=cfg.bn_momentum, dtype=dtype)
        self.act = act

    def __call__(self, x):
        y = self.bn(self.conv(x))
        return jax.nn.silu(y) if self.act else y


class SqueezeExcitation(nnx.Module):
    def __init__(self, channels, squeeze, *, dtype):
        self.fc1 = Conv2d(channels, squeeze, 1, use_bias=True, dtype=dtype)
        self.fc2 = Conv2d(squeeze, channels, 1, use_bias=True, dtype=dtype)

    def __call__(self, x):
        s = jnp.mean(x.astype(jnp.float32), axis=(1, 2), keepdims=True).astype(x.dtype)
        s = jax.nn.sigmoid(self.fc2(jax.nn.silu(self.fc1(s))))
        return x * s


class MBConv(nnx.Module):
    def __init__(self, expand, k, stride, cin, cout, sd_prob, *, cfg, dtype, rngs):
        common = dict(cfg=cfg, dtype=dtype)
        expanded = make_divisible(cin * expand)
        layers = []
        if expanded != cin:
            layers.append(ConvBNAct(cin, expanded, 1, **common))
        layers.append(ConvBNAct(expanded, expanded, k, stride=stride, groups=expanded, **common))
        layers.append(SqueezeExcitation(expanded, max(1, cin // 4), dtype=dtype))
        layers.append(ConvBNAct(expanded, cout, 1, act=False, **common))
        self.block = nnx.List(layers)
        self.use_res_connect = stride == 1 and cin == cout
        self.stochastic_depth = stochastic_depth(sd_prob, rngs)

    def __call__(self, x, *, rngs=None):
        y = x
        for layer in self.block:
            y = layer(y)
        if self.use_res_connect:
            y = self.stochastic_depth(y, rngs=rngs) + x
        return y


class EfficientNet(nnx.Module):
    """torchvision `EfficientNet.features`: returns (N, H/32, W/32, 4 * last stage width)."""

    def __init__(
        self,
        cfg: EfficientNetConfig,
        *,
        dtype=jnp.float32,
        remat: bool = False,
        rngs: nnx.Rngs,
    ):
        self.dtype = dtype
        self.remat = remat
        stages = cfg.stages()
        common = dict(cfg=cfg, dtype=dtype)
        features: list = [ConvBNAct(3, stages[0][3], 3, stride=2, **common)]
        total = sum(s[5] for s in stages)
        block_id = 0
        for expand, k, stride, cin, cout, n in stages:
            blocks = []
            for j in range(n):
                sd = cfg.stochastic_depth_prob * float(block_id) / total
                blocks.append(
                    MBConv(expand, k, stride if j == 0 else 1, cin if j == 0 else cout, cout, sd, rngs=rngs, **common)
                )
                block_id += 1
            features.append(nnx.List(blocks))
        features.append(ConvBNAct(stages[-1][4], cfg.out_channels, 1, **common))
        self.features = nnx.List(features)

    def __call__(self, x: jax.Array, *, rngs: nnx.Rngs | None = None) -> jax.Array:
        x = self.features[0](x.astype(self.dtype))
        apply = _apply_block_remat if self.remat else _apply_block
        for stage in self.features[1:-1]:
            for blk in stage:
                x = apply(blk, x, rngs)
        return self.features[-1](x)
