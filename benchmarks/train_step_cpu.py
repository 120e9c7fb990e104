"""Train-step time on this machine's CPU: the Flax step (train.step) beside a torchvision step, same run.

One step = forward of 3N images (N triplets: A, B, C stacked), compound hinge loss, backward, Adam
update, BN frozen (running statistics), float32. The torch side mirrors it: torchvision model without
its classifier, `eval()` (frozen BN), per-row L2 norm, the same loss, torch.optim.Adam.

Prints one JSON line per measurement and a human line per configuration.
Usage: python benchmarks/train_step_cpu.py [--arch resnet18 --resolution 64 --triplets 16] [--steps 3]
Defaults measure the demo preset (resnet18, 64 px, 16 triplets).
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


def flax_step(arch: str, res: int, n: int, steps: int) -> dict:
    import jax
    import numpy as np

    from model.registry import build
    from model.signature import set_mode
    from train.config import apply_overrides, preset
    from train.optim import make_optimizer
    from train.step import global_batch, init_state, make_mesh, make_train_step, replicate, split_model

    cfg = apply_overrides(preset("thesis"), {"arch": arch, "resolution": res, "batch_size": n, "lr": 1e-4})
    model = set_mode(build(arch, seed=0), training=True, freeze_bn=True)
    graphdef, params, rest = split_model(model)
    opt = make_optimizer(cfg, params, total_steps=100)
    mesh = make_mesh(jax.devices()[:1])
    state = replicate(init_state(params, rest, opt, 0), mesh)
    fn = make_train_step(graphdef, opt, cfg, mesh)
    rng = np.random.default_rng(0)
    images = global_batch(rng.integers(0, 256, size=(3 * n, res, res, 3), dtype=np.uint8), mesh)
    t0 = time.perf_counter()
    compiled = fn.lower(state, images).compile()
    compile_s = time.perf_counter() - t0
    flops = (compiled.cost_analysis() or {}).get("flops") if hasattr(compiled, "cost_analysis") else None
    times = []
    for _ in range(steps + 1):
        t = time.perf_counter()
        state, m = compiled(state, images)
        jax.block_until_ready(m["loss"])
        times.append(time.perf_counter() - t)
    return {"compile_s": compile_s, "times": times[1:], "flops": flops}


def torch_step(arch: str, res: int, n: int, steps: int) -> dict:
    import torch
    import torchvision

    torch.manual_seed(0)
    net = getattr(torchvision.models, arch)(weights=None)
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

    times = []
    for _ in range(steps + 1):
        t = time.perf_counter()
        opt.zero_grad()
        loss = loss_fn(net(x))
        loss.backward()
        opt.step()
        times.append(time.perf_counter() - t)
    return {"compile_s": 0.0, "times": times[1:], "threads": torch.get_num_threads()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", default="resnet18")
    ap.add_argument("--resolution", type=int, default=64)
    ap.add_argument("--triplets", type=int, default=16)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--skip-torch", action="store_true")
    args = ap.parse_args()
    machine = f"{platform.machine()} {os.cpu_count()} cpu"
    results = {"flax": flax_step(args.arch, args.resolution, args.triplets, args.steps)}
    if not args.skip_torch:
        results["torch"] = torch_step(args.arch, args.resolution, args.triplets, args.steps)
    for impl, r in results.items():
        med = statistics.median(r["times"])
        rec = {"bench": "train_step_cpu", "impl": impl, "arch": args.arch, "resolution": args.resolution,
               "triplets": args.triplets, "images": 3 * args.triplets, "dtype": "float32",
               "step_s_median": round(med, 4), "step_s_all": [round(t, 4) for t in r["times"]],
               "img_per_s": round(3 * args.triplets / med, 2), "compile_s": round(r["compile_s"], 2),
               "machine": machine}
        if r.get("flops"):
            rec["gflop_per_step"] = round(r["flops"] / 1e9, 1)
        print(json.dumps(rec), flush=True)
    line = f"{args.arch} {args.resolution}px, {args.triplets} triplets ({3 * args.triplets} images), f32, {machine}: "
    line += f"flax {statistics.median(results['flax']['times']):.2f} s/step"
    if "torch" in results:
        f, t = statistics.median(results["flax"]["times"]), statistics.median(results["torch"]["times"])
        line += f", torch {t:.2f} s/step (flax/torch = {f / t:.2f}x)"
    print(line)


if __name__ == "__main__":
    main()
