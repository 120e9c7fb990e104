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
