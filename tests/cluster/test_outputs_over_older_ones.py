"""A command run again over its older output leaves files of one run only (issue 11 trial).

Killed while overwriting, `cluster map` left a new coords.csv beside an old map.html and map.png, and
`cluster optics` a new clusters.csv beside an old reachability.png. The kill suite (tests/faults/test_kills.py)
holds the kill at every step; these tests hold the rules it relies on, in-process.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from cluster.__main__ import cli
from data.signatures import Signatures, save_signatures


def _files(folder):
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture
def sig(tmp_path):
    rng = np.random.default_rng(3)
    centres = rng.normal(size=(3, 8))
    x = centres[np.arange(30) % 3] + 0.05 * rng.normal(size=(30, 8))
    save_signatures(tmp_path / "sig.npz", Signatures([f"u{i:02d}" for i in range(30)],
                                                      x / np.linalg.norm(x, axis=1, keepdims=True)))
    return tmp_path / "sig.npz"


def _optics(sig, out, *extra):
    r = CliRunner().invoke(cli, ["optics", str(sig), "--out", str(out), *extra])
    assert r.exit_code == 0, r.output
    return r


def test_optics_over_an_older_clustering_removes_the_older_plot(sig, tmp_path):
    out = tmp_path / "out" / "clusters.csv"
    _optics(sig, out, "--max-eps", "0.5")
    assert json.loads((out.parent / "clusters.json").read_text())["plot"] == "reachability.png"
    assert (out.parent / "reachability.png").exists()
    # DBSCAN draws no reachability plot: the OPTICS one must not stay beside its clusters.csv
    _optics(sig, out, "--method", "dbscan")
    assert not (out.parent / "reachability.png").exists()
    assert json.loads((out.parent / "clusters.json").read_text())["plot"] is None
    # a plot written elsewhere is named in clusters.json, and removed with its clustering
    _optics(sig, out, "--plot", str(tmp_path / "elsewhere.png"))
    assert json.loads((out.parent / "clusters.json").read_text())["plot"] == "../elsewhere.png"
    _optics(sig, out, "--min-samples", "3")
    assert not (tmp_path / "elsewhere.png").exists() and (out.parent / "reachability.png").exists()


def test_report_shows_the_plot_of_its_clusters_only(sig, tmp_path):
    coll = tmp_path / "coll"
    (coll / "img").mkdir(parents=True)
    (coll / "images.csv").write_text("uid,path\n" + "".join(f"u{i:02d},img/u{i:02d}.png\n" for i in range(30)))
    for i in range(30):
        Image.new("RGB", (8, 8), (i * 8, 0, 0)).save(coll / "img" / f"u{i:02d}.png")
    out = tmp_path / "out" / "clusters.csv"
    _optics(sig, out, "--max-eps", "0.5")
    (out.parent / "stale.png").write_bytes((out.parent / "reachability.png").read_bytes())
    _optics(sig, out, "--method", "dbscan")
    (out.parent / "reachability.png").write_bytes((out.parent / "stale.png").read_bytes())  # a copy put back
    r = CliRunner().invoke(cli, ["report", "--collection", str(coll), "--clusters", str(out), "--out",
                                 str(tmp_path / "r.html")])
    assert r.exit_code == 0, r.output
    assert "Reachability plot" not in (tmp_path / "r.html").read_text()  # DBSCAN's clusters.json names no plot


@pytest.fixture
def small(tmp_path):
    """4 images; maps of 3 of them (fewer than 4 points take PCA, not UMAP: fast)."""
    coll = tmp_path / "coll"
    (coll / "img").mkdir(parents=True)
    uids = ["a", "b", "c", "d"]
    (coll / "images.csv").write_text("uid,path\n" + "".join(f"{u},img/{u}.png\n" for u in uids))
    for i, u in enumerate(uids):
        Image.new("RGB", (20, 20), (60 * i, 90, 200 - 40 * i)).save(coll / "img" / f"{u}.png")
    rng = np.random.default_rng(0)
    for name, part in (("first", uids[:3]), ("last", uids[1:])):
        x = rng.normal(size=(3, 8))
        save_signatures(tmp_path / f"{name}.npz", Signatures(part, x / np.linalg.norm(x, axis=1, keepdims=True)))
    return tmp_path, coll


def _map(tmp, coll, which, out):
    return CliRunner().invoke(cli, ["map", str(tmp / f"{which}.npz"), "--collection", str(coll), "--out", str(out),
                                    "--thumb-size", "16"])


def test_map_over_an_older_map_replaces_the_whole_folder(small, monkeypatch):
    tmp, coll = small
    out = tmp / "map"
    assert _map(tmp, coll, "first", out).exit_code == 0
    assert '"values":["a","b","c"]' in (out / "data" / "col-0.js").read_text()
    (out / "data" / "col-9.js").write_text("MAPDATA.column(9, {});\n")  # as an older map with more columns
    assert _map(tmp, coll, "last", out).exit_code == 0
    # the older map's files are gone with it: the uids are the new ones, no column of the older map is left
    assert '"values":["b","c","d"]' in (out / "data" / "col-0.js").read_text()
    assert not (out / "data" / "col-9.js").exists()
    before = _files(out)

    import cluster.mapping

    def fail(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(cluster.mapping, "install_viewer", fail)
    r = _map(tmp, coll, "first", out)
    assert r.exit_code != 0 and isinstance(r.exception, OSError)
    assert _files(out) == before  # not a new coords.csv beside the older map.html
    assert not [p.name for p in tmp.iterdir() if p.name.startswith(".map.")]  # and no scratch folder
    r = _map(tmp, coll, "first", tmp / "new")
    assert r.exit_code != 0 and not (tmp / "new").exists()


def test_map_refuses_an_out_folder_that_holds_other_files(small):
    tmp, coll = small
    out = tmp / "results"
    out.mkdir()
    (out / "clusters.csv").write_text("uid,cluster,order,reachability,core_distance\n")
    r = _map(tmp, coll, "first", out)
    assert r.exit_code != 0 and "Traceback" not in r.output
    assert str(out) in r.output and "clusters.csv" in r.output and "new folder" in r.output
    assert [p.name for p in out.iterdir()] == ["clusters.csv"]


@pytest.mark.parametrize("name", ["images.csv", "sig.npz", "clusters.json"])
def test_optics_refuses_an_out_that_is_not_a_clusters_file(sig, tmp_path, name):
    """Found in a trial: `optics ... --out COLLECTION/images.csv` replaced the museum's images.csv with clusters.csv
    (and `--out signatures.npz` would replace the signatures). An existing --out that is not a clusters.csv, or an
    --out whose clusters.json would be the file itself, is refused, one sentence, and nothing is touched."""
    target = tmp_path / name
    if name == "images.csv":
        target.write_text("uid,path,title\nu00,img/u00.png,\"Vierge, à l'Enfant\"\n", encoding="utf-8-sig")
    elif name == "clusters.json":
        target.write_text("{}\n")
    before = _files(tmp_path)
    r = CliRunner().invoke(cli, ["optics", str(sig), "--out", str(target), "--max-eps", "0.5"])
    assert r.exit_code != 0 and "Traceback" not in r.output, r.output
    message = r.output.strip().splitlines()[-1]
    assert message.startswith("Error: ") and str(target) in message and "--out" in message, r.output
    assert _files(tmp_path) == before


def test_optics_refuses_signatures_of_another_collection(sig, tmp_path):
    """Found in a trial: signatures of another collection with `--collection DIR` clustered silently with no
    constraint applied ('0 cannot-link pairs, 0 must-link groups'). Refused before anything is written."""
    coll = tmp_path / "coll"
    coll.mkdir()
    (coll / "images.csv").write_text("uid,path\n" + "".join(f"MUS-{i},img/{i}.jpg\n" for i in range(30)))
    (coll / "connections.csv").write_text("a,b,type\nMUS-1,MUS-2,POSITIVE\nMUS-3,MUS-4,NEGATIVE\n")
    out = tmp_path / "out" / "clusters.csv"
    r = CliRunner().invoke(cli, ["optics", str(sig), "--out", str(out), "--collection", str(coll)])
    assert r.exit_code != 0 and "Traceback" not in r.output, r.output
    assert "30 uid(s) are not in" in r.output and "images.csv" in r.output and "'u00'" in r.output, r.output
    assert not out.parent.exists() or not any(out.parent.iterdir())
