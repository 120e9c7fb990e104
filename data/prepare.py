"""`python -m data prepare`: the collection as a tensorflow-datasets ArrayRecord dataset, without TensorFlow.

Why: training reads every image many times; decoding a 6000-px archive scan each time starves the
accelerator. So each image is decoded once, downscaled to `max_side` (aspect kept: the train-time
squash-resize happens later, per epoch), re-encoded as JPEG and stored in ArrayRecord files that
`tfds.data_source` and grain read by random access from many worker processes.

tensorflow-datasets writes ArrayRecord without TensorFlow through a `GeneratorBasedBuilder` with
`file_format="array_record"` (checked: `tensorflow` is never imported; see the tests). Records
keep images.csv order (`disable_shuffling`); unreadable images are reported by uid, skipped, and
listed in the dataset's metadata (`skipped`), with the uid and collection index of every record.

Idempotent: a fingerprint of images.csv, every image file's size and mtime, `max_side` and the
format version is stored; an unchanged collection is not rebuilt. A rebuild writes into a temp
folder and swaps it in, so a killed run never leaves a half dataset in place.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import io
import json
import shutil
import tempfile
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from data.atomic import atomic_dir, atomic_write_text
from data.collection import Collection, ImageRecord, load_collection
from data.image import ImageReadError, decode_image

# 2: images decoded by data.image (16-bit scaled, transparency on white, EXIF orientation applied).
FORMAT_VERSION = 2
DATASET_NAME = "collection_images"  # tfds name of `CollectionImages`
SPLIT_NAME = "images"
FINGERPRINT_FILE = "fingerprint.json"
JPEG_QUALITY = 90


@dataclass
class PrepareResult:
    path: Path  # the tfds dataset folder (holds dataset_info.json and the .array_record files)
    num_images: int
    skipped: dict[str, str] = field(default_factory=dict)
    reused: bool = False
    # (uid, file, what the decoder corrected or found damaged), for `data.image.note_lines`
    notes: list[tuple[str, str, list[str]]] = field(default_factory=list)


def fingerprint(coll: Collection, max_side: int) -> str:
    h = hashlib.sha256()
    h.update(f"v{FORMAT_VERSION} max_side={max_side}\n".encode())
    h.update(coll.images_file.read_bytes())
    for rec in coll.images:
        p = coll.image_path(rec)
        try:
            st = p.stat()
            h.update(f"{rec.uid}\t{st.st_size}\t{st.st_mtime_ns}\n".encode())
        except OSError:
            h.update(f"{rec.uid}\tmissing\n".encode())
    return h.hexdigest()


def _downscale(img: Image.Image, max_side: int) -> Image.Image:
    if max(img.size) <= max_side:
        return img
    s = max_side / max(img.size)
    size = (max(1, round(img.width * s)), max(1, round(img.height * s)))
    return img.resize(size, Image.Resampling.BICUBIC, reducing_gap=3.0)


def encode_downscaled(path: Path, max_side: int) -> tuple[bytes, tuple[str, ...]]:
    """JPEG bytes of the image with its longest side at most `max_side`, and the decoder's notes.

    An RGB JPEG already small enough that needed no correction (no EXIF rotation, no damage) is
    stored as is (no second lossy pass); everything else is stored as the corrected picture."""
    raw = path.read_bytes()
    dec = decode_image(raw, finish=lambda img: _downscale(img, max_side), name=str(path))  # ImageReadError
    if not dec.notes and dec.format == "JPEG" and dec.mode == "RGB" and max(dec.size) <= max_side:
        return raw, dec.notes
    buf = io.BytesIO()
    dec.image.save(buf, format="JPEG", quality=JPEG_QUALITY, subsampling=2)
    return buf.getvalue(), dec.notes


def _load_item(coll: Collection, max_side: int, item: tuple[int, ImageRecord]):
    """(index, record, JPEG bytes, [(uid, file, notes)] when the decoder corrected something, error)."""
    idx, rec = item
    path = coll.image_path(rec)
    try:
        data, notes = encode_downscaled(path, max_side)
    except ImageReadError as e:
        return idx, rec, None, [], str(e)
    except OSError as e:
        return idx, rec, None, [], f"{path}: cannot read ({e.strerror or e})"
    return idx, rec, data, [(rec.uid, str(path), list(notes))] if notes else [], None


def _bounded_map(pool: ThreadPoolExecutor, fn, items, ahead: int) -> Iterator:
    """`pool.map` in order, with at most `ahead` results in flight (memory stays bounded on huge collections)."""
    from collections import deque

    pending: deque = deque()
    for item in items:
        pending.append(pool.submit(fn, item))
        if len(pending) >= ahead:
            yield pending.popleft().result()
    while pending:
        yield pending.popleft().result()


@contextlib.contextmanager
def _scratch_tempdir(scratch: Path) -> Iterator[None]:
    """Point `tempfile` at `scratch` while tensorflow-datasets builds its builder, then remove it.

    Why: for a dataset not prepared yet, tfds's builder asks `DatasetInfo.initialize_from_bucket`, which makes a
    `tempfile.mkdtemp("tfds")` folder for metadata it would copy from its cloud bucket (disabled here: nothing is
    fetched) and never removes it: one empty folder left in /tmp by every preparation. Here it lands in the build
    folder and goes with it.
    """
    scratch.mkdir(parents=True, exist_ok=True)
    before = tempfile.tempdir
    tempfile.tempdir = str(scratch)
    try:
        yield
    finally:
        tempfile.tempdir = before
        shutil.rmtree(scratch, ignore_errors=True)


@functools.cache
def _builder_class():
    import tensorflow_datasets as tfds

    class CollectionImages(tfds.core.GeneratorBasedBuilder, skip_registration=True):
        """One split, `images`, in images.csv order; examples come from `self._examples`."""

        VERSION = tfds.core.Version("1.0.0")

        def __init__(self, *, examples, meta, **kwargs):
            self._examples = examples
            self._meta = meta
            super().__init__(**kwargs)

        def _info(self):
            return tfds.core.DatasetInfo(
                builder=self,
                description="A visual-signatures collection, images downscaled once for training.",
                features=tfds.features.FeaturesDict(
                    {
                        "image": tfds.features.Image(shape=(None, None, 3), encoding_format="jpeg"),
                        "uid": tfds.features.Text(),
                        "index": np.int64,
                        "meta": tfds.features.Text(),
                    }
                ),
                metadata=tfds.core.MetadataDict(self._meta),
                disable_shuffling=True,
            )

        def _split_generators(self, dl_manager):
            return {SPLIT_NAME: self._generate_examples()}

        def _generate_examples(self):
            yield from self._examples

    return CollectionImages


def prepare_collection(
    collection: str | Path | Collection,
    *,
    max_side: int = 512,
    out: str | Path | None = None,
    force: bool = False,
    workers: int = 4,
) -> PrepareResult:
    """Build (or reuse) the prepared dataset of a collection; see the module docstring."""
    coll = collection if isinstance(collection, Collection) else load_collection(collection)
    out = Path(out) if out is not None else coll.root / "prepared"
    fp = fingerprint(coll, max_side)
    ds_dir = out / DATASET_NAME / "1.0.0"
    fp_file = out / FINGERPRINT_FILE
    if not force and fp_file.exists() and ds_dir.exists():
        try:
            saved = json.loads(fp_file.read_text())
        except ValueError:
            saved = {}
        if saved.get("fingerprint") == fp:
            return PrepareResult(path=ds_dir, num_images=saved["num_images"], skipped=saved["skipped"], reused=True,
                                 notes=[tuple(n) for n in saved.get("notes", [])])

    seen: set[str] = set()
    work = []
    for idx, rec in enumerate(coll.images):
        if rec.uid and rec.uid not in seen:  # duplicate uids: first wins (`data check` reports the rest)
            seen.add(rec.uid)
            work.append((idx, rec))
    skipped: dict[str, str] = {}
    notes: list[tuple[str, str, list[str]]] = []
    kept_uids: list[str] = []
    kept_index: list[int] = []

    load = functools.partial(_load_item, coll, max_side)
    pool = ThreadPoolExecutor(max(1, workers))

    def examples() -> Iterator:
        for idx, rec, data, noted, err in _bounded_map(pool, load, work, ahead=4 * max(1, workers)):
            if err is not None:
                skipped[rec.uid] = err
                continue
            notes.extend(noted)
            kept_uids.append(rec.uid)
            kept_index.append(idx)
            yield idx, {"image": data, "uid": rec.uid, "index": idx, "meta": json.dumps(rec.meta, sort_keys=True)}

    def build(tmp: Path) -> None:
        import tensorflow_datasets as tfds

        tfds.disable_progress_bar()
        # Metadata is filled while the generator runs; the dict object is written after generation.
        meta = {"max_side": max_side, "fingerprint": fp, "collection": str(coll.root.resolve())}
        with _scratch_tempdir(tmp / ".tfds-scratch"):
            builder = _builder_class()(examples=examples(), meta=meta, data_dir=str(tmp), file_format="array_record")
        builder.info.metadata["skipped"] = skipped
        builder.info.metadata["uids"] = kept_uids
        builder.info.metadata["indices"] = kept_index
        # tfds prints "Downloading and preparing dataset Unknown size ..." and "... downloaded and prepared"
        # to stdout (nothing is downloaded: the records come from the collection); errors still raise.
        with contextlib.redirect_stdout(io.StringIO()):
            builder.download_and_prepare(
                download_config=tfds.download.DownloadConfig(try_download_gcs=False, verify_ssl=False)
            )
        pool.shutdown()
        shutil.rmtree(tmp / "downloads", ignore_errors=True)
        record = {"fingerprint": fp, "num_images": len(kept_uids), "skipped": skipped, "max_side": max_side,
                  "notes": notes}
        atomic_write_text(tmp / FINGERPRINT_FILE, json.dumps(record, indent=1, sort_keys=True))

    try:  # the old dataset stays intact until the new one is complete (`data.atomic.atomic_dir`)
        atomic_dir(out, build, is_complete=lambda p: (p / FINGERPRINT_FILE).is_file())
    finally:
        pool.shutdown(cancel_futures=True)
    return PrepareResult(path=ds_dir, num_images=len(kept_uids), skipped=skipped, notes=notes)
