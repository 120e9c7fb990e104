"""The input pipeline: a prepared dataset (`data.prepare`) read with grain, decoded and augmented in workers.

Triplet batches are one array of 3N images, stacked [A_1..A_N, B_1..B_N, C_1..C_N], so the model
runs once per step and the loss slices the three thirds.

Determinism and resume: the pipeline is a grain `MapDataset` (index-addressable): shuffle (reseeded
each epoch) -> repeat -> `random_map` whose generator is seeded from (seed, position in the repeated
sequence) -> shard -> batch. So every element's images and augmentation depend only on (seed, epoch,
element), never on worker count, process count or timing, and `iterator.get_state()` /
`set_state()` resume at the same element with the same pixels.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import grain
import numpy as np
from PIL import Image

from data.augment import AugmentConfig, augment
from data.image import ImageReadError, decode_image, decode_rgb
from data.prepare import DATASET_NAME, SPLIT_NAME
from data.preprocess import IMAGENET_MEAN, IMAGENET_STD, load_uint8, squash_resize


class PreparedSource:
    """Random access to a prepared dataset by *collection index* (row of images.csv): (uid, JPEG bytes).

    Picklable: worker processes reopen the ArrayRecord files themselves.
    """

    def __init__(self, dataset_dir: str | Path) -> None:
        import tensorflow_datasets as tfds

        self.dataset_dir = Path(dataset_dir)
        builder = tfds.builder_from_directory(str(self.dataset_dir))
        md = builder.info.metadata or {}
        self.uids: list[str] = list(md.get("uids", []))
        self.indices = np.asarray(md.get("indices", []), dtype=np.int64)
        self.skipped: dict[str, str] = dict(md.get("skipped", {}))
        self.max_side = int(md.get("max_side", 0))
        self._position = {int(i): p for p, i in enumerate(self.indices)}
        self._ds = self._open()

    # Opened eagerly, here and when a worker unpickles the source, in that process's main thread:
    # opened lazily from grain's reader threads, two threads importing tensorflow_datasets' lazy
    # modules at once deadlocked on the import lock (seen with 2 worker processes).
    def _open(self):
        import tensorflow_datasets as tfds

        builder = tfds.builder_from_directory(str(self.dataset_dir))
        return builder.as_data_source(split=SPLIT_NAME, decoders={"image": tfds.decode.SkipDecoding()})

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_ds"] = None
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._ds = self._open()

    def _data(self):
        return self._ds

    def __len__(self) -> int:
        return len(self.indices)

    def __contains__(self, index: int) -> bool:
        return int(index) in self._position

    def position(self, index: int) -> int:
        try:
            return self._position[int(index)]
        except KeyError:
            raise KeyError(
                f"collection index {index} is not in the prepared dataset {self.dataset_dir} "
                f"({len(self.skipped)} images were skipped as unreadable; re-run `python -m data prepare`)."
            ) from None

    def __getitem__(self, index: int) -> tuple[str, bytes]:
        pos = self.position(index)
        rec = self._data()[pos]
        return self.uids[pos], rec["image"]

    def check(self, indices) -> None:
        """Raise a clear error if any of `indices` is not available (skipped or out of range)."""
        missing = sorted({int(i) for i in np.asarray(indices).ravel()} - set(self._position))
        if missing:
            raise KeyError(
                f"{len(missing)} image indices are not in the prepared dataset {self.dataset_dir} "
                f"(first: {missing[:5]}); skipped as unreadable: {sorted(self.skipped)[:5]}. "
                "Drop them from the triplets or fix the images and re-run `python -m data prepare`."
            )


def open_prepared(prepared_dir: str | Path) -> PreparedSource:
    """Open `prepare`'s output folder (or the tfds version folder inside it)."""
    p = Path(prepared_dir)
    for cand in (p, p / DATASET_NAME / "1.0.0"):
        if (cand / "dataset_info.json").exists():
            return PreparedSource(cand)
    raise FileNotFoundError(f"{p}: no prepared dataset here; run `python -m data prepare COLLECTION` first.")


def _decode(data: bytes, uid: str) -> Image.Image:
    try:
        return decode_rgb(data)
    except ImageReadError as e:
        raise ImageReadError(f"uid {uid}: {e}") from e


_MEAN = np.asarray(IMAGENET_MEAN, dtype=np.float32) * 255.0
_STD = np.asarray(IMAGENET_STD, dtype=np.float32) * 255.0


def _finish(arr: np.ndarray, output: str) -> np.ndarray:
    """uint8 batch -> the requested output. In place after one float32 copy: the same float32
    operations as `data.preprocess.normalize` (identical values), but ~10x faster on large batches,
    where fresh temporaries cost more than the arithmetic."""
    if output == "uint8":
        return arr
    out = arr.astype(np.float32)
    out -= _MEAN
    out /= _STD
    return out


@dataclass
class _LoadTriplet:
    """grain RandomMap: triplet position -> (3, R, R, 3) images and the three indices."""

    source: PreparedSource
    triplets: np.ndarray
    resolution: int
    augment: AugmentConfig
    output: str

    def __call__(self, i: int, rng: np.random.Generator) -> dict:
        row = self.triplets[i]
        views = []
        for idx in row:
            uid, data = self.source[int(idx)]
            img = augment(_decode(data, uid), self.resolution, self.augment, rng)
            views.append(np.asarray(img, dtype=np.uint8))
        return {"images": np.stack(views), "triplet": row.astype(np.int64)}


def _stack_triplets(output: str):
    def fn(elements: list[dict]) -> dict:
        images = np.stack([e["images"] for e in elements])  # (N, 3, R, R, 3)
        n = images.shape[0]
        images = images.transpose(1, 0, 2, 3, 4).reshape((3 * n, *images.shape[2:]))
        return {"images": _finish(images, output), "triplets": np.stack([e["triplet"] for e in elements])}

    return fn


def _worker_init(worker_index: int, worker_count: int) -> None:
    """grain's `worker_init_fn`. Ctrl-C at a terminal signals the whole process group, and a worker that took
    it would print its own KeyboardInterrupt traceback: the main process alone handles it and stops them.
    A main process killed outright (kill -9, SIGTERM, a lost job) stops nobody: each worker watches its
    parent and exits when it is gone, instead of staying behind forever."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(1)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


# Python < 3.13's resource tracker counts a shared-memory block that a worker created and the main process
# attached to twice, and grain's blocks still queued when a pipeline stops are removed by the tracker itself:
# either way it warns at exit ("There appear to be N leaked shared_memory objects") although nothing is
# left behind. The tracker is a process of its own started with the first worker, so the filter goes through
# the environment it inherits.
_TRACKER_WARNING = "ignore:resource_tracker:UserWarning"


def _quiet_resource_tracker() -> None:
    current = os.environ.get("PYTHONWARNINGS", "")
    if _TRACKER_WARNING not in current.split(","):
        os.environ["PYTHONWARNINGS"] = ",".join(filter(None, [current, _TRACKER_WARNING]))


def _multiprocess(it_ds: grain.IterDataset, workers: int) -> grain.IterDataset:
    """`mp_prefetch` over `workers` processes (0: stay in this process)."""
    if workers <= 0:
        return it_ds
    # grain reads absl flags (e.g. its worker-profiling switch) when jax is loaded; in a program that
    # is not an absl app they are unparsed and the read raises. Defaults are what we want.
    from absl import flags

    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()
    _quiet_resource_tracker()
    return it_ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=workers), worker_init_fn=_worker_init)


def _read_options(threads: int) -> grain.ReadOptions:
    return grain.ReadOptions(num_threads=threads, prefetch_buffer_size=max(2, 2 * threads))


def triplet_dataset(
    source: PreparedSource,
    triplets: np.ndarray,
    *,
    resolution: int,
    batch_size: int,
    seed: int,
    augment: AugmentConfig = AugmentConfig(),
    shuffle: bool = True,
    num_epochs: int | None = 1,
    shard_index: int = 0,
    shard_count: int = 1,
    workers: int = 0,
    threads: int = 2,
    output: str = "float32",
) -> grain.DatasetIterator:
    """Batches {"images": (3N, R, R, 3), "triplets": (N, 3)} as a checkpointable grain iterator.

    `triplets` holds collection indices (A, B, C) per row. `num_epochs=None` repeats forever. The
    last incomplete batch of the (sharded) run is dropped. `workers` > 0 decodes and augments in that
    many processes; `threads` are reader threads per process.
    """
    if output not in ("float32", "uint8"):
        raise ValueError(f"output must be 'float32' or 'uint8', not {output!r}.")
    triplets = np.asarray(triplets, dtype=np.int64)
    if triplets.ndim != 2 or triplets.shape[1] != 3 or len(triplets) == 0:
        raise ValueError(f"triplets must be a non-empty (M, 3) integer array; got shape {triplets.shape}.")
    source.check(triplets)
    ds = grain.MapDataset.range(len(triplets))
    if shuffle:
        ds = ds.shuffle(seed=seed)
    ds = ds.repeat(num_epochs)
    # augmentation seeded by the element's place in the whole (repeated) sequence, before sharding: under
    # jax.distributed every process then augments its elements as one process would, and P processes
    # together train on exactly the global batches of one process
    ds = ds.random_map(_LoadTriplet(source, triplets, resolution, augment, output), seed=seed)
    if shard_count > 1:
        ds = ds[shard_index::shard_count]
    ds = ds.batch(batch_size, drop_remainder=True, batch_fn=_stack_triplets(output))
    it_ds = ds.to_iter_dataset(_read_options(threads))
    return iter(_multiprocess(it_ds, workers))


@dataclass
class _LoadEval:
    source: PreparedSource
    indices: np.ndarray  # padded with -1
    resolution: int
    output: str

    def __call__(self, i: int) -> dict:
        idx = int(self.indices[i])
        if idx < 0:
            arr = np.zeros((self.resolution, self.resolution, 3), np.uint8)
        else:
            uid, data = self.source[idx]
            try:
                arr = load_uint8(data, self.resolution)
            except ImageReadError as e:
                raise ImageReadError(f"uid {uid}: {e}") from e
        return {"image": arr, "index": idx, "valid": idx >= 0}


def _stack_eval(output: str):
    def fn(elements: list[dict]) -> dict:
        images = _finish(np.stack([e["image"] for e in elements]), output)
        valid = np.asarray([e["valid"] for e in elements], bool)
        images[~valid] = 0  # padding is zero in the output space (after normalisation)
        return {"images": images, "index": np.asarray([e["index"] for e in elements], np.int64), "valid": valid}

    return fn


def eval_dataset(
    source: PreparedSource,
    indices,
    *,
    resolution: int,
    batch_size: int,
    workers: int = 0,
    threads: int = 2,
    output: str = "float32",
) -> grain.DatasetIterator:
    """Test-time batches {"images", "index", "valid"} in the given order; the last batch is padded
    (padding rows have index -1, valid False, and all-zero images)."""
    if output not in ("float32", "uint8"):
        raise ValueError(f"output must be 'float32' or 'uint8', not {output!r}.")
    indices = np.asarray(indices, dtype=np.int64).ravel()
    source.check(indices)
    pad = (-len(indices)) % batch_size
    padded = np.concatenate([indices, np.full(pad, -1, np.int64)])
    ds = grain.MapDataset.range(len(padded)).map(_LoadEval(source, padded, resolution, output))
    ds = ds.batch(batch_size, drop_remainder=False, batch_fn=_stack_eval(output))
    it_ds = ds.to_iter_dataset(_read_options(threads))
    return iter(_multiprocess(it_ds, workers))



# --- the collection's own image files, at test-time preprocessing (`model embed`, training's export) -------------


@dataclass
class _LoadFile:
    """grain map: position -> one image file of the collection, decoded and squash-resized (uint8), or why not.

    An unreadable file is not an error of the pipeline: its element carries the message (and a zero image),
    so the consumer reports it by uid and leaves it out, as every stage does.
    """

    paths: list[str]  # one per images.csv row
    rows: np.ndarray  # the rows to read, in order, padded with -1
    resolution: int

    def __call__(self, i: int) -> dict:
        row = int(self.rows[i])
        image = np.zeros((self.resolution, self.resolution, 3), np.uint8)
        error, notes, shown = "", (), [(0, 0)]
        if row >= 0:

            def finish(img):
                shown[0] = img.size  # as a person sees it (EXIF orientation applied), before the squash
                return squash_resize(img, self.resolution)

            try:
                dec = decode_image(Path(self.paths[row]), finish=finish)
                image, notes = np.asarray(dec.image, dtype=np.uint8), dec.notes
            except ImageReadError as e:
                error = str(e) or type(e).__name__
        return {"image": image, "row": row, "error": error, "notes": tuple(notes), "size": shown[0]}


def _stack_files(elements: list[dict]) -> dict:
    return {"images": np.stack([e["image"] for e in elements]),
            "row": np.asarray([e["row"] for e in elements], np.int64),
            "error": [e["error"] for e in elements], "notes": [e["notes"] for e in elements],
            "size": np.asarray([e["size"] for e in elements], np.int32).reshape(-1, 2)}


def file_dataset(
    paths: list[str],
    rows,
    *,
    resolution: int,
    batch_size: int,
    workers: int = 0,
    threads: int = 2,
):
    """Batches {"images": uint8 (B, R, R, 3), "row", "error", "notes", "size"} of the collection's image files
    `paths[row]` for `rows` in the given order, decoded as every stage decodes them (`data.image`) and
    squash-resized to R x R (`data.preprocess`): the pixels `model embed` has always used. Normalisation is
    left to the device (uint8 transfers are 4x smaller).

    The last batch is padded (row -1, zero image). `error` is "" for an image read, else why it could not
    be (the image is zero and must be left out); `notes` are what the decoder corrected; `size` (B, 2) each
    picture's width and height as a person sees it (EXIF orientation applied), (0, 0) where not read. `workers` > 0
    decodes in that many processes (grain's `mp_prefetch`), `threads` are reader threads per process.
    Nothing is held beyond the batches in flight, so a million-image collection streams in O(batch) memory.
    """
    rows = np.asarray(rows, dtype=np.int64).ravel()
    pad = (-len(rows)) % batch_size
    padded = np.concatenate([rows, np.full(pad, -1, np.int64)])
    ds = grain.MapDataset.range(len(padded)).map(_LoadFile(list(map(str, paths)), padded, resolution))
    ds = ds.batch(batch_size, drop_remainder=False, batch_fn=_stack_files)
    return iter(_multiprocess(ds.to_iter_dataset(_read_options(threads)), workers))
