"""Conv lowerings: every formulation equals lax.conv_general_dilated (values and both gradients).

Also: torchvision's symmetric padding, and which lowering each request resolves to per layer.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from model.lowering import (
    CONV_IMPLS,
    conv2d,
    default_conv_impl,
    dense_dots_choice,
    resolve_conv_impl,
    symmetric_padding,
)


def _reference(x, k, stride, pad, groups):
    return lax.conv_general_dilated(
        x, k, (stride, stride), pad, dimension_numbers=("NHWC", "HWIO", "NHWC"), feature_group_count=groups
    )


def _value_and_grads(fn, x, k):
    """Output and d/dx, d/dk of a loss that weights every output element differently (sin)."""

    def f(x, k):
        y = fn(x, k)
        return jnp.sum(jnp.sin(y.astype(jnp.float32))), y

    (_, y), (gx, gk) = jax.jit(jax.value_and_grad(f, argnums=(0, 1), has_aux=True))(x, k)
    return y, gx, gk


def _case(size, cin, cout, ksize, groups, dtype, seed=0):
    rng = np.random.default_rng(seed)
    x = jnp.asarray(rng.standard_normal((2, size, size, cin)), dtype)
    k = jnp.asarray(rng.standard_normal((ksize, ksize, cin // groups, cout)) / np.sqrt(ksize * ksize * cin), dtype)
    return x, k


# (layer lowering, kernel size, groups, in, out): every formulation a network can get.
CASES = [
    ("matmul", 1, 1, 6, 10),
    ("dwdots", 3, 1, 6, 10),  # few channels: weight gradient over one patch matrix
    ("dwdots", 3, 1, 40, 8),  # cin >= the threshold: one weight-gradient product per tap
    ("dwdots", 7, 1, 3, 8),  # the stem
    ("im2col", 3, 1, 6, 10),
    ("im2col", 7, 1, 3, 8),
    ("dots", 3, 1, 6, 10),  # picks im2col or dwdots by feature-map size
    ("split", 3, 4, 16, 8),
    ("split", 1, 2, 8, 6),
    ("native", 3, 1, 6, 10),
    ("native", 3, 8, 8, 8),  # depthwise
]


@pytest.mark.parametrize("impl,ksize,groups,cin,cout", CASES)
@pytest.mark.parametrize("stride,size", [(1, 7), (2, 9), (2, 8)])
def test_lowering_equals_lax_conv_float32(impl, ksize, groups, cin, cout, stride, size):
    x, k = _case(size, cin, cout, ksize, groups, jnp.float32, seed=size * 10 + ksize)
    pad = symmetric_padding(ksize)
    y, gx, gk = _value_and_grads(lambda x, k: conv2d(x, k, stride=stride, padding=pad, groups=groups, impl=impl), x, k)
    yr, gxr, gkr = _value_and_grads(lambda x, k: _reference(x, k, stride, pad, groups), x, k)
    assert y.shape == yr.shape == (2, -(-size // stride), -(-size // stride), cout)
    assert gk.shape == k.shape and gk.dtype == k.dtype and gx.dtype == x.dtype
    np.testing.assert_allclose(y, yr, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(gx, gxr, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(gk, gkr, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("impl,ksize,groups,cin,cout", [c for c in CASES if c[0] != "native"])
def test_lowering_equals_lax_conv_bfloat16(impl, ksize, groups, cin, cout):
    """bf16 inputs: same values as the f32 reference up to bf16 rounding; gradients come back in bf16."""
    stride, size = 2, 9
    x, k = _case(size, cin, cout, ksize, groups, jnp.bfloat16, seed=ksize)
    pad = symmetric_padding(ksize)
    y, gx, gk = _value_and_grads(lambda x, k: conv2d(x, k, stride=stride, padding=pad, groups=groups, impl=impl), x, k)
    f32 = (x.astype(jnp.float32), k.astype(jnp.float32))
    yr, gxr, gkr = _value_and_grads(lambda x, k: _reference(x, k, stride, pad, groups), *f32)
    assert y.dtype == gx.dtype == gk.dtype == jnp.bfloat16
    for ours, ref in ((y, yr), (gx, gxr), (gk, gkr)):
        ours = np.asarray(ours.astype(jnp.float32))
        scale = float(np.max(np.abs(ref)))
        np.testing.assert_allclose(ours, ref, atol=0.03 * scale + 0.02)


def test_dwdots_per_tap_path_matches_with_few_channels(monkeypatch):
    """Both weight-gradient paths (one patch matrix / one product per tap) on the same small layer."""
    import model.lowering as lowering

    x, k = _case(9, 6, 5, 3, 1, jnp.float32, seed=3)
    pad = symmetric_padding(3)
    fn = lambda x, k: conv2d(x, k, stride=2, padding=pad, groups=1, impl="dwdots")  # noqa: E731
    _, _, gk_patches = _value_and_grads(fn, x, k)
    monkeypatch.setattr(lowering, "_IM2COL_MAX_CHANNELS", 0)
    _, _, gk_taps = _value_and_grads(fn, x, k)
    _, _, gk_ref = _value_and_grads(lambda x, k: _reference(x, k, 2, pad, 1), x, k)
    np.testing.assert_allclose(gk_patches, gk_ref, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(gk_taps, gk_ref, rtol=1e-5, atol=1e-4)


def test_dwdots_under_remat_and_second_call():
    """The custom VJP composes with jax.checkpoint (the networks' remat option) and vmap-free jit reuse."""
    x, k = _case(8, 8, 4, 3, 1, jnp.float32, seed=5)
    pad = symmetric_padding(3)
    f = jax.checkpoint(lambda x, k: conv2d(x, k, stride=1, padding=pad, groups=1, impl="dwdots"))
    _, gx, gk = _value_and_grads(f, x, k)
    _, gxr, gkr = _value_and_grads(lambda x, k: _reference(x, k, 1, pad, 1), x, k)
    np.testing.assert_allclose(gx, gxr, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(gk, gkr, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("stride,size", [(2, 8), (2, 9), (1, 7)])
def test_symmetric_padding_matches_torch(stride, size):
    """Stride-2 convs on even inputs are where XLA's 'SAME' (asymmetric) would drift from torch."""
    import torch

    rng = np.random.default_rng(size)
    x = rng.standard_normal((1, size, size, 4)).astype(np.float32)
    k = rng.standard_normal((3, 3, 4, 5)).astype(np.float32)
    ref = torch.nn.functional.conv2d(
        torch.from_numpy(x.transpose(0, 3, 1, 2)), torch.from_numpy(k.transpose(3, 2, 0, 1)), stride=stride, padding=1
    )
    for impl in ("native", "dwdots"):
        ours = conv2d(jnp.asarray(x), jnp.asarray(k), stride=stride, padding=symmetric_padding(3), groups=1, impl=impl)
        np.testing.assert_allclose(np.asarray(ours), ref.numpy().transpose(0, 2, 3, 1), atol=1e-5)


def test_lowering_choice():
    assert CONV_IMPLS == ("auto", "native", "split", "dots")
    assert default_conv_impl("cpu") == "dots"
    assert default_conv_impl("gpu") == "native"
    assert default_conv_impl("tpu") == "native"
    # dense convs
    assert resolve_conv_impl("dots", 1, 64, 1) == "matmul"
    assert resolve_conv_impl("dots", 1, 64, 3) == "dots"
    assert resolve_conv_impl("dots", 1, 3, 7) == "dots"
    assert resolve_conv_impl("split", 1, 64, 3) == "native"
    assert resolve_conv_impl("native", 1, 64, 1) == "native"
    # grouped convs
    assert resolve_conv_impl("dots", 32, 256, 3) == "split"
    assert resolve_conv_impl("split", 32, 256, 3) == "split"
    assert resolve_conv_impl("native", 32, 256, 3) == "native"
    # depthwise: never split, never products
    for impl in CONV_IMPLS:
        assert resolve_conv_impl(impl, 64, 64, 3) == "native"
    # "auto" follows the backend this test runs on
    expected_dense = "dots" if jax.default_backend() == "cpu" else "native"
    assert resolve_conv_impl("auto", 1, 64, 3) == expected_dense
    with pytest.raises(ValueError, match="conv_impl"):
        resolve_conv_impl("fast", 32, 256, 3)


def test_dense_dots_choice_by_feature_map_size():
    assert dense_dots_choice((48, 16, 16, 64), (1, 1, 64, 128), 2) == "matmul"
    assert dense_dots_choice((48, 2, 2, 512), (3, 3, 512, 512), 1) == "im2col"
    assert dense_dots_choice((48, 8, 8, 256), (3, 3, 256, 512), 2) == "im2col"  # 4x4 output
    assert dense_dots_choice((48, 16, 16, 64), (3, 3, 64, 64), 1) == "dwdots"
    assert dense_dots_choice((12, 128, 128, 3), (7, 7, 3, 64), 2) == "dwdots"


def test_unknown_or_misused_layer_lowering_is_rejected():
    x, k = _case(8, 4, 4, 3, 1, jnp.float32)
    with pytest.raises(ValueError, match="unknown conv lowering"):
        conv2d(x, k, stride=1, padding=symmetric_padding(3), groups=1, impl="fast")
    with pytest.raises(ValueError, match="1x1"):
        conv2d(x, k, stride=1, padding=symmetric_padding(3), groups=1, impl="matmul")
    with pytest.raises(ValueError, match="dense"):
        conv2d(x, k[:, :, :2], stride=1, padding=symmetric_padding(3), groups=2, impl="dwdots")
