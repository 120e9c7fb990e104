"""Does a clustering setting fit the signatures? Warnings for results that say the setting is off.

A setting tuned on one network's signatures can be meaningless on another's: after fine-tuning, a user's
183 images had every cosine distance below 0.02, while the defaults are max_eps 0.13 (OPTICS) and eps 0.08
(DBSCAN): DBSCAN put every image in one cluster, and nothing said so. A result where (nearly) every image is
noise, or one cluster holds (nearly) every image, almost always means the distance thresholds sit outside the
signatures' own scale. So, after clustering: such a result is named, with the distances that would have
mattered (each image's distance to its min_samples-th neighbour, OPTICS's core distance, as quantiles), and
what to try. Pure functions: the CLI prints what `setting_warnings` returns.
"""

from __future__ import annotations

import numpy as np

NOISE_SHARE = 0.9  # at least this share of images noise: the thresholds are below the signatures' distances
ONE_CLUSTER_SHARE = 0.9  # one cluster holds at least this share of all images: the thresholds are above them
MIN_IMAGES = 20  # smaller sets are often legitimately all noise or one group


def distance_quantiles(core_distances: np.ndarray | None) -> dict[str, float] | None:
    """Quantiles 10/50/90 of the finite core distances (inf: farther than max_eps), or None when none is finite."""
    if core_distances is None:
        return None
    finite = np.asarray(core_distances, np.float64)
    finite = finite[np.isfinite(finite)]
    if not len(finite):
        return None
    q = np.quantile(finite, [0.1, 0.5, 0.9])
    return {"q10": float(q[0]), "median": float(q[1]), "q90": float(q[2]), "finite": int(len(finite))}


def _scale(q: dict[str, float] | None, n: int, threshold: str) -> str:
    if q is None:
        return f"every image's min_samples-th neighbour lies beyond {threshold}"
    share = "" if q["finite"] == n else f" (of the {q['finite']} of {n} images that have one within {threshold})"
    return (f"the distance to each image's min_samples-th neighbour{share} is {q['q10']:.4g} / {q['median']:.4g} / "
            f"{q['q90']:.4g} (10th / 50th / 90th percentile)")


def setting_warnings(labels: np.ndarray, *, method: str, max_eps: float, eps: float | None,
                     core_distances: np.ndarray | None = None) -> list[str]:
    """Sentences for a clustering that put (nearly) everything in the noise or in one cluster (module docstring)."""
    labels = np.asarray(labels)
    n = len(labels)
    if n < MIN_IMAGES:
        return []
    q = distance_quantiles(core_distances)
    if method == "dbscan":
        threshold = f"eps {eps:g}"
    elif method == "hdbscan":
        threshold = "--min-samples"
    else:
        threshold = f"max_eps {max_eps:g}" if np.isfinite(max_eps) else "max_eps"
    noise = float((labels < 0).mean())
    out = []
    if noise >= NOISE_SHARE:
        hint = (f"try --max-eps (or --eps) near {q['q90']:.3g}" if q is not None else
                "raise --max-eps (or --eps), or look at the signatures' distances")
        out.append(f"{noise:.0%} of the {n} images are noise: {threshold} is likely below these signatures' own "
                   f"distances; {_scale(q, n, threshold)}. {hint}.")
    sizes = np.bincount(labels[labels >= 0]) if (labels >= 0).any() else np.zeros(0, np.int64)
    if len(sizes) and sizes.max() >= ONE_CLUSTER_SHARE * n:
        hint = (f"try --max-eps (or --eps) near {q['median']:.3g}, or a smaller --xi" if q is not None else
                "lower --max-eps (or --eps)")
        out.append(f"one cluster holds {int(sizes.max())} of the {n} images: {threshold} is likely above these "
                   f"signatures' own distances, so everything joins; {_scale(q, n, threshold)}. {hint}.")
    return out
