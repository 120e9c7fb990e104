"""The PNG plots of `cluster/`, coloured by cluster alike (noise grey). Pure matplotlib (Agg backend).

- `reachability_plot`: reachability in OPTICS order, one bar per point. Valleys are clusters; bars at the
  top (inf, drawn at the plot's ceiling and hatched) are points no earlier point reached within max_eps.
- `map_plot`: the 2-D map of the collection (`cluster map`'s map.png).
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.collections import LineCollection, PolyCollection  # noqa: E402

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


def _save_png(fig, path: Path, *, tight: bool = True) -> Path:
    """Write the figure as PNG atomically (`data.atomic`) and free it, also when the write fails.

    tight: fit the margins to the labels (matplotlib's tight_layout draws the whole figure once more to measure
    them); False where the caller set fixed margins."""
    if tight:
        fig.tight_layout()
    try:
        atomic_write(path, lambda tmp: fig.savefig(tmp, format="png"))
    finally:
        plt.close(fig)
    return path


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


def _bars(ax, x: np.ndarray, heights: np.ndarray, width: float | np.ndarray, **style) -> None:
    """Bars centred at x from 0 to `heights`, drawn as ONE PolyCollection.

    Why not `ax.bar`: it makes one Rectangle patch per bar, and adding and drawing thousands of patches
    costs seconds (8,000 points: ~12 s of a 20 s `cluster optics`); one collection takes a fraction of that.
    """
    lo, hi, zero = x - width / 2, x + width / 2, np.zeros_like(heights)
    verts = np.stack([np.stack(pair, axis=1) for pair in ((lo, zero), (lo, heights), (hi, heights), (hi, zero))],
                     axis=1)  # fmt: skip
    ax.add_collection(PolyCollection(verts, **style))


def _runs(idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """First and last element of each run of consecutive integers in the sorted `idx`."""
    breaks = np.flatnonzero(np.diff(idx) != 1)
    return idx[np.r_[0, breaks + 1]], idx[np.r_[breaks, idx.size - 1]]


REACH_HEIGHT = 4.0  # inches
REACH_MARGINS = (0.75, 0.2, 0.55, 0.35)  # left, right, bottom, top, inches
EPS_SCALE = 4.0  # max_eps more than this many times the largest reachability: the axis leaves it out


def reach_scale(largest: float | None, max_eps: float | None) -> tuple[float, bool]:
    """(top of the y axis, whether to draw the max_eps line). The axis reaches max_eps only when max_eps is
    within EPS_SCALE times the largest finite reachability: after fine-tuning every distance can lie far below
    the default max_eps (all reachabilities under 0.006 with max_eps 0.13 on the demo), and an axis up to
    max_eps would flatten every valley into the floor."""
    known = largest is not None and largest > 0
    top = largest * 1.05 if known else 1.0
    if max_eps is None or not np.isfinite(max_eps):
        return top, False
    if not known:
        return float(max_eps) * 1.05, True
    if max_eps <= EPS_SCALE * largest:
        return max(top, float(max_eps) * 1.05), True
    return top, False


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
    top, eps_line = reach_scale(float(reach[finite].max()) if finite.any() else None, max_eps)
    heights = np.where(finite, reach, top)
    n = reach.size
    per_bar = 1
    if n > MAX_BARS:
        heights, lab_bars, finite, per_bar = _binned(heights, lab, finite)
    else:
        lab_bars = lab
    width = min(24, 6 + n / 400)
    fig, ax = plt.subplots(figsize=(width, REACH_HEIGHT), dpi=100)
    # fixed margins in inches (labels, ticks and the one-line title fit them at every width): no tight_layout,
    # whose measuring draw costs as much as the picture itself (~0.1 s at 4,000 bars)
    fig.subplots_adjust(left=REACH_MARGINS[0] / width, right=1 - REACH_MARGINS[1] / width,
                        bottom=REACH_MARGINS[2] / REACH_HEIGHT, top=1 - REACH_MARGINS[3] / REACH_HEIGHT)
    x = np.arange(len(heights)) * per_bar + (per_bar - 1) / 2
    _bars(ax, x, heights, float(per_bar), facecolors=cluster_colours(lab_bars), edgecolors="none", linewidths=0)
    if (~finite).any():  # hatching, one rectangle per run of adjacent unreachable bars (hatches are slow to draw)
        first, last = _runs(np.flatnonzero(~finite))
        _bars(ax, (x[first] + x[last]) / 2, np.full(first.size, top), (last - first + 1) * float(per_bar),
              facecolors="none", edgecolors="#dddddd", hatch="//", linewidths=0)  # fmt: skip
    if eps_line:
        ax.axhline(max_eps, color="k", lw=0.8, ls="--", label=f"max_eps = {max_eps:g}")
        ax.legend(loc="upper right")
    elif max_eps is not None and np.isfinite(max_eps):  # far above every valley: say so, keep the valleys visible
        ax.plot([], [], color="k", lw=0.8, ls="--", label=f"max_eps = {max_eps:g}, above this scale")
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
    return _save_png(fig, path, tight=False)


def map_plot(
    path: Path, coords: np.ndarray, labels: np.ndarray, grouped: np.ndarray, links: list[tuple[int, int]]
) -> Path:
    """The static map (`cluster map`'s map.png), atomically: clusters coloured, noise grey and small, images of
    known pattern groups outlined, their POSITIVE links drawn. Returns the path."""
    fig, ax = plt.subplots(figsize=(10, 10), dpi=100)
    if links:
        seg = coords[np.asarray(links, dtype=np.int64)]  # (links, 2 ends, 2 coordinates)
        ax.add_collection(LineCollection(seg, colors="k", linewidths=0.4, alpha=0.35, zorder=1))
    colours = cluster_colours(labels)
    noise = labels < 0
    sizes = np.where(noise, 8, 22)
    ax.scatter(coords[noise, 0], coords[noise, 1], s=sizes[noise], c=colours[noise], linewidths=0, zorder=2)
    ax.scatter(
        coords[~noise, 0], coords[~noise, 1], s=sizes[~noise], c=colours[~noise], linewidths=0, zorder=3
    )
    if grouped.any():
        ax.scatter(
            coords[grouped, 0], coords[grouped, 1], s=sizes[grouped] + 14, facecolors="none",
            edgecolors="k", linewidths=0.8, zorder=4, label="in a known pattern group",
        )  # fmt: skip
        ax.legend(loc="upper right")
    n_clusters = len(set(labels.tolist()) - {-1})
    ax.set_title(
        f"{len(labels)} images, {n_clusters} clusters (noise grey), {int(grouped.sum())} in known groups"
    )
    ax.set_xticks([])
    ax.set_yticks([])
    return _save_png(fig, path)
