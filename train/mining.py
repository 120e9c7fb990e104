"""Hard-negative mining: exact nearest neighbours that are not pattern mates.

For every image of a training connection we take the `num_negatives` images closest to it (cosine
similarity of the current signatures) in the whole negative pool, excluding the image itself and
every member of its pattern group (the POSITIVE component, joined with DUPLICATE edges, so a 2-hop
pattern mate or a duplicate scan of a mate is never a "negative" - the original's bug).

The search is exact and memory-bounded: queries are processed in blocks of `query_block` rows and
the gallery in blocks of `gallery_block` rows (a `lax.scan`), keeping a running top-k per query.
Peak device memory, for n gallery rows of dimension D stored in dtype bytes b:

    n * D * b                      (the gallery, resident)
  + query_block * gallery_block * 4 (one similarity tile, f32)
  + query_block * (k + gallery_block) * 8  (top-k merge buffers: values + indices)

For 1M x 2048 in bf16 with query_block=1024, gallery_block=32768: 4.1 GB + 134 MB + ~270 MB, i.e.
under 5 GB on one GPU; never an n x n matrix. Shapes are fixed per call (the gallery and query
count are padded to whole blocks), so one compilation serves every epoch.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from data.collection import NEGATIVE, POSITIVE, Collection
from data.graph import pattern_groups

_NEG_INF = -jnp.inf


def _round_up(x: int, m: int) -> int:
    return max(m, -(-x // m) * m)


@partial(jax.jit, static_argnames=("k", "gallery_block"))
def _knn_block(q, q_idx, q_group, gallery, g_group, g_ok, *, k: int, gallery_block: int):
    """Top-k gallery indices for one block of queries, excluding same-group and disallowed rows.

    q: (Bq, D); q_idx, q_group: (Bq,); gallery: (Ng, D) with Ng a multiple of gallery_block;
    g_group: (Ng,) int; g_ok: (Ng,) bool (False for padding and rows outside the negative pool).
    """
    bq = q.shape[0]
    nblocks = gallery.shape[0] // gallery_block
    gal = gallery.reshape(nblocks, gallery_block, -1)
    grp = g_group.reshape(nblocks, gallery_block)
    ok = g_ok.reshape(nblocks, gallery_block)
    offsets = jnp.arange(nblocks, dtype=jnp.int32) * gallery_block

    def body(carry, xs):
        best_v, best_i = carry
        g, gg, gok, off = xs
        sims = jnp.dot(q, g.T, preferred_element_type=jnp.float32)  # (Bq, Bg)
        idx = off + jnp.arange(gallery_block, dtype=jnp.int32)
        valid = gok[None, :] & (gg[None, :] != q_group[:, None]) & (idx[None, :] != q_idx[:, None])
        sims = jnp.where(valid, sims, _NEG_INF)
        v = jnp.concatenate([best_v, sims], axis=1)
        i = jnp.concatenate([best_i, jnp.broadcast_to(idx, (bq, gallery_block))], axis=1)
        top_v, pos = jax.lax.top_k(v, k)
        return (top_v, jnp.take_along_axis(i, pos, axis=1)), None

    init = (jnp.full((bq, k), _NEG_INF, jnp.float32), jnp.full((bq, k), -1, jnp.int32))
    (vals, idxs), _ = jax.lax.scan(body, init, (gal, grp, ok, offsets))
    return vals, idxs


def nearest_non_group(
    signatures: np.ndarray,
    queries: np.ndarray,
    group: np.ndarray,
    k: int,
    *,
    pool: np.ndarray | None = None,
    query_block: int = 1024,
    gallery_block: int = 32768,
    dtype=jnp.float32,
) -> tuple[np.ndarray, np.ndarray]:
    """Exact k nearest rows of `signatures` for each query index, skipping its own group.

    signatures: (n, D), rows assumed unit norm (cosine = dot). queries: (q,) row indices.
    group: (n,) int group id; rows with equal ids are never each other's neighbours (give
    ungrouped images distinct ids, e.g. `-1 - index`). pool: (n,) bool, rows allowed as
    neighbours (default all). Returns (indices (q, k) int64, similarities (q, k) float32);
    where fewer than k rows qualify, the index is -1 and the similarity -inf.
    Ties are broken towards the lower index (top_k is stable), so results are deterministic.
    """
    sig = np.asarray(signatures)
    n, _ = sig.shape
    queries = np.asarray(queries, dtype=np.int64)
    group = np.asarray(group, dtype=np.int64)
    if group.shape != (n,):
        raise ValueError(f"group must have shape ({n},), got {group.shape}")
    # Compact group ids to int32 without changing equality.
    _, group32 = np.unique(group, return_inverse=True)
    group32 = group32.astype(np.int32)
    pool = np.ones(n, bool) if pool is None else np.asarray(pool, bool)
    gallery_block = min(gallery_block, _round_up(n, 8))
    ng = _round_up(n, gallery_block)
    gal = np.zeros((ng, sig.shape[1]), sig.dtype)
    gal[:n] = sig
    g_group = np.full(ng, -1, np.int32)
    g_group[:n] = group32
    g_ok = np.zeros(ng, bool)
    g_ok[:n] = pool
    gal_d = jnp.asarray(gal, dtype=dtype)
    g_group_d, g_ok_d = jnp.asarray(g_group), jnp.asarray(g_ok)
    k_eff = min(k, ng)

    nq = len(queries)
    query_block = min(query_block, _round_up(max(nq, 1), 8))
    out_i = np.full((nq, k), -1, np.int64)
    out_v = np.full((nq, k), -np.inf, np.float32)
    for s in range(0, nq, query_block):
        qi = queries[s : s + query_block]
        m = len(qi)
        pad = np.zeros(query_block, np.int64)
        pad[:m] = qi
        qg = group32[pad]
        qg[m:] = -2  # padding rows: match nothing special; results discarded
        v, i = _knn_block(
            gal_d[pad], jnp.asarray(pad, jnp.int32), jnp.asarray(qg), gal_d, g_group_d, g_ok_d,
            k=k_eff, gallery_block=gallery_block,
        )
        v, i = np.asarray(v)[:m], np.asarray(i)[:m].astype(np.int64)
        i[~np.isfinite(v)] = -1
        out_i[s : s + m, :k_eff] = i
        out_v[s : s + m, :k_eff] = v
    return out_i, out_v


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
    gallery_block: int = 32768,
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
