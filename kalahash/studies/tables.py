"""The tidy tables a study's rows give, under both tie rules: :func:`tie_table` (mean ± std over seeds
per group), :func:`main_table` and :func:`main_table_wide` (the paper's layout), :func:`plug_and_play_table`,
:func:`knowledge_table` and :func:`backbone_table` (with each backbone's parameter count)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import pandas as pd

from ..experiments import (
    summarize,
)
from ..metrics import TIES


def _rule_columns(rule: str) -> list[str]:
    return [f"mean_{rule}", f"std_{rule}", f"mAP, {rule} ties"]


def tie_table(rows: pd.DataFrame, by: Sequence[str] = ("variant",)) -> pd.DataFrame:
    """Mean ± std over seeds of mAP under both tie rules, per group, in the rows' order: columns
    ``by``, ``seeds``, ``mean_<rule>``, ``std_<rule>`` and ``mAP, <rule> ties`` (as text), and
    ``flags`` where :func:`summarize` gives them."""
    if rows.empty:
        raise ValueError("rows is empty: run the study first")
    by = list(by)
    table = None
    for rule in TIES:
        value = f"map_ties_{rule}"
        part = summarize(rows, by=by, value=value)
        part = part.rename(
            columns=dict(zip(("mean", "std", f"{value} (mean ± std)"), _rule_columns(rule), strict=True))
        )
        table = part if table is None else table.merge(part[[*by, *_rule_columns(rule)]], on=by, sort=False)
    columns = [*by, "seeds", *(c for rule in TIES for c in _rule_columns(rule))]
    return table[columns + (["flags"] if "flags" in table else [])]


def main_table(rows: pd.DataFrame) -> pd.DataFrame:
    """The main table, tidy: one line per data set × bits × shots × method (the arms' labels: LB, ...,
    zero-shot codes), both tie rules."""
    named = rows.assign(method=rows["variant"]) if "variant" in rows else rows
    return tie_table(named, by=("dataset", "bits", "shots", "method"))


def main_table_wide(table: pd.DataFrame, ties: str = "index") -> pd.DataFrame:
    """The paper's layout of :func:`main_table`: a line per shots × method, a column per data set ×
    bits, cells "mean ± std" under tie rule ``ties``; flat columns, so it saves as CSV and markdown."""
    column = table["dataset"] + " · " + table["bits"].astype(str) + " bits"
    return _wide(table, ["shots", "method"], column, _tie_column(ties))


def plug_and_play_table(rows: pd.DataFrame, ties: str = "index") -> pd.DataFrame:
    """A line per shots × loss, a column per variant: "mean ± std" mAP under tie rule ``ties`` (the
    zero-shot reference, which has no loss, left out)."""
    table = tie_table(rows[rows["method"] != "zeroshot"], by=("shots", "loss", "variant"))
    return _wide(table, ["shots", "loss"], table["variant"], _tie_column(ties))


def knowledge_table(rows: pd.DataFrame, ties: str = "index") -> pd.DataFrame:
    """The knowledge study in one table (the README quotes it): a line per shot count, a column per arm
    ("mean ± std (n)" under tie rule ``ties``, ⚑ where a run raised a flag), and the mean distinct sign(W)
    anchors of KALAHash and its controls."""
    table = tie_table(rows, by=("shots", "variant"))
    wide = _wide(table, ["shots"], table["variant"], _tie_column(ties))
    kiddo = rows[rows["method"] == "kalahash"]
    anchors = kiddo.groupby(["shots", "variant"], sort=False)["anchors_distinct"].mean().unstack("variant")
    for arm in _first_seen(kiddo["variant"]):
        wide[f"anchors, {arm}"] = wide["shots"].map(anchors[arm]).round(1).to_numpy()
    return wide


def _tie_column(ties: str) -> str:
    if ties not in TIES:
        raise ValueError(f"ties must be one of {', '.join(TIES)}, got {ties!r}")
    return f"mAP, {ties} ties"


def _first_seen(values: Iterable[Any]) -> list[Any]:
    return list(dict.fromkeys(values))


def _wide(table: pd.DataFrame, index: list[str], column: pd.Series, values: str) -> pd.DataFrame:
    """``values`` pivoted to a line per ``index`` and a column per ``column``, both in first-seen order."""
    wide = table.assign(_column=column).pivot(index=index, columns="_column", values=values)
    lines = pd.MultiIndex.from_tuples(_first_seen(zip(*(table[i] for i in index), strict=True)), names=index)
    wide = wide.reindex(index=lines, columns=_first_seen(column))
    wide.columns.name = None
    return wide.reset_index()


def backbone_table(rows: pd.DataFrame) -> pd.DataFrame:
    """:func:`tie_table` per backbone × shots × method, with each backbone's parameter count (``params``,
    the whole CLIP model as open_clip counts it), as :func:`kalahash.plots.backbone_scaling` plots it."""
    from ..backbones import parameter_count

    named = rows.assign(method=rows["variant"]) if "variant" in rows else rows
    table = tie_table(named, by=("backbone", "shots", "method"))
    counts = {b: parameter_count(b) for b in table["backbone"].unique()}
    table.insert(1, "params", table["backbone"].map(counts))
    return table
