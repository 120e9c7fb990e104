"""The annotate command as a real server process: acknowledged decisions survive SIGKILL."""

from __future__ import annotations

import http.client
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from click.testing import CliRunner

from cluster.annotate.cli import annotate
from cluster.annotations import read_log
from tests.cluster.conftest import EXPECTED_QUEUE

REPO = Path(__file__).resolve().parents[2]


def start_server(coll, annotator="ada") -> tuple[subprocess.Popen, str]:
    """Start `annotate` on a free loopback port; return the process and its base URL."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "cluster.annotate.cli", "--collection", str(coll.root), "--clusters",
         str(coll.clusters), "--port", "0", "--annotator", annotator],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    deadline = time.monotonic() + 60
    seen = []
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        seen.append(line)
        m = re.search(r"Open (http://127\.0\.0\.1:\d+)/", line)
        if m:
            threading.Thread(target=proc.stdout.read, daemon=True).start()  # keep the pipe drained
            return proc, m.group(1)
    proc.kill()
    raise AssertionError("server did not start:\n" + "".join(seen))


def post(base: str, path: str, body: dict) -> tuple[int, dict]:
    req = urllib.request.Request(base + path, data=json.dumps(body).encode(), method="POST",
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def post_chunked(base: str, path: str, payload: bytes) -> int:
    """POST with Transfer-Encoding: chunked (no Content-Length to check up front)."""
    host, port = base.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    try:
        conn.putrequest("POST", path)
        conn.putheader("Content-Type", "application/json")
        conn.putheader("Transfer-Encoding", "chunked")
        conn.endheaders()
        for i in range(0, len(payload), 8192):
            part = payload[i : i + 8192]
            conn.send(f"{len(part):x}\r\n".encode() + part + b"\r\n")
        conn.send(b"0\r\n\r\n")
        return conn.getresponse().status
    finally:
        conn.close()


def get(base: str, path: str) -> dict:
    with urllib.request.urlopen(base + path, timeout=10) as r:
        return json.loads(r.read())


def kill_during(proc, hammer, stop: threading.Event, enough) -> None:
    """Run `hammer` against the server in a thread, SIGKILL the server once `enough()` (or after 20 s), then
    stop the thread and reap the server."""
    t = threading.Thread(target=hammer)
    t.start()
    deadline = time.monotonic() + 20
    while not enough() and time.monotonic() < deadline:
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    stop.set()
    t.join(timeout=20)
    proc.wait(timeout=20)


def test_help():
    r = CliRunner().invoke(annotate, ["--help"])
    assert r.exit_code == 0 and "--collection" in r.output and "127.0.0.1" in r.output


def test_bad_inputs_are_clear_errors(annot_collection, tmp_path):
    r = CliRunner().invoke(annotate, ["--collection", str(annot_collection.root), "--clusters",
                                      str(tmp_path / "none.csv")])
    assert r.exit_code != 0 and "none.csv" in r.output and "Traceback" not in r.output
    (annot_collection.root / "annotations.jsonl").write_text("{broken\n{}\n")
    r = CliRunner().invoke(annotate, ["--collection", str(annot_collection.root), "--clusters",
                                      str(annot_collection.clusters)])
    assert r.exit_code != 0 and "annotations.jsonl:1" in r.output


@pytest.mark.slow
def test_sigkill_loses_no_acknowledged_decision(annot_collection):
    proc, base = start_server(annot_collection)
    acked: list[tuple[str, str]] = []  # (kind, id) in the order the server acknowledged them
    stop = threading.Event()

    def hammer():
        try:
            while not stop.is_set():
                cid = get(base, "/api/state")["cluster"]["id"]
                code, body = post(base, "/api/decision", {"cluster": cid, "decision": "skip", "ticked": []})
                assert code == 200, body
                acked.append(("decision", body["id"]))
                code, body = post(base, "/api/undo", {"decision": body["id"]})
                assert code == 200, body
                acked.append(("undo", body["undone"]))
        except (OSError, urllib.error.URLError):
            pass  # the server was killed under us

    try:
        # a real server sees chunked bodies: an oversized one is 413, an absurdly nested one 400
        assert post_chunked(base, "/api/undo", b"x" * (100 * 1024)) == 413
        assert post_chunked(base, "/api/decision", b"x" * (4 * 1024 * 1024 + 100)) == 413
        assert post_chunked(base, "/api/decision", b"[" * 60000) == 400
        # one decision that stays, then a stream of decide/undo pairs that is cut by the kill
        code, first = post(base, "/api/decision", {"cluster": EXPECTED_QUEUE[0], "decision": "wrong", "ticked": []})
        assert code == 200
        kill_during(proc, hammer, stop, lambda: len(acked) >= 40)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert len(acked) >= 40, "too few decisions acknowledged before the kill"
    log = read_log(annot_collection.root / "annotations.jsonl")
    decisions = {r["id"] for r in log.records if r["kind"] == "decision"}
    undone = log.undone_ids()
    assert first["id"] in decisions
    for kind, did in acked:
        assert did in (decisions if kind == "decision" else undone), (kind, did)
    # at most one record beyond what was acknowledged (written, killed before the reply)
    assert len(log.records) - (1 + len(acked)) in (0, 1)

    # a restart resumes: the kept decision is done, the cut-off pairs are consistent
    active = {r["id"] for r in log.active_decisions()}
    proc2, base2 = start_server(annot_collection, annotator="bob")
    try:
        s = get(base2, "/api/state")
        assert s["progress"]["done"] == len(active)
        assert s["last_decision"]["id"] == log.active_decisions()[-1]["id"]
        if len(active) == 1:
            assert s["cluster"]["id"] == EXPECTED_QUEUE[1]
    finally:
        proc2.send_signal(signal.SIGINT)
        proc2.wait(timeout=20)
    assert proc2.returncode == 0


@pytest.mark.slow
def test_sigkill_loses_no_acknowledged_proposal(annot_collection):
    """Proposals from the map are journaled like decisions: each one acknowledged is in proposals.jsonl after a
    SIGKILL in the middle of a stream of them, and a restarted server queues them all."""
    from itertools import combinations

    from cluster.annotations import read_proposals

    pairs = list(combinations(annot_collection.uids, 2))
    proc, base = start_server(annot_collection)
    acked: list[int] = []
    stop = threading.Event()

    def hammer():
        try:
            for a, b in pairs:
                if stop.is_set():
                    return
                code, body = post(base, "/api/proposal", {"uids": [a, b], "note": "lasso"})
                assert code == 201, body
                acked.append(body["cluster"])
        except (OSError, urllib.error.URLError):
            pass  # the server was killed under us

    try:
        kill_during(proc, hammer, stop, lambda: len(acked) >= 30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert len(acked) >= 30, "too few proposals acknowledged before the kill"
    kept = {r["cluster"] for r in read_proposals(annot_collection.root / "proposals.jsonl").records}
    assert set(acked) <= kept and len(kept) - len(acked) in (0, 1)
    proc2, base2 = start_server(annot_collection, annotator="bob")
    try:
        s = get(base2, "/api/state")
        assert s["progress"]["total"] == len(EXPECTED_QUEUE) + len(kept)
        assert s["cluster"]["id"] == -2 and s["cluster"]["kind"] == "proposal"
    finally:
        proc2.send_signal(signal.SIGINT)
        proc2.wait(timeout=20)
    assert proc2.returncode == 0
