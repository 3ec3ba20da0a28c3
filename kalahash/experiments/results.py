"""The results table of runs: :mod:`kalahash.results_table`'s rows, each checked against the config its
``config_id`` names (a row that is not that run is damaged, and skipped with a warning)."""

from __future__ import annotations

import os
import typing
from collections.abc import Mapping
from dataclasses import fields
from typing import Any

import pandas as pd

from .. import results_table
from ..history import stored_flags
from ..results_table import DEFAULT_RESULTS, recorded_fields
from .config import ExperimentConfig, config_hash


def _text_fields() -> tuple[str, ...]:
    """The config fields that hold text (``str`` or ``str | None``)."""
    hints = typing.get_type_hints(ExperimentConfig)
    return tuple(
        f.name
        for f in fields(ExperimentConfig)
        if set(typing.get_args(hints[f.name]) or [hints[f.name]]) <= {str, type(None)}
    )


# The text columns of a run's row (runner.run_experiment). Read as strings, a stored row equals the row
# its run returned: left to pandas, knowledge "true" would come back as True.
TEXT_COLUMNS = (
    "config_id",
    *_text_fields(),
    "hyperparameters",
    "hparams_used",
    "hparams_source",
    "shot_shortfall",
    "ties_rule",
    "flags",
    "history_file",
    "backbone_fingerprint",
    "data_fingerprint",
    "git_commit",
    "kalahash_version",
    "torch_version",
    "open_clip_version",
    "python_version",
    "device",
    "finished_at",
)


def _config_problem(cells: Mapping[str, str]) -> str | None:
    """Why a results row is not the run its config_id names (None: it is, or the row cannot tell)."""
    if "config_id" not in cells:
        return None
    try:
        recorded = recorded_fields(cells, ExperimentConfig)
    except ValueError as err:
        return str(err)
    if recorded is None or config_hash(recorded) == cells["config_id"]:
        return None
    return (
        f"its config_id {cells['config_id']} is not that of the config it records ({config_hash(recorded)})"
    )


def read_results(path: str | os.PathLike = DEFAULT_RESULTS) -> pd.DataFrame:
    """The intact rows of a results table (:mod:`kalahash.results_table`); a damaged row (cut, not a
    number, or not the run its config_id names) is skipped with a DamagedRowWarning naming file:line.
    ``flags`` as :func:`kalahash.history.stored_flags` reads them."""
    return stored_flags(results_table.read_results(path, _config_problem, TEXT_COLUMNS))


def append_result(row: Mapping[str, Any], path: str | os.PathLike = DEFAULT_RESULTS) -> None:
    """Append one row atomically (concurrent appends all land); damaged rows move to ``<path>.damaged``."""
    results_table.append_result(row, path, _config_problem)


def find_result(config: ExperimentConfig, path: str | os.PathLike = DEFAULT_RESULTS) -> dict[str, Any] | None:
    return results_table.find_row(config.config_id, read_results(path))
