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
