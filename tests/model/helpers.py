"""Shared helpers of the model tests: torchvision reference networks and a pure forward pass."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from model.signature import l2_normalize


def randomized_torchvision(arch: str, seed: int = 0):
    """torchvision `arch` with random weights AND randomised BN statistics/affine parameters, in eval mode.

    With torchvision's fresh BN (mean 0, var 1, scale 1, bias 0) a port that ignored the running statistics
    or swapped mean and var would still pass; random statistics make every BN term count.
    Running mean ~ N(0, 0.1), running var ~ U(0.5, 2), scale ~ U(0.75, 1.25), bias ~ N(0, 0.1).
    In ResNets the BN closing each residual branch gets scale ~ U(0.1, 0.3): with statistics that do not
    match the activations, the residual stream otherwise grows geometrically with depth (features ~1e6 in
    resnet152), and an absolute tolerance would then test float32 rounding rather than the port.
    """
    import torch
    import torchvision

    from model.registry import get_spec

    torch.manual_seed(seed)
    net = getattr(torchvision.models, get_spec(arch).torchvision_name)(weights=None)
    g = torch.Generator().manual_seed(seed + 1)
    closing = set()
    for mod in net.modules():
        if isinstance(mod, torchvision.models.resnet.Bottleneck):
            closing.add(id(mod.bn3))
        elif isinstance(mod, torchvision.models.resnet.BasicBlock):
            closing.add(id(mod.bn2))
    with torch.no_grad():
        for mod in net.modules():
            if isinstance(mod, torch.nn.BatchNorm2d):
                n = mod.num_features
                mod.running_mean.copy_(torch.randn(n, generator=g) * 0.1)
                mod.running_var.copy_(torch.rand(n, generator=g) * 1.5 + 0.5)
                lo, hi = (0.1, 0.3) if id(mod) in closing else (0.75, 1.25)
                mod.weight.copy_(torch.rand(n, generator=g) * (hi - lo) + lo)
                mod.bias.copy_(torch.randn(n, generator=g) * 0.1)
    return net.eval()


def torchvision_pooled(net, x_nhwc: np.ndarray) -> np.ndarray:
    """torchvision's pooled features (what the classifier would see) for NHWC float32 input."""
    import torch

    x = torch.from_numpy(np.ascontiguousarray(x_nhwc.transpose(0, 3, 1, 2)))
    with torch.no_grad():
        if hasattr(net, "features"):  # EfficientNet
            f = net.features(x)
        else:
            f = net.maxpool(net.relu(net.bn1(net.conv1(x))))
            f = net.layer4(net.layer3(net.layer2(net.layer1(f))))
        return net.avgpool(f).flatten(1).numpy()


def random_input(n: int = 2, size: int = 64) -> np.ndarray:
    return np.random.default_rng(0).standard_normal((n, size, size, 3)).astype(np.float32)


def run_features(model, x: np.ndarray, *, jit: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """(pooled features, signatures) of `model` on x, through a pure function of the split state.

    Signatures come from the model's own `__call__` when jitted (XLA shares the work with `features`);
    eagerly they are `l2_normalize(features)`, which is what `__call__` returns (checked by
    test_call_is_normalised_features), so the backbone does not run twice.
    With jit, XLA's CPU backend optimisation level is 0: the test runs each program once, and
    compiling it is most of the cost (about a quarter less compile time, same numbers).
    """
    graphdef, state = nnx.split(model)
    x = jnp.asarray(x)

    if jit:

        def fwd(state, x):
            net = nnx.merge(graphdef, state)
            return net.features(x), net(x)

        opts = {"xla_backend_optimization_level": 0} if jax.default_backend() == "cpu" else {}
        f, s = jax.jit(fwd).lower(state, x).compile(compiler_options=opts)(state, x)
    else:
        f = nnx.merge(graphdef, state).features(x)
        s = l2_normalize(f)
    return np.asarray(f), np.asarray(s)
