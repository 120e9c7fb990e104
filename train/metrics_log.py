"""RUN_DIR/metrics.jsonl: the run's log of training and validation records, one JSON object a line.

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

from data.atomic import atomic_write_text


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
