"""The Flax port against torchvision itself: every architecture, converted weights, eval mode, float32.

Each test prints a `PARITY <arch> <impl> max_abs=...` line (run with -s to collect the figures).
A single forward pass is the whole job here, so each family runs the way that was measured faster on
the 2-core CPU: EfficientNets jitted (one compile beats op-by-op dispatch of their many distinct
shapes), ResNets eagerly (their repeated blocks reuse each op's compiled kernel; the "split" lowering's
hundreds of small convs take ~40 s to compile as one program but seconds eagerly).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from model.convert import convert_state_dict
from model.registry import ARCHS, build, param_count
from model.signature import l2_normalize, set_conv_impl
from tests.model.helpers import random_input, randomized_torchvision, run_features, torchvision_pooled

TOL = 1e-4
BF16_ARCHS = {"resnext50_32x4d", "efficientnet_b0"}
SLOW = {"resnet152", "resnext101_32x8d", "resnext101_64x4d", "efficientnet_b5", "efficientnet_b6", "efficientnet_b7"}


def _cases():
    for arch in ARCHS:
        impl = "native" if arch.startswith("resnext") else "auto"
        marks = [pytest.mark.slow] if arch in SLOW else []
        yield pytest.param(arch, impl, marks=marks, id=f"{arch}-{impl}")
    yield pytest.param("resnext50_32x4d", "split", id="resnext50_32x4d-split")


@pytest.mark.parametrize("arch,impl", list(_cases()))
def test_matches_torchvision(arch, impl):
    net = randomized_torchvision(arch)
    x = random_input()
    ref = torchvision_pooled(net, x)
    model = set_conv_impl(convert_state_dict(arch, net.state_dict()), impl)

    feats, sig = run_features(model, x, jit=ARCHS[arch].family == "efficientnet")
    assert feats.shape == ref.shape == (2, ARCHS[arch].signature_dim)
    assert feats.dtype == np.float32 and sig.dtype == np.float32
    assert np.abs(ref).max() > 0.1  # non-trivial features: the comparison means something
    err = float(np.abs(feats - ref).max())
    ref_sig = ref / np.linalg.norm(ref, axis=1, keepdims=True)
    sig_err = float(np.abs(sig - ref_sig).max())
    print(f"PARITY {arch} {impl} max_abs={err:.2e} signature_max_abs={sig_err:.2e} ref_max={np.abs(ref).max():.3g}")
    assert err <= TOL, f"{arch}: pooled features differ from torchvision by {err:.3g}"
    assert sig_err <= TOL
    np.testing.assert_allclose(np.linalg.norm(sig, axis=1), 1.0, atol=1e-5)
    torch_params = sum(p.numel() for n, p in net.named_parameters() if not n.startswith(("fc.", "classifier.")))
    assert param_count(model) == torch_params  # torchvision without its classifier
    if arch in BF16_ARCHS and impl != "split":
        check_bfloat16(arch, net.state_dict(), impl, x, feats, sig)


def test_call_is_normalised_features():
    model = build("resnet18", seed=0)
    x = jnp.asarray(random_input(2, 32))
    np.testing.assert_allclose(model(x), l2_normalize(model.features(x)), atol=1e-7)
    np.testing.assert_allclose(np.linalg.norm(np.asarray(model(x)), axis=1), 1.0, atol=1e-6)


def test_signature_rows_are_independent():
    """Per-row normalisation: a row's signature does not depend on the other rows of its batch."""
    model = build("resnet18", seed=0)
    x = random_input(3)
    _, both = run_features(model, x)
    _, alone = run_features(model, x[:1])
    np.testing.assert_allclose(both[0], alone[0], atol=1e-6)


def check_bfloat16(arch: str, state_dict, impl: str, x: np.ndarray, f_ref: np.ndarray, s_ref: np.ndarray) -> None:
    """bf16 compute (f32 parameters and BN statistics) stays close to the f32 port.

    Run inside the parity test of two architectures (one of each family: grouped convs / depthwise + SE)
    to reuse the randomised torchvision weights: activations are O(1) there. (torchvision's own random
    initialisation makes EfficientNet features vanish, ~1e-13 at the pool, where any comparison measures
    rounding noise, not the network.)
    Tolerance: cosine similarity of each signature with its f32 counterpart >= 0.995, and pooled features
    within 5% relative (max-abs error over max-abs value). bf16 keeps 8 significant bits (relative rounding
    ~0.4% per operation); over 50-100 layers these errors partly cancel, and the measured cosines are
    above 0.9999 at 64 px (relative errors 0.3-0.6%). 0.995 leaves room for other inputs and hardware yet
    fails if something is done badly in bf16 (e.g. BN statistics or pooling accumulated in bf16).
    """
    bf16 = set_conv_impl(convert_state_dict(arch, state_dict, dtype="bfloat16"), impl)
    assert all(v.dtype == jnp.float32 for v in jax.tree.leaves(nnx.state(bf16, nnx.Param, nnx.BatchStat)))
    f_b, s_b = run_features(bf16, x, jit=ARCHS[arch].family == "efficientnet")
    assert f_b.dtype == np.float32 and s_b.dtype == np.float32
    cos = np.sum(s_ref * s_b, axis=1)
    rel = np.abs(f_b - f_ref).max() / np.abs(f_ref).max()
    print(f"BF16 {arch} min_cos={cos.min():.6f} rel_err={rel:.2e}")
    assert cos.min() >= 0.995
    assert rel <= 0.05
    assert not np.array_equal(f_b, f_ref)  # it really computed in bf16


@pytest.mark.parametrize("arch", ["resnet50", "efficientnet_b4", "efficientnet_b5"])
def test_batchnorm_hyperparameters_match_torchvision(arch):
    """eps and momentum of every BN layer, in order (B5-B7 use eps 1e-3 / momentum 0.01 in torchvision)."""
    import torch
    import torchvision

    from model.layers import BatchNorm
    from model.registry import build_abstract

    with torch.device("meta"):
        net = getattr(torchvision.models, ARCHS[arch].torchvision_name)(weights=None)
    theirs = [(m.eps, m.momentum) for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    ours = [(m.eps, m.momentum) for _, m in nnx.iter_modules(build_abstract(arch)) if isinstance(m, BatchNorm)]
    assert len(ours) == len(theirs) and set(ours) == set(theirs)
