"""`data check` at archive scale (issue 14): quick and full modes, worker processes, the check cache."""

from __future__ import annotations

import csv
import io
import os
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner
from PIL import Image

import data.validate as validate_mod
from data.__main__ import cli
from data.check_cache import CHECK_CACHE_FILE
from data.thumbs import cache_root
from data.validate import validate
from tests.data.image_kinds import damaged_jpeg, huge_jpeg_header, textured, truncated_jpeg

UIDS = ["a", "b", "c", "d"]


def _add(root: Path, uid: str, rel: str) -> int:
    """Append a row to images.csv; returns its line number."""
    with open(root / "images.csv", "a", newline="") as fh:
        csv.writer(fh).writerow([uid, rel, ""])
    return len((root / "images.csv").read_text().splitlines())


def _bad_files(root: Path) -> dict[str, int]:
    """One file of each kind of damage, added to the collection: {uid: line}."""
    img = root / "img"
    truncated_jpeg(img / "cut.jpg")
    damaged_jpeg(img / "garbled.jpg")
    (img / "junk.jpg").write_bytes(b"<html>not an image</html>")
    (img / "empty.png").write_bytes(b"")
    buf = io.BytesIO()
    textured(64).save(buf, format="PNG")
    (img / "cutpng.png").write_bytes(buf.getvalue()[: len(buf.getvalue()) - 30])
    huge_jpeg_header(img / "huge.jpg", 30000, 20000)
    return {u: _add(root, u, f"img/{f}") for u, f in (("cut", "cut.jpg"), ("garbled", "garbled.jpg"),
                                                       ("junk", "junk.jpg"), ("empty", "empty.png"),
                                                       ("cutpng", "cutpng.png"), ("huge", "huge.jpg"))}


def _problems(rep) -> list[str]:
    return [str(p) for p in rep.problems]


def _count(monkeypatch, name: str) -> list[str]:
    """Count calls of validate's `decode_image` or `read_header` in this process (workers=1)."""
    seen: list[str] = []
    real = getattr(validate_mod, name)

    def counting(path, *a, **k):
        seen.append(Path(path).name)
        return real(path, *a, **k)

    monkeypatch.setattr(validate_mod, name, counting)
    return seen


def test_quick_reads_headers_and_finds_cut_and_foreign_files(collection_factory, monkeypatch):
    root = collection_factory(UIDS, [("a", "b")])
    lines = _bad_files(root)
    decodes = _count(monkeypatch, "decode_image")
    rep = validate(root, mode="quick")
    assert decodes == []  # nothing decoded
    errors = {p.uid: p for p in rep.errors}
    assert set(errors) == {"cut", "junk", "empty", "cutpng", "huge"}
    assert "no JPEG end-of-image marker" in errors["cut"].message
    assert "IEND" in errors["cutpng"].message
    assert "over the limit" in errors["huge"].message
    assert all(errors[u].line == lines[u] for u in errors)
    assert rep.warnings == []  # the garbled JPEG ends intact: only decoding shows its damage


def test_full_finds_what_quick_misses(collection_factory):
    root = collection_factory(UIDS, [("a", "b")])
    lines = _bad_files(root)
    rep = validate(root, mode="full")
    assert {p.uid for p in rep.errors} == {"cut", "junk", "empty", "cutpng", "huge"}
    (w,) = rep.warnings
    assert (w.uid, w.line) == ("garbled", lines["garbled"]) and "damaged data" in w.message


def test_unchanged_files_are_not_read_again_and_a_changed_one_is(collection_factory, monkeypatch):
    root = collection_factory(UIDS, [("a", "b")])
    _bad_files(root)
    first = validate(root, mode="full", cache=True)
    assert (cache_root(root) / CHECK_CACHE_FILE).exists()
    decodes = _count(monkeypatch, "decode_image")
    headers = _count(monkeypatch, "read_header")
    again = validate(root, mode="full", cache=True)
    assert decodes == [] and _problems(again) == _problems(first)
    quick = validate(root, mode="quick", cache=True)  # a full result answers a quick check
    assert headers == [] and _problems(quick) == _problems(first)
    src = root / "img" / "b.png"
    Image.new("RGB", (24, 16), (1, 2, 3)).save(src)
    st = src.stat()
    os.utime(src, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    (root / "img" / "junk.jpg").write_bytes(b"still junk, but changed")
    third = validate(root, mode="full", cache=True)
    assert sorted(decodes) == ["b.png", "junk.jpg"]
    assert _problems(third) == _problems(first)


def test_quick_then_full_decodes(collection_factory, monkeypatch):
    root = collection_factory(UIDS)
    validate(root, mode="quick", cache=True)
    decodes = _count(monkeypatch, "decode_image")
    validate(root, mode="full", cache=True)
    assert sorted(decodes) == ["a.png", "b.png", "c.png", "d.png"]


@pytest.mark.parametrize("mode", ["quick", "full"])
def test_same_problems_with_and_without_cache_and_any_worker_count(collection_factory, mode):
    """20 images and 6 bad ones: chunks go to 2 worker processes."""
    uids = [f"u{i:02d}" for i in range(20)]
    root = collection_factory(uids, [("u00", "u01")])
    _bad_files(root)
    reference = _problems(validate(root, mode=mode, workers=1))
    assert len(reference) >= 5
    assert _problems(validate(root, mode=mode, workers=2)) == reference
    assert _problems(validate(root, mode=mode, workers=2, cache=True)) == reference  # fills the cache
    assert _problems(validate(root, mode=mode, workers=1, cache=True)) == reference  # answered by it


def test_a_moved_collection_keeps_its_cache_and_names_the_new_paths(collection_factory, tmp_path, monkeypatch):
    root = collection_factory(UIDS)
    _bad_files(root)
    validate(root, cache=True)
    moved = tmp_path / "moved"
    shutil.copytree(root, moved)  # copy2 keeps mtimes, like a move
    decodes = _count(monkeypatch, "decode_image")
    rep = validate(moved, cache=True)
    assert decodes == []
    junk = next(p for p in rep.errors if p.uid == "junk")
    assert str(moved / "img" / "junk.jpg") in junk.message and str(root) not in junk.message


def test_a_damaged_cache_file_is_rebuilt_with_a_warning(collection_factory, monkeypatch):
    root = collection_factory(UIDS)
    _bad_files(root)
    reference = _problems(validate(root, cache=True))
    f = cache_root(root) / CHECK_CACHE_FILE
    lines = f.read_text().splitlines()
    f.write_text("\n".join(lines[:3] + ["{not json", lines[4][: len(lines[4]) // 2]] + lines[5:]) + "\n")
    warned: list[str] = []
    decodes = _count(monkeypatch, "decode_image")
    assert _problems(validate(root, cache=True, warn=warned.append)) == reference
    assert len(decodes) == 2 and "2 damaged lines" in warned[0]
    f.write_bytes(b"\x00\xff garbage")
    warned.clear()
    assert _problems(validate(root, cache=True, warn=warned.append)) == reference
    assert "rebuilt" in warned[0]
    assert f.read_text().startswith('{"format"')


def test_cli_modes_progress_and_no_cache(collection_factory):
    root = collection_factory(UIDS, [("a", "b")])
    lines = _bad_files(root)
    runner = CliRunner()
    res = runner.invoke(cli, ["check", str(root), "--quick", "--workers", "1", "--no-cache"])
    assert res.exit_code == 1
    assert f"ERROR images.csv:{lines['cut']}: uid cut: unreadable image" in res.output
    assert "checking images (quick): 10/10 images (" in res.stderr and "images/s)" in res.stderr
    assert not cache_root(root).exists()  # --no-cache writes nothing
    res = runner.invoke(cli, ["check", str(root), "--workers", "2", "--no-progress"])
    assert res.exit_code == 1 and res.stderr == ""
    assert f"WARNING images.csv:{lines['garbled']}: uid garbled: damaged data" in res.output
    assert (cache_root(root) / CHECK_CACHE_FILE).exists()
    res = runner.invoke(cli, ["check", str(root), "--quick", "--no-decode"])
    assert res.exit_code == 2 and "exclude each other" in res.output


def test_a_read_only_collection_is_checked_with_one_warning(collection_factory):
    root = collection_factory(UIDS)
    (root / ".cache").write_text("a file where the cache folder belongs")  # as root, chmod would not stop us
    res = CliRunner().invoke(cli, ["check", str(root), "--workers", "1"])
    assert res.exit_code == 0, res.output
    assert res.stderr.count("warning:") == 1 and "cannot write the check cache" in res.stderr
    assert "Traceback" not in res.output


def test_problems_of_images_csv_come_in_its_line_order(tmp_path):
    """Trial of issue 14: a missing file (found without decoding) was listed before the decoding errors of
    earlier lines."""
    from PIL import Image

    from data.validate import validate

    root = tmp_path / "c"
    (root / "img").mkdir(parents=True)
    rows = ["uid,path"]
    for i in range(6):
        Image.new("RGB", (8, 8), (i * 40, 0, 0)).save(root / "img" / f"u{i}.png")
        rows.append(f"u{i},img/u{i}.png")
    (root / "img" / "u1.png").write_bytes(b"garbage")
    (root / "img" / "u4.png").unlink()
    (root / "images.csv").write_text("\n".join(rows) + "\n")
    lines = [p.line for p in validate(root).problems if p.file == "images.csv"]
    assert lines == [3, 6]
