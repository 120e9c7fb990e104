"""Paths typed by users (`data.paths`): relative, `~` and symlinks, in the library and the CLIs (issue 11,
defect 1)."""

from __future__ import annotations

import json
import os

import click
import pytest
from click.testing import CliRunner

from data.__main__ import cli
from data.paths import PathOrWord, UserPath, resolve_path
from tests.data.conftest import make_collection


@pytest.fixture
def user_dirs(tmp_path, monkeypatch):
    """A home folder and a working directory elsewhere; a real folder reached through a symlink in home."""
    home, cwd, real = tmp_path / "home", tmp_path / "cwd", tmp_path / "real"
    for d in (home, cwd, real):
        d.mkdir()
    os.symlink(real, home / "linked")
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(cwd)
    return home, cwd, real


def test_resolve_path(user_dirs):
    home, cwd, real = user_dirs
    assert resolve_path("~/linked/x") == real.resolve() / "x"
    assert resolve_path("a/../b") == cwd.resolve() / "b"
    assert resolve_path(home / "linked") == real.resolve()


def test_click_types(user_dirs):
    _, _, real = user_dirs

    @click.command()
    @click.option("--p", type=UserPath(exists=True, file_okay=False))
    @click.option("--w", type=PathOrWord("random"))
    def show(p, w):
        click.echo(json.dumps([str(p), w]))

    r = CliRunner().invoke(show, ["--p", "~/linked", "--w", "random"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.output) == [str(real.resolve()), "random"]
    r = CliRunner().invoke(show, ["--w", "~/linked/w"])
    assert json.loads(r.output)[1] == str(real.resolve() / "w")
    r = CliRunner().invoke(show, ["--p", "~/missing"])
    assert r.exit_code == 2 and "does not exist" in r.output


def test_data_commands_take_relative_home_and_symlinked_paths(user_dirs):
    home, cwd, real = user_dirs
    make_collection(real / "coll", ["a", "b", "c", "d"], [("a", "b", "POSITIVE"), ("c", "d", "POSITIVE")])
    r = CliRunner().invoke(cli, ["check", "~/linked/coll", "--no-decode"])
    assert r.exit_code == 0, r.output
    assert "images: 4" in r.output
    os.symlink(real / "coll", cwd / "here")
    r = CliRunner().invoke(cli, ["splits", "here", "--out", "splits.json"])
    assert r.exit_code == 0, r.output
    assert (cwd / "splits.json").is_file() and not (real / "coll" / "splits.json").exists()
    r = CliRunner().invoke(cli, ["splits", "~/linked/coll", "--previous", "splits.json", "--out", "~/s.json"])
    assert r.exit_code == 0, r.output
    assert json.loads((home / "s.json").read_text()) == json.loads((cwd / "splits.json").read_text())
