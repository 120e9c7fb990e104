from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from click.testing import CliRunner

from data.__main__ import cli
from data.image import decode_rgb
from data.pipeline import open_prepared
from data.prepare import prepare_collection

from .conftest import write_image


def test_prepare_skips_unreadable_and_records_it(collection_factory):
    root = collection_factory(["a", "b", "c"], [("a", "b")])
    write_image(root / "img" / "a.png", size=(300, 120))
    (root / "img" / "b.png").write_bytes(b"\x89PNG broken")
    res = prepare_collection(root, max_side=64)
    assert not res.reused and res.num_images == 2
    assert list(res.skipped) == ["b"] and "not a readable image" in res.skipped["b"]
    src = open_prepared(root / "prepared")
    assert len(src) == 2 and src.skipped == res.skipped
    assert list(src.indices) == [0, 2] and src.uids == ["a", "c"]
    uid, data = src[0]
    assert uid == "a" and max(decode_rgb(data).size) == 64 and decode_rgb(data).size == (64, 26)
    assert src[2][0] == "c"
    assert 1 not in src
    try:
        src[1]
    except KeyError as e:
        assert "skipped" in str(e)
    else:
        raise AssertionError("a skipped image must not be readable")


def test_prepare_is_idempotent_and_notices_changes(collection_factory):
    root = collection_factory(["a", "b"], [("a", "b")])
    first = prepare_collection(root, max_side=32)
    rec = next((root / "prepared").rglob("*.array_record-*"))
    mtime = rec.stat().st_mtime_ns
    again = prepare_collection(root, max_side=32)
    assert again.reused and rec.stat().st_mtime_ns == mtime and again.num_images == first.num_images
    # another max side, or a changed image file, rebuilds
    assert not prepare_collection(root, max_side=24).reused
    assert prepare_collection(root, max_side=24).reused
    write_image(root / "img" / "b.png", color=(1, 2, 3), size=(20, 20))
    os.utime(root / "img" / "b.png", ns=(1, 10**18))
    assert not prepare_collection(root, max_side=24).reused
    res = CliRunner().invoke(cli, ["prepare", str(root), "--max-side", "24"])
    assert res.exit_code == 0 and "up to date" in res.output
    assert json.loads((root / "prepared" / "fingerprint.json").read_text())["max_side"] == 24


def test_prepare_and_read_without_tensorflow(collection_factory):
    root = collection_factory(["a", "b"], [("a", "b")])
    code = (
        "import sys; from data.prepare import prepare_collection; from data.pipeline import open_prepared;"
        f"prepare_collection({str(root)!r}, max_side=16); s = open_prepared({str(root / 'prepared')!r});"
        "assert s[1][0] == 'b';"
        "assert 'tensorflow' not in sys.modules, 'tensorflow was imported'; print('ok')"
    )
    repo = Path(__file__).resolve().parents[2]
    out = subprocess.run([sys.executable, "-c", code], cwd=repo, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip().endswith("ok"), out.stderr[-2000:]


def test_source_reopens_eagerly_when_unpickled(collection_factory):
    # Worker processes get the source by pickle; it must open its files there at once (in the worker's
    # main thread), not lazily from reader threads, where concurrent lazy imports deadlocked.
    import pickle

    root = collection_factory(["a", "b"], [("a", "b")])
    prepare_collection(root, max_side=16)
    src = open_prepared(root / "prepared")
    copy = pickle.loads(pickle.dumps(src))
    assert copy._ds is not None and copy[1] == src[1]


def test_preparing_leaves_nothing_in_the_system_temp_folder(collection_factory, tmp_path, monkeypatch):
    import tempfile

    root = collection_factory(["a", "b"], [("a", "b")])
    system_tmp = tmp_path / "system-tmp"
    system_tmp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(system_tmp))
    res = prepare_collection(root, max_side=32)
    assert res.num_images == 2
    assert list(system_tmp.iterdir()) == []  # tensorflow-datasets' empty "tmp...tfds" folder used to stay here
    assert tempfile.tempdir == str(system_tmp)
    assert not (root / "prepared" / ".tfds-scratch").exists()


def test_the_builder_class_is_made_once_and_scratch_folders_are_not_cached(collection_factory, tmp_path):
    from data.prepare import _builder_class, _scratch_tempdir

    assert _builder_class() is _builder_class()
    for _ in range(2):  # the same scratch folder twice: a context manager each time, not one cached
        with _scratch_tempdir(tmp_path / "scratch"):
            assert (tmp_path / "scratch").is_dir()
        assert not (tmp_path / "scratch").exists()
