"""Fixtures for the model tests: a tiny image collection."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from PIL import Image


@pytest.fixture(scope="session")
def tiny_collection(tmp_path_factory) -> Path:
    """5 rows: 3 readable images (PNG, JPEG, and an absolute path), 1 corrupt file, 1 missing file.

    images.csv order deliberately differs from file names so that order bugs show.
    """
    root = tmp_path_factory.mktemp("collection")
    (root / "images").mkdir()
    rng = np.random.default_rng(0)
    other = tmp_path_factory.mktemp("elsewhere")

    def img(path: Path) -> Path:
        Image.fromarray(rng.integers(0, 256, (30, 40, 3), dtype=np.uint8)).save(path)
        return path

    img(root / "images" / "a.png")
    img(root / "images" / "b.jpg")
    absolute = img(other / "c.png")
    (root / "images" / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    rows = [
        ("u3", str(absolute), "third"),
        ("u1", "images/a.png", "first"),
        ("bad", "images/corrupt.jpg", "corrupt"),
        ("u2", "images/b.jpg", "second"),
        ("gone", "images/missing.png", "missing"),
    ]
    with open(root / "images.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["uid", "path", "title"])
        w.writerows(rows)
    return root
