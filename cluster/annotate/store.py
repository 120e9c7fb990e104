"""`annotations.jsonl`: the append-only log of the expert's decisions.

One JSON object per line. Two kinds of record:

- `{"kind": "decision", "id", "time", "annotator", "clusters_file", "clusters_sha256", "cluster",
   "decision", "members", "ticked", "edges": [[a, b, TYPE], ...]}`
- `{"kind": "undo", "id", "time", "annotator", "undoes": <decision id>}`

Why append-only: a decision is acknowledged to the browser only after its line is written, flushed
and fsynced, and nothing already written is ever rewritten. A process killed mid-write can therefore
leave at most a torn *last* line (one without its newline). Such a line is either a write that was
interrupted (never acknowledged) or the end of a file that was cut (a restore, a full disk, a `truncate`),
which may have been an acknowledged decision: nobody can tell from the bytes alone. Readers report and
ignore such a line, saying both. The writer checks the tail before *every* append, not only at start-up,
because a torn line can appear while the server runs (a second server that crashed, another program):
- if the torn bytes are the beginning of a record this server holds (it wrote and acknowledged it, or read
  it whole), the file was cut: the rest of that line is written back, so the record is whole again and
  the decision is kept, and the server says so;
- otherwise it cuts the torn bytes off (keeping them in a side file `annotations.jsonl.torn-<UTC time>`) so
  that the next record never gets glued onto them, and says that a decision it held must be made again.

A last line that is a complete, valid record and lacks only its newline is different: a prefix of one of
our writes is never valid JSON, so such a line was written whole, most likely by an editor that saved
the file without a final newline, and it may be an acknowledged decision. Readers count it, and the
writer completes it with a newline before appending; both say so in their notes.

Writers on one collection (two servers, two experts) take an exclusive `flock` on the log for the check
of the tail and the append, so one never mistakes the other's line in progress for a torn one.

A malformed line anywhere else means the file was edited by hand or damaged: that is an error naming
the line, never silently skipped, because a skipped line could be a lost decision or a lost undo.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import threading
import time
import uuid
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from data.atomic import atomic_write_bytes, fsync_dir
from data.collection import ANNOTATIONS_FILE, CONNECTION_TYPES

try:  # POSIX only; without it (Windows) two servers on one collection are not coordinated
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None  # type: ignore[assignment]

DECISION = "decision"
UNDO = "undo"


class AnnotationError(ValueError):
    """An annotations.jsonl that cannot be trusted; the message names the file and the line."""


class TornLineWarning(UserWarning):
    """The last line of annotations.jsonl has no newline: ignored if incomplete, counted if a whole record."""


LOCK_TIMEOUT_S = 10.0  # how long a writer waits for another process's append before giving up


def now_iso() -> str:
    """Current time, ISO 8601 in UTC with a `Z` suffix (what the log and connections.csv store)."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def new_id() -> str:
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


def _parse_line(raw: bytes, path: Path, line: int) -> dict:
    try:
        rec = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise AnnotationError(
            f"{path}:{line}: not a JSON line ({e}). The log is append-only; only the last line can be torn by a "
            "crash, so this line was edited or damaged: restore it from a backup or remove it by hand."
        ) from None
    return _check_record(rec, path, line)


def _tail_record(tail: bytes, path: Path, line: int) -> dict | None:
    """The last line, which has no newline: a whole record (returned), or torn bytes (None).

    A prefix of a JSON object is never itself a JSON object, so bytes that parse were written whole;
    bytes that parse but are not a valid record were edited, which is an error as on any other line.
    """
    try:
        rec = json.loads(tail.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        return None
    return _check_record(rec, path, line)


def parse_log(data: bytes, path: str | Path) -> AnnotationLog:
    """Parse the bytes of annotations.jsonl (`path` only names the file in messages); see `read_log`."""
    path = Path(path)
    log = AnnotationLog(records=[])
    # Everything after the last newline is a line that has no newline (torn, or saved without one).
    cut = data.rfind(b"\n") + 1
    body, tail = data[:cut], data[cut:]
    n_lines = body.count(b"\n")
    raws = [(i, raw) for i, raw in enumerate(body.split(b"\n")[:-1], start=1) if raw.strip()]
    log.records = [_parse_line(raw, path, i) for i, raw in raws]
    log.good_size = cut
    if tail:
        rec = _tail_record(tail, path, n_lines + 1)
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


def read_log(path: str | Path) -> AnnotationLog:
    """Parse annotations.jsonl (a missing file is an empty log).

    A torn last line is reported with a `TornLineWarning` and ignored; a last line that is a whole
    record without its newline is reported the same way and counted; any other bad line raises.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return AnnotationLog(records=[])
    return parse_log(data, path)


def record_line(record: dict) -> bytes:
    """The one way a record is written: compact, sorted keys, UTF-8, one line."""
    return (json.dumps(record, ensure_ascii=False, sort_keys=True, separators=(",", ":")) + "\n").encode("utf-8")


def _stat_key(st: os.stat_result | None) -> tuple[int, int, int, int] | None:
    """What identifies one state of the file: a changed size, a replaced file or a rewrite all change it."""
    return None if st is None else (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


class AnnotationStore:
    """Appends records to `DIR/annotations.jsonl`, durably, one line per record.

    The in-memory `log` mirrors the file; every public method holds one lock, so the threaded
    server never interleaves two writes, and appends also hold an exclusive `flock` on the file, so two
    servers on one collection never do either. `_key` is the stat key (device, inode, size, mtime) of the
    file the in-memory log was read from: any change (an append by another server, a shrink, a file
    replaced from a backup) makes `refresh` read the file again.
    """

    def __init__(self, collection_dir: str | Path) -> None:
        self.path = Path(collection_dir) / ANNOTATIONS_FILE
        self.lock = threading.RLock()
        self.log = AnnotationLog(records=[])
        self.notes: list[str] = []
        self._key: tuple[int, int, int, int] | None = None
        # id -> line of every record this server has held (written and acknowledged, or read whole): a torn
        # last line that begins one of them is that record cut short, and can be written back whole
        self._held: dict[str, bytes] = {}
        self._acknowledged: set[str] = set()  # ids of the records this server wrote
        with self.lock:
            self._reload(keep_notes=True)
            if self.log.torn_tail or self.log.unterminated:
                with self._locked(create=False) as fd:
                    if fd is not None:
                        self._reload()  # under the lock: the tail may have been another server's line in progress
                        self._repair_tail(fd)

    def _stat(self) -> os.stat_result | None:
        try:
            return self.path.stat()
        except FileNotFoundError:
            return None

    @contextlib.contextmanager
    def _locked(self, *, create: bool) -> Iterator[int | None]:
        """An fd of the log (read-write, append) under an exclusive flock; None if absent and not `create`.

        After locking, the fd is checked to still be the file at `path` (another process may have replaced
        it meanwhile); otherwise the lock is retaken on the new file.
        """
        flags = os.O_RDWR | os.O_APPEND | (os.O_CREAT if create else 0)
        deadline = time.monotonic() + LOCK_TIMEOUT_S
        while True:
            try:
                fd = os.open(self.path, flags, 0o644)
            except FileNotFoundError:
                yield None
                return
            try:
                self._flock(fd, deadline)
                st = self._stat()
                if st is not None and (st.st_dev, st.st_ino) == (os.fstat(fd).st_dev, os.fstat(fd).st_ino):
                    break
            except BaseException:
                os.close(fd)
                raise
            os.close(fd)
        try:
            yield fd
        finally:
            os.close(fd)  # closing releases the flock

    def _flock(self, fd: int, deadline: float) -> None:
        if fcntl is None:  # pragma: no cover
            return
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise AnnotationError(
                        f"{self.path}: another process has held the lock on this file for over "
                        f"{LOCK_TIMEOUT_S:.0f} s; is a second annotation server stuck? Stop it and try again."
                    ) from None
                time.sleep(0.01)

    def _reload(self, *, keep_notes: bool = False) -> None:
        """Read the file into the in-memory log (raises AnnotationError if a line is damaged)."""
        key = _stat_key(self._stat())  # taken first: a write during the read only causes another read later
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", TornLineWarning)
            log = read_log(self.path)
        if keep_notes:
            self.notes.extend(log.warnings)
        self.log = log
        for rec in log.records:
            self._held.setdefault(rec["id"], record_line(rec))
        self._key = key

    def refresh(self, *, restore: bool = True) -> None:
        """Re-read the log if the file changed (another server appended, a person edited or replaced it).

        Appends are single `write` calls on an O_APPEND file under a flock, so lines from two servers never
        interleave; a line another server is writing right now may look torn for an instant: it is not taken
        as a record and is picked up next time. A record of ours that the file lost the end of is written
        back at once (`restore`), so no page is shown its cluster as undecided and decides it twice;
        `append`, which holds the flock already, passes False and repairs the tail itself.
        """
        with self.lock:
            if _stat_key(self._stat()) != self._key:
                self._reload()
                if restore and self.log.torn_tail and self._cut_record() is not None:
                    self._restore_cut_record()

    def _restore_cut_record(self) -> None:
        """Under the flock, check the tail again and complete a held record the file lost the end of."""
        with self._locked(create=False) as fd:
            if fd is None:
                return
            self._reload()
            if self.log.torn_tail and self._complete_torn_tail(fd):
                self.log.good_size = os.fstat(fd).st_size
                self._key = _stat_key(os.fstat(fd))

    def _repair_tail(self, fd: int) -> None:
        """Make the file end with a newline before anything is appended (caller holds the flock).

        A torn tail that begins a record this server holds is completed; any other moves into a side file and
        is cut off; a whole record without its newline gets one.
        """
        if self.log.torn_tail and not self._complete_torn_tail(fd):
            self._cut_torn_tail(fd)
        elif self.log.unterminated:
            os.write(fd, b"\n")
            os.fsync(fd)
            self.log.unterminated = False
            self.notes.append(f"{self.path}: the last record had no final newline; one was added.")
        self.log.good_size = os.fstat(fd).st_size
        self._key = _stat_key(os.fstat(fd))

    def _cut_record(self) -> tuple[dict, bytes] | None:
        """The held record whose line the torn tail begins (the earliest such, not in the file), if any."""
        tail = self.log.torn_tail
        in_file = {r["id"] for r in self.log.records}
        for rid, line in self._held.items():
            if rid not in in_file and len(line) > len(tail) and line.startswith(tail):
                return json.loads(line), line
        return None

    def _complete_torn_tail(self, fd: int) -> bool:
        """Write back the rest of a held record that the file lost its end of; False if the tail is no such."""
        found = self._cut_record()
        if found is None:
            return False
        rec, line = found
        rest = line[len(self.log.torn_tail):]
        if os.write(fd, rest) != len(rest):
            raise OSError(f"{self.path}: short write (disk full?) while repairing the last line.")
        os.fsync(fd)
        self.log.records.append(rec)
        self.log.torn_tail = b""
        kind = "decision" if rec["kind"] == DECISION else "undo"
        what = f"decision on cluster {rec.get('cluster')}" if kind == "decision" else "undo"
        how = "recorded and acknowledged" if rec["id"] in self._acknowledged else "read whole"
        self.notes.append(
            f"{self.path}: the file was cut inside its last line, the {what} (id {rec['id']}, {rec.get('time')}) "
            f"that this server had {how}; its missing {len(rest)} bytes were written back, so the {kind} is kept."
        )
        return True

    def _cut_torn_tail(self, fd: int) -> None:
        """Move the torn last line into a side file and truncate the log to its complete lines."""
        side = self.path.with_name(f"{self.path.name}.torn-{datetime.now(UTC).strftime('%Y%m%dT%H%M%S%fZ')}")
        atomic_write_bytes(side, self.log.torn_tail)
        os.ftruncate(fd, self.log.good_size)
        os.fsync(fd)
        self.notes.append(f"{self.path}: {torn_line_message(self.log.torn_tail)}. The line was moved to {side.name}.")
        self.log.torn_tail = b""

    def append(self, record: dict) -> dict:
        """Write one record as one line, flush and fsync it, then add it to the in-memory log.

        Under the flock: re-read the file if it changed, repair its tail, then write; so a record is
        never glued onto a line someone else left without its newline.
        """
        data = record_line(record)
        with self.lock:
            new_file = self._stat() is None
            with self._locked(create=True) as fd:
                assert fd is not None
                self.refresh(restore=False)
                self._repair_tail(fd)
                before = os.fstat(fd).st_size
                if os.write(fd, data) != len(data):
                    raise OSError(f"{self.path}: short write (disk full?); the decision was not recorded.")
                os.fsync(fd)
                after = os.fstat(fd)
            if new_file:  # make the new directory entry durable too
                fsync_dir(self.path.parent)
            self._held[record["id"]] = data
            self._acknowledged.add(record["id"])
            if after.st_size == before + len(data):
                self.log.records.append(record)
                self.log.good_size = after.st_size
                self._key = _stat_key(after)
            else:  # someone outside the lock wrote in between: take the file as it is
                self._reload()
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
