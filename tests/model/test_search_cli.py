"""`model index` and `model search` as a user runs them: a uid query leaves itself out, an image file of an
indexed picture finds it first, a box is a crop of the picture as shown, the JSON and the gallery; bad input
is one clear sentence, never a traceback."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from model.__main__ import cli
from model.index import SearchIndex
from model.query import Encoder, QueryError, box_weights, clip_box, make_query, parse_box
from tests.model.search_fixtures import R, write_collection


@pytest.fixture(scope="module")
def indexed(tmp_path_factory):
    root = tmp_path_factory.mktemp("search")
    coll = write_collection(root / "coll")
    res = CliRunner().invoke(cli, ["index", "--collection", str(coll), "--weights", "random", "--arch", "resnet18",
                                   "--resolution", str(R), "--batch-size", "2", "--workers", "0", "--no-progress",
                                   "--out", str(root / "idx")])
    assert res.exit_code == 0, res.output
    assert "indexed 5 images (1 unreadable, 0 indexed before); the index" in res.output and "holds 5" in res.output
    return coll, root / "idx"


def _search(*args):
    return CliRunner().invoke(cli, ["search", *map(str, args)])


def test_uid_query_leaves_itself_out_and_writes_the_json_the_issue_asks_for(indexed, tmp_path):
    coll, idx = indexed
    res = _search(idx, "--uid", "a01", "-k", "10", "--json", tmp_path / "r.json")
    assert res.exit_code == 0, res.output
    doc = json.loads((tmp_path / "r.json").read_text())
    assert doc["query"]["uid"] == "a01" and doc["query"]["box"] is None
    uids = [r["uid"] for r in doc["results"]]
    assert sorted(uids) == ["a00", "a02", "a03", "a04"]  # k > images: every other image, itself left out
    scores = [r["score"] for r in doc["results"]]
    assert scores == sorted(scores, reverse=True)
    for r in doc["results"]:
        assert set(r) == {"uid", "score", "box", "similarity"}
        assert r["box"] is None or (len(r["box"]) == 4 and all(isinstance(v, int) for v in r["box"]))
    assert "title 0" in res.output or "title 2" in res.output  # the table shows images.csv's titles
    cal = json.loads((idx / "manifest.json").read_text())["calibration"]
    assert set(cal) == {"global_mean", "global_std", "region_mean", "region_std"} and cal["global_std"] > 0


def test_an_indexed_picture_given_as_a_file_finds_itself_first(indexed):
    coll, idx = indexed
    res = _search(idx, "--image", coll / "images" / "a03.png", "-k", "2")
    assert res.exit_code == 0, res.output
    first = res.output.splitlines()[2].split()
    assert first[0] == "1" and "a03" in first and float(first[1]) > 0.99


def test_a_box_query_pools_the_box_from_the_picture_as_shown(indexed, tmp_path):
    coll, idx = indexed
    index = SearchIndex.open(idx)
    enc = Encoder(index)
    q = make_query(index, uid="a02", box=(5, 10, 30, 40), encoder=enc)
    shown = Image.open(coll / "images" / "a02.jpg")
    shown = shown.transpose(Image.Transpose.ROTATE_270).convert("RGB")  # EXIF orientation 6
    assert shown.size == (40, 60) == q.size
    np.testing.assert_allclose(q.vector, enc.encode_pooled(shown, (5, 10, 30, 40)), atol=1e-5)
    rotated_wrongly = Image.open(coll / "images" / "a02.jpg").convert("RGB")  # 60 x 40: the stored pixels
    assert float(q.vector @ enc.encode_pooled(rotated_wrongly, (5, 10, 30, 20))) < 0.999
    assert q.exclude == index.number_of("a02")
    res = _search(idx, "--uid", "a02", "--box", "30,50,100,100", "-k", "3", "--json", tmp_path / "b.json")
    assert res.exit_code == 0, res.output
    assert "reaches outside" in res.output and "searching 30,50,10,10" in res.output
    assert json.loads((tmp_path / "b.json").read_text())["query"]["box"] == [30, 50, 10, 10]


def test_the_gallery_is_one_file_with_pictures_titles_and_boxes(indexed, tmp_path):
    coll, idx = indexed
    res = _search(idx, "--uid", "a00", "--box", "0,0,40,30", "-k", "4", "--html", tmp_path / "g.html")
    assert res.exit_code == 0, res.output
    page = (tmp_path / "g.html").read_text()
    assert page.count("data:image/jpeg;base64,") == 5  # the query and four results, embedded
    assert 'class="box"' in page and "title 0" in page and "src=\"http" not in page


@pytest.mark.parametrize(("args", "message"), [
    (["--uid", "a00", "--image", "MANIFEST"], "exactly one of --uid"),
    (["--uid", "nobody"], "is in neither the index"),
    (["--uid", "a00", "--box", "1,2,3"], "expected X,Y,W,H"),
    (["--uid", "a00", "--box", "500,500,20,20"], "less than 8 x 8 pixels inside"),
    (["--uid", "a00", "--box", "0,0,0,5"], "at least 1 pixel"),
])
def test_bad_queries_are_one_sentence(indexed, args, message):
    _, idx = indexed
    res = _search(idx, *[str(idx / "manifest.json") if a == "MANIFEST" else a for a in args])
    assert res.exit_code != 0 and message in res.output and "Traceback" not in res.output


def test_an_unreadable_query_image_and_a_signatures_file_as_index(indexed, tmp_path):
    _, idx = indexed
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"nope")
    res = _search(idx, "--image", bad)
    assert res.exit_code == 1 and "bad.jpg" in res.output and "pass another image" in res.output
    res = _search(tmp_path, "--uid", "a00")
    assert res.exit_code == 1 and "not a search index" in res.output


def test_moved_weights_or_other_weights_are_refused_for_pixel_queries(indexed, tmp_path):
    coll, idx = indexed
    copy = tmp_path / "idx"
    shutil.copytree(idx, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["weights"] = {"weights": "random", "seed": 7}
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(QueryError, match="not the weights the index"):
        make_query(SearchIndex.open(copy), uid="a00", box=(0, 0, 20, 20))
    manifest["weights"] = {"weights": str(tmp_path / "gone")}
    (copy / "manifest.json").write_text(json.dumps(manifest))
    res = _search(copy, "--image", coll / "images" / "a00.png")
    assert res.exit_code == 1 and "not there any more" in res.output
    assert _search(copy, "--uid", "a00").exit_code == 0  # a uid query needs no network


def test_box_parsing_and_clipping():
    assert parse_box(" 1, 2 ,3,4") == (1, 2, 3, 4)
    assert parse_box("1.6,2,3,4") == (2, 2, 3, 4)
    assert clip_box((-5, -5, 20, 20), (100, 100), "x") == ((0, 0, 15, 15), clip_box((-5, -5, 20, 20), (100, 100), "x")[1])
    assert clip_box((0, 0, 20, 20), (100, 100), "x") == ((0, 0, 20, 20), None)


def test_a_box_on_a_stored_region_pools_to_that_region_and_finds_its_twin(indexed, tmp_path):
    """A box is also pooled from the whole picture's feature map like the index's regions, so a box drawn on a
    region finds the same region of an identical picture even where the crop, embedded whole, drifts."""
    from model.regions import box_in_pixels
    from model.search_service import SearchService

    coll, idx = indexed
    twin = tmp_path / "coll"
    shutil.copytree(coll, twin)
    with open(twin / "images.csv", "a", encoding="utf-8") as fh:
        fh.write("twin,images/a03.png,the same picture\n")
    res = CliRunner().invoke(cli, ["index", "--collection", str(twin), "--weights", "random", "--arch", "resnet18",
                                   "--resolution", str(R), "--pca", "0", "--workers", "0", "--no-progress",
                                   "--out", str(tmp_path / "idx")])
    assert res.exit_code == 0, res.output
    service = SearchService(tmp_path / "idx")
    index = service.index
    number = index.number_of("a03")
    region = 6
    box = tuple(box_in_pixels(index.grid[region], index.size_of(number)))
    answer = service.ask(uid="a03", box=box, k=3)
    stored = index.vectors_of(number)[1][region]
    assert float(answer.query.vector @ stored) > 0.99  # the pooled box is the stored region
    assert answer.hits[0].uid == "twin" and answer.hits[0].region == region and answer.hits[0].box == list(box)
    assert answer.hits[0].similarity > 0.99


def test_a_moved_collection_is_said_and_found_again_with_collection(indexed, tmp_path):
    coll, idx = indexed
    moved = tmp_path / "moved"
    shutil.copytree(coll, moved)
    copy = tmp_path / "idx"
    shutil.copytree(idx, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    for p in manifest["parts"]:
        p["collection"] = str(tmp_path / "gone")
    (copy / "manifest.json").write_text(json.dumps(manifest))
    res = _search(copy, "--uid", "a00", "-k", "2")
    assert res.exit_code == 0 and "cannot be read (moved?)" in res.output and "pass --collection" in res.output
    res = _search(copy, "--uid", "a00", "-k", "4", "--collection", moved, "--html", tmp_path / "g.html")
    assert res.exit_code == 0 and "moved?" not in res.output and "title " in res.output
    assert (tmp_path / "g.html").read_text().count("data:image/jpeg") == 5
    res = _search(copy, "--uid", "a00", "--box", "0,0,20,20")
    assert res.exit_code == 1 and "has it moved? Pass --collection" in res.output


def test_uids_not_in_both_the_index_and_images_csv_get_the_right_sentence(indexed, tmp_path):
    coll, idx = indexed
    res = _search(idx, "--uid", "broken", "--box", "0,0,20,20")  # listed, unreadable, so never indexed
    assert res.exit_code == 1 and "broken.jpg" in res.output and "pass another image" in res.output
    edited = tmp_path / "coll"
    shutil.copytree(coll, edited)
    lines = (edited / "images.csv").read_text().splitlines()
    (edited / "images.csv").write_text("\n".join(x for x in lines if not x.startswith("a01,")) + "\n")
    res = _search(idx, "--uid", "a01", "--box", "0,0,20,20", "--collection", edited)
    assert res.exit_code == 1 and "is indexed, but" in res.output and "no longer lists it" in res.output


def test_unwritable_outputs_are_one_line_and_a_failed_first_run_leaves_no_folder(indexed, tmp_path):
    coll, idx = indexed
    (tmp_path / "afile").write_text("x")
    res = _search(idx, "--uid", "a00", "--html", tmp_path / "afile" / "g.html")
    assert res.exit_code == 2 and "does not exist" in res.output and "Traceback" not in res.output
    res = _search(idx, "--uid", "a00", "--json", "/dev/null")  # the atomic rename would have replaced the device
    assert res.exit_code == 2 and "not a regular file" in res.output
    res = _search(idx, "--uid", "a00", "-k", "2", "--json", "-")
    assert res.exit_code == 0
    doc = json.loads(res.stdout[res.stdout.index("{"):])  # the table went to stderr
    assert len(doc["results"]) == 2 and doc["query"]["uid"] == "a00"
    base = ["index", "--collection", str(coll), "--weights", "random", "--arch", "resnet18", "--resolution", str(R),
            "--workers", "0", "--no-progress"]
    res = CliRunner().invoke(cli, [*base, "--out", str(tmp_path / "afile" / "idx")])
    assert res.exit_code == 1 and "cannot write the index there" in res.output and "Traceback" not in res.output
    res = CliRunner().invoke(cli, [*base, "--pca", "900", "--out", str(tmp_path / "new")])
    assert res.exit_code == 1 and "--pca 900" in res.output and not (tmp_path / "new").exists()


def test_a_one_cell_feature_map_is_warned_about_and_returns_no_box(indexed, tmp_path):
    coll, _ = indexed
    res = CliRunner().invoke(cli, ["index", "--collection", str(coll), "--weights", "random", "--arch", "resnet18",
                                   "--resolution", "32", "--workers", "0", "--no-progress", "--out", str(tmp_path / "i")])
    assert res.exit_code == 0 and "is 1 x 1 cells" in res.output and "--resolution 128" in res.output
    res = _search(tmp_path / "i", "--uid", "a00", "--box", "0,0,30,30", "--json", tmp_path / "r.json")
    assert res.exit_code == 0, res.output
    assert all(r["box"] is None for r in json.loads((tmp_path / "r.json").read_text())["results"])


def test_box_weights_cover_the_cells_the_box_covers():
    w = box_weights((0, 0, 50, 100), (100, 100), 4)  # the left half of a 4 x 4 map
    np.testing.assert_allclose(w[:, :2], 1 / 8) and np.testing.assert_allclose(w[:, 2:], 0)
    w = box_weights((10, 0, 20, 100), (80, 100), 4)  # x in [1/8, 3/8): half of cell 0, half of cell 1
    np.testing.assert_allclose(w.sum(), 1.0, rtol=1e-6)
    np.testing.assert_allclose(w[0, :2], [1 / 8, 1 / 8], rtol=1e-6) and np.testing.assert_allclose(w[:, 2:], 0)
