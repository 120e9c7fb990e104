"""Pictures on the annotation page and the map are decoded like every stage's (issue 11, defect 3 and 10).

A transparent line drawing was a black square on the page, a phone photo lay on its side, and an image
over 179 Mpx made the page's image route answer 500 while `data check` accepted it.
"""

from __future__ import annotations

import io

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

import data.image as image_mod
from cluster.__main__ import cli
from cluster.annotate.app import create_app
from cluster.clusters_file import ClusterTable, write_clusters
from data.signatures import Signatures, save_signatures
from tests.data import image_kinds as K

UIDS = ["draw", "phone", "big"]


@pytest.fixture
def coll(tmp_path):
    root = tmp_path / "coll"
    root.mkdir()
    K.line_drawing(root / "draw.png")
    K.oriented_jpeg(root / "phone.jpg", 6)
    Image.new("RGB", (60, 50), K.RED).save(root / "big.png")
    (root / "images.csv").write_text("uid,path\ndraw,draw.png\nphone,phone.jpg\nbig,big.png\n")
    (root / "connections.csv").write_text("a,b,type\n")
    n = len(UIDS)
    write_clusters(tmp_path / "clusters.csv", ClusterTable(uids=UIDS, labels=np.zeros(n, int), order=np.arange(n),
                                                            reachability=np.zeros(n), core_distance=np.zeros(n)))
    return root, tmp_path / "clusters.csv"


def _jpeg(resp) -> Image.Image:
    assert resp.status_code == 200 and resp.mimetype == "image/jpeg", resp.get_data()[:200]
    return Image.open(io.BytesIO(resp.get_data())).convert("RGB")


def test_annotation_page_images_are_corrected(coll):
    root, clusters = coll
    client = create_app(root, clusters, "ada").test_client()
    drawing = _jpeg(client.get("/image/draw?size=256"))
    assert K.mean_rgb(drawing, (0, 0, 8, 8)).min() > 245  # paper, not a black square
    assert K.mean_rgb(drawing, (23, 23, 25, 25)).max() < 40  # the line is still drawn
    phone = _jpeg(client.get("/image/phone?size=256"))
    assert phone.size == (32, 48)  # upright
    assert np.abs(K.mean_rgb(phone, (20, 4, 28, 12)) - K.RED).max() < 20


def test_annotation_page_and_check_refuse_an_image_over_the_one_limit_with_one_message(coll, monkeypatch):
    """Not a 500: a 404 whose JSON error is the message `data check` prints for the same file."""
    from data.__main__ import cli as data_cli

    monkeypatch.setattr(image_mod, "MAX_PIXELS", 2500)  # big.png (3000 px) is over; the others are not
    root, clusters = coll
    client = create_app(root, clusters, "ada").test_client()
    resp = client.get("/image/big?size=256")
    assert resp.status_code == 404
    message = image_mod.too_large_message(str(root / "big.png"), (60, 50))
    assert resp.get_json()["error"] == f"uid big: {message}"
    assert client.get("/image/draw?size=256").status_code == 200
    res = CliRunner().invoke(data_cli, ["check", str(root)])
    assert res.exit_code == 1 and f"uid big: {message}" in res.output


def test_map_thumbnails_are_corrected(coll, tmp_path):
    """`cluster map` thumbnails (3 images: no UMAP needed)."""
    root, clusters = coll
    rng = np.random.default_rng(0)
    x = rng.normal(size=(3, 8))
    save_signatures(tmp_path / "sig.npz", Signatures(uids=UIDS, vectors=x / np.linalg.norm(x, axis=1, keepdims=True)))
    out = tmp_path / "map"
    res = CliRunner().invoke(cli, ["map", str(tmp_path / "sig.npz"), "--collection", str(root), "--out", str(out),
                                   "--thumb-size", "32"])
    assert res.exit_code == 0, res.output
    cache = root / ".cache" / "thumbs-32"  # the map shows the collection's thumbnail cache (data/thumbs.py)
    with Image.open(cache / "draw.jpg") as t:
        assert K.mean_rgb(t, (0, 0, 4, 4)).min() > 245
    with Image.open(cache / "phone.jpg") as t:
        assert t.height > t.width


def test_map_report_and_page_make_their_thumbnails_one_way(coll, tmp_path):
    """One function makes every thumbnail (`data.image.jpeg_thumbnail`): the map's files, the page's images and
    the report's embedded pictures are its bytes for the same image and size."""
    import base64

    from cluster.report import ReportInputs, build_report
    from data.image import jpeg_thumbnail

    root, clusters = coll
    x = np.random.default_rng(0).normal(size=(3, 8))
    save_signatures(tmp_path / "sig.npz", Signatures(uids=UIDS, vectors=x / np.linalg.norm(x, axis=1, keepdims=True)))
    out = tmp_path / "map"
    res = CliRunner().invoke(cli, ["map", str(tmp_path / "sig.npz"), "--collection", str(root), "--out", str(out),
                                   "--thumb-size", "32"])
    assert res.exit_code == 0, res.output
    for uid, name in (("draw", "draw.png"), ("phone", "phone.jpg")):
        assert (root / ".cache" / "thumbs-32" / f"{uid}.jpg").read_bytes() == jpeg_thumbnail(root / name, 32).jpeg
    page = create_app(root, clusters, "ada").test_client().get("/image/phone?size=256")
    assert page.get_data() == jpeg_thumbnail(root / "phone.jpg", 256).jpeg
    report = build_report(ReportInputs(collection=root, clusters=clusters))
    embedded = base64.b64encode(jpeg_thumbnail(root / "phone.jpg", 256).jpeg).decode()
    assert f"data:image/jpeg;base64,{embedded}" in report
    # the page and the report read the collection's one thumbnail cache (data/thumbs.py)
    assert (root / ".cache" / "thumbs-256" / "phone.jpg").read_bytes() == page.get_data()
