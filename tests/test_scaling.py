"""Backbone scaling: parameter counts of whole CLIP models and the mAP-against-size figure."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest

from kalahash.backbones import load_backbone, parameter_count
from kalahash.plots import backbone_scaling


def test_parameter_count_is_the_loaded_models(tiny_backbone):
    """The meta-device count equals the count of the model load_backbone builds (split attention
    keeps it: q, k, v of width w hold exactly the fused in_proj's 3w² + 3w)."""
    assert parameter_count("tiny") == sum(p.numel() for p in tiny_backbone.model.parameters())
    shipped = load_backbone("tiny-shapes")  # a built-in: its own config, with weights
    assert parameter_count("tiny-shapes") == sum(p.numel() for p in shipped.model.parameters())


def test_parameter_count_orders_open_clip_sizes():
    small, large = parameter_count("ViT-B-32"), parameter_count("ViT-L-14")
    assert 100e6 < small < large
    assert parameter_count("SLIP-ViT-S-16") < parameter_count("SLIP-ViT-B-16") < small


def test_parameter_count_unknown_name():
    with pytest.raises(ValueError, match=r"unknown backbone 'ViT-B-33'.*ViT-B-32"):
        parameter_count("ViT-B-33")


def _summary() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "backbone": ["tiny", "tiny", "SLIP-ViT-S-16", "SLIP-ViT-S-16", "ViT-B-32", "ViT-B-32"],
            "method": ["lb", "kalahash"] * 3,
            "mean": [0.2, 0.3, 0.4, 0.5, 0.6, 0.7],
            "std": [0.01, 0.02, 0.0, 0.01, 0.02, 0.03],
        }
    )


def test_backbone_scaling_draws_each_method_against_size():
    summary = _summary()
    fig = backbone_scaling(summary, "scaling")
    ax = fig.axes[0]
    assert ax.get_xscale() == "log"
    lines = {c.get_label(): c.lines[0] for c in ax.containers}  # errorbar: (data line, caps, bars)
    assert set(lines) == {"LB", "KALAHash"}  # the methods' display names
    counts = sorted(parameter_count(b) for b in ("tiny", "SLIP-ViT-S-16", "ViT-B-32"))
    for label, line in lines.items():
        method = {"LB": "lb", "KALAHash": "kalahash"}[label]
        np.testing.assert_array_equal(line.get_xdata(), counts)  # sorted by size
        expected = summary[summary["method"] == method].set_index("backbone")["mean"]
        assert list(line.get_ydata()) == [expected["tiny"], expected["SLIP-ViT-S-16"], expected["ViT-B-32"]]
    assert sorted(t.get_text() for t in ax.texts) == sorted(set(summary["backbone"]))
    fig.canvas.draw()
    assert [t.get_text() for t in ax.get_xticklabels()] == [f"{c / 1e6:.3g}M" for c in counts]
    plt.close(fig)


def test_backbone_scaling_takes_given_counts():
    summary = _summary()
    counts = {"tiny": 10, "SLIP-ViT-S-16": 1000, "ViT-B-32": 100}
    fig = backbone_scaling(summary, "given", params=counts)
    assert list(fig.axes[0].containers[0].lines[0].get_xdata()) == [10, 100, 1000]
    fig_col = backbone_scaling(summary.assign(params=summary["backbone"].map(counts)), "column")
    assert list(fig_col.axes[0].containers[0].lines[0].get_xdata()) == [10, 100, 1000]
    plt.close("all")


def test_backbone_scaling_names_missing_columns():
    with pytest.raises(ValueError, match=r"summary lacks the column\(s\) \['backbone'\]"):
        backbone_scaling(_summary().drop(columns="backbone"), "t")
