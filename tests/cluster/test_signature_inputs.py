"""`python -m cluster` on signatures files a user may hand it: NaN rows, a truncated file, `~`, relative
paths and symlinks (issue 11, defects 1, 5 and 7c)."""

import os

import numpy as np
import pytest
from click.testing import CliRunner

from cluster.__main__ import cli
from cluster.clusters_file import read_clusters
from data.signatures import Signatures, save_signatures

N = 30


@pytest.fixture
def sig_files(tmp_path):
    rng = np.random.default_rng(5)
    x = rng.normal(size=(N, 8))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    uids = [f"img{i:03d}" for i in range(N)]
    save_signatures(tmp_path / "sig.npz", Signatures(uids=uids, vectors=x))
    bad = x.copy()
    bad[[7, 12]] = np.nan  # what a run whose loss became NaN writes
    save_signatures(tmp_path / "nan.npz", Signatures(uids=uids, vectors=bad))
    coll = tmp_path / "coll"
    coll.mkdir()
    (coll / "images.csv").write_text("uid,path\n" + "".join(f"{u},{u}.jpg\n" for u in uids))
    return tmp_path, uids


def _no_traceback(r) -> None:
    assert r.exception is None or isinstance(r.exception, SystemExit), repr(r.exception)
    assert "Traceback" not in r.output


@pytest.mark.parametrize("command", ["optics", "map"])
def test_nan_signatures_are_refused_naming_the_file_and_the_first_uid(sig_files, command):
    tmp, _ = sig_files
    args = {"optics": ["optics", str(tmp / "nan.npz"), "--out", str(tmp / "c.csv")],
            "map": ["map", str(tmp / "nan.npz"), "--collection", str(tmp / "coll"), "--out", str(tmp / "map")]}
    r = CliRunner().invoke(cli, args[command])
    assert r.exit_code != 0
    _no_traceback(r)
    assert str(tmp / "nan.npz") in r.output and "'img007'" in r.output and "2 of 30" in r.output
    assert "not finite" in r.output
    assert not (tmp / "c.csv").exists() and not (tmp / "map" / "coords.csv").exists()


def test_truncated_signatures_file_is_a_clear_error(sig_files):
    tmp, _ = sig_files
    data = (tmp / "sig.npz").read_bytes()
    (tmp / "cut.npz").write_bytes(data[: len(data) // 2])  # a copy or a writer killed half-way
    r = CliRunner().invoke(cli, ["optics", str(tmp / "cut.npz"), "--out", str(tmp / "c.csv")])
    assert r.exit_code != 0
    _no_traceback(r)
    assert str(tmp / "cut.npz") in r.output and "damaged" in r.output


def test_paths_may_be_relative_home_relative_and_symlinked(sig_files, tmp_path_factory, monkeypatch):
    tmp, uids = sig_files
    home, cwd = tmp_path_factory.mktemp("home"), tmp_path_factory.mktemp("cwd")
    os.symlink(tmp, home / "linked")
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(cwd)
    r = CliRunner().invoke(cli, ["optics", "~/linked/sig.npz", "--out", "res/clusters.csv", "--max-eps", "inf"])
    assert r.exit_code == 0, r.output
    assert read_clusters(cwd / "res" / "clusters.csv").uids == uids
    assert (cwd / "res" / "reachability.png").exists()
    r = CliRunner().invoke(cli, ["evaluate", "res/clusters.csv", "--collection", "~/linked/coll",
                                 "--json", "~/q.json"])
    assert r.exit_code == 0, r.output
    assert (home / "q.json").exists()


def test_duplicate_uid_is_named_with_the_file(sig_files):
    """Issue 11 trial: "duplicate uids" named neither the uid nor the file."""
    tmp, uids = sig_files
    with np.load(tmp / "sig.npz") as z:
        vectors = z["vectors"]
    twice = list(uids)
    twice[20] = uids[3]  # two embeddings joined by hand
    np.savez(tmp / "dup.npz", uids=np.asarray(twice), vectors=vectors)
    r = CliRunner().invoke(cli, ["optics", str(tmp / "dup.npz"), "--out", str(tmp / "c.csv")])
    assert r.exit_code != 0
    _no_traceback(r)
    assert f"{tmp / 'dup.npz'}: uid 'img003' appears 2 times (rows 4, 21)" in r.output and "model embed" in r.output


def test_vectors_that_are_not_unit_norm_say_what_to_do(sig_files):
    tmp, uids = sig_files
    with np.load(tmp / "sig.npz") as z:
        vectors = z["vectors"] * 3.0  # another tool's raw features
    np.savez(tmp / "raw.npz", uids=np.asarray(uids), vectors=vectors)
    r = CliRunner().invoke(cli, ["optics", str(tmp / "raw.npz"), "--out", str(tmp / "c.csv")])
    assert r.exit_code != 0
    _no_traceback(r)
    assert f"{tmp / 'raw.npz'}: 30 of 30 rows are not unit-norm (first: uid 'img000', norm 3)" in r.output
    assert "python -m model embed" in r.output and "divide each row by its length" in r.output
