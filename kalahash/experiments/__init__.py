"""Run one paper setting, or a sweep, and keep every result as a traceable row of a tidy table.

What lives here (import the names from ``kalahash.experiments``; the modules are how it is laid out):

- ``config``: :class:`ExperimentConfig` (one run), :func:`config_hash` (its ``config_id``), ``METHODS``
  and ``LIST_OPTIONS`` (the list files of data set ``listfile``);
- ``results``: the results table of runs, rows checked against their config (:func:`read_results`,
  :func:`append_result`, :func:`find_result`);
- ``runner``: :func:`run_experiment`, :func:`expand_grid`, :func:`run_sweep`, :func:`summarize`,
  :func:`run_demo`, and :func:`checked_data` (a data set's remembered integrity check);
- ``checkpoint_ops``: the Python twins of ``kalahash eval``, ``export`` and ``check-data``
  (:func:`evaluate_checkpoint`, :func:`export_checkpoint`, :func:`check_dataset`);
- ``notebook``: the notebooks' ``PROFILES``, :func:`notebook_settings`, :func:`list_setting` (papermill's
  list parameters) and :func:`project_paths`.

Layer 7 (tests/test_layout.py): these modules import each other and the layers below (``train``,
``checkpoints``, ``plots``, ``hashing``, ``backbones``, ``data``, ``results_table``, ``history``,
``presets``, ``machine``, ``fileio``); never ``studies``, ``views``, ``efficiency``, ``reproduce`` or ``cli``.
"""

from ..checkpoints import load_exported
from ..machine import provenance
from ..results_table import DEFAULT_RESULTS, DamagedRowWarning, RowNotWrittenWarning
from .checkpoint_ops import (
    ExportedModel,
    UnnamedDatasetError,
    check_dataset,
    evaluate_checkpoint,
    export_checkpoint,
)
from .config import LIST_OPTIONS, METHODS, ExperimentConfig, config_hash
from .notebook import PROFILES, WORLDS, list_setting, notebook_settings, project_paths
from .results import append_result, find_result, read_results
from .runner import (
    DEFAULT_CACHE,
    DEMO_METHODS,
    checked_data,
    expand_grid,
    run_demo,
    run_experiment,
    run_sweep,
    summarize,
)

__all__ = [
    "DEFAULT_CACHE",
    "DEFAULT_RESULTS",
    "DEMO_METHODS",
    "LIST_OPTIONS",
    "METHODS",
    "PROFILES",
    "WORLDS",
    "DamagedRowWarning",
    "ExperimentConfig",
    "ExportedModel",
    "RowNotWrittenWarning",
    "UnnamedDatasetError",
    "append_result",
    "check_dataset",
    "checked_data",
    "config_hash",
    "evaluate_checkpoint",
    "expand_grid",
    "export_checkpoint",
    "find_result",
    "list_setting",
    "load_exported",
    "notebook_settings",
    "project_paths",
    "provenance",
    "read_results",
    "run_demo",
    "run_experiment",
    "run_sweep",
    "summarize",
]
