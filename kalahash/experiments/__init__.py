"""Run one paper setting, or a sweep, and keep every result as a traceable row of a tidy table.

What lives here (import the names from ``kalahash.experiments``; the modules are how it is laid out):

- ``config``: :class:`ExperimentConfig` (one run), :func:`config_hash` (its ``config_id``), ``METHODS`` (the
  registry's names), ``HPARAM_FIELDS``, ``LIST_OPTIONS`` (the list files of data set ``listfile``) and the
  defaults of a run
  (``DEFAULT_DATASET``, ``DEFAULT_BACKBONE``, ``DEFAULT_CACHE``);
- ``results``: the results table of runs, rows checked against their config (:func:`read_results`,
  :func:`append_result`, :func:`find_result`);
- ``runner``: :func:`run_experiment` (made of :func:`~kalahash.experiments.runner.load_run_data`,
  :func:`~kalahash.experiments.runner.check_run_data` and :func:`~kalahash.experiments.runner.build_run`,
  then training and scoring), :func:`run_configs` (a list of runs; one that diverged is a flagged row:
  :func:`run_or_flag`, :func:`diverged_row`), :func:`expand_grid`, :func:`run_sweep`, :func:`summarize`, :func:`run_demo`;
- ``data_checks``: a data set's integrity check, afresh (:func:`check_dataset`, the twin of ``kalahash
  check-data``) or remembered while its files stay the same (:func:`checked_data`, what runs use);
- ``checkpoint_ops``: the Python twins of ``kalahash eval`` and ``export`` (:func:`evaluate_checkpoint`,
  :func:`export_checkpoint`); from ``kalahash.checkpoints``, :func:`convert_checkpoint` (``kalahash
  convert-checkpoint``) and :func:`load_exported`;
- ``launch``: runs as submitit jobs, locally or on Slurm (:class:`Launcher`, :func:`launch_runs`,
  :func:`launched_rows`); ``runfiles``: one result file per launched run, the job that writes it
  (:class:`RunJob`) and their merge into the table (:func:`collect_runs`);
- ``notebook``: the notebooks' ``PROFILES``, :func:`notebook_settings`, :func:`list_setting` (papermill's
  list parameters) and :func:`project_paths`.

Layer 7 (tests/test_layout.py): these modules import each other and the layers below (``train``,
``checkpoints``, ``plots``, ``hashing``, ``backbones``, ``data``, ``results_table``, ``history``,
``presets``, ``machine``, ``fileio``); never ``studies``, ``views``, ``efficiency``, ``reproduce`` or ``cli``.

The names are imported when first asked for (PEP 562), so that ``kalahash --help`` and the CLI's option
defaults (``config``) do not import torch, open_clip or pandas.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

# Where each name lives, relative to this package.
_HOMES: dict[str, tuple[str, ...]] = {
    "..checkpoints": (
        "ConvertedCheckpoint",
        "UnsafeCheckpointError",
        "UntrustedCheckpointError",
        "convert_checkpoint",
        "load_exported",
    ),
    "..machine": ("provenance",),
    "..results_table": ("DEFAULT_RESULTS", "DamagedRowWarning", "RowNotWrittenWarning"),
    ".checkpoint_ops": ("ExportedModel", "UnnamedDatasetError", "evaluate_checkpoint", "export_checkpoint"),
    ".config": (
        "DEFAULT_BACKBONE",
        "DEFAULT_CACHE",
        "DEFAULT_DATASET",
        "DEFAULT_FIGURES",
        "HPARAM_FIELDS",
        "LIST_OPTIONS",
        "METHODS",
        "ExperimentConfig",
        "config_hash",
    ),
    ".data_checks": ("check_dataset", "checked_data"),
    ".launch": (
        "LAUNCHERS",
        "LaunchError",
        "Launched",
        "Launcher",
        "SlurmMissingError",
        "SubmititMissingError",
        "launch_runs",
        "launched_rows",
        "launcher_setting",
        "require_launcher",
    ),
    ".notebook": ("PROFILES", "list_setting", "notebook_settings", "project_paths"),
    ".results": ("StaleRowWarning", "append_result", "find_result", "read_results"),
    ".runfiles": ("Collected", "FailedRun", "RunJob", "collect_runs", "run_paths"),
    ".runner": (
        "DEMO_METHODS",
        "diverged_row",
        "expand_grid",
        "run_configs",
        "run_demo",
        "run_experiment",
        "run_or_flag",
        "run_sweep",
        "summarize",
    ),
}
_MODULE_OF = {name: module for module, names in _HOMES.items() for name in names}
__all__ = sorted(_MODULE_OF, key=lambda n: (not n.isupper(), not n[0].isupper(), n))


def __getattr__(name: str) -> Any:
    """A name of this package, from its module (looked up each time: a test replacing
    ``runner.run_experiment`` is seen here too, as with the eager imports this replaces)."""
    if name in _MODULE_OF:
        return getattr(import_module(_MODULE_OF[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
