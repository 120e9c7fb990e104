"""`python -m cluster ...`: the commands end to end on small files (CliRunner, same process)."""

import json
import subprocess
import sys
import warnings

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image
from sklearn.cluster import OPTICS

from cluster.__main__ import cli
from cluster.clusters_file import read_clusters, sidecar_path
from data.collection import Connection, write_connections
from data.signatures import Signatures, save_signatures

N = 60


@pytest.fixture
def files(tmp_path):
    rng = np.random.default_rng(3)
    centres = rng.normal(size=(6, 24))
    lab = np.arange(N) % 8  # labels 6, 7 -> isolated points
    x = np.where(
        (lab < 6)[:, None],
        centres[np.minimum(lab, 5)] + 0.15 * rng.normal(size=(N, 24)),
        rng.normal(size=(N, 24)),
    )
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    uids = [f"img{i:03d}" for i in range(N)]
    save_signatures(tmp_path / "sig.npz", Signatures(uids=uids, vectors=x))
    coll = tmp_path / "coll"
    coll.mkdir()
    (coll / "images.csv").write_text("uid,path\n" + "".join(f"{u},{u}.jpg\n" for u in uids))
    write_connections(
        coll / "connections.csv",
        [Connection(uids[0], uids[8], "POSITIVE"), Connection(uids[1], uids[9], "POSITIVE")],
    )
    return tmp_path, x.astype(np.float32), uids


def test_optics_command_matches_sklearn_and_writes_everything(files):
    tmp, x, uids = files
    out = tmp / "res" / "clusters.csv"
    r = CliRunner().invoke(
        cli, ["optics", str(tmp / "sig.npz"), "--out", str(out), "--max-eps", "0.3", "--min-samples", "3"]
    )
    assert r.exit_code == 0, r.output
    t = read_clusters(out)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sk = OPTICS(min_samples=3, max_eps=0.3, metric="cosine").fit(x)
    assert t.uids == uids
    np.testing.assert_array_equal(t.labels, sk.labels_)
    np.testing.assert_array_equal(t.ordering, sk.ordering_)
    np.testing.assert_array_equal(t.reachability, sk.reachability_)
    np.testing.assert_array_equal(t.core_distance, sk.core_distances_)
    params = json.loads(sidecar_path(out).read_text())
    assert params["method"] == "optics" and params["min_samples"] == 3 and params["max_eps"] == 0.3
    assert params["engine"] == "knn" and params["exact"] is True  # auto, finite max_eps: the exact kNN graph
    assert len(params["signatures_sha256"]) == 64 and params["n"] == N
    with Image.open(tmp / "res" / "reachability.png") as im:
        im.load()
    assert "clusters" in r.output


@pytest.mark.parametrize("method", ["hdbscan", "dbscan"])
def test_comparison_methods_write_the_same_format(files, method):
    tmp, _, _ = files
    out = tmp / f"{method}.csv"
    r = CliRunner().invoke(
        cli, ["optics", str(tmp / "sig.npz"), "--out", str(out), "--method", method, "--eps", "0.1"]
    )
    assert r.exit_code == 0, r.output
    t = read_clusters(out)
    assert (t.labels >= 0).any() and np.isnan(t.reachability).all()
    np.testing.assert_array_equal(t.order, np.arange(N))
    assert t.params["method"] == method


def test_pca_option_is_recorded(files):
    tmp, _, _ = files
    out = tmp / "pca.csv"
    r = CliRunner().invoke(
        cli, ["optics", str(tmp / "sig.npz"), "--out", str(out), "--pca", "8", "--max-eps", "inf"]
    )
    assert r.exit_code == 0, r.output
    assert read_clusters(out).params["pca"] == 8


def test_evaluate_command(files):
    tmp, _, _ = files
    out = tmp / "clusters.csv"
    assert (
        CliRunner()
        .invoke(cli, ["optics", str(tmp / "sig.npz"), "--out", str(out), "--max-eps", "0.3"])
        .exit_code
        == 0
    )
    r = CliRunner().invoke(
        cli, ["evaluate", str(out), "--collection", str(tmp / "coll"), "--json", str(tmp / "q.json")]
    )
    assert r.exit_code == 0, r.output
    q = json.loads((tmp / "q.json").read_text())
    assert q["true_pairs"] == 2 and q["n_images"] == N
    assert "pairwise precision" in r.output


def test_errors_are_clear(files, tmp_path):
    tmp, _, _ = files
    r = CliRunner().invoke(
        cli, ["optics", str(tmp / "sig.npz"), "--out", str(tmp / "c.csv"), "--min-samples", "500"]
    )
    assert r.exit_code != 0 and "larger than the number of points" in r.output
    bad = tmp / "bad.npz"
    bad.write_bytes(b"junk")
    r = CliRunner().invoke(cli, ["optics", str(bad), "--out", str(tmp / "c.csv")])
    assert r.exit_code != 0 and "not a signatures file" in r.output
    (tmp / "broken.csv").write_text("uid,cluster\n")
    r = CliRunner().invoke(cli, ["evaluate", str(tmp / "broken.csv"), "--collection", str(tmp / "coll")])
    assert r.exit_code != 0 and "header" in r.output


@pytest.mark.parametrize("command", ["optics", "evaluate", "map", "annotate", "accept"])
def test_help(command):
    r = CliRunner().invoke(cli, [command, "--help"])
    assert r.exit_code == 0 and "Usage" in r.output


def test_module_entry_point():
    r = subprocess.run(
        [sys.executable, "-m", "cluster", "--help"], capture_output=True, text=True, timeout=120
    )
    assert r.returncode == 0 and "optics" in r.stdout and "annotate" in r.stdout


def _optics_options() -> dict:
    return {p.name: p for p in cli.commands["optics"].params}


def test_optics_options_offer_what_the_library_accepts_with_its_defaults():
    """The choices and defaults of `cluster optics` are the library's, written once (cluster.config)."""
    from cluster.config import (
        CLUSTER_METHODS,
        COMMAND_DEFAULTS,
        DBSCAN_EPS,
        ENGINES,
        METHODS,
        METRICS,
        PRECISIONS,
    )

    opts = _optics_options()
    for name, choices in (("method", METHODS), ("metric", METRICS), ("cluster_method", CLUSTER_METHODS),
                          ("engine", ENGINES), ("precision", PRECISIONS)):
        assert tuple(opts[name].type.choices) == choices, name
    for name in ("min_samples", "xi", "metric", "cluster_method", "engine", "precision", "block_size",
                 "memory_budget_mb"):
        assert opts[name].default == getattr(COMMAND_DEFAULTS, name), name
    from cluster.config import COMMAND_EPS, COMMAND_MAX_EPS

    assert opts["max_eps"].default == COMMAND_MAX_EPS == "auto"  # issue 16: from the signatures' own distances
    assert opts["eps"].default is None and f"default {COMMAND_EPS}" in opts["eps"].help
    assert DBSCAN_EPS == 0.08  # the library's DBSCAN eps when it is given neither a value nor auto


def test_optics_command_with_no_options_equals_the_library_with_the_command_defaults(files):
    from cluster.clustering import cluster_signatures
    from cluster.config import COMMAND_DEFAULTS

    tmp, _, _ = files
    out = tmp / "plain.csv"
    r = CliRunner().invoke(cli, ["optics", str(tmp / "sig.npz"), "--out", str(out)])
    assert r.exit_code == 0, r.output
    table, res = cluster_signatures(tmp / "sig.npz", COMMAND_DEFAULTS, centre=True, max_eps_auto=True)
    written = read_clusters(out)
    np.testing.assert_array_equal(written.labels, table.labels)
    np.testing.assert_array_equal(written.order, res.order)
    params = json.loads(sidecar_path(out).read_text())
    assert {k: params[k] for k in table.params if k != "signatures"} == \
        {k: v for k, v in table.params.items() if k != "signatures"}


@pytest.mark.parametrize("extra", [[], ["--eps", "0.2"]])
def test_dbscan_eps_default_is_one_figure(files, extra):
    from cluster.clustering import cluster_signatures
    from cluster.config import COMMAND_DEFAULTS, DBSCAN_EPS

    tmp, _, _ = files
    out = tmp / "db.csv"
    r = CliRunner().invoke(cli, ["optics", str(tmp / "sig.npz"), "--out", str(out), "--method", "dbscan", *extra])
    assert r.exit_code == 0, r.output
    params = read_clusters(out).params
    if extra:  # an explicit eps is used as given, on the signatures as they are
        assert params["eps"] == float(extra[1]) and params["centre"] is False and "auto" not in params
    else:  # issue 16: eps from the (centred) signatures' own neighbour distances
        assert params["centre"] is True and params["eps"] == params["auto"]["eps"] and params["auto"]["chosen"] == ["eps"]
        auto, _ = cluster_signatures(tmp / "sig.npz", COMMAND_DEFAULTS, method="dbscan", centre=True, eps_auto=True)
        np.testing.assert_array_equal(auto.labels, read_clusters(out).labels)
    table, res = cluster_signatures(tmp / "sig.npz", COMMAND_DEFAULTS, method="dbscan")
    assert res is None and table.params["eps"] == DBSCAN_EPS  # the library without auto: its fixed default


@pytest.mark.parametrize("stage", ["cluster_signatures", "write_clustering"])
def test_ctrl_c_in_optics_is_one_line_and_exit_130(files, monkeypatch, stage):
    """Ctrl-C in `cluster optics` says what is left in --out and exits 130, as `cluster map` and `export` do (was
    click's bare `Aborted!`, exit 1); before the writing begins an older clustering there is untouched."""
    import cluster.clustering

    tmp, _, _ = files
    out = tmp / "res" / "clusters.csv"
    args = ["optics", str(tmp / "sig.npz"), "--out", str(out), "--max-eps", "0.3", "--min-samples", "3"]
    assert CliRunner().invoke(cli, args).exit_code == 0
    before = out.read_bytes()

    def interrupted(*_a, **_k):
        raise KeyboardInterrupt

    monkeypatch.setattr(cluster.clustering, stage, interrupted)
    r = CliRunner().invoke(cli, args)
    assert r.exit_code == 130, r.output
    (line,) = [ln for ln in r.output.splitlines() if ln.strip()]
    assert line.startswith("interrupted: ") and str(out) in line and "run the command again" in line
    if stage == "cluster_signatures":
        assert out.read_bytes() == before
