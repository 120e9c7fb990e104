"""`python -m model list` and the help of every command."""

from __future__ import annotations

import re

import pytest
from click.testing import CliRunner

from model.__main__ import cli
from model.registry import ARCHS

WIDTHS = {"resnet18": 512, "resnet34": 512, "efficientnet_b0": 1280, "efficientnet_b2": 1408,
          "efficientnet_b7": 2560, "resnext101_32x8d": 2048}


def _torchvision_params(arch: str) -> int:
    """torchvision's parameter count without the classifier (network built on the meta device: no memory)."""
    import torch
    import torchvision

    with torch.device("meta"):
        net = getattr(torchvision.models, ARCHS[arch].torchvision_name)(weights=None)
    return sum(p.numel() for n, p in net.named_parameters() if not n.startswith(("fc.", "classifier.")))


def test_list_shows_every_arch():
    """Every arch with torchvision's parameter count, signature width and eval resolution."""
    res = CliRunner().invoke(cli, ["list"])
    assert res.exit_code == 0, res.output
    rows = {line.split()[0]: line.split() for line in res.output.splitlines()[1:]}
    assert set(rows) == set(ARCHS)
    for arch, spec in ARCHS.items():
        assert int(rows[arch][2].replace(",", "")) == _torchvision_params(arch), arch
        assert int(rows[arch][3]) == spec.signature_dim
        assert int(rows[arch][4]) == spec.eval_resolution
    for arch, width in WIDTHS.items():  # independent of the registry: torchvision's documented widths
        assert int(rows[arch][3]) == width
    assert rows["efficientnet_b7"][4] == "600"


@pytest.mark.parametrize("cmd", ["list", "convert", "embed"])
def test_help(cmd):
    res = CliRunner().invoke(cli, [cmd, "--help"])
    assert res.exit_code == 0 and re.search(r"Usage: .* " + cmd, res.output)
