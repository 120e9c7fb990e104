from __future__ import annotations

import csv

import pytest
from click.testing import CliRunner

from data.__main__ import cli
from data.validate import validate

UIDS = ["a", "b", "c", "d"]


def _only_error(rep):
    assert len(rep.errors) == 1, [str(p) for p in rep.problems]
    return rep.errors[0]


def test_clean_collection_has_no_problems(collection_factory):
    root = collection_factory(UIDS, [("a", "b", "POSITIVE"), ("b", "c", ""), ("c", "d", "NEGATIVE")])
    rep = validate(root)
    assert rep.problems == []
    assert rep.summary["images"] == 4
    assert rep.summary["connections"] == {"NEGATIVE": 1, "POSITIVE": 2}
    assert rep.summary["groups"] == 1
    assert rep.summary["group_sizes"] == {3: 1}
    assert sum(s["images"] for s in rep.summary["splits"].values()) == 3


@pytest.mark.parametrize(
    "connections,line,uid,words",
    [
        ([("a", "b"), ("a", "zz", "POSITIVE")], 3, "zz", "unknown uid"),
        ([("a", "b"), ("c", "c", "POSITIVE")], 3, "c", "self connection"),
        ([("a", "b", "POSITIVE"), ("b", "a", "NEGATIVE")], 3, "b", "contradictory"),
        ([("a", "b", "POSITIVE"), ("c", "d", "SIMILARISH")], 3, "c", "unknown type"),
    ],
)
def test_connection_errors_name_file_line_uid(collection_factory, connections, line, uid, words):
    rep = validate(collection_factory(UIDS, connections))
    err = _only_error(rep)
    assert (err.file, err.line, err.uid) == ("connections.csv", line, uid)
    assert words in err.message
    assert not rep.ok


def test_duplicate_pair_is_a_warning(collection_factory):
    rep = validate(collection_factory(UIDS, [("a", "b"), ("c", "d"), ("b", "a", "POSITIVE")]))
    assert rep.errors == []
    (w,) = [p for p in rep.warnings if "duplicate pair" in p.message]
    assert (w.file, w.line, w.uid) == ("connections.csv", 4, "b")


def test_a_pair_with_two_types_says_which_row_adds_nothing(collection_factory):
    """DUPLICATE implies POSITIVE (data.collection.IMPLIED_BY, what `cluster accept` uses not to write such a
    row): the warning says so and which row to remove; two types neither of which implies the other: no advice."""
    rep = validate(collection_factory(UIDS, [("a", "b", "DUPLICATE"), ("b", "a", "POSITIVE"), ("c", "d", "SIMILAR"),
                                             ("d", "c", "NEGATIVE")]))  # fmt: skip
    assert rep.errors == []
    (implied,) = [p for p in rep.warnings if "(b, a)" in p.message]
    assert implied.line == 3 and implied.message.endswith(
        "is POSITIVE here and DUPLICATE on line 2: DUPLICATE implies POSITIVE, so the POSITIVE row adds nothing; "
        "remove it.")
    (other,) = [p for p in rep.warnings if "(d, c)" in p.message]
    assert other.message.endswith("is NEGATIVE here and SIMILAR on line 4.")


def test_missing_image_file(collection_factory):
    root = collection_factory(UIDS, [("a", "b")])
    (root / "img" / "c.png").unlink()
    err = _only_error(validate(root))
    assert (err.file, err.line, err.uid) == ("images.csv", 4, "c")
    assert "missing" in err.message


def test_unreadable_image(collection_factory):
    root = collection_factory(UIDS, [("a", "b")])
    (root / "img" / "d.png").write_bytes(b"not an image at all")
    err = _only_error(validate(root))
    assert (err.file, err.line, err.uid) == ("images.csv", 5, "d")
    assert "unreadable" in err.message
    # existence-only mode does not decode
    assert validate(root, decode_images=False).ok


def test_truncated_image_is_unreadable(collection_factory, tmp_path):
    root = collection_factory(UIDS, [("a", "b")])
    from PIL import Image

    p = root / "img" / "a.jpg"
    Image.new("RGB", (64, 64), (10, 20, 30)).save(p, quality=90)
    data = p.read_bytes()
    p.write_bytes(data[: len(data) // 2])
    with open(root / "images.csv", "a", newline="") as fh:
        csv.writer(fh).writerow(["e", "img/a.jpg", "trunc"])
    err = _only_error(validate(root))
    assert (err.line, err.uid) == (6, "e")


def test_duplicate_uid(collection_factory):
    root = collection_factory(UIDS, [("a", "b")])
    with open(root / "images.csv", "a", newline="") as fh:
        csv.writer(fh).writerow(["b", "img/b.png", "again"])
    err = _only_error(validate(root))
    assert (err.file, err.line, err.uid) == ("images.csv", 6, "b")
    assert "duplicate uid" in err.message and "line 3" in err.message


def test_cli_exit_codes_and_output(collection_factory):
    runner = CliRunner()
    good = collection_factory(UIDS, [("a", "b")])
    res = runner.invoke(cli, ["check", str(good)])
    assert res.exit_code == 0, res.output
    assert "pattern groups: 1" in res.output
    bad = collection_factory(UIDS, [("a", "q")])
    res = runner.invoke(cli, ["check", str(bad)])
    assert res.exit_code == 1
    assert "connections.csv:2: uid q: unknown uid" in res.output
    res = runner.invoke(cli, ["check", str(bad.parent / "nope")])
    assert res.exit_code == 2 and "not a folder" in res.output


def test_summary_counts_only_the_known_connection_types(collection_factory):
    """Issue 11 trial: `data check` summed an unknown type (MAYBE) into the summary as if it were a type."""
    root = collection_factory(UIDS, [("a", "b", "POSITIVE"), ("c", "d", "MAYBE")])
    res = CliRunner().invoke(cli, ["check", str(root), "--no-decode"])
    assert res.exit_code == 1
    assert "connections.csv:3: uid c: unknown type 'MAYBE'" in res.output  # the row has its error line
    summary = next(line for line in res.output.splitlines() if line.startswith("connections:"))
    assert summary == "connections: POSITIVE 1"


def test_a_path_from_the_home_folder_is_found(collection_factory, tmp_path, monkeypatch):
    """Issue 11 trial: `~/scans/a.png` in images.csv was looked for in a folder named `~`."""
    root = collection_factory(UIDS, [("a", "b")])
    home = tmp_path / "home"
    (home / "scans").mkdir(parents=True)
    (root / "img" / "a.png").rename(home / "scans" / "a.png")
    images = root / "images.csv"
    images.write_text(images.read_text().replace("img/a.png", "~/scans/a.png"))
    monkeypatch.setenv("HOME", str(home))
    res = CliRunner().invoke(cli, ["check", str(root)])
    assert res.exit_code == 0, res.output
    assert "problems: 0 errors" in res.output


def test_a_split_note_names_its_line_once(collection_factory):
    """A uid given two splits in connections.csv: `data check` says `WARNING connections.csv:3: uid b: ...` (was
    `WARNING connections.csv: connections.csv:3: uid ...`, with no line in --json)."""
    root = collection_factory(UIDS, [("a", "b", "POSITIVE", "test"), ("b", "c", "POSITIVE", "train")])
    res = CliRunner().invoke(cli, ["check", str(root), "--no-progress"])
    assert "WARNING connections.csv:3: uid b: is given split 'train' here" in res.output, res.output
    assert "connections.csv: connections.csv" not in res.output
    (w,) = [p for p in validate(root).warnings if "is given split" in p.message]
    assert (w.file, w.line, w.uid) == ("connections.csv", 3, "b")
