"""Hard-negative mining: exact nearest neighbours that are not pattern mates.

For every image of a training connection we take the `num_negatives` images closest to it (cosine
similarity of the current signatures) in the whole negative pool, excluding the image itself and
every member of its pattern group (the POSITIVE component, joined with DUPLICATE edges, so a 2-hop
pattern mate or a duplicate scan of a mate is never a "negative" - the original's bug).

The search is `data.knn.knn` (cosine, `exclude_groups` = the pattern group, `allowed` = the pool): the
device keeps the gallery resident and runs fixed-shape tiles of `query_block` x `gallery_block` rows with a
running top-(k + margin) per query; the host rechecks the candidates in float64 and certifies them (rows that
fail the certificate are recomputed exactly), so the negatives ARE the float64 brute force, ties going to the
smaller index, and mining is deterministic (bit-identical resume relies on it). Peak device memory, for n
gallery rows of dimension D stored in `dtype` with b bytes:

    n * (D + 8) * b                                    (the gallery, resident, with its bias column)
  + query_block * gallery_block * 4                    (one similarity tile, f32)
  + query_block * (k + margin + gallery_block) * 8     (top-k merge buffers: values + indices, at most)

For 1M x 2048 in float32 with 1024 x 8192 tiles: 8.2 GB + 34 MB + ~70 MB (bfloat16 would halve the gallery
but fails data.knn's certificate on most rows of archive-like signatures: see its docstring): never an n x n
matrix. Host memory beyond the signatures (a np.memmap is read in row chunks): O(q * k) for
the result plus fixed-size chunks. Shapes are fixed per call (the gallery and query count are padded to whole
blocks), so one compilation serves every epoch.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from data.collection import NEGATIVE, POSITIVE, Collection
from data.graph import pattern_groups


def nearest_non_group(
    signatures: np.ndarray,
    queries: np.ndarray,
    group: np.ndarray,
    k: int,
    *,
    pool: np.ndarray | None = None,
    query_block: int = 1024,
    gallery_block: int = 8192,
    dtype="float32",
) -> tuple[np.ndarray, np.ndarray]:
    """Exact k nearest rows of `signatures` for each query index, skipping its own group.

    signatures: (n, D) (float16/float32, a np.memmap is fine), compared by cosine similarity.
    queries: (q,) row indices. group: (n,) int group id; rows with equal ids are never each other's
    neighbours (give ungrouped images distinct ids, e.g. `-1 - index`). pool: (n,) bool, rows allowed as
    neighbours (default all). Returns (indices (q, k) int64, similarities (q, k) float32, 1 - the float64
    cosine distance); where fewer than k rows qualify, the index is -1 and the similarity -inf.
    Ties are broken towards the lower index, so results are deterministic. A tile is query_block x
    gallery_block rows; dtype: the device copy of the gallery ("float32", "bfloat16", "float16").
    """
    from data.knn import knn

    group = np.asarray(group)
    n = len(signatures)
    if group.shape != (n,):
        raise ValueError(f"group must have shape ({n},), got {group.shape}")
    dist, idx = knn(signatures, k, metric="cosine", block=query_block, gallery_block=gallery_block,
                    queries=np.asarray(queries, np.int64), exclude_groups=group, allowed=pool,
                    dtype=np.dtype(dtype).name)
    sims = np.where(idx >= 0, 1.0 - dist, -np.inf).astype(np.float32)
    return idx, sims


@dataclass(frozen=True)
class MiningInputs:
    """What mining needs, as index arrays over the collection's images (images.csv order).

    positives: (P, 2) training POSITIVE connections; group: (n,) pattern-group id (POSITIVE
    components joined by DUPLICATE edges; ungrouped images get unique ids); negatives: (Q, 2)
    annotated NEGATIVE pairs usable in training; pool: (n,) bool, images allowed as negatives.
    """

    positives: np.ndarray
    group: np.ndarray
    negatives: np.ndarray
    pool: np.ndarray


def mining_inputs(
    collection: Collection,
    split_of: Mapping[str, str],
    *,
    train_split: str = "train",
    skipped: Sequence[str] = (),
    train_connections: Sequence | None = None,
) -> MiningInputs:
    """Build MiningInputs from a collection and its split assignment (uid -> split name).

    The negative pool is every image that is not assigned to another split: training images and
    unconnected distractors. Images of val/test groups are kept out of training entirely, even as
    negatives, so that training never pushes anything away from a held-out image (a leak into the
    held-out metrics). `skipped` (unreadable images) are out of the pool too. `train_connections`:
    the POSITIVE connections training may use (`SplitAssignment.connections("train")`); default:
    every POSITIVE connection with both ends in the train split.
    """
    uids = collection.uids
    index = {u: i for i, u in enumerate(uids)}
    n = len(uids)
    groups = pattern_groups(collection, with_duplicates=True)
    names = {name: j for j, name in enumerate(sorted(set(groups.values())))}
    group = -1 - np.arange(n, dtype=np.int64)
    for u, name in groups.items():
        group[index[u]] = names[name]
    bad = set(skipped)
    pool = np.array([(split_of.get(u, train_split) == train_split) and u not in bad for u in uids], bool)

    def usable(c) -> bool:
        return c.a in index and c.b in index and c.a != c.b and c.a not in bad and c.b not in bad

    source = collection.connections if train_connections is None else train_connections
    pos = sorted(
        {tuple(sorted((index[c.a], index[c.b])))
         for c in source
         if c.type == POSITIVE and usable(c)
         and split_of.get(c.a) == train_split and split_of.get(c.b) == train_split}
    )
    neg = sorted(
        {tuple(sorted((index[c.a], index[c.b])))
         for c in collection.connections
         if c.type == NEGATIVE and usable(c) and pool[index[c.a]] and pool[index[c.b]]
         and group[index[c.a]] != group[index[c.b]]}  # a contradicted NEGATIVE (same group) is not used
    )
    return MiningInputs(
        positives=np.asarray(pos, np.int64).reshape(-1, 2),
        group=group,
        negatives=np.asarray(neg, np.int64).reshape(-1, 2),
        pool=pool,
    )


def mine_triplets(
    signatures: np.ndarray,
    inputs: MiningInputs,
    *,
    num_negatives: int = 10,
    query_block: int = 1024,
    gallery_block: int = 8192,
) -> np.ndarray:
    """Triplets (anchor, positive, negative) as an (M, 3) int64 array of collection indices.

    For each training connection (a, b) and each end x in {a, b} with partner p: the
    `num_negatives` nearest pool images to x outside x's group give triplets (x, p, c). Every
    annotated NEGATIVE pair (x, y) gives (x, p, y) for each training partner p of x, and
    symmetrically for y: the annotators' negatives are always used. Rows are sorted, so the
    result depends only on the signatures and the inputs.
    """
    pos = inputs.positives
    if len(pos) == 0:
        raise ValueError("no training POSITIVE connections: nothing to train on (check the splits)")
    anchors = np.unique(pos.reshape(-1))
    nn, _ = nearest_non_group(
        signatures, anchors, inputs.group, num_negatives, pool=inputs.pool,
        query_block=query_block, gallery_block=gallery_block,
    )
    neg_of = {int(a): [int(c) for c in row if c >= 0] for a, row in zip(anchors, nn, strict=True)}
    partners: dict[int, list[int]] = {}
    for a, b in pos:
        partners.setdefault(int(a), []).append(int(b))
        partners.setdefault(int(b), []).append(int(a))
    rows: set[tuple[int, int, int]] = set()
    for x, ps in partners.items():
        for p in ps:
            for c in neg_of[x]:
                rows.add((x, p, c))
    for x, y in inputs.negatives:
        for s, t in ((int(x), int(y)), (int(y), int(x))):
            for p in partners.get(s, ()):
                rows.add((s, p, t))
    return np.asarray(sorted(rows), np.int64).reshape(-1, 3)
