"""ResNeXt's grouped 3x3 convs layer by layer: forward, input gradient and weight gradient, JAX vs PyTorch.

The train step's time in ResNeXt-101 32x8d sits in its grouped 3x3 convs (32 groups), and XLA lowers
their two gradients differently from the forward: the input gradient as a grouped forward conv on a
transposed kernel, the weight gradient as a conv with `batch_group_count` (cuDNN's backward-filter when
the pattern matches; reports of slow grouped/depthwise gradients: jax-ml/jax#13800, jax-ml/jax#23713,
openxla/xla#34273). A whole-step ratio cannot say which of the three loses; this times each alone, for
every grouped conv shape of the network at a given resolution and batch (one stride-1 layer per stage and
the stride-2 layer that opens stages 2-4), for each lowering of `model.lowering.conv2d` and for torch
(channels_last; `aten.convolution_backward` with one output each, what autograd itself calls).

Prints one JSON line per (layer, pass, implementation) and a human line per layer on stderr:

    python benchmarks/grouped_conv_layers.py --resolution 320 --images 96 --precision bf16
    python benchmarks/grouped_conv_layers.py --resolution 32 --images 2 --width-scale 0.125 --steps 1   # CPU check
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from model.lowering import conv2d, symmetric_padding  # noqa: E402

PASSES = ("fwd", "dgrad", "wgrad")


def layers(resolution: int, width_scale: float = 1.0, groups: int = 32) -> list[dict]:
    """The grouped 3x3 convs of ResNeXt-101 32x8d: stage k has width 256 * 2^(k-1) on maps of R / 2^(k+1);
    the first block of stages 2-4 strides its grouped conv (torchvision's ResNet puts the stride there)."""
    out = []
    for k in range(4):
        width = max(groups, int(256 * 2**k * width_scale) // groups * groups)
        size = max(1, resolution // 2 ** (k + 2))
        out.append({"name": f"stage{k + 1}", "size": size, "channels": width, "stride": 1})
        if k:
            out.append({"name": f"stage{k + 1}-stride2", "size": size * 2, "channels": width, "stride": 2})
    return out


def _timer(fn, sync):
    def run(k: int) -> float:
        sync(fn())  # warm (and, the first time, compile)
        t = time.perf_counter()
        for _ in range(k):
            r = fn()
        sync(r)
        return (time.perf_counter() - t) / k

    return run


def jax_passes(x, w, dy, *, impl: str, stride: int, groups: int, dtype) -> dict:
    pad = symmetric_padding(3)

    def conv(x, w):
        return conv2d(x, w, stride=stride, padding=pad, groups=groups, impl=impl)

    xd, wd, dyd = (jax.device_put(a.astype(dtype)) for a in (x, w, dy))
    fwd = jax.jit(conv)
    dgrad = jax.jit(lambda x, w, dy: jax.vjp(lambda x: conv(x, w), x)[1](dy)[0])
    wgrad = jax.jit(lambda x, w, dy: jax.vjp(lambda w: conv(x, w), w)[1](dy)[0])
    return {"fwd": lambda: fwd(xd, wd), "dgrad": lambda: dgrad(xd, wd, dyd), "wgrad": lambda: wgrad(xd, wd, dyd)}


def torch_passes(x, w, dy, *, stride: int, groups: int, bf16: bool) -> tuple[dict, object]:
    import torch

    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dt = torch.bfloat16 if bf16 else torch.float32

    def nchw(a):
        return torch.from_numpy(np.ascontiguousarray(a.transpose(0, 3, 1, 2))).to(dev, dt).contiguous(
            memory_format=torch.channels_last)

    xt, dyt = nchw(x), nchw(dy)
    wt = torch.from_numpy(np.ascontiguousarray(w.transpose(3, 2, 0, 1))).to(dev, dt).contiguous(
        memory_format=torch.channels_last)
    conv_args = ([stride, stride], [1, 1], [1, 1], False, [0, 0], groups)

    def back(mask):
        return torch.ops.aten.convolution_backward(dyt, xt, wt, None, *conv_args, mask)

    def sync(_):
        if dev.type == "cuda":
            torch.cuda.synchronize()

    with torch.no_grad():
        passes = {
            "fwd": lambda: torch.nn.functional.conv2d(xt, wt, stride=stride, padding=1, groups=groups),
            "dgrad": lambda: back([True, False, False])[0],
            "wgrad": lambda: back([False, True, False])[1],
        }
    return passes, sync


def measure_layer(layer: dict, args, rng) -> list[dict]:
    n, c, g, s = args.images, layer["channels"], args.groups, layer["stride"]
    size = layer["size"]
    x = rng.standard_normal((n, size, size, c), dtype=np.float32)
    w = (rng.standard_normal((3, 3, c // g, c), dtype=np.float32) * np.sqrt(2.0 / (9 * c // g))).astype(np.float32)
    out = -(-size // s)
    dy = rng.standard_normal((n, out, out, c), dtype=np.float32)
    dtype = jnp.bfloat16 if args.precision == "bf16" else jnp.float32
    runners = {}
    for impl in args.impls.split(","):
        for name, fn in jax_passes(x, w, dy, impl=impl, stride=s, groups=g, dtype=dtype).items():
            runners[(f"jax-{impl}", name)] = _timer(fn, jax.block_until_ready)
    if not args.no_torch:
        passes, sync = torch_passes(x, w, dy, stride=s, groups=g, bf16=args.precision == "bf16")
        for name, fn in passes.items():
            runners[("torch", name)] = _timer(fn, sync)
    recs = []
    for (impl, name), run in runners.items():
        ms = 1000 * run(args.steps)
        recs.append({"layer": layer["name"], "pass": name, "impl": impl, "shape": [n, size, size, c], "groups": g,
                     "stride": s, "precision": args.precision, "ms": ms,
                     "device": jax.devices()[0].device_kind})
    return recs


def human(layer: dict, recs: list[dict]) -> str:
    parts = []
    for name in PASSES:
        row = {r["impl"]: r["ms"] for r in recs if r["pass"] == name}
        torch_ms = row.get("torch")
        best = min((v, k) for k, v in row.items() if k != "torch")
        ratio = f" (torch/jax {torch_ms / best[0]:.2f}x)" if torch_ms else ""
        parts.append(f"{name} {best[1]} {best[0]:.2f} ms" + (f" vs torch {torch_ms:.2f} ms{ratio}" if torch_ms else ""))
    return f"{layer['name']} {layer['size']}x{layer['size']}x{layer['channels']}: " + "; ".join(parts)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--resolution", type=int, default=320)
    p.add_argument("--images", type=int, default=96, help="images per step (3 x triplets)")
    p.add_argument("--groups", type=int, default=32)
    p.add_argument("--width-scale", type=float, default=1.0, help="scale the widths (CPU checks)")
    p.add_argument("--precision", choices=["f32", "bf16"], default="bf16")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--impls", default="native,split")
    p.add_argument("--no-torch", action="store_true")
    args = p.parse_args(argv)
    rng = np.random.default_rng(0)
    for layer in layers(args.resolution, args.width_scale, args.groups):
        recs = measure_layer(layer, args, rng)
        for r in recs:
            print(json.dumps(r), flush=True)
        print(human(layer, recs), file=sys.stderr, flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
