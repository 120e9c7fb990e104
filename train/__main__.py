"""`python -m train`: fine-tune a backbone on a collection's connections; `python -m train evaluate`: retrieval metrics.

Thin: options are parsed here, the work is in train.loop / train.metrics (which the tests call).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import click

from data.gc_policy import for_this_process
from data.paths import PathOrWord, UserPath
from train.config import DEFAULT_PRESET, PRESETS, TrainConfig, apply_overrides, preset, start_config

if TYPE_CHECKING:  # imported where used: `--help` stays fast without jax and orbax
    from train.run_folder import RunFolder


class _DefaultGroup(click.Group):
    """`python -m train --collection ...` runs training; `python -m train evaluate ...` evaluates."""

    def parse_args(self, ctx, args):
        if args and args[0] not in self.commands and args[0] not in ("--help", "-h"):
            args = ["run", *args]
        return super().parse_args(ctx, args)


@click.group(cls=_DefaultGroup)
def cli() -> None:
    """Triplet fine-tuning (compound hinge loss, hard negatives) and retrieval evaluation.

    `python -m train --collection DIR --arch ARCH --weights DIR|random --out RUN_DIR` trains (the `run`
    command is the default); `python -m train evaluate SIGNATURES --collection DIR` scores signatures.
    """


@cli.command("run")
@click.option("--collection", type=UserPath(exists=True, file_okay=False), required=True,
              help="Collection folder (images.csv, connections.csv).")
@click.option("--arch", default=None,
              help="Architecture (see `python -m model list`); default: the weights' arch, else the preset's.")
@click.option("--weights", type=PathOrWord("random"), default="random", show_default=True,
              help="Start weights: a weights directory (`python -m model convert`) or 'random' (from --seed).")
@click.option("--out", "out", type=UserPath(file_okay=False), required=True, help="Run folder.")
@click.option("--preset", "preset_name", type=click.Choice(PRESETS), default=None,
              help=f"Settings preset; default: {DEFAULT_PRESET}, or with --resume-from the source run's preset.")
@click.option("--seed", type=int, default=None, help="Seed (initialisation with --weights random, data order).")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Override a config field, e.g. --set lr=1e-4 --set batch_size=8 (repeatable).")
@click.option("--resume", is_flag=True, help="Continue the interrupted run in --out from its last checkpoint.")
@click.option("--resume-from", type=UserPath(exists=True, file_okay=False), default=None,
              help="Start a new run (new round) from another run's best weights, splits and preset.")
@click.option("--coordinator", default=None, help="Multi-process: coordinator HOST:PORT (process 0's address).")
@click.option("--num-processes", type=int, default=None, help="Multi-process: number of processes.")
@click.option("--process-id", type=int, default=None, help="Multi-process: this process's id (0-based).")
@click.option("--no-progress", is_flag=True, help="No progress bar (logs still go to metrics.jsonl).")
@click.option("--plan", "plan_only", is_flag=True,
              help="Print the plan (triplets and steps per epoch, total steps, the estimated time when an earlier "
                   "run measured it) and exit without training or writing anything.")
def run_cmd(collection, arch, weights, out, preset_name, seed, overrides, resume, resume_from, coordinator,
            num_processes, process_id, no_progress, plan_only) -> None:
    """Train: prepare, split, mine, train, validate each epoch, test the best, export signatures."""
    if plan_only:
        _print_plan(collection, out, preset_name, arch, seed, overrides, weights, resume, resume_from)
        return
    from train.distributed import maybe_initialize
    from train.xla_flags import set_train_flags

    set_train_flags()  # before anything creates the XLA backends
    maybe_initialize(coordinator, num_processes, process_id)
    from data.compile_cache import enable_compilation_cache
    from model.weights import WeightsError
    from train.loop import run_training
    from train.run_folder import RunError, RunFolder

    try:
        if resume:
            cfg, preset_name = _resumed_config(RunFolder(out), preset_name, arch, seed, overrides)
        else:
            cfg, preset_name = _new_config(preset_name, arch, seed, overrides, weights, resume_from)
        enable_compilation_cache(cfg.compile_cache)
        result = run_training(collection, out, cfg, weights=weights, resume=resume, resume_from=resume_from,
                              progress=not no_progress,
                              extra_config={"preset": preset_name, "argv": sys.argv[1:]})
    except (RunError, WeightsError, ValueError, FileNotFoundError, KeyError) as e:
        raise click.ClickException(str(e)) from e
    if result.status != "finished":
        sys.exit(3)


def _print_plan(collection, out, preset_name, arch, seed, overrides, weights, resume, resume_from) -> None:
    """`--plan`: the run's cost as `python -m train` would start it (train/plan.py); nothing is written."""
    from model.weights import WeightsError
    from train.plan import plan_run
    from train.run_folder import RunError, RunFolder

    def warn(msg: str) -> None:
        click.echo(f"warning: {msg}", err=True)

    try:
        if resume:
            cfg, _ = _resumed_config(RunFolder(out), preset_name, arch, seed, overrides)
        else:
            cfg, _ = _new_config(preset_name, arch, seed, overrides, weights, resume_from)
        plan = plan_run(collection, out, cfg, weights=weights, resume=resume, resume_from=resume_from, warn=warn)
    except (RunError, WeightsError, ValueError, FileNotFoundError, KeyError) as e:
        raise click.ClickException(str(e)) from e
    for line in plan.lines():
        click.echo(line)
    click.echo("plan: unreadable images, found when the dataset is prepared, leave the pool; the run prints the "
               "count it mined before its first step")


def _resumed_config(run: RunFolder, preset_name: str | None, arch: str | None, seed: int | None,
                    overrides) -> tuple[TrainConfig, str | None]:
    """(config, preset) of `--resume`: the run's own (train/run_folder.py), then --arch/--seed/--set (the loop
    refuses any that change more than how the run is carried out: train/resume_check.py)."""
    cfg, preset_name = run.resumed_config(preset_name)
    if cfg is None:  # nothing to resume: run_training says so
        cfg = preset(preset_name or DEFAULT_PRESET)
    explicit = {k: v for k, v in (("arch", arch), ("seed", seed)) if v is not None}
    return apply_overrides(apply_overrides(cfg, explicit), list(overrides)), preset_name


def _new_config(preset_name: str | None, arch: str | None, seed: int | None, overrides, weights: str,
                resume_from: Path | None) -> tuple[TrainConfig, str]:
    """(config, preset) of a new run: the preset (with --resume-from: the source run's by default), then
    --arch/--seed/--set; the arch is the start weights' unless asked for (then they must agree)."""
    from model.weights import read_meta
    from train.run_folder import RunFolder

    source = None
    if resume_from is not None:
        if weights != "random":
            raise click.UsageError("--resume-from starts from that run's weights: do not pass --weights too.")
        src = RunFolder(resume_from)
        source, start_weights = src.source_record(), src.finished_weights()
    else:
        start_weights = None if weights == "random" else Path(weights)
    weights_arch = read_meta(start_weights)["arch"] if start_weights is not None else None
    return start_config(preset_name, arch=arch, seed=seed, overrides=list(overrides), weights_arch=weights_arch,
                        source=source)


@cli.command("evaluate")
@click.argument("signatures", type=UserPath(exists=True, dir_okay=False))
@click.option("--collection", type=UserPath(exists=True, file_okay=False), required=True)
@click.option("--split", type=click.Choice(["train", "val", "test"]), default="test", show_default=True)
@click.option("--splits-file", type=UserPath(exists=True, dir_okay=False), default=None,
              help="A splits.json to use (default: the collection's, else computed as training would).")
@click.option("--ignore-unknown", is_flag=True,
              help="Leave out (with a warning) the signatures whose uid is not in the collection, instead of "
                   "refusing them.")
def evaluate_cmd(signatures, collection, split, splits_file, ignore_unknown) -> None:
    """Retrieval metrics of SIGNATURES (a signatures.npz) on the queries of one split, as JSON.

    The figures rank the images that have a signature: signatures of part of the collection are scored
    with a warning (their figures are not comparable with a run's eval.json); uids that are not in the
    collection are refused (or left out with --ignore-unknown); signatures of another collection are refused.
    """
    from data.collection import load_collection
    from data.signatures import load_signatures
    from data.splits import assign_splits, load_previous, load_splits
    from train.metrics import SignatureCoverageError, evaluate_split, match_collection

    try:
        coll = load_collection(collection)
        sig = load_signatures(signatures)
        sig, notes = match_collection(sig, coll, signatures, ignore_unknown=ignore_unknown)
        previous = load_splits(splits_file) if splits_file else load_previous(coll)
        assignment = assign_splits(coll, previous)
    except (SignatureCoverageError, ValueError) as e:
        raise click.ClickException(str(e)) from e
    for note in notes:
        click.echo(f"warning: {note}", err=True)
    group = assignment.group_of()
    result = evaluate_split(sig.dense(), sig.uids, group, assignment.split_of, split)
    result = {"split": split, "signatures": str(signatures), "num_signatures": len(sig.uids),
              "num_images": len(coll.uids), **result}
    if not result.get("num_queries"):  # JSON with no metric at all: say why, as a training run's last line does
        click.echo(f"warning: no {split} queries (no image of split {split} has a partner), so no figures; pattern "
                   f"groups go to a split by splits.json or connections.csv's split column.", err=True)
    click.echo(json.dumps(result, indent=2, sort_keys=True))


def main() -> None:
    """The command line as its own process (`python -m train`, the vsig-train script): data.gc_policy."""
    for_this_process()
    cli()


if __name__ == "__main__":
    main()
