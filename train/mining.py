"""Hard-negative mining: exact nearest neighbours that are not pattern mates.

For every image of a training connection we take the `num_negatives` images closest to it (cosine
similarity of the current signatures) in the whole negative pool, excluding the image itself and
every member of its pattern group (the POSITIVE component, joined with DUPLICATE edges, so a 2-hop
pattern mate or a duplicate scan of a mate is never a "negative" - the original's bug).

Annotated NEGATIVE pairs (the expert's "confirm, reject the rest", "wrong cluster") are mining CANDIDATES
with a bounded share, not extra triplets: every (anchor, partner) gets exactly `num_negatives` triplets
whatever the number of annotated negatives; an anchor with annotated negatives fills up to
`annotated_share` of its slots (at least one) with them, hardest first by the current signatures,
rotating through them from epoch to epoch when there are more than slots; the rest are mined as above.
So the steps per epoch depend on the POSITIVE pairs only (`planned_triplets` counts them without
signatures). Before, each annotated pair added one triplet per partner of each end: 414 annotated
negatives turned 4 steps per epoch into 210.

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

import math
from collections.abc import Container, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from data.collection import POSITIVE, Collection
from data.graph import pattern_groups
from data.splits import usable_negatives


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
    neg = sorted({tuple(sorted((index[a], index[b])))
                  for a, b in usable_negatives(collection, split_of, train_split=train_split, skipped=bad,
                                                   groups=groups)})
    return MiningInputs(
        positives=np.asarray(pos, np.int64).reshape(-1, 2),
        group=group,
        negatives=np.asarray(neg, np.int64).reshape(-1, 2),
        pool=pool,
    )


def annotated_slots(num_negatives: int, share: float, available: int) -> int:
    """How many of an anchor's `num_negatives` slots its `available` annotated negatives fill.

    floor(share * num_negatives), at least one when the anchor has any (and share > 0), at most
    `available`; share 0 turns annotated negatives off (they are then ordinary pool images).
    """
    if available <= 0 or share <= 0:
        return 0
    return min(available, num_negatives, max(1, math.floor(share * num_negatives + 1e-9)))


def _partners(pos: np.ndarray) -> dict[int, list[int]]:
    partners: dict[int, list[int]] = {}
    for a, b in pos:
        partners.setdefault(int(a), []).append(int(b))
        partners.setdefault(int(b), []).append(int(a))
    return partners


def _annotated_of(negatives: np.ndarray, anchors: Container[int]) -> dict[int, list[int]]:
    """anchor -> its annotated NEGATIVE partners (both ends of each pair), sorted, for the anchors given."""
    out: dict[int, set[int]] = {}
    for x, y in negatives:
        for s, t in ((int(x), int(y)), (int(y), int(x))):
            if s in anchors:
                out.setdefault(s, set()).add(t)
    return {s: sorted(ts) for s, ts in out.items()}


def _annotated_window(signatures: np.ndarray, x: int, cands: list[int], slots: int, epoch: int) -> list[int]:
    """`slots` of x's annotated negatives: all of them if they fit, else a window of the hardest-first ranking
    (float64 cosine to x by the current signatures, ties to the smaller index) that moves on by `slots` each
    epoch, so that over ceil(len / slots) epochs every one is used."""
    if len(cands) <= slots:
        return list(cands)
    from data.knn import exact_distances

    dist = exact_distances(signatures, [x], [cands])[0]  # float64 cosine distances, the project's reference
    ranked = [cands[i] for i in np.lexsort((np.asarray(cands), dist))]  # nearest first, ties: smaller index
    start = (epoch * slots) % len(ranked)
    return [ranked[(start + t) % len(ranked)] for t in range(slots)]


def mine_triplets(
    signatures: np.ndarray,
    inputs: MiningInputs,
    *,
    num_negatives: int = 10,
    annotated_share: float = 0.5,
    epoch: int = 0,
    query_block: int = 1024,
    gallery_block: int = 8192,
) -> np.ndarray:
    """Triplets (anchor, positive, negative) as an (M, 3) int64 array of collection indices.

    For each training connection (a, b) and each end x in {a, b} with partner p, x gets exactly
    `num_negatives` negatives c, the same for each of its partners, giving triplets (x, p, c):
    - annotated NEGATIVE pairs are candidates, with a bounded share: if x has m annotated negatives, the
      first s = `annotated_slots(num_negatives, annotated_share, m)` slots (at least one, at most
      floor(share * num_negatives)) take them, hardest first (cosine by the current signatures); when
      m > s, the window of s moves on through the ranking with `epoch` (deterministic: a resumed run
      mines the same), so every annotated negative comes round;
    - the other slots take the nearest pool images outside x's group, as always (skipping the chosen
      annotated ones).
    So the triplets per epoch are sum over anchors of partners x min(num_negatives, pool images outside
    the anchor's group) (`planned_triplets`): they depend on the POSITIVE pairs only, never on how many
    NEGATIVE pairs were annotated (before, each annotated pair gave one more triplet per partner: 414 of
    them turned 4 steps per epoch into 210). Rows are sorted, so the result depends only on the
    signatures, the inputs and `epoch`.
    """
    pos = inputs.positives
    if len(pos) == 0:
        raise ValueError("no training POSITIVE connections: nothing to train on (check the splits)")
    anchors = np.unique(pos.reshape(-1))
    nn, _ = nearest_non_group(
        signatures, anchors, inputs.group, num_negatives, pool=inputs.pool,
        query_block=query_block, gallery_block=gallery_block,
    )
    partners = _partners(pos)
    annotated = _annotated_of(inputs.negatives, partners)
    rows: list[tuple[int, int, int]] = []
    for x, row in zip(anchors, nn, strict=True):
        x = int(x)
        cands = annotated.get(x, [])
        chosen = _annotated_window(signatures, x, cands,
                                   annotated_slots(num_negatives, annotated_share, len(cands)), epoch)
        taken = set(chosen)
        mined = [int(c) for c in row if c >= 0 and int(c) not in taken][:num_negatives - len(chosen)]
        rows.extend((x, p, c) for p in partners[x] for c in chosen + mined)
    return np.asarray(sorted(rows), np.int64).reshape(-1, 3)


def planned_triplets(inputs: MiningInputs, num_negatives: int) -> int:
    """The number of triplets `mine_triplets` returns for `inputs`, without signatures: each anchor's
    partners x min(num_negatives, pool images outside its group). It fixes the steps per epoch."""
    pos = inputs.positives
    if len(pos) == 0:
        return 0
    group = np.asarray(inputs.group)
    pool = np.asarray(inputs.pool, bool)
    in_pool_by_group: dict[int, int] = {}
    for g in group[pool]:
        in_pool_by_group[int(g)] = in_pool_by_group.get(int(g), 0) + 1
    total_pool = int(pool.sum())
    partners = _partners(pos)
    return sum(len(ps) * min(num_negatives, total_pool - in_pool_by_group.get(int(group[x]), 0))
               for x, ps in partners.items())
