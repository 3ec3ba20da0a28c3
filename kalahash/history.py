"""A run's training history: kept beside the results, summarised in its row, and turned into flags.

Every run writes its per-epoch history (loss terms and the diagnostics of
:mod:`kalahash.hashing.diagnostics`) to ``<workdir>/histories/<config_id>.csv``; its row carries a
summary (:func:`history_summary`) and ``flags``, a ``;``-joined list of what went wrong, empty when
nothing did:

* ``W_diverged`` — ‖W‖_F of the anchors exceeded :func:`w_bound` = 10·√(bits·C) at some epoch. With
  balanced, orthogonal bits the least-squares anchors for 0/1 labels have |W_ic| ≤ 1, so ‖W‖_F ≤ √(bits·C);
  a BatchNorm in G holds it at √(bits·C). Ten times that is no fit of the labels, but growth.
* ``anchors_collapsed`` — the columns of sign(W) at the last epoch hold fewer distinct codes than classes:
  some classes share an anchor, so L_ali and the B-step cannot tell them apart.
* ``anchors_misfit`` — L_ali over all training images at the last epoch is above its value at W = 0:
  the anchors explain the labels worse than no anchors at all.
* ``codes_collapsed`` — the database holds fewer distinct codes than there are classes.

A run whose training loss became inf or NaN is stopped and, in a study, recorded with the flag
``loss_nonfinite`` (:data:`DIVERGED`) and NaN mAP. :data:`FLAG_MEANINGS` says each in a line, for readers.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .fileio import atomic_write

HISTORY_FOLDER = "histories"
W_BOUND_FACTOR = 10.0
FLAG_MARK = "⚑"
FLAGS = ("W_diverged", "anchors_collapsed", "anchors_misfit", "codes_collapsed")
# The flag of a run whose training loss became inf or NaN (train.check_finite_loss stopped it).
DIVERGED = "loss_nonfinite"
FLAG_MEANINGS = {
    "W_diverged": "‖W‖ of the knowledge anchors grew past 10·√(bits·C), far beyond any fit of the labels",
    "anchors_collapsed": "at the end, classes share anchor codes (fewer distinct columns of sign(W) than "
    "classes), so the alignment loss and the B-step cannot tell them apart",
    "anchors_misfit": "at the end, the anchors fit the labels worse than no anchors at all (L_ali above its "
    "value at W = 0)",
    "codes_collapsed": "the database holds fewer distinct codes than there are classes",
    DIVERGED: "the training loss became inf or NaN and the run was stopped: no mAP",
}


def history_path(workdir: str | os.PathLike, config_id: str) -> Path:
    """Where the history of run ``config_id`` lives: ``<workdir>/histories/<config_id>.csv``."""
    return Path(workdir) / HISTORY_FOLDER / f"{config_id}.csv"


def save_history(history: Sequence[Mapping[str, float]], path: str | os.PathLike) -> Path:
    """Write a history (one mapping per epoch) as CSV, atomically; a run with no epochs gets a header only."""
    table = pd.DataFrame(list(history), columns=None if history else ["epoch"])
    return atomic_write(path, lambda tmp: table.to_csv(tmp, index=False))


def read_history(workdir: str | os.PathLike, config_id: str, missing_ok: bool = False) -> pd.DataFrame:
    """The history of run ``config_id`` (one row per epoch). A missing file raises FileNotFoundError,
    or gives an empty table with ``missing_ok`` (runs stored before histories were kept have none)."""
    path = history_path(workdir, config_id)
    if path.exists():
        return pd.read_csv(path)
    if missing_ok:
        return pd.DataFrame()
    raise FileNotFoundError(
        f"no history for run {config_id} at {str(path)!r}: it ran before histories were kept or with "
        "another workdir; rerun it with force=True (CLI: --force)"
    )


def w_bound(bits: int, num_classes: int) -> float:
    """The ‖W‖_F past which anchors count as diverged: 10·√(bits·C) (module docstring)."""
    return W_BOUND_FACTOR * math.sqrt(bits * num_classes)


def _last(values: pd.Series) -> float:
    values = values.dropna()
    return float(values.iloc[-1]) if len(values) else math.nan


def history_summary(
    history: Sequence[Mapping[str, float]], bits: int, num_classes: int, database_codes: np.ndarray
) -> dict[str, Any]:
    """The row fields of a run: final and largest ‖W‖, final distinct anchors and L_ali ratio, mean
    routing purity over the epochs, distinct database codes, and ``flags`` (module docstring)."""
    table = pd.DataFrame(list(history))

    def column(name: str) -> pd.Series:
        return table[name] if name in table else pd.Series(dtype=float)

    w = column("w_norm").dropna()
    summary = {
        "w_norm_final": _last(w),
        "w_norm_max": float(w.max()) if len(w) else math.nan,
        "anchors_distinct": _last(column("anchors_distinct")),
        "ali_ratio_final": _last(column("ali_ratio")),
        "routing_purity": float(column("routing_purity").mean()),  # NaN without CLoRA
        "db_distinct_codes": len(np.unique(np.asarray(database_codes), axis=0)),
    }
    found = {
        "W_diverged": summary["w_norm_max"] > w_bound(bits, num_classes),
        "anchors_collapsed": summary["anchors_distinct"] < num_classes,
        "anchors_misfit": summary["ali_ratio_final"] > 1,
        "codes_collapsed": summary["db_distinct_codes"] < num_classes,
    }
    summary["flags"] = ";".join(name for name in FLAGS if found[name])  # NaN compares False: not found
    return summary


def stored_flags(table: pd.DataFrame) -> pd.DataFrame:
    """A results table as read from CSV, with ``flags`` "" again for runs checked and found clean (the
    CSV stores "" as an empty field); NaN stays for rows from before runs were checked (no history file)."""
    if "flags" in table:
        flags = table["flags"].astype(object)
        table["flags"] = flags.where(flags.notna() | table["history_file"].isna(), "")
    return table


def _flag_list(value: Any) -> list[str]:
    return [f for f in value.split(";") if f] if isinstance(value, str) else []


def flag_counts(rows: pd.DataFrame, by: str) -> dict[str, dict[Any, int]]:
    """For each flag the rows raise (in :data:`FLAG_MEANINGS` order), how many runs of each ``by`` value
    raised it."""
    counts: dict[str, dict[Any, int]] = {}
    for key, value in zip(rows[by], rows.get("flags", []), strict=False):
        for flag in _flag_list(value):
            counts.setdefault(flag, {}).setdefault(key, 0)
            counts[flag][key] += 1
    order = list(FLAG_MEANINGS)
    return dict(sorted(counts.items(), key=lambda kv: order.index(kv[0]) if kv[0] in order else len(order)))


def group_flags(flags: Iterable[Any]) -> str:
    """The flags of a group of runs, each with how many runs carry it: ``"anchors_collapsed×3"``."""
    counts: dict[str, int] = {}
    for value in flags:
        for flag in _flag_list(value):
            counts[flag] = counts.get(flag, 0) + 1
    return ";".join(f"{flag}×{n}" for flag, n in counts.items())


def flag_warnings(rows: pd.DataFrame | Iterable[Mapping[str, Any]]) -> list[str]:
    """One ``WARNING: ...`` line per flagged run, naming the run so it can be found in the table."""
    records = rows.to_dict("records") if isinstance(rows, pd.DataFrame) else list(rows)
    lines = []
    for row in records:
        flags = _flag_list(row.get("flags"))
        if flags:
            what = ", ".join(
                f"{k} {row[k]}" for k in ("method", "knowledge", "shots", "bits", "seed") if k in row
            )
            config = f" (config {row['config_id']})" if row.get("config_id") else ""
            lines.append(f"WARNING: {what}{config} flags: {';'.join(flags)}")
    return lines
