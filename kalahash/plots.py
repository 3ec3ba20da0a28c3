"""Figures and tables written with their provenance, so each can be traced to the rows that made it."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import pandas as pd

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
) -> Path:
    """Write a table as CSV (atomic), with a JSON provenance sidecar unless told otherwise."""
    out = Path(out_dir)
    path = out / f"{name}.csv"
    atomic_write(path, lambda tmp: table.to_csv(tmp, index=False))
    if write_json:
        info = _sidecar(table, extra)
        atomic_write_text(out / f"{name}.json", json.dumps(info, indent=2, default=str))
    return path


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


def shot_scaling(summary: pd.DataFrame, title: str, value: str = "mean", error: str = "std") -> plt.Figure:
    """mAP against shots per class (log scale), one line per method, error bars over seeds."""
    fig, ax = plt.subplots(figsize=(5, 3.4))
    for method, group in summary.groupby("method", sort=False):
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
