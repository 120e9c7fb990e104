"""The nearest-neighbour lists a clustering computed, kept beside clusters.csv for the map.

Why: at archive scale the neighbour search is the costly part of both clustering (the knn engine) and the
map's UMAP layout. `cluster optics` writes the lists its knn engine found to `clusters.knn.npz` (the name of
clusters.csv with `.knn.npz`), and `cluster map` builds its layout from them instead of searching again.

The file is an uncompressed .npz, readable with NumPy alone:
- `indices` int32 (n, k): each row's nearest other rows, nearest first, -1 where a row has fewer;
- `distances` float32 (n, k): their distances (the clustering's metric);
- `signatures_sha256`, `metric`: which signatures and which distance they belong to. A file made from other
  signatures is not used (`read_neighbours` says why), so a map never lays out one file with another's lists.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from data.atomic import atomic_write


def neighbours_path(clusters_csv: str | Path) -> Path:
    """clusters.csv -> clusters.knn.npz (same folder, same stem)."""
    return Path(clusters_csv).with_suffix(".knn.npz")


def write_neighbours(path: str | Path, indices: np.ndarray, distances: np.ndarray, *, signatures_sha256: str,
                     metric: str) -> None:  # fmt: skip
    """Write the lists atomically (a killed run leaves the older file or this one)."""
    def write(tmp: Path) -> None:
        with open(tmp, "wb") as fh:
            np.savez(fh, indices=np.asarray(indices, np.int32), distances=np.asarray(distances, np.float32),
                     signatures_sha256=np.array(signatures_sha256), metric=np.array(metric))  # fmt: skip

    atomic_write(path, write)


def read_neighbours(path: str | Path, *, signatures_sha256: str, n: int) -> tuple[np.ndarray, np.ndarray] | str:
    """(indices, distances) when the file belongs to these signatures (n rows), else a sentence saying why not."""
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as z:
            sha = str(z["signatures_sha256"])
            idx, dist = np.asarray(z["indices"], np.int64), np.asarray(z["distances"], np.float64)
    except FileNotFoundError:
        return f"{path}: not found"
    except (OSError, KeyError, ValueError) as e:
        return f"{path}: not a neighbour file of `cluster optics` ({e})"
    if sha != signatures_sha256:
        return f"{path}: made from other signatures (sha256 {sha[:12]}..., not {signatures_sha256[:12]}...)"
    if idx.ndim != 2 or idx.shape != dist.shape or idx.shape[0] != n:
        return f"{path}: lists of shape {idx.shape}, expected {n} rows"
    if idx.size and (idx.max() >= n or idx.min() < -1):
        return f"{path}: indices outside 0..{n - 1}"
    return idx, dist
