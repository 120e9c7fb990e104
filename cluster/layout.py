"""The map's 2-D layout: UMAP on nearest-neighbour lists found once, on the device.

Why: UMAP's own neighbour search (pynndescent, on the CPU) is the slow half of a map at archive scale, and
clustering has already done that work. umap-learn accepts precomputed lists (`precomputed_knn`), so the
layout takes, in this order: the lists `cluster optics` kept beside clusters.csv (`cluster.neighbours_file`),
or an exact search by `data.knn` (blocked matrix products on the device, the same search clustering uses).
Either way UMAP only builds its fuzzy graph and optimises the layout: time O(n k) per epoch, memory O(n k).

umap-learn is seeded (`random_state`), which makes a map reproducible at the cost of its threads.
"""

from __future__ import annotations

import atexit
import importlib.util
import os
import shutil
import sys
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from data.paths import unwritable_dir

SPECTRAL_MAX = 20_000  # above this many points the layout starts from PCA (see `initial_layout`)


def initial_layout(n: int) -> str:
    """UMAP's starting layout. Spectral (the eigenvectors of the graph Laplacian) gives the better global
    picture but its eigen-solve grows faster than n: measured on 100,000 x 256 archive-like signatures (2-core
    CPU), the whole layout took 92 s from spectral and 38 s from PCA (umap-learn's), the 200 epochs of
    optimisation 33 s of either. So spectral up to SPECTRAL_MAX points, PCA above (`pca_2d_blocks`); random
    for tiny maps (no spectrum to speak of)."""
    if n <= 10:
        return "random"
    return "spectral" if n <= SPECTRAL_MAX else "pca"


@dataclass(frozen=True)
class LayoutConfig:
    seed: int = 0
    n_neighbors: int = 15
    min_dist: float = 0.1
    metric: str = "cosine"


def with_self(indices: np.ndarray, distances: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """UMAP's form of the lists: each row itself first (distance 0), then its k - 1 nearest others."""
    n = indices.shape[0]
    own = np.arange(n, dtype=np.int64)[:, None]
    idx = np.concatenate([own, np.asarray(indices, np.int64)[:, : k - 1]], axis=1)
    dist = np.concatenate([np.zeros((n, 1)), np.asarray(distances, np.float64)[:, : k - 1]], axis=1)
    dist = np.where(idx >= 0, np.maximum(dist, 0.0), np.inf)  # float32 products can give -1e-7 for a twin
    return idx, dist.astype(np.float32)


def search_neighbours(vectors: np.ndarray, k: int, metric: str) -> tuple[np.ndarray, np.ndarray]:
    """k nearest other rows of each row by `data.knn` (exact, on the device)."""
    from data.knn import knn

    k = max(1, min(k, vectors.shape[0] - 1))
    dist, idx = knn(vectors, k, metric=metric)
    return idx, dist


def _pca_2d(x: np.ndarray) -> np.ndarray:
    xc = x - x.mean(axis=0)
    u, s, _ = np.linalg.svd(xc, full_matrices=False)
    out = np.zeros((x.shape[0], 2))
    k = min(2, u.shape[1])
    out[:, :k] = u[:, :k] * s[:k]
    return out


def pca_2d_blocks(vectors, block: int = 65536, iterations: int = 8, seed: int = 0) -> np.ndarray:
    """The rows' first two principal coordinates by block power iteration: O(n d) time per pass and O(block d)
    memory, so a memory-mapped store of a million rows is never loaded whole (numpy's SVD would need it)."""
    n, d = vectors.shape
    spans = [(s, min(n, s + block)) for s in range(0, n, block)]
    mean = sum(np.asarray(vectors[s:e], np.float64).sum(axis=0) for s, e in spans) / n
    basis = np.linalg.qr(np.random.default_rng(seed).normal(size=(d, 2)))[0]
    for _ in range(iterations):
        acc = np.zeros((d, 2))
        for s, e in spans:
            rows = np.asarray(vectors[s:e], np.float64) - mean
            acc += rows.T @ (rows @ basis)
        basis = np.linalg.qr(acc)[0]
    return np.concatenate([(np.asarray(vectors[s:e], np.float64) - mean) @ basis for s, e in spans])


def embed_2d(vectors, cfg: LayoutConfig, neighbours: tuple[np.ndarray, np.ndarray] | None = None) -> np.ndarray:
    """(n, 2) float64 coordinates of the rows of `vectors` (an array, or a memory-mapped store's rows).

    `neighbours` (indices, distances without the row itself, as `search_neighbours` returns them) are searched
    when not given. Fewer than 4 rows cannot be given a UMAP graph: they get their first two PCA coordinates.
    Past SPECTRAL_MAX rows UMAP is handed only the 2-D starting layout (its lists are precomputed, so it has no
    other use for the rows): memory O(n k), never a float32 copy of the whole store.
    """
    n = int(vectors.shape[0])
    if n < 4:
        return _pca_2d(np.asarray(vectors, dtype=np.float32))
    k = min(cfg.n_neighbors, n - 1)
    if neighbours is None or neighbours[0].shape[1] < k - 1:
        neighbours = search_neighbours(vectors, k, "cosine" if cfg.metric == "cosine" else cfg.metric)
    idx, dist = with_self(*neighbours, k)
    init = initial_layout(n)
    if init == "pca":
        start = pca_2d_blocks(vectors, seed=cfg.seed)
        x, init = start.astype(np.float32), start
    else:
        x = np.asarray(vectors, dtype=np.float32)
    _numba_cache_fallback()
    import umap

    reducer = umap.UMAP(
        n_components=2,
        n_neighbors=k,
        min_dist=cfg.min_dist,
        metric=cfg.metric,
        random_state=cfg.seed,
        init=init,
        precomputed_knn=(idx, dist, None),
    )
    with warnings.catch_warnings():
        # the seed is what makes the map reproducible (umap-learn warns that it costs its threads); without a
        # search index UMAP cannot `transform` new points (warned too), which the map never asks of it
        warnings.filterwarnings("ignore", message=r"n_jobs value .* overridden", category=UserWarning)
        warnings.filterwarnings("ignore", message=r".*knn_search_index.*", category=UserWarning)
        warnings.filterwarnings("ignore", message=r".*precomputed_knn.*", category=UserWarning)
        return np.asarray(reducer.fit_transform(x), dtype=np.float64)


def _numba_cache_fallback() -> str | None:
    """A temporary cache folder for numba (umap-learn's compiler) when neither place it looks can be written.

    Why: umap-learn compiles with numba's `cache=True`, and numba raises at `import umap` (`RuntimeError: cannot
    cache function 'rdist': no locator available`) when neither the installed package's `__pycache__` nor the
    user's cache folder (~/.cache/numba) is writable: a read-only home on a shared install. Then the map
    compiles into a folder removed at exit (NUMBA_CACHE_DIR, set by the user, keeps the code between runs)."""
    if os.environ.get("NUMBA_CACHE_DIR") or "numba" in sys.modules:  # numba reads its settings when imported
        return None
    spec = importlib.util.find_spec("umap")
    places = [Path(spec.origin).parent / "__pycache__"] if spec is not None and spec.origin else []
    places.append(Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "numba")
    if any(unwritable_dir(p) is None for p in places):
        return None
    path = tempfile.mkdtemp(prefix="vsig-numba-")
    atexit.register(shutil.rmtree, path, ignore_errors=True)
    os.environ["NUMBA_CACHE_DIR"] = path
    print(f"note: numba (UMAP's compiler) cannot cache in {' or '.join(map(str, places))}; it compiles into a "
          f"temporary folder (set NUMBA_CACHE_DIR to a writable folder to keep the compiled code).", file=sys.stderr)
    return path
