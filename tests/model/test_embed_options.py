"""`model embed`'s options (issue 12): the conv lowering set on a built network (`--conv-impl`, old name
`--grouped-impl`), and the resolution: one rule, by default the one the weights were trained at."""

from __future__ import annotations

import inspect

import numpy as np
import pytest
from click.testing import CliRunner
from flax import nnx

from data.signatures import load_signatures
from model.__main__ import cli
from model.layers import Conv2d
from model.registry import build
from model.weights import save_weights

R = 32


def _embed(tmp_path, collection, out: str, *extra: str):
    args = ["embed", "--collection", str(collection), "--batch-size", "2", "--no-progress", "--no-compile-cache"]
    return CliRunner().invoke(cli, [*args, "--out", str(tmp_path / out), *extra])


def _conv_impls(model) -> set[str]:
    return {m.impl for _, m in nnx.iter_modules(model) if isinstance(m, Conv2d)}


@pytest.fixture
def lowering_seen(monkeypatch):
    """The per-layer lowerings of the network `model embed` hands to `embed_to_store`, per call."""
    import model.embed

    seen: list[set[str]] = []
    real = model.embed.embed_to_store

    def recording(collection, net, out, **kw):
        seen.append(_conv_impls(net))
        return real(collection, net, out, **kw)

    monkeypatch.setattr(model.embed, "embed_to_store", recording)
    return seen


def test_conv_impl_reaches_every_conv_and_the_old_name_still_works(tiny_collection, tmp_path, lowering_seen):
    rand = ["--weights", "random", "--arch", "resnet18", "--resolution", str(R)]
    res = _embed(tmp_path, tiny_collection, "auto.npz", *rand)
    assert res.exit_code == 0, res.output
    res = _embed(tmp_path, tiny_collection, "native.npz", *rand, "--conv-impl", "native")
    assert res.exit_code == 0, res.output
    assert "warning" not in res.stderr
    res = _embed(tmp_path, tiny_collection, "old.npz", *rand, "--grouped-impl", "native")
    assert res.exit_code == 0, res.output
    assert "warning: --grouped-impl is deprecated; use --conv-impl" in res.stderr
    assert lowering_seen[1] == lowering_seen[2] == {"native"} and lowering_seen[0] != {"native"}
    auto, native, old = (load_signatures(tmp_path / f"{n}.npz").vectors for n in ("auto", "native", "old"))
    np.testing.assert_allclose(native, auto, atol=1e-5)  # another way to compute, the same signatures
    np.testing.assert_array_equal(old, native)

    res = _embed(tmp_path, tiny_collection, "x.npz", *rand, "--grouped-impl", "split", "--conv-impl", "native")
    assert res.exit_code == 2 and "disagree" in res.output and not (tmp_path / "x.npz").exists()
    res = _embed(tmp_path, tiny_collection, "x.npz", *rand, "--conv-impl", "fast")
    assert res.exit_code == 2 and "'fast' is not one of" in res.output


def test_the_lowering_is_set_after_construction_not_passed_through_it():
    """No constructor or factory takes the lowering; `set_conv_impl` sets it on every conv, checked once."""
    from model import convert, efficientnet, registry, resnet, signature, weights

    for fn in (Conv2d, resnet.ResNet, resnet.BasicBlock, resnet.Bottleneck, efficientnet.EfficientNet,
               efficientnet.MBConv, efficientnet.ConvBNAct, signature.SignatureNet, registry.build,
               registry.build_abstract, weights.load_weights, weights.load_or_init, convert.convert_state_dict):
        params = inspect.signature(fn.__init__ if isinstance(fn, type) else fn).parameters  # nnx: (*args, **kw)
        assert "args" not in params and not {"grouped_impl", "conv_impl"} & set(params), fn
    net = registry.build_abstract("efficientnet_b0")
    assert not hasattr(net, "grouped_impl")
    convs = [m for _, m in nnx.iter_modules(net) if isinstance(m, Conv2d)]
    depthwise = [m for m in convs if m.groups > 1]
    assert depthwise and len(convs) > len(depthwise)
    assert signature.set_conv_impl(net, "native") is net and _conv_impls(net) == {"native"}
    signature.set_conv_impl(net, "dots")
    assert {m.impl for m in depthwise} == {"native"}  # depthwise convs are never products
    assert {m.impl for m in convs if m.groups == 1} == {"matmul", "dots"}  # SE and 1x1 projections too
    with pytest.raises(ValueError, match="conv_impl must be one of auto, native, split, dots, got 'fast'"):
        signature.set_conv_impl(net, "fast")
    assert {m.impl for m in depthwise} == {"native"} and "native" not in {m.impl for m in convs if m.groups == 1}


def test_resolution_defaults_to_the_one_the_weights_were_trained_at(tiny_collection, tmp_path):
    """`model embed --weights RUN/weights` needed --resolution again although training knew it; now a
    training run's weights record it. Weights that do not (converted, random) still need it, said clearly."""
    net = build("resnet18", seed=0)
    save_weights(net, tmp_path / "run" / "weights", meta={"resolution": R, "run": "somewhere"})
    save_weights(net, tmp_path / "converted", meta={"source": {"torchvision": "ResNet18_Weights.IMAGENET1K_V1"}})

    res = _embed(tmp_path, tiny_collection, "a.npz", "--weights", str(tmp_path / "run" / "weights"))
    assert res.exit_code == 0, res.output
    a = load_signatures(tmp_path / "a.npz")
    assert a.meta["resolution"] == R
    res = _embed(tmp_path, tiny_collection, "b.npz", "--weights", str(tmp_path / "converted"), "--resolution", str(R))
    assert res.exit_code == 0, res.output
    np.testing.assert_array_equal(load_signatures(tmp_path / "b.npz").vectors, a.vectors)
    res = _embed(tmp_path, tiny_collection, "c.npz", "--weights", str(tmp_path / "run" / "weights"),
                 "--resolution", "48")
    assert res.exit_code == 0 and load_signatures(tmp_path / "c.npz").meta["resolution"] == 48  # told: wins

    res = _embed(tmp_path, tiny_collection, "d.npz", "--weights", str(tmp_path / "converted"))
    assert res.exit_code == 2 and "Traceback" not in res.output
    assert f"pass --resolution R: {tmp_path / 'converted'} does not record the resolution" in res.output
    res = _embed(tmp_path, tiny_collection, "d.npz", "--weights", "random", "--arch", "resnet18")
    assert res.exit_code == 2 and "pass --resolution R: random weights" in res.output
    assert not (tmp_path / "d.npz").exists()


def test_one_resolution_rule(tiny_collection, tmp_path):
    """At least 32 px, told the same way wherever the size comes from (the option or the weights)."""
    save_weights(build("resnet18", seed=0), tmp_path / "w16", meta={"resolution": 16})
    told = ["--weights", "random", "--arch", "resnet18", "--resolution", "16"]
    for extra in (told, ["--weights", str(tmp_path / "w16")]):
        res = _embed(tmp_path, tiny_collection, "x.npz", *extra)
        assert res.exit_code == 1, res.output
        assert "Error: resolution 16 is too small: the networks downsample by 32; use a resolution of at least 32." \
            in res.output
    assert not (tmp_path / "x.npz").exists()
