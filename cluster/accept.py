"""`python -m cluster accept`: turn the expert's decisions into rows of connections.csv.

Rules (why each):
- only decisions still in force count (an `undo` record cancels its decision);
- a pair already present with the same type is skipped, so running accept twice adds nothing;
- a pair whose new type contradicts a type it already has (POSITIVE or DUPLICATE vs NEGATIVE, the same
  rule `python -m data check` applies) is reported and not written: which one is right is the expert's
  call, not ours;
- new rows get `source=annotation:<round>` (round = 1 + the highest annotation round already in the file,
  unless given) and `annotated_at` = the time of the decision; `split` stays empty because splits are
  assigned per pattern group by `data.splits`, which never moves a held-out image into training;
- the previous file is copied to `connections.csv.bak-<UTC time>` and the new one replaces it atomically
  (temp file, fsync, rename): a crash leaves either the old or the new file, never half of one.
"""

from __future__ import annotations

import os
import re
import shutil
import warnings
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import click

from cluster.annotate.store import AnnotationError, TornLineWarning, read_log
from data.collection import (
    ANNOTATIONS_FILE,
    CONNECTION_TYPES,
    DUPLICATE,
    NEGATIVE,
    POSITIVE,
    CollectionError,
    Connection,
    load_collection,
    write_connections,
)

CONTRADICTORY = {frozenset((POSITIVE, NEGATIVE)), frozenset((DUPLICATE, NEGATIVE))}
_ROUND = re.compile(r"^annotation:(\d+)$")


@dataclass
class Contradiction:
    a: str
    b: str
    type: str
    existing: str
    decision: str  # id of the decision that asked for it


@dataclass
class AcceptReport:
    round: int
    decisions: int = 0  # decisions in force
    undone: int = 0
    added: Counter = field(default_factory=Counter)  # type -> rows written
    skipped: int = 0  # already present with the same type
    contradictions: list[Contradiction] = field(default_factory=list)
    unknown: list[str] = field(default_factory=list)  # uids not in images.csv
    backup: Path | None = None
    written: bool = False
    notes: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        out = [f"annotation round {self.round}: {self.decisions} decision(s) in force ({self.undone} undone)."]
        if self.added:
            out.append("added: " + ", ".join(f"{n} {t}" for t, n in sorted(self.added.items())))
        else:
            out.append("added: nothing (connections.csv unchanged).")
        out.append(f"skipped (already present): {self.skipped}")
        out.append(f"contradictions (not written): {len(self.contradictions)}")
        for c in self.contradictions:
            out.append(f"  {c.a} {c.b}: annotated {c.type}, but already {c.existing} (decision {c.decision})")
        if self.unknown:
            out.append(f"edges naming uids not in images.csv (not written): {', '.join(sorted(set(self.unknown)))}")
        if self.backup:
            out.append(f"previous file backed up to {self.backup}")
        out.extend(f"warning: {n}" for n in self.notes)
        return out


def next_round(connections: list[Connection]) -> int:
    rounds = [int(m.group(1)) for c in connections if c.source and (m := _ROUND.match(c.source))]
    return max(rounds, default=0) + 1


def _backup_path(path: Path) -> Path:
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    cand = path.with_name(f"{path.name}.bak-{stamp}")
    k = 1
    while cand.exists():
        cand = path.with_name(f"{path.name}.bak-{stamp}-{k}")
        k += 1
    return cand


def _atomic_write_connections(path: Path, rows: list[Connection]) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    write_connections(tmp, rows)
    fd = os.open(tmp, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    dfd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def accept_annotations(collection_dir: str | Path, *, round: int | None = None) -> AcceptReport:
    """Append the edges of the decisions in force to connections.csv; see the module docstring."""
    collection = load_collection(collection_dir)
    path = collection.connections_file
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", TornLineWarning)
        log = read_log(collection.root / ANNOTATIONS_FILE)
    existing = list(collection.connections)
    if round is not None and round < 1:
        raise ValueError(f"--round must be >= 1, got {round}.")
    report = AcceptReport(round=round if round is not None else next_round(existing))
    report.notes = [str(w.message) for w in caught]
    active = log.active_decisions()
    report.decisions = len(active)
    report.undone = len(log.undone_ids())

    types: dict[tuple[str, str], set[str]] = {}
    for c in existing:
        types.setdefault(c.pair, set()).add(c.type)
    new_rows: list[Connection] = []
    source = f"annotation:{report.round}"
    for rec in active:
        for a, b, t in rec["edges"]:
            if t not in CONNECTION_TYPES:  # read_log already checks; kept for a hand-built log
                raise AnnotationError(f"decision {rec['id']}: unknown connection type {t!r}.")
            bad = [u for u in (a, b) if u not in collection]
            if bad:
                report.unknown.extend(bad)
                continue
            key = (a, b) if a <= b else (b, a)
            have = types.setdefault(key, set())
            if t in have:
                report.skipped += 1
                continue
            clash = next((h for h in sorted(have) if frozenset((h, t)) in CONTRADICTORY), None)
            if clash is not None:
                report.contradictions.append(Contradiction(key[0], key[1], t, clash, rec["id"]))
                continue
            have.add(t)
            new_rows.append(
                Connection(a=key[0], b=key[1], type=t, source=source, annotated_at=rec.get("time") or None)
            )
            report.added[t] += 1
    if not new_rows:
        return report
    if path.exists():
        report.backup = _backup_path(path)
        shutil.copy2(path, report.backup)
    _atomic_write_connections(path, existing + new_rows)
    report.written = True
    return report


@click.command("accept")
@click.option("--collection", "collection_dir", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Collection folder whose annotations.jsonl is turned into connections.csv rows.")
@click.option("--round", "round_", type=click.IntRange(min=1), default=None,
              help="Annotation round to record in `source` [default: 1 + the highest round already there].")
def accept(collection_dir: Path, round_: int | None) -> None:
    """Add the annotation decisions (minus undone ones) to connections.csv; safe to run twice."""
    try:
        report = accept_annotations(collection_dir, round=round_)
    except (CollectionError, AnnotationError) as e:
        raise click.ClickException(str(e)) from e
    for line in report.lines():
        click.echo(line)


if __name__ == "__main__":
    accept()
