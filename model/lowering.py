"""How a 2-D convolution is lowered to XLA: the one place that chooses a conv formulation per backend.

Why this exists: XLA:CPU (jaxlib 0.10.2) computes convolutions correctly but slowly in the backward
pass, while its matrix products (Eigen, multithreaded) are fast (measured by benchmarks/conv_cpu.py and
benchmarks/grouped_conv.py, figures in benchmarks/RESULTS.md; the slow grouped backward is jax-ml/jax#13800):
- a native grouped conv (`feature_group_count`) has a weight gradient about 100x slower than G ordinary
  convolutions over channel slices ("split");
- even a dense 3x3 conv spends most of its backward pass in the weight gradient (870 ms of ~1.15 s for
  one 12x32x32x256 layer), while the same gradient as nine matrix products over shifted views of the
  input takes a fraction of that;
- a 1x1 conv is a matrix product; written as one, its whole backward pass is matrix products too.
On GPU/TPU the native form is the one the vendor kernels handle, so it stays the default there.

Every formulation uses the same kernel layout, (kh, kw, in/groups, out), so parameters and checkpoints
do not depend on the choice, and outputs and gradients agree up to float rounding
(tests/model/test_lowering.py).

Requested lowerings (`CONV_IMPLS`, set on a built network with `model.signature.set_conv_impl`):
- "native": every conv is `lax.conv_general_dilated` (grouped ones with `feature_group_count`).
- "split":  grouped convs are G dense convs; dense and depthwise convs native. (The CPU choice before "dots".)
- "dots":   the CPU formulation: 1x1 dense convs are one matrix product ("matmul"); larger dense convs keep
            XLA's forward and input gradient but compute the weight gradient as per-tap matrix products
            ("dwdots", a custom VJP that saves only the input and kernel), or, on small feature maps, are
            products throughout ("im2col"); grouped convs split.
- "auto":   "dots" on CPU (measured faster, benchmarks/conv_cpu.py), "native" elsewhere.
Depthwise convolutions (groups == in channels, EfficientNet) always use the native form: splitting them
would produce hundreds of one-channel convolutions.

`resolve_conv_impl` turns a request into the per-layer lowering that `conv2d` executes (`LAYER_IMPLS`);
a dense kxk conv under "dots" is resolved when traced, from its feature-map size (`dense_dots_choice`):
"dwdots" as above, or "im2col" (the whole conv and both gradients as products over concatenated patches)
on small feature maps, where XLA:CPU's own conv forward and input gradient are pathologically slow.
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
from jax import lax

CONV_IMPLS = ("auto", "native", "split", "dots")
LAYER_IMPLS = ("native", "split", "dots", "matmul", "dwdots", "im2col")
_DIMENSION_NUMBERS = ("NHWC", "HWIO", "NHWC")
# Below this many input channels, the weight gradient of "dwdots" concatenates the kh*kw shifted views
# into one patch matrix and does a single product (the 7x7 stem, 3 channels: 49 products with 3 rows
# each are slow); above it, one product per tap avoids the kh*kw-times larger patch matrix.
_IM2COL_MAX_CHANNELS = 32
# Dense kxk convs whose output has at most this many positions per image use "im2col" under "dots".
_IM2COL_MAX_POSITIONS = 16
Padding = tuple[tuple[int, int], tuple[int, int]]


def default_conv_impl(backend: str | None = None) -> str:
    """The lowering "auto" means on `backend` (default: JAX's default backend)."""
    backend = backend or jax.default_backend()
    return "dots" if backend == "cpu" else "native"


def check_conv_impl(requested: str) -> str:
    """`requested` if it is one of `CONV_IMPLS`, else the one ValueError for a bad `conv_impl`."""
    if requested not in CONV_IMPLS:
        raise ValueError(f"conv_impl must be one of {', '.join(CONV_IMPLS)}, got {requested!r}")
    return requested


def resolve_conv_impl(requested: str, groups: int, in_channels: int, kernel_size: int) -> str:
    """The lowering one conv layer uses: "native", "split", "matmul" or "dots" (see the module docstring)."""
    impl = check_conv_impl(requested)
    impl = default_conv_impl() if impl == "auto" else impl
    if groups == in_channels and groups > 1:  # depthwise: always native
        return "native"
    if groups > 1:
        return "native" if impl == "native" else "split"
    if impl == "dots":
        return "matmul" if kernel_size == 1 else "dots"  # kxk: per shape when traced, `dense_dots_choice`
    return "native"


def dense_dots_choice(x_shape, kernel_shape, stride: int) -> str:
    """Which product formulation a dense conv of these shapes gets under "dots" (decided when tracing).

    1x1: "matmul". Small outputs (at most `_IM2COL_MAX_POSITIONS` positions per image): "im2col", because
    XLA:CPU's conv forward/input gradient are pathologically slow there. Otherwise "dwdots".
    Thresholds from benchmarks/conv_cpu.py (ResNet layer shapes at 64-128 px). The output size is
    ceil(H / stride), exact for the symmetric (k-1)//2 padding every network here uses; the choice
    changes speed only, never values.
    """
    kh, kw = kernel_shape[:2]
    if (kh, kw) == (1, 1):
        return "matmul"
    ho = -(-x_shape[1] // stride)
    wo = -(-x_shape[2] // stride)
    return "im2col" if ho * wo <= _IM2COL_MAX_POSITIONS else "dwdots"


def symmetric_padding(kernel_size: int) -> Padding:
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
    padding: Padding,
    groups: int,
    impl: str,
) -> jax.Array:
    """NHWC convolution with an HWIO kernel of shape (kh, kw, in/groups, out), lowered as `impl`.

    `impl` is a per-layer lowering (`LAYER_IMPLS`; "dense" is accepted as a synonym of "native").
    """
    padding = (tuple(padding[0]), tuple(padding[1]))
    if impl in ("dense", "native"):
        return _xla_conv(x, kernel, stride, padding, groups)
    if impl == "split":
        return _split_conv(x, kernel, stride, padding, groups)
    if impl in ("dots", "matmul", "dwdots", "im2col"):
        if groups != 1:
            raise ValueError(f"conv lowering {impl!r} is for dense convs, got groups={groups}")
        if impl == "dots":
            impl = dense_dots_choice(x.shape, kernel.shape, stride)
        if impl == "matmul":
            if kernel.shape[:2] != (1, 1):
                raise ValueError(f"conv lowering 'matmul' needs a 1x1 kernel, got {kernel.shape[:2]}")
            return _matmul_conv(x, kernel, stride, padding)
        if impl == "im2col":
            return _im2col_conv(x, kernel, stride, padding)
        return _dwdots_conv(x, kernel, stride, padding)
    raise ValueError(f"unknown conv lowering {impl!r}; expected one of {LAYER_IMPLS}")


def _xla_conv(x, kernel, stride: int, padding: Padding, groups: int = 1):
    return lax.conv_general_dilated(
        x, kernel, (stride, stride), padding, dimension_numbers=_DIMENSION_NUMBERS, feature_group_count=groups
    )


def _split_conv(x, kernel, stride: int, padding: Padding, groups: int):
    """G dense convs over channel slices, concatenated: XLA:CPU differentiates these ~100x faster."""
    cin_g = kernel.shape[2]
    cout_g = kernel.shape[3] // groups
    outs = [
        _xla_conv(x[..., g * cin_g : (g + 1) * cin_g], kernel[..., g * cout_g : (g + 1) * cout_g], stride, padding)
        for g in range(groups)
    ]
    return jnp.concatenate(outs, axis=-1)


def _output_size(size: int, k: int, stride: int, pad: tuple[int, int]) -> int:
    return (size + pad[0] + pad[1] - k) // stride + 1


def _tap_views(x, kh: int, kw: int, stride: int, padding: Padding, out_hw: tuple[int, int]) -> list[jax.Array]:
    """The kh*kw strided views of the padded input, one per kernel tap, each shaped like the output.

    Tap (i, j) of the conv multiplies view (i, j) by kernel[i, j], so the conv is the sum of kh*kw
    matrix products over these views (row-major tap order, the kernel's own order).
    """
    (pt, pb), (pl, pr) = padding
    xp = jnp.pad(x, ((0, 0), (pt, pb), (pl, pr), (0, 0))) if any((pt, pb, pl, pr)) else x
    ho, wo = out_hw
    n, c = xp.shape[0], xp.shape[3]
    return [
        lax.slice(xp, (0, i, j, 0), (n, i + (ho - 1) * stride + 1, j + (wo - 1) * stride + 1, c), (1, stride, stride, 1))
        for i in range(kh)
        for j in range(kw)
    ]


def _matmul_conv(x, kernel, stride: int, padding: Padding):
    """A 1x1 conv as one matrix product (a strided slice first when stride > 1); autodiff gives products."""
    ho = _output_size(x.shape[1], 1, stride, padding[0])
    wo = _output_size(x.shape[2], 1, stride, padding[1])
    (view,) = _tap_views(x, 1, 1, stride, padding, (ho, wo))
    return jnp.dot(view, kernel[0, 0], preferred_element_type=jnp.float32).astype(x.dtype)


def _weight_grad_dots(x, g, kernel_shape, stride: int, padding: Padding, dtype):
    """d loss / d kernel of a dense conv as matrix products over the input's tap views.

    kernel[i, j] gets sum over (n, h, w) of view_ij[n, h, w, :]^T g[n, h, w, :], a product contracting
    over every output position: what XLA:CPU does fast, unlike its own conv weight gradient.
    Accumulates in float32 (the contraction runs over N*H*W terms).
    """
    kh, kw, cin, cout = kernel_shape
    views = _tap_views(x, kh, kw, stride, padding, g.shape[1:3])
    g2 = g.reshape(-1, cout)
    contract = (((0,), (0,)), ((), ()))
    if cin < _IM2COL_MAX_CHANNELS and len(views) > 1:
        patches = jnp.concatenate(views, axis=-1).reshape(-1, kh * kw * cin)
        dw = lax.dot_general(patches, g2, contract, preferred_element_type=jnp.float32)
        return dw.reshape(kernel_shape).astype(dtype)
    taps = [lax.dot_general(v.reshape(-1, cin), g2, contract, preferred_element_type=jnp.float32) for v in views]
    return jnp.stack(taps).reshape(kernel_shape).astype(dtype)


@partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _dwdots_conv(x, kernel, stride: int, padding: Padding):
    """A dense conv: XLA's forward and input gradient, the weight gradient as per-tap products.

    Why a custom VJP: XLA's conv forward and input gradient run at a reasonable speed on CPU for
    feature maps of ordinary size; only the weight gradient is slow. The VJP saves only the input and
    the kernel (no kh*kw shifted copies live between the forward and backward passes).
    """
    return _xla_conv(x, kernel, stride, padding)


def _dwdots_fwd(x, kernel, stride, padding):
    return _xla_conv(x, kernel, stride, padding), (x, kernel)


def _dwdots_bwd(stride, padding, residuals, g):
    x, kernel = residuals
    _, input_vjp = jax.vjp(lambda x_: _xla_conv(x_, kernel, stride, padding), x)
    (dx,) = input_vjp(g)
    dw = _weight_grad_dots(x, g, kernel.shape, stride, padding, kernel.dtype)
    return dx, dw


_dwdots_conv.defvjp(_dwdots_fwd, _dwdots_bwd)


def _patches(x, kshape, stride: int, padding: Padding):
    """(N, Ho, Wo, kh*kw*cin): the tap views side by side, tap-major like the kernel's reshape."""
    kh, kw = kshape[:2]
    ho = _output_size(x.shape[1], kh, stride, padding[0])
    wo = _output_size(x.shape[2], kw, stride, padding[1])
    return jnp.concatenate(_tap_views(x, kh, kw, stride, padding, (ho, wo)), axis=-1)


@partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _im2col_conv(x, kernel, stride: int, padding: Padding):
    """A dense conv as one matrix product over concatenated patches, in both directions.

    Why: on small feature maps (a few output positions, many channels: the last stages of a ResNet) XLA:CPU's
    conv forward and input gradient take a slow path (1.8 s for 48x2x2x512 -> 512, 3x3; 26 ms as a product).
    The patch matrix is kh*kw times the input, so it is recomputed in the backward pass, not saved.
    """
    return _im2col_forward(x, kernel, stride, padding)


def _im2col_forward(x, kernel, stride, padding):
    kh, kw, cin, cout = kernel.shape
    p = _patches(x, kernel.shape, stride, padding)
    return jnp.dot(p, kernel.reshape(kh * kw * cin, cout), preferred_element_type=jnp.float32).astype(x.dtype)


def _im2col_fwd(x, kernel, stride, padding):
    return _im2col_forward(x, kernel, stride, padding), (x, kernel)


def _im2col_bwd(stride, padding, residuals, g):
    x, kernel = residuals
    kh, kw, cin, cout = kernel.shape
    p, patches_vjp = jax.vjp(lambda x_: _patches(x_, kernel.shape, stride, padding), x)
    g2 = g.reshape(-1, cout)
    contract = (((0,), (0,)), ((), ()))
    dw = lax.dot_general(p.reshape(-1, kh * kw * cin), g2, contract, preferred_element_type=jnp.float32)
    dp = jnp.dot(g, kernel.reshape(kh * kw * cin, cout).T, preferred_element_type=jnp.float32).astype(x.dtype)
    (dx,) = patches_vjp(dp)  # the patches' transpose: pads and sums, no conv
    return dx, dw.reshape(kernel.shape).astype(kernel.dtype)


_im2col_conv.defvjp(_im2col_fwd, _im2col_bwd)
