"""The cost of a training run before it starts: triplets and steps per epoch, total steps, and an estimate of
the wall time from a step time measured before.

Why: one round of annotation (414 NEGATIVE pairs from a single "confirm, reject the rest") once turned 4
steps per epoch into 210 (100 s -> 17 min) and nobody was told. Mining now keeps the triplets per epoch
independent of the annotated negatives (train/mining.py), and every run says what it will cost before its
first step; `python -m train ... --plan` says it and exits without training.

The triplet count needs no signatures (`train.mining.planned_triplets`): each anchor gets min(num_negatives,
pool images outside its group) negatives per partner. `--plan` does not prepare the dataset, so images that
turn out unreadable then (they leave the pool) are not known to it; the run itself prints the count it mined.

The step time: from the metrics.jsonl of the run being resumed, or of the run a new round continues from
(`--resume-from`), when that run used the same architecture, resolution and compute type: the median of its
logged images per second, scaled to this run's batch size, leaving out the first logged interval (it holds the
compilation) unless it is the only one, which the estimate then names as an upper bound (a 4-step demo round logs
one interval: 4.1 s a step, against 0.5 s in the next round). Validation and mining at each epoch end come on top.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from data.collection import Collection, load_collection
from data.paths import resolve_path
from data.splits import assign_splits, load_previous
from train.config import TrainConfig
from train.metrics_log import read_metrics
from train.mining import MiningInputs, mining_inputs, planned_triplets

_SAME_SPEED = ("arch", "resolution", "compute_dtype", "remat")


@dataclass(frozen=True)
class StepTime:
    seconds: float
    source: Path  # the metrics.jsonl it was measured in
    first_only: bool = False  # measured over the run's first logged interval alone, compilation included


@dataclass(frozen=True)
class Plan:
    triplets: int
    batch_size: int
    epochs: int
    positives: int = 0  # training POSITIVE pairs (0: not counted, e.g. in a resumed run)
    negatives: int = 0  # annotated NEGATIVE pairs usable as candidates
    done_steps: int = 0
    step_time: StepTime | None = None
    steps_per_epoch: int = 0  # `steps_per_epoch(triplets, batch_size)`, or a resumed run's, from its checkpoint

    @property
    def total_steps(self) -> int:
        return self.steps_per_epoch * self.epochs

    def lines(self) -> list[str]:
        pairs = (f" from {self.positives} training POSITIVE pairs; {self.negatives} annotated NEGATIVE pairs are "
                 f"mining candidates, not extra steps" if self.positives else "")
        out = [f"plan: {self.triplets} triplets per epoch{pairs}; {self.steps_per_epoch} steps per epoch (batch "
               f"{self.batch_size}) x {self.epochs} epoch{'s' if self.epochs != 1 else ''} = {self.total_steps} steps"
               + (f", {self.done_steps} done" if self.done_steps else "")]
        left = max(0, self.total_steps - self.done_steps)
        if self.step_time is None:
            out.append("plan: no step time measured yet (a --resume or --resume-from run estimates its time from "
                       "the metrics.jsonl of that run)")
        else:
            first = (", over its first logged steps, compilation included: an upper bound"
                     if self.step_time.first_only else "")
            out.append(f"plan: estimated {_duration(left * self.step_time.seconds)} of training steps ({left} x "
                       f"{self.step_time.seconds:.3g} s, the step time measured in {self.step_time.source}{first}), "
                       f"plus validation and mining at each epoch end")
        return out


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def measured_step_time(run_dir: str | Path | None, cfg: TrainConfig) -> StepTime | None:
    """The step time of `cfg`'s batch measured in an earlier run's metrics.jsonl (see the module docstring);
    None if there is no such run, it logged no speed, or it ran another network, resolution or precision."""
    if run_dir is None:
        return None
    from train.run_folder import RunError, RunFolder

    folder = RunFolder(run_dir)
    try:
        saved = folder.source_record().get("config") or {}
    except RunError:
        return None
    if any(k in saved and saved[k] != getattr(cfg, k) for k in _SAME_SPEED):
        return None
    try:
        speeds = sorted((int(r.get("step", 0)), float(r["img_per_s"])) for r in read_metrics(folder.metrics)
                        if isinstance(r.get("img_per_s"), int | float) and r["img_per_s"] > 0)
    except (OSError, ValueError):
        return None
    if not speeds:
        return None
    # the first logged interval holds the compilation (seconds to minutes): left out when there are others
    kept = [v for _, v in (speeds[1:] if len(speeds) > 1 else speeds)]
    return StepTime(3 * cfg.batch_size / statistics.median(kept), folder.metrics, first_only=len(speeds) == 1)


def steps_per_epoch(num_triplets: int, batch_size: int) -> int:
    """Whole batches of triplets per epoch (what the loop runs, and what the plan shows); a clear error for none."""
    from train.run_folder import RunError

    spe = num_triplets // batch_size
    if spe == 0:
        raise RunError(f"{num_triplets} triplets < batch_size {batch_size}: lower --set batch_size.")
    return spe


def train_inputs(collection: Collection, split_of: dict[str, str], train_connections: list, *,
                 skipped: Sequence[str] = ()) -> MiningInputs:
    """The mining inputs of the train split (`train.mining.mining_inputs`), refused when no POSITIVE connection
    falls in it: the run and its plan check it with one rule and one message."""
    from train.run_folder import RunError

    inputs = mining_inputs(collection, split_of, skipped=skipped, train_connections=train_connections)
    if len(inputs.positives) == 0:
        raise RunError(f"{collection.connections_file}: no POSITIVE connection falls in the train split; "
                       "add connections (or annotate) before training.")
    return inputs


def plan_run(collection_dir: str | Path, run_dir: str | Path, cfg: TrainConfig, *, weights: str, resume: bool,
             resume_from: str | Path | None, warn: Callable[[str], None]) -> Plan:
    """What `python -m train` with these arguments would do, computed without preparing, embedding or writing:
    the same checks of the collection and of what the run starts from, the same splits and mining inputs."""
    from train.loop import refuse_invalid_collection
    from train.run_folder import RunFolder

    folder = RunFolder(run_dir)
    collection = load_collection(resolve_path(collection_dir), quiet=True)
    refuse_invalid_collection(collection, warn)
    start = folder.start(cfg, collection, weights, resume=resume, resume_from=resume_from, warn=warn)
    previous = start.previous_splits if start.previous_splits is not None else load_previous(collection)
    assignment = assign_splits(collection, previous)
    inputs = train_inputs(collection, assignment.split_of, assignment.connections("train"))
    triplets = planned_triplets(inputs, cfg.num_negatives)
    spe = steps_per_epoch(triplets, cfg.batch_size)
    done = 0
    if resume:
        done = max((int(r.get("step", 0)) for r in read_metrics(folder.metrics, warn)), default=0)
    return Plan(triplets, cfg.batch_size, cfg.epochs, positives=len(inputs.positives), negatives=len(inputs.negatives),
                done_steps=done, step_time=measured_step_time(folder.root if resume else resume_from, cfg),
                steps_per_epoch=spe)
