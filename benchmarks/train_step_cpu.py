"""Train-step time on this machine's CPU: the Flax step (train.step) beside a torchvision step, same run.

One step = forward of 3N images (N triplets: A, B, C stacked), compound hinge loss, backward, Adam
update, BN frozen (running statistics), float32. The torch side mirrors it: torchvision model without
its classifier, `eval()` (frozen BN), per-row L2 norm, the same loss, torch.optim.Adam.

Prints one JSON line per measurement and a human line per configuration.
Usage: python benchmarks/train_step_cpu.py [--arch resnet18 --resolution 64 --triplets 16] [--steps 3]
       [--impls split,dots]   (conv lowerings to compare; see model/lowering.py)
Defaults measure the demo preset (resnet18, 64 px, 16 triplets) with the "auto" lowering. Each lowering
and torch are compiled first, then stepped in turn (one warm-up round, then --steps rounds), so a change
in machine load hits all of them alike; "speed vs torch" = torch's median step time / this one's.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def flax_setup(arch: str, res: int, n: int, impl: str) -> dict:
    """Compile the Flax train step with conv lowering `impl`; returns a `run()` doing one step."""
    import jax
    import numpy as np

    from model.registry import build
    from model.signature import set_conv_impl, set_mode
    from train.config import apply_overrides, preset
    from train.optim import make_optimizer
    from train.step import global_batch, init_state, make_mesh, make_train_step, replicate, split_model

    cfg = apply_overrides(preset("thesis"), {"arch": arch, "resolution": res, "batch_size": n, "lr": 1e-4})
    model = set_mode(set_conv_impl(build(arch, seed=0), impl), training=True, freeze_bn=True)
    graphdef, params, rest = split_model(model)
    opt = make_optimizer(cfg, params, total_steps=100)
    mesh = make_mesh(jax.devices()[:1])
    box = {"state": replicate(init_state(params, rest, opt, 0), mesh)}
    fn = make_train_step(graphdef, opt, cfg, mesh)
    rng = np.random.default_rng(0)
    images = global_batch(rng.integers(0, 256, size=(3 * n, res, res, 3), dtype=np.uint8), mesh)
    t0 = time.perf_counter()
    compiled = fn.lower(box["state"], images).compile()
    compile_s = time.perf_counter() - t0
    flops = (compiled.cost_analysis() or {}).get("flops") if hasattr(compiled, "cost_analysis") else None

    def run() -> float:
        box["state"], m = compiled(box["state"], images)
        return float(jax.block_until_ready(m["loss"]))

    return {"run": run, "compile_s": compile_s, "flops": flops}


def torch_setup(arch: str, res: int, n: int) -> dict:
    """The idiomatic torch step (channels_last, eval-mode BN, Adam); returns a `run()` doing one step."""
    import torch
    import torchvision

    torch.manual_seed(0)
    net = getattr(torchvision.models, arch)(weights=None)
    if hasattr(net, "classifier"):  # efficientnet: the signature is the pooled features
        net.classifier = torch.nn.Identity()
    else:
        net.fc = torch.nn.Identity()
    net.eval()  # frozen BN: running statistics, not updated
    opt = torch.optim.Adam(net.parameters(), lr=1e-4, weight_decay=1e-4)
    x = torch.randn(3 * n, 3, res, res).contiguous(memory_format=torch.channels_last)
    net = net.to(memory_format=torch.channels_last)

    def loss_fn(sig):
        sig = torch.nn.functional.normalize(sig, dim=1)
        a, b, c = sig[:n], sig[n : 2 * n], sig[2 * n :]
        dab = 1 - (a * b).sum(1)
        dneg = torch.minimum(1 - (a * c).sum(1), 1 - (b * c).sum(1))
        return torch.relu(dab - dneg + 0.01 + torch.relu(dab - 0.1)).sum()

    def run() -> float:
        opt.zero_grad()
        loss = loss_fn(net(x))
        loss.backward()
        opt.step()
        return loss.item()

    return {"run": run, "compile_s": 0.0, "threads": torch.get_num_threads()}


def load_average() -> float | None:
    try:
        return os.getloadavg()[0]
    except OSError:
        return None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", default="resnet18")
    ap.add_argument("--resolution", type=int, default=64)
    ap.add_argument("--triplets", type=int, default=16)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--impls", default="auto", help="comma-separated conv lowerings (model.lowering.CONV_IMPLS)")
    ap.add_argument("--skip-torch", action="store_true")
    args = ap.parse_args()
    machine = f"{platform.machine()} {os.cpu_count()} cpu"
    runners = {f"flax:{impl}": flax_setup(args.arch, args.resolution, args.triplets, impl)
               for impl in args.impls.split(",")}
    if not args.skip_torch:
        runners["torch"] = torch_setup(args.arch, args.resolution, args.triplets)
    times: dict[str, list[float]] = {name: [] for name in runners}
    loads = []
    for rep in range(args.steps + 1):  # round 0 is warm-up; then alternate so load changes hit all alike
        for name, r in runners.items():
            t = time.perf_counter()
            r["run"]()
            if rep:
                times[name].append(time.perf_counter() - t)
        loads.append(load_average())
    medians = {name: statistics.median(ts) for name, ts in times.items()}
    for name, r in runners.items():
        rec = {"bench": "train_step_cpu", "impl": name, "arch": args.arch, "resolution": args.resolution,
               "triplets": args.triplets, "images": 3 * args.triplets, "dtype": "float32",
               "step_s_median": round(medians[name], 4), "step_s_min": round(min(times[name]), 4), "step_s_all": [round(t, 4) for t in times[name]],
               "img_per_s": round(3 * args.triplets / medians[name], 2), "compile_s": round(r["compile_s"], 2),
               "machine": machine, "load_avg_1m": loads}
        if r.get("flops"):
            rec["gflop_per_step"] = round(r["flops"] / 1e9, 1)
        if "torch" in medians and name != "torch":
            rec["ratio_torch_time_over_this"] = round(medians["torch"] / medians[name], 3)
            rec["ratio_of_min_times"] = round(min(times["torch"]) / min(times[name]), 3)
        print(json.dumps(rec), flush=True)
    line = f"{args.arch} {args.resolution}px, {args.triplets} triplets ({3 * args.triplets} images), f32, {machine}: "
    line += ", ".join(f"{name} {m:.2f} s/step" for name, m in medians.items())
    if "torch" in medians:
        line += " | speed vs torch: " + ", ".join(
            f"{name} {medians['torch'] / m:.2f}x (of min times {min(times['torch']) / min(times[name]):.2f}x)"
            for name, m in medians.items()
            if name != "torch"
        )
    print(line + f" (load {loads})")


if __name__ == "__main__":
    main()
