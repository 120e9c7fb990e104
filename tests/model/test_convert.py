"""Weight conversion: strict key/shape checks, classifier handling, .pth files, the offline download path."""

from __future__ import annotations

import urllib.error

import numpy as np
import pytest
from click.testing import CliRunner

from model.__main__ import cli
from model.convert import (
    ConversionError,
    convert_state_dict,
    download_torchvision_weights,
    ignored_keys,
    read_state_dict_file,
    torch_key,
)
from tests.model.helpers import randomized_torchvision, run_features


@pytest.fixture(scope="module")
def r18_state():
    return {k: v.clone() for k, v in randomized_torchvision("resnet18").state_dict().items()}


def test_torch_key_rule():
    assert torch_key(("backbone", "layer1", 0, "conv1", "kernel")) == "layer1.0.conv1.weight"
    assert torch_key(("backbone", "layer2", 0, "downsample_bn", "var")) == "layer2.0.downsample.1.running_var"
    assert torch_key(("backbone", "features", 1, 0, "block", 1, "fc2", "bias")) == "features.1.0.block.1.fc2.bias"
    assert torch_key(("backbone", "features", 0, "bn", "scale")) == "features.0.1.weight"
    assert torch_key(("pool", "p")) is None


def test_wrong_shape_is_named(r18_state):
    import torch

    sd = dict(r18_state)
    sd["layer3.1.bn2.running_mean"] = torch.zeros(255)
    with pytest.raises(ConversionError, match=r"layer3\.1\.bn2\.running_mean.*255"):
        convert_state_dict("resnet18", sd)
    sd = dict(r18_state)
    sd["layer2.0.conv1.weight"] = sd["layer2.0.conv1.weight"].transpose(0, 1)  # (128, 64) -> (64, 128)
    with pytest.raises(ConversionError, match=r"layer2\.0\.conv1\.weight"):
        convert_state_dict("resnet18", sd)


def test_missing_and_unexpected_keys_are_named(r18_state):
    import torch

    sd = dict(r18_state)
    del sd["layer2.0.downsample.1.running_var"]
    with pytest.raises(ConversionError, match=r"missing keys \(1\): layer2\.0\.downsample\.1\.running_var"):
        convert_state_dict("resnet18", sd)
    sd = dict(r18_state)
    sd["layer1.0.extra.weight"] = torch.zeros(3)
    with pytest.raises(ConversionError, match=r"unexpected keys \(1\): layer1\.0\.extra\.weight"):
        convert_state_dict("resnet18", sd)
    with pytest.raises(ConversionError, match="missing keys"):  # a resnet34 state_dict is not a resnet18
        convert_state_dict("resnet34", r18_state)


def test_classifier_and_counters_are_ignored(r18_state):
    ign = ignored_keys(r18_state)
    assert {"fc.weight", "fc.bias", "bn1.num_batches_tracked"} <= set(ign)
    assert all(k.startswith("fc.") or k.endswith("num_batches_tracked") for k in ign)
    prefixed = {f"module.{k}": v for k, v in r18_state.items()}  # saved from nn.DataParallel
    a = convert_state_dict("resnet18", r18_state)
    b = convert_state_dict("resnet18", prefixed)
    np.testing.assert_array_equal(np.asarray(a.backbone.conv1.kernel[...]), np.asarray(b.backbone.conv1.kernel[...]))
    np.testing.assert_array_equal(
        np.asarray(a.backbone.conv1.kernel[...]), r18_state["conv1.weight"].numpy().transpose(2, 3, 1, 0)
    )


def test_convert_cli_from_pth_file(tmp_path, r18_state):
    import torch

    pth = tmp_path / "r18.pth"
    torch.save(r18_state, pth)
    out = tmp_path / "weights"
    res = CliRunner().invoke(cli, ["convert", "--arch", "resnet18", "--state-dict", str(pth), "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert "fc.weight" in res.stderr and "11,176,512" in res.stdout
    from model.weights import load_weights, read_meta

    assert read_meta(out)["meta"]["source"]["state_dict"].endswith("r18.pth")
    x = np.random.default_rng(1).standard_normal((1, 32, 32, 3)).astype(np.float32)
    np.testing.assert_array_equal(
        run_features(load_weights(out), x)[0], run_features(convert_state_dict("resnet18", r18_state), x)[0]
    )


class _NotATensor:
    pass


def test_pth_files_are_read_safely(tmp_path):
    import torch

    evil = tmp_path / "object.pth"
    torch.save({"conv1.weight": _NotATensor()}, evil)  # unpickling this would run arbitrary code paths
    with pytest.raises(ConversionError, match="weights_only=True"):
        read_state_dict_file(evil)
    with pytest.raises(ConversionError, match="no such file"):
        read_state_dict_file(tmp_path / "nope.pth")
    lst = tmp_path / "list.pth"
    torch.save([torch.zeros(1)], lst)
    with pytest.raises(ConversionError, match="expected a dict"):
        read_state_dict_file(lst)


def test_offline_download_says_to_pass_a_state_dict(monkeypatch):
    import torchvision.models._api as api

    def no_network(*args, **kwargs):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(api, "load_state_dict_from_url", no_network)
    with pytest.raises(ConversionError, match=r"--state-dict FILE\.pth"):
        download_torchvision_weights("ResNet18_Weights.IMAGENET1K_V1", "resnet18")
    res = CliRunner().invoke(
        cli, ["convert", "--arch", "resnet18", "--torchvision-weights", "ResNet18_Weights.IMAGENET1K_V1", "--out", "x"]
    )
    assert res.exit_code != 0 and "--state-dict" in res.output


def test_bare_weights_name_is_completed_from_the_arch(monkeypatch):
    import torchvision.models._api as api

    asked = []

    def fake_download(url, *args, **kwargs):
        asked.append(url)
        raise urllib.error.URLError("offline")

    monkeypatch.setattr(api, "load_state_dict_from_url", fake_download)
    with pytest.raises(ConversionError, match=r"ResNeXt101_32X8D_Weights\.IMAGENET1K_V2"):
        download_torchvision_weights("IMAGENET1K_V2", "resnext101_32x8d")
    assert asked and asked[0].endswith(".pth")


def test_bad_weights_names():
    with pytest.raises(ConversionError, match="unknown torchvision weights.*ResNet18_Weights.IMAGENET1K_V1"):
        download_torchvision_weights("ResNet18_Weights.NOPE", "resnet18")
    with pytest.raises(ConversionError, match="not for resnet50"):
        download_torchvision_weights("ResNet18_Weights.IMAGENET1K_V1", "resnet50")


def test_convert_cli_needs_exactly_one_source(tmp_path):
    res = CliRunner().invoke(cli, ["convert", "--arch", "resnet18", "--out", str(tmp_path / "w")])
    assert res.exit_code == 2 and "exactly one" in res.output
