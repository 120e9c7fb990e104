"""Exact search of an index: "which images hold this picture, or this detail of it?"

A query is one vector (a whole image's signature, or a detail's: the crop embedded whole by the same
network). Each indexed image scores the best of its cosine similarities: with its global signature and
with each of its regions. When a region wins, the hit carries that region's box in the hit's own pixels,
so that a photograph of a detail finds the artwork it comes from and shows where; when the whole image
wins, the box is None.

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


@dataclass(frozen=True)
class Hit:
    uid: str
    score: float
    box: list[int] | None  # [x, y, w, h] in the hit's pixels; None: the whole image matched best
    region: int  # index into the grid, -1 for the whole image
    number: int  # place in the index

    def as_json(self) -> dict:
        return {"uid": self.uid, "score": round(self.score, 6), "box": self.box}


def block_images(index: SearchIndex) -> int:
    regions = len(index.manifest["grid"])
    return max(16, min(65536, BLOCK_BYTES // (2 * (1 + regions) * index.dim)))


@partial(jax.jit, static_argnames=("k",))
def _merge_block(best, queries, global_, regions, valid, first, exclude, *, k):
    """Running top-k (scores, numbers, regions) merged with one block's best score per image.

    queries (Q, D) float32; global_ (B, D) and regions (B, R, D) float16; valid (B,) bool; first: the
    block's first image number; exclude (Q,) image number left out of each query's results (-1: none)."""
    scores, numbers, which = best
    q = queries.astype(jnp.float32)
    g = q @ global_.astype(jnp.float32).T  # (Q, B)
    r = jnp.einsum("qd,brd->qbr", q, regions.astype(jnp.float32))  # (Q, B, R)
    r_best, r_arg = r.max(-1), r.argmax(-1)
    block_scores = jnp.maximum(g, r_best)
    block_which = jnp.where(r_best > g, r_arg, -1)
    block_numbers = first + jnp.arange(global_.shape[0])
    keep = valid[None, :] & (block_numbers[None, :] != exclude[:, None])
    block_scores = jnp.where(keep, block_scores, -jnp.inf)
    all_scores = jnp.concatenate([scores, block_scores], 1)
    all_numbers = jnp.concatenate([numbers, jnp.broadcast_to(block_numbers, block_scores.shape)], 1)
    all_which = jnp.concatenate([which, block_which], 1)
    top, idx = jax.lax.top_k(all_scores, k)
    return top, jnp.take_along_axis(all_numbers, idx, 1), jnp.take_along_axis(all_which, idx, 1)


class Searcher:
    """Exact top-k over one index (see the module docstring)."""

    def __init__(self, index: SearchIndex, *, block: int | None = None, resident: bool = False) -> None:
        self.index = index
        self.block = block or block_images(index)
        self.resident = resident
        self._blocks: list | None = None

    def _padded_blocks(self):
        b, r, d = self.block, len(self.index.manifest["grid"]), self.index.dim
        for first, g, reg in self.index.blocks(self.block):
            n = len(g)
            if n < b:
                g = np.concatenate([g, np.zeros((b - n, d), g.dtype)])
                reg = np.concatenate([reg, np.zeros((b - n, r, d), reg.dtype)])
            yield first, jnp.asarray(g), jnp.asarray(reg), jnp.asarray(np.arange(b) < n)

    def _iter_blocks(self):
        if not self.resident:
            return self._padded_blocks()
        if self._blocks is None:
            self._blocks = list(self._padded_blocks())
        return iter(self._blocks)

    def top_k(self, queries: np.ndarray, k: int, exclude: Sequence[int | None] | None = None):
        """(scores, numbers, regions) arrays (Q, k'), k' = min(k, images): each query's best images, best
        first; numbers -1 (score -inf) where fewer images qualify (an index of one image, its query left out)."""
        queries = np.atleast_2d(np.asarray(queries, np.float32))
        nq = len(queries)
        k = max(1, min(int(k), self.index.count))
        excl = np.asarray([-1 if e is None else e for e in (exclude or [None] * nq)], np.int32)
        best = (jnp.full((nq, k), -jnp.inf, jnp.float32), jnp.full((nq, k), -1, jnp.int32),
                jnp.full((nq, k), -1, jnp.int32))
        q, ex = jnp.asarray(queries), jnp.asarray(excl)
        for first, g, reg, valid in self._iter_blocks():
            best = _merge_block(best, q, g, reg, valid, jnp.int32(first), ex, k=k)
        scores, numbers, which = (np.asarray(a) for a in best)
        numbers = np.where(np.isfinite(scores), numbers, -1)
        return scores, numbers, which

    def search(self, queries: np.ndarray, k: int, exclude: Sequence[int | None] | None = None) -> list[list[Hit]]:
        """Each query's hits, best first (see `top_k`), with uids and boxes in the hits' pixels."""
        scores, numbers, which = self.top_k(queries, k, exclude)
        grid = self.index.grid
        out = []
        for qs, qn, qw in zip(scores, numbers, which, strict=True):
            hits = []
            for s, n, w in zip(qs, qn, qw, strict=True):
                if n < 0:
                    continue
                box = box_in_pixels(grid[w], self.index.size_of(int(n))) if w >= 0 else None
                hits.append(Hit(self.index.uid_of(int(n)), float(s), box, int(w), int(n)))
            out.append(hits)
        return out
