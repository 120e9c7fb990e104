"""One grouped 3x3 convolution, forward + backward (input and weight gradients): JAX lowerings vs PyTorch.

ResNeXt's cost sits in its grouped 3x3 convs, and XLA's handling of them decides whether the JAX
train step can beat PyTorch (jax-ml/jax#13800). This times one such layer in isolation for each
lowering of `model.lowering.conv2d` ("native" = feature_group_count, "split" = G dense convs) and
for torch (channels_last), in one process, alternating, and checks the lowerings agree.

Default shape: the first stage of ResNeXt-101 32x8d at 224 px with 12 images (batch 4 triplets):
x (12, 56, 56, 256), 32 groups, 256 -> 256 channels.

    python benchmarks/grouped_conv.py --batch 12 --size 56 --channels 256 --groups 32 --precision f32
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


def jax_runner(impl: str, x: np.ndarray, w: np.ndarray, groups: int, dtype):
    pad = symmetric_padding(3)

    def loss(x, w):
        y = conv2d(x.astype(dtype), w.astype(dtype), stride=1, padding=pad, groups=groups, impl=impl)
        return jnp.sum(y.astype(jnp.float32) ** 2), y

    fn = jax.jit(jax.value_and_grad(loss, argnums=(0, 1), has_aux=True))
    xd, wd = jax.device_put(x), jax.device_put(w)
    t0 = time.perf_counter()
    out = fn(xd, wd)
    jax.block_until_ready(out)
    compile_s = time.perf_counter() - t0

    def run(k):
        t = time.perf_counter()
        for _ in range(k):
            r = fn(xd, wd)
        jax.block_until_ready(r)
        return time.perf_counter() - t

    return run, compile_s, np.asarray(out[0][1], np.float32)


def torch_runner(x: np.ndarray, w: np.ndarray, groups: int, bf16: bool):
    import torch

    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    xt = torch.from_numpy(x).permute(0, 3, 1, 2).contiguous(memory_format=torch.channels_last).to(dev)
    wt = torch.from_numpy(np.ascontiguousarray(w.transpose(3, 2, 0, 1))).to(dev)
    wt = wt.contiguous(memory_format=torch.channels_last)
    xt.requires_grad_(True)
    wt.requires_grad_(True)

    def step():
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=bf16):
            y = torch.nn.functional.conv2d(xt, wt, padding=1, groups=groups)
        (y.float() ** 2).sum().backward()
        xt.grad = None
        wt.grad = None
        return y

    def sync():
        if dev.type == "cuda":
            torch.cuda.synchronize()

    y = step()
    sync()

    def run(k):
        t = time.perf_counter()
        for _ in range(k):
            step()
        sync()
        return time.perf_counter() - t

    return run, y.detach().float().permute(0, 2, 3, 1).cpu().numpy()


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batch", type=int, default=12)
    p.add_argument("--size", type=int, default=56)
    p.add_argument("--channels", type=int, default=256)
    p.add_argument("--groups", type=int, default=32)
    p.add_argument("--precision", choices=["f32", "bf16"], default="f32")
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--impls", default="native,split")
    p.add_argument("--no-torch", action="store_true")
    args = p.parse_args(argv)

    rng = np.random.default_rng(0)
    c, g = args.channels, args.groups
    x = rng.standard_normal((args.batch, args.size, args.size, c), dtype=np.float32)
    w = (rng.standard_normal((3, 3, c // g, c), dtype=np.float32) * np.sqrt(2.0 / (9 * c // g))).astype(np.float32)
    dtype = jnp.bfloat16 if args.precision == "bf16" else jnp.float32

    runners, compile_s, outputs = {}, {}, {}
    for impl in args.impls.split(","):
        runners[f"jax-{impl}"], compile_s[f"jax-{impl}"], outputs[impl] = jax_runner(impl, x, w, g, dtype)
    if not args.no_torch:
        runners["torch"], outputs["torch"] = torch_runner(x, w, g, args.precision == "bf16")
        compile_s["torch"] = 0.0
    ref = next(iter(outputs.values()))
    max_diff = {k: float(np.max(np.abs(v - ref))) for k, v in outputs.items()}

    times = {k: 0.0 for k in runners}
    for _ in range(args.steps):
        for k, run in runners.items():
            times[k] += run(1)
    common = {
        "shape": [args.batch, args.size, args.size, c],
        "groups": g,
        "precision": args.precision,
        "device": jax.devices()[0].device_kind,
    }
    for k in runners:
        ms = 1000 * times[k] / args.steps
        print(json.dumps({"impl": k, **common, "ms_fwd_bwd": ms, "compile_s": compile_s[k],
                          "max_abs_diff_vs_first": max_diff[k.removeprefix("jax-")]}))
    line = ", ".join(f"{k} {1000 * times[k] / args.steps:.1f} ms" for k in runners)
    print(f"grouped conv {common['shape']} G={g} {args.precision} fwd+bwd on {common['device']}: {line}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
