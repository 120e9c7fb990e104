"""Fixtures for the data tests: tiny collections written on the fly."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from PIL import Image


def write_image(path: Path, color=(200, 30, 40), size=(24, 16)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path)


def make_collection(root: Path, uids, connections=(), *, images=True) -> Path:
    """A collection folder: one small solid image per uid; connections as (a, b, type[, split])."""
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    with open(root / "images.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["uid", "path", "title"])
        for u in uids:
            w.writerow([u, f"img/{u}.png", f"title {u}"])
            if images:
                write_image(root / "img" / f"{u}.png", tuple(int(v) for v in rng.integers(0, 255, 3)))
    with open(root / "connections.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["a", "b", "type", "split"])
        for c in connections:
            c = list(c) + [""] * (4 - len(c))
            w.writerow(c)
    return root


@pytest.fixture
def collection_factory(tmp_path):
    counter = iter(range(10**6))

    def make(uids, connections=(), **kw) -> Path:
        return make_collection(tmp_path / f"c{next(counter)}", uids, connections, **kw)

    return make


@pytest.fixture(scope="session")
def demo_small(tmp_path_factory):
    """The demo collection at a small size, built once per test session (and its prepared dataset)."""
    from data.demo import build_demo
    from data.prepare import prepare_collection

    root = tmp_path_factory.mktemp("demo") / "demo"
    result = build_demo(root, seed=0, max_side=96)
    prepared = prepare_collection(root, max_side=80)
    return root, result, prepared
