"""Multi-process start-up: `jax.distributed.initialize()` when the job runs as several processes.

Launch modes:
- one process per node driving all its GPUs (the usual case): nothing to do on a single node;
- several nodes under SLURM (`srun` with one task per node): detected from SLURM_NTASKS > 1 and
  initialised from the SLURM environment (jax reads the coordinator address from it);
- explicit: `--coordinator HOST:PORT --num-processes N --process-id I` on every process.
Must run before anything queries the devices.

`prepare_once` is the one step of a run that several processes must not do at the same time.
"""

from __future__ import annotations

import jax
import numpy as np

from data.collection import Collection
from data.prepare import PrepareResult, prepare_collection
from model.distributed import maybe_initialize  # noqa: F401 - re-exported: train's entry point uses it


def is_main() -> bool:
    return jax.process_index() == 0


def prepare_once(collection: Collection, *, max_side: int) -> PrepareResult:
    """`data prepare` the collection once per job: process 0 builds (or reuses) the dataset, the others wait.

    Several processes preparing one shared folder at the same time would each build it and swap it into
    place under the others' feet. So process 0 prepares while the others wait at a collective (which is
    also how they learn whether it failed); then they call `prepare_collection` themselves, which on a
    shared filesystem finds process 0's dataset up to date and only opens it (on node-local copies of
    the collection, each node prepares its own, one after the other).
    """
    if jax.process_count() == 1:
        return prepare_collection(collection, max_side=max_side)
    from jax.experimental import multihost_utils

    from train.run_folder import RunError

    result, error = None, None
    if is_main():
        try:
            result = prepare_collection(collection, max_side=max_side)
        except Exception as e:  # noqa: BLE001 - re-raised below, after the others were told
            error = e
    failed = int(multihost_utils.broadcast_one_to_all(np.int32(error is not None)))
    if error is not None:
        raise error
    if failed:
        raise RunError(f"{collection.root}: process 0 could not prepare the collection; see its error.")
    return result if result is not None else prepare_collection(collection, max_side=max_side)
