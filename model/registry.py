"""The architectures this project offers, and `build`: the one way to make a network.

`build(arch, seed=...)` is deterministic: parameters are drawn on the host (NumPy, see `model.state`) from
`seed` alone, so the same seed gives bit-identical parameters wherever (and on whatever accelerator) the
network is built.
That lets "before training" (`model embed --weights random`) and the start of training be compared.
"""

from __future__ import annotations

from dataclasses import dataclass

import jax
import jax.numpy as jnp
from flax import nnx

from model.efficientnet import EfficientNet, EfficientNetConfig
from model.resnet import ResNet, ResNetConfig
from model.signature import POOLINGS, SignatureNet
from model.state import initialize


@dataclass(frozen=True)
class ArchSpec:
    """One architecture: its torchvision builder, default ImageNet weights, eval resolution and config."""

    name: str
    family: str  # "resnet" | "efficientnet"
    signature_dim: int
    eval_resolution: int  # torchvision's crop size for its ImageNet weights
    torchvision_name: str  # torchvision.models builder, e.g. "resnext101_32x8d"
    torchvision_weights: str  # torchvision's default weights enum, e.g. "ResNeXt101_32X8D_Weights.IMAGENET1K_V2"
    config: ResNetConfig | EfficientNetConfig


def _resnet(name, weights, block, layers, groups=1, width_per_group=64) -> ArchSpec:
    cfg = ResNetConfig(block, layers, groups, width_per_group)
    return ArchSpec(name, "resnet", cfg.out_channels, 224, name, weights, cfg)


def _efficientnet(i, width, depth, resolution, weights_version="IMAGENET1K_V1") -> ArchSpec:
    # torchvision builds B5-B7 with BatchNorm2d(eps=1e-3, momentum=0.01) (their weights come from TF).
    bn = dict(bn_eps=1e-3, bn_momentum=0.01) if i >= 5 else {}
    cfg = EfficientNetConfig(width, depth, **bn)
    name = f"efficientnet_b{i}"
    return ArchSpec(
        name, "efficientnet", cfg.out_channels, resolution, name, f"EfficientNet_B{i}_Weights.{weights_version}", cfg
    )


ARCHS: dict[str, ArchSpec] = {
    s.name: s
    for s in (
        _resnet("resnet18", "ResNet18_Weights.IMAGENET1K_V1", "basic", (2, 2, 2, 2)),
        _resnet("resnet34", "ResNet34_Weights.IMAGENET1K_V1", "basic", (3, 4, 6, 3)),
        _resnet("resnet50", "ResNet50_Weights.IMAGENET1K_V2", "bottleneck", (3, 4, 6, 3)),
        _resnet("resnet101", "ResNet101_Weights.IMAGENET1K_V2", "bottleneck", (3, 4, 23, 3)),
        _resnet("resnet152", "ResNet152_Weights.IMAGENET1K_V2", "bottleneck", (3, 8, 36, 3)),
        _resnet("resnext50_32x4d", "ResNeXt50_32X4D_Weights.IMAGENET1K_V2", "bottleneck", (3, 4, 6, 3), 32, 4),
        _resnet("resnext101_32x8d", "ResNeXt101_32X8D_Weights.IMAGENET1K_V2", "bottleneck", (3, 4, 23, 3), 32, 8),
        _resnet("resnext101_64x4d", "ResNeXt101_64X4D_Weights.IMAGENET1K_V1", "bottleneck", (3, 4, 23, 3), 64, 4),
        _efficientnet(0, 1.0, 1.0, 224),
        _efficientnet(1, 1.0, 1.1, 240, "IMAGENET1K_V2"),
        _efficientnet(2, 1.1, 1.2, 288),
        _efficientnet(3, 1.2, 1.4, 300),
        _efficientnet(4, 1.4, 1.8, 380),
        _efficientnet(5, 1.6, 2.2, 456),
        _efficientnet(6, 1.8, 2.6, 528),
        _efficientnet(7, 2.0, 3.1, 600),
    )
}

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def get_spec(arch: str) -> ArchSpec:
    try:
        return ARCHS[arch]
    except KeyError:
        raise ValueError(f"unknown architecture {arch!r}; valid names: {', '.join(ARCHS)}") from None


def resolve_dtype(dtype):
    """Accept "float32"/"bfloat16" or a JAX dtype; anything else is an error."""
    if isinstance(dtype, str):
        if dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {list(DTYPES)}, got {dtype!r}")
        return DTYPES[dtype]
    if jnp.dtype(dtype) not in (jnp.dtype(jnp.float32), jnp.dtype(jnp.bfloat16)):
        raise ValueError(f"dtype must be float32 or bfloat16, got {dtype}")
    return jnp.dtype(dtype).type


def _construct(spec: ArchSpec, rngs, dtype, pooling, gem_p, gem_learnable, remat) -> SignatureNet:
    net_cls = ResNet if spec.family == "resnet" else EfficientNet
    backbone = net_cls(spec.config, dtype=dtype, remat=remat, rngs=rngs)
    return SignatureNet(spec.name, backbone, pooling=pooling, gem_p=gem_p, gem_learnable=gem_learnable)


def _check_pooling(pooling: str) -> None:
    if pooling not in POOLINGS:
        raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")


def _rngs(seed: int) -> nnx.Rngs:
    # Only used while tracing the structure abstractly; values come from model.state.initialize.
    key = jax.random.key(seed)
    return nnx.Rngs(params=key, dropout=jax.random.fold_in(key, 1))


def build_abstract(
    arch: str,
    *,
    dtype=jnp.float32,
    pooling: str = "mean",
    gem_p: float = 3.0,
    gem_learnable: bool = True,
    remat: bool = False,
) -> SignatureNet:
    """The network's structure with shape-only variables (no memory, no random draws), for loading weights.

    `remat=True`: every residual block recomputes its activations in the backward pass (less memory per
    image when training, same values); it changes no variable, so any state of the same arch fits.
    """
    spec = get_spec(arch)
    dtype = resolve_dtype(dtype)
    _check_pooling(pooling)
    return nnx.eval_shape(lambda: _construct(spec, _rngs(0), dtype, pooling, gem_p, gem_learnable, remat))


def build(
    arch: str,
    *,
    seed: int = 0,
    dtype=jnp.float32,
    pooling: str = "mean",
    gem_p: float = 3.0,
    gem_learnable: bool = True,
    remat: bool = False,
) -> SignatureNet:
    """A randomly initialised SignatureNet, in inference mode; the same seed gives the same parameters.

    Initialisation follows torchvision (kaiming-normal fan-out convs, BN scale 1 / bias 0), drawn on the
    host from `seed` (see `model.state`). `pooling`: "mean" or "gem" (`gem_p` initial exponent, learnable
    unless `gem_learnable=False`). `dtype`: the compute dtype ("float32"/"bfloat16" or a JAX dtype);
    parameters and BN statistics are always float32. `remat`: see `build_abstract`. Convolutions are
    lowered as "auto" (per backend); `model.signature.set_conv_impl` asks for another lowering.
    """
    model = build_abstract(
        arch, dtype=dtype, pooling=pooling, gem_p=gem_p, gem_learnable=gem_learnable, remat=remat
    )
    initialize(model, seed, gem_p=gem_p)
    return model


def arch_param_count(arch: str) -> int:
    """The backbone's trainable parameters from the architecture's config alone: no network is built.

    Equal to `param_count(build_abstract(arch))` (tested for every arch), but instant: building the
    structure of all 16 networks, even shape-only, takes seconds.
    """
    return get_spec(arch).config.param_count()


def param_count(model: nnx.Module, *, backbone_only: bool = True) -> int:
    """Number of trainable parameters (by default only the backbone's, i.e. without GeM's p)."""
    target = model.backbone if backbone_only else model
    return sum(int(v.size) for v in jax.tree.leaves(nnx.state(target, nnx.Param)))
