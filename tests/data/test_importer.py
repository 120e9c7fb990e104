from __future__ import annotations

import csv
import pickle

import pytest
from click.testing import CliRunner

from data.__main__ import cli
from data.collection import load_collection
from data.importer import ImportError_, import_original
from data.validate import validate

from .conftest import write_image

U = [f"{i:032x}" for i in range(1, 6)]  # 32-hex-digit uids like the archive's
META_COLS = ["uid", "Drawer", "ImageNumber", "Author", "AuthorOriginal", "Description", "BeginDate", "EndDate",
             "City", "Country", "ImageURL", "Technique"]


def _write_metadata(path, rows):
    with open(path, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh, delimiter=";")
        w.writerow(META_COLS)
        w.writerows(rows)


def _fixture(tmp_path):
    meta = tmp_path / "metadata.csv"
    _write_metadata(meta, [
        [U[0], "12A", "0001", "Tiziano", "Titian", "Venus; with mirror", "1555", "1555", "Venezia", "Italia", "", "oil"],
        [U[1], "12A", "0002", "Anonimo", "", "Madonna", "1400", "1450", "Firenze", "Italia", "", "tempera"],
        [U[2], "7B", "0101", "Dürer", "Albrecht Dürer", "Adam, Eve", "1504", "", "", "Germania",
         "https://iiif.example.org/iiif/2/7B_0101", "engraving"],
        [U[3], "7B", "0102", "", "", "", "", "", "", "", "", ""],
        [U[4], "12A", "0003", "Tiziano", "", "Venus (copy)", "1560", "", "", "", "", "oil"],
    ])
    images = tmp_path / "archive"
    for d, n in [("12A", "0001"), ("12A", "0002"), ("12A", "0003")]:
        write_image(images / d / f"{d}_{n}.jpg")
    morph = tmp_path / "morphograph.csv"
    with open(morph, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["uid", "img1", "img2", "type", "annotated"])
        w.writerows([
            ["e1", U[0], U[4], "POSITIVE", "2019-03-01 10:00:00"],
            ["e2", U[0], U[1], "NEGATIVE", "2019-03-01 10:01:00"],
            ["e3", U[1], U[2], "DUPLICATE", "2019-03-02 09:00:00"],
            ["e4", U[2], U[4], "NON-DUPLICATE", "2019-03-02 09:01:00"],
            ["e5", U[1], U[4], "PROPOSAL", ""],
            ["e6", U[0], "f" * 32, "POSITIVE", ""],
            ["e7", U[2], U[3], "similar", ""],
        ])
    return meta, morph, images


def test_import_original_files(tmp_path):
    meta, morph, images = _fixture(tmp_path)
    out = tmp_path / "coll"
    res = import_original(meta, morph, out, images_root=images)
    assert (res.images, res.local, res.remote) == (5, 3, 1)
    assert res.no_image == [U[3]]
    assert dict(res.connections) == {"POSITIVE": 1, "NEGATIVE": 1, "DUPLICATE": 1, "SIMILAR": 1}
    assert dict(res.kept_out) == {"type NON-DUPLICATE": 1, "type PROPOSAL": 1, "unknown uid": 1}
    coll = load_collection(out)
    r0 = coll.record(U[0])
    assert r0.meta["author"] == "Tiziano" and r0.meta["title"] == "Venus; with mirror"
    assert r0.meta["place"] == "Venezia, Italia" and r0.meta["date"] == "1555"
    assert r0.meta["AuthorOriginal"] == "Titian" and r0.meta["Technique"] == "oil"
    assert coll.image_path(U[0]) == images.resolve() / "12A" / "12A_0001.jpg"
    assert coll.record(U[1]).meta["date"] == "1400-1450"
    assert coll.record(U[2]).url == "https://iiif.example.org/iiif/2/7B_0101" and coll.record(U[2]).path is None
    conn = {(c.a, c.b): c for c in coll.connections}
    assert conn[(U[0], U[4])].source == "morphograph:e1" and conn[(U[0], U[4])].annotated_at == "2019-03-01 10:00:00"
    assert conn[(U[2], U[3])].type == "SIMILAR"
    with open(out / "connections_other.csv") as fh:
        other = list(csv.DictReader(fh))
    assert [(o["uid"], o["reason"], o["line"]) for o in other] == [
        ("e4", "type NON-DUPLICATE", "5"), ("e5", "type PROPOSAL", "6"), ("e6", "unknown uid", "7")]
    rep = validate(out)
    # only what is really wrong: U[3] has no image anywhere; U[2] is remote and not fetched yet
    assert [(p.uid, p.severity) for p in rep.errors] == [(U[3], "error")]
    assert any(p.uid == U[2] and "not fetched" in p.message for p in rep.warnings)


def test_import_parquet_morphograph(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    meta, _, images = _fixture(tmp_path)
    table = pa.table({"uid": ["e1", "e2"], "img1": [U[0], U[1]], "img2": [U[4], U[2]],
                      "type": ["POSITIVE", "PROPOSAL"], "annotated": ["2020-01-01", None]})
    pq.write_table(table, tmp_path / "morph.parquet")
    res = import_original(meta, tmp_path / "morph.parquet", tmp_path / "c2", images_root=images)
    assert dict(res.connections) == {"POSITIVE": 1} and dict(res.kept_out) == {"type PROPOSAL": 1}


def test_pickle_is_refused_never_opened(tmp_path):
    meta, _, _ = _fixture(tmp_path)
    evil = tmp_path / "morph.bin"
    evil.write_bytes(pickle.dumps({"img1": [U[0]]}, protocol=4))
    with pytest.raises(ImportError_, match="pickle") as e:
        import_original(meta, evil, tmp_path / "c3")
    assert "read_pickle" in str(e.value) and "trust" in str(e.value)
    pkl = tmp_path / "morph.pkl"
    pkl.write_bytes(b"anything")
    res = CliRunner().invoke(cli, ["import", "--metadata", str(meta), "--morphograph", str(pkl), "--out",
                                   str(tmp_path / "c4")])
    assert res.exit_code == 2 and "pickle" in res.output
    assert not (tmp_path / "c4" / "images.csv").exists()


def test_bad_metadata_is_explained(tmp_path):
    meta = tmp_path / "m.csv"
    meta.write_text("uid,Drawer,ImageNumber\nx,1,2\n")
    _, morph, _ = _fixture(tmp_path)
    with pytest.raises(ImportError_, match="semicolon"):
        import_original(meta, morph, tmp_path / "c5")


def test_cli_import(tmp_path):
    meta, morph, images = _fixture(tmp_path)
    res = CliRunner().invoke(cli, ["import", "--metadata", str(meta), "--morphograph", str(morph), "--images-root",
                                   str(images), "--out", str(tmp_path / "c6")])
    assert res.exit_code == 0, res.output
    assert "kept out of training" in res.output and "type PROPOSAL 1" in res.output


def test_import_keeps_morphograph_columns_and_reads_windows_1252(tmp_path):
    """Issue 11, defects 2 and 4: the morphograph's other columns survive; an Excel (cp1252) export is read."""
    meta, morph, images = _fixture(tmp_path)
    meta.write_bytes(meta.read_text(encoding="utf-8").encode("cp1252"))  # Dürer as Excel on Windows saves it
    with open(morph, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["uid", "img1", "img2", "type", "annotated", "annotator", "source"])
        w.writerow(["e1", U[0], U[4], "POSITIVE", "2019-03-01", "ada", "thesis"])
    out = tmp_path / "coll"
    r = CliRunner().invoke(cli, ["import", "--metadata", str(meta), "--morphograph", str(morph),
                                 "--images-root", str(images), "--out", str(out)])
    assert r.exit_code == 0, r.output
    assert "Windows-1252" in r.output and "metadata.csv" in r.output
    coll = load_collection(out)
    assert coll.record(U[2]).meta["author"] == "Dürer"
    (c,) = coll.connections
    assert c.source == "morphograph:e1" and c.extra == {"annotator": "ada", "morphograph_source": "thesis"}
