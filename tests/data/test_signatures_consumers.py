"""Every stage reads the one store format: a float16 store (what `model embed --store-dtype float16` writes)
gives every consumer what the float32 one gives, up to float16 rounding. Each consumer is driven as a user
runs it (click's CliRunner) on the fault suite's small workspace."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from cluster.__main__ import cli as cluster_cli
from cluster.clusters_file import read_clusters
from data.signatures import load_signatures, save_signatures
from tests.faults.workspace import Workspace, build_workspace
from train.__main__ import cli as train_cli


@pytest.fixture(scope="module")
def ws(tmp_path_factory) -> Workspace:
    ws = build_workspace(tmp_path_factory.mktemp("consumers") / "ws")
    save_signatures(ws.root / "sig16.npz", load_signatures(ws.sig), dtype="float16")
    assert load_signatures(ws.root / "sig16.npz").dtype == "float16"
    return ws


def _ok(res) -> None:
    assert res.exit_code == 0, res.output
    assert "Traceback" not in res.output


def _optics(ws: Workspace, sig: str, out: str):
    res = CliRunner().invoke(cluster_cli, ["optics", str(ws.root / sig), "--out", str(ws.root / out / "clusters.csv"),
                                           "--max-eps", "0.3"])
    _ok(res)
    return read_clusters(ws.root / out / "clusters.csv")


def test_cluster_optics_reads_a_float16_store(ws):
    a, b = _optics(ws, "sig.npz", "c32"), _optics(ws, "sig16.npz", "c16")
    assert a.uids == b.uids
    np.testing.assert_array_equal(a.labels, b.labels)
    assert len(set(b.labels.tolist()) - {-1}) >= 2


def test_cluster_evaluate_and_report_on_clusters_of_a_float16_store(ws):
    _optics(ws, "sig16.npz", "c16")
    clusters = str(ws.root / "c16" / "clusters.csv")
    res = CliRunner().invoke(cluster_cli, ["evaluate", clusters, "--collection", str(ws.coll),
                                           "--json", str(ws.root / "q16.json")])
    _ok(res)
    assert json.loads((ws.root / "q16.json").read_text())
    res = CliRunner().invoke(cluster_cli, ["report", "--collection", str(ws.coll), "--clusters", clusters,
                                           "--run", str(ws.run), "--out", str(ws.root / "r16.html")])
    _ok(res)
    assert (ws.root / "r16.html").stat().st_size > 0


def test_cluster_map_reads_a_float16_store(ws):
    res = CliRunner().invoke(cluster_cli, ["map", str(ws.root / "sig16.npz"), "--collection", str(ws.coll),
                                           "--out", str(ws.root / "map16"), "--n-neighbors", "4",
                                           "--thumb-size", "16"])
    _ok(res)
    coords = (ws.root / "map16" / "coords.csv").read_text().splitlines()
    assert len(coords) == 1 + len(load_signatures(ws.sig))


def test_train_evaluate_reads_a_float16_store(ws):
    figures = []
    for name in ("sig.npz", "sig16.npz"):
        res = CliRunner().invoke(train_cli, ["evaluate", str(ws.root / name), "--collection", str(ws.coll),
                                             "--split", "val"])
        _ok(res)
        figures.append(json.loads(res.stdout))
    assert figures[1]["num_queries"] == figures[0]["num_queries"] > 0
    assert figures[1]["mAP"] == pytest.approx(figures[0]["mAP"], abs=1e-3)


def test_training_resume_accepts_float16_start_signatures(ws, tmp_path):
    """--resume checks start_signatures.npz before reusing the start's figures: a float16 one is intact."""
    from train.run_folder import RunFolder

    folder = RunFolder(tmp_path / "run")
    folder.root.mkdir()
    save_signatures(folder.start_signatures, load_signatures(ws.sig), dtype="float16")
    folder.start_eval.write_text(json.dumps({"val": {"mAP": 0.5}, "test": {"mAP": 0.4}}))
    warnings: list[str] = []
    assert folder.saved_start_eval(warnings.append) == {"val": {"mAP": 0.5}, "test": {"mAP": 0.4}}
    assert not warnings
