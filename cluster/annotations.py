"""`annotations.jsonl`: the append-only log of the expert's decisions, its records and how it is read.

One JSON object per line. Two kinds of record:

- `{"kind": "decision", "id", "time", "annotator", "clusters_file", "clusters_sha256", "cluster",
   "decision", "members", "ticked", "edges": [[a, b, TYPE], ...]}`
- `{"kind": "undo", "id", "time", "annotator", "undoes": <decision id>}`

An image added to a cluster from a search (the page's "add to this cluster") is a decision record too, so that
`cluster accept`, undo and every reader treat it like the others (older readers included):
`{"kind": "decision", "decision": "add", ..., "cluster", "members": [HIT], "ticked": [HIT], "edges": [[a, b,
"POSITIVE"], ...], "query": {"uid", "box": [x, y, w, h] or null, "score"}}`. Its `members` is the added image
alone (a decision's member set is what marks a cluster decided; no cluster has a single member, so an addition
never does), its edges join it to the cluster's members (`cluster.review.addition_edges`), and `query` says
which search found it (the query image, the detail searched, the hit's score).

A split (`cluster.review.SPLIT`: the cluster sorted into sub-groups in one decision) is a decision record with one
more key, its sub-groups, each in member order: `{"kind": "decision", "decision": "split", ..., "ticked": [the
members of all groups], "groups": [[uid, ...], [uid, ...], ...], "edges": [...]}` (`cluster.review.split_edges`:
POSITIVE inside each group, NEGATIVE between groups). Members in no group are in neither `ticked` nor an edge
(left undecided). An older reader ignores the key it does not know and accepts the edges as they are, so a split
reads as a decision like the others; undo cancels it like any.

Several annotators: each record names its `annotator`. Nothing is ever replaced: two annotators' decisions on the
same cluster are both in the log and both in force (`cluster.agreement` compares them; `cluster accept --policy`
chooses which count).

The annotation page writes it (`cluster.annotate.store`), `cluster accept` reads it: this module is what
both agree on, with no part of the web app.

Why append-only: a decision is acknowledged to the browser only after its line is written, flushed
and fsynced, and nothing already written is ever rewritten. A process killed mid-write can therefore
leave at most a torn *last* line (one without its newline). Such a line is either a write that was
interrupted (never acknowledged) or the end of a file that was cut (a restore, a full disk, a `truncate`),
which may have been an acknowledged decision: nobody can tell from the bytes alone. Readers report and
ignore such a line, saying both (`torn_line_message`).

A last line that is a complete, valid record and lacks only its newline is different: a prefix of one of
our writes is never valid JSON, so such a line was written whole, most likely by an editor that saved
the file without a final newline, and it may be an acknowledged decision. Readers count it.

A malformed line anywhere else means the file was edited by hand or damaged: that is an error naming
the line, never silently skipped, because a skipped line could be a lost decision or a lost undo.
"""

from __future__ import annotations

import hashlib
import json
import re
import uuid
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from data.collection import CONNECTION_TYPES

DECISION = "decision"
UNDO = "undo"
# "add to this cluster" (a search hit added to the cluster being judged): a decision record, but not a verdict on
# the cluster, so not one of `cluster.review.DECISIONS` (no footer button; it never marks the cluster decided)
ADD = "add"
PROPOSAL = "proposal"
PROPOSALS_FILE = "proposals.jsonl"

RecordCheck = Callable[[object, Path, int], dict]


class AnnotationError(ValueError):
    """An annotations.jsonl that cannot be trusted; the message names the file and the line."""


class TornLineWarning(UserWarning):
    """The last line of annotations.jsonl has no newline: ignored if incomplete, counted if a whole record."""


def now_iso() -> str:
    """Current time, ISO 8601 in UTC with a `Z` suffix (what the log and connections.csv store)."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def new_id() -> str:
    """A record id: random, so two servers on one log never make the same one."""
    return uuid.uuid4().hex


@dataclass
class AnnotationLog:
    """The parsed log: records in file order, plus what a reader had to ignore."""

    records: list[dict]
    torn_tail: bytes = b""  # the incomplete last line, if any (not a record)
    good_size: int = 0  # byte length of the lines that hold records (the file less `torn_tail`)
    unterminated: bool = False  # the last record is complete but its newline is missing
    warnings: list[str] = field(default_factory=list)

    def undone_ids(self) -> set[str]:
        return {r["undoes"] for r in self.records if r["kind"] == UNDO}

    def active_decisions(self) -> list[dict]:
        """Decisions that no undo record cancels, in file order."""
        undone = self.undone_ids()
        return [r for r in self.records if r["kind"] == DECISION and r["id"] not in undone]


def _check_record(rec: object, path: Path, line: int) -> dict:
    where = f"{path}:{line}"
    if not isinstance(rec, dict):
        raise AnnotationError(f"{where}: a record must be a JSON object; fix or remove that line.")
    kind = rec.get("kind")
    if kind not in (DECISION, UNDO):
        raise AnnotationError(f"{where}: unknown record kind {kind!r} (expected 'decision' or 'undo').")
    if not isinstance(rec.get("id"), str) or not rec["id"]:
        raise AnnotationError(f"{where}: record without a string 'id'.")
    if kind == UNDO:
        if not isinstance(rec.get("undoes"), str):
            raise AnnotationError(f"{where}: undo record without the 'undoes' decision id.")
        return rec
    for key in ("members", "ticked", "edges"):
        if not isinstance(rec.get(key), list):
            raise AnnotationError(f"{where}: decision record without a list {key!r}.")
    groups = rec.get("groups")
    if groups is not None and (not isinstance(groups, list) or not all(
            isinstance(g, list) and all(isinstance(u, str) for u in g) for g in groups)):
        raise AnnotationError(f"{where}: 'groups' must be a list of lists of uids (a split's sub-groups).")
    for e in rec["edges"]:
        if (
            not isinstance(e, list)
            or len(e) != 3
            or not all(isinstance(x, str) for x in e)
            or e[2] not in CONNECTION_TYPES
            or e[0] == e[1]
        ):
            raise AnnotationError(f"{where}: edge {e!r} is not [uid_a, uid_b, TYPE] with TYPE in {CONNECTION_TYPES}.")
    return rec


def _parse_line(raw: bytes, path: Path, line: int, check: RecordCheck) -> dict:
    try:
        rec = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise AnnotationError(
            f"{path}:{line}: not a JSON line ({e}). The log is append-only; only the last line can be torn by a "
            "crash, so this line was edited or damaged: restore it from a backup or remove it by hand."
        ) from None
    return check(rec, path, line)


def _tail_record(tail: bytes, path: Path, line: int, check: RecordCheck) -> dict | None:
    """The last line, which has no newline: a whole record (returned), or torn bytes (None).

    A prefix of a JSON object is never itself a JSON object, so bytes that parse were written whole;
    bytes that parse but are not a valid record were edited, which is an error as on any other line.
    """
    try:
        rec = json.loads(tail.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        return None
    return check(rec, path, line)


def parse_log(data: bytes, path: str | Path, check: RecordCheck | None = None) -> AnnotationLog:
    """Parse the bytes of annotations.jsonl (`path` only names the file in messages); see `read_log`.

    `check` validates one record (default: a decision or undo record; `read_proposals` passes its own).
    """
    path = Path(path)
    check = check or _check_record
    log = AnnotationLog(records=[])
    # Everything after the last newline is a line that has no newline (torn, or saved without one).
    cut = data.rfind(b"\n") + 1
    body, tail = data[:cut], data[cut:]
    n_lines = body.count(b"\n")
    raws = [(i, raw) for i, raw in enumerate(body.split(b"\n")[:-1], start=1) if raw.strip()]
    log.records = [_parse_line(raw, path, i, check) for i, raw in raws]
    log.good_size = cut
    if tail:
        rec = _tail_record(tail, path, n_lines + 1, check)
        if rec is None:
            log.torn_tail = tail
            msg = f"{path}:{n_lines + 1}: {torn_line_message(tail)}; ignoring it."
        else:
            log.records.append(rec)
            log.unterminated = True
            log.good_size = len(data)
            msg = (
                f"{path}:{n_lines + 1}: the last line is a complete record without its final newline (the file "
                "was saved by an editor?); counting it."
            )
        log.warnings.append(msg)
        warnings.warn(msg, TornLineWarning, stacklevel=3)
    seen: set[str] = set()
    for i, rec in zip([i for i, _ in raws] + [n_lines + 1], log.records, strict=False):
        if rec["id"] in seen:
            raise AnnotationError(f"{path}:{i}: record id {rec['id']!r} appears twice.")
        seen.add(rec["id"])
    return log


def torn_line_message(tail: bytes) -> str:
    """What a torn last line is, truthfully: an interrupted write or a cut file, and what to do."""
    m = re.search(rb'"cluster":(-?\d+)', tail)
    if m:
        what = f"a decision on cluster {int(m.group(1))}"
    elif b'"kind":"undo"' in tail or b'"undoes"' in tail:
        what = "an undo"
    else:
        what = "a decision or an undo"
    return (f"incomplete last line ({len(tail)} bytes, no newline): a write that was interrupted, or the end of "
            f"a file that was cut (restored, truncated, disk full); it looks like {what}. If one was made there, "
            "make it again in `python -m cluster annotate`")


def read_log(path: str | Path, check: RecordCheck | None = None) -> AnnotationLog:
    """Parse annotations.jsonl (a missing file is an empty log).

    A torn last line is reported with a `TornLineWarning` and ignored; a last line that is a whole
    record without its newline is reported the same way and counted; any other bad line raises.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return AnnotationLog(records=[])
    return parse_log(data, path, check)


def members_key(members: Iterable[str]) -> bytes:
    """A digest of a member set: equal sets give equal keys, whatever their order. A decision names its cluster by
    its members (cluster ids change from one clustering to the next), so every reader of the log matches on this."""
    return hashlib.blake2b(json.dumps(sorted(members)).encode("utf-8"), digest_size=16).digest()


def record_line(record: dict) -> bytes:
    """The one way a record is written: compact, sorted keys, UTF-8, one line."""
    return (json.dumps(record, ensure_ascii=False, sort_keys=True, separators=(",", ":")) + "\n").encode("utf-8")


def decision_record(*, cluster: int, decision: str, members: list[str], ticked: list[str], edges: list[list[str]],
                    clusters_file: str, clusters_sha256: str, annotator: str,
                    groups: list[list[str]] | None = None) -> dict:
    """A new decision record (fresh id, the time now) in the log's format; `groups`: a split's sub-groups."""
    rec = {
        "kind": DECISION,
        "id": new_id(),
        "time": now_iso(),
        "annotator": annotator,
        "clusters_file": clusters_file,
        "clusters_sha256": clusters_sha256,
        "cluster": cluster,
        "decision": decision,
        "members": list(members),
        "ticked": list(ticked),
        "edges": [list(e) for e in edges],
    }
    if groups is not None:
        rec["groups"] = [list(g) for g in groups]
    return rec


def addition_record(*, cluster: int, uid: str, edges: list[list[str]], query: dict, clusters_file: str,
                    clusters_sha256: str, annotator: str) -> dict:
    """A new "add" decision: the image `uid`, found by the search `query`, belongs with `cluster` (module doc)."""
    rec = decision_record(cluster=cluster, decision=ADD, members=[uid], ticked=[uid], edges=edges,
                          clusters_file=clusters_file, clusters_sha256=clusters_sha256, annotator=annotator)
    rec["query"] = dict(query)
    return rec


def undo_record(decision_id: str, annotator: str) -> dict:
    """A new record that cancels the decision `decision_id`."""
    return {"kind": UNDO, "id": new_id(), "time": now_iso(), "annotator": annotator, "undoes": decision_id}


# -- proposals.jsonl: selections made on the map, judged like clusters ---------------------------------------------
#
# `{"kind": "proposal", "id", "time", "annotator", "cluster": <int <= -2>, "note", "uids": [...]}`, one line
# each, beside annotations.jsonl and written the same way (append-only, flock, fsync before the reply). A
# proposal's `cluster` id is negative: clusters.csv's labels are >= -1 (-1 = noise), so the two never clash,
# whatever clusters file the server is started with. Each new one takes the lowest id so far minus one.


def _check_proposal(rec: object, path: Path, line: int) -> dict:
    where = f"{path}:{line}"
    if not isinstance(rec, dict) or rec.get("kind") != PROPOSAL:
        raise AnnotationError(f"{where}: not a proposal record (a JSON object with kind 'proposal'); fix or remove "
                              "that line.")
    cid, uids = rec.get("cluster"), rec.get("uids")
    if not isinstance(rec.get("id"), str) or not rec["id"]:
        raise AnnotationError(f"{where}: proposal without a string 'id'.")
    if not isinstance(cid, int) or isinstance(cid, bool) or cid > -2:
        raise AnnotationError(f"{where}: proposal 'cluster' must be an integer <= -2, got {cid!r}.")
    if not isinstance(uids, list) or not all(isinstance(u, str) for u in uids):
        raise AnnotationError(f"{where}: proposal without a list of uid strings 'uids'.")
    return rec


def read_proposals(path: str | Path) -> AnnotationLog:
    """Parse proposals.jsonl like annotations.jsonl (torn last line ignored with a warning; a missing file is
    empty); a cluster id used twice is an error naming the line."""
    log = read_log(path, _check_proposal)
    seen: set[int] = set()
    for rec in log.records:
        if rec["cluster"] in seen:
            raise AnnotationError(f"{path}: proposal cluster id {rec['cluster']} appears twice; remove one line.")
        seen.add(rec["cluster"])
    return log


def proposal_record(*, cluster: int, uids: list[str], note: str, annotator: str) -> dict:
    """A new proposal record (fresh id, the time now)."""
    return {"kind": PROPOSAL, "id": new_id(), "time": now_iso(), "annotator": annotator, "cluster": cluster,
            "note": note, "uids": list(uids)}
