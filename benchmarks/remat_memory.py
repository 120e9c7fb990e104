"""What `--set remat=true` buys: the train step's compiled temporary memory and FLOPs, with and without.

Compiles the real train step (train.step.make_train_step, frozen BN, Adam) for one architecture,
resolution, batch and precision, once with every residual block rematerialised and once without, and
reads XLA's own accounting of the compiled programs (`memory_analysis().temp_size_in_bytes`: the
activations and workspace a step needs besides parameters, optimizer state and inputs;
`cost_analysis()["flops"]`). Nothing is executed, so it runs anywhere the step compiles; the figures are
the compiler's plan for this backend. Prints one JSON line per setting and a human line on stderr.

    python benchmarks/remat_memory.py --arch resnet50 --resolution 128 --batch 8 --precision f32
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import jax  # noqa: E402
import numpy as np  # noqa: E402


def measure(arch: str, resolution: int, batch: int, precision: str, remat: bool) -> dict:
    from model import registry
    from model.signature import set_mode
    from train import step as step_lib
    from train.config import apply_overrides, preset
    from train.optim import make_optimizer

    dtype = "bfloat16" if precision == "bf16" else "float32"
    cfg = apply_overrides(preset("fast"), {"arch": arch, "resolution": resolution, "batch_size": batch,
                                           "compute_dtype": dtype, "remat": remat})
    model = registry.build(arch, seed=0, dtype=dtype, remat=remat)
    set_mode(model, training=True, freeze_bn=True)
    graphdef, params, rest = step_lib.split_model(model)
    opt = make_optimizer(cfg, params, total_steps=1000)
    mesh = step_lib.make_mesh()
    state = step_lib.replicate(step_lib.init_state(params, rest, opt, seed=0), mesh)
    images = step_lib.global_batch(np.zeros((3 * batch, resolution, resolution, 3), np.uint8), mesh)
    t0 = time.perf_counter()
    compiled = step_lib.make_train_step(graphdef, opt, cfg, mesh).lower(state, images).compile()
    compile_s = time.perf_counter() - t0
    mem = compiled.memory_analysis()
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list | tuple) else cost
    return {"arch": arch, "resolution": resolution, "batch": batch, "precision": precision, "remat": remat,
            "temp_bytes": int(mem.temp_size_in_bytes), "argument_bytes": int(mem.argument_size_in_bytes),
            "flops": float(cost.get("flops", float("nan"))), "compile_s": round(compile_s, 1),
            "backend": jax.default_backend(), "device": jax.devices()[0].device_kind}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", default="resnet50")
    ap.add_argument("--resolution", type=int, default=128)
    ap.add_argument("--batch", type=int, default=8, help="triplets per step (3x images)")
    ap.add_argument("--precision", choices=("f32", "bf16"), default="f32")
    args = ap.parse_args()
    rows = []
    for remat in (False, True):
        rows.append(measure(args.arch, args.resolution, args.batch, args.precision, remat))
        print(json.dumps(rows[-1]), flush=True)
    off, on = rows
    print(f"{args.arch} {args.resolution}px batch {args.batch} {args.precision} on {off['device']}: "
          f"temp memory {off['temp_bytes'] / 2**20:.0f} MiB -> {on['temp_bytes'] / 2**20:.0f} MiB with remat "
          f"({on['temp_bytes'] / off['temp_bytes']:.2f}x), FLOPs {on['flops'] / off['flops']:.2f}x", file=sys.stderr)


if __name__ == "__main__":
    main()
