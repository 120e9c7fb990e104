"""Every conv layer of a network, forward + backward, per lowering of `model.lowering.conv2d`, vs PyTorch.

Why: on XLA:CPU the conv backward pass is where the train step loses to PyTorch (benchmarks/RESULTS.md),
and `conv_impl="auto"` should pick, per layer kind, the formulation that measures fastest. This
records the conv layers a network really runs (shapes, strides, groups, with multiplicity) by tracing it
abstractly, then times each distinct layer's forward + input and weight gradients for each applicable
lowering and for torch (channels_last), in one process, alternating, after checking the lowerings agree.
The per-network totals weight each layer by how often it occurs.

Prints one JSON line per (layer, lowering) and per network total, and a human line per layer and total.

    python benchmarks/conv_cpu.py --arch resnet18 --resolution 64 --images 48
    python benchmarks/conv_cpu.py --arch resnext101_32x8d --resolution 128 --images 12 --reps 3
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from flax import nnx  # noqa: E402

import model.layers as layers  # noqa: E402
from model.lowering import conv2d, dense_dots_choice, resolve_conv_impl, symmetric_padding  # noqa: E402

Layer = tuple  # (input shape NHWC, kernel shape HWIO, stride, groups)


def conv_layers(arch: str, resolution: int, images: int) -> collections.Counter:
    """The (input shape, kernel shape, stride, groups) of every conv the network runs, with counts."""
    from model.registry import build_abstract

    seen: collections.Counter = collections.Counter()
    original = layers.conv2d

    def recording(x, kernel, *, stride, padding, groups, impl):
        seen[(tuple(x.shape), tuple(kernel.shape), stride, groups)] += 1
        return original(x, kernel, stride=stride, padding=padding, groups=groups, impl=impl)

    layers.conv2d = recording
    try:
        graphdef, state = nnx.split(build_abstract(arch))
        x = jax.ShapeDtypeStruct((images, resolution, resolution, 3), jnp.float32)
        jax.eval_shape(lambda s, x: nnx.merge(graphdef, s)(x), state, x)
    finally:
        layers.conv2d = original
    return seen


def lowerings_for(layer: Layer, skip_native_grouped: bool = False) -> list[str]:
    """The layer lowerings that apply to this layer (the first is the reference the others must match).

    Native grouped convs take 4-20 s per step on XLA:CPU (and minutes to compile);
    `skip_native_grouped` leaves them out and checks "split" against nothing but itself.
    """
    (_, _, _, cin), (kh, _, _, _), _, groups = layer
    if groups > 1:
        if groups == cin:
            return ["native"]
        return ["split"] if skip_native_grouped else ["native", "split"]
    return ["native", "matmul"] if kh == 1 else ["native", "dwdots", "im2col"]


def jax_runner(impl: str, layer: Layer, x: np.ndarray, w: np.ndarray):
    _, kshape, stride, groups = layer
    pad = symmetric_padding(kshape[0])

    def loss(x, w):
        y = conv2d(x, w, stride=stride, padding=pad, groups=groups, impl=impl)
        return jnp.sum(y * y), y

    fn = jax.jit(jax.value_and_grad(loss, argnums=(0, 1), has_aux=True))
    xd, wd = jnp.asarray(x), jnp.asarray(w)
    t0 = time.perf_counter()
    out = jax.block_until_ready(fn(xd, wd))
    compile_s = time.perf_counter() - t0

    def run():
        jax.block_until_ready(fn(xd, wd))

    return run, compile_s, (np.asarray(out[0][1]), np.asarray(out[1][0]), np.asarray(out[1][1]))


def torch_runner(layer: Layer, x: np.ndarray, w: np.ndarray):
    import torch

    _, kshape, stride, groups = layer
    xt = torch.from_numpy(x).permute(0, 3, 1, 2).contiguous(memory_format=torch.channels_last).requires_grad_(True)
    wt = torch.from_numpy(np.ascontiguousarray(w.transpose(3, 2, 0, 1)))
    wt = wt.contiguous(memory_format=torch.channels_last).requires_grad_(True)

    def run():
        y = torch.nn.functional.conv2d(xt, wt, stride=stride, padding=(kshape[0] - 1) // 2, groups=groups)
        (y * y).sum().backward()
        xt.grad = None
        wt.grad = None

    run()
    return run


def measure_layer(layer: Layer, reps: int, with_torch: bool, skip_native_grouped: bool) -> dict[str, float]:
    xshape, kshape, _, _ = layer
    rng = np.random.default_rng(0)
    x = rng.standard_normal(xshape).astype(np.float32)
    w = (rng.standard_normal(kshape) / np.sqrt(np.prod(kshape[:3]))).astype(np.float32)
    runners = {}
    ref = None
    for impl in lowerings_for(layer, skip_native_grouped):
        run, _, outs = jax_runner(impl, layer, x, w)
        if ref is None:
            ref = outs
        for name, a, b in zip(("output", "input grad", "kernel grad"), outs, ref, strict=True):
            err = float(np.max(np.abs(a - b)) / (np.max(np.abs(b)) + 1e-12))
            if err > 1e-4:
                raise AssertionError(f"{impl} disagrees with native on {layer}: {name} relative error {err:.2e}")
        runners[impl] = run
    if with_torch:
        runners["torch"] = torch_runner(layer, x, w)
    times: dict[str, list[float]] = {k: [] for k in runners}
    for _ in range(reps):  # alternate, so load changes on the shared machine hit every formulation alike
        for name, run in runners.items():
            t = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - t)
    return {k: statistics.median(v) for k, v in times.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", default="resnet18")
    ap.add_argument("--resolution", type=int, default=64)
    ap.add_argument("--images", type=int, default=48, help="batch of images (3 per triplet)")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--skip-torch", action="store_true")
    ap.add_argument("--skip-native-grouped", action="store_true", help="time grouped convs as 'split' only")
    args = ap.parse_args()
    found = conv_layers(args.arch, args.resolution, args.images)
    totals: dict[str, float] = collections.defaultdict(float)
    for layer, count in sorted(found.items(), key=lambda kv: -np.prod(kv[0][0]) * np.prod(kv[0][1])):
        med = measure_layer(layer, args.reps, not args.skip_torch, args.skip_native_grouped)
        best_jax = min((v, k) for k, v in med.items() if k != "torch")
        totals["best"] += count * best_jax[0]
        totals["native"] += count * med.get("native", med.get("split", 0.0))
        if "torch" in med:
            totals["torch"] += count * med["torch"]
        xshape, kshape, stride, groups = layer
        auto = resolve_conv_impl("dots", groups, xshape[3], kshape[0])
        auto = dense_dots_choice(xshape, kshape, stride) if auto == "dots" else auto
        rec = {"bench": "conv_cpu", "arch": args.arch, "input": list(xshape), "kernel": list(kshape),
               "stride": stride, "groups": groups, "count": count, "dots_picks": auto,
               "fwd_bwd_ms": {k: round(v * 1e3, 2) for k, v in med.items()}, "load_avg_1m": os.getloadavg()[0]}
        print(json.dumps(rec), flush=True)
        desc = f"{'x'.join(map(str, xshape))} k{kshape[0]} s{stride} g{groups} {kshape[2] * groups}->{kshape[3]}"
        print(f"  {desc} (x{count}): " + ", ".join(f"{k} {v * 1e3:.0f} ms" for k, v in med.items())
              + f"  -> best jax: {best_jax[1]}, 'dots' picks {auto}", flush=True)
    print(json.dumps({"bench": "conv_cpu", "arch": args.arch, "resolution": args.resolution, "images": args.images,
                      "total_s": {k: round(v, 3) for k, v in totals.items()}}))
    native = "native (split for grouped)" if args.skip_native_grouped else "native"
    line = f"{args.arch} {args.resolution}px x{args.images}, all convs fwd+bwd: {native} {totals['native']:.2f} s, "
    line += f"best per layer {totals['best']:.2f} s"
    if "torch" in totals:
        line += f", torch {totals['torch']:.2f} s (torch/best = {totals['torch'] / totals['best']:.2f}x)"
    print(line)


if __name__ == "__main__":
    main()
