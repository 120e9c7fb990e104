"""The map on a tiny synthetic collection: coordinates for every uid, a decodable PNG, the viewer's data files,
thumbnails from the collection's cache; the layout from clustering's neighbour lists."""

import base64
import csv
import re
import warnings
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from cluster.__main__ import cli
from cluster.clusters_file import ClusterTable, write_clusters
from cluster.mapping import MapConfig, make_map
from cluster.neighbours_file import neighbours_path, read_neighbours, write_neighbours
from data.collection import Connection, write_connections
from data.signatures import Signatures, save_signatures
from data.thumbs import thumb_name

N = 36


def make_tiny(tmp_path):
    """36 small images in 3 colour families (one file corrupt), signatures in 3 groups, a clusters.csv."""
    root = tmp_path / "coll"
    (root / "img").mkdir(parents=True)
    rng = np.random.default_rng(0)
    uids = [f"u{i:02d}" for i in range(N)]
    lines = ["uid,path,title,author,date"]
    for i, u in enumerate(uids):
        colour = [(200, 40, 40), (40, 200, 40), (40, 40, 200)][i % 3]
        Image.new("RGB", (48, 40), colour).save(root / "img" / f"{u}.png")
        lines.append(f'{u},img/{u}.png,"Title, {i}",Painter {i % 5},c. {1500 + i}')
    (root / "img" / "u07.png").write_bytes(b"not an image at all")
    (root / "images.csv").write_text("\n".join(lines) + "\n")
    write_connections(
        root / "connections.csv",
        [
            Connection("u00", "u03", "POSITIVE"),
            Connection("u03", "u06", "POSITIVE"),
            Connection("u01", "u02", "NEGATIVE"),
        ],
    )
    centres = rng.normal(size=(3, 16))
    x = centres[np.arange(N) % 3] + 0.1 * rng.normal(size=(N, 16))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    save_signatures(tmp_path / "sig.npz", Signatures(uids=uids, vectors=x))
    labels = np.where(np.arange(N) < 30, np.arange(N) % 3, -1)
    write_clusters(
        tmp_path / "clusters.csv",
        ClusterTable(
            uids=uids, labels=labels, order=np.arange(N), reachability=np.zeros(N), core_distance=np.zeros(N)
        ),
    )
    return tmp_path, root, uids


@pytest.fixture
def tiny(tmp_path):
    return make_tiny(tmp_path)


def _decode(s, dtype):
    return np.frombuffer(base64.b64decode(s), dtype=dtype)


def read_points(map_dir):
    """The payload of data/points.js (what the page decodes)."""
    import json

    text = (map_dir / "data" / "points.js").read_text(encoding="utf-8")
    m = re.fullmatch(r"MAPDATA\.points\((.*)\);\n", text, flags=re.S)
    assert m, text[:80]
    return json.loads(m.group(1))


@pytest.mark.slow  # UMAP compiles its numba kernels on first use (~20 s of CPU)
def test_map_outputs(tiny):
    tmp, root, uids = tiny
    out = tmp / "map"
    res = make_map(tmp / "sig.npz", root, out, clusters_path=tmp / "clusters.csv",
                   cfg=MapConfig(n_neighbors=5, workers=1, progress=False))  # fmt: skip
    with open(out / "coords.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["uid"] for r in rows] == uids
    assert all(np.isfinite(float(r["x"])) and np.isfinite(float(r["y"])) for r in rows)
    assert rows[0]["group"] == "u00" and rows[1]["group"] == ""
    # the three synthetic groups come out separated: each point's nearest map neighbour is in its group
    xy = res.coords
    d = np.linalg.norm(xy[:, None] - xy[None], axis=-1) + np.eye(N) * 1e9
    assert np.mean(np.argmin(d, axis=1) % 3 == np.arange(N) % 3) > 0.9
    with Image.open(out / "map.png") as im:
        im.load()
        assert im.size[0] > 100
    # the viewer's data: every point, in the signatures' order, coordinates within [-1, 1]
    pts = read_points(out)
    assert pts["n"] == N
    x, y = _decode(pts["x"], "<f4"), _decode(pts["y"], "<f4")
    assert np.abs(x).max() <= 1 and np.abs(y).max() <= 1 and np.abs(np.concatenate([x, y])).max() > 0.9
    assert _decode(pts["cluster"], "<i4").tolist() == np.where(np.arange(N) < 30, np.arange(N) % 3, -1).tolist()
    assert _decode(pts["year"], "<f4").tolist() == [1500.0 + i for i in range(N)]  # "c. 1503" -> 1503
    assert [c["name"] for c in pts["columns"]] == ["uid", "title", "author", "date"]
    assert pts["links"] and sorted(_decode(pts["links"], "<i4").tolist()) == [0, 3, 3, 6]
    # thumbnails live in the collection's cache, reached from the map folder by a relative path
    assert not pts["thumbs"]["base"].startswith(("/", "file:"))
    cache = (out / pts["thumbs"]["base"]).resolve()
    assert cache == (root / ".cache" / "thumbs-256").resolve()
    has = _decode(pts["thumbs"]["has"], "u1")
    assert has.sum() == N - 1 == res.n_thumbs and not has[7]
    for u in uids:
        if u != "u07":
            with Image.open(cache / thumb_name(u)) as im:
                assert max(im.size) <= 256
    # the corrupt image is reported by uid, has no thumbnail, and the page says why
    assert [u for u, _ in res.unreadable] == ["u07"]
    assert "not a readable image" in pts["unreadable"]["7"]
    # offline: nothing of ours refers to the network
    for f in (out / "map.html", out / "lib" / "map.js", out / "lib" / "app.js", out / "data" / "points.js"):
        assert not re.search(r"https?://(?!127\.0\.0\.1)", f.read_text(encoding="utf-8")), f
    assert "no clusters.knn.npz" in res.neighbours or "not found" in res.neighbours


@pytest.mark.slow  # UMAP again (compiled once per process)
def test_map_command_without_clusters_and_bad_clusters(tiny, tmp_path):
    tmp, root, uids = tiny
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        r = CliRunner().invoke(cli, ["map", str(tmp / "sig.npz"), "--collection", str(root), "--out", str(tmp / "m2"),
                                     "--n-neighbors", "5", "--workers", "1"])  # fmt: skip
    assert r.exit_code == 0, r.output
    # issue 11 trial: umap-learn's "n_jobs value 1 overridden to 1 by setting random_state" reached the user
    assert not [w for w in caught if "n_jobs" in str(w.message) or "knn_search_index" in str(w.message)]
    assert "image u07" in r.output and "without thumbnail" in r.output
    with open(tmp / "m2" / "coords.csv", newline="") as fh:
        assert {row["cluster"] for row in csv.DictReader(fh)} == {"-1"}
    bad = tmp / "other.csv"
    write_clusters(
        bad, ClusterTable(uids=["zz"], labels=[0], order=[0], reachability=[0.0], core_distance=[0.0])
    )
    with pytest.raises(ValueError, match="u00"):
        make_map(tmp / "sig.npz", root, tmp / "m3", clusters_path=bad)


@pytest.mark.slow  # clustering, then UMAP
def test_map_lays_out_from_the_lists_clustering_kept(tiny):
    """`cluster optics` (knn engine) keeps its lists beside clusters.csv; `cluster map` uses them instead of
    searching again, and refuses (explicit) or ignores (found beside) lists of other signatures."""
    tmp, root, uids = tiny
    run = CliRunner().invoke
    clusters = tmp / "knn" / "clusters.csv"
    r = run(cli, ["optics", str(tmp / "sig.npz"), "--min-samples", "3", "--max-eps", "0.5", "--out", str(clusters)])
    assert r.exit_code == 0, r.output
    got = read_neighbours(neighbours_path(clusters), signatures_sha256=_sha(tmp / "sig.npz"), n=N)
    assert not isinstance(got, str), got
    idx, dist = got
    assert (idx != np.arange(N)[:, None]).all() and (np.diff(dist, axis=1) >= -1e-6).all()  # no self, nearest first
    assert (idx % 3 == (np.arange(N) % 3)[:, None])[:, :5].all()  # the planted groups are each other's neighbours
    r = run(cli, ["map", str(tmp / "sig.npz"), "--collection", str(root), "--clusters", str(clusters),
                  "--out", str(tmp / "m"), "--n-neighbors", "5", "--workers", "1"])  # fmt: skip
    assert r.exit_code == 0, r.output
    assert f"neighbours from {neighbours_path(clusters)}" in r.output
    # lists of other signatures beside the clusters: searched again, saying why; given explicitly: refused
    write_neighbours(neighbours_path(clusters), idx, dist, signatures_sha256="0" * 64, metric="cosine")
    r = run(cli, ["map", str(tmp / "sig.npz"), "--collection", str(root), "--clusters", str(clusters),
                  "--out", str(tmp / "m"), "--n-neighbors", "5", "--workers", "1"])  # fmt: skip
    assert r.exit_code == 0 and "made from other signatures" in r.output, r.output
    r = run(cli, ["map", str(tmp / "sig.npz"), "--collection", str(root), "--neighbours", str(neighbours_path(clusters)),
                  "--out", str(tmp / "m"), "--n-neighbors", "5"])  # fmt: skip
    assert r.exit_code == 1 and "made from other signatures" in r.output and "Traceback" not in r.output
    # clusters of other signatures of the same images (another model): shown, with a warning that says so
    x = np.random.default_rng(5).normal(size=(N, 16))
    save_signatures(tmp / "other.npz", Signatures(uids=uids, vectors=x / np.linalg.norm(x, axis=1, keepdims=True)))
    r = run(cli, ["map", str(tmp / "other.npz"), "--collection", str(root), "--clusters", str(clusters),
                  "--out", str(tmp / "m"), "--n-neighbors", "5", "--workers", "1"])  # fmt: skip
    assert r.exit_code == 0 and "warning:" in r.output and "was made from other signatures than" in r.output


def _sha(path):
    from cluster.clusters_file import file_sha256

    return file_sha256(path)


def test_a_ctrl_c_that_a_library_swallows_still_stops_the_map_and_keeps_the_older_one(tiny, monkeypatch):
    """Trial of issue 14: Ctrl-C while numba compiled (inside a ctypes callback, which prints the
    KeyboardInterrupt and goes on) was lost: the command ran to the end and replaced the older map."""
    import os
    import signal

    import cluster.mapping

    tmp, root, uids = tiny
    out = tmp / "m"
    args = ["map", str(tmp / "sig.npz"), "--collection", str(root), "--out", str(out), "--workers", "1"]
    monkeypatch.setattr(cluster.mapping, "embed_2d", lambda x, cfg, nb=None: np.random.default_rng(0).normal(size=(N, 2)))
    assert CliRunner().invoke(cli, args).exit_code == 0
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}

    def swallowing_layout(x, cfg, nb=None):
        try:
            os.kill(os.getpid(), signal.SIGINT)
        except KeyboardInterrupt:
            pass  # what a ctypes callback does with it
        return np.random.default_rng(1).normal(size=(N, 2))

    monkeypatch.setattr(cluster.mapping, "embed_2d", swallowing_layout)
    r = CliRunner().invoke(cli, args)
    assert r.exit_code == 130 and "interrupted" in r.output and "Traceback" not in r.output
    assert {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # the handler is put back


def test_hdbscan_on_the_knn_graph_keeps_its_lists_for_the_map_too(tiny):
    tmp, root, uids = tiny
    clusters = tmp / "h" / "clusters.csv"
    r = CliRunner().invoke(cli, ["optics", str(tmp / "sig.npz"), "--method", "hdbscan", "--engine", "knn",
                                 "--min-samples", "3", "--out", str(clusters)])  # fmt: skip
    assert r.exit_code == 0, r.output
    got = read_neighbours(neighbours_path(clusters), signatures_sha256=_sha(tmp / "sig.npz"), n=N)
    assert not isinstance(got, str), got
    assert (got[0] != np.arange(N)[:, None]).all() and (got[0][:, :5] % 3 == (np.arange(N) % 3)[:, None]).all()
    # a later run of another method there leaves no lists of the earlier one behind
    r = CliRunner().invoke(cli, ["optics", str(tmp / "sig.npz"), "--method", "dbscan", "--out", str(clusters)])
    assert r.exit_code == 0, r.output
    assert not neighbours_path(clusters).exists()


@pytest.mark.slow  # UMAP
def test_map_years_come_from_each_images_first_date_column_with_a_year(tiny):
    """An export with `Dating` ("XVI secolo", "c. 1503" or blank) and `BeginDate`: an image's year is the first
    year in its date columns, in data.metadata's order, as its caption's date is its first non-blank one (was:
    the `Dating` column alone for every image, so "XVI secolo" and blank rows had no year despite BeginDate)."""
    tmp, root, uids = tiny
    lines = ["uid,path,Titolo,Dating,BeginDate"]
    dating = ["c. 1503", "XVI secolo", "", "1620 circa"]
    for i, u in enumerate(uids):
        lines.append(f"{u},img/{u}.png,T {i},{dating[i % 4]},{1400 + i}")
    (root / "images.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    r = CliRunner().invoke(cli, ["map", str(tmp / "sig.npz"), "--collection", str(root), "--out", str(tmp / "m4"),
                                 "--n-neighbors", "5", "--workers", "1"])  # fmt: skip
    assert r.exit_code == 0, r.output
    points = read_points(tmp / "m4")
    years = _decode(points["year"], "<f4").tolist()
    assert years == [[1503.0, 1400.0 + i, 1400.0 + i, 1620.0][i % 4] for i in range(N)]
    # the page's captions and search read the same columns (data.metadata), whatever their names
    names = [c["name"] for c in points["columns"]]
    assert {k: [names[j] for j in v] for k, v in points["fields"].items()} == {
        "title": ["Titolo"], "author": [], "date": ["Dating", "BeginDate"], "place": []}


@pytest.mark.slow  # UMAP compiles its numba kernels (~20 s of CPU)
def test_map_with_a_read_only_home_and_install_runs(tmp_path):
    """A user whose home is read-only on a shared install they cannot write: umap-learn's numba found no folder to
    cache its compiled functions in and `import umap` raised (`RuntimeError: cannot cache function 'rdist': no
    locator available`, a traceback). Now the map is made, numba compiling into a temporary folder. Runs as an
    unprivileged user where the tests run as root (root writes anywhere)."""
    import os
    import shutil
    import subprocess
    import sys
    import tempfile

    if os.geteuid() != 0 or shutil.which("setpriv") is None:
        pytest.skip("needs root and setpriv to run as a user who cannot write the install")
    work = Path(tempfile.mkdtemp(prefix="vsig-readonly-home-", dir="/tmp"))
    try:
        _, root, _ = make_tiny(work)
        (root / "img" / "u07.png").unlink()  # only readable images: the point is the layout
        (root / "images.csv").write_text("\n".join(ln for ln in (root / "images.csv").read_text().splitlines()
                                                   if not ln.startswith("u07,")) + "\n")  # fmt: skip
        sig = np.load(work / "sig.npz", allow_pickle=False)
        keep = [i for i, u in enumerate(sig["uids"].tolist()) if u != "u07"]
        save_signatures(work / "sig.npz", Signatures(uids=[sig["uids"][i] for i in keep], vectors=sig["vectors"][keep]))
        home = work / "home"
        home.mkdir()
        for p in (work, *work.rglob("*")):
            p.chmod(0o777 if p.is_dir() else 0o666)
        home.chmod(0o555)
        env = {k: v for k, v in os.environ.items() if not k.startswith(("NUMBA_", "XDG_", "MPLCONFIGDIR"))}
        env.update(HOME=str(home), MPLCONFIGDIR=str(work), PYTHONPATH=os.getcwd())
        res = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", sys.executable, "-m",
                              "cluster", "map", str(work / "sig.npz"), "--collection", str(root), "--out",
                              str(work / "map"), "--n-neighbors", "5", "--workers", "1"],
                             capture_output=True, text=True, env=env, cwd=str(work), timeout=300)  # fmt: skip
        assert res.returncode == 0, res.stderr[-3000:]
        assert "Traceback" not in res.stderr and (work / "map" / "coords.csv").exists()
    finally:
        shutil.rmtree(work, ignore_errors=True)
