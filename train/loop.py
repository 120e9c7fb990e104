"""The training run: prepare, split, embed + mine, train epochs, validate, keep the best, test, export.

RUN_DIR layout
- config.json        the resolved config (+ preset, arguments, start weights, the collection's folder and
                     the fingerprint of it that `--resume` checks: train/resume_check.py)
- splits.json        the split assignment used (uid -> split)
- checkpoints/       orbax checkpoints (last few + best by val mAP)
- metrics.jsonl      one JSON line per log interval ({"step", "epoch", "loss", "img_per_s", "lr"}) and per
                     epoch ({"epoch", "val": {...}})
- start_eval.json    retrieval of the starting network (val and test), computed once
- start_signatures.npz  the starting network's signatures (identical to `python -m model embed` with the
                     same weights / seed and resolution)
- eval.json          retrieval of the starting and of the exported (best-on-val) network, same splits and code
- signatures.npz     the exported network's signatures of the whole collection (`model embed`'s format)
- weights/           the exported network's weights (`model.weights` format: `--weights RUN_DIR/weights`)
- curves.png         training loss and val mAP

The exported network is the best on val among the starting network (epoch 0) and every epoch's: a run
that never beats its start exports the start and says so (eval.json "selected": "start", the log).

Before anything is computed the collection goes through `python -m data check`'s validation (without
decoding images: preparing the dataset reports unreadable ones); a collection with errors is refused.
A resume survives what a kill can leave behind: a torn last line of metrics.jsonl (dropped), a damaged
newest checkpoint (the next older one is used, train/checkpointing.py), damaged start files (recomputed)
and scratch folders of a killed weights export (removed); each is reported as a `warning:` line. A best
checkpoint missing at the export (deleted by hand) gives the best one left, with a warning. A resume
refuses other settings or another collection (re-sorted images.csv, other connections) before writing
anything (train/resume_check.py); a new run that fails before training starts removes the run folder it made.

Exact resume: the train step is deterministic, triplets are stored in each checkpoint, the data
iterator's state too (grain), and every epoch's iterator seed derives from (seed, epoch, mining round).
So a run interrupted after any checkpoint and resumed ends with the same parameters as an
uninterrupted one (tests/train/test_loop.py checks this bit for bit on CPU). Batches come through a
device prefetcher (train/prefetch.py) that runs ahead of the step; the iterator state saved is the one
carried with the last batch *used*, not the prefetcher's.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import jax
import numpy as np
import orbax.checkpoint as ocp
from flax import nnx

from data.atomic import atomic_write, atomic_write_text
from data.augment import AugmentConfig
from data.collection import Collection, load_collection
from data.image import note_lines
from data.paths import resolve_path
from data.pipeline import PreparedSource, open_prepared, triplet_dataset
from data.prepare import PrepareResult, prepare_collection
from data.signatures import Signatures, load_signatures, save_signatures
from data.splits import SPLITS_FILE, assign_splits, load_previous, load_splits, save_splits
from data.validate import validate
from model.embed import embed_collection
from model.registry import build_abstract
from model.signature import set_mode
from model.weights import (
    load_or_init,
    remove_stale_exports,
    restore_error_text,
    save_weights,
    silence_restore_echoes,
)
from train.checkpointing import GracefulStop, RunCheckpoints, check_finite
from train.config import TrainConfig, resolved_workers, save_config
from train.distributed import is_main
from train.embedding import embed_indices, local_copy, make_embed_fn
from train.metrics import evaluate_split
from train.metrics_log import MetricsLog, read_metrics
from train.mining import MiningInputs, mine_triplets, mining_inputs
from train.optim import make_optimizer, make_schedule
from train.prefetch import DevicePrefetcher
from train.resume_check import FINGERPRINT_KEY, check_collection, check_config, collection_fingerprint
from train.step import (
    global_batch,
    global_groups,
    init_state,
    make_mesh,
    make_train_step,
    replicate,
    split_model,
)

CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.jsonl"
START_EVAL_FILE = "start_eval.json"
EVAL_FILE = "eval.json"
SIGNATURES_FILE = "signatures.npz"
START_SIGNATURES_FILE = "start_signatures.npz"
WEIGHTS_DIR = "weights"
CHECKPOINT_DIR = "checkpoints"


class RunError(RuntimeError):
    """A run that cannot start or continue; the message says what to do."""


@dataclass
class RunResult:
    run_dir: Path
    status: str  # "finished" | "stopped" (max_steps or a signal)
    step: int
    start_eval: dict = field(default_factory=dict)
    final_eval: dict = field(default_factory=dict)
    best_step: int | None = None
    losses: list[float] = field(default_factory=list)
    selected: str = "trained"  # "start" when no epoch beat the starting network on val


def _write_json(path: Path, obj) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=float))


class _ClosePrefetch:
    """Stop the prefetch thread however the epoch loop ends (exception included)."""

    def __init__(self, current):
        self.current = current

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        pf = self.current()
        if pf is None:
            return
        try:
            pf.close()
        except RuntimeError as e:
            if exc_type is None:
                raise
            print(f"warning: {e}", file=sys.stderr)  # do not hide the error that ended the run


class _WaitOnError:
    """On an exception (NaN loss, Ctrl-C twice), let in-flight async checkpoints finish before unwinding."""

    def __init__(self, ckpts: RunCheckpoints):
        self.ckpts = ckpts

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self.ckpts.close()


def _iterator_seed(seed: int, epoch: int, rnd: int) -> int:
    return (seed * 1_000_003 + epoch * 1_009 + rnd) % (2**31 - 1)


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


@dataclass
class _Context:
    """Everything a run computes once: collection, splits, data source, model graphs, meshes."""

    cfg: TrainConfig
    run_dir: Path
    collection: Collection
    split_of: dict
    group_name: dict
    inputs: MiningInputs
    source: PreparedSource
    present: np.ndarray  # (n,) bool: image readable (in the prepared dataset)
    mesh: object
    eval_mesh: object
    train_graphdef: object
    eval_graphdef: object
    params: object
    rest: object
    start_meta: dict


def _problem_text(collection: Collection, p) -> str:
    """A `data check` problem as one message, without check's own "WARNING"/"ERROR" word (the caller's
    `warning:` or `Error:` says it) and with the file's full path."""
    where = str(collection.root / p.file) + (f":{p.line}" if p.line else "")
    return f"{where}:{f' uid {p.uid}:' if p.uid else ''} {p.message}"


def refuse_invalid_collection(collection: Collection, warn, *, shown: int = 20) -> None:
    """Stop before any compilation or embedding if `python -m data check` finds errors (listed, like check).

    Images are not decoded here: preparing the dataset reports (and skips) unreadable images already.
    The warnings include what the reader had to guess (a Windows-1252 file): load the collection with
    `quiet=True` so that it is said once.
    """
    report = validate(collection, decode_images=False)
    for p in report.warnings[:shown]:
        warn(_problem_text(collection, p))
    if len(report.warnings) > shown:
        warn(f"... and {len(report.warnings) - shown} more warnings (`python -m data check {collection.root}`)")
    if report.errors:
        listed = "\n".join(_problem_text(collection, p) for p in report.errors[:shown])
        more = f"\n... and {len(report.errors) - shown} more" if len(report.errors) > shown else ""
        raise RunError(f"{collection.root}: {len(report.errors)} errors in the collection; fix them before "
                       f"training (`python -m data check {collection.root}` lists them all):\n{listed}{more}")


def _prepare(collection: Collection, cfg: TrainConfig, run_dir: Path, model, weights: str,
             previous_splits: dict | None, log) -> _Context:
    """Everything a run computes once; `model` is the starting network (`_start_model`, loaded first so that
    damaged start weights stop the run before anything is prepared or written)."""
    prepared = prepare_once(collection, max_side=max(cfg.resolution + 100, 256))
    source = open_prepared(prepared.path)
    if source.skipped:
        log(f"{len(source.skipped)} unreadable images skipped (first: {sorted(source.skipped.items())[:3]})")
    if is_main():  # what the decoder corrected or found damaged, by uid and file (like `data check`)
        for line in note_lines(prepared.notes, collection=collection.root):
            print(line, file=sys.stderr, flush=True)
    previous = previous_splits if previous_splits is not None else load_previous(collection)
    assignment = assign_splits(collection, previous)
    if is_main():
        save_splits(run_dir / SPLITS_FILE, assignment)
        coll_splits = collection.root / SPLITS_FILE
        if not coll_splits.exists():
            try:  # keep later rounds on the same splits (a test image never becomes a training image)
                save_splits(coll_splits, assignment)
            except OSError as e:
                log(f"could not write {coll_splits} ({e}); later rounds should pass this run's splits.json")
    group_name = {m: name for name, members in assignment.groups.items() for m in members}
    inputs = mining_inputs(collection, assignment.split_of, skipped=list(source.skipped),
                           train_connections=assignment.connections("train"))
    if len(inputs.positives) == 0:
        raise RunError(f"{collection.connections_file}: no POSITIVE connection falls in the train split; "
                       "add connections (or annotate) before training.")
    present = np.array([collection.uids[i] not in source.skipped for i in range(len(collection.uids))], bool)

    # Start weights: f32 parameters (and the same ones `model embed --weights W --seed N` uses).
    eval_graphdef, params, rest = split_model(model)
    train_model = build_abstract(model.arch, dtype=cfg.compute_dtype, pooling=model.pooling, gem_p=model.gem_p,
                                 gem_learnable=model.gem_learnable, remat=cfg.remat)
    set_mode(train_model, training=True, freeze_bn=cfg.freeze_bn)
    train_graphdef = nnx.split(train_model, nnx.Param, ...)[0]
    mesh = make_mesh()
    eval_mesh = make_mesh(jax.local_devices())
    if cfg.batch_size % mesh.devices.size:
        raise RunError(f"batch_size {cfg.batch_size} must be a multiple of the {mesh.devices.size} devices "
                       f"(--set batch_size=...).")
    return _Context(cfg, run_dir, collection, assignment.split_of, group_name, inputs, source, present, mesh,
                    eval_mesh, train_graphdef, eval_graphdef, params, rest,
                    {"arch": model.arch, "pooling": model.pooling, "weights": str(weights)})


def _embed_all(ctx: _Context, embed_fn, params, rest) -> np.ndarray:
    """(n, D) signatures of the whole collection in images.csv order (zero rows for skipped images)."""
    idx = np.flatnonzero(ctx.present)
    sig = embed_indices(embed_fn, local_copy(params, ctx.eval_mesh), local_copy(rest, ctx.eval_mesh), ctx.source,
                        idx, resolution=ctx.cfg.resolution, batch_size=ctx.cfg.eval_batch_size, mesh=ctx.eval_mesh,
                        workers=resolved_workers(ctx.cfg))
    out = np.zeros((len(ctx.present), sig.shape[1]), np.float32)
    out[idx] = sig
    return out


def _embed_files(ctx: _Context, params, rest, *, progress: bool) -> Signatures:
    """Signatures from the original image files with `model.embed` (what `python -m model embed` writes)."""
    params, rest = local_copy(params, ctx.eval_mesh), local_copy(rest, ctx.eval_mesh)
    model = nnx.merge(ctx.eval_graphdef, jax.device_get(params), jax.device_get(rest))
    # quiet: preparing the dataset reported the unreadable images and the decoder's corrections already
    return embed_collection(ctx.collection, model, resolution=ctx.cfg.resolution,
                            batch_size=ctx.cfg.eval_batch_size, progress=progress, quiet=True)


def _evaluate_sig(ctx: _Context, sig: Signatures, split: str) -> dict:
    return evaluate_split(sig.vectors, sig.uids, ctx.group_name, ctx.split_of, split)


def _evaluate(ctx: _Context, sig: np.ndarray, split: str) -> dict:
    idx = np.flatnonzero(ctx.present)
    uids = [ctx.collection.uids[i] for i in idx]
    return evaluate_split(sig[idx], uids, ctx.group_name, ctx.split_of, split)


def _mine(ctx: _Context, sig: np.ndarray) -> np.ndarray:
    return mine_triplets(sig, ctx.inputs, num_negatives=ctx.cfg.num_negatives)


def _make_iterator(ctx: _Context, triplets: np.ndarray, epoch: int, rnd: int, data_state, *, workers: int):
    """The epoch's batches; `workers`: decode processes (a saved `data_state` needs the count that saved it:
    grain's position differs in form with and without worker processes; the batches do not)."""
    cfg = ctx.cfg
    nproc = jax.process_count()
    if cfg.batch_size % nproc:
        raise RunError(f"batch_size {cfg.batch_size} must be a multiple of the {nproc} processes")
    aug = AugmentConfig() if cfg.augment else AugmentConfig.off()
    it = triplet_dataset(
        ctx.source, triplets, resolution=cfg.resolution, batch_size=cfg.batch_size // nproc,
        seed=_iterator_seed(cfg.seed, epoch, rnd), augment=aug, shuffle=True, num_epochs=None,
        shard_index=jax.process_index(), shard_count=nproc, workers=workers, output="uint8",
    )
    if data_state is not None:
        it.set_state(data_state)
    return it


def _load_start(run_dir: Path, warn) -> dict | None:
    """start_eval.json if it and start_signatures.npz are intact; None (after a warning) if they must be redone."""
    files = (run_dir / START_EVAL_FILE, run_dir / START_SIGNATURES_FILE)
    missing = [f for f in files if not f.exists()]
    if missing:
        if len(missing) < len(files):  # one without the other: a run killed between the two writes
            warn(f"{missing[0]} is missing: recomputing the starting network's signatures and evaluation.")
        return None
    try:
        start_eval = json.loads(files[0].read_text(encoding="utf-8"))
        if not isinstance(start_eval, dict) or not {"val", "test"} <= set(start_eval):
            raise ValueError("no val and test figures")
    except ValueError as e:
        warn(f"{files[0]}: damaged ({e}); recomputing the starting network's signatures and evaluation.")
        return None
    try:
        load_signatures(files[1])
    except ValueError as e:
        warn(f"{files[1]}: damaged ({e.__cause__ or e}); recomputing the starting network's signatures and "
             "evaluation.")
        return None
    return start_eval


def _start_eval(ctx: _Context, *, progress: bool, main: bool, warn) -> tuple[dict, bool]:
    """Retrieval of the starting network, embedded exactly as `python -m model embed` does (original files),
    and whether it was computed now.

    Computed once per run; a resume reuses the files unless they are damaged (then computed again: the
    start is deterministic, so the figures are the same).
    """
    start_eval = _load_start(ctx.run_dir, warn)
    if start_eval is not None:
        return start_eval, False
    start_sig = _embed_files(ctx, ctx.params, ctx.rest, progress=progress)
    start_sig.meta.update({**ctx.start_meta, "seed": ctx.cfg.seed, "trained": False})
    start_eval = {s: _evaluate_sig(ctx, start_sig, s) for s in ("val", "test")}
    if main:
        save_signatures(ctx.run_dir / START_SIGNATURES_FILE, start_sig)
        _write_json(ctx.run_dir / START_EVAL_FILE, start_eval)
    return start_eval, True


def _start_line(start_eval: dict, prepared_val: float | None) -> str:
    """The start's val mAP on both paths, named: eval.json's (original files, as `model embed`) and the
    prepared dataset's that every epoch is compared with. Printed alone, the first looked like a drop at
    epoch 1 whenever the two differ (downscaled JPEGs of the prepared dataset against the original files)."""
    line = f"start: val mAP {start_eval['val'].get('mAP', float('nan')):.4f} on the original files"
    if prepared_val is not None:
        line += f" ({prepared_val:.4f} on the prepared training images, which the epochs below are compared with)"
    return line


def _resumed_line(step: int, epoch: int, step_in_epoch: int, steps_per_epoch: int, epochs: int) -> str:
    if epoch >= epochs:
        return (f"resumed from step {step}: training had finished ({epoch} of {epochs} epochs); only the export "
                f"(signatures, weights, eval.json) is done again")
    return f"resumed from step {step} (epoch {epoch + 1} of {epochs}, {step_in_epoch}/{steps_per_epoch} steps done)"


def _start_candidate(val0: dict) -> dict | None:
    """The starting network as the first candidate of best-epoch selection (epoch 0, step 0).

    Its val is from the same path as every epoch's (the prepared dataset), so the comparison is like with like.
    """
    return {"mAP": val0["mAP"], "step": 0, "epoch": 0} if val0.get("mAP") is not None else None


def _resume_inputs(run_dir: Path, cfg: TrainConfig, collection: Collection, weights: str, warn
                   ) -> tuple[str, dict, dict]:
    """(start weights, splits, collection fingerprint) of the run to resume; refuses other settings or
    another collection (train/resume_check.py) before anything is written."""
    if not (run_dir / CONFIG_FILE).exists():
        raise RunError(f"{run_dir}: nothing to resume (no {CONFIG_FILE}); start a run with --out {run_dir}.")
    try:
        saved = json.loads((run_dir / CONFIG_FILE).read_text(encoding="utf-8"))
        saved_cfg = TrainConfig.from_json(saved["config"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise RunError(f"{run_dir / CONFIG_FILE}: unreadable ({e}); the run cannot be resumed. Start it again "
                       f"with another --out.") from e
    check_config(saved_cfg, cfg, run_dir)
    check_collection(saved.get(FINGERPRINT_KEY), collection, run_dir, warn)
    fingerprint = saved.get(FINGERPRINT_KEY) or collection_fingerprint(collection)
    return saved.get("weights", weights), load_splits(run_dir / SPLITS_FILE), fingerprint


def _new_run_inputs(run_dir: Path, weights: str, resume_from) -> tuple[str, dict | None]:
    """(start weights, previous splits) of a new run; refuses a folder that holds a run."""
    ckpt_dir = run_dir / CHECKPOINT_DIR
    if ckpt_dir.exists() and any(ckpt_dir.iterdir()):
        raise RunError(f"{run_dir}: already holds a run; pass --resume to continue it or choose another --out.")
    if resume_from is None:
        return weights, None
    src = resolve_path(resume_from)
    if not (src / WEIGHTS_DIR).exists():
        raise RunError(f"{src}: no {WEIGHTS_DIR}/ (a finished run's best weights); cannot --resume-from it.")
    return str(src / WEIGHTS_DIR), load_splits(src / SPLITS_FILE) if (src / SPLITS_FILE).exists() else None


class _NewRunUndo:
    """What a new run created in its folder, removed again when it fails before training starts.

    Only a folder that did not exist or was empty is cleaned (then everything in it is the run's); a run
    started in a folder holding other files leaves them, and its own, alone.
    """

    def __init__(self, run_dir: Path):
        self.run_dir = run_dir
        self.existed = run_dir.exists()
        self.fresh = not self.existed or (run_dir.is_dir() and not any(run_dir.iterdir()))

    def remove_created(self) -> None:
        if not self.fresh or not self.run_dir.is_dir():
            return
        import shutil

        if not self.existed:
            shutil.rmtree(self.run_dir, ignore_errors=True)
            return
        for child in self.run_dir.iterdir():
            if child.is_dir() and not child.is_symlink():
                shutil.rmtree(child, ignore_errors=True)
            else:
                child.unlink(missing_ok=True)


def _report_stale_exports(run_dir: Path, warn) -> None:
    for path in remove_stale_exports(run_dir / WEIGHTS_DIR):
        warn(f"removed {path}, left by a weights export that was killed")


def _plot(run_dir: Path, warn) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    recs = read_metrics(run_dir / METRICS_FILE, warn)
    steps = [r for r in recs if "loss" in r]
    epochs = [r for r in recs if "val" in r and "mAP" in r["val"]]
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 4))
    a1.plot([r["step"] for r in steps], [r["loss"] for r in steps])
    a1.set_xlabel("step")
    a1.set_ylabel("training loss (mean over the log interval)")
    a2.plot([r["epoch"] for r in epochs], [r["val"]["mAP"] for r in epochs], marker="o", label="val mAP")
    a2.plot([r["epoch"] for r in epochs], [r["val"].get("recall@10", float("nan")) for r in epochs], marker="s",
            label="val recall@10")
    a2.set_xlabel("epoch (0 = start)")
    a2.legend()
    fig.tight_layout()
    try:
        atomic_write(run_dir / "curves.png", lambda tmp: fig.savefig(tmp, dpi=100, format="png"))
    finally:
        plt.close(fig)


def run_training(
    collection_dir: str | Path,
    run_dir: str | Path,
    cfg: TrainConfig,
    *,
    weights: str = "random",
    resume: bool = False,
    resume_from: str | Path | None = None,
    progress: bool = True,
    extra_config: dict | None = None,
) -> RunResult:
    """Train (or continue training) into `run_dir`; see the module docstring for what is written."""
    run_dir = resolve_path(run_dir)  # relative paths, ~ and symlinks: orbax needs absolute paths
    main = is_main()

    def log(msg: str) -> None:
        if main:
            print(msg, flush=True)

    def warn(msg: str) -> None:
        if main:
            print(f"warning: {msg}", file=sys.stderr, flush=True)

    # Read once (quietly: the validation below reports what the reader had to guess, once).
    collection = load_collection(resolve_path(collection_dir), quiet=True)
    refuse_invalid_collection(collection, warn)
    ckpt_dir = run_dir / CHECKPOINT_DIR
    if resume:
        weights, previous_splits, fingerprint = _resume_inputs(run_dir, cfg, collection, weights, warn)
        if main:
            _report_stale_exports(run_dir, warn)
    else:
        weights, previous_splits = _new_run_inputs(run_dir, weights, resume_from)
        fingerprint = collection_fingerprint(collection)
    weights = weights if weights == "random" else str(resolve_path(weights))
    # Damaged or unfitting start weights stop the run here, before anything is prepared or written.
    start_model = _start_model(cfg, weights)
    undo = None if resume else _NewRunUndo(run_dir)
    ckpts = None
    try:  # until training starts: a new run that fails here leaves no half-made run folder
        run_dir.mkdir(parents=True, exist_ok=True)
        if main:
            save_config(cfg, run_dir / CONFIG_FILE, {"weights": weights, "collection": fingerprint["folder"],
                                                     FINGERPRINT_KEY: fingerprint, **(extra_config or {})})
        ctx = _prepare(collection, cfg, run_dir, start_model, weights, previous_splits, log)
        del start_model  # ctx holds its parameters
        embed_fn = make_embed_fn(ctx.eval_graphdef, ctx.eval_mesh)
        metrics_log = MetricsLog(run_dir / METRICS_FILE, main, warn)
        start_eval, start_computed = _start_eval(ctx, progress=progress and main, main=main, warn=warn)

        def like_of(meta: dict):
            """The state structure of a checkpoint (its optimizer's schedule length comes from its meta)."""
            return replicate(init_state(ctx.params, ctx.rest, make_optimizer(cfg, ctx.params, meta["total_steps"]),
                                        cfg.seed), ctx.mesh)

        ckpts = RunCheckpoints(ckpt_dir, keep=cfg.keep_checkpoints)
        restored = ckpts.restore_newest(like_of, warn) if resume else None
        latest = restored[0] if restored is not None else None
        iter_workers = resolved_workers(cfg)  # of the iterator whose state a checkpoint stores

        def build(num_triplets: int):
            spe = num_triplets // cfg.batch_size
            if spe == 0:
                raise RunError(f"{num_triplets} triplets < batch_size {cfg.batch_size}: lower --set batch_size.")
            total = spe * cfg.epochs
            opt = make_optimizer(cfg, ctx.params, total)
            return spe, total, opt

        if restored is None:
            # Epoch 0 of the curves, the first mining and the start's candidacy for the best epoch use the same
            # path as every later epoch. Records of an attempt killed before its first checkpoint are dropped.
            sig0 = _embed_all(ctx, embed_fn, ctx.params, ctx.rest)
            val0 = _evaluate(ctx, sig0, "val")
            metrics_log.truncate_after(-1)
            metrics_log.write({"step": 0, "epoch": 0, "val": val0})
            log(_start_line(start_eval, val0.get("mAP")))
            # Triplets of the first epoch fix the number of steps per epoch (and the schedule length).
            triplets = _mine(ctx, sig0)
            steps_per_epoch_0, total_steps, opt = build(len(triplets))
            state = replicate(init_state(ctx.params, ctx.rest, opt, cfg.seed), ctx.mesh)
            epoch, rnd, step_in_epoch, data_state, best = 0, 0, 0, None, _start_candidate(val0)
        else:
            _, state, triplets, meta = restored
            steps_per_epoch_0, total_steps = meta["steps_per_epoch"], meta["total_steps"]
            opt = make_optimizer(cfg, ctx.params, total_steps)
            state = replicate(state, ctx.mesh)
            epoch, rnd, step_in_epoch = meta["epoch"], meta["round"], meta["step_in_epoch"]
            data_state, best = meta["data_state"], meta.get("best")
            if data_state is not None:  # the saved position is in the format of the iterator that made it
                iter_workers = meta.get("workers", iter_workers)
            metrics_log.truncate_after(int(meta["step"]))
            if start_computed:
                log(_start_line(start_eval, _val_by_epoch(metrics_log.records()).get("0")))
            log(_resumed_line(latest, epoch, step_in_epoch, steps_per_epoch_0, cfg.epochs))
    except BaseException:
        if ckpts is not None:
            ckpts.close()
        if undo is not None and main:
            undo.remove_created()
        raise

    schedule = make_schedule(cfg, total_steps)
    with_groups = cfg.in_batch_negatives
    step_fn = make_train_step(ctx.train_graphdef, opt, cfg, ctx.mesh, with_groups=with_groups)
    group_ids = ctx.inputs.group.astype(np.int32)
    losses: list[float] = []
    last_ckpt = latest
    status = "finished"
    global_step = int(state.step)

    def meta_now(data_state_now):
        return {"epoch": epoch, "round": rnd, "step_in_epoch": step_in_epoch, "data_state": data_state_now,
                "best": best, "num_triplets": int(len(triplets)), "steps_per_epoch": steps_per_epoch_0,
                "total_steps": total_steps, "step": global_step, "config": cfg.to_json(),
                "workers": iter_workers}

    def save(data_state_now, val_map=None):
        nonlocal last_ckpt
        ckpts.save(global_step, state, triplets, meta_now(data_state_now), val_map=val_map)
        last_ckpt = global_step

    def to_device(batch):
        """Host batch -> the step's device arguments (runs in the prefetch thread)."""
        args = (global_batch(batch["images"], ctx.mesh),)
        if with_groups:
            args += (global_groups(group_ids[batch["triplets"].T], ctx.mesh),)
        return args

    def prefetch(it) -> DevicePrefetcher:
        return DevicePrefetcher(it, to_device, size=cfg.prefetch)

    stop = GracefulStop()
    batches: DevicePrefetcher | None = None
    with stop, _WaitOnError(ckpts), _ClosePrefetch(lambda: batches):
        while epoch < cfg.epochs:
            if data_state is None:
                iter_workers = resolved_workers(cfg)
            batches = prefetch(_make_iterator(ctx, triplets, epoch, rnd, data_state, workers=iter_workers))
            data_state_now = data_state
            bar = None
            if progress and main:
                from tqdm import tqdm

                bar = tqdm(total=steps_per_epoch_0, initial=step_in_epoch, desc=f"epoch {epoch + 1}/{cfg.epochs}",
                           unit="step", dynamic_ncols=True)
            pending: list = []
            t_last, n_last = time.time(), 0
            stopped = False
            while step_in_epoch < steps_per_epoch_0:
                batch = next(batches)
                data_state_now = batch.state  # the iterator's position right after this batch
                state, m = step_fn(state, *batch.value)
                global_step += 1
                step_in_epoch += 1
                pending.append(m["loss"])
                n_last += 1
                if bar is not None:
                    bar.update(1)
                boundary = step_in_epoch == steps_per_epoch_0
                want_ckpt = (cfg.checkpoint_every and global_step % cfg.checkpoint_every == 0)
                hit_max = cfg.max_steps and global_step >= cfg.max_steps
                if len(pending) >= cfg.log_every or boundary or want_ckpt or hit_max or stop.requested:
                    vals = [float(v) for v in pending]
                    for k, v in enumerate(vals):
                        check_finite(v, global_step - len(vals) + k + 1, last_ckpt, run_dir)
                    losses.extend(vals)
                    dt = time.time() - t_last
                    rec = {"step": global_step, "epoch": epoch + step_in_epoch / steps_per_epoch_0,
                           "loss": float(np.mean(vals)), "img_per_s": 3 * cfg.batch_size * n_last / max(dt, 1e-9),
                           "lr": float(schedule(global_step - 1))}
                    metrics_log.write(rec)
                    if bar is not None:
                        bar.set_postfix(loss=f"{rec['loss']:.4f}", img_s=f"{rec['img_per_s']:.1f}")
                    pending, t_last, n_last = [], time.time(), 0
                if cfg.remine_every and step_in_epoch % cfg.remine_every == 0 and not boundary:
                    sig = _embed_all(ctx, embed_fn, state.params, state.rest)
                    triplets, rnd = _mine(ctx, sig), rnd + 1
                    batches.close()
                    iter_workers = resolved_workers(cfg)
                    batches = prefetch(_make_iterator(ctx, triplets, epoch, rnd, None, workers=iter_workers))
                    data_state_now = None  # the new round's iterator starts from its beginning
                if boundary:
                    break  # the epoch-end block below checkpoints (and stops if asked to)
                if want_ckpt or hit_max or stop.requested:
                    save(data_state_now)
                if hit_max or stop.requested:
                    stopped = True
                    break
            batches.close()
            if bar is not None:
                bar.close()
            if stopped:
                status = "stopped"
                log(f"stopped at step {global_step} ({'signal' if stop.requested else 'max_steps'}); "
                    f"continue with --resume")
                break
            # Epoch boundary: embed with the new parameters, validate, mine the next epoch's triplets.
            sig = _embed_all(ctx, embed_fn, state.params, state.rest)
            val = _evaluate(ctx, sig, "val")
            epoch, rnd, step_in_epoch, data_state = epoch + 1, 0, 0, None
            metrics_log.write({"step": global_step, "epoch": epoch, "val": val})
            vmap = val.get("mAP")
            if vmap is not None and (best is None or vmap > best["mAP"]):
                best = {"mAP": vmap, "step": global_step, "epoch": epoch}
            log(f"epoch {epoch}: val mAP {vmap if vmap is not None else float('nan'):.4f} "
                f"recall@10 {val.get('recall@10', float('nan')):.4f}")
            if epoch < cfg.epochs:
                triplets = _mine(ctx, sig)
            save(None, val_map=vmap)
            if (stop.requested or (cfg.max_steps and global_step >= cfg.max_steps)) and epoch < cfg.epochs:
                status = "stopped"
                log(f"stopped at step {global_step} (end of epoch {epoch}); continue with --resume")
                break
    ckpts.wait()

    result = RunResult(run_dir, status, global_step, start_eval=start_eval, losses=losses,
                       best_step=best["step"] if best else None)
    if status != "finished":
        ckpts.close()
        return result

    # Finished: the best by val mAP among the start (epoch 0) and the epochs (the last state without val queries).
    start_val = _val_by_epoch(metrics_log.records()).get("0")
    final_state, best = _exported_state(ckpts, best, state, global_step, start_val, warn)
    result.best_step = best["step"] if best else None
    result.selected = "start" if final_state is None else "trained"
    if result.selected == "start":  # no epoch beat the start: export the start, never something worse
        ckpts.close()
        final_eval = start_eval
        final_sig = load_signatures(run_dir / START_SIGNATURES_FILE) if main else None
    else:
        ckpts.close()
        final_sig = _embed_files(ctx, final_state.params, final_state.rest, progress=progress and main)
        final_eval = {s: _evaluate_sig(ctx, final_sig, s) for s in ("val", "test")}
    result.final_eval = final_eval
    if main:
        meta = {**ctx.start_meta, "run": str(run_dir), "step": best["step"] if best else global_step,
                "seed": cfg.seed, "trained": result.selected == "trained", "selected": result.selected}
        final_sig.meta.update(meta)
        save_signatures(run_dir / SIGNATURES_FILE, final_sig)
        epoch_vals = _val_by_epoch(metrics_log.records())
        _write_json(run_dir / EVAL_FILE, {
            "start": start_eval, "trained": final_eval, "best": best, "steps": global_step,
            "selected_by": "val mAP", "selected": result.selected, "val_mAP_by_epoch": epoch_vals,
            "weights_start": str(weights),
            "note": "both rows: signatures from the original image files (as `python -m model embed`), "
                    "whole collection ranked, same splits and metric code; `trained` is the exported network "
                    "(the start itself when `selected` is `start`); val_mAP_by_epoch: the prepared dataset's "
                    "val mAP that selected it (epoch 0 = the start)",
        })
        if result.selected == "start":  # reloaded: training consumed (donated) the start's device arrays
            model = _start_model(cfg, weights)
        else:
            model = nnx.merge(ctx.eval_graphdef, jax.device_get(final_state.params), jax.device_get(final_state.rest))
        save_weights(model, run_dir / WEIGHTS_DIR, meta)
        _plot(run_dir, warn)
        if result.selected == "start":
            log(_start_kept_line(epoch_vals))
        log(f"done: test mAP {start_eval['test'].get('mAP', float('nan')):.4f} -> "
            f"{final_eval['test'].get('mAP', float('nan')):.4f}; outputs in {run_dir}")
    return result


def _exported_state(ckpts: RunCheckpoints, best: dict | None, state, global_step: int, start_val: float | None,
                    warn) -> tuple[object | None, dict | None]:
    """(state to export, or None for the start; the best record that describes it).

    Normally the best epoch's checkpoint (retention keeps it: train/checkpointing.py `rank`). If it is
    missing or damaged anyway (deleted by hand, a disk error, a run of an older version that kept another
    of two tied checkpoints), the run does not fail for good at its very end, and every later --resume with
    it: the best checkpoint left is exported, with a warning, or the start if it is at least as good.
    """
    if best is None:
        return state, None  # no val queries: the last state
    if best["epoch"] == 0:
        return None, best
    problem = None
    for cand in _export_candidates(ckpts, best, global_step):
        if cand is not best and start_val is not None and (cand["mAP"] is None or cand["mAP"] <= start_val):
            break  # what is left is no better than the start: export the start
        try:
            chosen = state if cand["step"] == global_step else ckpts.restore(cand["step"], state)[0]
        except Exception as e:  # noqa: BLE001 - a missing or damaged checkpoint: try the next best
            silence_restore_echoes()
            problem = problem or f"{ckpts.directory / str(cand['step'])} ({restore_error_text(e)})"
            continue
        if cand is not best:
            warn(f"the checkpoint of the best epoch (epoch {best['epoch']}, step {best['step']}, val mAP "
                 f"{best['mAP']:.4f}) cannot be restored: {problem}. Exported the best one left instead: epoch "
                 f"{cand['epoch']} (step {cand['step']}, val mAP {cand['mAP']:.4f}).")
        return chosen, cand
    warn(f"the checkpoint of the best epoch (epoch {best['epoch']}, step {best['step']}) cannot be restored: "
         f"{problem}; no checkpoint left beats the starting network on val, so the start is exported.")
    return None, {"mAP": start_val, "step": 0, "epoch": 0}


def _export_candidates(ckpts: RunCheckpoints, best: dict, global_step: int):
    """The chosen best, then every other checkpoint with a val mAP on disk, best first (`rank` order)."""
    yield best
    steps = [s for s in ckpts.all_steps() if s != best["step"] and ckpts.val_map(s) is not None]
    for step in sorted(steps, key=lambda s: (ckpts.val_map(s), -s), reverse=True):
        try:
            epoch = int(ckpts.restore_meta(step)["epoch"])
        except Exception:  # noqa: BLE001 - its meta is damaged: so is the checkpoint
            silence_restore_echoes()
            continue
        yield {"mAP": ckpts.val_map(step), "step": step, "epoch": epoch}


def _start_model(cfg: TrainConfig, weights: str):
    """The starting network in eval mode, built exactly as `_prepare` builds it."""
    model = load_or_init(weights, cfg.arch, seed=cfg.seed, dtype="float32", pooling=cfg.pooling)
    set_mode(model, training=False)
    return model


def _val_by_epoch(records: list[dict]) -> dict[str, float]:
    """{epoch: val mAP} from the metrics log's epoch records (epoch 0: the start), as selection saw them."""
    return {str(int(r["epoch"])): r["val"]["mAP"] for r in records
            if isinstance(r.get("val"), dict) and r["val"].get("mAP") is not None}


def _start_kept_line(epoch_vals: dict[str, float]) -> str:
    start = epoch_vals.get("0", float("nan"))
    trained = {e: v for e, v in epoch_vals.items() if e != "0"}
    best = max(trained, key=trained.get) if trained else None
    beaten = f"the best epoch ({best}) reached {trained[best]:.4f}" if best else "no epoch was validated"
    return (f"selected the START network: no epoch beat it on val (val mAP {start:.4f} at the start; {beaten}). "
            f"Exported the starting weights and signatures; try a lower learning rate or more connections.")


def final_params(run_dir: str | Path):
    """The parameters of a run's newest checkpoint as a NumPy tree (for tests and tools)."""
    ck = RunCheckpoints(Path(run_dir) / CHECKPOINT_DIR)
    step = ck.latest_step()
    raw = ck.manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore()))
    ck.close()
    return raw["state"]


