"""One process of a two-process CPU run of the train step with jax.distributed on localhost.

Usage: multiprocess_check.py PORT PROCESS_ID NUM_PROCESSES. Each process holds one CPU device and feeds
its own half of the global batch (`global_batch` -> make_array_from_process_local_data); prints one JSON
line with the loss and the parameters' checksum after two steps. Process 0 then repeats the two steps
alone on its local device with the whole global batch (the single-process reference) and reports both.
"""

from __future__ import annotations

import json
import sys

import jax

port, pid, nproc = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
jax.config.update("jax_cpu_collectives_implementation", "gloo")
if nproc > 1:
    from train.distributed import maybe_initialize

    maybe_initialize(f"localhost:{port}", nproc, pid)

import numpy as np  # noqa: E402

from tests.train.sharded_check import TinyNet  # noqa: E402
from train.config import apply_overrides, preset  # noqa: E402
from train.optim import make_optimizer  # noqa: E402
from train.step import global_batch, init_state, make_mesh, make_train_step, replicate, split_model  # noqa: E402


def run(devices, pid: int, nproc: int) -> dict:
    cfg = apply_overrides(preset("demo"), {"lr": 1e-3, "warmup_steps": 0, "margin": 0.5})
    graphdef, params, rest = split_model(TinyNet())
    opt = make_optimizer(cfg, params, total_steps=10)
    mesh = make_mesh(devices)
    state = replicate(init_state(params, rest, opt, 0), mesh)
    fn = make_train_step(graphdef, opt, cfg, mesh)
    rng = np.random.default_rng(0)
    n = 4  # global triplets
    losses = []
    for _ in range(2):
        full = rng.normal(size=(3, n, 16, 16, 3)).astype(np.float32)
        per = n // nproc
        mine = full[:, pid * per : (pid + 1) * per].reshape(3 * per, 16, 16, 3)
        state, m = fn(state, global_batch(mine, mesh))
        losses.append(float(np.asarray(m["loss"].addressable_shards[0].data)))
    leaves = [np.asarray(x.addressable_shards[0].data) for x in jax.tree.leaves(state.params)]
    return {"devices": int(mesh.devices.size), "loss": losses,
            "checksum": float(sum(np.abs(x).sum() for x in leaves)), "first": leaves[0].ravel()[:4].tolist()}


def main() -> None:
    out = {"process": pid, "distributed": run(jax.devices(), pid, nproc)}
    if pid == 0:
        out["single"] = run(jax.local_devices(), 0, 1)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
