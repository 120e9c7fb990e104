"""A two-process CPU run of the train step (jax.distributed on localhost, gloo collectives).

Each process owns one CPU device and feeds its half of the global batch; both must end with the
same parameters as one process stepping on the whole batch.
"""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = str(ROOT / "tests/train/multiprocess_check.py")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_process_step_equals_single_process():
    env = dict(os.environ, PYTHONPATH=str(ROOT), JAX_PLATFORMS="cpu")
    env.pop("XLA_FLAGS", None)
    port = str(_free_port())
    procs = [subprocess.Popen([sys.executable, SCRIPT, port, str(i), "2"], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for i in range(2)]
    outs = []
    for p in procs:
        so, se = p.communicate(timeout=300)
        assert p.returncode == 0, se[-3000:]
        outs.append(json.loads(so.strip().splitlines()[-1]))
    single = outs[0]["single"]
    assert single["devices"] == 1
    for o in outs:
        d = o["distributed"]
        assert d["devices"] == 2
        np.testing.assert_allclose(d["loss"], single["loss"], rtol=1e-6)
        np.testing.assert_allclose(d["first"], single["first"], rtol=1e-4, atol=1e-8)
        assert d["checksum"] == pytest.approx(single["checksum"], rel=1e-6)


EXPORTED = ("signatures.npz", "eval.json", "start_signatures.npz", "start_eval.json")


@pytest.mark.slow
def test_two_process_training_exports_what_one_process_exports(tmp_path):
    """A tiny `python -m train` run as two processes (jax.distributed on localhost, gloo), whose start and final
    embeddings are split between them (`model.embed.embed_collection`), then a one-process `--resume` of the
    finished run, which only exports again (the start too: its files removed): every exported file is the same
    bytes. Before, the two-process run hung in its export (orbax, saving the weights on process 0, waited for
    process 1) and each process embedded the whole collection. Both processes read the start weights."""
    from model.registry import build
    from model.weights import save_weights
    from tests.train.conftest import build_tiny_collection

    coll = build_tiny_collection(tmp_path / "coll", groups=(3, 2, 2), distractors=2, size=32)  # 23 images
    weights = save_weights(build("resnet18", seed=3), tmp_path / "start")  # read by both processes
    run = tmp_path / "run"
    env = dict(os.environ, PYTHONPATH=str(ROOT), JAX_PLATFORMS="cpu")
    env.pop("XLA_FLAGS", None)  # one CPU device per process
    sets = {"resolution": 32, "batch_size": 4, "epochs": 1, "num_negatives": 1, "eval_batch_size": 4,
            "freeze_bn": "true", "lr": 3e-4, "slow_stages": "", "frozen_stages": "", "workers": 0}
    args = [sys.executable, "-m", "train", "run", "--collection", str(coll), "--out", str(run), "--preset", "demo",
            "--weights", str(weights), "--no-progress", *[a for k, v in sets.items() for a in ("--set", f"{k}={v}")]]
    multi = [*args, "--coordinator", f"localhost:{_free_port()}", "--num-processes", "2"]
    procs = [subprocess.Popen([*multi, "--process-id", str(i)], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for i in range(2)]
    try:
        outs = [p.communicate(timeout=300) for p in procs]
    finally:
        for p in procs:
            p.kill()
    for p, (_, err) in zip(procs, outs, strict=True):
        assert p.returncode == 0, err[-3000:]
    assert "done: test mAP" in outs[0][0]
    two = {name: (run / name).read_bytes() for name in EXPORTED}
    (run / "start_signatures.npz").unlink()
    (run / "start_eval.json").unlink()
    one = subprocess.run([*args, "--resume"], env=env, capture_output=True, text=True, timeout=300)
    assert one.returncode == 0, one.stderr[-3000:]
    assert "only the export" in one.stdout
    for name in EXPORTED:
        assert (run / name).read_bytes() == two[name], name
