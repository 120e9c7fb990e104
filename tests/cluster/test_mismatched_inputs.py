"""Inputs that do not belong together are named, never turned into numbers without a word (issue 11 trial).

A new user evaluated clusters of 12 of 52 images and read a recall "over 6 known pairs" as the collection's;
built a report from a quality JSON of another clustering, from clusters of another collection (every image
"unreadable") and from a run of another collection; and mapped signatures of another collection (51 warnings,
a map with no thumbnail, exit 0).
"""

from __future__ import annotations

import json
import shutil

import numpy as np
from click.testing import CliRunner

from cluster.__main__ import cli
from cluster.clusters_file import ClusterTable, file_sha256, read_clusters, write_clusters
from data.signatures import Signatures, save_signatures

from .conftest import N_IMAGES


def _subset(clusters, out, keep: int):
    """clusters.csv of the first `keep` images only (signatures of part of the collection)."""
    t = read_clusters(clusters)
    idx = np.arange(keep)
    write_clusters(out, ClusterTable(uids=t.uids[:keep], labels=t.labels[idx], order=np.arange(keep),
                                     reachability=t.reachability[idx], core_distance=t.core_distance[idx]))
    return out


def _other_collection(coll, dest):
    """The same images under other uids: another collection."""
    shutil.copytree(coll.root, dest)
    images = dest / "images.csv"
    lines = images.read_text(encoding="utf-8").splitlines()
    images.write_text("\n".join([lines[0]] + ['"other_' + ln[1:] for ln in lines[1:]]) + "\n", encoding="utf-8")
    (dest / "connections.csv").unlink()
    return dest


def _report(coll, clusters, out, *extra):
    return CliRunner().invoke(cli, ["report", "--collection", str(coll), "--clusters", str(clusters),
                                    "--out", str(out), *extra])


def test_evaluate_of_part_of_the_collection_says_how_much_it_covers(annot_collection, tmp_path):
    part = _subset(annot_collection.clusters, tmp_path / "part.csv", 8)
    r = CliRunner().invoke(cli, ["evaluate", str(part), "--collection", str(annot_collection.root),
                                 "--json", str(tmp_path / "q.json")])
    assert r.exit_code == 0, r.output
    # conftest.KNOWN: POSITIVE groups {0,1}, {6,7}, {11,12,13}, {14,15}: 6 true pairs, 2 inside the first 8 images
    assert f"warning: {part}: covers 8 of the collection's {N_IMAGES} images and 2 of its 6 known pairs" in r.stderr
    assert "4 known pair(s) with an image outside clusters.csv are not counted" in r.stderr
    q = json.loads((tmp_path / "q.json").read_text())
    assert q["collection_images"] == N_IMAGES and q["collection_true_pairs"] == 6 and q["true_pairs"] == 2
    assert q["warnings"] and "covers 8" in q["warnings"][0]
    # the JSON names the clusters file it judged, so a report can tell a quality file of another clustering
    assert q["clusters_file"] == str(part.resolve()) and q["clusters_sha256"] == file_sha256(part)
    whole = CliRunner().invoke(cli, ["evaluate", str(annot_collection.clusters), "--collection",
                                     str(annot_collection.root)])
    assert whole.exit_code == 0 and "covers" not in whole.stderr


def test_report_refuses_clusters_of_another_collection(annot_collection, tmp_path):
    other = _other_collection(annot_collection, tmp_path / "other")
    out = tmp_path / "report.html"
    r = _report(other, annot_collection.clusters, out)
    assert r.exit_code != 0 and "Traceback" not in r.output
    assert str(annot_collection.clusters) in r.output and f"{N_IMAGES} uid(s) are not in" in r.output
    assert repr(annot_collection.uids[0]) in r.output and "model embed" in r.output
    assert not out.exists()


def test_report_refuses_a_quality_file_of_another_clustering(annot_collection, tmp_path):
    coll = annot_collection.root
    part = _subset(annot_collection.clusters, tmp_path / "part.csv", 8)
    q = tmp_path / "q.json"
    assert CliRunner().invoke(cli, ["evaluate", str(part), "--collection", str(coll), "--json", str(q)]).exit_code == 0
    out = tmp_path / "report.html"
    r = _report(coll, annot_collection.clusters, out, "--quality", str(q))
    assert r.exit_code != 0 and "Traceback" not in r.output
    assert str(q) in r.output and str(part.resolve()) in r.output and str(annot_collection.clusters) in r.output
    assert "another clustering" in r.output and "cluster evaluate" in r.output
    assert not out.exists()
    # a quality JSON from before the record is checked by its counts
    legacy = json.loads(q.read_text())
    del legacy["clusters_file"], legacy["clusters_sha256"]
    q.write_text(json.dumps(legacy))
    r = _report(coll, annot_collection.clusters, out, "--quality", str(q))
    assert r.exit_code != 0 and "8 images in" in r.output and not out.exists()
    # the quality file of these clusters is shown, with what it does not cover
    r = _report(coll, part, out, "--quality", str(q))
    assert r.exit_code == 0, r.output
    assert "covers 8 of the collection" in out.read_text()


def test_report_warns_about_a_run_of_another_collection(annot_collection, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    other = _other_collection(annot_collection, tmp_path / "other")
    # what `python -m train` writes: the arguments it was started with, the collection among them
    (run / "config.json").write_text(json.dumps({"config": {}, "argv": ["--collection", str(other), "--out", "x"]}))
    out = tmp_path / "report.html"
    r = _report(annot_collection.root, annot_collection.clusters, out, "--run", str(run))
    assert r.exit_code == 0, r.output
    assert f"warning: {run}: the run was trained on the collection {other}" in r.stderr
    assert "trained on the collection" in out.read_text()
    # newer runs record the collection folder itself (absolute), which wins over the arguments
    (run / "config.json").write_text(json.dumps({"config": {}, "collection": str(other.resolve()),
                                                 "argv": ["--collection", str(annot_collection.root)]}))
    r = _report(annot_collection.root, annot_collection.clusters, out, "--run", str(run))
    assert r.exit_code == 0 and f"trained on the collection {other.resolve()}" in r.stderr
    # a run of this collection, named by a relative path or through a symlink: no warning
    (tmp_path / "link").symlink_to(annot_collection.root)
    (run / "config.json").write_text(json.dumps({"config": {}, "argv": ["--collection", str(tmp_path / "link")]}))
    r = _report(annot_collection.root, annot_collection.clusters, out, "--run", str(run))
    assert r.exit_code == 0 and "warning" not in r.stderr


def test_report_next_step_is_a_command_that_runs_where_the_user_is(annot_collection, tmp_path):
    out = tmp_path / "report.html"
    assert _report(annot_collection.root, annot_collection.clusters, out).exit_code == 0
    page = out.read_text()
    assert "<code>python -m cluster annotate --collection" in page and ".venv/bin/python" not in page


def test_map_refuses_signatures_of_another_collection(annot_collection, tmp_path):
    other = _other_collection(annot_collection, tmp_path / "other")
    rng = np.random.default_rng(0)
    x = rng.normal(size=(N_IMAGES, 8))
    save_signatures(tmp_path / "sig.npz", Signatures(uids=annot_collection.uids, vectors=x / np.linalg.norm(
        x, axis=1, keepdims=True)))
    out = tmp_path / "map"
    r = CliRunner().invoke(cli, ["map", str(tmp_path / "sig.npz"), "--collection", str(other), "--clusters",
                                 str(annot_collection.clusters), "--out", str(out)])
    assert r.exit_code != 0 and "Traceback" not in r.output
    assert f"{tmp_path / 'sig.npz'}: {N_IMAGES} of its {N_IMAGES} uids are not in {other / 'images.csv'}" in r.output
    assert f"(first: {annot_collection.uids[0]!r})" in r.output and "model embed" in r.output
    assert "warning" not in r.output  # one message, not one per image
    assert not out.exists()  # a map that fails leaves no folder behind
