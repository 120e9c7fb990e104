"""`model embed` writes its store chunk by chunk (`OUT.parts/`): float16, several processes (simulated: each
process's share computed in turn, as jax.distributed's processes would on a shared file system), resume
across settings refused, unreadable images of earlier chunks still reported."""

from __future__ import annotations

import numpy as np
import pytest
from click.testing import CliRunner

import model.embed as E
from data.signatures import load_signatures
from model.__main__ import cli
from model.registry import build

R = 32


@pytest.fixture(scope="module")
def r18():
    return build("resnet18", seed=0)


def _store(coll, model, out, **kw):
    return E.embed_to_store(coll, model, out, resolution=R, batch_size=2, chunk_images=2, progress=False, **kw)


def _as_process(monkeypatch, p: int, n: int) -> None:
    monkeypatch.setattr(E, "_process", lambda: (p, n))
    monkeypatch.setattr(E, "_sync", lambda name: None)
    monkeypatch.setattr(E, "_all_ok", lambda ok: ok)


def test_processes_share_the_chunks_and_process_0_merges_the_same_store(tiny_collection, tmp_path, r18,
                                                                        monkeypatch, capsys):
    one = _store(tiny_collection, r18, tmp_path / "one.npz")
    assert (one.count, one.skipped, one.computed, one.written) == (3, 2, 3, True)
    capsys.readouterr()
    _as_process(monkeypatch, 1, 2)  # 5 rows in chunks of 2: chunks 0, 2 for process 0, chunk 1 for process 1
    p1 = _store(tiny_collection, r18, tmp_path / "two.npz")
    assert (p1.computed, p1.written) == (1, False) and not (tmp_path / "two.npz").exists()
    assert E.StoreParts.beside(tmp_path / "two.npz").done() == {1}
    err1 = capsys.readouterr().err
    assert "skipped uid bad" in err1 and "gone" not in err1  # row 2 (bad) is in chunk 1, row 4 (gone) in chunk 2
    _as_process(monkeypatch, 0, 2)
    p0 = _store(tiny_collection, r18, tmp_path / "two.npz")
    assert (p0.computed, p0.written, p0.count, p0.skipped) == (2, True, 3, 2)
    err0 = capsys.readouterr().err
    assert "skipped uid bad" in err0 and "corrupt.jpg" in err0  # chunk 1's, reported by the merging process
    assert "skipped uid gone" in err0 and "2 of 5 images could not be read" in err0
    assert not E.StoreParts.beside(tmp_path / "two.npz").folder.exists()
    assert (tmp_path / "two.npz").read_bytes() == (tmp_path / "one.npz").read_bytes()


def test_chunks_padded_to_whole_batches():
    plan = E.ChunkPlan(7, 3)
    rows = E.chunk_rows(plan, [0, 2], 2)
    assert rows.tolist() == [0, 1, 2, -1, 6, -1]


def test_in_memory_and_store_agree_and_decoding_in_worker_processes_changes_nothing(tiny_collection, tmp_path, r18):
    sig = E.embed_collection(tiny_collection, r18, resolution=R, batch_size=2, progress=False)
    _store(tiny_collection, r18, tmp_path / "w.npz", workers=2)
    got = load_signatures(tmp_path / "w.npz")
    assert got.uids == sig.uids and got.skipped == sig.skipped
    np.testing.assert_array_equal(got.dense(), sig.vectors)


def _cli(coll, out, *extra):
    args = ["embed", "--collection", str(coll), "--resolution", str(R), "--arch", "resnet18", "--weights", "random",
            "--batch-size", "2", "--no-progress", "--chunk-images", "2", "--out", str(out)]
    return CliRunner().invoke(cli, [*args, *extra])


def test_cli_float16_store_and_images_per_second(tiny_collection, tmp_path):
    res = _cli(tiny_collection, tmp_path / "h.npz", "--store-dtype", "float16")
    assert res.exit_code == 0, res.output
    assert "3 signatures (512-d), 2 skipped" in res.stdout
    assert "images/s on 1 device" in res.stderr
    h = load_signatures(tmp_path / "h.npz")
    assert h.dtype == "float16" and h.dense().dtype == np.float32
    assert _cli(tiny_collection, tmp_path / "f.npz").exit_code == 0
    np.testing.assert_allclose(h.dense(), load_signatures(tmp_path / "f.npz").dense(), atol=1e-3)


def test_an_unfinished_store_of_other_settings_is_refused_in_one_line(tiny_collection, tmp_path, r18, monkeypatch):
    _as_process(monkeypatch, 1, 2)
    _store(tiny_collection, r18, tmp_path / "s.npz")  # leaves s.npz.parts/ with chunk 1, as a killed run does
    monkeypatch.undo()
    res = _cli(tiny_collection, tmp_path / "s.npz", "--seed", "3")
    assert res.exit_code == 1 and "Traceback" not in res.output
    assert "holds an unfinished embedding made with other settings (parameters_sha256:" in res.output
    assert "s.npz.parts" in res.output and not (tmp_path / "s.npz").exists()


@pytest.mark.slow
def test_two_processes_under_jax_distributed_write_the_single_process_store(tiny_collection, tmp_path):
    """A real two-process job on this CPU (jax.distributed on localhost, gloo): process 1 computes its chunks,
    process 0 its own and the merge; the store is byte-identical to one process's."""
    import os
    import socket
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    with socket.socket() as s:
        s.bind(("localhost", 0))
        port = s.getsockname()[1]
    env = dict(os.environ, PYTHONPATH=str(root), JAX_PLATFORMS="cpu")
    env.pop("XLA_FLAGS", None)  # one CPU device per process
    args = [sys.executable, "-m", "model", "embed", "--collection", str(tiny_collection), "--resolution", str(R),
            "--arch", "resnet18", "--weights", "random", "--batch-size", "2", "--no-progress", "--chunk-images", "1",
            "--workers", "0", "--no-compile-cache"]
    one = subprocess.run([*args, "--out", str(tmp_path / "one.npz")], env=env, capture_output=True, text=True,
                         timeout=300)
    assert one.returncode == 0, one.stderr
    multi = [*args, "--out", str(tmp_path / "two.npz"), "--coordinator", f"localhost:{port}", "--num-processes", "2"]
    procs = [subprocess.Popen([*multi, "--process-id", str(i)], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for i in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    for p, (_, err) in zip(procs, outs, strict=True):
        assert p.returncode == 0, err[-3000:]
    assert "3 signatures (512-d), 2 skipped" in outs[0][0]
    assert "computed 2 chunks; process 0 merged them" in outs[1][0]  # chunks 1 and 3 of 0..4
    assert "skipped uid bad" in outs[0][1]  # row 2 = chunk 2, process 0's; "gone" is chunk 4, also process 0's
    assert (tmp_path / "two.npz").read_bytes() == (tmp_path / "one.npz").read_bytes()


_SIGINT_AT_CHUNK = '''
import os, signal
_replace = os.replace
def _replace_then_ctrl_c(src, dst, *a, **k):
    _replace(src, dst, *a, **k)
    if os.fspath(dst).endswith("chunk-000001.npz"):
        os.killpg(os.getpgid(0), signal.SIGINT)  # what Ctrl-C at a terminal does: the whole process group
os.replace = _replace_then_ctrl_c
'''


def _many_rows(tmp_path, n: int):
    """A collection of n rows over a few image files: long enough that the decoding workers are still busy."""
    from PIL import Image

    root = tmp_path / "coll"
    root.mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray(rng.integers(0, 256, (30, 40, 3), dtype=np.uint8)).save(root / f"{i}.png")
    rows = "".join(f"u{k},{k % 3}.png\n" for k in range(n))
    (root / "images.csv").write_text("uid,path\n" + rows)
    return root


def _embed_process(coll, out, env):
    import subprocess
    import sys

    args = [sys.executable, "-m", "model", "embed", "--collection", str(coll), "--resolution", str(R), "--arch",
            "resnet18", "--weights", "random", "--batch-size", "2", "--chunk-images", "4", "--workers", "1",
            "--no-progress", "--no-compile-cache", "--out", str(out)]
    return subprocess.run(args, env=env, capture_output=True, text=True, timeout=300, start_new_session=True)


@pytest.mark.slow
def test_ctrl_c_with_decoding_workers_is_one_line_and_the_rerun_resumes(tmp_path):
    """Ctrl-C reaches the decoding worker processes too: neither they nor the main process print a traceback
    (nor multiprocessing's 'leaked shared_memory' warning), the message says how to resume, and the same
    command then resumes and writes the uninterrupted run's store."""
    import os
    from pathlib import Path

    coll, repo = _many_rows(tmp_path, 120), Path(__file__).resolve().parents[2]
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(_SIGINT_AT_CHUNK)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(repo), os.environ.get("PYTHONPATH", "")])}
    whole = _embed_process(coll, tmp_path / "whole.npz", env)
    assert whole.returncode == 0, whole.stderr
    assert "leaked" not in whole.stderr and "Traceback" not in whole.stderr
    cut = _embed_process(coll, tmp_path / "cut.npz", {**env, "PYTHONPATH": f"{hook}{os.pathsep}{env['PYTHONPATH']}"})
    assert cut.returncode != 0 and not (tmp_path / "cut.npz").exists()
    assert "Traceback" not in cut.stderr and "KeyboardInterrupt" not in cut.stderr, cut.stderr
    assert "leaked" not in cut.stderr, cut.stderr
    assert "run the same command again to resume" in cut.stderr, cut.stderr
    again = _embed_process(coll, tmp_path / "cut.npz", env)
    assert again.returncode == 0 and "resuming: " in again.stderr, again.stderr
    assert (tmp_path / "cut.npz").read_bytes() == (tmp_path / "whole.npz").read_bytes()


_PAUSE_AT_CHUNK = '''
import os, time
_replace = os.replace
def _replace_then_wait(src, dst, *a, **k):
    _replace(src, dst, *a, **k)
    if os.fspath(dst).endswith("chunk-000001.npz"):
        while not os.path.exists(os.environ["VS_TEST_RELEASE"]):
            time.sleep(0.05)
os.replace = _replace_then_wait
'''


def test_a_second_embed_into_the_same_out_while_one_runs_is_refused_in_one_line(tmp_path):
    """Two runs into one --out at once would both compute every chunk and the second would fail at its merge
    with 'chunks missing (another process failed?)': the second is refused up front; the first is unharmed."""
    import os
    import subprocess
    import sys
    import time
    from pathlib import Path

    coll, repo = _many_rows(tmp_path, 12), Path(__file__).resolve().parents[2]
    hook, release, out = tmp_path / "hook", tmp_path / "release", tmp_path / "s.npz"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(_PAUSE_AT_CHUNK)
    env = {**os.environ, "VS_TEST_RELEASE": str(release),
           "PYTHONPATH": os.pathsep.join([str(hook), str(repo), os.environ.get("PYTHONPATH", "")])}
    args = [sys.executable, "-m", "model", "embed", "--collection", str(coll), "--resolution", str(R), "--arch",
            "resnet18", "--weights", "random", "--batch-size", "2", "--chunk-images", "4", "--workers", "0",
            "--no-progress", "--no-compile-cache", "--out", str(out)]
    first = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not (tmp_path / "s.npz.parts" / "chunk-000001.npz").exists() and time.monotonic() < deadline:
            assert first.poll() is None, first.communicate()
            time.sleep(0.1)
        second = CliRunner().invoke(cli, ["embed", "--collection", str(coll), "--resolution", str(R), "--arch",
                                          "resnet18", "--weights", "random", "--batch-size", "2", "--chunk-images",
                                          "4", "--workers", "0", "--no-progress", "--out", str(out)])
    finally:
        release.touch()
        _, err = first.communicate(timeout=120)
    assert second.exit_code == 1 and "Traceback" not in second.output
    assert "another `model embed` is writing" in second.output and "s.npz.parts" in second.output, second.output
    assert first.returncode == 0, err
    assert load_signatures(out).uids == [f"u{k}" for k in range(12)]


def _children(pid: int) -> list[int]:
    from pathlib import Path

    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            out.append(int(stat.parent.name))
    return out


@pytest.mark.slow
@pytest.mark.skipif(not __import__("os").path.isdir("/proc"), reason="reads the process table from /proc")
def test_decoding_workers_stop_when_the_embed_process_is_killed(tmp_path):
    """kill -9 (or SIGTERM, or a lost job) of `model embed` runs no clean-up: its decoding worker processes must
    notice on their own and exit, not stay behind forever holding memory."""
    import os
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path

    coll, repo = _many_rows(tmp_path, 200), Path(__file__).resolve().parents[2]
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(_PAUSE_AT_CHUNK)
    env = {**os.environ, "VS_TEST_RELEASE": str(tmp_path / "never"),
           "PYTHONPATH": os.pathsep.join([str(hook), str(repo), os.environ.get("PYTHONPATH", "")])}
    args = [sys.executable, "-m", "model", "embed", "--collection", str(coll), "--resolution", str(R), "--arch",
            "resnet18", "--weights", "random", "--batch-size", "2", "--chunk-images", "4", "--workers", "2",
            "--no-progress", "--no-compile-cache", "--out", str(tmp_path / "s.npz")]
    proc = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    workers: list[int] = []
    try:
        deadline = time.monotonic() + 120
        while not (tmp_path / "s.npz.parts" / "chunk-000001.npz").exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        workers = [c for c in _children(proc.pid) if b"spawn_main" in Path(f"/proc/{c}/cmdline").read_bytes()]
        assert len(workers) == 2
        proc.kill()
        proc.wait()
        deadline = time.monotonic() + 20
        while any(Path(f"/proc/{w}").exists() for w in workers) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not [w for w in workers if Path(f"/proc/{w}").exists()], "worker processes outlived their parent"
    finally:
        proc.kill()
        for w in workers:
            try:
                os.kill(w, signal.SIGKILL)
            except ProcessLookupError:
                pass
