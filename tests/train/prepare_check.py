"""One process of a two-process job that prepares a collection (`train.distributed.prepare_once`).

Usage: prepare_check.py PORT PROCESS_ID NUM_PROCESSES COLLECTION_DIR. Prints one JSON line: whether this
process found the prepared dataset already built (`reused`) and how many images it holds.
"""

from __future__ import annotations

import json
import sys

import jax

port, pid, nproc, coll_dir = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
jax.config.update("jax_cpu_collectives_implementation", "gloo")
from train.distributed import maybe_initialize  # noqa: E402

maybe_initialize(f"localhost:{port}", nproc, pid)

from data.collection import load_collection  # noqa: E402
from train.distributed import prepare_once  # noqa: E402

res = prepare_once(load_collection(coll_dir), max_side=64)
print(json.dumps({"process": pid, "reused": res.reused, "num_images": res.num_images, "path": str(res.path)}))
