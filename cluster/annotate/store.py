"""`annotations.jsonl`: the append-only log of the expert's decisions.

One JSON object per line. Two kinds of record:

- `{"kind": "decision", "id", "time", "annotator", "clusters_file", "clusters_sha256", "cluster",
   "decision", "members", "ticked", "edges": [[a, b, TYPE], ...]}`
- `{"kind": "undo", "id", "time", "annotator", "undoes": <decision id>}`

Why append-only: a decision is acknowledged to the browser only after its line is written, flushed
and fsynced, and nothing already written is ever rewritten. A process killed mid-write can therefore
leave at most a torn *last* line (one without its newline), and that line belongs to a request that was
never acknowledged. Readers report and ignore such a line; the writer cuts it off (keeping the bytes in
a side file) before appending, so it never ends up in the middle of the log.

A malformed line anywhere else means the file was edited by hand or damaged: that is an error naming
the line, never silently skipped, because a skipped line could be a lost decision or a lost undo.
"""

from __future__ import annotations

import json
import os
import threading
import uuid
import warnings
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from data.collection import ANNOTATIONS_FILE, CONNECTION_TYPES

DECISION = "decision"
UNDO = "undo"


class AnnotationError(ValueError):
    """An annotations.jsonl that cannot be trusted; the message names the file and the line."""


class TornLineWarning(UserWarning):
    """The last line of annotations.jsonl is incomplete (a write was interrupted); it is ignored."""


def now_iso() -> str:
    """Current time, ISO 8601 in UTC with a `Z` suffix (what the log and connections.csv store)."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def new_id() -> str:
    return uuid.uuid4().hex


@dataclass
class AnnotationLog:
    """The parsed log: records in file order, plus what a reader had to ignore."""

    records: list[dict]
    torn_tail: bytes = b""  # the incomplete last line, if any
    good_size: int = 0  # byte length of the complete lines
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


def read_log(path: str | Path) -> AnnotationLog:
    """Parse annotations.jsonl (a missing file is an empty log).

    A torn last line is reported with a `TornLineWarning` and ignored; any other bad line raises.
    """
    path = Path(path)
    if not path.exists():
        return AnnotationLog(records=[])
    data = path.read_bytes()
    log = AnnotationLog(records=[])
    # Everything after the last newline is a line that was never completed.
    cut = data.rfind(b"\n") + 1
    body, tail = data[:cut], data[cut:]
    log.good_size = cut
    if tail:
        log.torn_tail = tail
        n_line = body.count(b"\n") + 1
        msg = (
            f"{path}:{n_line}: incomplete last line ({len(tail)} bytes, no newline): a write was interrupted "
            "before it was acknowledged; ignoring it."
        )
        log.warnings.append(msg)
        warnings.warn(msg, TornLineWarning, stacklevel=2)
    seen: set[str] = set()
    for i, raw in enumerate(body.split(b"\n")[:-1], start=1):
        if not raw.strip():
            continue
        try:
            rec = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise AnnotationError(
                f"{path}:{i}: not a JSON line ({e}). The log is append-only; only the last line can be torn by a "
                "crash, so this line was edited or damaged: restore it from a backup or remove it by hand."
            ) from None
        rec = _check_record(rec, path, i)
        if rec["id"] in seen:
            raise AnnotationError(f"{path}:{i}: record id {rec['id']!r} appears twice.")
        seen.add(rec["id"])
        log.records.append(rec)
    return log


class AnnotationStore:
    """Appends records to `DIR/annotations.jsonl`, durably, one line per record.

    The in-memory `log` mirrors the file; every public method holds one lock, so the threaded
    server never interleaves two writes.
    """

    def __init__(self, collection_dir: str | Path) -> None:
        self.path = Path(collection_dir) / ANNOTATIONS_FILE
        self.lock = threading.RLock()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", TornLineWarning)
            self.log = read_log(self.path)
        self.notes: list[str] = list(self.log.warnings)
        if self.log.torn_tail:
            self._cut_torn_tail()
        self._size = self._disk_size()

    def _disk_size(self) -> int:
        try:
            return self.path.stat().st_size
        except FileNotFoundError:
            return 0

    def refresh(self) -> None:
        """Re-read the log if another process appended to it (two experts, two servers, one collection).

        Appends are single `write` calls on an O_APPEND file, so lines from two servers never interleave;
        a line another server is writing right now is torn for an instant and picked up next time.
        """
        with self.lock:
            size = self._disk_size()
            if size == self._size:
                return
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", TornLineWarning)
                log = read_log(self.path)
            self.log.records = log.records
            self._size = log.good_size

    def _cut_torn_tail(self) -> None:
        """Move the torn last line into a side file and truncate the log to its complete lines."""
        side = self.path.with_name(f"{self.path.name}.torn-{datetime.now(UTC).strftime('%Y%m%dT%H%M%S%fZ')}")
        with open(side, "wb") as fh:
            fh.write(self.log.torn_tail)
            fh.flush()
            os.fsync(fh.fileno())
        os.truncate(self.path, self.log.good_size)
        self._fsync_file()
        self.notes.append(f"{self.path}: the incomplete last line was moved to {side.name}.")
        self.log.torn_tail = b""

    def _fsync_file(self) -> None:
        fd = os.open(self.path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def append(self, record: dict) -> dict:
        """Write one record as one line, flush and fsync it, then add it to the in-memory log."""
        data = (json.dumps(record, ensure_ascii=False, sort_keys=True, separators=(",", ":")) + "\n").encode("utf-8")
        with self.lock:
            self.refresh()
            new_file = not self.path.exists()
            with open(self.path, "ab") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            if new_file:  # make the new directory entry durable too
                dfd = os.open(self.path.parent, os.O_RDONLY)
                try:
                    os.fsync(dfd)
                finally:
                    os.close(dfd)
            if self._disk_size() == self._size + len(data):
                self._size += len(data)
                self.log.records.append(record)
            else:  # another process appended in between: take the file as it is
                self._size = -1
                self.refresh()
        return record

    def decide(
        self,
        *,
        cluster: int,
        decision: str,
        members: list[str],
        ticked: list[str],
        edges: list[list[str]],
        clusters_file: str,
        clusters_sha256: str,
        annotator: str,
    ) -> dict:
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
        return self.append(rec)

    def undo(self, decision_id: str, annotator: str) -> dict:
        rec = {"kind": UNDO, "id": new_id(), "time": now_iso(), "annotator": annotator, "undoes": decision_id}
        return self.append(rec)

    def last_active_decision(self) -> dict | None:
        with self.lock:
            self.refresh()
            active = self.log.active_decisions()
            return active[-1] if active else None
