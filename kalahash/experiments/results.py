"""The results table of runs: :mod:`kalahash.results_table`'s rows, each checked against the config its
``config_id`` names (a row that is not that run is damaged, and skipped with a warning)."""

from __future__ import annotations

import math
import os
import typing
import warnings
from collections.abc import Mapping
from dataclasses import fields
from typing import Any

import pandas as pd

from .. import results_table
from ..history import stored_flags
from ..results_table import DEFAULT_RESULTS, recorded_fields
from ..train import TRAINING_LOOP
from .config import ExperimentConfig, config_hash


class StaleRowWarning(UserWarning):
    """A stored row was made by an older training loop whose result differs: its run is made again."""


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
    return stored_flags(results_table.read_table(path, _config_problem, TEXT_COLUMNS))


def append_result(row: Mapping[str, Any], path: str | os.PathLike = DEFAULT_RESULTS) -> None:
    """Append one row atomically (concurrent appends all land); damaged rows move to ``<path>.damaged``."""
    results_table.append_row(row, path, _config_problem)


def _loop_of(row: Mapping[str, Any]) -> int:
    """The training loop a stored row was made by (:data:`kalahash.train.TRAINING_LOOP`; 1 before rows
    recorded it)."""
    value = row.get("training_loop")
    return 1 if value is None or (isinstance(value, float) and math.isnan(value)) else int(value)


def find_result(config: ExperimentConfig, path: str | os.PathLike = DEFAULT_RESULTS) -> dict[str, Any] | None:
    """The stored row of ``config``, or None. A row of a KIDDO run made by an older training loop (its
    B-step used another W) is not that run's result today: None, with a :class:`StaleRowWarning`."""
    from ..hashing import uses_kiddo

    row = results_table.find_row(config.config_id, read_results(path))
    if row is None or _loop_of(row) >= TRAINING_LOOP:
        return row
    hparams, _ = config.resolved_hparams()
    if not uses_kiddo(config.method, hparams):
        return row  # the loops differ only in KIDDO's B-step
    warnings.warn(
        StaleRowWarning(
            f"the stored row of {config.method} (config {config.config_id}) in {str(path)!r} was made by "
            f"training loop {_loop_of(row)}, whose KIDDO B-step used W after the epoch's last optimizer "
            f"step; loop {TRAINING_LOOP} uses the W of that epoch's last forward pass, as released, so the "
            "run is made again"
        ),
        stacklevel=2,
    )
    return None
