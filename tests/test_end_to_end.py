"""The main job end to end at a tiny size: what `make demo` runs, through the same CLIs.

Demo collection (small images, 30 of its 140 pattern groups: `python -m data demo --sources 30`, so
that an epoch is a few steps) -> train (demo preset) ->
OPTICS -> evaluate -> map -> report, then index -> search by a detail. It checks that every stage reads what the previous one wrote and
that the report carries the retrieval of the starting and of the trained network. Retrieval *quality*
is tested in tests/train.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from cluster.__main__ import cli as cluster_cli
from data.__main__ import cli as data_cli
from data.signatures import load_signatures
from train.__main__ import cli as train_cli


def _ok(res):
    assert res.exit_code == 0, f"{res.output}\n{res.exception!r}"
    return res


@pytest.mark.slow
def test_demo_pipeline_tiny(tmp_path):
    run = CliRunner()
    coll, run_dir, out = tmp_path / "collection", tmp_path / "run", tmp_path
    _ok(run.invoke(data_cli, ["demo", str(coll), "--max-side", "48", "--sources", "30"]))
    _ok(run.invoke(train_cli, [
        "--collection", str(coll), "--preset", "demo", "--weights", "random", "--out", str(run_dir), "--no-progress",
        "--set", "resolution=32", "--set", "epochs=1", "--set", "num_negatives=1",
    ]))  # fmt: skip
    sig = load_signatures(run_dir / "signatures.npz")
    images = (coll / "images.csv").read_text().strip().splitlines()[1:]
    assert len(sig) + len(sig.skipped) == len(images)
    assert np.allclose(np.linalg.norm(sig.vectors, axis=1), 1.0, atol=1e-4)

    clusters = out / "clusters.csv"
    _ok(run.invoke(cluster_cli, ["optics", str(run_dir / "signatures.npz"), "--out", str(clusters)]))
    quality = out / "quality.json"
    _ok(run.invoke(cluster_cli, ["evaluate", str(clusters), "--collection", str(coll), "--json", str(quality)]))
    assert json.loads(quality.read_text())["n_images"] == len(sig)
    _ok(run.invoke(cluster_cli, ["map", str(run_dir / "signatures.npz"), "--collection", str(coll),
                                 "--clusters", str(clusters), "--out", str(out / "map"), "--n-neighbors", "5"]))
    report = out / "report.html"
    _ok(run.invoke(cluster_cli, ["report", "--collection", str(coll), "--clusters", str(clusters), "--run",
                                 str(run_dir), "--quality", str(quality), "--map", str(out / "map"),
                                 "--out", str(report)]))  # fmt: skip
    page = report.read_text()
    ev = json.loads((run_dir / "eval.json").read_text())
    for who in ("start", "trained"):
        assert f"{ev[who]['test']['mAP']:.3f}" in page
    assert "Top proposed clusters" in page and "map.html" in page

    # search: the trained network's index, a detail of an image as the query
    from model.__main__ import cli as model_cli

    _ok(run.invoke(model_cli, ["index", "--collection", str(coll), "--weights", str(run_dir / "weights"),
                               "--resolution", "64", "--out", str(out / "index"), "--no-progress", "--workers", "0"]))
    _ok(run.invoke(model_cli, ["search", str(out / "index"), "--uid", sig.uids[0], "--box", "0,0,24,24", "-k", "5",
                               "--json", str(out / "hits.json"), "--html", str(out / "hits.html")]))
    hits = json.loads((out / "hits.json").read_text())["results"]
    assert len(hits) == 5 and sig.uids[0] not in [h["uid"] for h in hits]
    assert {h["uid"] for h in hits} <= set(sig.uids)
