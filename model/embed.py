"""Signatures for every image of a collection with a given network, and the one jitted forward that
computes signatures from pixels (`make_embed_fn`), which training uses too.

Pipeline: a small thread pool decodes and squash-resizes images on the host (uint8, `data.preprocess`),
while the device runs the previous batch (JAX dispatch is asynchronous); batches are padded to a fixed
size so the jitted function compiles once; normalisation to ImageNet mean/std happens on the device
inside the jitted function (uint8 transfers are 4x smaller than float32).

An image that cannot be read is reported on stderr with its uid and path, left out of the vectors and
listed in `skipped`: it is never replaced by a zero vector.
"""

from __future__ import annotations

import os
import sys
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from functools import cache
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh
from jax.sharding import PartitionSpec as P
from tqdm import tqdm

from data.collection import Collection, load_collection
from data.image import ImageReadError, note_lines
from data.preprocess import load_resized, normalize
from data.signatures import Signatures
from model.inputs import check_resolution
from model.registry import get_spec
from model.signature import SignatureNet, set_mode


@cache
def make_embed_fn(graphdef: nnx.GraphDef, mesh: Mesh | None = None):
    """The one jitted inference forward: fn(params, rest, uint8 images (B, R, R, 3)) -> (B, D) float32 signatures.

    `graphdef, params, rest = nnx.split(model, nnx.Param, ...)` (the split training uses). The network
    runs in inference mode whatever mode `graphdef` was split in; normalisation happens on the device.
    One function per network structure and mesh (cached), compiled once per batch shape, so embedding
    again with new weights (every training epoch) does not recompile.

    Without `mesh` (`model embed`) the default device embeds each batch. With a one-axis mesh (training's
    per-epoch embedding over the local devices) the batch is split over that axis, B a multiple of its
    size, and parameters are replicated; the same forward then runs on each device's slice inside
    `shard_map`, because XLA's partitioner, given plain `jit` with sharded inputs, all-gathers the whole
    batch around grouped convolutions (openxla/xla#47945; see `train.step`). Either way a signature
    depends only on its image.
    """

    def forward(params, rest, images):
        net = nnx.merge(graphdef, params, rest)
        set_mode(net, training=False)
        return net(normalize(images, xp=jnp))

    if mesh is None:
        return jax.jit(forward)
    (axis,) = mesh.axis_names
    return jax.jit(jax.shard_map(forward, mesh=mesh, in_specs=(P(), P(), P(axis)), out_specs=P(axis)))


def _decode_workers() -> int:
    return max(1, min(4, (os.cpu_count() or 2)))


_Loaded = tuple[np.ndarray, tuple[str, ...]] | ImageReadError


def _load(path: Path, resolution: int) -> _Loaded:
    """(R, R, 3) uint8 pixels and what the decoder corrected, or the error of an unreadable image."""
    try:
        dec = load_resized(path, resolution)
    except ImageReadError as e:
        return e
    return np.asarray(dec.image, dtype=np.uint8), dec.notes


def _decoded(paths: list[Path], resolution: int, prefetch: int) -> Iterator[_Loaded]:
    """Decoded images (or their errors) in order, decoding up to `prefetch` images ahead."""
    with ThreadPoolExecutor(max_workers=_decode_workers(), thread_name_prefix="decode") as pool:
        queue: deque[Future] = deque()
        it = iter(paths)
        for p in it:
            queue.append(pool.submit(_load, p, resolution))
            if len(queue) >= prefetch:
                break
        while queue:
            yield queue.popleft().result()
            nxt = next(it, None)
            if nxt is not None:
                queue.append(pool.submit(_load, nxt, resolution))


def _refuse_duplicate_uids(coll: Collection) -> None:
    seen: dict[str, int] = {}
    for rec in coll.images:
        if rec.uid in seen:
            raise ValueError(
                f"{coll.images_file}:{rec.line}: uid {rec.uid!r} already used on line {seen[rec.uid]}; "
                f"uids must be unique (run `python -m data check {coll.root}` to see every problem)."
            )
        seen[rec.uid] = rec.line


def embed_collection(
    collection_dir: str | Path | Collection,
    model: SignatureNet,
    *,
    resolution: int,
    batch_size: int = 32,
    progress: bool = True,
    quiet: bool = False,
) -> Signatures:
    """Signatures of the images of `collection_dir/images.csv`, in its order, unreadable ones skipped.

    A loaded `Collection` may be passed instead of its folder (training does: reading images.csv again
    repeated its reader's warnings). `quiet`: no stderr line per unreadable or corrected image, for a
    caller that has reported them already (training's prepared dataset); they are still skipped.
    """
    check_resolution(resolution)
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    coll = collection_dir if isinstance(collection_dir, Collection) else load_collection(collection_dir)
    _refuse_duplicate_uids(coll)
    records = coll.images
    paths = [coll.image_path(r) for r in records]
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    embed = make_embed_fn(graphdef)

    uids: list[str] = []
    skipped: list[str] = []
    noted: list[tuple[str, str, tuple[str, ...]]] = []  # (uid, file, what the decoder corrected)
    chunks: list[np.ndarray] = []
    pending: list[tuple[jax.Array, int]] = []  # dispatched batches not yet copied back
    batch = np.zeros((batch_size, resolution, resolution, 3), np.uint8)
    fill = 0

    def dispatch(n: int) -> None:
        pending.append((embed(params, rest, jnp.asarray(batch)), n))

    def collect(keep: int) -> None:
        while len(pending) > keep:
            out, n = pending.pop(0)
            chunks.append(np.asarray(out[:n], dtype=np.float32))

    bar = tqdm(total=len(records), desc=f"embed {model.arch}", unit="img", disable=not progress, file=sys.stderr)
    try:
        for rec, path, img in zip(records, paths, _decoded(paths, resolution, 2 * batch_size), strict=True):
            bar.update(1)
            if isinstance(img, ImageReadError):
                if not quiet:
                    print(f"skipped uid {rec.uid} ({path}): {img}", file=sys.stderr)
                skipped.append(rec.uid)
                continue
            img, notes = img
            if notes:
                noted.append((rec.uid, str(path), notes))
            batch[fill] = img
            uids.append(rec.uid)
            fill += 1
            if fill == batch_size:
                dispatch(fill)
                batch = np.zeros_like(batch)
                fill = 0
                collect(keep=1)  # the device works on the newest batch while the host decodes the next
        if fill:
            dispatch(fill)
        collect(keep=0)
    finally:
        bar.close()

    dim = get_spec(model.arch).signature_dim
    vectors = np.concatenate(chunks, axis=0) if chunks else np.zeros((0, dim), np.float32)
    if skipped and not quiet:
        print(f"{len(skipped)} of {len(records)} images could not be read and were left out.", file=sys.stderr)
    for line in [] if quiet else note_lines(noted, collection=coll.root):
        print(line, file=sys.stderr)
    meta = {
        "arch": model.arch,
        "pooling": model.pooling,
        "resolution": resolution,
        "dtype": jnp.dtype(model.dtype).name,
        "collection": str(Path(coll.root).absolute()),
    }
    return Signatures(uids=uids, vectors=vectors, skipped=skipped, meta=meta)
