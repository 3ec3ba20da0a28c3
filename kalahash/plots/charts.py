"""The figures the notebooks and the demo draw (written by :mod:`kalahash.plots.files`): mAP bars by
method and in panels, shot and backbone scaling, a run's history, mAP and silhouette bars, UMAP grids,
the knowledge study and the costs of each method."""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import matplotlib.pyplot as plt
import pandas as pd
import seaborn as sns
from matplotlib.ticker import FuncFormatter, NullLocator

from ..backbones import parameter_count


def _label(name: Any) -> str:
    """A method id as tables and figures name it (LB, FFT, LoRA, KALAHash, ...); other labels as given."""
    from ..hashing import METHOD_LABELS

    return METHOD_LABELS.get(name, str(name))


def _flagged(summary: pd.DataFrame) -> pd.Series:
    """Which groups of a summary had a flagged run (its ``flags`` column, :func:`summarize`)."""
    flags = summary["flags"] if "flags" in summary else pd.Series("", index=summary.index)
    return flags.fillna("").astype(str) != ""


def _bars(
    ax: plt.Axes, summary: pd.DataFrame, label: str, value: str, error: str | None, colour: str = "#4C72B0"
) -> None:
    """A bar per line of ``summary`` with its error bar (none from one seed: the std is NaN), the value
    over it, ⚑ over a group with a flagged run, and "diverged" where the value is NaN. The y range fits
    the bars (from 0), so differences between arms are not squashed into a 0-1 axis."""
    values = summary[value].astype(float)
    errors = summary[error].astype(float) if error else pd.Series(math.nan, index=summary.index)
    positions = list(range(len(summary)))
    ax.bar(positions, values.fillna(0), yerr=errors, capsize=3, color=colour)
    top = float((values + errors.fillna(0)).max()) if values.notna().any() else 1.0
    many = len(positions) > 6
    for i, v, e, flagged in zip(positions, values, errors.fillna(0), _flagged(summary), strict=True):
        if math.isnan(v):
            ax.text(
                i, top * 0.02, "diverged", ha="center", va="bottom", rotation=90, fontsize=8, color="#C44E52"
            )
        elif many:  # upright values would overlap their neighbours: turned (the flag goes on the bar's name)
            ax.text(i, v + e + top * 0.01, f"{v:.3f}", ha="center", va="bottom", fontsize=7, rotation=90)
        else:
            text = f"{v:.3f}" + (" ⚑" if flagged else "")
            ax.text(i, v + e + top * 0.01, text, ha="center", va="bottom", fontsize=7)
    tilted = len(positions) > 3
    names = [
        _label(x) + (" ⚑" if many and flag else "")
        for x, flag in zip(summary[label], _flagged(summary), strict=True)
    ]
    ax.set_xticks(positions, names, rotation=30 if tilted else 0,
                  ha="right" if tilted else "center", fontsize=8)  # fmt: skip
    ax.set_ylim(0, top * (1.4 if many else 1.18))


def _split_reference(summary: pd.DataFrame, label: str, value: str) -> tuple[pd.DataFrame, float | None]:
    """The summary without the zero-shot codes' lines, and their level (None when absent): figures draw
    the zero-shot codes as a dashed reference line, not as one more arm."""
    from ..hashing import METHOD_LABELS

    names = summary[label].map(_label)
    zero = names == METHOD_LABELS["zeroshot"]
    level = float(summary.loc[zero, value].mean()) if zero.any() else None
    return summary[~zero], level


def _reference(ax: plt.Axes, level: float | None) -> None:
    if level is not None:
        ax.axhline(level, color="grey", ls="--", lw=1, label=f"zero-shot codes ({level:.3f})")
        low, high = ax.get_ylim()
        ax.set_ylim(low, max(high, level * 1.1))


def _mark_points(
    ax: plt.Axes, xs: Iterable[float], ys: Iterable[float], flagged: Iterable[bool], colour: Any
) -> None:
    """⚑ beside each point of a line whose group had a flagged run, and "diverged" at the foot of the axes
    where a point has no value (every run of the arm diverged): such a point is never silently missing."""
    for x, y, flag in zip(xs, ys, flagged, strict=True):
        if math.isnan(y):
            ax.annotate("✕ diverged", xy=(x, 0.02), xycoords=("data", "axes fraction"), ha="center",
                        fontsize=7, color=colour)  # fmt: skip
        elif flag:
            ax.annotate("⚑", (x, y), xytext=(3, 3), textcoords="offset points", fontsize=8, color=colour)


def _flag_note(fig: plt.Figure, summary: pd.DataFrame) -> None:
    if _flagged(summary).any():
        fig.text(
            0.01, 0.005, "⚑ a run of this arm raised a flag (see the table)", fontsize=7, color="#555555"
        )


def bar_by_method(
    summary: pd.DataFrame, title: str, value: str = "mean", error: str = "std", label: str = "method"
) -> plt.Figure:
    """mAP per method (a bar each, error bars over seeds where there are several), as the demo and
    notebook 01 show it; ``label`` is the column naming the bars."""
    summary, level = _split_reference(summary, label, value)
    fig, ax = plt.subplots(figsize=(5.2, 3.4))
    _bars(ax, summary, label, value, error)
    _reference(ax, level)
    if level is not None:
        ax.legend(fontsize=7, loc="upper right")
    ax.set_ylabel("mAP")
    ax.set_title(title, fontsize=10)
    _flag_note(fig, summary)
    fig.tight_layout()
    return fig


def shot_scaling(
    summary: pd.DataFrame,
    title: str,
    value: str = "mean",
    error: str = "std",
    series: str = "method",
) -> plt.Figure:
    """mAP against shots per class (log scale), one line per ``series`` (method), error bars over seeds,
    ⚑ at points with a flagged run; the zero-shot codes, where the summary has them, as a dashed line."""
    summary, reference = _split_reference(summary, series, value)
    fig, ax = plt.subplots(figsize=(5.6, 3.6))
    flagged = _flagged(summary)
    for method, group in summary.groupby(series, sort=False):
        group = group.sort_values("shots")
        line = ax.errorbar(
            group["shots"], group[value], yerr=group[error], marker="o", capsize=3, label=_label(method)
        )
        _mark_points(ax, group["shots"], group[value], flagged[group.index], line[0].get_color())
    _reference(ax, reference)
    ax.set_xscale("log", base=2)
    shots = sorted(summary["shots"].unique())
    ax.set_xticks(shots, [str(s) for s in shots])
    ax.set_xlabel("shots per class")
    ax.set_ylabel("mAP")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=7, loc="best")
    _flag_note(fig, summary)
    fig.tight_layout()
    return fig


_HISTORY_PANELS = (
    ("loss terms", ("loss", "sim", "ali", "qua"), "linear"),
    ("‖W‖ (anchors)", ("w_norm",), "log"),
    ("distinct sign(W) anchors", ("anchors_distinct",), "linear"),
    ("bits flipped by the B-step", ("b_flips",), "linear"),
    ("routing purity, bit balance", ("routing_purity", "bit_balance", "b_balance"), "linear"),
)


def plot_history(
    history: pd.DataFrame | list[Mapping[str, float]],
    title: str | None = None,
    num_classes: int | None = None,
    w_limit: float | None = None,
) -> plt.Figure:
    """A run's history per epoch in small panels: loss terms, ‖W‖ (log), distinct anchors, B-step flips,
    routing purity and bit balance (:mod:`kalahash.hashing.diagnostics`). ``num_classes`` draws the
    collapse line in the anchors panel, ``w_limit`` the divergence bound in the ‖W‖ panel
    (:func:`kalahash.history.w_bound`). A quantity the run did not record says so in its panel."""
    table = pd.DataFrame(history)
    fig, axes = plt.subplots(1, len(_HISTORY_PANELS), figsize=(3.0 * len(_HISTORY_PANELS), 2.6))
    for ax, (name, columns, scale) in zip(axes, _HISTORY_PANELS, strict=True):
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("epoch", fontsize=8)
        ax.tick_params(labelsize=7)
        shown = [c for c in columns if c in table and table[c].notna().any()]
        for column in shown:
            ax.plot(table["epoch"], table[column], label=column, lw=1.2)
        if not shown:
            ax.text(0.5, 0.5, "not recorded\nfor this run", ha="center", va="center", transform=ax.transAxes)
            continue
        if scale == "log" and (table[shown[0]] > 0).all():
            ax.set_yscale("log")
        if "anchors_distinct" in shown and num_classes is not None:
            ax.axhline(num_classes, color="grey", ls="--", lw=0.8, label="classes")
        if "w_norm" in shown and w_limit is not None:
            ax.axhline(w_limit, color="red", ls="--", lw=0.8, label="divergence bound")
        if len(ax.get_legend_handles_labels()[0]) > 1:
            ax.legend(fontsize=7)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def plot_run_history(row: Mapping[str, Any], workdir: str | os.PathLike, num_classes: int) -> plt.Figure:
    """:func:`plot_history` of one results row's run (its file under ``workdir``), titled with the run and
    its flags, with the class line and the divergence bound drawn. A run stored before histories were
    kept gets empty panels that say so."""
    from ..history import read_history, w_bound

    history = read_history(workdir, row["config_id"], missing_ok=True)
    flags = row.get("flags")
    flags = flags if isinstance(flags, str) and flags else "none"
    what = ", ".join(f"{k} {row[k]}" for k in ("method", "knowledge", "shots", "seed") if k in row)
    return plot_history(
        history,
        title=f"{what}; flags: {flags}",
        num_classes=num_classes,
        w_limit=w_bound(int(row["bits"]), num_classes),
    )


def _require_columns(table: pd.DataFrame, name: str, columns: Iterable[str]) -> None:
    missing = [c for c in columns if c not in table]
    if missing:
        raise ValueError(f"{name} lacks the column(s) {missing}; it has {list(table.columns)}")


def _millions(x: float, _: Any = None) -> str:
    return f"{x / 1e6:.3g}M"


def backbone_scaling(
    summary: pd.DataFrame,
    title: str,
    value: str = "mean",
    error: str = "std",
    params: Mapping[str, int] | None = None,
) -> plt.Figure:
    """mAP against the backbone's parameter count (log scale), one line per method (the zero-shot codes
    dashed: each backbone has its own), each backbone named, ⚑ at points with a flagged run.

    ``summary`` has one row per (backbone, method) with ``value`` and ``error`` (e.g.
    ``summarize(rows, by=("backbone", "method"))``). Parameter counts come from a ``params`` column,
    else from ``params``, else :func:`kalahash.backbones.parameter_count` (whole CLIP model).
    """
    _require_columns(summary, "summary", ("backbone", "method", value, error))
    if "params" in summary:
        counts = dict(zip(summary["backbone"], summary["params"], strict=True))
    else:
        given = dict(params or {})
        counts = {
            b: int(given[b]) if b in given else parameter_count(b) for b in summary["backbone"].unique()
        }
    table = summary.assign(params=summary["backbone"].map(counts)).sort_values("params")
    fig, ax = plt.subplots(figsize=(5.6, 3.7))
    for method, group in table.groupby("method", sort=False):
        dashed = {"ls": "--", "color": "grey"} if _label(method) == _label("zeroshot") else {}
        line = ax.errorbar(
            group["params"],
            group[value],
            yerr=group[error],
            marker="o",
            capsize=3,
            label=_label(method),
            **dashed,
        )
        _mark_points(ax, group["params"], group[value], _flagged(group), line[0].get_color())
    for backbone, group in table.groupby("backbone", sort=False):
        top = group[value] + group[error].fillna(0)
        ax.annotate(
            backbone,
            (group["params"].iloc[0], top.max()),
            xytext=(0, 6),
            textcoords="offset points",
            ha="center",
            fontsize=7,
        )
    ax.set_xscale("log")
    # ticks at the backbones' own sizes: a family within one decade would otherwise get no label at all
    ax.set_xticks(sorted(table["params"].unique()))
    ax.xaxis.set_major_formatter(FuncFormatter(_millions))
    ax.xaxis.set_minor_locator(NullLocator())
    ax.set_xlabel("backbone parameters (image + text towers)")
    ax.set_ylabel("mAP")
    ax.set_title(title, fontsize=10)
    ax.margins(x=0.15, y=0.15)
    ax.legend(fontsize=7)
    _flag_note(fig, table)
    fig.tight_layout()
    return fig


def _mean_std(rows: pd.DataFrame, by: list[str], value: str) -> pd.DataFrame:
    """Mean and std over seeds (std NaN from one seed: no error bar is drawn)."""
    return rows.groupby(by, sort=False)[value].agg(mean="mean", std="std").reset_index()


def map_silhouette_bars(
    maps: pd.DataFrame, silhouettes: pd.DataFrame, title: str = "", value: str = "map", label: str = "method"
) -> plt.Figure:
    """mAP per method (left) and silhouette of features and codes per method (right), mean ± std over
    seeds (no error bar from one seed).

    ``maps`` has one row per method (its ``label`` column) and seed with ``value``; ``silhouettes`` one
    row per method, space and seed with ``silhouette`` (as :func:`kalahash.embeddings.silhouette_scores` gives, plus a seed
    column). Rows of the same method and space are averaged, so seeds need no column of their own.
    """
    _require_columns(maps, "maps", (label, value))
    _require_columns(silhouettes, "silhouettes", ("method", "space", "silhouette"))
    maps = maps.assign(method=maps[label].map(_label))
    silhouettes = silhouettes.assign(method=silhouettes["method"].map(_label))
    methods = list(dict.fromkeys([*maps["method"], *silhouettes["method"]]))
    mean_map = _mean_std(maps, ["method"], value).set_index("method").reindex(methods)
    sil = _mean_std(silhouettes, ["method", "space"], "silhouette")
    spaces = list(dict.fromkeys(sil["space"]))
    colours = sns.color_palette("deep", n_colors=1 + len(spaces))
    fig, (left, right) = plt.subplots(1, 2, figsize=(4.5 + 1.2 * len(methods), 3.6))
    _bars(left, mean_map.reset_index(), "method", "mean", "std", colour=colours[0])
    left.set_ylabel("mAP")
    left.set_title("mAP", fontsize=9)
    positions = range(len(methods))
    width = 0.8 / max(len(spaces), 1)
    highs = []
    for j, space in enumerate(spaces):
        part = sil[sil["space"] == space].set_index("method").reindex(methods)
        offsets = [i - 0.4 + width * (j + 0.5) for i in positions]
        right.bar(
            offsets, part["mean"], width, yerr=part["std"], capsize=3, color=colours[1 + j], label=space
        )
        highs += list(part["mean"] + part["std"].fillna(0))
    right.set_ylabel("silhouette (0-100)")
    right.set_title("class separation (silhouette, 50 = none)", fontsize=9)
    right.axhline(50, color="grey", lw=0.8, ls=":")
    right.set_ylim(max(0, min(sil["mean"]) - 10), min(100, max(highs) + 5))
    right.legend(fontsize=8)
    right.set_xticks(list(positions), [_label(m) for m in methods], fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def umap_grid(
    coords: pd.DataFrame,
    title: str = "",
    classnames: Sequence[str] | None = None,
    scores: Mapping[str, float] | None = None,
    ncols: int = 4,
) -> plt.Figure:
    """One UMAP panel per method, points coloured by class (seaborn), one shared legend.

    ``coords`` as :func:`kalahash.embeddings.umap_coordinates` gives (method, x, y, label);
    ``classnames`` name the label ids; ``scores`` (e.g. silhouettes) are shown in the panel titles.
    """
    _require_columns(coords, "coords", ("method", "x", "y", "label"))
    if isinstance(ncols, bool) or not isinstance(ncols, int) or ncols < 1:
        raise ValueError(f"ncols must be a positive int, got {ncols!r}")
    methods = list(dict.fromkeys(coords["method"]))
    names = list(classnames) if classnames is not None else None
    hue = coords["label"].map(lambda c: names[c] if names is not None and 0 <= c < len(names) else str(c))
    order = list(dict.fromkeys(hue[coords["label"].sort_values(kind="stable").index]))
    palette = sns.color_palette("tab10" if len(order) <= 10 else "husl", n_colors=len(order))
    cols = min(ncols, len(methods))
    rows = math.ceil(len(methods) / cols)
    with sns.axes_style("white"):
        fig, axes = plt.subplots(rows, cols, figsize=(2.8 * cols, 2.8 * rows + 0.4), squeeze=False)
        for ax, method in zip(axes.flat, methods, strict=False):
            mask = coords["method"] == method
            sns.scatterplot(
                x=coords.loc[mask, "x"],
                y=coords.loc[mask, "y"],
                hue=hue[mask],
                hue_order=order,
                palette=palette,
                s=8,
                linewidth=0,
                ax=ax,
                legend=ax is axes.flat[0],
            )
            score = f" ({scores[method]:.1f})" if scores is not None and method in scores else ""
            ax.set_title(f"{_label(method)}{score}", fontsize=9, pad=4)
            ax.set(xticks=[], yticks=[], xlabel="", ylabel="")
            sns.despine(ax=ax, left=True, bottom=True)
        for ax in list(axes.flat)[len(methods) :]:
            ax.set_visible(False)
        first = axes.flat[0]
        if first.get_legend() is not None:
            handles, labels = first.get_legend_handles_labels()
            first.get_legend().remove()
            fig.legend(handles, labels, loc="center right", fontsize=7, markerscale=1.5, frameon=False)
        if title:
            fig.suptitle(title, fontsize=10)
        fig.tight_layout(rect=(0, 0, 0.85, 0.97 if title else 1))
    return fig


def bar_panels(
    summary: pd.DataFrame,
    title: str,
    panel: str,
    label: str = "variant",
    value: str = "mean",
    error: str | None = "std",
    ylabel: str = "mAP",
    titles: Mapping[str, str] | None = None,
    ncols: int = 3,
    sharey: bool = True,
) -> plt.Figure:
    """One small bar chart per value of ``panel`` (an ablation, a loss), in a grid of ``ncols`` columns
    that fits a page; a bar per ``label``, error bars over seeds (none from one seed), ⚑ over a group
    with a flagged run and "diverged" for an arm with no mAP; the zero-shot codes as a dashed line on
    every panel. ``titles`` names the panels in words; ``sharey`` puts panels that compare the same
    quantity on one scale."""
    summary, level = _split_reference(summary, label, value)
    panels = list(dict.fromkeys(summary[panel]))
    cols = min(ncols, len(panels))
    rows = math.ceil(len(panels) / cols)
    fig, axes = plt.subplots(
        rows, cols, figsize=(3.3 * cols + 0.4, 3.0 * rows + 0.5), squeeze=False, sharey=sharey
    )
    for ax, name in zip(axes.flat, panels, strict=False):
        part = summary[summary[panel] == name]
        _bars(ax, part, label, value, error)
        ax.set_title((titles or {}).get(name, str(name)), fontsize=9)
        ax.tick_params(axis="y", labelsize=8)
    if sharey:
        tops = summary[value] + (summary[error].fillna(0) if error else 0)
        axes.flat[0].set_ylim(0, float(tops.max()) * 1.25)
    for ax in list(axes.flat)[: len(panels)]:
        _reference(ax, level)
    if level is not None:
        axes.flat[0].legend(fontsize=7, loc="upper right")
    for ax in list(axes.flat)[len(panels) :]:
        ax.set_visible(False)
    for ax in axes[:, 0]:
        ax.set_ylabel(ylabel)
    fig.suptitle(title, fontsize=10)
    _flag_note(fig, summary)
    fig.tight_layout()
    return fig


def knowledge_use(
    differences: pd.DataFrame, anchors: pd.DataFrame, num_classes: int, title: str = ""
) -> plt.Figure:
    """Is the knowledge used? Left: KALAHash minus LB and minus its K controls against shots, paired by
    seed, with their seed spreads (:func:`kalahash.verdicts.knowledge_differences`); right: the distinct
    sign(W) anchors at the end of training, mean over seeds per arm (``anchors``: shots, variant,
    anchors), against the number of classes."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.6))
    for comparison, group in differences.groupby("comparison", sort=False):
        group = group.sort_values("shots")
        left.errorbar(
            group["shots"], group["mean"], yerr=group["spread"], marker="o", capsize=3, label=comparison
        )
    left.axhline(0, color="grey", lw=0.8)
    left.set_ylabel("mAP difference, paired by seed")
    left.set_title("KALAHash minus ... (0: no difference)", fontsize=9)
    styles = iter([("o", "-"), ("s", "--"), ("^", ":"), ("D", "-.")] * 4)  # arms that coincide stay visible
    for arm, group in anchors.dropna(subset=["anchors"]).groupby("variant", sort=False):
        group = group.sort_values("shots")
        marker, line = next(styles)
        right.plot(group["shots"], group["anchors"], marker=marker, ls=line, label=arm, alpha=0.85)
    right.axhline(num_classes, color="grey", ls="--", lw=0.8, label="classes")
    right.set_ylim(0, num_classes + 1)
    right.set_ylabel("distinct sign(W) anchors (mean)")
    right.set_title("knowledge anchors at the end of training", fontsize=9)
    for ax in (left, right):
        ax.set_xscale("log", base=2)
        shots = sorted(differences["shots"].unique())
        ax.set_xticks(shots, [str(x) for x in shots])
        ax.set_xlabel("shots per class")
        ax.legend(fontsize=7)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


# The efficiency figure's panels: (column, title with its unit, log scale)
_COST_PANELS = (
    ("trainable_params", "trainable parameters (log scale)", True),
    ("train_seconds_per_epoch", "training, seconds per epoch", False),
    ("encode_images_per_second", "encoding, images per second", False),
    ("peak_memory_mib", "peak tensor memory while training (MiB)", False),
)


def efficiency_panels(costs: pd.DataFrame, title: str) -> plt.Figure:
    """What each method costs (:func:`kalahash.efficiency.measure_efficiency`), one panel per measure,
    titled in words with its unit; parameters on a log axis, which spans their orders of magnitude."""
    fig, axes = plt.subplots(1, len(_COST_PANELS), figsize=(3.2 * len(_COST_PANELS), 3.4))
    names = [_label(m) for m in costs["method"]]
    for ax, (column, name, log) in zip(axes, _COST_PANELS, strict=True):
        values = costs[column].astype(float)
        ax.bar(range(len(costs)), values, color="#4C72B0")
        for i, v in enumerate(values):
            ax.text(i, v, f"{v:,.0f}" if v >= 100 else f"{v:.3g}", ha="center", va="bottom", fontsize=7)
        if log:
            ax.set_yscale("log")
            ax.set_ylim(values.min() / 3, values.max() * 10)
        else:
            ax.set_ylim(0, values.max() * 1.18)
        ax.set_xticks(range(len(costs)), names, rotation=30, ha="right", fontsize=8)
        ax.set_title(name, fontsize=9)
        ax.tick_params(axis="y", labelsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig
