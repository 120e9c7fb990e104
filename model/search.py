"""Exact search of an index: "which images hold this picture, or this detail of it?"

A query is one vector (a whole image's signature, or a detail's: a box pooled from its picture's feature map by the
same network, `model.query`). Each indexed image scores the better of two matches: its global signature, and its best region.
When a region wins, the hit carries that region's box in the hit's own pixels, so that a detail is found
where it appears inside another picture, and shown where; when the whole image wins, the box is None.

Why the two are calibrated before they are compared: a region's vector pools a part of the picture, so its
cosine with any query sits lower than a whole image's (measured on the demo: the source's best region
scored 0.18-0.24 below its global signature even for crops of that very region), and a plain maximum
would let the whole image win almost always, returning no box. So each kind's score is put on the same
footing by how it scores on *unrelated* images: on a sample of the index, the mean and standard deviation
of global-vs-global cosines and of best-region-vs-global cosines between different images (`calibrate`,
stored in the manifest by `model index`). `Hit.score` is the number of standard deviations by which the
match stands above an unrelated image's (a z-score: 0 is what an unrelated image scores on average), the
better of the two kinds; `Hit.similarity` the matched vector's own cosine. Whole images are ranked among
themselves exactly as by cosine (an affine map of it). The score is a ranking within one query, not a
probability: an odd query (a blank picture) can stand high above everything, and the calibration is measured
again when images are appended, so scores of runs on different versions of an index do not compare.

For an index without PCA-whitening, regions are scored on the global scale (their own spread is not used):
such vectors share one large common component (cosines of unrelated images all near 1, their spread tiny),
and rescaling by that spread amplified noise: on the demo, crops found their source first 4% of the time
with it, 31% without (benchmarks/RESULTS.md).

Exact, not approximate: scores are matrix products of the query with blocks of the index on the device
(fixed-shape blocks, so one compilation; the last block padded and masked), and a running top-k is merged
after each block, so memory is O(block) and the result is the true top k of the stored (float16) vectors.
Up to millions of images on one GPU this is fast enough that no approximate index is needed (see
benchmarks/search.py for the measured latency and how it grows with the index). `Searcher(resident=True)`
keeps the blocks on the device between queries (the annotation app); otherwise each query reads the
memory-mapped index block by block (the CLI: one query per process).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from model.index import SearchIndex
from model.regions import box_in_pixels

BLOCK_BYTES = 64 << 20  # float16 bytes of index per block
CALIBRATION_IMAGES = 512  # images sampled by `calibrate`: ~260k pairs of unrelated images
# A whole image this close to the query is the same picture (a copy, a re-scan): it is reported as a whole-image
# match (no box, its whole image's cosine) even when one of its regions scores higher (regions' z-scores have
# their own, narrower spread, so a region of an identical copy could win and a box came back where "whole
# image" was the answer). Its rank is unchanged.
SAME_PICTURE_COSINE = 0.95


@dataclass(frozen=True)
class Calibration:
    """How global and best-region cosines are distributed over pairs of different images (module docstring)."""

    global_mean: float = 0.0
    global_std: float = 1.0
    region_mean: float = 0.0
    region_std: float = 1.0

    def z(self) -> tuple[float, float, float, float]:
        """(global mean, 1 / global spread, region mean, 1 / region spread): score = (cosine - mean) / spread."""
        return (self.global_mean, 1.0 / max(self.global_std, 1e-6), self.region_mean,
                1.0 / max(self.region_std, 1e-6))

    def on_global_scale(self) -> Calibration:
        """Regions scored like whole images (an index without PCA-whitening: module docstring)."""
        return Calibration(self.global_mean, self.global_std, self.global_mean, self.global_std)

    def as_json(self) -> dict:
        return {k: round(float(getattr(self, k)), 6) for k in ("global_mean", "global_std", "region_mean",
                                                               "region_std")}


def calibrate(index: SearchIndex, *, images: int = CALIBRATION_IMAGES, seed: int = 0) -> Calibration:
    """Each image of a seeded sample as a query (its global vector) against the sample's other images: the mean
    and standard deviation of its global cosine and of its best region's. Most pairs of a collection are
    unrelated, so these describe the scores of images that do not match. O(images^2 R D) time."""
    n = index.count
    if n < 3:
        return Calibration()
    rng = np.random.default_rng(seed)
    numbers = np.sort(rng.choice(n, size=min(n, images), replace=False))
    pairs = [index.vectors_of(int(i)) for i in numbers]
    g = np.stack([p[0] for p in pairs])  # (s, D)
    r = np.stack([p[1] for p in pairs])  # (s, R, D)
    off = ~np.eye(len(g), dtype=bool)
    sg = (g @ g.T)[off]
    sr = np.einsum("qd,srd->qsr", g, r).max(-1)[off]
    return Calibration(float(sg.mean()), float(sg.std()), float(sr.mean()), float(sr.std()))


def index_calibration(index: SearchIndex) -> Calibration:
    """The manifest's calibration, or one computed now (an index written without it); regions on the global
    scale for an index that is not PCA-whitened (module docstring)."""
    stored = index.manifest.get("calibration")
    cal = Calibration(**stored) if stored else calibrate(index)
    return cal if index.pca is not None else cal.on_global_scale()


@dataclass(frozen=True)
class Hit:
    uid: str
    score: float
    box: list[int] | None  # [x, y, w, h] in the hit's pixels; None: the whole image matched best
    region: int  # index into the grid, -1 for the whole image
    number: int  # place in the index
    similarity: float = float("nan")  # the cosine of the query with the matched vector (score: its z-score)

    def as_json(self) -> dict:
        return {"uid": self.uid, "score": round(self.score, 6), "box": self.box,
                "similarity": round(self.similarity, 6)}


def block_images(index: SearchIndex) -> int:
    regions = len(index.manifest["grid"])
    return max(16, min(65536, BLOCK_BYTES // (2 * (1 + regions) * index.dim)))


@partial(jax.jit, static_argnames=("k",))
def _merge_block(best, queries, global_, regions, valid, first, exclude, z, *, k):
    """Running top-k (scores, numbers, regions, cosines) merged with one block's best score per image.

    queries (Q, D) float32; global_ (B, D) and regions (B, R, D), float16 or float32 (products accumulate in
    float32 either way); valid (B,) bool; first: the block's first image number; exclude (Q,) image number
    left out of each query's results (-1: none); z: `Calibration.z()`, the scores' mean and inverse spread."""
    scores, numbers, which, sims = best
    q = queries.astype(global_.dtype)
    g_mean, g_inv, r_mean, r_inv = z
    g_cos = jnp.einsum("qd,bd->qb", q, global_, preferred_element_type=jnp.float32)  # (Q, B)
    g = (g_cos - g_mean) * g_inv
    r = jnp.einsum("qd,brd->qbr", q, regions, preferred_element_type=jnp.float32)  # (Q, B, R)
    r_best, r_arg = (r.max(-1) - r_mean) * r_inv, r.argmax(-1)
    same = g_cos >= SAME_PICTURE_COSINE
    block_scores = jnp.maximum(g, r_best)  # ranked as ever; only what the hit reports changes
    block_which = jnp.where((r_best > g) & ~same, r_arg, -1)
    block_sims = jnp.where(block_which >= 0, r.max(-1), g_cos)  # the reported match's own cosine
    block_numbers = first + jnp.arange(global_.shape[0])
    keep = valid[None, :] & (block_numbers[None, :] != exclude[:, None])
    block_scores = jnp.where(keep, block_scores, -jnp.inf)
    all_scores = jnp.concatenate([scores, block_scores], 1)
    all_numbers = jnp.concatenate([numbers, jnp.broadcast_to(block_numbers, block_scores.shape)], 1)
    all_which = jnp.concatenate([which, block_which], 1)
    all_sims = jnp.concatenate([sims, block_sims], 1)
    top, idx = jax.lax.top_k(all_scores, k)
    return (top, *(jnp.take_along_axis(a, idx, 1) for a in (all_numbers, all_which, all_sims)))


class Searcher:
    """Exact top-k over one index (see the module docstring)."""

    def __init__(self, index: SearchIndex, *, block: int | None = None, resident: bool = False,
                 calibration: Calibration | None = None) -> None:
        self.index = index
        self.block = block or block_images(index)
        self.resident = resident
        self.calibration = calibration or index_calibration(index)
        self._blocks: list | None = None

    def _padded_blocks(self, dtype):
        b, r, d = self.block, len(self.index.manifest["grid"]), self.index.dim
        for first, g, reg in self.index.blocks(self.block):
            n = len(g)
            if n < b:
                g = np.concatenate([g, np.zeros((b - n, d), g.dtype)])
                reg = np.concatenate([reg, np.zeros((b - n, r, d), reg.dtype)])
            yield first, jnp.asarray(g, dtype), jnp.asarray(reg, dtype), jnp.asarray(np.arange(b) < n)

    def _iter_blocks(self):
        """Blocks on the device: float32 on a CPU (XLA's CPU float16 products are slow; a resident index then
        takes twice its file's size in memory, and is converted once, not on every query), float16 as stored
        on an accelerator (products accumulate in float32). Resident ones are kept between queries."""
        dtype = jnp.float32 if jax.default_backend() == "cpu" else jnp.float16
        if not self.resident:
            return self._padded_blocks(dtype)
        if self._blocks is None:
            self._blocks = list(self._padded_blocks(dtype))
        return iter(self._blocks)

    def top_k(self, queries: np.ndarray, k: int, exclude: Sequence[int | None] | None = None):
        """(scores, numbers, regions) arrays (Q, k'), k' = min(k, images): each query's best images, best
        first; numbers -1 (score -inf) where fewer images qualify (an index of one image, its query left out)."""
        return self._top_k(queries, k, exclude)[:3]

    def _top_k(self, queries, k, exclude):
        """`top_k`, and the cosine of each hit's reported match (Q, k')."""
        queries = np.atleast_2d(np.asarray(queries, np.float32))
        nq = len(queries)
        k = max(1, min(int(k), self.index.count))
        excl = np.asarray([-1 if e is None else e for e in (exclude or [None] * nq)], np.int32)
        best = (jnp.full((nq, k), -jnp.inf, jnp.float32), jnp.full((nq, k), -1, jnp.int32),
                jnp.full((nq, k), -1, jnp.int32), jnp.zeros((nq, k), jnp.float32))
        q, ex = jnp.asarray(queries), jnp.asarray(excl)
        z = tuple(jnp.float32(v) for v in self.calibration.z())
        for first, g, reg, valid in self._iter_blocks():
            best = _merge_block(best, q, g, reg, valid, jnp.int32(first), ex, z, k=k)
        scores, numbers, which, sims = (np.asarray(a) for a in best)
        numbers = np.where(np.isfinite(scores), numbers, -1)
        return scores, numbers, which, sims

    def search(self, queries: np.ndarray, k: int, exclude: Sequence[int | None] | None = None) -> list[list[Hit]]:
        """Each query's hits, best first (see `top_k`), with uids and boxes in the hits' pixels."""
        grid = self.index.grid
        out = []
        for qs, qn, qw, qc in zip(*self._top_k(queries, k, exclude), strict=True):
            hits = []
            for s, n, w, c in zip(qs, qn, qw, qc, strict=True):
                if n < 0:
                    continue
                whole = w < 0 or np.allclose(grid[w], (0.0, 0.0, 1.0, 1.0))  # a 1 x 1 map's only "region"
                box = None if whole else box_in_pixels(grid[w], self.index.size_of(int(n)))
                sim = float(np.clip(c, -1.0, 1.0))  # float16 rows: |x| ~ 1 +- 5e-4
                hits.append(Hit(self.index.uid_of(int(n)), float(s), box, int(w), int(n), sim))
            out.append(hits)
        return out
