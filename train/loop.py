"""The training run: `run_training` = set up, train, finish (the run folder's layout: train/run_folder.py).

- `_set_up`: read and check the collection, find what the run starts from (`RunFolder.start`: a new run,
  `--resume`, `--resume-from`), prepare the dataset, evaluate the starting network, then restore the
  newest checkpoint, or validate the start as every epoch is validated and mine the first triplets (their
  number fixes the steps per epoch, hence the schedule's length).
- `_train`: ONE loop over global steps. After each step, every periodic action is a gate on the step:
      log          every `log_every` steps, at an epoch end, and before a checkpoint
      epoch end    every `steps_per_epoch` steps: validate, keep the best, mine the next epoch's triplets,
                   checkpoint with the val mAP; stop there if asked to
      re-mine      every `remine_every` steps within an epoch (not at its end): new triplets, new iterator
      checkpoint   every `checkpoint_every` steps, and before stopping
      stop         at `max_steps` or on SIGTERM/SIGINT (train/checkpointing.py GracefulStop)
  Where the loop is (`LoopState`) is exactly what a checkpoint's meta records.
- `_finish`: the best network on val among the start (epoch 0) and every epoch's is exported (signatures,
  weights, eval.json, curves): a run that never beats its start exports the start and says so (eval.json
  "selected": "start", the log).

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

from data.atomic import atomic_write_text
from data.augment import AugmentConfig, prepared_side
from data.collection import Collection, load_collection
from data.image import note_lines
from data.paths import resolve_path
from data.pipeline import PreparedSource, open_prepared, triplet_dataset
from data.signatures import Signatures, load_signatures, save_signatures
from data.splits import SPLITS_FILE, assign_splits, load_previous, save_splits
from data.validate import validate
from model.embed import embed_collection, local_mesh, make_embed_fn
from model.registry import build_abstract
from model.signature import set_mode
from model.weights import load_or_init, restore_error_text, save_weights, silence_restore_echoes
from train.checkpointing import GracefulStop, RunCheckpoints, check_finite
from train.config import TrainConfig, resolved_workers, save_config
from train.distributed import is_main, prepare_once
from train.embedding import embed_indices, local_copy
from train.metrics import evaluate_split
from train.metrics_log import MetricsLog, plot_curves, val_by_epoch
from train.mining import MiningInputs, mine_triplets
from train.optim import make_optimizer, make_schedule
from train.plan import Plan, measured_step_time, steps_per_epoch, train_inputs
from train.prefetch import DevicePrefetcher, Prefetched
from train.run_folder import NewRunUndo, RunError, RunFolder, RunStart
from train.step import (
    global_batch,
    global_groups,
    init_state,
    make_mesh,
    make_train_step,
    replicate,
    split_model,
)


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


@dataclass(frozen=True)
class _Console:
    """The run's messages: progress lines on stdout, `warning:` lines on stderr, from process 0 only."""

    main: bool

    def log(self, msg: str) -> None:
        if self.main:
            print(msg, flush=True)

    def warn(self, msg: str) -> None:
        if self.main:
            print(f"warning: {msg}", file=sys.stderr, flush=True)


def _write_json(path: Path, obj) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=float))


# --- what a run computes once ---------------------------------------------------------------------------


@dataclass
class _Context:
    """Everything a run computes once: collection, splits, data source, model graphs, meshes."""

    cfg: TrainConfig
    folder: RunFolder
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


def _save_splits(collection: Collection, folder: RunFolder, assignment, log) -> None:
    """The run's splits.json, and the collection's if it has none (so that later rounds keep the same splits:
    a test image never becomes a training image)."""
    if not is_main():
        return
    save_splits(folder.splits, assignment)
    coll_splits = collection.root / SPLITS_FILE
    if not coll_splits.exists():
        try:
            save_splits(coll_splits, assignment)
        except OSError as e:
            log(f"could not write {coll_splits} ({e}); later rounds should pass this run's splits.json")


def _prepare(collection: Collection, cfg: TrainConfig, folder: RunFolder, model, weights: str,
             previous_splits: dict | None, log) -> _Context:
    """Everything a run computes once; `model` is the starting network (`_start_model`, loaded first so that
    damaged start weights stop the run before anything is prepared or written)."""
    prepared = prepare_once(collection, max_side=prepared_side(cfg.resolution))
    source = open_prepared(prepared.path)
    if source.skipped:
        log(f"{len(source.skipped)} unreadable images skipped (first: {sorted(source.skipped.items())[:3]})")
    if is_main():  # what the decoder corrected or found damaged, by uid and file (like `data check`)
        for line in note_lines(prepared.notes, collection=collection.root):
            print(line, file=sys.stderr, flush=True)
    previous = previous_splits if previous_splits is not None else load_previous(collection)
    assignment = assign_splits(collection, previous)
    _save_splits(collection, folder, assignment, log)
    group_name = assignment.group_of()
    inputs = train_inputs(collection, assignment.split_of, assignment.connections("train"),
                          skipped=list(source.skipped))
    present = np.array([collection.uids[i] not in source.skipped for i in range(len(collection.uids))], bool)

    # Start weights: f32 parameters (and the same ones `model embed --weights W --seed N` uses).
    eval_graphdef, params, rest = split_model(model)
    train_model = build_abstract(model.arch, dtype=cfg.compute_dtype, pooling=model.pooling, gem_p=model.gem_p,
                                 gem_learnable=model.gem_learnable, remat=cfg.remat)
    set_mode(train_model, training=True, freeze_bn=cfg.freeze_bn)
    train_graphdef = nnx.split(train_model, nnx.Param, ...)[0]
    mesh = make_mesh()
    eval_mesh = local_mesh()  # the mesh `model.embed` uses for the export too: one compiled forward
    if cfg.batch_size % mesh.devices.size:
        raise RunError(f"batch_size {cfg.batch_size} must be a multiple of the {mesh.devices.size} devices "
                       f"(--set batch_size=...).")
    return _Context(cfg, folder, collection, assignment.split_of, group_name, inputs, source, present, mesh,
                    eval_mesh, train_graphdef, eval_graphdef, params, rest,
                    {"arch": model.arch, "pooling": model.pooling, "weights": str(weights)})


def _start_model(cfg: TrainConfig, weights: str):
    """The starting network in eval mode, built exactly as `_prepare` builds it."""
    model = load_or_init(weights, cfg.arch, seed=cfg.seed, dtype="float32", pooling=cfg.pooling)
    set_mode(model, training=False)
    return model


# --- embedding, evaluation, mining, batches -----------------------------------------------------------------


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
    """Signatures from the original image files with `model.embed` (what `python -m model embed` writes): streamed
    through the input pipeline's `workers` processes onto every local device. Under jax.distributed a collective:
    process p embeds the chunks k % P == p and the chunks are all-gathered, so every process holds the same
    signatures (each evaluates val and test with them; process 0 exports them), byte for byte one process's."""
    params, rest = local_copy(params, ctx.eval_mesh), local_copy(rest, ctx.eval_mesh)
    model = nnx.merge(ctx.eval_graphdef, jax.device_get(params), jax.device_get(rest))
    # quiet: preparing the dataset reported the unreadable images and the decoder's corrections already
    return embed_collection(ctx.collection, model, resolution=ctx.cfg.resolution,
                            batch_size=ctx.cfg.eval_batch_size, progress=progress, quiet=True,
                            workers=resolved_workers(ctx.cfg))


def _on_every_process(flag: bool) -> bool:
    """Whether `flag` holds on every process: a decision that leads into a collective must be the same on all
    (a start_eval.json one host read and another did not, say on a network file system, would hang the run)."""
    if jax.process_count() == 1:
        return flag
    from jax.experimental import multihost_utils

    return bool(np.asarray(multihost_utils.process_allgather(np.int32(flag))).all())


def _evaluate_sig(ctx: _Context, sig: Signatures, split: str) -> dict:
    return evaluate_split(sig.vectors, sig.uids, ctx.group_name, ctx.split_of, split)


def _evaluate(ctx: _Context, sig: np.ndarray, split: str) -> dict:
    idx = np.flatnonzero(ctx.present)
    uids = [ctx.collection.uids[i] for i in idx]
    return evaluate_split(sig[idx], uids, ctx.group_name, ctx.split_of, split)


def _mine(ctx: _Context, sig: np.ndarray, epoch: int) -> np.ndarray:
    """The triplets of epoch `epoch` (0-based): its number moves the window over annotated negatives on, so a
    resumed run, which re-mines at the same epoch ends from the same parameters, gets the same triplets."""
    return mine_triplets(sig, ctx.inputs, num_negatives=ctx.cfg.num_negatives,
                         annotated_share=ctx.cfg.annotated_negative_share, epoch=epoch)


def _iterator_seed(seed: int, epoch: int, rnd: int) -> int:
    return (seed * 1_000_003 + epoch * 1_009 + rnd) % (2**31 - 1)


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


# --- the loop's state: what a checkpoint's meta records ------------------------------------------------------


@dataclass
class LoopState:
    """Where the run is. `step` counts global steps; the epoch's end is a condition on it (`steps_per_epoch`,
    fixed by the first mining); `meta()` is a checkpoint's meta, `from_meta` reads it back."""

    state: object  # TrainState, replicated over the mesh
    triplets: np.ndarray  # the current mining round's
    step: int
    epoch: int  # epochs done
    round: int  # re-minings done within the epoch
    data_state: object | None  # the iterator's position after the last batch used; None: the round's start
    best: dict | None  # {"mAP", "step", "epoch"} of the best validation so far (epoch 0: the start)
    workers: int  # decode processes of the iterator whose position `data_state` is
    steps_per_epoch: int
    total_steps: int
    last_checkpoint: int | None = None

    @property
    def step_in_epoch(self) -> int:
        return self.step - self.epoch * self.steps_per_epoch

    def meta(self, cfg: TrainConfig) -> dict:
        return {"epoch": self.epoch, "round": self.round, "step_in_epoch": self.step_in_epoch,
                "data_state": self.data_state, "best": self.best, "num_triplets": int(len(self.triplets)),
                "steps_per_epoch": self.steps_per_epoch, "total_steps": self.total_steps, "step": self.step,
                "config": cfg.to_json(), "workers": self.workers}

    @classmethod
    def from_meta(cls, state, triplets: np.ndarray, meta: dict, *, workers: int, checkpoint: int) -> LoopState:
        """`workers`: this run's decode processes, used unless the saved position needs the saved count."""
        data_state = meta["data_state"]
        if data_state is not None:  # the saved position is in the format of the iterator that made it
            workers = meta.get("workers", workers)
        return cls(state, triplets, int(state.step), meta["epoch"], meta["round"], data_state, meta.get("best"),
                   workers, meta["steps_per_epoch"], meta["total_steps"], checkpoint)


def _optimizer(ctx: _Context, total_steps: int):
    return make_optimizer(ctx.cfg, ctx.params, total_steps)


# --- set-up -----------------------------------------------------------------------------------------------------


@dataclass
class _Run:
    """A run set up: what it computed once, its logs and checkpoints, the start's figures."""

    ctx: _Context
    console: _Console
    weights: str  # the start weights ("random" or a folder)
    embed_fn: object
    metrics: MetricsLog
    ckpts: RunCheckpoints
    start_eval: dict
    progress: bool  # progress bars (process 0 only)

    @property
    def cfg(self) -> TrainConfig:
        return self.ctx.cfg

    @property
    def folder(self) -> RunFolder:
        return self.ctx.folder


def _start_eval(ctx: _Context, *, progress: bool, main: bool, warn) -> tuple[dict, bool]:
    """Retrieval of the starting network, embedded exactly as `python -m model embed` does (original files),
    and whether it was computed now.

    Computed once per run; a resume reuses the files unless they are damaged (then computed again: the
    start is deterministic, so the figures are the same).
    """
    start_eval = ctx.folder.saved_start_eval(warn)
    if _on_every_process(start_eval is not None):  # else all compute it: the embedding is a collective
        return start_eval, False
    start_sig = _embed_files(ctx, ctx.params, ctx.rest, progress=progress)
    start_sig.meta.update({**ctx.start_meta, "seed": ctx.cfg.seed, "trained": False})
    start_eval = {s: _evaluate_sig(ctx, start_sig, s) for s in ("val", "test")}
    if main:
        save_signatures(ctx.folder.start_signatures, start_sig)
        _write_json(ctx.folder.start_eval, start_eval)
    return start_eval, True


NO_VAL_LINE = ("start: no val queries (no image of split val has a partner in the collection), so the epochs "
               "cannot be compared: every epoch is trained and the LAST one is exported. To select the best "
               "epoch, hold out some pattern groups as val: the split column of connections.csv for groups not "
               "yet in splits.json (docs/training.md, \"Without val groups\").")


def _start_line(start_eval: dict, prepared_val: float | None) -> str:
    """The start's val mAP on both paths, named: eval.json's (original files, as `model embed`) and the
    prepared dataset's that every epoch is compared with. Printed alone, the first looked like a drop at
    epoch 1 whenever the two differ (downscaled JPEGs of the prepared dataset against the original files)."""
    if start_eval["val"].get("mAP") is None:
        return NO_VAL_LINE
    line = f"start: val mAP {start_eval['val']['mAP']:.4f} on the original files"
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


def _first_round(run: _Run) -> LoopState:
    """A new run's loop state: the start validated on the training path (epoch 0 of the curves, the start's
    candidacy for the best epoch) and the first epoch's triplets, which fix the steps per epoch."""
    ctx = run.ctx
    sig0 = _embed_all(ctx, run.embed_fn, ctx.params, ctx.rest)
    val0 = _evaluate(ctx, sig0, "val")
    run.metrics.truncate_after(-1)  # records of an attempt killed before its first checkpoint
    run.metrics.write({"step": 0, "epoch": 0, "val": val0})
    run.console.log(_start_line(run.start_eval, val0.get("mAP")))
    triplets = _mine(ctx, sig0, 0)
    spe = steps_per_epoch(len(triplets), ctx.cfg.batch_size)
    total = spe * ctx.cfg.epochs
    state = replicate(init_state(ctx.params, ctx.rest, _optimizer(ctx, total), ctx.cfg.seed), ctx.mesh)
    return LoopState(state, triplets, int(state.step), 0, 0, None, _start_candidate(val0),
                     resolved_workers(ctx.cfg), spe, total)


def _restored_round(run: _Run, restored: tuple, start_computed: bool) -> LoopState:
    """The loop state of the newest checkpoint that restores; the metrics log cut back to its step."""
    step, state, triplets, meta = restored
    ls = LoopState.from_meta(replicate(state, run.ctx.mesh), triplets, meta, workers=resolved_workers(run.cfg),
                             checkpoint=step)
    run.metrics.truncate_after(int(meta["step"]))
    if start_computed:
        run.console.log(_start_line(run.start_eval, val_by_epoch(run.metrics.records()).get("0")))
    run.console.log(_resumed_line(step, ls.epoch, ls.step_in_epoch, ls.steps_per_epoch, run.cfg.epochs))
    return ls


def _restore_newest(run: _Run) -> tuple | None:
    """(step, state, triplets, meta) of the newest checkpoint that restores (train/checkpointing.py)."""
    ctx = run.ctx

    def like_of(meta: dict):
        """The state structure of a checkpoint (its optimizer's schedule length comes from its meta)."""
        opt = _optimizer(ctx, meta["total_steps"])
        return replicate(init_state(ctx.params, ctx.rest, opt, ctx.cfg.seed), ctx.mesh)

    return run.ckpts.restore_newest(like_of, run.console.warn)


def _set_up(folder: RunFolder, collection: Collection, cfg: TrainConfig, start: RunStart, model, console: _Console,
            *, resume: bool, progress: bool, extra_config: dict | None) -> tuple[_Run, LoopState]:
    """Write config.json, prepare, evaluate the start, then restore or begin the loop state."""
    folder.root.mkdir(parents=True, exist_ok=True)
    if console.main:
        save_config(cfg, folder.config, folder.config_extra(start, extra_config))
    ctx = _prepare(collection, cfg, folder, model, start.weights, start.previous_splits, console.log)
    metrics = MetricsLog(folder.metrics, console.main, console.warn)
    start_eval, start_computed = _start_eval(ctx, progress=progress and console.main, main=console.main,
                                             warn=console.warn)
    ckpts = RunCheckpoints(folder.checkpoints, keep=cfg.keep_checkpoints)
    run = _Run(ctx, console, start.weights, make_embed_fn(ctx.eval_graphdef, ctx.eval_mesh), metrics, ckpts,
               start_eval, progress and console.main)
    try:
        restored = _restore_newest(run) if resume else None
        ls = _first_round(run) if restored is None else _restored_round(run, restored, start_computed)
    except BaseException:
        ckpts.close()
        raise
    return run, ls


# --- the step loop ----------------------------------------------------------------------------------------------


class _Batches:
    """The current mining round's batches, already on the devices (train/prefetch.py).

    Opened at an epoch's first step (or the first after a resume) and after a re-mining. As a context
    manager it stops the prefetch thread however the loop ends.
    """

    def __init__(self, ctx: _Context):
        self.ctx = ctx
        self.group_ids = ctx.inputs.group.astype(np.int32)
        self.current: DevicePrefetcher | None = None

    def _to_device(self, batch):
        """Host batch -> the step's device arguments (runs in the prefetch thread)."""
        args = (global_batch(batch["images"], self.ctx.mesh),)
        if self.ctx.cfg.in_batch_negatives:
            args += (global_groups(self.group_ids[batch["triplets"].T], self.ctx.mesh),)
        return args

    def open(self, ls: LoopState) -> None:
        """The iterator of (epoch, round) from `ls.data_state` (its start when None: with this run's workers)."""
        if ls.data_state is None:
            ls.workers = resolved_workers(self.ctx.cfg)
        it = _make_iterator(self.ctx, ls.triplets, ls.epoch, ls.round, ls.data_state, workers=ls.workers)
        self.current = DevicePrefetcher(it, self._to_device, size=self.ctx.cfg.prefetch)

    @property
    def closed(self) -> bool:
        return self.current is None

    def next(self) -> Prefetched:
        return next(self.current)

    def close(self) -> None:
        pf, self.current = self.current, None
        if pf is not None:
            pf.close()

    def __enter__(self) -> _Batches:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            self.close()
        except RuntimeError as e:
            if exc_type is None:
                raise
            print(f"warning: {e}", file=sys.stderr)  # do not hide the error that ended the run


class _LossLog:
    """The losses since the last record, turned into one record of metrics.jsonl; the epoch's progress bar."""

    def __init__(self, run: _Run, total_steps: int):
        self.run = run
        self.schedule = make_schedule(run.cfg, total_steps)
        self.pending: list = []
        self.losses: list[float] = []  # every step's, for RunResult
        self.t_last, self.n_last = time.time(), 0
        self.bar = None

    def begin_epoch(self, ls: LoopState) -> None:
        if self.run.progress:
            from tqdm import tqdm

            self.bar = tqdm(total=ls.steps_per_epoch, initial=ls.step_in_epoch, unit="step", dynamic_ncols=True,
                            desc=f"epoch {ls.epoch + 1}/{self.run.cfg.epochs}")
        self.pending, self.t_last, self.n_last = [], time.time(), 0

    def end_epoch(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def add(self, loss) -> None:
        self.pending.append(loss)
        self.n_last += 1
        if self.bar is not None:
            self.bar.update(1)

    def due(self) -> bool:
        return len(self.pending) >= self.run.cfg.log_every

    def flush(self, ls: LoopState) -> None:
        """Write the record of the pending steps (stop on a non-finite loss first: train/checkpointing.py)."""
        if not self.pending:
            return
        vals = [float(v) for v in self.pending]
        for k, v in enumerate(vals):
            check_finite(v, ls.step - len(vals) + k + 1, ls.last_checkpoint, self.run.folder.root)
        self.losses.extend(vals)
        dt = time.time() - self.t_last
        rec = {"step": ls.step, "epoch": ls.epoch + ls.step_in_epoch / ls.steps_per_epoch,
               "loss": float(np.mean(vals)), "img_per_s": 3 * self.run.cfg.batch_size * self.n_last / max(dt, 1e-9),
               "lr": float(self.schedule(ls.step - 1))}
        self.run.metrics.write(rec)
        if self.bar is not None:
            self.bar.set_postfix(loss=f"{rec['loss']:.4f}", img_s=f"{rec['img_per_s']:.1f}")
        self.pending, self.t_last, self.n_last = [], time.time(), 0


class _WaitOnError:
    """On an exception (NaN loss, Ctrl-C twice), let in-flight async checkpoints finish before unwinding."""

    def __init__(self, ckpts: RunCheckpoints):
        self.ckpts = ckpts

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self.ckpts.close()


def _checkpoint(run: _Run, ls: LoopState, losses: _LossLog, val_map: float | None = None) -> None:
    losses.flush(ls)  # the log is complete up to every checkpoint (a resume truncates it there)
    run.ckpts.save(ls.step, ls.state, ls.triplets, ls.meta(run.cfg), val_map=val_map)
    ls.last_checkpoint = ls.step


def _max_steps_hit(cfg: TrainConfig, ls: LoopState) -> bool:
    return bool(cfg.max_steps) and ls.step >= cfg.max_steps


def _remine(run: _Run, ls: LoopState, batches: _Batches) -> None:
    """New triplets from the current parameters; the new round's iterator starts from its beginning."""
    sig = _embed_all(run.ctx, run.embed_fn, ls.state.params, ls.state.rest)
    ls.triplets, ls.round = _mine(run.ctx, sig, ls.epoch), ls.round + 1
    batches.close()
    ls.data_state = None
    batches.open(ls)


def _end_epoch(run: _Run, ls: LoopState, batches: _Batches, losses: _LossLog, stop: GracefulStop) -> bool:
    """Validate, keep the best, mine the next epoch's triplets, checkpoint; True: stop here (asked to)."""
    batches.close()
    losses.end_epoch()
    sig = _embed_all(run.ctx, run.embed_fn, ls.state.params, ls.state.rest)
    val = _evaluate(run.ctx, sig, "val")
    ls.epoch, ls.round, ls.data_state = ls.epoch + 1, 0, None
    run.metrics.write({"step": ls.step, "epoch": ls.epoch, "val": val})
    vmap = val.get("mAP")
    if vmap is not None and (ls.best is None or vmap > ls.best["mAP"]):
        ls.best = {"mAP": vmap, "step": ls.step, "epoch": ls.epoch}
    run.console.log(f"epoch {ls.epoch}: val mAP {vmap:.4f} recall@10 {val.get('recall@10', float('nan')):.4f}"
                    if vmap is not None else f"epoch {ls.epoch}: trained (no val queries: not validated)")
    more = ls.epoch < run.cfg.epochs
    if more:
        ls.triplets = _mine(run.ctx, sig, ls.epoch)
    _checkpoint(run, ls, losses, val_map=vmap)
    if more and (stop.requested or _max_steps_hit(run.cfg, ls)):
        run.console.log(f"stopped at step {ls.step} (end of epoch {ls.epoch}); continue with --resume")
        return True
    return False


def _within_epoch(run: _Run, ls: LoopState, batches: _Batches, losses: _LossLog, stop: GracefulStop) -> bool:
    """The gates of a step inside an epoch: re-mine, checkpoint, stop; True: stop here."""
    cfg = run.cfg
    if cfg.remine_every and ls.step_in_epoch % cfg.remine_every == 0:
        _remine(run, ls, batches)
    checkpoint_due = cfg.checkpoint_every and ls.step % cfg.checkpoint_every == 0
    stopping = stop.requested or _max_steps_hit(cfg, ls)
    if checkpoint_due or stopping:
        _checkpoint(run, ls, losses)
    if not stopping:
        return False
    batches.close()
    losses.end_epoch()
    run.console.log(f"stopped at step {ls.step} ({'signal' if stop.requested else 'max_steps'}); "
                    f"continue with --resume")
    return True


def _train(run: _Run, ls: LoopState) -> tuple[str, list[float]]:
    """The flat step loop: ("finished" | "stopped", every step's loss)."""
    cfg = run.cfg
    step_fn = make_train_step(run.ctx.train_graphdef, _optimizer(run.ctx, ls.total_steps), cfg, run.ctx.mesh,
                              with_groups=cfg.in_batch_negatives)
    losses = _LossLog(run, ls.total_steps)
    status = "finished"
    stop = GracefulStop()
    with stop, _WaitOnError(run.ckpts), _Batches(run.ctx) as batches:
        while ls.step < ls.total_steps:
            if batches.closed:  # an epoch's first step, or the first after a resume
                batches.open(ls)
                losses.begin_epoch(ls)
            batch = batches.next()
            ls.state, m = step_fn(ls.state, *batch.value)
            ls.step, ls.data_state = ls.step + 1, batch.state  # the iterator's position right after this batch
            losses.add(m["loss"])
            epoch_end = ls.step_in_epoch == ls.steps_per_epoch
            checkpoint_due = cfg.checkpoint_every and ls.step % cfg.checkpoint_every == 0
            if losses.due() or epoch_end or checkpoint_due or stop.requested or _max_steps_hit(cfg, ls):
                losses.flush(ls)
            stopped = (_end_epoch if epoch_end else _within_epoch)(run, ls, batches, losses, stop)
            if stopped:
                status = "stopped"
                break
    run.ckpts.wait()
    return status, losses.losses


# --- finish: select, export ---------------------------------------------------------------------------------


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


def _start_kept_line(epoch_vals: dict[str, float]) -> str:
    start = epoch_vals.get("0", float("nan"))
    trained = {e: v for e, v in epoch_vals.items() if e != "0"}
    best = max(trained, key=trained.get) if trained else None
    beaten = f"the best epoch ({best}) reached {trained[best]:.4f}" if best else "no epoch was validated"
    return (f"selected the START network: no epoch beat it on val (val mAP {start:.4f} at the start; {beaten}). "
            f"Exported the starting weights and signatures; try a lower learning rate or more connections.")


_EVAL_NOTE = ("both rows: signatures from the original image files (as `python -m model embed`), whole collection "
              "ranked, same splits and metric code; `trained` is the exported network (the start itself when "
              "`selected` is `start`); val_mAP_by_epoch: the prepared dataset's val mAP that selected it (epoch 0 = "
              "the start)")


def _export(run: _Run, result: RunResult, final_state, final_sig: Signatures, best: dict | None) -> None:
    """Process 0 writes the exported network: signatures.npz, eval.json, weights/, curves.png; then says so."""
    cfg, folder, start = run.cfg, run.folder, result.selected == "start"
    meta = {**run.ctx.start_meta, "run": str(folder.root), "step": best["step"] if best else result.step,
            "seed": cfg.seed, "trained": not start, "selected": result.selected}
    final_sig.meta.update(meta)
    save_signatures(folder.signatures, final_sig)
    epoch_vals = val_by_epoch(run.metrics.records())
    _write_json(folder.eval, {
        "start": run.start_eval, "trained": result.final_eval, "best": best, "steps": result.step,
        "selected_by": "val mAP" if best is not None else "the last epoch (no val queries)",
        "selected": result.selected, "val_mAP_by_epoch": epoch_vals,
        "weights_start": str(run.weights), "note": _EVAL_NOTE,
    })
    if start:  # reloaded: training consumed (donated) the start's device arrays
        model = _start_model(cfg, run.weights)
    else:
        model = nnx.merge(run.ctx.eval_graphdef, jax.device_get(final_state.params), jax.device_get(final_state.rest))
    save_weights(model, folder.weights, {**meta, "resolution": cfg.resolution})
    plot_curves(run.metrics.records(), folder.curves)
    if start:
        run.console.log(_start_kept_line(epoch_vals))
    run.console.log(_done_line(run.start_eval["test"], result.final_eval["test"], best, folder.root))


def _done_line(start_test: dict, final_test: dict, best: dict | None, root: Path) -> str:
    """The run's last line: test mAP before -> after, and which network that is when no val selected it."""
    if start_test.get("mAP") is None:
        line = "done: no test queries (no image of split test has a partner), so no test mAP"
    else:
        line = f"done: test mAP {start_test['mAP']:.4f} -> {final_test.get('mAP', float('nan')):.4f}"
    if best is None:
        line += " (the last epoch's network: no val queries to select by)"
    return f"{line}; outputs in {root}"


def _finish(run: _Run, ls: LoopState, status: str, losses: list[float]) -> RunResult:
    """A stopped run: its result. A finished one: the best by val mAP among the start (epoch 0) and the epochs
    (the last state without val queries), evaluated from the original files and exported."""
    result = RunResult(run.folder.root, status, ls.step, start_eval=run.start_eval, losses=losses,
                       best_step=ls.best["step"] if ls.best else None)
    if status != "finished":
        run.ckpts.close()
        return result
    start_val = val_by_epoch(run.metrics.records()).get("0")
    final_state, best = _exported_state(run.ckpts, ls.best, ls.state, ls.step, start_val, run.console.warn)
    run.ckpts.close()
    result.best_step = best["step"] if best else None
    result.selected = "start" if final_state is None else "trained"
    if final_state is None:  # no epoch beat the start: export the start, never something worse
        result.final_eval = run.start_eval
        final_sig = load_signatures(run.folder.start_signatures) if run.console.main else None
    else:
        final_sig = _embed_files(run.ctx, final_state.params, final_state.rest, progress=run.progress)
        result.final_eval = {s: _evaluate_sig(run.ctx, final_sig, s) for s in ("val", "test")}
    if run.console.main:
        _export(run, result, final_state, final_sig, best)
    return result


# --- the run ------------------------------------------------------------------------------------------------------


def _log_plan(run: _Run, ls: LoopState, measured_in: str | Path | None) -> None:
    """Before the first step: triplets and steps per epoch, total steps, the estimated time (train/plan.py)."""
    inputs = run.ctx.inputs
    plan = Plan(len(ls.triplets), run.cfg.batch_size, run.cfg.epochs, positives=len(inputs.positives),
                negatives=len(inputs.negatives), done_steps=ls.step,
                step_time=measured_step_time(measured_in, run.cfg), steps_per_epoch=ls.steps_per_epoch)
    for line in plan.lines():
        run.console.log(line)


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
    """Train (or continue training) into `run_dir`; train/run_folder.py lists what is written."""
    folder = RunFolder(run_dir)
    console = _Console(is_main())
    # Read once (quietly: the validation below reports what the reader had to guess, once).
    collection = load_collection(resolve_path(collection_dir), quiet=True)
    refuse_invalid_collection(collection, console.warn)
    start = folder.start(cfg, collection, weights, resume=resume, resume_from=resume_from, warn=console.warn)
    if resume and console.main:
        folder.remove_stale_exports(console.warn)
    model = _start_model(cfg, start.weights)  # damaged or unfitting start weights stop the run here
    undo = None if resume else NewRunUndo(folder.root)
    try:  # until training starts: a new run that fails here leaves no half-made run folder
        run, ls = _set_up(folder, collection, cfg, start, model, console, resume=resume, progress=progress,
                          extra_config=extra_config)
    except BaseException:
        if undo is not None and console.main:
            undo.remove_created()
        raise
    del model  # the run's context holds its parameters
    _log_plan(run, ls, folder.root if resume else resume_from)
    status, losses = _train(run, ls)
    return _finish(run, ls, status, losses)


def final_params(run_dir: str | Path):
    """The parameters of a run's newest checkpoint as a NumPy tree (for tests and tools)."""
    ck = RunCheckpoints(RunFolder(run_dir).checkpoints)
    step = ck.latest_step()
    raw = ck.manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore()))
    ck.close()
    return raw["state"]
