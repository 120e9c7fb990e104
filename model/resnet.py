"""torchvision's ResNet / ResNeXt feature extractor (up to layer4) in Flax NNX, NHWC.

Attribute names mirror torchvision's module names (conv1, bn1, layer1[i].conv2, ...) so that the
weight converter maps names by rule; `downsample_conv`/`downsample_bn` are torch's downsample.0/.1.
ResNet "v1.5": the stride of a bottleneck sits on its 3x3 conv, as in torchvision.

`remat=True` wraps every residual block in `nnx.remat`: the backward pass recomputes the block's
activations, so a training step needs to keep only each block's input instead of all its intermediates
(more images per device, for roughly one more forward pass of compute). Values and gradients are
unchanged. Whether memory actually drops is the compiler's doing: XLA:CPU merges the recomputation back
(docs/training.md, "Throughput").
"""

from __future__ import annotations

from dataclasses import dataclass

import jax
import jax.numpy as jnp
from flax import nnx

from model.layers import BatchNorm, Conv2d, max_pool_3x3_s2


def _apply_block(block: nnx.Module, x: jax.Array) -> jax.Array:
    return block(x)


_apply_block_remat = nnx.remat(_apply_block)


@dataclass(frozen=True)
class ResNetConfig:
    block: str  # "basic" | "bottleneck"
    layers: tuple[int, int, int, int]
    groups: int = 1
    width_per_group: int = 64

    @property
    def expansion(self) -> int:
        return 1 if self.block == "basic" else 4

    def param_count(self) -> int:
        """Trainable parameters of the feature extractor, counted from the config (no network built)."""

        def conv_bn(cin, cout, k, groups=1):
            return k * k * (cin // groups) * cout + 2 * cout

        n = conv_bn(3, 64, 7)
        inplanes = 64
        for i, (planes, layers) in enumerate(zip((64, 128, 256, 512), self.layers, strict=True)):
            for j in range(layers):
                stride = 2 if (i > 0 and j == 0) else 1
                out = planes * self.expansion
                if self.block == "basic":
                    n += conv_bn(inplanes, planes, 3) + conv_bn(planes, planes, 3)
                else:
                    width = int(planes * (self.width_per_group / 64.0)) * self.groups
                    n += conv_bn(inplanes, width, 1) + conv_bn(width, width, 3, self.groups) + conv_bn(width, out, 1)
                if stride != 1 or inplanes != out:
                    n += conv_bn(inplanes, out, 1)
                inplanes = out
        return n

    @property
    def out_channels(self) -> int:
        return 512 * self.expansion


class BasicBlock(nnx.Module):
    def __init__(self, inplanes, planes, stride, *, dtype):
        conv = dict(dtype=dtype)
        self.conv1 = Conv2d(inplanes, planes, 3, stride=stride, **conv)
        self.bn1 = BatchNorm(planes, dtype=dtype)
        self.conv2 = Conv2d(planes, planes, 3, **conv)
        self.bn2 = BatchNorm(planes, dtype=dtype)
        if stride != 1 or inplanes != planes:
            self.downsample_conv = Conv2d(inplanes, planes, 1, stride=stride, **conv)
            self.downsample_bn = BatchNorm(planes, dtype=dtype)
        else:
            self.downsample_conv = self.downsample_bn = None

    def __call__(self, x):
        out = jax.nn.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        identity = x if self.downsample_conv is None else self.downsample_bn(self.downsample_conv(x))
        return jax.nn.relu(out + identity)


class Bottleneck(nnx.Module):
    def __init__(self, inplanes, planes, stride, *, groups, width_per_group, dtype):
        width = int(planes * (width_per_group / 64.0)) * groups
        conv = dict(dtype=dtype)
        self.conv1 = Conv2d(inplanes, width, 1, **conv)
        self.bn1 = BatchNorm(width, dtype=dtype)
        self.conv2 = Conv2d(width, width, 3, stride=stride, groups=groups, **conv)
        self.bn2 = BatchNorm(width, dtype=dtype)
        self.conv3 = Conv2d(width, planes * 4, 1, **conv)
        self.bn3 = BatchNorm(planes * 4, dtype=dtype)
        if stride != 1 or inplanes != planes * 4:
            self.downsample_conv = Conv2d(inplanes, planes * 4, 1, stride=stride, **conv)
            self.downsample_bn = BatchNorm(planes * 4, dtype=dtype)
        else:
            self.downsample_conv = self.downsample_bn = None

    def __call__(self, x):
        out = jax.nn.relu(self.bn1(self.conv1(x)))
        out = jax.nn.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        identity = x if self.downsample_conv is None else self.downsample_bn(self.downsample_conv(x))
        return jax.nn.relu(out + identity)


class ResNet(nnx.Module):
    """Stem + layer1..layer4; returns the layer4 feature map (N, H/32, W/32, 512 * expansion)."""

    def __init__(
        self,
        cfg: ResNetConfig,
        *,
        dtype=jnp.float32,
        remat: bool = False,
        rngs: nnx.Rngs,
    ):
        del rngs  # no random layers; parameter values come from model.state
        self.dtype = dtype
        self.remat = remat
        self.conv1 = Conv2d(3, 64, 7, stride=2, dtype=dtype)
        self.bn1 = BatchNorm(64, dtype=dtype)
        inplanes = 64
        for i, (planes, n) in enumerate(zip((64, 128, 256, 512), cfg.layers, strict=True)):
            blocks = []
            for j in range(n):
                stride = 2 if (i > 0 and j == 0) else 1
                if cfg.block == "basic":
                    blk = BasicBlock(inplanes, planes, stride, dtype=dtype)
                else:
                    blk = Bottleneck(
                        inplanes,
                        planes,
                        stride,
                        groups=cfg.groups,
                        width_per_group=cfg.width_per_group,
                        dtype=dtype,
                    )
                blocks.append(blk)
                inplanes = planes * cfg.expansion
            setattr(self, f"layer{i + 1}", nnx.List(blocks))

    def __call__(self, x: jax.Array, *, rngs: nnx.Rngs | None = None) -> jax.Array:
        del rngs  # no stochastic layers in ResNets
        x = jax.nn.relu(self.bn1(self.conv1(x.astype(self.dtype))))
        x = max_pool_3x3_s2(x)
        apply = _apply_block_remat if self.remat else _apply_block
        for layer in (self.layer1, self.layer2, self.layer3, self.layer4):
            for blk in layer:
                x = apply(blk, x)
        return x
