"""The compound hinge loss of the original system (the EPFL thesis "Semi-supervised Clustering of Visual Signatures of Artworks", 2022).

For a triplet (A anchor, B positive, C negative) with d(x, y) = 1 - cos(x, y):

    l = max(0, d(A,B) - min(d(A,C), d(B,C)) + margin + max(0, d(A,B) - beta))

`swap` chooses the min over both negative distances (the "distance swap": the harder of
A-C and B-C counts); without it only d(A,C) is used. `intra` adds the inner hinge, which keeps
pushing A and B together until they are closer than `beta`, even once the triplet margin is met.
The original summed over the batch (`reduction="sum"`); with the thesis's batch of 4 this is
just a rescaled mean, but it matters for larger batches: the gradient grows with the batch size.

Inputs need not be unit norm: rows are L2-normalised here (cosine is scale free), with a
small epsilon so that a zero row gives distance 1 instead of NaN.
"""

from __future__ import annotations

import jax.numpy as jnp

REDUCTIONS = ("sum", "mean", "none")
_EPS = 1e-12


def _unit(x: jnp.ndarray) -> jnp.ndarray:
    x = x.astype(jnp.float32)
    return x / jnp.sqrt(jnp.maximum(jnp.sum(x * x, axis=-1, keepdims=True), _EPS))


def cosine_distance(x: jnp.ndarray, y: jnp.ndarray) -> jnp.ndarray:
    """Row-wise 1 - cos(x_i, y_i) for (N, D) arrays; returns (N,) float32."""
    return 1.0 - jnp.sum(_unit(x) * _unit(y), axis=-1)


def compound_hinge_loss(
    a: jnp.ndarray,
    b: jnp.ndarray,
    c: jnp.ndarray,
    *,
    margin: float = 0.01,
    beta: float = 0.1,
    swap: bool = True,
    intra: bool = True,
    reduction: str = "sum",
) -> jnp.ndarray:
    """Compound hinge loss over N triplets given as three (N, D) signature arrays.

    Returns a scalar for "sum"/"mean", or the (N,) per-triplet losses for "none". Computed in
    float32 whatever the input dtype (bf16 distances near 0 would round the margin away).
    """
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
    if not (a.shape == b.shape == c.shape) or a.ndim != 2:
        raise ValueError(f"a, b, c must be (N, D) arrays of one shape; got {a.shape}, {b.shape}, {c.shape}")
    d_ab = cosine_distance(a, b)
    d_neg = cosine_distance(a, c)
    if swap:
        d_neg = jnp.minimum(d_neg, cosine_distance(b, c))
    inner = d_ab - d_neg + margin
    if intra:
        inner = inner + jnp.maximum(0.0, d_ab - beta)
    per = jnp.maximum(0.0, inner)
    if reduction == "sum":
        return jnp.sum(per)
    if reduction == "mean":
        return jnp.mean(per)
    return per


def in_batch_hardest_loss(
    a: jnp.ndarray,
    b: jnp.ndarray,
    c: jnp.ndarray,
    groups: jnp.ndarray,
    *,
    margin: float = 0.01,
    beta: float = 0.1,
    swap: bool = True,
    intra: bool = True,
    reduction: str = "sum",
) -> jnp.ndarray:
    """The compound hinge with, for each triplet, the hardest negative found in the whole batch.

    groups: (3, N) int pattern-group ids of A, B and C (ungrouped images: unique ids). For anchor i
    every image of the batch (any A, B or C) whose group differs from A_i's is a candidate; the one
    most similar to A_i replaces C_i. Under data parallelism pass the all-gathered global batch: the
    hardest negative of 4 images is rarely hard, of 4 x devices images more often. An anchor with no
    candidate keeps its mined C_i.
    """
    pool = jnp.concatenate([a, b, c], axis=0)
    pool_g = groups.reshape(-1)
    sims = _unit(a) @ _unit(pool).T  # (N, 3N)
    ok = pool_g[None, :] != groups[0][:, None]
    sims = jnp.where(ok, sims, -jnp.inf)
    j = jnp.argmax(sims, axis=1)
    hard = jnp.where(jnp.any(ok, axis=1)[:, None], pool[j], c)
    return compound_hinge_loss(a, b, hard, margin=margin, beta=beta, swap=swap, intra=intra, reduction=reduction)
