"""Retrieval metrics: rank the whole collection for each query and score where its partners land.

A query is an image of the chosen split that has at least one *partner*: another image of its
pattern group (POSITIVE component, joined by DUPLICATE edges - a duplicate scan of a mate shows
the same artwork) that is present in the gallery. The gallery is the whole collection minus the
query itself (and minus images without a signature).

Standard definitions (what we report as the headline numbers):
- `recall@k`: the fraction of a query's partners found in its top k, averaged over queries;
- `hit@k`: the fraction of queries with at least one partner in the top k;
- `mAP`: mean over queries of AP = (1/m) * sum_i i / r_i over ALL m partners at 1-based ranks r_i;
- `median_first_rank`: median over queries of the rank of the best-ranked partner.

Thesis-style numbers (as the original system computed the thesis's figures), kept under their own names
because they differ:
- `thesis_mAP`: AP computed on the top-`cutoff` (400) list only, dividing by the number of partners
  found there (h), not by all partners: a query with one hit at rank 1 out of ten partners scores 1.0
  instead of 0.1. A query with no hit in the list scores 0.
- `thesis_mean_position` / `thesis_median_position`: mean / median over all (query, partner) pairs
  of the partner's rank, with partners beyond the cutoff counted as `cutoff` (so they are capped,
  optimistic); `thesis_min_position`: mean over queries of the best such position.
- `thesis_recall@k` for k in 20, 50, 100, 200, 400: same as our recall@k, at the thesis's cut-offs.

Ranks treat ties optimistically against non-partners (rank = 1 + number of strictly more similar
gallery images) and break ties among partners by order, so ranks of one query are strictly increasing.
The similarity work runs on the accelerator in fixed-shape tiles of `block` queries x a gallery block
(float32 products of the rows as given; signatures are unit rows, so this is the cosine similarity): one
pass over the gallery picks each partner's similarity out of its tile, a second counts, per partner, the
gallery rows strictly more similar. Device memory beyond the rows: O(block * gallery block * partners),
never block x n, so a million-image gallery is scored in the memory of a few tiles.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from functools import cache

import jax
import jax.numpy as jnp
import numpy as np

from data.knn import row_setter, similarity_tile

RECALL_KS = (1, 5, 10, 20, 50, 100)
THESIS_KS = (20, 50, 100, 200, 400)
THESIS_CUTOFF = 400


_TILE_ELEMENTS = 1 << 24  # block x gallery block x partners compared at once (a 16 MB bool tile)


@cache
def _rank_fns(gblock: int):
    """jit pair: (partner similarities, counts of strictly more similar rows) of one query block, scanning
    the gallery in blocks of `gblock` rows; the same tile arithmetic in both, so a partner is never counted
    as more similar than itself."""
    def tiles(gallery, g_ok):
        nb = gallery.shape[0] // gblock
        return (gallery.reshape(nb, gblock, -1), g_ok.reshape(nb, gblock),
                jnp.arange(nb, dtype=jnp.int32) * gblock)

    def masked(q, q_idx, g, gok, off):
        cols = off + jnp.arange(gblock, dtype=jnp.int32)
        sims = similarity_tile(q, None, g, None, "cosine")
        return jnp.where(gok[None, :] & (cols[None, :] != q_idx[:, None]), sims, -jnp.inf)

    @jax.jit
    def partner_sims(q, q_idx, partners, gallery, g_ok):
        def body(acc, xs):
            g, gok, off = xs
            sims = masked(q, q_idx, g, gok, off)
            local = partners - off
            inside = (local >= 0) & (local < gblock)
            got = jnp.take_along_axis(sims, jnp.clip(local, 0, gblock - 1), axis=1)
            return jnp.where(inside, got, acc), None

        init = jnp.full(partners.shape, -jnp.inf, jnp.float32)
        return jax.lax.scan(body, init, tiles(gallery, g_ok))[0]

    @jax.jit
    def greater(q, q_idx, psims, gallery, g_ok):
        def body(acc, xs):
            g, gok, off = xs
            sims = masked(q, q_idx, g, gok, off)
            return acc + jnp.sum(sims[:, None, :] > psims[:, :, None], axis=2, dtype=jnp.int32), None

        return jax.lax.scan(body, jnp.zeros(psims.shape, jnp.int32), tiles(gallery, g_ok))[0]

    return partner_sims, greater


def _gallery_block(block: int, width: int, n: int) -> int:
    """Gallery rows per tile: block x rows x partners at most about _TILE_ELEMENTS, the n rows split into
    tiles of (nearly) equal size, a multiple of 8, so that padding adds little work."""
    rows = max(8, _TILE_ELEMENTS // max(1, block * width))
    tiles = -(-max(n, 1) // rows)
    per_tile = -(-max(n, 1) // tiles)
    return -(-per_tile // 8) * 8


def _device_gallery(signatures, rows: int):
    """The signatures on the device as float32, zero padded to whole gallery blocks, copied one tile of rows
    at a time into a donated buffer (host memory O(tile), device memory the gallery once)."""
    n, d = signatures.shape
    n_pad = -(-max(n, 1) // rows) * rows
    gallery = jnp.zeros((n_pad, d), jnp.float32)
    put = row_setter()
    for s in range(0, n, rows):
        chunk = np.zeros((rows, d), np.float32)
        chunk[: min(n, s + rows) - s] = signatures[s : s + rows]
        gallery = put(gallery, jnp.asarray(chunk), s)
    return gallery


def partner_ranks(
    signatures: np.ndarray,
    queries: np.ndarray,
    partners: Sequence[Sequence[int]],
    *,
    gallery_ok: np.ndarray | None = None,
    block: int = 1024,
) -> list[np.ndarray]:
    """For each query index, the sorted, strictly increasing 1-based ranks of its partners.

    signatures may be a np.memmap (float16 or float32); it is copied to the device once, in row chunks.
    """
    n = signatures.shape[0]
    width = max(1, max((len(p) for p in partners), default=1))
    width = 1 << (width - 1).bit_length()  # a power of two: few distinct shapes, few compilations
    queries = np.asarray(queries, np.int64)
    block = min(block, max(8, -(-len(queries) // 8) * 8))
    gblock = _gallery_block(block, width, n)
    gallery = _device_gallery(signatures, gblock)
    ok = np.zeros(gallery.shape[0], bool)
    ok[:n] = True if gallery_ok is None else np.asarray(gallery_ok, bool)
    ok = jnp.asarray(ok)
    partner_sims, greater = _rank_fns(gblock)
    out: list[np.ndarray] = []
    for s in range(0, len(queries), block):
        qi = queries[s : s + block]
        m = len(qi)
        pad_q = np.zeros(block, np.int32)
        pad_q[:m] = qi
        pad_p = np.full((block, width), -1, np.int32)
        for r, p in enumerate(partners[s : s + m]):
            pad_p[r, : len(p)] = p
        q, q_idx = gallery[pad_q], jnp.asarray(pad_q)
        psims = partner_sims(q, q_idx, jnp.asarray(pad_p), gallery, ok)
        ranks = np.asarray(greater(q, q_idx, psims, gallery, ok)).astype(np.int64) + 1
        for r in range(m):
            out.append(_strictly_increasing(np.sort(ranks[r, : len(partners[s + r])])))
    return out


def _strictly_increasing(r: np.ndarray) -> np.ndarray:
    """Break ties among partners: the i-th partner is at least one place after the (i-1)-th."""
    r = r.copy()
    for i in range(1, len(r)):
        r[i] = max(r[i], r[i - 1] + 1)
    return r


def summarize_ranks(
    ranks: Sequence[np.ndarray],
    *,
    ks: Sequence[int] = RECALL_KS,
    thesis_ks: Sequence[int] = THESIS_KS,
    cutoff: int = THESIS_CUTOFF,
) -> dict[str, float]:
    """Pure aggregation of per-query partner ranks (each sorted ascending, 1-based) into metrics."""
    ranks = [np.asarray(r, np.float64) for r in ranks if len(r)]
    out: dict[str, float] = {"num_queries": float(len(ranks))}
    if not ranks:
        return out
    for k in ks:
        out[f"recall@{k}"] = float(np.mean([np.mean(r <= k) for r in ranks]))
        out[f"hit@{k}"] = float(np.mean([r[0] <= k for r in ranks]))
    aps = [float(np.mean(np.arange(1, len(r) + 1) / r)) for r in ranks]
    out["mAP"] = float(np.mean(aps))
    out["median_first_rank"] = float(np.median([r[0] for r in ranks]))
    out["mean_first_rank"] = float(np.mean([r[0] for r in ranks]))
    t_aps = []
    for r in ranks:
        hits = r[r <= cutoff]
        t_aps.append(float(np.mean(np.arange(1, len(hits) + 1) / hits)) if len(hits) else 0.0)
    out["thesis_mAP"] = float(np.mean(t_aps))
    capped = [np.minimum(r, cutoff) for r in ranks]
    pooled = np.concatenate(capped)
    out["thesis_mean_position"] = float(np.mean(pooled))
    out["thesis_median_position"] = float(np.median(pooled))
    out["thesis_min_position"] = float(np.mean([c[0] for c in capped]))
    for k in thesis_ks:
        out[f"thesis_recall@{k}"] = float(np.mean([np.mean(r <= k) for r in ranks]))
    return out


def split_queries(
    uids: Sequence[str],
    group: Mapping[str, str],
    split_of: Mapping[str, str],
    split: str,
    present: np.ndarray | None = None,
) -> tuple[np.ndarray, list[list[int]]]:
    """Queries of `split` (grouped images of that split) and their partners, as row indices.

    uids: the rows of the signature matrix; group: uid -> pattern-group name; present: rows
    that are usable (default all). Queries without any present partner are dropped.
    """
    present = np.ones(len(uids), bool) if present is None else present
    members: dict[str, list[int]] = {}
    for i, u in enumerate(uids):
        if u in group and present[i]:
            members.setdefault(group[u], []).append(i)
    queries, partners = [], []
    for i, u in enumerate(uids):
        if u in group and present[i] and split_of.get(u) == split:
            p = [j for j in members[group[u]] if j != i]
            if p:
                queries.append(i)
                partners.append(p)
    return np.asarray(queries, np.int64), partners


def evaluate_split(
    signatures: np.ndarray,
    uids: Sequence[str],
    group: Mapping[str, str],
    split_of: Mapping[str, str],
    split: str,
    *,
    block: int = 1024,
) -> dict[str, float]:
    """All metrics for the queries of one split, ranking the whole collection (signature rows)."""
    queries, partners = split_queries(uids, group, split_of, split)
    if len(queries) == 0:
        return {"num_queries": 0.0}
    return summarize_ranks(partner_ranks(signatures, queries, partners, block=block))


# -- which signatures a score covers (`python -m train evaluate`) -------------------------------------------


class SignatureCoverageError(ValueError):
    """Signatures that cannot be scored against a collection; the message names the file and what to do."""


def _first(uids: Sequence[str], k: int = 5) -> str:
    return ", ".join(repr(u) for u in uids[:k]) + (", ..." if len(uids) > k else "")


def match_collection(sig, collection, path, *, ignore_unknown: bool = False):
    """(signatures to score, warnings) of a signatures file against the collection it is scored on.

    Why: the figures rank the images that have a signature. Signatures of another collection scored 0
    queries with exit 0; uids that are not in the collection would be ranked as images without a pattern
    group (the rule of `cluster evaluate`: refused, or left out with `ignore_unknown`); signatures of part
    of the collection rank each query among that part only, so their figures are higher than a run's
    eval.json (whole collection) and are scored with a warning that says so. Unreadable images listed in
    the file's `skipped` count as covered (a run's own evaluation lacks them too).
    """
    from data.signatures import Signatures

    known = set(collection.uids)
    unknown = [u for u in sig.uids if u not in known]
    if len(unknown) == len(sig.uids):
        raise SignatureCoverageError(
            f"{path}: none of its {len(sig.uids)} uids is in {collection.images_file} (first: {_first(sig.uids)}): "
            f"these are signatures of another collection. Pass the collection they were computed on, or embed "
            f"this one: `python -m model embed --collection {collection.root} ...`.")
    notes = []
    if unknown:
        if not ignore_unknown:
            raise SignatureCoverageError(
                f"{path}: {len(unknown)} uid(s) are not in {collection.images_file} ({_first(unknown)}); they would "
                f"be ranked as images without a pattern group. Were the signatures computed on another collection "
                f"(or before rows were removed)? To score the other images only, pass --ignore-unknown.")
        keep = np.array([u in known for u in sig.uids])
        sig = Signatures(uids=[u for u in sig.uids if u in known], vectors=sig.vectors[keep],
                         skipped=[u for u in sig.skipped if u in known], meta=sig.meta)
        notes.append(f"{path}: left out {len(unknown)} uid(s) that are not in the collection: {_first(unknown, 20)}")
    covered = known & (set(sig.uids) | set(sig.skipped))
    if len(covered) < len(known):
        notes.append(
            f"{path} covers {len(covered)} of the {len(known)} images of {collection.images_file}: each query is "
            f"ranked among these {len(sig.uids)} signatures only and partners without one are not counted, so the "
            f"figures are not comparable with a run's eval.json (the whole collection ranked). Embed the whole "
            f"collection (`python -m model embed`) for comparable figures.")
    return sig, notes
