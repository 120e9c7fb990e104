"""The annotation page's writer of `annotations.jsonl` (the format and its reader: `cluster.annotations`).

The log is append-only (why: `cluster.annotations`). The writer checks the tail before *every* append, not
only at start-up, because a torn line can appear while the server runs (a second server that crashed,
another program):
- if the torn bytes are the beginning of a record this server holds (it wrote and acknowledged it, or read
  it whole), the file was cut: the rest of that line is written back, so the record is whole again and
  the decision is kept, and the server says so;
- otherwise it cuts the torn bytes off (keeping them in a side file `annotations.jsonl.torn-<UTC time>`) so
  that the next record never gets glued onto them, and says that a decision it held must be made again.
A last record that lacks only its newline is completed with one before the next append.

Writers on one collection (two servers, two experts) take an exclusive `flock` on the log for the check
of the tail and the append, so one never mistakes the other's line in progress for a torn one.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

from cluster.annotations import (
    DECISION,
    PROPOSAL,
    PROPOSALS_FILE,
    AnnotationError,
    AnnotationLog,
    TornLineWarning,
    decision_record,
    proposal_record,
    read_log,
    read_proposals,
    record_line,
    torn_line_message,
    undo_record,
)
from data.atomic import atomic_write_bytes, fsync_dir
from data.collection import ANNOTATIONS_FILE

try:  # POSIX only; without it (Windows) two servers on one collection are not coordinated
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None  # type: ignore[assignment]

LOCK_TIMEOUT_S = 10.0  # how long a writer waits for another process's append before giving up


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

    def __init__(self, collection_dir: str | Path, filename: str = ANNOTATIONS_FILE) -> None:
        self.path = Path(collection_dir) / filename
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
            log = self._read(self.path)
        if keep_notes:
            self.notes.extend(log.warnings)
        self.log = log
        for rec in log.records:
            self._held.setdefault(rec["id"], record_line(rec))
        self._key = key

    def _read(self, path: Path) -> AnnotationLog:
        """Parse the file (a subclass reads another kind of record the same way)."""
        return read_log(path)

    def _torn_message(self, tail: bytes) -> str:
        return torn_line_message(tail)

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
        kind = rec["kind"]
        what = f"{kind} on cluster {rec.get('cluster')}" if kind in (DECISION, PROPOSAL) else kind
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
        self.notes.append(f"{self.path}: {self._torn_message(self.log.torn_tail)}. The line was moved to {side.name}.")
        self.log.torn_tail = b""

    def append(self, record: dict | Callable[[AnnotationLog], dict]) -> dict:
        """Write one record as one line, flush and fsync it, then add it to the in-memory log.

        Under the flock: re-read the file if it changed, repair its tail, then write; so a record is
        never glued onto a line someone else left without its newline. `record` may be a function of the log
        as it is under the flock (a proposal's id depends on those already written, by any server).
        """
        with self.lock:
            new_file = self._stat() is None
            with self._locked(create=True) as fd:
                assert fd is not None
                self.refresh(restore=False)
                self._repair_tail(fd)
                if callable(record):
                    record = record(self.log)
                data = record_line(record)
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

    def decide(self, **fields) -> dict:
        """Append a decision record (`cluster.annotations.decision_record`'s fields); returns it."""
        return self.append(decision_record(**fields))

    def undo(self, decision_id: str, annotator: str) -> dict:
        """Append an undo record of the decision `decision_id`; returns it."""
        return self.append(undo_record(decision_id, annotator))

    def last_active_decision(self, annotator: str | None = None) -> dict | None:
        """The last decision in force (of `annotator` only, when given: what their undo may cancel)."""
        with self.lock:
            self.refresh()
            active = self.log.active_decisions()
            if annotator is not None:
                active = [r for r in active if r.get("annotator") == annotator]
            return active[-1] if active else None


class ProposalStore(AnnotationStore):
    """`DIR/proposals.jsonl`: selections made on the map, written exactly like decisions (one line each, under
    the flock, fsynced before the reply; a torn last line repaired or moved aside the same way).

    A new proposal takes the cluster id one below the lowest one in the file (-2 for the first): chosen under
    the flock, so two servers on one collection never give out the same id.
    """

    def __init__(self, collection_dir: str | Path) -> None:
        super().__init__(collection_dir, PROPOSALS_FILE)

    def _read(self, path: Path) -> AnnotationLog:
        return read_proposals(path)

    def _torn_message(self, tail: bytes) -> str:
        return (f"incomplete last line ({len(tail)} bytes, no newline): a proposal whose write was interrupted, or "
                "the end of a file that was cut; if you made one there, send it again from the map")

    def propose(self, uids: list[str], note: str, annotator: str) -> dict:
        """Append a proposal of these uids; returns its record (with its new cluster id)."""
        def make(log: AnnotationLog) -> dict:
            lowest = min((r["cluster"] for r in log.records), default=-1)
            return proposal_record(cluster=lowest - 1, uids=uids, note=note, annotator=annotator)

        return self.append(make)
