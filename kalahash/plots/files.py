"""Figures and tables written with their provenance, so each can be traced to the rows that made it:
:func:`save_figure` (PNG and PDF, and :class:`SavedFigure`, the PNG as notebooks show it), :func:`save_table`
(CSV, markdown) and :func:`markdown_table`, each with a ``.json`` sidecar naming the commit, the
versions, the settings and the runs' config ids."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import pandas as pd

from ..fileio import atomic_write, atomic_write_text

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
# What an artefact says of the setting that made it, from the notebook's settings where the rows lack it.
_SETTING_KEYS = ("profile", "dataset", "backbone", "pretrained", "seeds")


def _sidecar(
    rows: pd.DataFrame, extra: Mapping[str, Any] | None, settings: Mapping[str, Any] | None
) -> dict[str, Any]:
    """An artefact's provenance: the commit that wrote it and the rows' commits, versions and machine,
    the config ids, seeds, profile, data set and backbone."""
    from ..machine import git_commit

    info: dict[str, Any] = {"written_by_commit": git_commit(), "rows": len(rows)}
    for key in _SETTING_KEYS:
        if settings is not None and settings.get(key) is not None:
            info[key] = settings[key]
    if "config_id" in rows:
        info["config_ids"] = sorted(set(map(str, rows["config_id"])))
    for column in _PROVENANCE_COLUMNS:
        if column in rows:
            info[column] = sorted(set(map(str, rows[column].dropna())))
    for column, key in (("seed", "seeds"), ("dataset", "dataset"), ("backbone", "backbone")):
        if column in rows:
            values = sorted(set(rows[column].dropna()))
            info[key] = [int(v) for v in values] if key == "seeds" else [str(v) for v in values]
    info.update(extra or {})
    return info


@dataclass(frozen=True)
class SavedFigure:
    """A figure written to disk. A notebook shows its PNG (the same under any matplotlib backend, so the
    committed notebook shows what a reader's run shows); as text it names its files."""

    name: str
    paths: tuple[Path, ...]

    @property
    def png(self) -> Path:
        return self.paths[0]

    def _repr_png_(self) -> bytes:
        return self.png.read_bytes()

    def __repr__(self) -> str:
        return f"figure {self.name}: " + ", ".join(p.name for p in self.paths)


def save_figure(
    fig: plt.Figure,
    name: str,
    rows: pd.DataFrame,
    out_dir: str | os.PathLike = "figures",
    extra: Mapping[str, Any] | None = None,
    settings: Mapping[str, Any] | None = None,
) -> SavedFigure:
    """Write ``name``.png and .pdf, ``name``.rows.csv (the rows plotted) and ``name``.figure.json (its
    provenance: :func:`_sidecar`, with ``settings``), then close the figure: what a notebook shows is
    the returned :class:`SavedFigure`, the saved PNG. The PNG and PDF carry the commit in their metadata.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    info = _sidecar(rows, extra, settings)
    summary = f"kalahash {name}; commit {info['written_by_commit']}; rows in {name}.rows.csv"
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
    plt.close(fig)
    paths.append(save_table(rows, f"{name}.rows", out_dir=out, write_json=False))
    json_path = out / f"{name}.figure.json"
    atomic_write_text(json_path, json.dumps(info, indent=2, default=str))
    paths.append(json_path)
    return SavedFigure(name, tuple(paths))


def save_table(
    table: pd.DataFrame,
    name: str,
    out_dir: str | os.PathLike = "figures",
    extra: Mapping[str, Any] | None = None,
    write_json: bool = True,
    markdown: bool = False,
    settings: Mapping[str, Any] | None = None,
) -> Path:
    """Write a table as CSV (atomic), with a provenance sidecar ``name``.table.json unless told otherwise
    (never the name a figure's sidecar has), and with ``markdown`` also as ``name``.md
    (:func:`markdown_table`), for a README or a paper draft."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{name}.csv"
    atomic_write(path, lambda tmp: table.to_csv(tmp, index=False))
    if markdown:
        atomic_write_text(out / f"{name}.md", markdown_table(table) + "\n")
    if write_json:
        info = _sidecar(table, extra, settings)
        atomic_write_text(out / f"{name}.table.json", json.dumps(info, indent=2, default=str))
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
