"""Train-step throughput: our JAX step against an idiomatic PyTorch step, same model and batch, one run.

What is timed is one full optimisation step over N triplets (3N images): forward on the stacked
batch, compound hinge loss, backward, Adam update, with BatchNorm statistics frozen on both sides.
Both frameworks get the same global batch of ImageNet-normalised float images already on the device,
so the figure is the model step, not the input pipeline (see benchmarks/input_pipeline.py).

The PyTorch baseline is what a strong PyTorch user writes: the torchvision model without its
classifier, channels_last, bf16 autocast when --precision bf16 (float32 otherwise), `torch.optim.Adam`,
optionally `torch.compile` as a second baseline. Steps alternate between frameworks in blocks so
that a noisy, shared machine slows both alike; the ratio is the figure to quote.

Prints one JSON line per framework and a last line {"ratio_jax_over_torch": ...}, then a human line
on stderr. Example (this repo's CPU figure in benchmarks/RESULTS.md):

    python benchmarks/train_throughput.py --arch resnext101_32x8d --resolution 128 --batch 4 \
        --precision f32 --steps 4 --baseline torch
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import jax  # noqa: E402
import numpy as np  # noqa: E402

from model.lowering import CONV_IMPLS  # noqa: E402

# Dense peak FLOP/s per device, for MFU. H100/H200 SXM figures from NVIDIA's data sheets
# (bf16 tensor cores without sparsity; fp32 as TF32 tensor cores is what XLA and cuDNN use by default).
PEAK_FLOPS = {
    ("H100", "bf16"): 989e12,
    ("H100", "f32"): 494e12,
    ("H200", "bf16"): 989e12,
    ("H200", "f32"): 494e12,
    ("A100", "bf16"): 312e12,
    ("A100", "f32"): 156e12,
}


def device_peak(precision: str) -> float | None:
    kind = jax.devices()[0].device_kind
    for (name, prec), flops in PEAK_FLOPS.items():
        if name in kind and prec == precision:
            return flops
    return None


def machine() -> str:
    d = jax.devices()[0]
    if d.platform == "cpu":
        cpu = platform.processor() or platform.machine()
        try:
            for line in Path("/proc/cpuinfo").read_text().splitlines():
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
        except OSError:
            pass
        import os

        return f"CPU {cpu} x{os.cpu_count()}"
    return f"{d.device_kind} x{jax.device_count()}"


# ----------------------------------------------------------------------------------------------- JAX
def build_jax(args):
    from model import registry
    from model.signature import set_conv_impl, set_mode
    from train import step as step_lib
    from train.config import apply_overrides, preset
    from train.optim import make_optimizer

    cfg = apply_overrides(
        preset("fast"),
        {
            "arch": args.arch,
            "resolution": args.resolution,
            "batch_size": args.batch,
            "compute_dtype": "bfloat16" if args.precision == "bf16" else "float32",
            "optimizer": "adam",
            "schedule": "constant",
            "warmup_steps": 0,
            "lr": 1e-6,
        },
    )
    model = registry.build(args.arch, seed=0, dtype=cfg.compute_dtype, remat=args.remat)
    set_conv_impl(model, args.conv_impl)
    set_mode(model, training=True, freeze_bn=True)  # stochastic depth on, BN statistics frozen
    graphdef, params, rest = step_lib.split_model(model)
    optimizer = make_optimizer(cfg, params, total_steps=10_000)
    mesh = step_lib.make_mesh()
    state = step_lib.replicate(step_lib.init_state(params, rest, optimizer, seed=0), mesh)
    step = step_lib.make_train_step(graphdef, optimizer, cfg, mesh)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((3 * args.batch, args.resolution, args.resolution, 3), dtype=np.float32)
    images = step_lib.global_batch(x, mesh)

    t0 = time.perf_counter()
    compiled = step.lower(state, images).compile()
    compile_s = time.perf_counter() - t0
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list | tuple) else cost
    flops = float(cost.get("flops", float("nan"))) if cost else float("nan")
    hlo = compiled.as_text()
    gathers = step_lib.all_gathers(hlo)

    holder = {"state": state}

    def run(n: int) -> float:
        s = holder["state"]
        t = time.perf_counter()
        for _ in range(n):
            s, metrics = compiled(s, images)
        jax.block_until_ready((s, metrics))
        holder["state"] = s
        return time.perf_counter() - t

    run(1)  # first execution (allocations, autotuning)
    info = {"compile_s": compile_s, "flops_per_step": flops, "all_gathers": len(gathers)}
    return run, info


def jax_peak_memory() -> int | None:
    stats = jax.devices()[0].memory_stats() or {}
    return stats.get("peak_bytes_in_use")


# --------------------------------------------------------------------------------------------- torch
def build_torch(args, compile_model: bool):
    import torch
    import torch.nn.functional as F
    import torchvision

    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    net = getattr(torchvision.models, args.arch)(weights=None)
    if hasattr(net, "fc"):
        net.fc = torch.nn.Identity()
    else:
        net.classifier = torch.nn.Identity()
    net = net.to(dev).to(memory_format=torch.channels_last)
    net.train()  # stochastic depth (EfficientNet) active, as in our step ...
    for m in net.modules():  # ... with BN statistics frozen (running averages); gradients still flow
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.eval()
    opt = torch.optim.Adam(net.parameters(), lr=1e-6)
    amp = args.precision == "bf16"
    n = args.batch

    def loss_fn(sig):
        a, b, c = sig[:n], sig[n : 2 * n], sig[2 * n :]
        d_ab = 1 - (a * b).sum(1)
        d_neg = torch.minimum(1 - (a * c).sum(1), 1 - (b * c).sum(1))
        return torch.relu(d_ab - d_neg + 0.01 + torch.relu(d_ab - 0.1)).sum()

    def train_step(x):
        opt.zero_grad(set_to_none=True)
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=amp):
            sig = F.normalize(net(x).float(), dim=1)
        loss = loss_fn(sig)
        loss.backward()
        opt.step()
        return loss

    if compile_model:
        train_step = torch.compile(train_step)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3 * n, 3, args.resolution, args.resolution, generator=g).to(dev)
    x = x.contiguous(memory_format=torch.channels_last)

    def sync():
        if dev.type == "cuda":
            torch.cuda.synchronize()

    t0 = time.perf_counter()
    train_step(x)
    sync()
    compile_s = time.perf_counter() - t0

    def run(k: int) -> float:
        t = time.perf_counter()
        for _ in range(k):
            train_step(x)
        sync()
        return time.perf_counter() - t

    run(1)

    def peak():
        return int(torch.cuda.max_memory_allocated()) if dev.type == "cuda" else None

    return run, {"compile_s": compile_s, "peak": peak}


# ---------------------------------------------------------------------------------------------- main
def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--arch", default="resnext101_32x8d")
    p.add_argument("--resolution", type=int, default=224)
    p.add_argument("--batch", type=int, default=4, help="triplets per step (global); 3x as many images")
    p.add_argument("--precision", choices=["f32", "bf16"], default="f32")
    p.add_argument("--steps", type=int, default=5, help="timed steps per framework")
    p.add_argument("--block", type=int, default=1, help="steps per alternating block")
    p.add_argument("--baseline", choices=["torch", "torch-compile", "none"], default="torch")
    p.add_argument("--conv-impl", "--grouped-impl", dest="conv_impl", default="auto", choices=list(CONV_IMPLS),
                   help="conv lowering (model/lowering.py); auto = per backend (--grouped-impl: its old name)")
    p.add_argument("--remat", action="store_true", help="recompute each block's activations in the backward pass")
    args = p.parse_args(argv)

    images = 3 * args.batch
    common = {
        "arch": args.arch,
        "resolution": args.resolution,
        "batch": args.batch,
        "images_per_step": images,
        "precision": args.precision,
        "conv_impl": args.conv_impl,
        "remat": args.remat,
        "machine": machine(),
        "jax": jax.__version__,
    }
    runners = {}
    infos = {}
    runners["jax"], infos["jax"] = build_jax(args)
    if args.baseline != "none":
        import torch

        common["torch"] = torch.__version__
        name = "torch-compile" if args.baseline == "torch-compile" else "torch"
        runners[name], infos[name] = build_torch(args, compile_model=args.baseline == "torch-compile")

    times = {k: 0.0 for k in runners}
    done = {k: 0 for k in runners}
    while min(done.values()) < args.steps:
        for k, run in runners.items():
            b = min(args.block, args.steps - done[k])
            times[k] += run(b)
            done[k] += b

    rates = {}
    flops = infos["jax"]["flops_per_step"]  # the same model and batch: torch does the same work
    peak = device_peak(args.precision)
    for k in runners:
        ms = 1000.0 * times[k] / done[k]
        rates[k] = images / (times[k] / done[k])
        rec = {"framework": k, **common, "img_per_s": rates[k], "ms_per_step": ms, "compile_s": infos[k]["compile_s"]}
        rec["mfu"] = (flops / (ms / 1000.0)) / peak if peak else None  # XLA's FLOP count of the step
        if k == "jax":
            rec["flops_per_image"] = flops / images
            rec["all_gathers_in_step"] = infos[k]["all_gathers"]
            rec["peak_device_bytes"] = jax_peak_memory()
        else:
            rec["peak_device_bytes"] = infos[k]["peak"]()
        print(json.dumps(rec), flush=True)
    base = next((k for k in runners if k != "jax"), None)
    ratio = rates["jax"] / rates[base] if base else None
    print(json.dumps({"ratio_jax_over_torch": ratio, "baseline": base}), flush=True)
    human = f"{args.arch} {args.resolution}px batch {args.batch} {args.precision} on {common['machine']}: JAX {rates['jax']:.2f} img/s"
    if base:
        human += f", {base} {rates[base]:.2f} img/s, ratio {ratio:.2f}x"
    print(human, file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
