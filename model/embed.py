"""Signatures for every image of a collection with a given network, and the one jitted forward that
computes signatures from pixels (`make_embed_fn`), which training uses too.

Pipeline: the collection's image files stream through `data.pipeline.file_dataset` (grain; `workers`
processes decode and squash-resize them to uint8 on the host) while the devices run the previous batch
(JAX dispatch is asynchronous). Each batch is split over every local device (`local_mesh`), parameters
replicated; batches have a fixed size so the jitted function compiles once, and normalisation to ImageNet
mean/std happens on the device (uint8 transfers are 4x smaller than float32). Memory: the batches in
flight and one chunk of signatures; the collection is never held.

Rows are computed in chunks of images.csv rows (`data.signatures.ChunkPlan`); each chunk is padded to
whole batches, so a chunk's signatures depend only on its images and the batch size, never on where a run
started. `embed_collection` keeps them in memory (training's export); `embed_to_store` (`model embed`)
writes each chunk atomically into `OUT.parts/` and merges them into the store once all exist, so a killed
run resumes at the first missing chunk. Under jax.distributed, process p of P computes the chunks
k % P == p: `embed_to_store` on a shared file system, process 0 merging once every process is done;
`embed_collection` exchanging the chunks with all-gathers, so that every process returns all signatures.

An image that cannot be read is reported on stderr with its uid and path, left out of the vectors and
listed in `skipped`: it is never replaced by a zero vector.
"""

from __future__ import annotations

import hashlib
import sys
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from functools import cache
from itertools import islice
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P
from tqdm import tqdm

from data.collection import Collection, ImageRecord, load_collection
from data.image import note_lines
from data.preprocess import normalize
from data.signatures import (
    Chunk,
    ChunkPlan,
    Signatures,
    StoreParts,
    assemble,
    lock_parts,
    store_dtype,
    unlock_parts,
)
from model.inputs import check_resolution
from model.registry import get_spec
from model.signature import SignatureNet, set_mode

AXIS = "data"  # the axis name of training's meshes too: `local_mesh()` then equals the mesh training embeds on, so
# `make_embed_fn` (cached per graphdef and mesh) compiles the forward once per run, not once per caller
CHUNK_IMAGES = 4096  # rows of images.csv per chunk: ~32 MB of float32 signatures at 2048-d


@cache
def make_embed_fn(graphdef: nnx.GraphDef, mesh: Mesh | None = None):
    """The one jitted inference forward: fn(params, rest, uint8 images (B, R, R, 3)) -> (B, D) float32 signatures.

    `graphdef, params, rest = nnx.split(model, nnx.Param, ...)` (the split training uses). The network
    runs in inference mode whatever mode `graphdef` was split in; normalisation happens on the device.
    One function per network structure and mesh (cached), compiled once per batch shape, so embedding
    again with new weights (every training epoch) does not recompile.

    Without `mesh` the default device embeds each batch. With a one-axis mesh (`local_mesh`: `model
    embed`, training's per-epoch embedding and export) the batch is split over that axis, B a multiple of
    its size, and parameters are replicated; the same forward then runs on each device's slice inside
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


@cache
def local_mesh() -> Mesh:
    """Every device of this process on one axis (under jax.distributed: this host's devices only)."""
    return Mesh(np.asarray(jax.local_devices()), (AXIS,))


@dataclass(frozen=True)
class Embedder:
    """A network placed on every local device: call it on a uint8 batch of `batch_size` images."""

    fn: object
    params: object
    rest: object
    sharding: NamedSharding
    batch_size: int  # a multiple of the local device count

    @classmethod
    def of(cls, model: SignatureNet, batch_size: int) -> Embedder:
        mesh = local_mesh()
        ndev = mesh.devices.size
        graphdef, params, rest = nnx.split(model, nnx.Param, ...)
        params, rest = jax.device_put((params, rest), NamedSharding(mesh, P()))
        return cls(make_embed_fn(graphdef, mesh), params, rest, NamedSharding(mesh, P(AXIS)),
                   -(-batch_size // ndev) * ndev)

    def __call__(self, images: np.ndarray) -> jax.Array:
        return self.fn(self.params, self.rest, jax.device_put(images, self.sharding))


def _refuse_duplicate_uids(coll: Collection) -> None:
    seen: dict[str, int] = {}
    for rec in coll.images:
        if rec.uid in seen:
            raise ValueError(
                f"{coll.images_file}:{rec.line}: uid {rec.uid!r} already used on line {seen[rec.uid]}; "
                f"uids must be unique (run `python -m data check {coll.root}` to see every problem)."
            )
        seen[rec.uid] = rec.line


# --- streaming: rows -> batches on the devices -> chunks ------------------------------------------------------


def chunk_rows(plan: ChunkPlan, chunks: Iterable[int], batch_size: int) -> np.ndarray:
    """The rows to read for `chunks`, in order, each chunk padded with -1 to whole batches (so that a chunk is
    computed in the same batches whether or not a run started with it)."""
    parts = []
    for k in chunks:
        a, b = plan.span(k)
        parts += [np.arange(a, b), np.full((-(b - a)) % batch_size, -1)]
    return np.concatenate(parts).astype(np.int64) if parts else np.zeros(0, np.int64)


def run_ahead(batches: Iterable[dict], forward) -> Iterator[tuple[dict, jax.Array]]:
    """Each batch with `forward(batch["images"])`, one batch behind: the devices compute batch i (JAX dispatch is
    asynchronous) while the pipeline decodes batch i + 1."""
    pending: tuple[dict, jax.Array] | None = None
    for batch in batches:
        out = forward(batch["images"])
        if pending is not None:
            yield pending
        pending = (batch, out)
    if pending is not None:
        yield pending


def _elements(batches: Iterator[dict], embed: Embedder) -> Iterator[tuple[int, str, tuple, np.ndarray]]:
    """(row, error, notes, signature) per element in order; the devices embed batch i while batch i+1 decodes."""
    for batch, out in run_ahead(batches, embed):
        yield from _unbatch(batch, out)


def _unbatch(batch: dict, out: jax.Array) -> Iterator[tuple[int, str, tuple, np.ndarray]]:
    sig = np.asarray(out, dtype=np.float32)
    for j, row in enumerate(batch["row"]):
        yield int(row), batch["error"][j], tuple(batch["notes"][j]), sig[j]


@dataclass
class _Reporter:
    """Progress (images/s) and the stderr lines of unreadable images, as they are met."""

    records: list[ImageRecord]
    paths: list[str]
    bar: tqdm
    quiet: bool
    read: int = 0

    def image(self, row: int, error: str) -> None:
        self.bar.update(1)
        self.read += 1
        if error and not self.quiet:
            self.bar.write(f"skipped uid {self.records[row].uid} ({self.paths[row]}): {error}", file=sys.stderr)


def _collect(elements: Iterable[tuple[int, str, tuple, np.ndarray]], rep: _Reporter, dim: int) -> Chunk:
    uids, vectors, skipped, notes, reasons = [], [], [], [], []
    for row, error, noted, vec in elements:
        if row < 0:
            continue
        rep.image(row, error)
        uid = rep.records[row].uid
        if error:
            skipped.append(uid)
            reasons.append((rep.paths[row], error))
            continue
        uids.append(uid)
        vectors.append(vec)
        if noted:
            notes.append((uid, rep.paths[row], list(noted)))
    arr = np.stack(vectors) if vectors else np.zeros((0, dim), np.float32)
    return Chunk(uids, arr, skipped, notes, reasons)


def embed_chunks(coll: Collection, embed: Embedder, plan: ChunkPlan, chunks: list[int], *, resolution: int,
                 dim: int, rep: _Reporter, workers: int) -> Iterator[tuple[int, Chunk]]:
    """(k, chunk k) for `chunks` in order, streamed through one input pipeline."""
    from data.pipeline import file_dataset  # grain: only where files are read (benchmarks import this module)

    rows = chunk_rows(plan, chunks, embed.batch_size)
    batches = file_dataset(rep.paths, rows, resolution=resolution, batch_size=embed.batch_size, workers=workers)
    elements = _elements(batches, embed)
    for k in chunks:
        a, b = plan.span(k)
        yield k, _collect(islice(elements, (b - a) + (-(b - a)) % embed.batch_size), rep, dim)
    for _ in elements:  # run the pipeline to its end, so that its worker processes stop and clean up
        pass


# --- what callers get ---------------------------------------------------------------------------------------


def _prepare(collection_dir, model: SignatureNet, resolution: int, batch_size: int):
    check_resolution(resolution)
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    coll = collection_dir if isinstance(collection_dir, Collection) else load_collection(collection_dir)
    _refuse_duplicate_uids(coll)
    paths = [str(coll.image_path(r)) for r in coll.images]
    return coll, paths, Embedder.of(model, batch_size), get_spec(model.arch).signature_dim


def _meta(model: SignatureNet, resolution: int, coll: Collection) -> dict:
    return {"arch": model.arch, "pooling": model.pooling, "resolution": resolution,
            "dtype": jnp.dtype(model.dtype).name, "collection": str(Path(coll.root).absolute())}


def _bar(total: int, arch: str, progress: bool) -> tqdm:
    return tqdm(total=total, desc=f"embed {arch}", unit="img", disable=not progress, file=sys.stderr)


def _summary(coll: Collection, chunks: list[Chunk], total: int, quiet: bool) -> None:
    """The closing stderr lines: how many images were left out, what the decoder corrected."""
    if quiet:
        return
    skipped = sum(len(c.skipped) for c in chunks)
    if skipped:
        print(f"{skipped} of {total} images could not be read and were left out.", file=sys.stderr)
    for line in note_lines([n for c in chunks for n in c.notes], collection=coll.root):
        print(line, file=sys.stderr)


def _rate_line(read: int, seconds: float, embed: Embedder) -> str:
    rate = read / seconds if seconds > 0 else float("nan")
    ndev = embed.sharding.mesh.devices.size
    return f"{read} images in {seconds:.1f} s ({rate:.1f} images/s on {ndev} device{'s' * (ndev > 1)})"


def embed_collection(
    collection_dir: str | Path | Collection,
    model: SignatureNet,
    *,
    resolution: int,
    batch_size: int = 32,
    progress: bool = True,
    quiet: bool = False,
    workers: int = 0,
) -> Signatures:
    """Signatures of the images of `collection_dir/images.csv`, in its order, unreadable ones skipped, in memory.

    A loaded `Collection` may be passed instead of its folder (training does: reading images.csv again
    repeated its reader's warnings). `quiet`: no stderr line per unreadable or corrected image, for a
    caller that has reported them already (training's prepared dataset); they are still skipped.
    `workers`: decoding processes (0: threads of this process).

    Under jax.distributed every process must call it (training's export does): process p of P computes the
    chunks k % P == p and every process returns the whole collection's signatures, the same bytes as one
    process computes (`_exchange`). Without a shared file system: nothing is written.
    """
    coll, paths, embed, dim = _prepare(collection_dir, model, resolution, batch_size)
    n = len(coll.images)
    process, processes = _process()
    plan = memory_plan(n, embed.batch_size, processes)
    mine = plan.mine(process, processes)
    with _bar(sum(b - a for a, b in map(plan.span, mine)), model.arch, progress) as bar:
        rep = _Reporter(coll.images, paths, bar, quiet)
        local = dict(embed_chunks(coll, embed, plan, mine, resolution=resolution, dim=dim, rep=rep,
                                  workers=workers))
    chunks = _exchange(local, plan, coll.images, dim) if processes > 1 else [local[k] for k in range(plan.count)]
    _summary(coll, chunks, n, quiet)
    return assemble(chunks, dim, _meta(model, resolution, coll))


def memory_plan(rows: int, batch_size: int, processes: int) -> ChunkPlan:
    """The in-memory embedding's chunks: whole batches each, so that every batch holds the same images whatever
    the process count (a signature then cannot depend on it), at most CHUNK_IMAGES rows, and small enough
    that every process gets a share."""
    per_process = -(-rows // max(1, processes))
    batches = max(1, min(CHUNK_IMAGES // batch_size, -(-per_process // batch_size)))
    return ChunkPlan(rows, batches * batch_size)


def _exchange(local: dict[int, Chunk], plan: ChunkPlan, records: list[ImageRecord], dim: int) -> list[Chunk]:
    """Every chunk, in order, on every process, from each process's own (`local`): one all-gather per round of
    P chunks (chunk r * P + p from process p) of fixed shapes, the (chunk_rows, dim) float32 vectors zero-padded
    and a (chunk_rows,) read mask; uids are rebuilt from the rows, so no strings travel. Memory on the devices:
    P chunks at a time. The decoder's notes and reasons stay with the process that met them."""
    from jax.experimental import multihost_utils

    process, processes = _process()
    chunks = []
    for first in range(0, plan.count, processes):
        vectors, read = _padded(local.get(first + process), plan, first + process, records, dim)
        all_vectors, all_read = multihost_utils.process_allgather((vectors, read))
        for q, k in enumerate(range(first, min(first + processes, plan.count))):
            chunks.append(local.get(k) or _unpadded(plan, k, np.asarray(all_vectors[q]), np.asarray(all_read[q]),
                                                    records))
    return chunks


def _padded(chunk: Chunk | None, plan: ChunkPlan, k: int, records: list[ImageRecord],
            dim: int) -> tuple[np.ndarray, np.ndarray]:
    """Chunk k as fixed-shape arrays: vectors at their rows' places, read = 1 where a row was read."""
    vectors, read = np.zeros((plan.chunk_rows, dim), np.float32), np.zeros(plan.chunk_rows, np.int32)
    if chunk is not None:
        a, b = plan.span(k)
        skipped = set(chunk.skipped)
        read[: b - a] = [records[row].uid not in skipped for row in range(a, b)]
        vectors[np.flatnonzero(read)] = chunk.vectors
    return vectors, read


def _unpadded(plan: ChunkPlan, k: int, vectors: np.ndarray, read: np.ndarray, records: list[ImageRecord]) -> Chunk:
    a, b = plan.span(k)
    mask = read[: b - a].astype(bool)
    return Chunk(uids=[records[a + i].uid for i in np.flatnonzero(mask)], vectors=vectors[: b - a][mask],
                 skipped=[records[a + i].uid for i in np.flatnonzero(~mask)], notes=[])


@dataclass(frozen=True)
class StoreResult:
    """What `embed_to_store` wrote (process 0) or computed (other processes)."""

    count: int
    dim: int
    skipped: int
    resumed: int  # chunks found done on disk
    computed: int  # chunks this process computed now
    written: bool  # this process wrote the store (process 0)


def parameters_sha256(model: SignatureNet) -> str:
    """A hash of every array of the network's state: what a store's chunks and a search index's vectors depend on."""
    h = hashlib.sha256()
    for leaf in jax.tree.leaves(nnx.state(model)):
        h.update(np.ascontiguousarray(np.asarray(leaf)).tobytes())
    return h.hexdigest()


def fingerprint(model: SignatureNet, coll: Collection, meta: dict, dtype: str) -> dict:
    """What the chunks of an unfinished store depend on: the network's parameters (a hash of every array),
    images.csv's bytes, the preprocessing, the stored dtype. A resume with any of them changed is refused."""
    csv = hashlib.sha256(Path(coll.images_file).read_bytes()).hexdigest()
    keep = ("arch", "pooling", "resolution", "dtype", "collection")
    return {**{k: meta[k] for k in keep}, "parameters_sha256": parameters_sha256(model), "images_csv_sha256": csv,
            "store_dtype": store_dtype(dtype).name}


def _process() -> tuple[int, int]:
    """(this process's index, the process count) under jax.distributed; (0, 1) otherwise."""
    return jax.process_index(), jax.process_count()


def _sync(name: str) -> None:
    if _process()[1] > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


def _all_ok(ok: bool) -> bool:
    """Process 0's `ok`, told to every process (single process: `ok`)."""
    if _process()[1] == 1:
        return ok
    from jax.experimental import multihost_utils

    return bool(int(multihost_utils.broadcast_one_to_all(np.int32(ok))))


def _start_parts(parts: StoreParts, out, fp: dict, plan: ChunkPlan, dim: int, lock: list) -> ChunkPlan:
    """Process 0 locks the folder (`lock` receives the lock) and creates (or checks) the manifest before any
    other process looks at the folder; its refusal (a folder of other settings, or in use) stops every process."""
    if _process()[0] == 0:
        try:
            lock.append(lock_parts(parts, out))
            plan = parts.start(fp, plan, dim)
        except ValueError:
            _all_ok(False)
            raise
    if not _all_ok(True):
        raise ValueError(f"{parts.folder}: process 0 refused the unfinished embedding there; see its error.")
    return parts.start(fp, plan, dim) if _process()[0] != 0 else plan


def _earlier_skips(heads: list[Chunk], computed: set[int]) -> None:
    """The unreadable images of chunks computed by an earlier run or another process: reported here too."""
    for k, head in enumerate(heads):
        if k in computed:
            continue
        for uid, (path, why) in zip(head.skipped, head.reasons, strict=True):
            print(f"skipped uid {uid} ({path}): {why}", file=sys.stderr)


def embed_to_store(
    collection_dir: str | Path | Collection,
    model: SignatureNet,
    out: str | Path,
    *,
    resolution: int,
    batch_size: int = 32,
    workers: int = 0,
    dtype: str = "float32",
    chunk_images: int = CHUNK_IMAGES,
    meta: dict | None = None,
    progress: bool = True,
) -> StoreResult:
    """`python -m model embed`: signatures of the collection written to the store `out`, chunk by chunk in
    `out.parts/` (resumable; see the module docstring); memory O(batch + chunk)."""
    coll, paths, embed, dim = _prepare(collection_dir, model, resolution, batch_size)
    store_dtype(dtype)
    meta = {**_meta(model, resolution, coll), **(meta or {})}
    n = len(coll.images)
    parts, lock = StoreParts.beside(out), []
    try:
        fp = fingerprint(model, coll, meta, dtype)
        plan = _start_parts(parts, out, fp, ChunkPlan(n, max(1, chunk_images)), dim, lock)
        done = parts.done()
        mine = [k for k in plan.mine(*_process()) if k not in done]
        if done:
            print(f"resuming: {len(done & set(range(plan.count)))} of {plan.count} chunks already done in "
                  f"{parts.folder}; computing the other {len(mine)}", file=sys.stderr)
        todo = sum(b - a for a, b in map(plan.span, mine))
        started = time.perf_counter()
        with _bar(todo, model.arch, progress) as bar:
            rep = _Reporter(coll.images, paths, bar, quiet=False)
            for k, chunk in embed_chunks(coll, embed, plan, mine, resolution=resolution, dim=dim, rep=rep,
                                         workers=workers):
                parts.write(k, chunk, dtype)
        if rep.read:
            print(_rate_line(rep.read, time.perf_counter() - started, embed), file=sys.stderr)
        _sync("embed: chunks")
        return _merge(parts, plan, out, meta, dtype, dim, coll, set(mine), len(done))
    finally:
        unlock_parts(lock[0] if lock else None)


MERGE_WAIT_S = 120.0  # how long process 0 waits for chunks of other hosts to show in a network file system


def _missing_chunks(parts: StoreParts, plan: ChunkPlan) -> list[int]:
    """Chunks not on disk. With several processes, another host's chunk may show in a network file system's
    listing only after its attribute cache expires (NFS: up to a minute): process 0 looks again for a while."""
    deadline = time.monotonic() + (MERGE_WAIT_S if _process()[1] > 1 else 0.0)
    while True:
        missing = sorted(set(range(plan.count)) - parts.done())
        if not missing or time.monotonic() >= deadline:
            return missing
        time.sleep(1.0)


def _merge(parts: StoreParts, plan: ChunkPlan, out, meta: dict, dtype: str, dim: int, coll: Collection,
           computed: set[int], resumed: int) -> StoreResult:
    """Process 0 merges the chunks into the store and removes the folder; every process learns whether it did."""
    error, heads = None, []
    if _process()[0] == 0:
        missing = _missing_chunks(parts, plan)
        try:
            if missing:
                raise ValueError(f"{parts.folder}: chunks {missing[:5]} are missing (another process failed?); run "
                                 f"the command again to compute them.")
            heads = parts.merge(out, plan.count, meta, dtype, dim)
            parts.remove()
        except ValueError as e:
            error = e
    if not _all_ok(error is None):
        raise error or ValueError(f"{out}: process 0 could not merge the chunks in {parts.folder}; see its error.")
    _earlier_skips(heads, computed)
    _summary(coll, heads, len(coll.images), quiet=False)
    return StoreResult(sum(len(h.uids) for h in heads), dim, sum(len(h.skipped) for h in heads), resumed,
                       len(computed), _process()[0] == 0)
