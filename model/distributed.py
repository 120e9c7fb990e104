"""Multi-process start-up shared by `python -m model embed` and `python -m train`: `jax.distributed.initialize()`
when the job runs as several processes (one per host, each driving all its local devices).

Launch modes:
- one process on one host: nothing to do;
- several hosts under SLURM (`srun` with one task per node): detected from SLURM_NTASKS > 1 and initialised
  from the SLURM environment (jax reads the coordinator address from it);
- explicit: `--coordinator HOST:PORT --num-processes N --process-id I` on every process.
Must run before anything queries the devices. It lives in model/ (not train/) so that `model embed` can use it
without depending on training.
"""

from __future__ import annotations

import os

import jax


def maybe_initialize(coordinator: str | None = None, num_processes: int | None = None,
                     process_id: int | None = None) -> bool:
    """Initialise jax.distributed if this looks like a multi-process launch; returns whether it did."""
    if coordinator or (num_processes and num_processes > 1):
        if not (coordinator and num_processes and process_id is not None):
            raise ValueError("multi-process launch needs all of --coordinator, --num-processes and --process-id")
        jax.distributed.initialize(coordinator_address=coordinator, num_processes=num_processes,
                                   process_id=process_id)
        return True
    if int(os.environ.get("SLURM_NTASKS", "1")) > 1 and "SLURM_JOB_ID" in os.environ:
        jax.distributed.initialize()
        return True
    return False
