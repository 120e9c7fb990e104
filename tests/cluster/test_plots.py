"""The reachability plot: bounded memory for any number of points (one bar per point would cost ~9 KB each)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from cluster import plots


def test_large_orderings_share_bars_and_keep_valleys(tmp_path, monkeypatch):
    drawn = []
    real_bars = plots._bars

    def counting_bars(ax, x, heights, *a, **k):
        drawn.append(len(np.atleast_1d(x)))
        return real_bars(ax, x, heights, *a, **k)

    monkeypatch.setattr(plots, "_bars", counting_bars)
    n = plots.MAX_BARS * 5 + 3
    reach = np.full(n, 0.9)
    reach[1000:2000] = 0.1  # one valley, a cluster of 1,000 points
    reach[0] = np.inf
    labels = np.full(n, -1)
    labels[1000:2000] = 0
    out = plots.reachability_plot(tmp_path / "r.png", np.arange(n), reach, labels, max_eps=0.5)
    assert max(drawn) <= plots.MAX_BARS
    with Image.open(out) as im:
        assert im.size[0] <= 2400
    heights, lab, finite, per_bar = plots._binned(np.where(np.isfinite(reach), reach, 1.0), labels,
                                                  np.isfinite(reach))
    assert per_bar == 6 and len(heights) <= plots.MAX_BARS
    inside = slice(1000 // per_bar + 1, 2000 // per_bar)  # bars wholly inside the valley
    assert np.all(heights[inside] == 0.1) and np.all(lab[inside] == 0)
    assert heights[1000 // per_bar] == 0.9  # a bar straddling the valley's edge shows the higher point
    assert not finite[0] and finite[1:].all()


def test_small_orderings_draw_one_bar_per_point(tmp_path):
    heights = np.array([np.inf, 0.2, 0.1, 0.3])
    plots.reachability_plot(tmp_path / "r.png", np.arange(4), heights, np.array([0, 0, 0, -1]))
    assert (tmp_path / "r.png").stat().st_size > 0


def test_the_axis_keeps_the_valleys_visible_when_max_eps_is_far_above_them():
    """After fine-tuning every reachability of the demo lay under 0.006 while max_eps was 0.13: an axis up to
    max_eps drew a flat floor. The axis now leaves a far max_eps out (and the legend says so)."""
    top, line = plots.reach_scale(0.006, 0.13)
    assert top == pytest.approx(0.0063) and not line
    top, line = plots.reach_scale(0.3, 0.5)
    assert top == pytest.approx(0.525) and line
    assert plots.reach_scale(None, 0.5) == (pytest.approx(0.525), True)  # nothing reachable: max_eps sets it
    assert plots.reach_scale(0.2, None) == (pytest.approx(0.21), False)


def test_a_plot_with_a_far_max_eps_is_drawn(tmp_path):
    reach = np.array([np.inf, 0.004, 0.003, 0.0058, np.inf, 0.001])
    out = plots.reachability_plot(tmp_path / "r.png", np.arange(6), reach, np.array([0, 0, 0, -1, 1, 1]),
                                  max_eps=0.13)
    with Image.open(out) as im:
        im.load()
