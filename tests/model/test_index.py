"""`model index`: every image's global and regional vectors, stored in parts; the global vector is `model
embed`'s signature, a region is the network's pooling of its part of the map; unreadable images reported and
left out; appending, resuming after a kill and refusing incomparable settings."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

import model.index_build as B
from data.preprocess import load_uint8, normalize
from model.embed import embed_collection
from model.index import IndexError_, SearchIndex
from model.regions import region_cells
from model.registry import build as build_net
from model.signature import l2_normalize
from tests.model.search_fixtures import R, build, write_collection


@pytest.fixture(scope="module")
def net():
    return build_net("resnet18", seed=0)


@pytest.fixture(scope="module")
def coll(tmp_path_factory):
    return write_collection(tmp_path_factory.mktemp("coll"))


@pytest.fixture(scope="module")
def index_dir(coll, net, tmp_path_factory):
    out = tmp_path_factory.mktemp("idx") / "index"
    build(coll, net, out)
    return out


def test_global_vectors_are_the_signatures_model_embed_computes(coll, net, index_dir):
    index = SearchIndex.open(index_dir)
    sigs = embed_collection(coll, net, resolution=R, batch_size=2, progress=False, quiet=True)
    assert index.uids == list(sigs.uids) == ["a00", "a01", "a02", "a03", "a04"]
    stored = np.concatenate([np.asarray(p.global_, np.float32) for p in index.parts])
    np.testing.assert_allclose(stored, np.asarray(sigs.vectors, np.float32), atol=2e-3)
    assert len(index.parts) == 3 and [p.count for p in index.parts] == [2, 2, 1]  # 2 per chunk, broken left out


def test_each_region_is_the_pooled_part_of_the_feature_map(coll, net, index_dir):
    index = SearchIndex.open(index_dir)
    x = normalize(load_uint8(coll / "images" / "a03.png", R))[None]
    fmap = np.asarray(net.backbone(jnp.asarray(x)), np.float32)
    _, regions = index.vectors_of(index.number_of("a03"))
    cells = region_cells(fmap.shape[1], (2, 3))
    assert len(cells) == regions.shape[0] == len(index.manifest["grid"]) == 13
    for r, (cx, cy, w) in enumerate(cells):
        want = np.asarray(l2_normalize(jnp.asarray(fmap[0, cy:cy + w, cx:cx + w].mean(axis=(0, 1)))))
        np.testing.assert_allclose(regions[r], want, atol=2e-3)


def test_sizes_are_the_pictures_as_shown_exif_orientation_applied(index_dir):
    index = SearchIndex.open(index_dir)
    assert index.size_of(index.number_of("a00")) == (80, 60)
    assert index.size_of(index.number_of("a02")) == (40, 60)  # stored 60 x 40, EXIF orientation 6
    assert index.parts[0].global_.dtype == np.float16 and index.parts[0].regions.dtype == np.float16


def test_unreadable_images_are_reported_left_out_and_tried_again(coll, net, index_dir, capsys):
    capsys.readouterr()
    again = build(coll, net, index_dir)
    err = capsys.readouterr().err
    assert "skipped uid broken" in err and "broken.jpg" in err
    assert (again.added, again.skipped, again.already, again.total, again.parts) == (0, 1, 5, 5, 0)
    assert "broken" not in SearchIndex.open(index_dir).uids


def test_appending_new_images_equals_building_all_at_once(tmp_path, net):
    first = write_collection(tmp_path / "c", n=3)
    build(first, net, tmp_path / "grown")
    old = SearchIndex.open(tmp_path / "grown")
    old_vectors = np.asarray(old.parts[0].global_).copy()
    grown = write_collection(tmp_path / "c", n=5)  # the same three images, two more
    res = build(grown, net, tmp_path / "grown")
    assert (res.added, res.already, res.total) == (2, 3, 5)
    build(grown, net, tmp_path / "whole")
    a, b = SearchIndex.open(tmp_path / "grown"), SearchIndex.open(tmp_path / "whole")
    assert a.uids == b.uids
    np.testing.assert_array_equal(np.asarray(a.parts[0].global_), old_vectors)  # old parts untouched
    for u in a.uids:
        for x, y in zip(a.vectors_of(a.number_of(u)), b.vectors_of(b.number_of(u)), strict=True):
            np.testing.assert_allclose(x, y, atol=2e-3)


def test_a_killed_run_resumes_and_a_half_written_part_is_removed(tmp_path, net, coll, monkeypatch):
    real = B.append_part
    calls = []

    def dies_on_second(folder, manifest, *a, **kw):
        calls.append(1)
        if len(calls) == 2:
            (folder / "parts" / "part-00001").mkdir(parents=True)  # what a kill inside the write leaves
            raise KeyboardInterrupt
        return real(folder, manifest, *a, **kw)

    monkeypatch.setattr(B, "append_part", dies_on_second)
    with pytest.raises(KeyboardInterrupt):
        build(coll, net, tmp_path / "idx")
    assert SearchIndex.open(tmp_path / "idx").uids == ["a00", "a01"]
    monkeypatch.setattr(B, "append_part", real)
    res = build(coll, net, tmp_path / "idx")
    assert (res.added, res.already, res.total) == (3, 2, 5)
    index = SearchIndex.open(tmp_path / "idx")
    assert index.uids == ["a00", "a01", "a02", "a03", "a04"]
    assert sorted(p.name for p in (tmp_path / "idx" / "parts").iterdir()) == [f"part-0000{i}" for i in range(3)]


def test_settings_that_make_vectors_incomparable_are_refused(tmp_path, coll, net, index_dir):
    other = build_net("resnet18", seed=1)
    with pytest.raises(IndexError_, match="weights differ"):
        build(coll, other, index_dir)
    with pytest.raises(IndexError_, match="resolution"):
        build(coll, net, index_dir, resolution=96)
    with pytest.raises(IndexError_, match="scales"):
        build(coll, net, index_dir, scales=(2,))
    with pytest.raises(IndexError_, match="not a search index"):
        SearchIndex.open(tmp_path)
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("a user's file")
    with pytest.raises(IndexError_, match="holds other files"):
        build(coll, net, tmp_path / "mine")
    assert sorted(p.name for p in (tmp_path / "mine").iterdir()) == ["notes.txt"]


def test_pca_whitening_is_learned_stored_and_applied(tmp_path, coll, net):
    build(coll, net, tmp_path / "pca", pca_dim=8, pca_images=6)
    index = SearchIndex.open(tmp_path / "pca")
    assert index.dim == 8 and index.pca is not None
    assert index.manifest["pca"]["vectors"] == 5 * 14  # 6 rows drawn, the broken one unreadable; 1 + 13 vectors each
    build(coll, net, tmp_path / "plain")
    raw = SearchIndex.open(tmp_path / "plain")
    g_raw, r_raw = raw.vectors_of(raw.number_of("a01"))
    g, r = index.vectors_of(index.number_of("a01"))
    np.testing.assert_allclose(g, index.pca.apply(g_raw[None])[0], atol=3e-3)  # the device's whitening = NumPy's
    np.testing.assert_allclose(r, index.pca.apply(r_raw), atol=3e-3)
    np.testing.assert_allclose(np.linalg.norm(r, axis=1), 1.0, atol=2e-3)
    with pytest.raises(IndexError_, match="--pca 4"):
        build(coll, net, tmp_path / "pca", pca_dim=4)
    with pytest.raises(ValueError, match="at most"):
        build(coll, net, tmp_path / "toomany", pca_dim=600, pca_images=5)


def test_a_second_writer_is_refused_and_ctrl_c_is_one_line(tmp_path, coll, net, monkeypatch):
    import fcntl
    import os

    from click.testing import CliRunner

    from model.__main__ import cli

    folder = tmp_path / "busy"
    folder.mkdir()
    fd = os.open(folder, os.O_RDONLY)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # what a running `model index` holds
    try:
        with pytest.raises(IndexError_, match="another `model index` is writing"):
            build(coll, net, folder)
    finally:
        os.close(fd)

    def interrupted(*a, **kw):
        raise KeyboardInterrupt

    monkeypatch.setattr(B, "build_index", interrupted)
    res = CliRunner().invoke(cli, ["index", "--collection", str(coll), "--weights", "random", "--arch", "resnet18",
                                   "--resolution", "64", "--out", str(tmp_path / "i"), "--no-progress"])
    assert res.exit_code == 130 and "interrupted: the parts finished so far are kept" in res.output
    assert "Traceback" not in res.output


_SHARDED_INDEX = """
import sys
import jax
from model.registry import build as build_net
from tests.model.search_fixtures import build
coll, out = sys.argv[1], sys.argv[2]
assert jax.local_device_count() == 3
build(coll, build_net("resnet18", seed=0), out, batch_size=2)  # batches of 3: one image per device
"""


def test_an_index_built_over_three_devices_holds_the_one_device_vectors(coll, index_dir, tmp_path):
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=3", PYTHONPATH=str(root),
               JAX_PLATFORMS="cpu")
    r = subprocess.run([sys.executable, "-c", _SHARDED_INDEX, str(coll), str(tmp_path / "idx")], env=env, cwd=root,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    one, three = SearchIndex.open(index_dir), SearchIndex.open(tmp_path / "idx")
    assert one.uids == three.uids
    for u in one.uids:
        for x, y in zip(one.vectors_of(one.number_of(u)), three.vectors_of(three.number_of(u)), strict=True):
            np.testing.assert_allclose(x, y, atol=2e-3)


def test_a_moved_collection_indexed_again_is_reattached_to_its_index(tmp_path, net, capsys):
    import shutil

    first = write_collection(tmp_path / "c", n=3)
    build(first, net, tmp_path / "idx")
    moved = tmp_path / "moved"
    shutil.move(str(first), moved)
    capsys.readouterr()
    res = build(moved, net, tmp_path / "idx")
    err = capsys.readouterr().err
    assert res.added == 0 and "is gone; the indexed images it listed are now read from" in err
    assert "from another collection" not in err
    index = SearchIndex.open(tmp_path / "idx")
    assert {p["collection"] for p in index.manifest["parts"]} == {str(moved.absolute())}
