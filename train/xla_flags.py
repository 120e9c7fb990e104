"""XLA flags that real training runs set (`python -m train`; benchmarks/gpu.sh sets the same).

Why each flag:
- `--xla_gpu_enable_latency_hiding_scheduler=true`: lets XLA schedule the gradient all-reduce (the psum
  of the sharded step) while the backward pass of earlier layers is still computing, instead of after
  it; it matters with several GPUs and costs nothing with one.
Nothing else is set: autotuning stays at XLA's default level (it picks the cuDNN convolution algorithms),
and flags that were not measured to help on this model are left out. The flags are read once, when
JAX creates its backends, so they must be in the environment before the first device query.
A flag the user already set in XLA_FLAGS (with any value) is left as the user set it.
"""

from __future__ import annotations

import os

TRAIN_FLAGS = ("--xla_gpu_enable_latency_hiding_scheduler=true",)


def with_train_flags(current: str | None) -> str:
    """XLA_FLAGS with the training flags added, unless the user already set them."""
    flags = (current or "").split()
    present = {f.split("=", 1)[0] for f in flags}
    flags += [f for f in TRAIN_FLAGS if f.split("=", 1)[0] not in present]
    return " ".join(flags)


def set_train_flags(environ=None) -> str:
    """Put the training flags into XLA_FLAGS (call before JAX touches a device); returns the new value."""
    env = os.environ if environ is None else environ
    env["XLA_FLAGS"] = with_train_flags(env.get("XLA_FLAGS"))
    return env["XLA_FLAGS"]
