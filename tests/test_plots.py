"""What the figures show a reader: display names, no error bar from one seed, flagged and diverged arms
marked, panels on a page-sized grid."""

import math

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest

from kalahash.plots import bar_by_method, bar_panels, map_silhouette_bars


def _texts(ax) -> list[str]:
    return [t.get_text() for t in ax.texts]


def _error_bars(ax) -> int:
    """How many error bars an axes draws: segments of its LineCollections with finite ends (a NaN
    segment draws nothing)."""
    return sum(len(seg) > 0 and np.isfinite(seg).all() for c in ax.collections for seg in c.get_segments())


def test_bars_name_methods_mark_flags_and_draw_no_spread_from_one_seed():
    summary = pd.DataFrame({"method": ["lb", "kalahash", "zeroshot"], "mean": [0.25, 0.22, 0.44],
                            "std": [0.01, 0.02, math.nan], "flags": ["", "anchors_collapsed×2", ""]})  # fmt: skip
    fig = bar_by_method(summary.assign(std=[0.01, math.nan, math.nan]), "t")
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["LB", "KALAHash"]
    assert _texts(ax) == ["0.250", "0.220 ⚑"]
    assert _error_bars(ax) == 1  # KALAHash ran once here: no error bar
    assert any("raised a flag" in t.get_text() for t in fig.texts)
    (reference,) = [line for line in ax.lines if line.get_linestyle() == "--"]  # the zero-shot codes
    assert list(reference.get_ydata()) == [0.44, 0.44] and "zero-shot codes (0.440)" in reference.get_label()
    assert 0.44 < ax.get_ylim()[1] < 0.6  # fitted to what is drawn, not a 0-1 axis
    plt.close(fig)


def test_a_diverged_arm_is_drawn_as_diverged_not_left_out():
    summary = pd.DataFrame({"variant": ["ALPHA=0.1 (preset)", "ALPHA=1"], "mean": [0.2, math.nan],
                            "std": [0.01, math.nan], "flags": ["", "loss_nonfinite×2"], "study": "loss_weights"})  # fmt: skip
    fig = bar_panels(summary, "t", panel="study", titles={"loss_weights": "KIDDO's loss weights"})
    ax = fig.axes[0]
    assert "diverged" in _texts(ax) and ax.get_title() == "KIDDO's loss weights"
    assert [t.get_text() for t in ax.get_xticklabels()] == ["ALPHA=0.1 (preset)", "ALPHA=1"]
    plt.close(fig)


def test_bar_panels_wrap_onto_a_grid_with_one_shared_scale():
    studies = [f"s{i}" for i in range(7)]
    summary = pd.DataFrame({"study": studies, "variant": "a", "mean": [0.1 * (i + 1) for i in range(7)],
                            "std": 0.01})  # fmt: skip
    fig = bar_panels(summary, "t", panel="study", ncols=3)
    visible = [ax for ax in fig.axes if ax.get_visible()]
    assert len(fig.axes) == 9 and len(visible) == 7  # 3 × 3, two left empty
    assert {ax.get_ylim() for ax in visible} == {visible[0].get_ylim()}  # comparable panels, one scale
    assert visible[0].get_ylim()[1] == pytest.approx(0.71 * 1.25)
    width, height = fig.get_size_inches()
    assert width < 12 and height < 11  # fits a page
    plt.close(fig)


def test_map_and_silhouettes_fit_their_axes_and_name_the_methods():
    maps = pd.DataFrame({"method": ["LB", "LB", "KALAHash", "KALAHash"], "map": [0.2, 0.22, 0.21, 0.23]})
    sil = pd.DataFrame({"method": ["LB", "KALAHash"] * 2, "space": ["codes"] * 2 + ["features"] * 2,
                        "silhouette": [55.0, 54.0, 60.0, 58.0]})  # fmt: skip
    fig = map_silhouette_bars(maps, sil)
    left, right = fig.axes
    assert left.get_ylim()[1] < 0.4 and right.get_ylim()[0] > 0
    assert [t.get_text() for t in right.get_xticklabels()] == ["LB", "KALAHash"]
    assert _error_bars(right) == 0  # one run per method and space: no spread to draw
    plt.close(fig)


def test_a_line_marks_a_diverged_point_and_flagged_points():
    from kalahash.plots import shot_scaling

    summary = pd.DataFrame({"shots": [1, 2, 1, 2], "method": ["lb", "lb", "kalahash", "kalahash"],
                            "mean": [0.2, 0.25, 0.22, math.nan], "std": [0.01, 0.01, 0.02, math.nan],
                            "flags": ["", "", "anchors_collapsed×2", "loss_nonfinite×2"]})  # fmt: skip
    fig = shot_scaling(summary, "t")
    assert sorted(_texts(fig.axes[0])) == ["⚑", "✕ diverged"]
    plt.close(fig)
