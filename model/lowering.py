"""How a 2-D convolution is lowered to XLA: the one place that chooses between grouped-conv strategies.

Why this exists: XLA's native grouped convolution (`feature_group_count`) computes the right numbers
everywhere, but on XLA:CPU its weight gradient is about 100x slower than G ordinary convolutions over
channel slices (FIELD-NOTES section 3). On GPU/TPU the native form is the one the vendor kernels handle.
Both strategies use the same kernel layout, (kh, kw, in/groups, out), so parameters and checkpoints do
not depend on the choice, and outputs are identical up to float rounding.

Depthwise convolutions (groups == in channels, EfficientNet) always use the native form: splitting them
would produce hundreds of one-channel convolutions.

The throughput work can change `default_grouped_impl` (per backend) without touching the networks.
"""

from __future__ import annotations

import jax
from jax import lax

GROUPED_IMPLS = ("auto", "native", "split")
_DIMENSION_NUMBERS = ("NHWC", "HWIO", "NHWC")


def default_grouped_impl(backend: str | None = None) -> str:
    """The lowering "auto" means on `backend` (default: JAX's default backend)."""
    backend = backend or jax.default_backend()
    return "split" if backend == "cpu" else "native"


def resolve_grouped_impl(requested: str, groups: int, in_channels: int) -> str:
    """The lowering a conv layer uses: "dense" (groups == 1), "native" or "split"."""
    if requested not in GROUPED_IMPLS:
        raise ValueError(f"grouped_impl must be one of {GROUPED_IMPLS}, got {requested!r}")
    if groups == 1:
        return "dense"
    if groups == in_channels:  # depthwise: always native (see module docstring)
        return "native"
    return default_grouped_impl() if requested == "auto" else requested


def symmetric_padding(kernel_size: int) -> tuple[tuple[int, int], tuple[int, int]]:
    """(k-1)//2 on each side of H and W, whatever the stride, exactly like torchvision's convs.

    XLA's 'SAME' pads stride-2 layers asymmetrically (more on the bottom/right): the shapes agree but
    the outputs do not, so it is never used here.
    """
    p = (kernel_size - 1) // 2
    return ((p, p), (p, p))


def conv2d(
    x: jax.Array,
    kernel: jax.Array,
    *,
    stride: int,
    padding: tuple[tuple[int, int], tuple[int, int]],
    groups: int,
    impl: str,
) -> jax.Array:
    """NHWC convolution with an HWIO kernel of shape (kh, kw, in/groups, out)."""
    strides = (stride, stride)
    if impl in ("dense", "native"):
        return lax.conv_general_dilated(
            x, kernel, strides, padding, dimension_numbers=_DIMENSION_NUMBERS, feature_group_count=groups
        )
    if impl != "split":
        raise ValueError(f"unknown conv lowering {impl!r}")
    cin_g = kernel.shape[2]
    cout_g = kernel.shape[3] // groups
    outs = [
        lax.conv_general_dilated(
            x[..., g * cin_g : (g + 1) * cin_g],
            kernel[..., g * cout_g : (g + 1) * cout_g],
            strides,
            padding,
            dimension_numbers=_DIMENSION_NUMBERS,
        )
        for g in range(groups)
    ]
    return jax.numpy.concatenate(outs, axis=-1)
