"""The annotation page and the report read the collection's one thumbnail cache (data/thumbs.py, issue 14)."""

from __future__ import annotations

import base64

import numpy as np
from click.testing import CliRunner
from PIL import Image

import data.thumbs as thumbs_mod
from cluster.__main__ import cli
from cluster.annotate.app import create_app
from cluster.clusters_file import ClusterTable, write_clusters
from data.image import jpeg_thumbnail
from data.thumbs import ThumbCache, ensure

UIDS = ["a", "b", "c"]


def _coll(tmp_path):
    root = tmp_path / "coll"
    root.mkdir()
    for i, u in enumerate(UIDS):
        Image.new("RGB", (60, 40), (40 * i, 90, 200)).save(root / f"{u}.jpg")
    (root / "bad.jpg").write_bytes(b"junk")
    (root / "images.csv").write_text("uid,path\n" + "".join(f"{u},{u}.jpg\n" for u in UIDS) + "bad,bad.jpg\n")
    (root / "connections.csv").write_text("a,b,type\n")
    uids = [*UIDS, "bad"]
    n = len(uids)
    write_clusters(tmp_path / "clusters.csv", ClusterTable(uids=uids, labels=np.zeros(n, int), order=np.arange(n),
                                                            reachability=np.zeros(n), core_distance=np.zeros(n)))
    return root, tmp_path / "clusters.csv"


def _no_decoding(monkeypatch) -> None:
    def refuse(*a, **k):
        raise AssertionError("decoded although the cache holds the thumbnail")

    monkeypatch.setattr(thumbs_mod, "jpeg_thumbnail", refuse)


def test_page_serves_the_cached_thumbnail_and_fills_the_cache(tmp_path, monkeypatch):
    root, clusters = _coll(tmp_path)
    client = create_app(root, clusters, "ada").test_client()
    first = client.get("/image/a?size=256")
    assert first.status_code == 200
    cached = ThumbCache.for_collection(root).path("a")
    assert cached.read_bytes() == first.get_data() == jpeg_thumbnail(root / "a.jpg", 256).jpeg
    assert client.get("/image/bad?size=256").status_code == 404
    assert not ThumbCache.for_collection(root).path("bad").exists()
    ensure(root, workers=1, progress=False)
    _no_decoding(monkeypatch)  # a new session reads the files the earlier one (or `data thumbs`) made
    again = create_app(root, clusters, "ada").test_client()
    for u in UIDS:
        assert again.get(f"/image/{u}?size=256").get_data() == ThumbCache.for_collection(root).path(u).read_bytes()
    assert again.get("/image/a?size=1024").status_code == 200  # the large view is not the cache's


def test_page_and_report_work_when_the_cache_cannot_be_written(tmp_path):
    root, clusters = _coll(tmp_path)
    (root / ".cache").write_text("not a folder")
    client = create_app(root, clusters, "ada").test_client()
    res = client.get("/image/b?size=256")
    assert res.status_code == 200 and res.get_data() == jpeg_thumbnail(root / "b.jpg", 256).jpeg
    out = tmp_path / "report.html"
    r = CliRunner().invoke(cli, ["report", "--collection", str(root), "--clusters", str(clusters), "--out", str(out)])
    assert r.exit_code == 0, r.output
    assert base64.b64encode(jpeg_thumbnail(root / "c.jpg", 256).jpeg).decode() in out.read_text()


def test_report_embeds_the_cached_files(tmp_path, monkeypatch):
    root, clusters = _coll(tmp_path)
    ensure(root, workers=1, progress=False)
    _no_decoding(monkeypatch)
    out = tmp_path / "report.html"
    r = CliRunner().invoke(cli, ["report", "--collection", str(root), "--clusters", str(clusters), "--out", str(out)])
    assert r.exit_code == 0, r.output
    page = out.read_text()
    for u in UIDS:
        assert base64.b64encode(ThumbCache.for_collection(root).path(u).read_bytes()).decode() in page
    assert "unreadable" in page  # bad.jpg: a placeholder, no picture
