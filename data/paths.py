"""Paths typed by users: `~`, relative paths and symlinks mean what a shell means by them.

Why one place: every CLI takes folders and files, and libraries underneath (orbax above all) misbehave
on relative paths (orbax returns no metadata for `runA/weights` and training crashed with an
AttributeError). So each path option of every `python -m data|model|train|cluster` command is a
`UserPath` (click's `Path` does not expand `~`), and library entry points that hand paths on call
`resolve_path` themselves. Resolving also follows symlinks, so an atomic replace (`os.replace`)
swaps the real folder, never the link.

It lives in `data/` because every package may import `data/`.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import click


def unwritable_dir(folder: Path) -> OSError | None:
    """Why a file cannot be made in `folder` (made if missing), or None when one can: what a cache that writes
    there meets (numba's, JAX's), tried the way they try it, before they warn once per program."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as e:
        return e
    return None


def resolve_path(path: str | os.PathLike) -> Path:
    """`path` with `~` expanded, made absolute against the current directory, symlinks followed."""
    return Path(os.path.expanduser(os.fspath(path))).resolve()


class UserPath(click.Path):
    """`click.Path` that expands `~` before click's checks and returns a resolved `pathlib.Path`."""

    def __init__(self, **kwargs) -> None:
        kwargs.setdefault("path_type", Path)
        super().__init__(**kwargs)

    def convert(self, value, param, ctx):
        if isinstance(value, str | os.PathLike):
            value = os.path.expanduser(os.fspath(value))
        return resolve_path(super().convert(value, param, ctx))


class PathOrWord(click.ParamType):
    """A path (as `UserPath` resolves it) or one of a few keywords, e.g. `--weights random|DIR`.

    The value is a string: the keyword as given, or the resolved path (existence is checked by the
    library that reads it, which knows what the folder must hold).
    """

    name = "path"

    def __init__(self, *words: str) -> None:
        self.words = words

    def convert(self, value, param, ctx):
        if value in self.words:
            return value
        return str(resolve_path(value))
