"""Figures and tables written with their provenance, so each can be traced to the rows that made it."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import pandas as pd
import seaborn as sns
from matplotlib.ticker import FuncFormatter, NullLocator

from .backbones import parameter_count
from .fileio import atomic_write, atomic_write_text

_PROVENANCE_COLUMNS = (
    "git_commit",
    "kalahash_version",
    "torch_version",
    "open_clip_version",
    "device",
    "data_fingerprint",
    "backbone_fingerprint",
    "ties_rule",
)


def _sidecar(rows: pd.DataFrame, extra: Mapping[str, Any] | None) -> dict[str, Any]:
    info: dict[str, Any] = {"rows": len(rows)}
    if "config_id" in rows:
        info["config_ids"] = sorted(set(map(str, rows["config_id"])))
    for column in _PROVENANCE_COLUMNS:
        if column in rows:
            info[column] = sorted(set(map(str, rows[column])))
    if "seed" in rows:
        info["seeds"] = sorted(set(int(s) for s in rows["seed"]))
    info.update(extra or {})
    return info


def save_figure(
    fig: plt.Figure,
    name: str,
    rows: pd.DataFrame,
    out_dir: str | os.PathLike = "figures",
    extra: Mapping[str, Any] | None = None,
) -> list[Path]:
    """Write ``name``.png and .pdf, plus ``name``.rows.csv (the rows plotted) and ``name``.json (provenance).

    The PNG and PDF also carry the commit and config ids in their metadata.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    info = _sidecar(rows, extra)
    summary = f"kalahash {name}; commit {','.join(info.get('git_commit', ['?']))}; rows in {name}.rows.csv"
    paths = []
    for suffix, meta in (
        ("png", {"Title": name, "Description": summary, "Software": "kalahash"}),
        ("pdf", {"Title": name, "Subject": summary, "Creator": "kalahash"}),
    ):
        path = out / f"{name}.{suffix}"
        atomic_write(
            path, lambda tmp, s=suffix, m=meta: fig.savefig(tmp, format=s, metadata=m, bbox_inches="tight")
        )
        paths.append(path)
    paths.append(save_table(rows, f"{name}.rows", out_dir=out, extra=info, write_json=False))
    json_path = out / f"{name}.json"
    atomic_write_text(json_path, json.dumps(info, indent=2, default=str))
    paths.append(json_path)
    return paths


def save_table(
    table: pd.DataFrame,
    name: str,
    out_dir: str | os.PathLike = "figures",
    extra: Mapping[str, Any] | None = None,
    write_json: bool = True,
    markdown: bool = False,
) -> Path:
    """Write a table as CSV (atomic), with a JSON provenance sidecar unless told otherwise, and with
    ``markdown`` also as ``name``.md (:func:`markdown_table`), for a README or a paper draft."""
    out = Path(out_dir)
    path = out / f"{name}.csv"
    atomic_write(path, lambda tmp: table.to_csv(tmp, index=False))
    if markdown:
        atomic_write_text(out / f"{name}.md", markdown_table(table) + "\n")
    if write_json:
        info = _sidecar(table, extra)
        atomic_write_text(out / f"{name}.json", json.dumps(info, indent=2, default=str))
    return path


def markdown_table(table: pd.DataFrame, digits: int = 4) -> str:
    """A GitHub-flavoured markdown table of ``table`` (its index left out), floats to ``digits``."""

    def cell(value: Any) -> str:
        text = f"{value:.{digits}f}" if isinstance(value, float) else str(value)
        return text.replace("|", "\\|").replace("\n", " ")

    header = [cell(c) for c in table.columns]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in table.itertuples(index=False)]
    return "\n".join(lines)


def bar_by_method(summary: pd.DataFrame, title: str, value: str = "mean", error: str = "std") -> plt.Figure:
    """mAP per method (one bar each, error bars over seeds), as the demo and the ablations show it."""
    fig, ax = plt.subplots(figsize=(5, 3.2))
    ax.bar(summary["method"], summary[value], yerr=summary.get(error), capsize=4, color="#4C72B0")
    ax.set_ylabel("mAP")
    ax.set_title(title)
    ax.set_ylim(0, max(1.0, float(summary[value].max()) * 1.1))
    for i, v in enumerate(summary[value]):
        ax.text(i, v + 0.01, f"{v:.3f}", ha="center", va="bottom", fontsize=8)
    fig.tight_layout()
    return fig


def shot_scaling(
    summary: pd.DataFrame, title: str, value: str = "mean", error: str = "std", series: str = "method"
) -> plt.Figure:
    """mAP against shots per class (log scale), one line per ``series`` (method), error bars over seeds."""
    fig, ax = plt.subplots(figsize=(5, 3.4))
    for method, group in summary.groupby(series, sort=False):
        group = group.sort_values("shots")
        ax.errorbar(group["shots"], group[value], yerr=group[error], marker="o", capsize=3, label=method)
    ax.set_xscale("log", base=2)
    shots = sorted(summary["shots"].unique())
    ax.set_xticks(shots, [str(s) for s in shots])
    ax.set_xlabel("shots per class")
    ax.set_ylabel("mAP")
    ax.set_title(title)
    ax.legend(fontsize=8)
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
    from .history import read_history, w_bound

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
    """mAP against the backbone's parameter count (log scale), one line per method, each backbone named.

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
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    for method, group in table.groupby("method", sort=False):
        ax.errorbar(group["params"], group[value], yerr=group[error], marker="o", capsize=3, label=method)
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
    ax.set_title(title)
    ax.margins(x=0.15, y=0.15)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def _mean_std(rows: pd.DataFrame, by: list[str], value: str) -> pd.DataFrame:
    table = rows.groupby(by, sort=False)[value].agg(mean="mean", std="std").reset_index()
    table["std"] = table["std"].fillna(0.0)  # one seed: no spread
    return table


def map_silhouette_bars(
    maps: pd.DataFrame, silhouettes: pd.DataFrame, title: str = "", value: str = "map"
) -> plt.Figure:
    """mAP per method (left) and silhouette of features and codes per method (right), mean ± std.

    ``maps`` has one row per method and seed with ``value``; ``silhouettes`` one row per method, space
    and seed with ``silhouette`` (as :func:`kalahash.embeddings.silhouette_scores` gives, plus a seed
    column). Rows of the same method and space are averaged, so seeds need no column of their own.
    """
    _require_columns(maps, "maps", ("method", value))
    _require_columns(silhouettes, "silhouettes", ("method", "space", "silhouette"))
    methods = list(dict.fromkeys([*maps["method"], *silhouettes["method"]]))
    mean_map = _mean_std(maps, ["method"], value).set_index("method").reindex(methods)
    sil = _mean_std(silhouettes, ["method", "space"], "silhouette")
    spaces = list(dict.fromkeys(sil["space"]))
    colours = sns.color_palette("deep", n_colors=1 + len(spaces))
    fig, (left, right) = plt.subplots(1, 2, figsize=(4 + 1.1 * len(methods), 3.4))
    positions = range(len(methods))
    left.bar(positions, mean_map["mean"], yerr=mean_map["std"], capsize=4, color=colours[0])
    left.set_ylabel("mAP")
    left.set_ylim(0, max(1.0, float(mean_map["mean"].max()) * 1.1))
    width = 0.8 / max(len(spaces), 1)
    for j, space in enumerate(spaces):
        part = sil[sil["space"] == space].set_index("method").reindex(methods)
        offsets = [i - 0.4 + width * (j + 0.5) for i in positions]
        right.bar(
            offsets, part["mean"], width, yerr=part["std"], capsize=3, color=colours[1 + j], label=space
        )
    right.set_ylabel("silhouette (0-100)")
    right.set_ylim(0, 100)
    right.legend(fontsize=8)
    for ax in (left, right):
        ax.set_xticks(list(positions), methods, rotation=30, ha="right")
    if title:
        fig.suptitle(title)
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
            score = f"\n{scores[method]:.1f}" if scores is not None and method in scores else ""
            ax.set_title(f"{method}{score}", fontsize=9)
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
            fig.suptitle(title)
        fig.tight_layout(rect=(0, 0, 0.85, 1))
    return fig


def bar_panels(
    summary: pd.DataFrame,
    title: str,
    panel: str,
    label: str = "variant",
    value: str = "mean",
    error: str | None = "std",
    ylabel: str = "mAP",
) -> plt.Figure:
    """One small bar chart per value of ``panel`` (an ablation, a loss, a measure), a bar per ``label``,
    error bars over seeds; each panel keeps its own y scale."""
    panels = list(dict.fromkeys(summary[panel]))
    fig, axes = plt.subplots(1, len(panels), figsize=(2.6 * len(panels) + 0.6, 3.4), squeeze=False)
    for ax, name in zip(axes[0], panels, strict=True):
        part = summary[summary[panel] == name]
        ax.bar(range(len(part)), part[value], yerr=part[error] if error else None, capsize=3, color="#4C72B0")
        ax.set_xticks(range(len(part)), part[label], rotation=45, ha="right", fontsize=7)
        ax.set_title(str(name), fontsize=9)
        ax.tick_params(axis="y", labelsize=7)
    axes[0][0].set_ylabel(ylabel)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig
