"""Forward+backward time of a ResNeXt with native vs split grouped convolutions, on this machine's backend.

Why: `conv_impl="auto"` picks the lowering per backend (model/lowering.py); this measures the choice.
Prints one JSON line per lowering and a human line with the ratio (same process, same inputs).

    python benchmarks/grouped_conv_lowering.py --arch resnext50_32x4d --batch 2 --resolution 64 --steps 3
"""

from __future__ import annotations

import json
import time

import click
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from model.registry import build
from model.signature import set_conv_impl, set_mode


def measure(arch: str, impl: str, batch: int, resolution: int, steps: int) -> dict:
    model = set_mode(set_conv_impl(build(arch, seed=0), impl), training=True)
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    x = jnp.asarray(np.random.default_rng(0).standard_normal((batch, resolution, resolution, 3)), jnp.float32)

    @jax.jit
    def step(params, rest, x):
        def loss(params):
            sig = nnx.merge(graphdef, params, rest)(x)
            return 1.0 - jnp.sum(sig[0] * sig[-1])  # a cosine loss, as in triplet training

        return jax.value_and_grad(loss)(params)

    t0 = time.perf_counter()
    jax.block_until_ready(step(params, rest, x))
    first = time.perf_counter() - t0
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        jax.block_until_ready(step(params, rest, x))
        times.append(time.perf_counter() - t0)
    return {
        "benchmark": "grouped_conv_lowering",
        "arch": arch,
        "conv_impl": impl,
        "backend": jax.default_backend(),
        "device": str(jax.devices()[0].device_kind),
        "batch": batch,
        "resolution": resolution,
        "compile_and_first_step_s": round(first, 3),
        "step_s_median": round(float(np.median(times)), 4),
        "steps": steps,
    }


@click.command()
@click.option("--arch", default="resnext50_32x4d", show_default=True)
@click.option("--batch", default=2, show_default=True)
@click.option("--resolution", default=64, show_default=True)
@click.option("--steps", default=3, show_default=True)
def main(arch: str, batch: int, resolution: int, steps: int) -> None:
    rows = [measure(arch, impl, batch, resolution, steps) for impl in ("native", "split")]
    for r in rows:
        print(json.dumps(r))
    native, split = (r["step_s_median"] for r in rows)
    faster = "split" if split < native else "native"
    print(
        f"{arch} fwd+bwd, batch {batch} at {resolution}px on {rows[0]['backend']}: native {native:.3f} s/step, "
        f"split {split:.3f} s/step -> {faster} is {max(native, split) / min(native, split):.1f}x faster "
        f"(compile+first step: native {rows[0]['compile_and_first_step_s']:.1f} s, "
        f"split {rows[1]['compile_and_first_step_s']:.1f} s)"
    )


if __name__ == "__main__":
    main()
