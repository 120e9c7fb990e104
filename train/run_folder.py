"""RUN_DIR, the folder of one training run: its layout, what `--resume` / `--resume-from` start from, and
which of its files a resume can reuse.

Layout (who writes what: train/loop.py unless named):
- config.json        the resolved config (+ preset, arguments, start weights, the collection's folder and
                     the fingerprint of it that `--resume` checks: train/resume_check.py)
- splits.json        the split assignment used (uid -> split)
- checkpoints/       orbax checkpoints (last few + best by val mAP; train/checkpointing.py)
- damaged_checkpoints/  checkpoints that did not restore, set aside by a resume (train/checkpointing.py)
- metrics.jsonl      one JSON line per log interval and per epoch (train/metrics_log.py)
- start_eval.json    retrieval of the starting network (val and test), computed once
- start_signatures.npz  the starting network's signatures (`model embed`'s format)
- eval.json          retrieval of the starting and of the exported (best-on-val) network
- signatures.npz     the exported network's signatures of the whole collection
- weights/           the exported network's weights (`model.weights` format: `--weights RUN_DIR/weights`)
- curves.png         training loss and val mAP (train/metrics_log.py)

Why one object: the CLI (train/__main__.py) reads a run's saved config and preset before it builds the
config, and the loop reads the same file again to refuse other settings or another collection; both read
the source run of `--resume-from`. Written twice, the two disagreed (which file, which message).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from data.collection import Collection
from data.paths import resolve_path
from data.signatures import load_signatures
from data.splits import SPLITS_FILE, load_splits
from model.weights import remove_stale_exports
from train.checkpointing import DAMAGED_DIR
from train.config import TrainConfig
from train.resume_check import FINGERPRINT_KEY, check_collection, check_config, collection_fingerprint

CONFIG_FILE = "config.json"
CHECKPOINT_DIR = "checkpoints"
METRICS_FILE = "metrics.jsonl"
START_EVAL_FILE = "start_eval.json"
START_SIGNATURES_FILE = "start_signatures.npz"
EVAL_FILE = "eval.json"
SIGNATURES_FILE = "signatures.npz"
WEIGHTS_DIR = "weights"
CURVES_FILE = "curves.png"


class RunError(RuntimeError):
    """A run that cannot start or continue; the message says what to do."""


@dataclass(frozen=True)
class RunStart:
    """What a run starts from: the start weights ("random" or a folder), the splits to keep (None: the
    collection's), and the fingerprint of the collection that config.json records."""

    weights: str
    previous_splits: dict | None
    fingerprint: dict


class RunFolder:
    """The files of one run (see the module docstring), at an absolute path (orbax needs one)."""

    def __init__(self, root: str | Path):
        self.root = resolve_path(root)  # relative paths, ~ and symlinks

    @property
    def config(self) -> Path:
        return self.root / CONFIG_FILE

    @property
    def splits(self) -> Path:
        return self.root / SPLITS_FILE

    @property
    def checkpoints(self) -> Path:
        return self.root / CHECKPOINT_DIR

    @property
    def damaged_checkpoints(self) -> Path:
        return self.root / DAMAGED_DIR

    @property
    def metrics(self) -> Path:
        return self.root / METRICS_FILE

    @property
    def start_eval(self) -> Path:
        return self.root / START_EVAL_FILE

    @property
    def start_signatures(self) -> Path:
        return self.root / START_SIGNATURES_FILE

    @property
    def eval(self) -> Path:
        return self.root / EVAL_FILE

    @property
    def signatures(self) -> Path:
        return self.root / SIGNATURES_FILE

    @property
    def weights(self) -> Path:
        return self.root / WEIGHTS_DIR

    @property
    def curves(self) -> Path:
        return self.root / CURVES_FILE

    def __repr__(self) -> str:
        return f"RunFolder({str(self.root)!r})"

    def holds_run(self) -> bool:
        """Whether a run has written checkpoints here (a new run must not mix with it)."""
        return self.checkpoints.exists() and any(self.checkpoints.iterdir())

    # --- the run's saved config ---------------------------------------------------------------------

    def saved_record(self) -> tuple[TrainConfig, dict]:
        """(the config the run started with, all of config.json); unreadable: a RunError naming the file."""
        try:
            saved = json.loads(self.config.read_text(encoding="utf-8"))
            return TrainConfig.from_json(saved["config"]), saved
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise RunError(f"{self.config}: unreadable ({e}); the run cannot be resumed. Start it again with "
                           f"another --out.") from e

    def resumed_config(self, preset_name: str | None) -> tuple[TrainConfig | None, str | None]:
        """(config, preset) that `--resume` continues with: the run's own (None if it saved none: the loop
        then says there is nothing to resume); `--preset` may only repeat the run's preset."""
        if not self.config.exists():
            return None, preset_name
        cfg, saved = self.saved_record()
        saved_preset = saved.get("preset")
        if preset_name and saved_preset and preset_name != saved_preset:
            raise RunError(f"--preset {preset_name}: the run in {self.root} was started with the {saved_preset} "
                           f"preset and --resume continues with its settings; drop --preset, or start a new run "
                           f"with another --out.")
        return cfg, saved_preset or preset_name

    # --- a finished run as the source of a new round (--resume-from) -------------------------------

    def source_record(self) -> dict:
        """config.json of a run that a new round continues from ({} if it has none: its preset is unknown)."""
        if not self.config.exists():
            return {}
        try:
            return json.loads(self.config.read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise RunError(f"{self.config}: unreadable ({e}); cannot --resume-from {self.root}.") from e

    def finished_weights(self) -> Path:
        """The exported (best) weights of a finished run; a RunError if the run did not finish."""
        if not self.weights.is_dir():
            raise RunError(f"{self.root}: no {WEIGHTS_DIR}/ (a finished run's best weights); cannot --resume-from "
                           f"it (continue an interrupted run with --resume).")
        return self.weights

    # --- what the loop starts from ------------------------------------------------------------------

    def start(self, cfg: TrainConfig, collection: Collection, weights: str, *, resume: bool,
              resume_from: str | Path | None, warn: Callable[[str], None]) -> RunStart:
        """What the run starts from; refuses, before anything is written, a resume with other settings or
        another collection (train/resume_check.py) and a new run in a folder that holds one."""
        start = self._resumed_start(cfg, collection, weights, warn) if resume else \
            self._new_start(collection, weights, resume_from)
        w = start.weights
        return RunStart(w if w == "random" else str(resolve_path(w)), start.previous_splits, start.fingerprint)

    def _resumed_start(self, cfg: TrainConfig, collection: Collection, weights: str, warn) -> RunStart:
        if not self.config.exists():
            raise RunError(f"{self.root}: nothing to resume (no {CONFIG_FILE}); start a run with --out {self.root}.")
        saved_cfg, saved = self.saved_record()
        check_config(saved_cfg, cfg, self.root)
        check_collection(saved.get(FINGERPRINT_KEY), collection, self.root, warn)
        fingerprint = saved.get(FINGERPRINT_KEY) or collection_fingerprint(collection)
        return RunStart(saved.get("weights", weights), load_splits(self.splits), fingerprint)

    def _new_start(self, collection: Collection, weights: str, resume_from: str | Path | None) -> RunStart:
        if self.holds_run():
            raise RunError(f"{self.root}: already holds a run; pass --resume to continue it or choose another --out.")
        fingerprint = collection_fingerprint(collection)
        if resume_from is None:
            return RunStart(weights, None, fingerprint)
        source = RunFolder(resume_from)
        splits = load_splits(source.splits) if source.splits.exists() else None
        return RunStart(str(source.finished_weights()), splits, fingerprint)

    def config_extra(self, start: RunStart, extra: dict | None) -> dict:
        """What config.json records beside the config: start weights, the collection, its fingerprint."""
        return {"weights": start.weights, "collection": start.fingerprint["folder"], FINGERPRINT_KEY: start.fingerprint,
                **(extra or {})}

    # --- the starting network's figures, computed once per run ------------------------------------

    def saved_start_eval(self, warn: Callable[[str], None]) -> dict | None:
        """start_eval.json if it and start_signatures.npz are intact; None (after a warning if one of them is
        there) when they must be computed again: a run killed between the two writes, or damaged files."""
        files = (self.start_eval, self.start_signatures)
        missing = [f for f in files if not f.exists()]
        if missing:
            if len(missing) < len(files):
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

    # --- clean-up ----------------------------------------------------------------------------------

    def remove_stale_exports(self, warn: Callable[[str], None]) -> None:
        """Scratch folders of a killed weights export (model/weights.py), each reported."""
        for path in remove_stale_exports(self.weights):
            warn(f"removed {path}, left by a weights export that was killed")


class NewRunUndo:
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
