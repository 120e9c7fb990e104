"""`python -m model index`: build (or extend) a search index of a collection, streaming, resumable.

One forward per batch gives both kinds of vector: the backbone's last feature map is pooled whole (the
global signature, exactly what `model embed` computes) and over the region grid (`model.regions`), each
row L2-normalised, then, when the index has one, PCA-whitened and normalised again, all on the device.
Images stream through `data.pipeline.file_dataset` (decoded in worker processes, squash-resized on the
host, uint8 to the device), the batch is split over every local device, and each chunk of images becomes
one part of the index (`model.index`), written whole. Memory: the batches in flight and one chunk.

Appending and resuming are the same thing: the images already in the index are left out, the others are
indexed, so a second run on a grown collection adds its new images and a run killed halfway continues
where it stopped (at most the chunk it was writing is computed again). Settings that would make old and
new vectors incomparable (another network or weights, resolution, pooling, region scales) are refused.

PCA-whitening (`pca_dim`): learned on a sample of the collection's vectors (global and regional, from
`pca_images` images drawn with `seed`) with scikit-learn's PCA(whiten=True) before the first part is
written, stored in the index and applied to every vector, the queries' included. Whitening learned on the
collection itself is the usual recipe of instance retrieval (e.g. Radenovic, Tolias and Chum, "Fine-tuning
CNN image retrieval with no human annotation", TPAMI 2018, which learns it on its training data); it
also shrinks the index (2048 -> 512 dimensions: 4x smaller, 4x faster to search).
"""

from __future__ import annotations

import shutil
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
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

from data.atomic import lock_folder, unlock_folder
from data.collection import Collection, load_collection
from data.image import note_lines
from data.preprocess import normalize
from data.signatures import ChunkPlan
from model.embed import AXIS, chunk_rows, local_mesh, parameters_sha256, run_ahead
from model.index import (
    FORMAT,
    VERSION,
    IndexError_,
    Pca,
    SearchIndex,
    append_part,
    remove_unlisted_parts,
    write_manifest,
    write_pca,
)
from model.inputs import check_resolution
from model.regions import DEFAULT_SCALES, check_scales, pool_regions, region_grid, region_masks
from model.signature import SignatureNet, l2_normalize, set_mode

CHUNK_IMAGES = 4096  # images per part
DEFAULT_PCA = 256  # `model index`'s default: on the demo, 128-256 gave the best crop and whole-image retrieval


@dataclass(frozen=True)
class IndexSettings:
    """What `model index` is asked for (the CLI's options)."""

    resolution: int
    scales: tuple[int, ...] = DEFAULT_SCALES
    pca_dim: int | None = None  # None: vectors kept at the network's width
    pca_auto: bool = False  # pca_dim is the default, not asked for: fewer dimensions for a small collection
    pca_images: int = 2000  # images whose vectors the PCA is learned on
    batch_size: int = 32
    workers: int = 0
    chunk_images: int = CHUNK_IMAGES
    seed: int = 0  # draws the PCA's sample
    progress: bool = True


def _gem_p(net: SignatureNet):
    if net.pooling != "gem":
        return None
    pool = net.pool
    return pool.p[...] if pool.learnable else pool.p


def feature_shape(net: SignatureNet, resolution: int) -> tuple[int, int]:
    """(side, channels) of the backbone's last feature map for R x R inputs (traced, nothing computed)."""
    graphdef, state = nnx.split(net)

    def fmap(state, x):
        return nnx.merge(graphdef, state).backbone(x)

    shape = jax.eval_shape(fmap, state, jax.ShapeDtypeStruct((1, resolution, resolution, 3), jnp.float32)).shape
    if shape[1] != shape[2]:
        raise ValueError(f"the feature map of {net.arch} at {resolution} px is not square: {shape}")
    return int(shape[1]), int(shape[3])


@cache
def make_index_fn(graphdef: nnx.GraphDef, mesh: Mesh, scales: tuple[int, ...], whiten: bool):
    """fn(params, rest, pca_mean, pca_projection, uint8 images (B, R, R, 3)) -> (B, 1 + regions, D) float32:
    row 0 the global signature, rows 1.. the regions', each a unit vector (whitened when `whiten`)."""

    def forward(params, rest, mean, projection, images):
        net = nnx.merge(graphdef, params, rest)
        set_mode(net, training=False)
        fmap = net.backbone(normalize(images, xp=jnp))
        masks = jnp.asarray(region_masks(fmap.shape[1], scales))
        vectors = jnp.concatenate([net.pool(fmap)[:, None, :], pool_regions(fmap, masks, gem_p=_gem_p(net))], 1)
        vectors = l2_normalize(vectors)
        if whiten:
            vectors = l2_normalize((vectors - mean) @ projection)
        return vectors

    return jax.jit(jax.shard_map(forward, mesh=mesh, in_specs=(P(), P(), P(), P(), P(AXIS)), out_specs=P(AXIS)))


@dataclass(frozen=True)
class RegionEmbedder:
    """The index's forward placed on every local device: call it on a uint8 batch of `batch_size` images."""

    fn: object
    args: tuple  # params, rest, PCA mean, PCA projection (replicated)
    sharding: NamedSharding
    batch_size: int

    @classmethod
    def of(cls, net: SignatureNet, scales: tuple[int, ...], batch_size: int, pca: Pca | None) -> RegionEmbedder:
        mesh = local_mesh()
        ndev = mesh.devices.size
        graphdef, params, rest = nnx.split(net, nnx.Param, ...)
        mean, proj = (pca.mean, pca.projection) if pca is not None else (np.zeros(1, np.float32),) * 2
        args = jax.device_put((params, rest, mean, proj), NamedSharding(mesh, P()))
        return cls(make_index_fn(graphdef, mesh, scales, pca is not None), args, NamedSharding(mesh, P(AXIS)),
                   -(-batch_size // ndev) * ndev)

    def __call__(self, images: np.ndarray) -> jax.Array:
        return self.fn(*self.args, jax.device_put(images, self.sharding))


# --- streaming -------------------------------------------------------------------------------------------------


@dataclass
class _Rows:
    """What one pass over some images.csv rows produced, in row order."""

    rows: list[int]
    vectors: list[np.ndarray]  # (1 + R, D) each
    sizes: list[tuple[int, int]]


def _stream(paths: list[str], rows: np.ndarray, embed: RegionEmbedder, resolution: int, workers: int,
            report) -> Iterator[tuple[int, np.ndarray | None, tuple[int, int]]]:
    """(row, vectors or None when unreadable, size) per image of `rows` (padded with -1 to whole batches; the
    padding yields nothing), in order, each also told to `report`. The devices compute batch i while batch
    i + 1 decodes."""
    from data.pipeline import file_dataset  # grain only where files are read

    batches = file_dataset(paths, rows, resolution=resolution, batch_size=embed.batch_size, workers=workers)
    for batch, out in run_ahead(batches, embed):
        yield from _unbatch(batch, out, report)


def _unbatch(batch: dict, out: jax.Array, report) -> Iterator[tuple[int, np.ndarray | None, tuple[int, int]]]:
    vectors = np.asarray(out, np.float32)
    for j, row in enumerate(batch["row"]):
        if row < 0:
            continue
        report.image(int(row), batch["error"][j], batch["notes"][j])
        ok = not batch["error"][j]
        yield int(row), (vectors[j] if ok else None), tuple(int(v) for v in batch["size"][j])


@dataclass
class _Report:
    """Progress (images/s), the stderr line of each unreadable image, the decoder's notes for the summary."""

    coll: Collection
    paths: list[str]
    bar: tqdm
    quiet: bool = False
    skipped: int = 0
    read: int = 0
    notes: list = field(default_factory=list)  # (uid, file, what the decoder corrected)

    def image(self, row: int, error: str, notes) -> None:
        self.bar.update(1)
        self.read += 1
        uid = self.coll.images[row].uid
        if error:
            self.skipped += 1
            if not self.quiet:
                self.bar.write(f"skipped uid {uid} ({self.paths[row]}): {error}", file=sys.stderr)
        elif notes:
            self.notes.append((uid, self.paths[row], list(notes)))


# --- the index's settings --------------------------------------------------------------------------------------


_MUST_AGREE = ("arch", "pooling", "resolution", "scales", "parameters_sha256")


def new_manifest(net: SignatureNet, settings: IndexSettings, side: int, raw_dim: int, weights: dict) -> dict:
    return {
        "format": FORMAT, "version": VERSION, "arch": net.arch, "pooling": net.pooling,
        "resolution": settings.resolution, "scales": list(settings.scales), "feature_side": side,
        "grid": region_grid(side, settings.scales).round(6).tolist(), "raw_dim": raw_dim,
        "dim": settings.pca_dim or raw_dim, "dtype": "float16", "compute_dtype": jnp.dtype(net.dtype).name,
        "pca": None, "weights": weights,
        "parameters_sha256": parameters_sha256(net), "parts": [],
    }


def check_compatible(index: SearchIndex, fresh: dict, settings: IndexSettings) -> None:
    """Refuse to append vectors that could not be compared with the ones already indexed."""
    old = index.manifest
    diffs = [f"{k}: index {old.get(k)!r}, now {fresh.get(k)!r}" for k in _MUST_AGREE if old.get(k) != fresh.get(k)]
    if settings.pca_dim is not None and not settings.pca_auto and settings.pca_dim != old["dim"]:
        diffs.append(f"dimensions: index {old['dim']}, now --pca {settings.pca_dim}")
    if old.get("compute_dtype", "float32") != fresh["compute_dtype"]:
        print(f"warning: {index.folder} was computed in {old.get('compute_dtype', 'float32')}, this run computes in "
              f"{fresh['compute_dtype']}: the vectors differ by rounding only, so they are added.", file=sys.stderr)
    if diffs:
        what = "; ".join(d if not d.startswith("parameters") else "the network's weights differ" for d in diffs)
        raise IndexError_(f"{index.folder}: was built with other settings ({what}); vectors of both could not be "
                          f"compared. Pass the index's settings, or --out a new folder.")


def _lock(folder: Path) -> int | None:
    """An exclusive flock on the index folder for this run (two writers would write the same part names)."""
    return lock_folder(folder, lambda: IndexError_(
        f"{folder}: another `model index` is writing this index right now; wait for it to finish."))


# --- PCA ---------------------------------------------------------------------------------------------------


def fit_pca(vectors: np.ndarray, dim: int, seed: int) -> Pca:
    """PCA-whitening of unit rows to `dim` dimensions (scikit-learn's PCA with whiten=True)."""
    from sklearn.decomposition import PCA

    n, raw = vectors.shape
    if dim > min(n, raw):
        raise ValueError(f"--pca {dim}: at most min(vectors, dimensions) = min({n}, {raw}) = {min(n, raw)} "
                         f"components can be learned from this sample; pass a smaller --pca or more --pca-images.")
    pca = PCA(n_components=dim, whiten=True, random_state=seed).fit(vectors)
    projection = (pca.components_.T / np.sqrt(np.maximum(pca.explained_variance_, 1e-12))).astype(np.float32)
    return Pca(pca.mean_.astype(np.float32), projection)


def _pca_dim(settings: IndexSettings, vectors: int, raw_dim: int) -> int:
    """The dimensions asked for; by default at most the network's width and a quarter of the sample's vectors
    (whitening divides by each direction's spread: directions seen in too few vectors would be noise)."""
    if not settings.pca_auto:
        return settings.pca_dim
    dim = max(2, min(settings.pca_dim, raw_dim, vectors // 4))
    if dim < settings.pca_dim:
        print(f"note: PCA-whitening to {dim} dimensions, not {settings.pca_dim}: the sample holds {vectors} vectors "
              f"(pass --pca D to choose, --pca 0 for none)", file=sys.stderr)
    return dim


def _sample_vectors(coll, paths, rows: np.ndarray, net: SignatureNet, settings: IndexSettings) -> np.ndarray:
    embed = RegionEmbedder.of(net, settings.scales, settings.batch_size, None)
    padded = np.concatenate([rows, np.full((-len(rows)) % embed.batch_size, -1)]).astype(np.int64)
    with _bar(len(rows), "learn PCA on", settings.progress) as bar:
        rep = _Report(coll, paths, bar, quiet=True)  # the indexing pass reports unreadable images
        out = [v for _, v, _ in _stream(paths, padded, embed, settings.resolution, settings.workers, rep)
               if v is not None]
    if not out:
        raise ValueError("no image of the PCA's sample could be read; see the lines above.")
    return np.concatenate(out, 0)


def _bar(total: int, what: str, progress: bool) -> tqdm:
    return tqdm(total=total, desc=what, unit="img", disable=not progress, file=sys.stderr)


# --- the command -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class IndexResult:
    added: int
    skipped: int
    total: int  # images in the index now
    already: int  # images of the collection found indexed
    parts: int  # parts written now


def build_index(collection_dir: str | Path | Collection, net: SignatureNet, out: str | Path,
                settings: IndexSettings, *, weights: dict) -> IndexResult:
    """Index every image of the collection not yet in `out` (creating it when absent); see the module docstring."""
    check_resolution(settings.resolution)
    check_scales(settings.scales)
    coll = collection_dir if isinstance(collection_dir, Collection) else load_collection(collection_dir)
    out = Path(out)
    _check_out(out)
    side, raw_dim = feature_shape(net, settings.resolution)
    if side < 4:
        print(f"warning: at {settings.resolution} px the network's last feature map is {side} x {side} cells, so the "
              f"regions are {'the whole picture' if side == 1 else 'coarse'} and a detail is hardly told apart; "
              f"index at --resolution {settings.resolution * 4 // side} or more for search by detail.", file=sys.stderr)
    fresh = new_manifest(net, settings, side, raw_dim, weights)
    created = not out.exists()
    fd = _lock(out)
    try:
        return _build(coll, net, out, settings, fresh)
    except BaseException:
        if created and not (out / "manifest.json").exists():  # a run that failed before anything was indexed
            shutil.rmtree(out, ignore_errors=True)
        raise
    finally:
        unlock_folder(fd)


def _check_out(out: Path) -> None:
    """--out is a new folder, an index, or what a killed first run left; never another folder of the user's."""
    if out.exists() and not out.is_dir():
        raise IndexError_(f"{out}: is a file; --out names the index's folder.")
    if not out.is_dir() or (out / "manifest.json").exists():
        return
    others = sorted(p.name for p in out.iterdir() if p.name not in ("parts", "pca.npz") and not p.name.startswith("."))
    if others:
        raise IndexError_(f"{out}: holds other files ({', '.join(others[:3])}{', ...' if len(others) > 3 else ''}) and "
                          f"is not a search index; give --out a new folder.")


def _open_or_start(out: Path, fresh: dict, settings: IndexSettings, coll, paths, net) -> SearchIndex:
    if (out / "manifest.json").exists():
        index = SearchIndex.open(out)
        if index.parts:  # an index with nothing in it yet (killed while learning its PCA) starts over
            check_compatible(index, fresh, settings)
            remove_unlisted_parts(out, index.manifest)
            return index
    remove_unlisted_parts(out, {"parts": []})
    manifest = dict(fresh)
    pca = None
    if settings.pca_dim is not None:
        rng = np.random.default_rng(settings.seed)
        n = len(coll.images)
        rows = np.sort(rng.choice(n, size=min(n, settings.pca_images), replace=False))
        sample = _sample_vectors(coll, paths, rows, net, settings)
        pca = fit_pca(sample, _pca_dim(settings, len(sample), fresh["raw_dim"]), settings.seed)
        write_pca(out, pca)
        manifest["dim"] = pca.dim
        manifest["pca"] = {"file": "pca.npz", "dim": pca.dim, "vectors": int(len(sample)),
                           "images": int(len(sample)) // (1 + len(fresh["grid"])), "seed": settings.seed}
    write_manifest(out, manifest)
    return SearchIndex(out, manifest, pca)


def _build(coll: Collection, net: SignatureNet, out: Path, settings: IndexSettings, fresh: dict) -> IndexResult:
    paths = [str(coll.image_path(r)) for r in coll.images]
    index = _reattach(out, _open_or_start(out, fresh, settings, coll, paths, net), coll)
    indexed = set(index.uids)
    seen: set[str] = set()
    todo = []
    for row, rec in enumerate(coll.images):
        if rec.uid not in indexed and rec.uid not in seen:
            todo.append(row)
        seen.add(rec.uid)
    already = sum(1 for u in seen if u in indexed)
    if already:
        print(f"{already} images of the collection are indexed already; indexing the other {len(todo)}",
              file=sys.stderr)
        _warn_other_collections(index, seen & indexed, coll)
    embed = RegionEmbedder.of(net, tuple(index.manifest["scales"]), settings.batch_size, index.pca)
    manifest, parts = index.manifest, 0
    plan = ChunkPlan(len(todo), max(1, settings.chunk_images))
    started = time.perf_counter()
    with _bar(len(todo), f"index {net.arch}", settings.progress) as bar:
        rep = _Report(coll, paths, bar)
        rows = chunk_rows(plan, range(plan.count), embed.batch_size)
        rows = np.where(rows >= 0, np.asarray(todo + [0], np.int64)[np.maximum(rows, 0)], -1) if todo else rows
        stream = _stream(paths, rows, embed, settings.resolution, settings.workers, rep)
        for k in range(plan.count):
            a, b = plan.span(k)
            got = _take(stream, b - a)
            if got.rows:
                manifest = append_part(out, manifest, [coll.images[r].uid for r in got.rows],
                                       np.stack([v[0] for v in got.vectors]), np.stack([v[1:] for v in got.vectors]),
                                       np.asarray(got.sizes, np.int32), collection=str(Path(coll.root).absolute()))
                parts += 1
        for _ in stream:
            pass
    if rep.read:
        rate = rep.read / max(time.perf_counter() - started, 1e-9)
        print(f"{rep.read} images in {time.perf_counter() - started:.1f} s ({rate:.1f} images/s)", file=sys.stderr)
    if rep.skipped:
        print(f"{rep.skipped} of {len(todo)} images could not be read and were left out (a later run tries them "
              f"again).", file=sys.stderr)
    for line in note_lines(rep.notes, collection=coll.root):
        print(line, file=sys.stderr)
    if parts or "calibration" not in manifest:
        _store_calibration(out, manifest)
    total = sum(p["count"] for p in manifest["parts"])
    return IndexResult(len(todo) - rep.skipped, rep.skipped, total, already, parts)


def _store_calibration(out: Path, manifest: dict) -> None:
    """How global and region scores of unrelated images are distributed (`model.search.calibrate`), on a sample
    of the whole index as it is now, kept in the manifest so that a query need not compute it."""
    from model.search import calibrate

    index = SearchIndex.open(out)
    write_manifest(out, {**manifest, "calibration": calibrate(index).as_json()})


def _reattach(out: Path, index: SearchIndex, coll: Collection) -> SearchIndex:
    """Parts whose collection folder is gone, and whose images this collection lists, now read from it (a moved
    collection, indexed again into its index): said on stderr, recorded in the manifest."""
    here = str(Path(coll.root).absolute())
    parts, moved = [], set()
    for entry, part in zip(index.manifest["parts"], index.parts, strict=True):
        old = entry.get("collection")
        if old and old != here and not Path(old).is_dir() and any(u in coll for u in part.uids[:50]):
            entry = {**entry, "collection": here}
            moved.add(old)
        parts.append(entry)
    if not moved:
        return index
    for old in sorted(moved):
        print(f"note: {old} is gone; the indexed images it listed are now read from {here}", file=sys.stderr)
    manifest = {**index.manifest, "parts": parts}
    write_manifest(out, manifest)
    return SearchIndex.open(out)


def _warn_other_collections(index: SearchIndex, uids: set[str], coll: Collection) -> None:
    """uids of this collection indexed from another collection: the indexed pictures are kept, say so."""
    here = str(Path(coll.root).absolute())
    other = sorted(u for u in uids if index.collection_of(index.number_of(u)) not in (None, here))
    if other:
        print(f"warning: {len(other)} uids of {coll.root} ({', '.join(other[:3])}{', ...' if len(other) > 3 else ''}) "
              f"are in the index from another collection; their indexed pictures are kept. Give uids that are "
              f"unique across collections, or index this one into another --out.", file=sys.stderr)


def _take(stream, count: int) -> _Rows:
    """The next `count` images of the stream (one chunk), the readable ones kept."""
    got = _Rows([], [], [])
    for row, vec, size in islice(stream, count):
        if vec is None:
            continue
        got.rows.append(row)
        got.vectors.append(vec)
        got.sizes.append(size)
    return got
