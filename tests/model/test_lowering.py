"""Conv lowering: split == native grouped conv (values and gradients), torchvision's symmetric padding."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from model.lowering import conv2d, default_grouped_impl, resolve_grouped_impl, symmetric_padding


def _grouped_case(stride: int, groups: int = 4):
    rng = np.random.default_rng(stride)
    x = jnp.asarray(rng.standard_normal((2, 9, 9, 16)), jnp.float32)
    k = jnp.asarray(rng.standard_normal((3, 3, 16 // groups, 8)), jnp.float32)
    return x, k, groups


@pytest.mark.parametrize("stride", [1, 2])
def test_split_equals_native_forward_and_gradients(stride):
    x, k, g = _grouped_case(stride)
    pad = symmetric_padding(3)

    def loss(impl):
        def f(x, k):
            y = conv2d(x, k, stride=stride, padding=pad, groups=g, impl=impl)
            return jnp.sum(jnp.sin(y)), y

        return jax.value_and_grad(f, argnums=(0, 1), has_aux=True)(x, k)

    (ln, yn), (gxn, gkn) = loss("native")
    (ls, ys), (gxs, gks) = loss("split")
    assert yn.shape == ys.shape == (2, 9 // stride + (9 % stride > 0), 9 // stride + (9 % stride > 0), 8)
    np.testing.assert_allclose(ys, yn, atol=1e-5)
    np.testing.assert_allclose(gxs, gxn, atol=1e-4)
    np.testing.assert_allclose(gks, gkn, atol=1e-4)


@pytest.mark.parametrize("stride,size", [(2, 8), (2, 9), (1, 7)])
def test_symmetric_padding_matches_torch(stride, size):
    """Stride-2 convs on even inputs are where XLA's 'SAME' (asymmetric) would drift from torch."""
    import torch

    rng = np.random.default_rng(size)
    x = rng.standard_normal((1, size, size, 4)).astype(np.float32)
    k = rng.standard_normal((3, 3, 4, 5)).astype(np.float32)
    ours = conv2d(jnp.asarray(x), jnp.asarray(k), stride=stride, padding=symmetric_padding(3), groups=1, impl="dense")
    ref = torch.nn.functional.conv2d(
        torch.from_numpy(x.transpose(0, 3, 1, 2)), torch.from_numpy(k.transpose(3, 2, 0, 1)), stride=stride, padding=1
    )
    np.testing.assert_allclose(np.asarray(ours), ref.numpy().transpose(0, 2, 3, 1), atol=1e-5)


def test_lowering_choice():
    assert resolve_grouped_impl("auto", 1, 64) == "dense"
    assert resolve_grouped_impl("split", 64, 64) == "native"  # depthwise is never split
    assert resolve_grouped_impl("native", 32, 256) == "native"
    assert resolve_grouped_impl("split", 32, 256) == "split"
    assert resolve_grouped_impl("auto", 32, 256) == default_grouped_impl()
    assert default_grouped_impl("cpu") == "split"
    assert default_grouped_impl("gpu") == "native"
    with pytest.raises(ValueError, match="grouped_impl"):
        resolve_grouped_impl("fast", 32, 256)
