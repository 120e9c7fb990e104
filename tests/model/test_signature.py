"""Training/inference modes, BatchNorm semantics against torch, stochastic depth, pooling."""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from model.layers import BatchNorm, GeMPool, MeanPool, stochastic_depth
from model.registry import build
from model.signature import SignatureNet, l2_normalize, set_mode


def _x(shape=(4, 5, 6, 3), seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32) * 2 + 0.5


def test_batchnorm_matches_torch_in_train_and_eval():
    """Batch statistics, running-stat update (momentum, unbiased variance) and eval mode, like torch."""
    import torch

    c = 3
    tbn = torch.nn.BatchNorm2d(c, eps=1e-3, momentum=0.01)
    with torch.no_grad():
        tbn.weight.copy_(torch.tensor([0.5, 1.5, 2.0]))
        tbn.bias.copy_(torch.tensor([0.1, -0.2, 0.3]))
        tbn.running_mean.copy_(torch.tensor([0.2, -0.1, 0.0]))
        tbn.running_var.copy_(torch.tensor([1.5, 0.7, 2.0]))
    bn = BatchNorm(c, eps=1e-3, momentum=0.01)
    bn.scale[...] = jnp.asarray(tbn.weight.detach().numpy())
    bn.bias[...] = jnp.asarray(tbn.bias.detach().numpy())
    bn.mean[...] = jnp.asarray(tbn.running_mean.numpy())
    bn.var[...] = jnp.asarray(tbn.running_var.numpy())
    x = _x()
    tx = torch.from_numpy(x.transpose(0, 3, 1, 2))

    tbn.eval()
    np.testing.assert_allclose(bn(jnp.asarray(x)), tbn(tx).detach().numpy().transpose(0, 2, 3, 1), atol=1e-5)
    np.testing.assert_allclose(bn.mean[...], tbn.running_mean.numpy())  # eval: untouched

    tbn.train()
    bn.use_running_average = False
    y = bn(jnp.asarray(x))
    ty = tbn(tx).detach().numpy().transpose(0, 2, 3, 1)
    np.testing.assert_allclose(y, ty, atol=1e-5)
    np.testing.assert_allclose(bn.mean[...], tbn.running_mean.numpy(), atol=1e-6)
    np.testing.assert_allclose(bn.var[...], tbn.running_var.numpy(), atol=1e-6)


def _batch_stats(model):
    return [np.asarray(v) for v in jax.tree.leaves(nnx.state(model, nnx.BatchStat))]


@partial(jax.jit, static_argnums=0)  # compiled once per graphdef, i.e. per mode
def _pure_forward(graphdef, state, x, key):
    net = nnx.merge(graphdef, state)
    y = net(x, rngs=None if key is None else nnx.Rngs(dropout=key))
    return y, nnx.state(net)


def _step(model, x, key=None):
    """One pure forward as a trainer runs it: split, jit, merge; returns output and updated state.

    `key`: a dropout key passed in (as a trainer carries one) instead of the layers' own streams.
    """
    graphdef, state = nnx.split(model)
    y, new_state = _pure_forward(graphdef, state, jnp.asarray(x), key)
    nnx.update(model, new_state)
    return np.asarray(y)


def _mbconv(rate: float = 0.5):
    """One real EfficientNet block (expand, depthwise, SE, project, residual with stochastic depth)."""
    from model.efficientnet import EfficientNetConfig, MBConv
    from model.state import initialize

    block = MBConv(6, 3, 1, 16, 16, rate, cfg=EfficientNetConfig(1.0, 1.0), dtype=jnp.float32,
                   rngs=nnx.Rngs(params=0, dropout=1))
    initialize(block, seed=0)
    return block


def test_modes_of_a_block():
    x = _x((8, 6, 6, 16))
    block = _mbconv()
    before = _batch_stats(block)
    set_mode(block, training=False)
    np.testing.assert_array_equal(_step(block, x), _step(block, x))  # inference: deterministic

    set_mode(block, training=True)  # frozen BN (default): stochastic depth on, statistics untouched
    t1, t2 = _step(block, x), _step(block, x)
    assert not np.allclose(t1, t2)  # the layer's RNG stream advances between steps (state carried)
    for a, b in zip(before, _batch_stats(block), strict=True):
        np.testing.assert_array_equal(a, b)
    r1, r2, r3 = (_step(block, x, key=jax.random.key(k)) for k in (7, 7, 8))
    np.testing.assert_array_equal(r1, r2)  # randomness from a key the caller passes
    assert not np.allclose(r1, r3)

    set_mode(block, training=True, freeze_bn=False)  # live BN: statistics move
    _step(block, x)
    assert all(not np.array_equal(a, b) for a, b in zip(before, _batch_stats(block), strict=True))


def test_network_mode_switch_and_rng_threading():
    """set_mode reaches every layer of a whole network, and a passed key reaches its stochastic depth."""
    net = build("efficientnet_b0", seed=0)
    layers = [m for _, m in nnx.iter_modules(net)]
    assert all(m.use_running_average for m in layers if hasattr(m, "use_running_average"))
    assert all(m.deterministic for m in layers if isinstance(m, nnx.Dropout))
    set_mode(net, training=True)
    assert all(m.use_running_average for m in layers if hasattr(m, "use_running_average"))
    assert not any(m.deterministic for m in layers if isinstance(m, nnx.Dropout))
    before = _batch_stats(net)
    x = _x((2, 32, 32, 3))
    r1, r2, r3 = (_step(net, x, key=jax.random.key(k)) for k in (7, 7, 8))
    np.testing.assert_array_equal(r1, r2)
    assert not np.allclose(r1, r3)
    for a, b in zip(before, _batch_stats(net), strict=True):
        np.testing.assert_array_equal(a, b)
    set_mode(net, training=True, freeze_bn=False)
    assert not any(m.use_running_average for m in layers if hasattr(m, "use_running_average"))


def test_stochastic_depth_drops_whole_rows():
    """torchvision's StochasticDepth(mode="row"): per sample, the branch is zeroed or scaled by 1/(1-p)."""
    sd = stochastic_depth(0.5, nnx.Rngs(dropout=0))
    x = jnp.ones((64, 2, 2, 3))
    np.testing.assert_array_equal(sd(x), x)  # deterministic until training
    sd.deterministic = False
    y = np.asarray(sd(x))
    per_row = y.reshape(64, -1)
    assert set(np.unique(per_row)) <= {0.0, 2.0}
    assert np.all(per_row.min(axis=1) == per_row.max(axis=1))
    assert 10 < int((per_row[:, 0] == 0).sum()) < 54


def test_pooling_and_normalisation():
    x = jnp.asarray(np.abs(_x((2, 4, 4, 8))))
    np.testing.assert_allclose(GeMPool(1.0)(x), MeanPool()(x), rtol=1e-5)
    p3 = np.mean(np.asarray(x) ** 3, axis=(1, 2)) ** (1 / 3)
    np.testing.assert_allclose(GeMPool(3.0)(x), p3, rtol=1e-5)
    assert isinstance(GeMPool(3.0).p, nnx.Param)
    assert not isinstance(GeMPool(3.0, learnable=False).p, nnx.Param)
    v = l2_normalize(jnp.asarray([[3.0, 4.0], [0.0, 0.0]]))
    np.testing.assert_allclose(v, [[0.6, 0.8], [0.0, 0.0]])


def test_build_options():
    m = build("resnet18", seed=0, pooling="gem")
    assert isinstance(m, SignatureNet) and m.arch == "resnet18"
    assert float(m.pool.p[...]) == 3.0
    with pytest.raises(ValueError, match="resnet18.*efficientnet_b7"):
        build("resnet19")
    with pytest.raises(ValueError, match="pooling"):
        build("resnet18", pooling="max")
    with pytest.raises(ValueError, match="dtype"):
        build("resnet18", dtype="float16")


def test_build_is_deterministic():
    a, b, c = build("resnet18", seed=0), build("resnet18", seed=0), build("resnet18", seed=1)
    pa, pb, pc = (jax.tree.leaves(nnx.state(m, nnx.Param)) for m in (a, b, c))
    assert all(np.array_equal(x, y) for x, y in zip(pa, pb, strict=True))
    assert not any(np.array_equal(x, y) for x, y in zip(pa, pc, strict=True) if x.ndim == 4)
    k = np.asarray(a.backbone.conv1.kernel[...])  # torchvision's kaiming-normal fan-out: std sqrt(2/(7*7*64))
    assert abs(k.std() / np.sqrt(2 / (7 * 7 * 64)) - 1) < 0.05


def _loss_and_grads(arch: str, remat: bool, x: np.ndarray):
    """Loss, parameter gradients and updated BN statistics of one training step (live BN, stochastic depth)."""
    net = build(arch, seed=3, remat=remat)
    set_mode(net, training=True, freeze_bn=False)
    graphdef, params, rest = nnx.split(net, nnx.Param, ...)
    w = np.random.default_rng(1).standard_normal((x.shape[0], 7)).astype(np.float32)

    def loss_fn(p, rest):
        model = nnx.merge(graphdef, p, jax.tree.map(lambda v: v, rest))
        sig = model(jnp.asarray(x), rngs=nnx.Rngs(dropout=jax.random.key(5)))
        loss = jnp.sum(sig[:, :7] * w) + jnp.sum(jnp.square(sig[0] - sig[1]))
        return loss, nnx.state(model, nnx.BatchStat)

    fn = jax.jit(jax.value_and_grad(loss_fn, has_aux=True))
    (loss, stats), grads = fn(params, rest)
    return float(loss), jax.tree.leaves(grads), jax.tree.leaves(stats), jax.make_jaxpr(fn)(params, rest)


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["resnet18", "efficientnet_b0"])
def test_remat_gives_the_same_loss_gradients_and_bn_updates(arch):
    """With remat every block is a checkpoint (recomputed in the backward pass); loss, gradients and BN
    updates equal those without it (same stochastic-depth draws)."""
    x = _x((4, 32, 32, 3), seed=2)
    l0, g0, s0, j0 = _loss_and_grads(arch, False, x)
    l1, g1, s1, j1 = _loss_and_grads(arch, True, x)
    blocks = 8 if arch == "resnet18" else 16
    assert str(j1).count("remat2[") >= blocks and "remat2[" not in str(j0)  # the backward recomputes
    assert l1 == pytest.approx(l0, rel=1e-6)
    assert len(g0) == len(g1) and len(s0) == len(s1)
    for a, b in zip(g0, g1, strict=True):
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-5, atol=1e-6 * float(np.abs(a).max()) + 1e-9)
    for a, b in zip(s0, s1, strict=True):
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-6, atol=1e-7)
