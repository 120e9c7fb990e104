"""Checkpoints of a training run (orbax), graceful stop on signals, and the non-finite-loss guard.

A checkpoint (RUN_DIR/checkpoints/<step>/) holds everything needed to continue bit-for-bit:
- `state`: the TrainState (parameters, optimizer state, step, BN statistics / RNG state, base key);
- `mining`: the current triplets (the mining state: re-mining from restored parameters would give the
  same triplets, but storing them is cheap and removes any doubt);
- `meta` (JSON): epoch, mining round, steps done in the epoch, the grain iterator state (None at an
  epoch boundary), the best validation score so far, and the resolved config.
Retention: the last `keep` checkpoints plus the best one by validation mAP (only checkpoints taken
after a validation carry a metric; never selected on test); of checkpoints with equal val mAP the
EARLIEST is the best, as the loop chooses (`rank`: orbax keeps the last of equal keys, so the step is
part of the key). Saving is asynchronous: training goes on while the arrays are written; `wait()`
before reading or exiting.

Typed PRNG keys (nnx RNG streams) are stored as their raw key data and re-wrapped on restore.
A checkpoint damaged on disk (a file deleted or truncated) does not end the run: `restore_newest`
falls back to the next older checkpoint and sets the damaged ones aside in RUN_DIR/damaged_checkpoints/.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers as cm

from model.weights import restore_error_text, silence_restore_echoes

METRIC = "val_mAP"
STEP = "step"  # stored beside the metric, so that ties rank by step (older checkpoints may lack it)
DAMAGED_DIR = "damaged_checkpoints"  # beside checkpoints/: where unrestorable step folders are moved


class CheckpointError(ValueError):
    """No checkpoint of a run can be restored; the message names the folder and what to do."""


class NonFiniteLoss(RuntimeError):
    """The loss became NaN or infinite; the run stops and the last good checkpoint is kept."""


def _is_key(x) -> bool:
    return isinstance(x, jax.Array) and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key)


def to_saveable(tree):
    return jax.tree.map(lambda x: jax.random.key_data(x) if _is_key(x) else x, tree)


def from_saveable(tree, like):
    return jax.tree.map(
        lambda x, ref: jax.random.wrap_key_data(x, impl=jax.random.key_impl(ref)) if _is_key(ref) else x, tree, like
    )


def rank(metrics: dict) -> tuple[float, int]:
    """The key that orders checkpoints by quality: val mAP, then the earlier step (ascending = better).

    orbax keeps the LAST of the checkpoints whose keys are equal (a stable ascending sort), while the
    loop's best epoch is the FIRST to reach the best val mAP (a later epoch must beat it): with val mAP
    alone a tie kept one checkpoint and exported another that had been deleted. A checkpoint written
    before the step was stored ranks as step 0: it is older than any that has one.
    """
    return float(metrics[METRIC]), -int(metrics.get(STEP, 0))


class _DropAbslMessage(logging.Filter):
    def __init__(self, message: str):
        super().__init__()
        self.message = message

    def filter(self, record: logging.LogRecord) -> bool:
        return record.getMessage() != self.message


@contextlib.contextmanager
def _without_absl_message(message: str):
    """Drop one exact message of the `absl` logger (orbax's) while the block runs; all others pass."""
    logger, f = logging.getLogger("absl"), _DropAbslMessage(message)
    logger.addFilter(f)
    try:
        yield
    finally:
        logger.removeFilter(f)


# orbax warns at every save without metrics when a best metric is tracked, i.e. at every checkpoint taken
# inside an epoch; those carry no val mAP by design (they are kept by recency, never as the best).
_NO_METRICS_WARNING = "Requested `tracked_metric`; did not provide metrics."


class RunCheckpoints:
    """Thin wrapper around an orbax CheckpointManager with this project's retention policy."""

    def __init__(self, directory: str | Path, *, keep: int = 3, async_save: bool = True):
        self.directory = Path(directory).expanduser().resolve()  # orbax needs an absolute path
        policy = cm.AnyPreservationPolicy(
            [
                cm.LatestN(n=max(1, keep)),
                cm.BestN(get_metric_fn=rank, n=1, keep_checkpoints_without_metrics=False),
            ]
        )
        options = ocp.CheckpointManagerOptions(
            preservation_policy=policy,
            best_fn=rank,  # `best_step()` agrees with what BestN keeps
            best_mode="max",
            keep_checkpoints_without_metrics=True,
            enable_async_checkpointing=async_save,
            create=True,
        )
        self.manager = ocp.CheckpointManager(self.directory, options=options)

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def best_step(self) -> int | None:
        """The best checkpoint on disk by `rank` (the latest if none carries a val mAP)."""
        return self.manager.best_step()

    def val_map(self, step: int) -> float | None:
        """The val mAP stored with a checkpoint (None for one taken inside an epoch)."""
        metrics = self.manager.metrics(step)
        return float(metrics[METRIC]) if metrics and METRIC in metrics else None

    def all_steps(self) -> list[int]:
        return list(self.manager.all_steps())

    def save(self, step: int, state, triplets: np.ndarray, meta: dict, *, val_map: float | None = None,
             force: bool = True) -> None:
        metrics = {METRIC: float(val_map), STEP: int(step)} if val_map is not None else None
        with _without_absl_message(_NO_METRICS_WARNING):
            self.manager.save(
                step,
                args=ocp.args.Composite(
                    state=ocp.args.StandardSave(to_saveable(state)),
                    mining=ocp.args.StandardSave({"triplets": np.asarray(triplets, np.int64)}),
                    meta=ocp.args.JsonSave(meta),
                ),
                metrics=metrics,
                force=force,
            )

    def restore(self, step: int, like_state) -> tuple[Any, np.ndarray, dict]:
        """Restore (state, triplets, meta) of `step`; `like_state` gives structure, dtypes and shardings."""
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, to_saveable(like_state))
        meta = self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
        n = int(meta["num_triplets"])
        out = self.manager.restore(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardRestore(abstract),
                mining=ocp.args.StandardRestore({"triplets": np.zeros((n, 3), np.int64)}),
            ),
        )
        state = from_saveable(out["state"], like_state)
        return state, np.asarray(out["mining"]["triplets"]), meta

    def restore_meta(self, step: int) -> dict:
        """The JSON meta of `step` alone (it says how to build the state `restore` needs)."""
        return self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]

    def restore_newest(self, like_of: Callable[[dict], Any], warn: Callable[[str], None]
                       ) -> tuple[int, Any, np.ndarray, dict] | None:
        """(step, state, triplets, meta) of the newest checkpoint that restores; None if there is none.

        `like_of(meta)` builds the `like_state` of `restore` from a checkpoint's meta. A checkpoint that
        fails to restore (orbax raises many kinds of errors for missing or truncated files) is reported
        through `warn` and the next older one is tried; once one restores, the newer damaged ones are
        moved to DAMAGED_DIR (so that training can write those steps again). If none restores, nothing
        is moved and a CheckpointError lists what failed.
        """
        steps = sorted(self.all_steps(), reverse=True)
        failed: list[tuple[int, str]] = []
        if steps:
            silence_restore_echoes()  # orbax's echoes of a failed read, which can come before its error does
        for step in steps:
            try:
                meta = self.restore_meta(step)
                state, triplets, meta = self.restore(step, like_of(meta))
            except Exception as e:  # noqa: BLE001 - any failure means: this checkpoint is unusable
                why = restore_error_text(e)
                failed.append((step, why))
                warn(f"{self.directory / str(step)}: cannot restore this checkpoint ({why}); trying an older one.")
                continue
            for bad, _ in failed:
                warn(f"moved the damaged checkpoint of step {bad} to {self._set_aside(bad)}; "
                     f"resuming from step {step}.")
            if failed:
                self.manager.reload()
            return step, state, triplets, meta
        if failed:
            raise CheckpointError(
                f"{self.directory}: none of the checkpoints can be restored ("
                + "; ".join(f"step {s}: {w}" for s, w in failed)
                + "). Start the run again in a new --out folder (or restore the folder from a backup)."
            )
        return None

    def _set_aside(self, step: int) -> Path:
        target_dir = self.directory.parent / DAMAGED_DIR
        target_dir.mkdir(parents=True, exist_ok=True)
        target, k = target_dir / str(step), 1
        while target.exists():
            target, k = target_dir / f"{step}.{k}", k + 1
        os.replace(self.directory / str(step), target)
        return target

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()


class GracefulStop:
    """Context manager: SIGTERM/SIGINT ask the loop to checkpoint and stop; a second signal aborts.

    The loop polls `requested` after every step. Handlers are restored on exit. Only installed in
    the main thread (signal handlers cannot be set elsewhere).
    """

    def __init__(self, on_request: Callable[[int], None] | None = None):
        self.requested: int | None = None
        self._old: dict[int, Any] = {}
        self._on_request = on_request

    def _handler(self, signum, frame):
        if self.requested is not None:
            raise KeyboardInterrupt(f"second signal {signum}: aborting without a checkpoint")
        self.requested = signum
        if self._on_request:
            self._on_request(signum)

    def __enter__(self) -> GracefulStop:
        import threading

        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._old[sig] = signal.signal(sig, self._handler)
        return self

    def __exit__(self, *exc) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)


def check_finite(loss: float, step: int, last_checkpoint: int | None, run_dir: Path) -> None:
    if not np.isfinite(loss):
        where = f"checkpoint at step {last_checkpoint}" if last_checkpoint is not None else "no checkpoint yet"
        raise NonFiniteLoss(
            f"loss is {loss} at step {step}: the update was skipped and the run stopped. The last good state is "
            f"the {where} in {run_dir / 'checkpoints'}. Lower the learning rate (--set lr=...), enable gradient "
            f"clipping (--set grad_clip=1.0) or use float32 (--set compute_dtype=float32), then --resume."
        )
