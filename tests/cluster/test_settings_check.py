"""Clustering settings that do not fit the signatures are named: (nearly) everything noise, or one cluster
holding (nearly) everything, with the signatures' own neighbour distances and what to try."""

from __future__ import annotations

import numpy as np
from click.testing import CliRunner

from cluster.__main__ import cli
from cluster.settings_check import distance_quantiles, setting_warnings
from data.signatures import Signatures, save_signatures


def _tight_signatures(path, n=60, seed=0):
    """Fine-tuned-like signatures: one dominant direction, every cosine distance below ~0.02, in 6 groups."""
    rng = np.random.default_rng(seed)
    base = rng.standard_normal(32)
    centres = base + 0.08 * rng.standard_normal((6, 32))
    x = np.repeat(centres, n // 6, axis=0) + 0.01 * rng.standard_normal((n, 32))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    save_signatures(path, Signatures(uids=[f"u{i}" for i in range(n)], vectors=x.astype(np.float32)))
    return x


def test_everything_noise_and_everything_one_cluster_are_named_with_the_distances(tmp_path):
    x = _tight_signatures(tmp_path / "sig.npz")
    d = 1 - x @ x.T
    assert d.max() < 0.05  # the trial's situation: every distance far below max_eps 0.13
    res = CliRunner().invoke(cli, ["optics", str(tmp_path / "sig.npz"), "--method", "dbscan", "--metric", "cosine",
                                   "--out", str(tmp_path / "db.csv")])
    assert res.exit_code == 0, res.output
    assert "one cluster holds 60 of the 60 images" in res.output and "eps 0.08" in res.output
    assert "10th / 50th / 90th percentile" in res.output and "try --max-eps (or --eps) near" in res.output
    res = CliRunner().invoke(cli, ["optics", str(tmp_path / "sig.npz"), "--metric", "cosine", "--max-eps", "0.00001",
                                   "--out", str(tmp_path / "op.csv")])
    assert res.exit_code == 0, res.output
    assert "100% of the 60 images are noise" in res.output and "beyond max_eps 1e-05" in res.output
    import json

    assert json.loads((tmp_path / "op.json").read_text())["warnings"]  # kept with the result


def test_a_fitting_setting_and_a_small_set_say_nothing():
    labels = np.repeat(np.arange(6), 10)
    assert setting_warnings(labels, method="optics", max_eps=0.13, eps=None, core_distances=np.full(60, 0.01)) == []
    assert setting_warnings(np.full(10, -1), method="optics", max_eps=0.13, eps=None) == []
    assert distance_quantiles(np.array([np.inf, np.inf])) is None
    q = distance_quantiles(np.array([0.1, 0.2, 0.3, np.inf]))
    assert q["finite"] == 3 and q["median"] == 0.2
