"""The thumbnail cache of a collection (data/thumbs.py) and `python -m data thumbs`."""

from __future__ import annotations

import csv
import os
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

import data.thumbs as thumbs_mod
from data.__main__ import cli
from data.atomic import writer_tag
from data.image import ImageReadError, jpeg_thumbnail
from data.thumbs import ThumbCache, ThumbCacheError, ensure, thumb_name
from tests.data.image_kinds import oriented_jpeg, truncated_jpeg

UIDS = ["a", "b", "c", "d"]


def _coll(root: Path, n: int = 4, size=(40, 30)) -> Path:
    """A collection of JPEGs with distinct content, uids u00.."""
    rng = np.random.default_rng(1)
    (root / "img").mkdir(parents=True)
    rows = []
    for i in range(n):
        uid = f"u{i:02d}"
        Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(root / "img" / f"{uid}.jpg")
        rows.append([uid, f"img/{uid}.jpg"])
    _write_rows(root, rows)
    return root


def _write_rows(root: Path, rows: list[list[str]]) -> None:
    with open(root / "images.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["uid", "path"])
        w.writerows(rows)


def _add(root: Path, uid: str, rel: str) -> None:
    with open(root / "images.csv", "a", newline="") as fh:
        csv.writer(fh).writerow([uid, rel])


def _count_decodes(monkeypatch) -> list[str]:
    """Record every thumbnail decode made in this process (workers=1 runs in process)."""
    seen: list[str] = []
    real = thumbs_mod.jpeg_thumbnail

    def counting(src, size, **kw):
        seen.append(Path(src).name)
        return real(src, size, **kw)

    monkeypatch.setattr(thumbs_mod, "jpeg_thumbnail", counting)
    return seen


def test_made_where_the_map_expects_them_with_the_source_mtime(tmp_path):
    root = _coll(tmp_path / "c")
    rep = ensure(root, workers=1, progress=False)
    assert (rep.made, rep.up_to_date, rep.unreadable) == (4, 0, [])
    cache = ThumbCache.for_collection(root)
    assert cache.folder == root / ".cache" / "thumbs-256"
    for i in range(4):
        uid = f"u{i:02d}"
        assert thumb_name(uid) == uid + ".jpg"
        p = cache.folder / thumb_name(uid)
        assert cache.path(uid) == p
        assert p.read_bytes() == jpeg_thumbnail(root / "img" / f"{uid}.jpg", 256).jpeg
        assert p.stat().st_mtime_ns == (root / "img" / f"{uid}.jpg").stat().st_mtime_ns
        assert cache.read(uid) == p.read_bytes()
    assert [x.name for x in cache.folder.iterdir() if x.name.startswith(".")] == []  # no temp files left


def test_thumb_name_moved_from_the_map_keeps_its_rule():
    from cluster.mapping import thumb_name as map_thumb_name
    from data.collection import safe_file_stem

    for uid in ("plain-1_a", "a/b", "é", "x" * 200, "a.b"):
        assert map_thumb_name(uid) == thumb_name(uid) == safe_file_stem(uid, keep="-_") + ".jpg"


def test_up_to_date_thumbnails_are_not_decoded_again(tmp_path, monkeypatch):
    root = _coll(tmp_path / "c")
    ensure(root, workers=1, progress=False)
    seen = _count_decodes(monkeypatch)
    rep = ensure(root, workers=1, progress=False)
    assert (rep.made, rep.up_to_date) == (0, 4)
    assert seen == []


def test_a_changed_source_is_remade(tmp_path, monkeypatch):
    root = _coll(tmp_path / "c")
    ensure(root, workers=1, progress=False)
    cache = ThumbCache.for_collection(root)
    before = cache.path("u01").read_bytes()
    src = root / "img" / "u01.jpg"
    Image.new("RGB", (40, 30), (0, 200, 0)).save(src)
    st = src.stat()
    os.utime(src, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    assert cache.read("u01") is None  # stale: never served
    seen = _count_decodes(monkeypatch)
    rep = ensure(root, workers=1, progress=False)
    assert (rep.made, rep.up_to_date) == (1, 3)
    assert seen == ["u01.jpg"]
    assert cache.read("u01") == jpeg_thumbnail(src, 256).jpeg != before


def test_unreadable_images_are_reported_get_no_thumbnail_and_are_not_decoded_again(tmp_path, monkeypatch):
    root = _coll(tmp_path / "c")
    truncated_jpeg(root / "img" / "cut.jpg")
    (root / "img" / "junk.jpg").write_bytes(b"not an image")
    _add(root, "cut", "img/cut.jpg")
    _add(root, "junk", "img/junk.jpg")
    _add(root, "gone", "img/gone.jpg")
    rep = ensure(root, workers=1, progress=False)
    assert rep.made == 4
    assert [u for u, _ in rep.unreadable] == ["cut", "junk", "gone"]
    assert "missing" in dict(rep.unreadable)["gone"]
    cache = ThumbCache.for_collection(root)
    for uid in ("cut", "junk", "gone"):
        assert not cache.path(uid).exists()
    seen = _count_decodes(monkeypatch)
    again = ensure(root, workers=1, progress=False)
    assert again.unreadable == rep.unreadable and seen == []  # reported again, not decoded again
    # repaired: made; broken again: its old thumbnail goes (never a stale or blank picture)
    Image.new("RGB", (20, 20), (9, 9, 9)).save(root / "img" / "junk.jpg", format="JPEG")
    third = ensure(root, workers=1, progress=False)
    assert third.made == 1 and [u for u, _ in third.unreadable] == ["cut", "gone"]
    assert cache.read("junk") is not None
    (root / "img" / "junk.jpg").write_bytes(b"broken again")
    st = (root / "img" / "junk.jpg").stat()
    os.utime(root / "img" / "junk.jpg", ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    fourth = ensure(root, workers=1, progress=False)
    assert "junk" in dict(fourth.unreadable) and not cache.path("junk").exists()
    with pytest.raises(ImageReadError):
        cache.get("junk")
    assert "not a readable image" in cache.errors["junk"]


def test_parallel_workers_give_what_a_serial_run_gives(tmp_path):
    """20 images: the worker pool really runs (chunks of 3)."""
    a, b = _coll(tmp_path / "a", n=20), _coll(tmp_path / "b", n=20)
    (a / "img" / "u05.jpg").write_bytes(b"junk")
    (b / "img" / "u05.jpg").write_bytes(b"junk")
    ra = ensure(a, workers=1, progress=False)
    rb = ensure(b, workers=2, progress=False)
    assert (ra.made, ra.up_to_date) == (rb.made, rb.up_to_date) == (19, 0)
    assert [u for u, _ in ra.unreadable] == [u for u, _ in rb.unreadable] == ["u05"]
    fa, fb = ThumbCache.for_collection(a).folder, ThumbCache.for_collection(b).folder
    names = sorted(p.name for p in fa.iterdir())
    assert names == sorted(p.name for p in fb.iterdir())
    for n in names:
        if n.endswith(".jpg"):
            assert (fa / n).read_bytes() == (fb / n).read_bytes()


def test_orientation_is_applied_in_draft_mode(tmp_path, monkeypatch):
    """A big EXIF-rotated JPEG: decoded at a reduced scale (draft) and still the right way up."""
    from PIL import JpegImagePlugin

    decoded_at = []
    real_draft = JpegImagePlugin.JpegImageFile.draft

    def spy(self, mode, size):
        out = real_draft(self, mode, size)
        decoded_at.append(self.size)
        return out

    monkeypatch.setattr(JpegImagePlugin.JpegImageFile, "draft", spy)
    root = tmp_path / "c"
    (root / "img").mkdir(parents=True)
    oriented_jpeg(root / "img" / "small.jpg", 6)
    big = Image.new("RGB", (2400, 1600), (128, 128, 128))
    big.paste((220, 30, 30), (0, 0, 800, 800))
    exif = Image.Exif()
    exif[0x0112] = 6
    big.save(root / "img" / "big.jpg", quality=90, exif=exif)
    _write_rows(root, [["small", "img/small.jpg"], ["big", "img/big.jpg"]])
    ensure(root, workers=1, progress=False)
    cache = ThumbCache.for_collection(root)
    with Image.open(cache.path("small")) as t:
        assert t.height > t.width
    with Image.open(cache.path("big")) as t:
        assert (t.width, t.height) == (171, 256)
        # orientation 6: the stored top-left corner is shown at the top right
        assert t.convert("RGB").getpixel((t.width - 10, 10))[0] > 180
    assert (300, 200) in decoded_at  # 2400 x 1600 decoded at 1/8 scale: 1/64 of the pixels


def test_a_read_only_collection_gets_a_clear_error_and_thumb_cache_works(tmp_path):
    root = _coll(tmp_path / "c")
    (root / ".cache").write_text("a file where the cache folder belongs")  # as root, chmod would not stop us
    with pytest.raises(ThumbCacheError, match=r"thumbs-256.*--thumb-cache"):
        ensure(root, workers=1, progress=False)
    res = CliRunner().invoke(cli, ["thumbs", str(root), "--workers", "1"])
    assert res.exit_code == 2
    assert "thumbs-256" in res.output and "--thumb-cache" in res.output and "Traceback" not in res.output
    other = tmp_path / "elsewhere"
    res = CliRunner().invoke(cli, ["thumbs", str(root), "--workers", "1", "--thumb-cache", str(other)])
    assert res.exit_code == 0, res.output
    assert (other / "thumbs-256" / "u00.jpg").exists()
    assert ThumbCache.for_collection(root, root=other).read("u00") is not None


def test_incomplete_thumbnail_is_not_served_and_is_remade(tmp_path):
    root = _coll(tmp_path / "c")
    cache = ThumbCache.for_collection(root)
    good = cache.get("u00")
    p = cache.path("u00")
    st = p.stat()
    p.write_bytes(good[: len(good) // 2])  # what a power cut can leave: same name, same mtime
    os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert cache.read("u00") is None
    assert cache.get("u00") == good


def test_temp_files_of_killed_writers_are_removed(tmp_path):
    root = _coll(tmp_path / "c")
    cache = ThumbCache.for_collection(root)
    cache.folder.mkdir(parents=True)
    dead = cache.folder / f".{writer_tag(2**22 + 12345)}.1.u00.jpg.tmp"  # no such process
    mine = cache.folder / f".{writer_tag()}.1.u01.jpg.tmp"
    dead.write_bytes(b"half")
    mine.write_bytes(b"mine")
    ensure(root, workers=1, progress=False)
    assert not dead.exists() and mine.exists()


def test_cli_lists_unreadable_by_uid_and_file_and_exits_1(tmp_path):
    root = _coll(tmp_path / "c")
    (root / "img" / "junk.jpg").write_bytes(b"junk")
    _add(root, "junk", "img/junk.jpg")
    res = CliRunner().invoke(cli, ["thumbs", str(root), "--workers", "1"])
    assert res.exit_code == 1, res.output
    line = next(x for x in res.output.splitlines() if x.startswith("UNREADABLE uid junk: "))
    assert line.count(str(root / "img" / "junk.jpg")) == 1  # the file, named once (trial of issue 14)
    assert "not an image format" in line and "BufferedReader" not in line
    assert "made 4, up to date 0, unreadable 1" in res.output
    assert "thumbnails 256 px: 5/5 images" in res.stderr
    (root / "img" / "junk.jpg").unlink()
    _write_rows(root, [[f"u{i:02d}", f"img/u{i:02d}.jpg"] for i in range(4)])
    res = CliRunner().invoke(cli, ["thumbs", str(root), "--no-progress"])
    assert res.exit_code == 0, res.output
    assert "made 0, up to date 4, unreadable 0" in res.output and res.stderr == ""


def test_ctrl_c_stops_the_workers_cleanly_and_a_rerun_finishes(tmp_path):
    """SIGINT to the process group (what Ctrl-C at a terminal sends): exit 130, one line, no traceback from the
    main process or a worker, no temp file; the thumbnails made so far are kept and a rerun makes the rest."""
    import signal
    import subprocess
    import sys
    import time

    root = _coll(tmp_path / "c", n=120, size=(900, 700))
    folder = ThumbCache.for_collection(root).folder
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[2]))
    proc = subprocess.Popen([sys.executable, "-m", "data", "thumbs", str(root), "--workers", "2"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    deadline = time.monotonic() + 60
    while not (folder.exists() and any(p.suffix == ".jpg" for p in folder.iterdir())):
        assert proc.poll() is None and time.monotonic() < deadline, "no thumbnail appeared"
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, (out, err)
    assert "Traceback" not in err and "KeyboardInterrupt" not in err
    assert "interrupted: the thumbnails made so far are kept" in err
    assert not [p.name for p in folder.iterdir() if p.name.startswith(".")]
    kept = len(list(folder.glob("*.jpg")))
    assert 0 < kept < 120
    rep = ensure(root, workers=1, progress=False)
    assert (rep.made, rep.up_to_date) == (120 - kept, kept)


def test_a_failing_write_is_one_clear_error(tmp_path, monkeypatch):
    """A full disk while writing a thumbnail: exit 2 naming the folder, no traceback (also from a worker)."""
    root = _coll(tmp_path / "c")

    def full(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(thumbs_mod, "write_thumbnail", full)
    res = CliRunner().invoke(cli, ["thumbs", str(root), "--workers", "1"])
    assert res.exit_code == 2, res.output
    assert "thumbs-256: cannot write the thumbnail cache there (No space left on device)" in res.output
    assert res.exception is None or isinstance(res.exception, SystemExit)
