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
- a decision undone after it was accepted takes its rows out again: a row is removed when its source is
  `annotation:<N>` and its pair, type and `annotated_at` are those of an edge of an undone decision (the
  undo says the expert no longer stands by it; leaving the row would train on it). Each removed row is
  listed, and the backup keeps it. A row edited by hand (another type or time) no longer matches and stays;
  so does a row in which someone has written since (a `comment`, a `split`: any cell accept left empty),
  because that is a curator's work on it: it is listed as kept, with the cell, for a person to decide;
- the file is the museum's: every column is kept in its order, with its values (`comment`, `reviewer`,
  ...); new rows leave those columns empty; the columns accept needs and the file lacks (`source`,
  `annotated_at`) are appended at the end. The separator is kept; the file is written as UTF-8 (with a
  BOM if it had one or was Windows-1252 or UTF-16 text, so Excel still reads it right), and a change of
  encoding is reported;
- the previous file is copied to `connections.csv.bak-<UTC time>` and the new one replaces it atomically
  (`data.atomic`: temp file, fsync, rename): a crash leaves either the old or the new file, never half of one.
"""

from __future__ import annotations

import re
import shutil
import warnings
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import click

from cluster.agreement import POLICIES, Choice, PolicyError, choose
from cluster.annotations import DECISION, AnnotationError, AnnotationLog, TornLineWarning, read_log
from cluster.next_round import TrainingEffect, training_effect
from data.atomic import atomic_write
from data.collection import (
    ANNOTATIONS_FILE,
    CONNECTION_TYPES,
    CONNECTIONS_FILE,
    CONTRADICTORY,
    DUPLICATE,
    IMPLIED_BY,
    NEGATIVE,
    POSITIVE,
    Collection,
    CollectionError,
    Connection,
    load_collection,
    read_connections,
    write_connections,
)
from data.interrupt import ctrl_c_says
from data.paths import UserPath

_ROUND = re.compile(r"^annotation:(\d+)$")
_ENCODING_NAMES = {"cp1252": "Windows-1252", "utf-16": "UTF-16", "utf-8-sig": "UTF-8 with BOM"}


@dataclass
class Contradiction:
    a: str
    b: str
    type: str
    existing: str
    decision: str  # id of the decision that asked for it


@dataclass
class Removed:
    row: Connection  # a row an undone decision had added
    decision: str  # id of that decision


@dataclass
class Kept:
    row: Connection  # a row an undone decision had added, kept because someone has written in it since
    decision: str
    reason: str


@dataclass
class AcceptReport:
    round: int
    decisions: int = 0  # decisions in force
    undone: int = 0
    added: Counter = field(default_factory=Counter)  # type -> rows written
    skipped: int = 0  # already present with the same type
    implied: int = 0  # already present with a type that implies it (IMPLIED_BY): not written
    not_overruled: int = 0  # NEGATIVE of a "wrong cluster" on a pair known (or confirmed) to share a pattern
    contradictions: list[Contradiction] = field(default_factory=list)
    unknown: list[str] = field(default_factory=list)  # uids not in images.csv
    removed: list[Removed] = field(default_factory=list)  # rows of decisions undone after they were accepted
    kept: list[Kept] = field(default_factory=list)  # such rows that a person has written in since: kept
    backup: Path | None = None
    choice: Choice | None = None  # the --policy applied, what it left out, the clusters in disagreement
    written: bool = False
    notes: list[str] = field(default_factory=list)
    training: TrainingEffect | None = None  # training pairs before -> after (cluster/next_round.py)

    def lines(self) -> list[str]:
        in_force = f"{self.decisions} decision(s) in force ({self.undone} undone)"
        if self.added:  # a round is named only when rows of it were written
            out = [f"annotation round {self.round}: {in_force}.",
                   "added: " + ", ".join(f"{n} {t}" for t, n in sorted(self.added.items()))]
        elif self.written:
            out = [f"{in_force}: nothing new to add."]
        else:
            out = [f"{in_force}: nothing new to add; connections.csv unchanged."]
        if self.removed:
            out.append(f"removed (their decision was undone after it was accepted): {len(self.removed)}")
            out.extend(f"  {r.row.a} {r.row.b} {r.row.type} (was line {r.row.line}, decision {r.decision})"
                       for r in self.removed)
        if self.kept:
            out.append(f"kept, though their decision was undone (someone has written in the row since; delete it "
                       f"by hand if it should go): {len(self.kept)}")
            out.extend(f"  {k.row.a} {k.row.b} {k.row.type} (line {k.row.line}, decision {k.decision}): {k.reason}"
                       for k in self.kept)
        out.append(f"skipped (already present): {self.skipped}")
        if self.implied:
            out.append(f"skipped (already known: the pair has a type that implies it, e.g. DUPLICATE for "
                       f"POSITIVE): {self.implied}")
        if self.not_overruled:
            out.append(f"skipped ('wrong cluster' NEGATIVE on a pair known or confirmed to share a pattern; the "
                       f"verdict on a proposal does not overrule a checked link): {self.not_overruled}")
        out.append(f"contradictions (not written): {len(self.contradictions)}")
        for c in self.contradictions:
            out.append(f"  {c.a} {c.b}: annotated {c.type}, but already {c.existing} (decision {c.decision})")
        if self.unknown:
            out.append(f"edges naming uids not in images.csv (not written): {', '.join(sorted(set(self.unknown)))}")
        out.extend(self.policy_lines())
        if self.backup:
            out.append(f"previous file backed up to {self.backup}")
        out.extend(self.training.lines() if self.training is not None else [])
        out.extend(f"warning: {n}" for n in self.notes)
        return out


    def policy_lines(self) -> list[str]:
        """The --policy applied and the clusters several annotators decided differently (`cluster.agreement`)."""
        ch = self.choice
        if ch is None or (ch.policy == "all" and not ch.disagreements):
            return []
        out = [f"policy {ch.policy}: {ch.left_out} decision(s) in force left out"] if ch.policy != "all" else []
        if ch.disagreements:
            out.append(f"disagreements: {len(ch.disagreements)} cluster(s) decided differently by several "
                       f"annotators (policy {ch.policy}):")
            out.extend(d.line() for d in ch.disagreements)
        return out


def choose_decisions(active: list[dict], policy: str, report: AcceptReport) -> list[dict]:
    """The decisions in force that `policy` keeps (`cluster.agreement.choose`), noted in `report`."""
    report.choice = choose(active, policy)
    return report.choice.decisions


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


def _undone_decisions(log: AnnotationLog) -> list[dict]:
    undone = log.undone_ids()
    return [r for r in log.records if r["kind"] == DECISION and r["id"] in undone]


def _edge_keys(decision: dict) -> set[tuple[str, str, str, str]]:
    """(a, b, type, time) of every edge of a decision, a <= b: what its accepted rows look like."""
    time = decision.get("time") or ""
    return {(*sorted((a, b)), t, time) for a, b, t in decision["edges"]}


def accepted_rows(connections: list[Connection], decision: dict) -> list[Connection]:
    """The rows `cluster accept` wrote for `decision`: source annotation:N, same pair, type and time."""
    keys = _edge_keys(decision)
    return [c for c in connections
            if c.source and _ROUND.match(c.source) and (*c.pair, c.type, c.annotated_at or "") in keys]


def undo_note(collection_dir: str | Path, decision: dict) -> str | None:
    """What the annotation page says when an undone decision was already accepted (None if it was not)."""
    path = Path(collection_dir) / CONNECTIONS_FILE
    try:
        rows = accepted_rows(read_connections(path), decision) if path.exists() else []
    except CollectionError:
        return None  # the page cannot fix the file; `cluster accept` names the problem
    if not rows:
        return None
    worked = sum(1 for r in rows if written_since(r) is not None)
    note = (f"{len(rows)} connection(s) of this decision were already accepted into {CONNECTIONS_FILE}; the next "
            "`python -m cluster accept` removes them (keeping a backup of the file)")
    if worked:
        note += f", except {worked} in which someone has written since (a comment...): those it keeps and lists"
    return note + "."


def written_since(row: Connection) -> str | None:
    """Why a row that accept wrote shows a person's work since (a cell accept left empty is filled), or None."""
    filled = [(k, v.strip()) for k, v in row.extra.items() if v.strip()]
    if row.split:
        filled.insert(0, ("split", row.split))
    if not filled:
        return None
    return "; ".join(f"column {k!r} holds {v!r}" for k, v in filled[:3]) + ("; ..." if len(filled) > 3 else "")


def _drop_undone(existing: list[Connection], log: AnnotationLog,
                 report: AcceptReport) -> tuple[list[Connection], list[Removed]]:
    """Split the rows into those kept and those an undone decision had added (see the module docstring);
    such rows that a person has written in since stay, listed in `report.kept`."""
    owner: dict[tuple[str, str, str, str], str] = {}
    for rec in _undone_decisions(log):
        owner.update(dict.fromkeys(_edge_keys(rec), rec["id"]))
    kept: list[Connection] = []
    removed: list[Removed] = []
    for c in existing:
        who = owner.get((*c.pair, c.type, c.annotated_at or "")) if c.source and _ROUND.match(c.source) else None
        why = written_since(c) if who is not None else None
        if who is None or why is not None:
            kept.append(c)
            if why is not None:
                report.kept.append(Kept(c, who, why))
        else:
            removed.append(Removed(c, who))
    return kept, removed


def _skip_reason(have: set[str], t: str, weak: bool) -> str | None:
    """Why an edge of type `t` is not written onto a pair that has the types `have` (None: write it):
    "same" type, "implied" by one it has, a clash ("contradiction"), or "weak": a "wrong cluster" NEGATIVE
    against a pattern link (the verdict on a whole proposal is weaker evidence than a checked pair)."""
    if t in have:
        return "same"
    if have & IMPLIED_BY.get(t, frozenset()):
        return "implied"
    if any(frozenset((h, t)) in CONTRADICTORY for h in have):
        return "weak" if weak else "contradiction"
    return None


def _pattern_claims(active: list[dict]) -> set[tuple[str, str]]:
    """Pairs that a decision in force other than "wrong cluster" links as POSITIVE or DUPLICATE."""
    return {(a, b) if a <= b else (b, a) for rec in active if rec.get("decision") != "wrong"
            for a, b, t in rec["edges"] if t in (POSITIVE, DUPLICATE)}


def _new_rows(collection: Collection, kept: list[Connection], active: list[dict], report: AcceptReport) -> list[Connection]:
    """Rows for the edges of the decisions in force that are not there yet; skips and clashes go to `report`."""
    types: dict[tuple[str, str], set[str]] = {}
    for c in kept:
        types.setdefault(c.pair, set()).add(c.type)
    claimed = _pattern_claims(active)
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
            weak = rec.get("decision") == "wrong" and t == NEGATIVE
            why = "weak" if weak and key in claimed else _skip_reason(have, t, weak)
            if why is not None:
                _count_skip(report, why, key, t, have, rec["id"])
                continue
            have.add(t)
            new_rows.append(
                Connection(a=key[0], b=key[1], type=t, source=source, annotated_at=rec.get("time") or None)
            )
            report.added[t] += 1
    return new_rows


def _count_skip(report: AcceptReport, why: str, key: tuple[str, str], t: str, have: set[str], decision: str) -> None:
    if why == "same":
        report.skipped += 1
    elif why == "implied":
        report.implied += 1
    elif why == "weak":
        report.not_overruled += 1
    else:
        clash = next(h for h in sorted(have) if frozenset((h, t)) in CONTRADICTORY)
        report.contradictions.append(Contradiction(key[0], key[1], t, clash, decision))


def _write(collection: Collection, rows: list[Connection], report: AcceptReport) -> None:
    """Back up connections.csv, then replace it atomically, keeping the user's columns and separator."""
    path = collection.connections_file
    fmt = collection.connections_format
    if path.exists():
        report.backup = _backup_path(path)
        shutil.copy2(path, report.backup)
    if fmt is not None and fmt.legacy:
        report.notes.append(
            f"{path} was {_ENCODING_NAMES.get(fmt.encoding, fmt.encoding)} text; it is rewritten as UTF-8 "
            f"(the backup {report.backup.name if report.backup else ''} keeps the original bytes)."
        )
    # UTF-8 with a BOM where the file had one or came from Excel's other encodings: Excel then still reads it right
    bom = fmt is not None and fmt.encoding != "utf-8"
    atomic_write(path, lambda tmp: write_connections(tmp, rows, fmt=fmt, bom=bom))
    report.written = True


def accept_annotations(collection_dir: str | Path, *, round: int | None = None, policy: str = "all") -> AcceptReport:
    """Bring connections.csv in line with the decisions in force; see the module docstring. `policy`: which
    decisions count where several annotators decided one cluster (`cluster.agreement`)."""
    collection = load_collection(collection_dir)
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
    kept, report.removed = _drop_undone(existing, log, report)
    new_rows = _new_rows(collection, kept, choose_decisions(active, policy, report), report)
    report.training = _training_effect(collection, kept + new_rows, report)
    if new_rows or report.removed:
        _write(collection, kept + new_rows, report)
    return report


def _training_effect(collection: Collection, rows: list[Connection], report: AcceptReport) -> TrainingEffect | None:
    """What the accepted rows change for the next training round; None (with a note) if splits.json is damaged."""
    try:
        return training_effect(collection, rows)
    except ValueError as e:
        report.notes.append(f"cannot count the next round's training pairs: {e}")
        return None


@click.command("accept")
@click.option("--collection", "collection_dir", required=True, type=UserPath(file_okay=False),
              help="Collection folder whose annotations.jsonl is turned into connections.csv rows.")
@click.option("--round", "round_", type=click.IntRange(min=1), default=None,
              help="Annotation round to record in `source` [default: 1 + the highest round already there].")
@click.option("--policy", default="all", show_default=True, metavar="|".join(POLICIES),
              help="Which decisions count where several annotators decided one cluster: all of them; the latest; "
                   "only the connections all of them asserted; or NAME's wherever NAME decided.")
def accept(collection_dir: Path, round_: int | None, policy: str) -> None:
    """Add the annotation decisions (minus undone ones) to connections.csv; safe to run twice."""
    try:
        with ctrl_c_says(f"{Path(collection_dir) / CONNECTIONS_FILE} is whole, either as it was or with every "
                         "decision added (it is replaced in one step, the old one backed up first); run the same "
                         "command again to finish: it adds only what is missing."):
            report = accept_annotations(collection_dir, round=round_, policy=policy)
    except (CollectionError, AnnotationError, PolicyError) as e:
        raise click.ClickException(str(e)) from e
    for line in report.lines():
        click.echo(line)


if __name__ == "__main__":
    accept()
