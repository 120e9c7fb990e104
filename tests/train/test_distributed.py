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
