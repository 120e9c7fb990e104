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

from cluster.config import knn_metric

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


def _raise_hint(q: dict[str, float] | None, n: int, flag: str, option: str, method: str, max_eps: float) -> str:
    """What to try when (nearly) everything is noise. Where only some images have a neighbour within max_eps
    (OPTICS), their distances lie below it by construction, so a value from them would be lower than the one
    that failed: the advice is then to go above it, or to leave the option out (auto measures every image)."""
    if q is None or (q["finite"] < n and method == "optics"):
        above = f" above {max_eps:g}" if method == "optics" and np.isfinite(max_eps) else ""
        return (f"try {flag}{option}{above}, or leave {option.split()[0]} out: auto takes it from every image's "
                "neighbour distances")
    return f"try {flag}{option} near {q['q90']:.3g}"


def setting_warnings(labels: np.ndarray, *, method: str, max_eps: float, eps: float | None,
                     core_distances: np.ndarray | None = None, centred: bool = False) -> list[str]:
    """Sentences for a clustering that put (nearly) everything in the noise or in one cluster (module docstring).

    `centred`: the distances are those of the centred signatures, so the value to try goes with --centre (an
    explicit --max-eps alone would turn centring off: cluster/__main__.py)."""
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
    flag = "--centre " if centred else ""
    option = "--eps" if method == "dbscan" else "--max-eps (or --eps)"
    out = []
    if noise >= NOISE_SHARE:
        out.append(f"{noise:.0%} of the {n} images are noise: {threshold} is likely below these signatures' own "
                   f"distances; {_scale(q, n, threshold)}. {_raise_hint(q, n, flag, option, method, max_eps)}.")
    sizes = np.bincount(labels[labels >= 0]) if (labels >= 0).any() else np.zeros(0, np.int64)
    if len(sizes) and sizes.max() >= ONE_CLUSTER_SHARE * n:
        xi = ", or a smaller --xi" if method == "optics" else ""
        hint = (f"try {flag}{option} near {q['median']:.3g}{xi}" if q is not None else f"lower {option}")
        out.append(f"one cluster holds {int(sizes.max())} of the {n} images: {threshold} is likely above these "
                   f"signatures' own distances, so everything joins; {_scale(q, n, threshold)}. {hint}.")
    return out


# Thresholds derived from the signatures themselves (`cluster optics --max-eps auto`, `--eps auto`): measured on
# the demo collection (docs/clustering.md, "Settings from the data"), against its pattern groups:
# - OPTICS' max_eps: 1.5 x the 90th percentile of the min_samples-th neighbour distances. max_eps only cuts; the
#   xi extraction finds the valleys below it. A cluster needs its members' neighbour distances below max_eps, so
#   the value sits above (nearly) all of them; the margin of 1.5 lets in the border points, which a core point
#   reaches at a larger distance than their own nearest neighbour. Above it the labels no longer change on the demo
#   (2 x and inf give the same ARI), below it (1.0 x) they start to lose members. Capped (auto_thresholds) where
#   the 90th percentile is itself the distance of unrelated images (most images alone) or would make the radius
#   graph dense.
# - DBSCAN's eps: the 25th percentile. DBSCAN with min_samples 2 is single linkage cut at eps, which chains: at the
#   median and above it joined most of the demo into one or two clusters; the 25th percentile gave the best ARI of
#   5/10/20/25/30/40/50th on the trained signatures (centred 0.169, 0.08: 0.034).
MAX_EPS_QUANTILE = 0.9
MAX_EPS_FACTOR = 1.5
EPS_QUANTILE = 0.25
MIN_EPS = 1e-12  # scikit-learn's DBSCAN refuses eps 0 (signatures that are all duplicates); max_eps not below it
PAIR_SAMPLE = 20_000  # random pairs whose distance says how far apart unrelated images are
MAX_NEIGHBOURS = 200  # auto max_eps keeps the expected number of signatures within it below this (the radius
# graph at 6 bytes an edge: 1.2 KB a signature, 1.2 GB at a million, within the default memory budget)
PAIR_FACTOR = 0.5  # auto max_eps at most this times the median distance of random pairs
AUTO_SAMPLE = 5000  # queries whose neighbour distance is measured (against all rows): the percentiles of a sample


def neighbour_distances(x: np.ndarray, min_samples: int, metric: str, *, sample: int = AUTO_SAMPLE,
                        seed: int = 0) -> np.ndarray:
    """Each (sampled) row's distance to its min_samples-th neighbour, itself counted (OPTICS's core distance).

    Exact (data.knn, on the device, against all rows); for more than `sample` rows a seeded random sample of
    queries, whose percentiles are those of the whole within a percent or so: O(sample x n x d), never n².
    """
    from data.knn import knn

    n = len(x)
    k = min(min_samples, n) - 1  # the row itself is its own first neighbour, at distance 0
    if k < 1:
        return np.zeros(n)
    queries = None if n <= sample else np.sort(np.random.default_rng(seed).choice(n, sample, replace=False))
    dist, _ = knn(x, k, metric=knn_metric(metric), queries=queries)
    return dist[:, -1]


def random_pair_distances(x: np.ndarray, metric: str, *, pairs: int = PAIR_SAMPLE, seed: int = 0) -> np.ndarray:
    """Distances of a seeded sample of random pairs of rows, O(pairs x d): how far apart unrelated images are."""
    n = len(x)
    if n < 2:
        return np.zeros(0)
    rng = np.random.default_rng(seed)
    i, j = rng.integers(0, n, (2, pairs))
    i, j = i[i != j], j[i != j]
    a, b = np.asarray(x[i], np.float64), np.asarray(x[j], np.float64)
    if metric == "cosine":
        na, nb = np.linalg.norm(a, axis=1), np.linalg.norm(b, axis=1)
        return 1.0 - (a * b).sum(axis=1) / np.maximum(na * nb, 1e-300)
    return np.linalg.norm(a - b, axis=1)


def auto_thresholds(distances: np.ndarray, pair_distances: np.ndarray | None = None, n: int = 0) -> dict:
    """max_eps and eps from the neighbour distances (the rules above), with the distribution they came from.

    With `pair_distances` (`random_pair_distances`, how far apart unrelated images are), max_eps is also kept
    (a) at most PAIR_FACTOR x their median: a pair farther apart than half the distance between two unrelated
    images is no near-copy (this matters where most images are alone, so that the 90th percentile is itself the
    distance between unrelated images, and 1.5 times it would take in nearly every pair); and (b) at most the
    distance within which a signature has MAX_NEIGHBOURS others on average (the quantile MAX_NEIGHBOURS / n of
    the random pairs, for n > MAX_NEIGHBOURS), so that OPTICS's candidate pairs stay O(n), not O(n²). The
    `note:` says which of them capped it (`capped_by`)."""
    d = np.asarray(distances, np.float64)
    d = d[np.isfinite(d)]
    q10, q50, q90, q_eps = np.quantile(d, [0.1, 0.5, MAX_EPS_QUANTILE, EPS_QUANTILE]) if len(d) else [0.0] * 4
    rule = float(MAX_EPS_FACTOR * q90)
    caps: dict[str, float] = {}
    if pair_distances is not None and len(pair_distances):
        caps["unrelated"] = float(PAIR_FACTOR * np.median(pair_distances))
        if n > MAX_NEIGHBOURS:
            caps["sparsity"] = float(np.quantile(pair_distances, MAX_NEIGHBOURS / n))
    max_eps = max(min([rule, *caps.values()]), MIN_EPS)
    capped = [name for name, value in caps.items() if value < rule and value == max_eps]
    return {"q10": float(q10), "median": float(q50), "q90": float(q90), "measured": int(len(d)),
            "max_eps": max_eps, "eps": max(min(float(q_eps), max_eps), MIN_EPS), "caps": caps,
            "capped_by": capped[0] if capped else None,
            "rule": f"max_eps = {MAX_EPS_FACTOR:g} x the {MAX_EPS_QUANTILE * 100:.0f}th percentile (at most "
                    f"{PAIR_FACTOR:g} x the median distance of random pairs, and at most the distance within which a "
                    f"signature has {MAX_NEIGHBOURS} others on average), eps = the {EPS_QUANTILE * 100:.0f}th "
                    f"percentile of each signature's distance to its min_samples-th neighbour"}


def describe_auto(auto: dict, chosen: dict[str, float], *, centred: bool = False) -> str:
    """One stderr line: the distribution and the values chosen from it, saying whether it was measured on the
    centred signatures (their distances are not those of the raw signatures a user may have looked at)."""
    why = {"unrelated": f"{PAIR_FACTOR:g} x the median distance of random pairs",
           "sparsity": f"the distance within which a signature has about {MAX_NEIGHBOURS} others"}
    parts = []
    for name, value in chosen.items():
        capped = name == "max_eps" and auto.get("capped_by")
        parts.append(f"{name} {value:.4g} (auto" + (f", capped at {why[capped]}" if capped else "") + ")")
    values = ", ".join(parts)
    which = "centred signature" if centred else "signature"
    return (f"{values}: each {which}'s distance to its min_samples-th neighbour is {auto['q10']:.4g} / "
            f"{auto['median']:.4g} / {auto['q90']:.4g} (10th / 50th / 90th percentile, {auto['measured']} "
            f"signatures); {auto['rule']}.")
