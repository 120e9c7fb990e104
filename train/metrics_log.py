"""RUN_DIR/metrics.jsonl: the run's log of training and validation records, one JSON object a line, and
the curves drawn from it (RUN_DIR/curves.png).

Records: one per log interval ({"step", "epoch", "loss", "img_per_s", "lr"}; `epoch` fractional) and one
per validation ({"step", "epoch", "val": {...}}; epoch 0 is the starting network).

Why a module of its own: a kill while a line is being appended leaves a torn last line, and reading
the log with a plain `json.loads` per line then failed every later `--resume` for good ("Expecting ','
delimiter", no file named). The reader here drops a torn LAST line with a warning (nothing after it
was written, so nothing is lost that a resume does not redo); a bad line anywhere else is real damage
and an error that names the file and the line.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from data.atomic import atomic_write, atomic_write_text


class MetricsLogError(ValueError):
    """metrics.jsonl is damaged before its last line; the message names the file and the line."""


def _ignore(_msg: str) -> None:
    return None


def read_metrics(path: Path, warn: Callable[[str], None] = _ignore) -> list[dict]:
    """The records of a metrics log (empty if there is none), skipping a torn last line with a warning."""
    if not path.exists():
        return []
    lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    while lines and not lines[-1].strip():
        lines.pop()
    records = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
            if not isinstance(rec, dict):
                raise ValueError("not a JSON object")
        except ValueError as e:
            if number == len(lines):
                warn(f"{path}: line {number} is incomplete (the run was killed while writing it); dropped it.")
                break
            raise MetricsLogError(
                f"{path}:{number}: not a metrics record ({e}); delete that line (the log only feeds the curves)."
            ) from e
        records.append(rec)
    return records


class MetricsLog:
    """Append-only JSON lines, written by the main process; on resume, records after the restored step go."""

    def __init__(self, path: Path, enabled: bool, warn: Callable[[str], None] = _ignore):
        self.path, self.enabled, self.warn = path, enabled, warn

    def truncate_after(self, step: int) -> None:
        """Keep the records up to `step` (and drop a torn last line): what a run restarted there has written."""
        if not (self.enabled and self.path.exists()):
            return
        keep = [r for r in read_metrics(self.path, self.warn) if r.get("step", 0) <= step]
        atomic_write_text(self.path, "".join(json.dumps(r, sort_keys=True, default=float) + "\n" for r in keep))

    def write(self, rec: dict) -> None:
        if self.enabled:
            with open(self.path, "a", encoding="utf-8") as fh:
                fh.write(json.dumps(rec, sort_keys=True, default=float) + "\n")

    def records(self) -> list[dict]:
        return read_metrics(self.path, self.warn)


def val_by_epoch(records: list[dict]) -> dict[str, float]:
    """{epoch: val mAP} from the validation records (epoch 0: the start), as best-epoch selection saw them."""
    return {str(int(r["epoch"])): r["val"]["mAP"] for r in records
            if isinstance(r.get("val"), dict) and r["val"].get("mAP") is not None}


def plot_curves(records: list[dict], path: Path) -> None:
    """Training loss by step and val mAP / recall@10 by epoch, side by side, as a PNG written atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [r for r in records if "loss" in r]
    epochs = [r for r in records if "val" in r and "mAP" in r["val"]]
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
        atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=100, format="png"))
    finally:
        plt.close(fig)
