"""What `--resume` must find unchanged: the run's settings and the collection it trains on.

Why: a checkpoint refers to images by their row in images.csv (the triplets are row numbers, the data
iterator's position counts rows), and its optimizer state, schedule and batch shapes follow from the
settings the run started with. A resume after images.csv was re-sorted (Excel does it in one click)
trained on the wrong images with exit 0; one with another --collection or `--set resolution=64` mixed two
runs into one without a word. So a run records, when it starts, a fingerprint of what training reads of
the collection, and `--resume` refuses a mismatch, naming what changed and what to do.

The fingerprint covers the uids in images.csv order and the connections (a, b, type, split) in
connections.csv order: what the triplets, splits and mining are made of. The user's own columns
(titles, comments, reviewers) and metadata may change freely. Image files are not hashed (reading a
whole archive at every resume is too slow): replacing an image's file in place is not detected.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import fields
from pathlib import Path

from data.collection import Collection
from train.config import TrainConfig

# Settings that change how a run is carried out, never its numbers: stopping early, logging, checkpoint
# frequency and retention, decode processes (each element depends only on (seed, epoch, element);
# a resumed epoch keeps the worker count its iterator state was saved with), device prefetch and the
# compilation cache. Every other field changes the result (eval_batch_size and remat too: other batch
# shapes and recomputation compile other kernels, whose floating-point sums may differ in the last bit).
OPERATIONAL = frozenset({"max_steps", "log_every", "checkpoint_every", "keep_checkpoints", "workers", "prefetch",
                         "compile_cache"})


FINGERPRINT_KEY = "collection_fingerprint"  # in RUN_DIR/config.json (its "collection" is the folder)


class ResumeMismatch(ValueError):
    """--resume with settings or a collection other than the run's; the message says what changed."""


def _digest(lines: Iterable[str]) -> str:
    h = hashlib.sha256()
    for line in lines:
        h.update(line.encode("utf-8", "surrogatepass"))
        h.update(b"\0")
    return h.hexdigest()


def _connection_keys(collection: Collection) -> list[str]:
    return ["\t".join((c.a, c.b, c.type, c.split or "")) for c in collection.connections]


def collection_fingerprint(collection: Collection) -> dict:
    """What training depends on, as a JSON-able dict stored in the run's config.json."""
    uids, conns = collection.uids, _connection_keys(collection)
    return {
        "folder": str(Path(collection.root).resolve()),
        "num_images": len(uids),
        "uids": _digest(uids),
        "uid_set": _digest(sorted(uids)),
        "num_connections": len(conns),
        "connections": _digest(conns),
        "connection_set": _digest(sorted(conns)),
    }


def _images_change(saved: dict, now: dict, images_file: Path) -> str | None:
    if saved.get("uids") == now["uids"]:
        return None
    if saved.get("uid_set") == now["uid_set"]:
        return (f"{images_file} lists the same {now['num_images']} uids in another order (sorted or re-saved in a "
                f"spreadsheet?)")
    return (f"{images_file} lists other uids ({saved.get('num_images', '?')} rows when the run started, "
            f"{now['num_images']} now)")


def _connections_change(saved: dict, now: dict, connections_file: Path) -> str | None:
    if saved.get("connections") == now["connections"]:
        return None
    if saved.get("connection_set") == now["connection_set"]:
        return f"{connections_file} holds the same connections in another order"
    return (f"{connections_file} holds other connections (a, b, type or split; {saved.get('num_connections', '?')} "
            f"rows when the run started, {now['num_connections']} now)")


def check_collection(saved: dict | None, collection: Collection, run_dir: Path, warn) -> None:
    """Refuse a resume on a collection other than the one the run started on (see the module docstring).

    `saved` is None for runs written before fingerprints were recorded: nothing to compare, said so.
    The same collection moved to another folder (a copy on a cluster node) is accepted with a warning.
    """
    now = collection_fingerprint(collection)
    if saved is None:
        warn(f"{run_dir}: the run recorded no fingerprint of its collection (an older version started it); "
             f"cannot check that {collection.root} is the collection it started on.")
        return
    changes = [c for c in (_images_change(saved, now, collection.images_file),
                           _connections_change(saved, now, collection.connections_file)) if c]
    moved = saved.get("folder") != now["folder"]
    if not changes:
        if moved:
            warn(f"the run started on the collection at {saved.get('folder')}; it is now read from {now['folder']} "
                 f"(its uids and connections are the same, so the run continues).")
        return
    where = f"the run started on the collection at {saved.get('folder')}, not {now['folder']}; " if moved else ""
    raise ResumeMismatch(
        f"{run_dir}: cannot resume: {where}{'; '.join(changes)} since the run started. The checkpoints refer to "
        f"images by their row in images.csv and to the triplets made of these connections, so continuing would "
        f"train on the wrong images. Put the files back as they were (the same rows in the same order), or "
        f"start a new run with another --out (a finished run continues as a new round with --resume-from)."
    )


def _show(value) -> str:
    return ",".join(map(str, value)) if isinstance(value, tuple | list) else str(value)


def check_config(saved: TrainConfig, now: TrainConfig, run_dir: Path) -> None:
    """Refuse a resume whose settings differ from the run's in anything but OPERATIONAL fields."""
    changed = [(f.name, getattr(saved, f.name), getattr(now, f.name)) for f in fields(TrainConfig)
               if f.name not in OPERATIONAL and getattr(saved, f.name) != getattr(now, f.name)]
    if not changed:
        return
    listed = "; ".join(f"{name} was {_show(old)} and is now {_show(new)}" for name, old, new in changed)
    raise ResumeMismatch(
        f"{run_dir}: cannot resume with other settings: {listed}. A resumed run continues with the settings it "
        f"started with (they shape its optimizer state, schedule and batches); only "
        f"{', '.join(sorted(OPERATIONAL))} may change. Drop the --set/--arch/--seed that differ, or start a new "
        f"run with another --out (a finished run continues as a new round with --resume-from)."
    )
