"""Reading and writing a collection's CSVs the way museums save them (issue 11, defects 2, 4, 6, 10).

Every test drives `python -m data check` (or the reader every command shares) on files written the way
Excel writes them: Windows-1252, UTF-16 with a BOM and TABs, semicolons, extra columns.
"""

from __future__ import annotations

import codecs
import dataclasses

import pytest
from click.testing import CliRunner

from data.__main__ import cli
from data.collection import (
    Connection,
    ImageRecord,
    fetched_path,
    load_collection,
    read_connections,
    uid_problem,
    write_connections,
)
from tests.data.conftest import write_image

ROWS = [("é1", "Gravure à l'eau-forte"), ("u2", "Œuvre – “copie”"), ("u3", "plain")]


def _collection(root, *, encoding: str, delimiter: str = ",", bom: bytes = b"", conn_rows=None):
    """images.csv and connections.csv encoded as given (Excel's choices), with images on disk."""
    root.mkdir(parents=True, exist_ok=True)
    lines = [delimiter.join(["uid", "path", "title"])]
    for uid, title in ROWS:
        write_image(root / "img" / f"{ROWS.index((uid, title))}.png")
        lines.append(delimiter.join([uid, f"img/{ROWS.index((uid, title))}.png", title]))
    (root / "images.csv").write_bytes(bom + ("\r\n".join(lines) + "\r\n").encode(encoding))
    conn = conn_rows or [["a", "b", "type", "comment"], ["é1", "u2", "POSITIVE", "vu par René"]]
    text = "\r\n".join(delimiter.join(r) for r in conn) + "\r\n"
    (root / "connections.csv").write_bytes(bom + text.encode(encoding))
    return root


def _check(root, *extra):
    r = CliRunner().invoke(cli, ["check", str(root), *extra])
    assert not isinstance(r.exception, Exception) or isinstance(r.exception, SystemExit), r.exc_info
    return r


def test_check_reads_excel_windows_1252_with_a_named_warning(tmp_path):
    root = _collection(tmp_path / "c", encoding="cp1252")
    r = _check(root)
    assert r.exit_code == 0, r.output
    assert "Windows-1252" in r.output and "save it as UTF-8" in r.output
    assert "images.csv" in r.output and "connections.csv" in r.output
    coll = load_collection(root)
    assert coll.uids == ["é1", "u2", "u3"]
    assert coll.record("u2").meta["title"] == "Œuvre – “copie”"
    assert coll.connections[0].extra == {"comment": "vu par René"}


@pytest.mark.parametrize(
    ("encoding", "bom", "delimiter"),
    [
        ("utf-16-le", codecs.BOM_UTF16_LE, "\t"),  # Excel's "Unicode text"
        ("utf-16-be", codecs.BOM_UTF16_BE, "\t"),
        ("utf-8", codecs.BOM_UTF8, ";"),  # European Excel's "CSV UTF-8"
        ("utf-8", b"", ";"),
        ("utf-8", b"", "\t"),
    ],
)
def test_check_reads_utf16_bom_and_sniffs_tab_and_semicolon(tmp_path, encoding, bom, delimiter):
    root = _collection(tmp_path / "c", encoding=encoding, bom=bom, delimiter=delimiter)
    r = _check(root)
    assert r.exit_code == 0, r.output
    assert "WARNING" not in r.output and "warning:" not in r.output
    coll = load_collection(root)
    assert coll.uids == ["é1", "u2", "u3"] and coll.record("é1").meta["title"] == "Gravure à l'eau-forte"
    assert [(c.a, c.b, c.type, c.extra) for c in coll.connections] == [("é1", "u2", "POSITIVE", {"comment": "vu par René"})]
    assert coll.connections_format.delimiter == delimiter


def test_bytes_that_are_no_known_text_stop_with_file_line_and_byte(tmp_path):
    root = _collection(tmp_path / "c", encoding="utf-8")
    data = (root / "connections.csv").read_bytes().replace("René".encode(), b"Ren\x81")  # 0x81: not in cp1252
    (root / "connections.csv").write_bytes(data)
    r = _check(root)
    assert r.exit_code == 2
    out = r.output
    assert "connections.csv:2:" in out and "byte" in out and "0x81" in out and "UTF-8" in out
    assert "Traceback" not in out


def test_utf16_without_bom_is_named_not_a_traceback(tmp_path):
    root = _collection(tmp_path / "c", encoding="utf-16-le", delimiter="\t")
    r = _check(root)
    assert r.exit_code == 2 and "images.csv" in r.output and "UTF-16" in r.output


def test_check_fails_on_an_images_csv_with_a_header_only(tmp_path):
    root = tmp_path / "c"
    root.mkdir()
    (root / "images.csv").write_text("uid,path\n")
    r = _check(root)
    assert r.exit_code == 1 and "ERROR images.csv" in r.output and "no images" in r.output


def test_uid_rule():
    for ok in ["a,b", 'q"x', "sp ace", "sl/ash", "é1", "?x", "x" * 256, "日本", "...", ".a"]:
        assert uid_problem(ok) is None, ok
    for bad in ["", " lead", "trail ", "tab\tin", "new\nline", "bell\x07", "x" * 257, "nbsp\xa0", ".", ".."]:
        assert uid_problem(bad), bad


def test_check_names_the_line_of_a_bad_uid(tmp_path):
    root = tmp_path / "c"
    write_image(root / "a.png")
    (root / "images.csv").write_text('uid,path\nok1,a.png\n"two\nlines",a.png\n"x\x07y",a.png\n' + "z" * 300 + ",a.png\n")
    r = _check(root, "--no-decode")
    assert r.exit_code == 1, r.output
    assert "ERROR images.csv:3:" in r.output and "control character" in r.output  # a newline
    assert "ERROR images.csv:5:" in r.output and "control character" in r.output  # a bell
    assert "ERROR images.csv:6:" in r.output and "longer than 256" in r.output
    assert "images.csv:2:" not in r.output


def test_extra_fields_beyond_the_header_are_an_error_unless_blank(tmp_path):
    root = tmp_path / "c"
    write_image(root / "a.png")
    (root / "images.csv").write_text("uid,path\nu1,a.png,,\n")  # Excel's trailing empty cells
    assert _check(root, "--no-decode").exit_code == 0
    (root / "images.csv").write_text("uid,path\nu1,a.png,oops\n")
    r = _check(root, "--no-decode")
    assert r.exit_code == 2 and "images.csv:2:" in r.output and "quote" in r.output


def test_fetched_paths_of_different_uids_never_collide():
    uids = ["a/b", "a_b", "a b", "a?b", "é", "e", "x" * 256, "x" * 255 + "é"]
    paths = [fetched_path(u) for u in uids]
    assert len(set(paths)) == len(paths)
    assert fetched_path("plain-uid_1.v2") == "images/fetched/plain-uid_1.v2.jpg"  # plain uids keep their name
    assert all(len(p.rsplit("/", 1)[1].encode()) <= 255 and "/" not in p[len("images/fetched/"):] for p in paths)


def test_writer_keeps_the_users_columns_and_their_order(tmp_path):
    src = tmp_path / "connections.csv"
    src.write_text('reviewer,a,comment,b,type,,comment\nada,u1,"a, b",u2,positive,,second\nbob,u2, spaced ,u3,,,\n')
    coll_rows = read_connections(src)
    fmt = _format(src)
    out = tmp_path / "out.csv"
    write_connections(out, [*coll_rows, Connection("u3", "u4", "NEGATIVE", source="annotation:1")], fmt=fmt)
    # every cell of an existing row as it was: `positive` stays lower case, an empty type stays empty (issue 11
    # trial: accept used to write the curator's empty type cells as POSITIVE)
    assert out.read_text().splitlines() == [
        "reviewer,a,comment,b,type,,comment,source",
        'ada,u1,"a, b",u2,positive,,second,',
        "bob,u2, spaced ,u3,,,,",
        ",u3,,u4,NEGATIVE,,,annotation:1",
    ]
    # a row whose value changed is written with its new value, not the old cell
    changed = dataclasses.replace(coll_rows[1], type="NEGATIVE")
    write_connections(out, [coll_rows[0], changed], fmt=fmt)
    assert out.read_text().splitlines()[2] == "bob,u2, spaced ,u3,NEGATIVE,,"


def _format(path):
    from data.collection import read_csv_format

    return read_csv_format(path)


def test_write_images_keeps_the_header(tmp_path):
    from data.collection import read_csv_format, read_images, write_images

    src = tmp_path / "images.csv"
    src.write_text("title,uid,url,path,note\nT,u1,,a.png,n1\n")
    recs = read_images(src)
    out = tmp_path / "out.csv"
    write_images(out, [*recs, ImageRecord("u2", "b.png", None, {}, 0)], fmt=read_csv_format(src))
    assert out.read_text().splitlines() == ["title,uid,url,path,note", "T,u1,,a.png,n1", ",u2,,b.png,"]


def test_lines_split_like_stringio_one_at_a_time():
    """The reader's line splitter is io.StringIO(newline="")'s (\\r\\n, \\r of old Mac Excel, \\n; not the
    other Unicode line breaks), so every CSV parses and counts lines as before, without StringIO's copy."""
    import csv
    import io
    import random

    from data.collection import _lines

    rng = random.Random(0)
    alphabet = ["a", ",", '"', "\r", "\n", "\r\n", " ", "é", "\u2028", "\x0c"]
    for _ in range(2000):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randrange(0, 30)))
        assert list(_lines(text)) == list(io.StringIO(text, newline="")), repr(text)
        try:
            want = list(csv.reader(io.StringIO(text, newline="")))
        except csv.Error:
            continue
        assert list(csv.reader(_lines(text))) == want, repr(text)


def test_a_collection_of_old_mac_excel_lines_reads(tmp_path):
    (tmp_path / "images.csv").write_bytes(b"uid,path,title\rm1,a.png,\"two\rlines\"\rm2,b.png,x\r")
    (tmp_path / "connections.csv").write_bytes(b"a;b;type\rm1;m2;POSITIVE\r")
    coll = load_collection(tmp_path, quiet=True)
    assert [(r.uid, r.meta["title"], r.line) for r in coll.images] == [("m1", "two\rlines", 2), ("m2", "x", 4)]
    assert [(c.a, c.b, c.type, c.line) for c in coll.connections] == [("m1", "m2", "POSITIVE", 2)]


@pytest.mark.parametrize("newline", ["\r", "\r\n", "\n"])
@pytest.mark.parametrize(("byte", "exit_code"), [(b"\xe9", 0), (b"\x81", 2)])  # cp1252 "é"; in no known encoding
def test_an_encoding_message_names_the_line_whatever_the_line_ends(tmp_path, newline, byte, exit_code):
    """Old Mac Excel ends lines with CR alone: the Windows-1252 warning and the unknown-byte error name the line
    and the byte in it as an editor shows them (were `images.csv:1` and the byte's offset in the whole file)."""
    root = tmp_path / "c"
    rows = [b"uid,path,title", b"u1,img/1.png,a", b"u2,img/2.png,b", b"u3,img/3.png,plain" + byte]
    for i in (1, 2, 3):
        write_image(root / "img" / f"{i}.png")
    (root / "images.csv").write_bytes(newline.encode().join(rows) + newline.encode())
    r = _check(root, "--no-decode")
    assert r.exit_code == exit_code, r.output
    column = len("u3,img/3.png,plain") + 1
    assert "images.csv:4: " in r.output and f"0x{byte[0]:02x}" in r.output, r.output
    assert f"byte {column} of the line" in r.output, r.output


@pytest.mark.parametrize("newline", ["\n", "\r\n", "\r"])
def test_a_quote_never_closed_stops_with_its_line_not_rows_lost(tmp_path, newline):
    """A cell opened with a quote and never closed made csv read every later row into that cell, silently: the
    collection lost its rows (`data check` then only said that connections name unknown uids). Now: exit 2 and
    the line where the quote opens. A quoted cell with line breaks that is closed still reads."""
    root = tmp_path / "c"
    for i in (1, 2, 3):
        write_image(root / "img" / f"{i}.png")
    rows = ["uid,path,title", 'u1,img/1.png,"Madonna, col Bambino', "u2,img/2.png,b", "u3,img/3.png,c"]
    (root / "images.csv").write_text(newline.join(rows) + newline, encoding="utf-8")
    (root / "connections.csv").write_text("a,b,type\nu1,u2,POSITIVE\n")
    r = _check(root, "--no-decode")
    assert r.exit_code == 2, r.output
    assert "images.csv:2: a quoted cell" in r.output and "never closed" in r.output, r.output
    rows[1] += '"'
    rows[3] = 'u3,img/3.png,"two' + newline + 'lines"'
    (root / "images.csv").write_text(newline.join(rows) + newline, encoding="utf-8")
    r = _check(root, "--no-decode")
    assert r.exit_code == 0, r.output
    assert load_collection(root).record("u3").meta["title"] == "two" + newline + "lines"


def test_the_separator_is_sniffed_from_the_header_line_of_a_cr_only_file(tmp_path):
    """Old Mac Excel, European locale: CR line ends and semicolons. The separator was counted over the whole
    file (its "first line" cut at \\n only), so titles with commas outvoted the header's semicolons and every
    command stopped with `found ['uid;path;title'] (separated by ',')`."""
    for i in (1, 2):
        write_image(tmp_path / "img" / f"{i}.png")
    (tmp_path / "images.csv").write_bytes(b"uid;path;title\ru1;img/1.png;Madonna, col Bambino, San Giovannino, "
                                          b"angeli, santi\ru2;img/2.png;b, c, d\r")
    r = _check(tmp_path, "--no-decode")
    assert r.exit_code == 0, r.output
    assert load_collection(tmp_path).record("u1").meta["title"] == "Madonna, col Bambino, San Giovannino, angeli, santi"


def test_a_quote_never_closed_in_a_big_file_names_the_line_it_opens_on(tmp_path):
    """In a big images.csv the unclosed cell passes csv's field limit (131,072 characters) long before the end:
    `data check` said `images.csv:2900: not valid CSV (field larger than field limit (131072))`, a line far from
    the quote, and no hint of it. Now: the line where that row starts, and the quote."""
    rows = ["uid,path,title", 'm0,img/0.png,"Madonna'] + [f"x{i:05d},img/x{i}.png,titolo lungo numero {i}"
                                                            for i in range(6000)]  # fmt: skip
    (tmp_path / "images.csv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    r = _check(tmp_path, "--no-decode")
    assert r.exit_code == 2, r.output
    assert "images.csv:2: " in r.output and "never closed" in r.output, r.output
