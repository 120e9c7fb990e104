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


def test_list_builds_no_network(monkeypatch):
    """`list` counts parameters from the configs (instant), and the count is the built network's."""
    import model.registry as registry

    def refuse(*a, **k):
        raise AssertionError("list must not build networks")

    with monkeypatch.context() as m:
        m.setattr(registry, "build_abstract", refuse)
        m.setattr(registry.nnx, "eval_shape", refuse)
        res = CliRunner().invoke(cli, ["list"])
    assert res.exit_code == 0, res.output
    rows = {line.split()[0]: int(line.split()[2].replace(",", "")) for line in res.output.splitlines()[1:]}
    for arch in ("resnet18", "resnext101_64x4d", "efficientnet_b0", "efficientnet_b5"):  # basic, grouped, SE
        assert rows[arch] == registry.param_count(registry.build_abstract(arch)), arch


def test_embed_uses_the_compilation_cache_unless_told_not_to(tiny_collection, tmp_path, monkeypatch):
    import jax

    keep = (jax.config.jax_compilation_cache_dir, jax.config.jax_persistent_cache_min_compile_time_secs)
    monkeypatch.setenv("VISUAL_SIGNATURES_CACHE", str(tmp_path / "cache"))
    args = ["embed", "--arch", "resnet18", "--weights", "random", "--collection", str(tiny_collection),
            "--resolution", "32", "--batch-size", "2", "--no-progress"]
    try:
        res = CliRunner().invoke(cli, [*args, "--no-compile-cache", "--out", str(tmp_path / "a.npz")])
        assert res.exit_code == 0, res.output
        assert jax.config.jax_compilation_cache_dir == keep[0] and not (tmp_path / "cache").exists()
        res = CliRunner().invoke(cli, [*args, "--out", str(tmp_path / "b.npz")])
        assert res.exit_code == 0, res.output
        assert jax.config.jax_compilation_cache_dir == str(tmp_path / "cache") and (tmp_path / "cache").is_dir()
    finally:
        from jax._src import compilation_cache

        jax.config.update("jax_compilation_cache_dir", keep[0])
        jax.config.update("jax_persistent_cache_min_compile_time_secs", keep[1])
        compilation_cache.reset_cache()  # later tests in this process: back to the session's cache


def test_embed_takes_relative_home_relative_and_symlinked_paths(tiny_collection, tmp_path, monkeypatch):
    """`model embed --weights runA/weights` crashed with an AttributeError (issue 11, defect 1)."""
    import os

    from data.signatures import load_signatures
    from model.registry import build
    from model.weights import save_weights

    save_weights(build("resnet18", seed=1), tmp_path / "real" / "runA" / "weights")
    (tmp_path / "home").mkdir()
    (tmp_path / "cwd").mkdir()
    os.symlink(tmp_path / "real" / "runA", tmp_path / "cwd" / "runA")  # a symlinked run folder
    os.symlink(tiny_collection, tmp_path / "home" / "coll")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path / "cwd")
    res = CliRunner().invoke(cli, ["embed", "--weights", "runA/weights", "--collection", "~/coll", "--resolution",
                                   "32", "--out", "out/sig.npz", "--no-progress", "--no-compile-cache"])
    assert res.exit_code == 0, res.output
    sig = load_signatures(tmp_path / "cwd" / "out" / "sig.npz")
    assert sig.uids == ["u3", "u1", "u2"]
    assert sig.meta["weights"] == str((tmp_path / "real" / "runA" / "weights").resolve())


def test_embed_with_damaged_weights_says_so_in_one_line(tiny_collection, tmp_path):
    """A weights folder with an array file cut short (a half-copied folder, a full disk) gave 10 raw
    tracebacks: orbax's reader and the echoes of its in-flight reads. Now: exit 1 and one `Error:` line that
    names the folder and what to do (a subprocess: the echoes arrive as Python's "ignored" exceptions,
    after the restore returned)."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    from model.registry import build
    from model.weights import save_weights

    weights = tmp_path / "runA" / "weights"
    save_weights(build("resnet18", seed=1), weights)
    data = weights / "state" / "ocdbt.process_0" / "d"
    biggest = max(data.iterdir(), key=lambda f: f.stat().st_size)
    os.truncate(biggest, 1000)
    root = Path(__file__).resolve().parents[2]
    proc = subprocess.run([sys.executable, "-m", "model", "embed", "--weights", str(weights), "--collection",
                           str(tiny_collection), "--resolution", "32", "--out", str(tmp_path / "sig.npz"),
                           "--no-progress"], cwd=root, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(root)})
    assert proc.returncode == 1, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and f"{weights}: the weights cannot be read" in errors[0], proc.stderr[-3000:]
    assert "cut short" in errors[0] and "--resume" in errors[0]
    assert "Traceback" not in proc.stderr and "Exception ignored" not in proc.stderr
    assert len(proc.stderr.splitlines()) <= 5, proc.stderr[-3000:]
    assert not (tmp_path / "sig.npz").exists()
