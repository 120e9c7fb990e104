"""Clustering settings that do not fit the signatures are named: (nearly) everything noise, or one cluster
holding (nearly) everything, with the signatures' own neighbour distances and what to try."""

from __future__ import annotations

import numpy as np
import pytest
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
                                   "--eps", "0.08", "--out", str(tmp_path / "db.csv")])
    assert res.exit_code == 0, res.output
    assert "one cluster holds 60 of the 60 images" in res.output and "eps 0.08" in res.output
    assert "10th / 50th / 90th percentile" in res.output and "try --eps near" in res.output
    assert "--xi" not in res.output and "--max-eps" not in res.output  # DBSCAN has neither
    res = CliRunner().invoke(cli, ["optics", str(tmp_path / "sig.npz"), "--metric", "cosine", "--max-eps", "0.00001",
                                   "--out", str(tmp_path / "op.csv")])
    assert res.exit_code == 0, res.output
    assert "100% of the 60 images are noise" in res.output and "beyond max_eps 1e-05" in res.output
    import json

    assert json.loads((tmp_path / "op.json").read_text())["warnings"]  # kept with the result


def test_a_max_eps_that_leaves_nearly_everything_noise_is_never_told_to_go_lower(tmp_path):
    """Found in a trial: `--max-eps 0.001` left 95% noise and the warning said `try --max-eps near 0.000958`, a
    value below the one that failed: the quantiles it came from are those of the few images with a neighbour
    within max_eps. The advice is to go above it, or to let auto measure every image."""
    import re

    x = _tight_signatures(tmp_path / "sig.npz")
    d = 1 - x @ x.T
    np.fill_diagonal(d, np.inf)
    nearest = np.sort(d.min(axis=1))
    max_eps = float((nearest[3] + nearest[4]) / 2)  # 4 of 60 images have a neighbour within it
    res = CliRunner().invoke(cli, ["optics", str(tmp_path / "sig.npz"), "--metric", "cosine", "--max-eps",
                                   repr(max_eps), "--out", str(tmp_path / "op.csv")])  # fmt: skip
    assert res.exit_code == 0, res.output
    line = next(x for x in res.output.splitlines() if "images are noise" in x)
    suggested = [float(v.rstrip(".")) for v in re.findall(r"near ([0-9.e-]+)", line)]
    assert all(v > max_eps for v in suggested), line
    assert "above" in line and "auto" in line, line


def test_a_fitting_setting_and_a_small_set_say_nothing():
    labels = np.repeat(np.arange(6), 10)
    assert setting_warnings(labels, method="optics", max_eps=0.13, eps=None, core_distances=np.full(60, 0.01)) == []
    assert setting_warnings(np.full(10, -1), method="optics", max_eps=0.13, eps=None) == []
    assert distance_quantiles(np.array([np.inf, np.inf])) is None
    q = distance_quantiles(np.array([0.1, 0.2, 0.3, np.inf]))
    assert q["finite"] == 3 and q["median"] == 0.2


def _quantiles_line(output: str) -> list[float]:
    """The three percentiles of the `note: ... (auto)` line."""
    line = next(x for x in output.splitlines() if "(auto)" in x)
    return [float(v) for v in line.split("neighbour is ")[1].split(" (10th")[0].split(" / ")]


def test_auto_thresholds_come_from_the_signatures_and_are_shown_and_kept(tmp_path):
    """Issue 16: without --max-eps / --eps the thresholds come from the (centred) signatures' own neighbour
    distances, printed on stderr with their 10/50/90th percentiles and kept in clusters.json; the fixed 0.08 put
    these 60 tight signatures into one cluster, auto does not."""
    import json

    from sklearn.neighbors import NearestNeighbors

    from cluster.settings_check import EPS_QUANTILE, MAX_EPS_FACTOR, MAX_EPS_QUANTILE

    x = _tight_signatures(tmp_path / "sig.npz")
    centred = x - x.mean(axis=0)
    centred /= np.linalg.norm(centred, axis=1, keepdims=True)
    for method, name in (("optics", "max_eps"), ("dbscan", "eps")):
        out = tmp_path / f"{method}.csv"
        res = CliRunner().invoke(cli, ["optics", str(tmp_path / "sig.npz"), "--method", method, "--out", str(out)])
        assert res.exit_code == 0, res.output
        params = json.loads(out.with_suffix(".json").read_text())
        assert params["centre"] is True and params["auto"]["chosen"] == [name]
        d = NearestNeighbors(n_neighbors=2, metric="cosine").fit(centred).kneighbors(centred)[0][:, -1]
        expected = MAX_EPS_FACTOR * np.quantile(d, MAX_EPS_QUANTILE) if name == "max_eps" else np.quantile(d, EPS_QUANTILE)
        expected = min(expected, *params["auto"]["caps"].values())  # the caps: tests below
        assert params[name] == pytest.approx(expected, rel=1e-6)
        assert _quantiles_line(res.output) == pytest.approx(np.quantile(d, [0.1, 0.5, 0.9]), rel=1e-3)
        assert f"{name} {params[name]:.4g} (auto" in res.output
        assert "each centred signature's distance" in res.output  # which rows were measured: not the raw ones
        labels = np.array([int(r.split(",")[1]) for r in out.read_text().splitlines()[1:]])
        assert np.bincount(labels[labels >= 0]).max() < 30 and (labels >= 0).sum() > 10, labels
        assert not params["warnings"]


def test_explicit_thresholds_work_as_before_and_no_centre_is_honoured(tmp_path):
    """An explicit --max-eps / --eps is used as given, on the signatures as they are (no centring: the value was
    chosen on their raw scale): the result is scikit-learn's OPTICS on the raw rows. --no-centre with auto takes
    the raw rows' distances; --centre with an explicit value centres."""
    import json

    from sklearn.cluster import OPTICS

    x = _tight_signatures(tmp_path / "sig.npz")
    out = tmp_path / "explicit.csv"
    res = CliRunner().invoke(cli, ["optics", str(tmp_path / "sig.npz"), "--max-eps", "0.02", "--out", str(out)])
    assert res.exit_code == 0, res.output
    params = json.loads(out.with_suffix(".json").read_text())
    assert params["max_eps"] == 0.02 and params["centre"] is False and "auto" not in params
    labels = np.array([int(r.split(",")[1]) for r in out.read_text().splitlines()[1:]])
    np.testing.assert_array_equal(labels, OPTICS(min_samples=2, max_eps=0.02, metric="cosine").fit(x).labels_)
    res = CliRunner().invoke(cli, ["optics", str(tmp_path / "sig.npz"), "--no-centre", "--out", str(out)])
    assert res.exit_code == 0, res.output
    params = json.loads(out.with_suffix(".json").read_text())
    assert params["centre"] is False and params["max_eps"] < 0.05  # the raw scale: every distance below 0.05
    assert "each signature's distance" in res.output and "centred" not in res.output
    res = CliRunner().invoke(cli, ["optics", str(tmp_path / "sig.npz"), "--centre", "--max-eps", "0.9",
                                   "--out", str(out)])  # fmt: skip
    assert json.loads(out.with_suffix(".json").read_text())["centre"] is True
    res = CliRunner().invoke(cli, ["optics", str(tmp_path / "sig.npz"), "--max-eps", "big", "--out", str(out)])
    assert res.exit_code != 0 and "'big' is neither a number nor 'auto'" in res.output


def test_centring_identical_signatures_is_skipped_with_a_warning(tmp_path):
    """Signatures that all equal their mean cannot be centred (every row would vanish): said, and clustered as
    given, instead of a division by zero."""
    x = np.tile(np.eye(8, dtype=np.float32)[:1], (25, 1))
    save_signatures(tmp_path / "same.npz", Signatures(uids=[f"u{i}" for i in range(25)], vectors=x))
    res = CliRunner().invoke(cli, ["optics", str(tmp_path / "same.npz"), "--method", "dbscan",
                                   "--out", str(tmp_path / "c.csv")])  # fmt: skip
    assert res.exit_code == 0, res.output
    assert "warning: --centre skipped: a signature equals the mean" in res.output


def test_auto_max_eps_is_capped_where_most_images_are_alone_and_on_a_large_collection():
    """Where the 90th percentile is the distance of unrelated images (every image alone), auto max_eps is kept
    at half the median distance of random pairs; on a large collection also where a signature has about
    MAX_NEIGHBOURS others within it; a small collection of grouped images is not capped."""
    from cluster.settings_check import (
        MAX_EPS_FACTOR,
        MAX_NEIGHBOURS,
        PAIR_FACTOR,
        auto_thresholds,
        random_pair_distances,
    )

    rng = np.random.default_rng(0)
    pairs = random_pair_distances(rng.normal(size=(4000, 64)), "cosine")
    assert (pairs > 0.5).mean() > 0.95  # random 64-d directions: unrelated images lie near distance 1
    alone = auto_thresholds(np.full(4000, 0.9), pairs, n=500)
    assert alone["max_eps"] == pytest.approx(PAIR_FACTOR * np.median(pairs)) and alone["capped_by"] == "unrelated"
    spread = random_pair_distances(rng.normal(size=(4000, 3)), "cosine")  # few dimensions: some pairs close
    big = auto_thresholds(np.full(4000, 0.2), spread, n=1_000_000)
    assert big["max_eps"] == pytest.approx(np.quantile(spread, MAX_NEIGHBOURS / 1_000_000))
    assert big["capped_by"] == "sparsity" and big["max_eps"] < 0.3
    grouped = auto_thresholds(np.full(4000, 0.2), pairs, n=500)
    assert grouped["max_eps"] == pytest.approx(MAX_EPS_FACTOR * 0.2) and grouped["capped_by"] is None


def test_a_value_to_try_on_centred_signatures_says_centre():
    """The distances in a warning are those of the signatures as clustered; when they were centred the value to
    try keeps --centre (an explicit --max-eps alone would cluster the raw signatures, on another scale)."""
    labels = np.full(60, -1)
    raw = setting_warnings(labels, method="optics", max_eps=0.01, eps=None, core_distances=np.full(60, 0.3))
    centred = setting_warnings(labels, method="optics", max_eps=0.01, eps=None, core_distances=np.full(60, 0.3),
                               centred=True)  # fmt: skip
    assert "try --max-eps (or --eps) near 0.3" in raw[0] and "try --centre --max-eps (or --eps) near 0.3" in centred[0]
