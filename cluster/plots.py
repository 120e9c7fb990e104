"""The reachability plot: reachability in OPTICS order, one bar per point, coloured by cluster.

Valleys are clusters; bars at the top (inf, drawn at the plot's ceiling and hatched) are points no
earlier point reached within max_eps. Noise is grey. Pure matplotlib (Agg backend), no display needed.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from data.atomic import atomic_write  # noqa: E402

NOISE_COLOUR = "#b0b0b0"


def cluster_colours(labels: np.ndarray) -> np.ndarray:
    """One RGBA colour per point: clusters cycle through tab20 without its two greys, noise grey.

    Shared with the map. The greys are left out so that no cluster looks like noise.
    """
    labels = np.asarray(labels)
    palette = np.array([plt.get_cmap("tab20")(i) for i in range(20) if i not in (14, 15)])
    out = np.empty((labels.size, 4))
    noise = labels < 0
    out[noise] = matplotlib.colors.to_rgba(NOISE_COLOUR)
    out[~noise] = palette[labels[~noise] % len(palette)]
    return out


# One matplotlib bar costs ~9 KB: drawn one per point, 100,000 points would take ~0.9 GB for a picture
# ~2,400 pixels wide. Above this many points, consecutive points share a bar (`_binned`).
MAX_BARS = 4000


def _binned(heights: np.ndarray, labels: np.ndarray, finite: np.ndarray):
    """Consecutive points in groups of `per_bar`: a bar's height is the group's highest reachability (so a
    valley shows only where every point in it is low), its colour the cluster of the group's first point,
    hatched if any point is unreachable. O(n) memory, MAX_BARS bars."""
    n = heights.size
    per_bar = -(-n // MAX_BARS)
    starts = np.arange(0, n, per_bar)
    return (np.maximum.reduceat(heights, starts), labels[starts], np.logical_and.reduceat(finite, starts),
            per_bar)


def reachability_plot(
    path: str | Path,
    ordering: np.ndarray,
    reachability: np.ndarray,
    labels: np.ndarray,
    *,
    max_eps: float | None = None,
    title: str = "OPTICS reachability",
) -> Path:
    """Write the plot as PNG (atomically). Returns the path."""
    path = Path(path)
    reach = np.asarray(reachability, dtype=float)[ordering]
    lab = np.asarray(labels)[ordering]
    finite = np.isfinite(reach)
    top = float(reach[finite].max()) * 1.05 if finite.any() else 1.0
    if max_eps is not None and np.isfinite(max_eps):
        top = max(top, float(max_eps) * 1.05)
    heights = np.where(finite, reach, top)
    n = reach.size
    per_bar = 1
    if n > MAX_BARS:
        heights, lab_bars, finite, per_bar = _binned(heights, lab, finite)
    else:
        lab_bars = lab
    fig, ax = plt.subplots(figsize=(min(24, 6 + n / 400), 4), dpi=100)
    x = np.arange(len(heights)) * per_bar + (per_bar - 1) / 2
    ax.bar(x, heights, width=float(per_bar), color=cluster_colours(lab_bars), linewidth=0)
    if (~finite).any():
        ax.bar(
            x[~finite],
            heights[~finite],
            width=float(per_bar),
            color="none",
            edgecolor="#dddddd",
            hatch="//",
            linewidth=0,
        )
    if max_eps is not None and np.isfinite(max_eps):
        ax.axhline(max_eps, color="k", lw=0.8, ls="--", label=f"max_eps = {max_eps:g}")
        ax.legend(loc="upper right")
    n_clusters = len(set(lab.tolist()) - {-1})
    ax.set(
        xlim=(-0.5, n - 0.5),
        ylim=(0, top),
        xlabel="points in OPTICS order",
        ylabel="reachability distance",
        title=f"{title}: {n} points, {n_clusters} clusters, {np.mean(lab < 0):.1%} noise (grey)"
        + (f"; one bar per {per_bar} points" if per_bar > 1 else ""),
    )
    fig.tight_layout()
    try:
        atomic_write(path, lambda tmp: fig.savefig(tmp, format="png"))
    finally:
        plt.close(fig)
    return path
