"""One way to embed (issue 12): training's per-epoch embedding is `model embed`'s forward over a mesh, and
the resolution follows one rule for training and embedding alike."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from click.testing import CliRunner

ROOT = Path(__file__).resolve().parents[2]

# 4 simulated CPU devices need XLA_FLAGS before jax loads: a subprocess. A tiny ResNeXt with *native* grouped
# convs (where XLA's partitioner would gather the batch) keeps compiling quick.
_SHARDED = """
import json
import jax, numpy as np
from flax import nnx
from model.embed import make_embed_fn
from model.resnet import ResNet, ResNetConfig
from model.signature import SignatureNet, set_conv_impl
from model.state import initialize
from train.step import all_gathers, make_mesh

net = SignatureNet("tiny", ResNet(ResNetConfig("bottleneck", (1, 1, 1, 1), groups=8, width_per_group=4),
                                  rngs=nnx.Rngs(0)))
initialize(net, 0)
graphdef, params, rest = nnx.split(set_conv_impl(net, "native"), nnx.Param, ...)
images = np.random.default_rng(0).integers(0, 256, (8, 32, 32, 3), dtype=np.uint8)
mesh = make_mesh(jax.local_devices())
sharded = make_embed_fn(graphdef, mesh)
one = make_embed_fn(graphdef)
x = jax.device_put(images, jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data")))
a, b = np.asarray(sharded(params, rest, x)), np.asarray(one(params, rest, images))
print(json.dumps({
    "devices": mesh.devices.size, "shape": a.shape, "max_diff": float(np.abs(a - b).max()),
    "alone_diff": float(np.abs(np.asarray(one(params, rest, images[:2])) - b[:2]).max()),
    "all_gathers": all_gathers(sharded.lower(params, rest, x).compile().as_text()),
    "cached": make_embed_fn(graphdef, mesh) is sharded and make_embed_fn(graphdef) is one,
}))
"""


def test_training_embeds_with_model_embeds_forward_split_over_its_devices():
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4", PYTHONPATH=str(ROOT),
               JAX_PLATFORMS="cpu")
    r = subprocess.run([sys.executable, "-c", _SHARDED], env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["devices"] == 4 and out["shape"] == [8, 2048]
    assert out["max_diff"] < 1e-5 and out["alone_diff"] < 1e-5  # a signature depends on its image only
    assert out["all_gathers"] == []  # each device keeps its slice of the batch
    assert out["cached"]


def test_training_refuses_a_resolution_the_networks_cannot_embed(tmp_path):
    """Training accepted `--set resolution=16` (the config said >= 8), prepared the dataset and failed when
    it embedded the start's signatures (`embed_collection` said >= 32). Now one rule refuses it first."""
    from train.__main__ import cli

    (tmp_path / "coll").mkdir()
    (tmp_path / "coll" / "images.csv").write_text("uid,path\n")
    base = ["--collection", str(tmp_path / "coll"), "--out", str(tmp_path / "run"), "--preset", "demo"]
    res = CliRunner().invoke(cli, [*base, "--set", "resolution=16"])
    assert res.exit_code == 1 and "Traceback" not in res.output
    assert "resolution 16 is too small: the networks downsample by 32; use a resolution of at least 32." \
        in res.output
    assert not (tmp_path / "run").exists()


def test_training_embeds_on_the_mesh_model_embed_uses_so_the_forward_compiles_once():
    """Training's per-epoch embedding (`make_embed_fn(graphdef, eval_mesh)`) and its export through
    `model.embed.embed_collection` (`Embedder`, on `local_mesh()`) share one cached, compiled forward only if
    the two meshes are equal: with different axis names the forward of the network compiled twice per run."""
    import jax
    from flax import nnx

    from model.embed import Embedder, local_mesh, make_embed_fn
    from model.registry import build
    from train.step import make_mesh, split_model

    assert make_mesh(jax.local_devices()) == local_mesh()
    model = build("resnet18", seed=0)
    graphdef, params, rest = split_model(model)
    per_epoch = make_embed_fn(graphdef, make_mesh(jax.local_devices()))
    again = nnx.merge(graphdef, jax.device_get(params), jax.device_get(rest))  # what the export embeds with
    assert Embedder.of(again, 4).fn is per_epoch
