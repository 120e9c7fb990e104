"""Signatures of many images of the prepared dataset with the current parameters, every epoch.

Used every epoch (validation retrieval + the next round of mining). Images come from the prepared
dataset at test-time preprocessing (squash-resize to R), and the forward is `model.embed.make_embed_fn`,
the one `python -m model embed` uses (ImageNet normalisation on the device), here split over the local
devices' mesh. Each process embeds every requested image on its own devices (multi-host: redundant
but simple; the training step is where the time goes).
"""

from __future__ import annotations

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from data.pipeline import PreparedSource, eval_dataset
from train.step import AXIS


def local_copy(tree, mesh: Mesh):
    """Replicated global arrays -> arrays replicated on this process's mesh (identity on one process)."""
    if jax.process_count() == 1:
        return tree
    sharding = NamedSharding(mesh, P())
    return jax.tree.map(lambda x: jax.device_put(np.asarray(x.addressable_shards[0].data), sharding), tree)


def embed_indices(
    embed_fn,
    params,
    rest,
    source: PreparedSource,
    indices: np.ndarray,
    *,
    resolution: int,
    batch_size: int,
    mesh: Mesh,
    workers: int = 0,
) -> np.ndarray:
    """(len(indices), D) float32 signatures, in the order of `indices` (collection indices).

    `embed_fn`: `make_embed_fn(graphdef, mesh)`; batches are rounded to a multiple of the mesh's devices.
    """
    ndev = mesh.devices.size
    batch_size = max(ndev, (batch_size // ndev) * ndev)
    out: list[np.ndarray] = []
    sharding = NamedSharding(mesh, P(AXIS))
    it = eval_dataset(source, indices, resolution=resolution, batch_size=batch_size, output="uint8", workers=workers)
    for batch in it:
        sig = embed_fn(params, rest, jax.device_put(batch["images"], sharding))
        out.append(np.asarray(sig)[batch["valid"]])
    if not out:
        return np.zeros((0, 0), np.float32)
    return np.concatenate(out).astype(np.float32)
