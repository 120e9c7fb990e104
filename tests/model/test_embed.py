"""`embed`: the library function and the CLI on a tiny collection with a corrupt and a missing image."""

from __future__ import annotations

import numpy as np
import pytest
from click.testing import CliRunner

from data.preprocess import load_for_test
from data.signatures import load_signatures
from model.__main__ import cli
from model.embed import embed_collection
from model.registry import build
from model.weights import save_weights
from tests.model.helpers import run_features

R = 32


@pytest.fixture(scope="module")
def r18():
    return build("resnet18", seed=0)


def test_embed_collection(tiny_collection, r18, capsys):
    sig = embed_collection(tiny_collection, r18, resolution=R, batch_size=2, progress=False)
    assert sig.uids == ["u3", "u1", "u2"]  # images.csv order, unreadable ones left out
    assert sig.skipped == ["bad", "gone"]
    assert sig.vectors.shape == (3, 512) and sig.vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(sig.vectors, axis=1), 1.0, atol=1e-5)
    err = capsys.readouterr().err
    assert "bad" in err and "corrupt.jpg" in err and "gone" in err and "missing.png" in err
    # Same numbers as the model on host-preprocessed images (device-side normalisation is the same maths).
    paths = [next(tiny_collection.glob("../elsewhere*/c.png")), tiny_collection / "images/a.png"]
    paths.append(tiny_collection / "images/b.jpg")
    direct = run_features(r18, np.stack([load_for_test(p, R) for p in paths]))[1]
    np.testing.assert_allclose(sig.vectors, direct, atol=1e-5)
    # Padding of the last batch changes nothing.
    other = embed_collection(tiny_collection, r18, resolution=R, batch_size=3, progress=False)
    np.testing.assert_allclose(other.vectors, sig.vectors, atol=1e-5)


def _embed(runner, out, *extra):
    args = ["embed", "--collection", str(out.parent.parent / "coll"), "--resolution", str(R)]
    return runner.invoke(cli, [*args, "--batch-size", "2", "--no-progress", "--out", str(out), *extra])


def test_embed_cli(tiny_collection, tmp_path, r18):
    runner = CliRunner()
    (tmp_path / "coll").symlink_to(tiny_collection)
    (tmp_path / "o").mkdir()
    o = tmp_path / "o"
    res = _embed(runner, o / "a.npz", "--arch", "resnet18", "--weights", "random", "--seed", "0")
    assert res.exit_code == 0, res.output
    assert "skipped uid bad" in res.stderr and "3 signatures" in res.stdout
    a = load_signatures(o / "a.npz")
    assert a.uids == ["u3", "u1", "u2"] and a.skipped == ["bad", "gone"]
    assert a.meta["arch"] == "resnet18" and a.meta["seed"] == 0 and a.meta["resolution"] == R
    assert _embed(runner, o / "b.npz", "--arch", "resnet18", "--weights", "random", "--seed", "0").exit_code == 0
    assert _embed(runner, o / "c.npz", "--arch", "resnet18", "--weights", "random", "--seed", "1").exit_code == 0
    np.testing.assert_array_equal(a.vectors, load_signatures(o / "b.npz").vectors)
    assert np.abs(a.vectors - load_signatures(o / "c.npz").vectors).max() > 1e-3

    save_weights(r18, tmp_path / "w")  # a weights directory: --arch may be omitted, and must agree
    res = _embed(runner, o / "d.npz", "--weights", str(tmp_path / "w"))
    assert res.exit_code == 0, res.output
    np.testing.assert_allclose(load_signatures(o / "d.npz").vectors, a.vectors, atol=1e-6)
    res = _embed(runner, o / "e.npz", "--weights", str(tmp_path / "w"), "--arch", "resnet50")
    assert res.exit_code == 1 and "not resnet50" in res.output
    res = _embed(runner, o / "f.npz", "--weights", "random")
    assert res.exit_code == 1 and "--arch" in res.output
