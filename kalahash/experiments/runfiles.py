"""One result file per run: what a launched job writes beside the results table, and the merge of those
files into the table (:func:`collect_runs`, ``kalahash collect``).

Appending to one CSV from many hosts on a network file system is not safe (``fcntl`` locks can silently
do nothing there), so a job never writes the table. Beside ``results.csv``:

- ``runs/<config_id>.json``: a finished run's row, written whole (a temporary file, then a rename);
- ``runs/<config_id>.error.json``: a failed run's error line, traceback and job log;
- ``checkpoints/<config_id>.ckpt``: the run's state after every epoch, which a requeued job resumes
  (removed once its run file is written, unless kept);
- ``logs/``: submitit's job folders (its scripts, pickles and the jobs' output).

Only the merging process writes the table, through :func:`append_result`; one merge runs at a time
(``runs/merge.lock``). These ``runs/`` hold one file per run; ``kalahash reproduce``'s ``runs/<timestamp>/``
(executed notebooks, at the project's top) is another folder.
"""

from __future__ import annotations

import json
import os
import socket
import time
import traceback
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from ..fileio import atomic_write_text
from ..results_table import Locked
from .config import ExperimentConfig, config_hash

RUNS_FOLDER = "runs"
CHECKPOINTS_FOLDER = "checkpoints"
LOGS_FOLDER = "logs"
ERROR_SUFFIX = ".error.json"
# What a run file holds besides its row; a reader refuses other formats.
RUN_FILE_FORMAT = 1
# Keys of run_experiment's return value that are not columns of its row.
_NOT_ROW = ("skipped", "resumed_from_epoch")


@dataclass(frozen=True)
class RunPaths:
    """The files of one launched run, beside its results table."""

    row: Path
    error: Path
    checkpoint: Path


def run_paths(results: str | os.PathLike, config_id: str) -> RunPaths:
    folder = Path(results).parent
    return RunPaths(
        row=folder / RUNS_FOLDER / f"{config_id}.json",
        error=folder / RUNS_FOLDER / f"{config_id}{ERROR_SUFFIX}",
        checkpoint=folder / CHECKPOINTS_FOLDER / f"{config_id}.ckpt",
    )


def describe_config(config: Mapping[str, Any]) -> str:
    """A run in a few words, for a line of a report: "kalahash, 1 shot, 16 bits, seed 0"."""
    shots = config.get("shots")
    return f"{config.get('method')}, {shots} shot{'s' if shots != 1 else ''}, {config.get('bits')} bits, seed {config.get('seed')}"


def _plain(value: Any) -> Any:
    """numpy scalars as Python numbers, for JSON."""
    if hasattr(value, "item"):
        return value.item()
    raise TypeError(f"a run's row holds {type(value).__name__} {value!r}, which JSON cannot store")


def _job_context() -> dict[str, Any]:
    """The submitit job this process runs as (id and log), or nothing outside a job."""
    try:
        import submitit

        env = submitit.JobEnvironment()
        return {"job_id": env.job_id, "log": str(env.paths.stderr)}
    except (ImportError, RuntimeError, KeyError):
        return {}


def write_run_file(path: Path, row: Mapping[str, Any], resumed_from_epoch: int) -> Path:
    """A finished run's row as ``runs/<config_id>.json``, atomically."""
    record = {
        "format": RUN_FILE_FORMAT,
        "config_id": row["config_id"],
        "row": {k: v for k, v in row.items() if k not in _NOT_ROW},
        "resumed_from_epoch": resumed_from_epoch,
        "host": socket.gethostname(),
        **_job_context(),
    }
    return atomic_write_text(path, json.dumps(record, indent=1, default=_plain))


def write_failure(path: Path, config: ExperimentConfig, error: BaseException) -> Path:
    """A failed run's record as ``runs/<config_id>.error.json``: the error's first line (the report's),
    the traceback, the job's log, whether the loss diverged, and when."""
    message = str(error).strip().splitlines()
    record = {
        "config_id": config.config_id,
        "config": config.to_row(),
        "error": f"{type(error).__name__}: {message[0]}" if message else type(error).__name__,
        "diverged": isinstance(error, FloatingPointError),
        "traceback": "".join(traceback.format_exception(error)),
        "host": socket.gethostname(),
        "failed_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        **_job_context(),
    }
    return atomic_write_text(path, json.dumps(record, indent=1, default=str))


@dataclass
class RunJob:
    """One configuration as a submitit job: runs it with a checkpoint after every epoch and writes its
    run file (or its failure record), never the results table.

    submitit calls :meth:`checkpoint` when Slurm preempts the job or its time runs out, and requeues what
    it returns: this same call, which finds the run's checkpoint and resumes from its last finished
    epoch (``fit`` reaches the same result as an uninterrupted run). A run whose file exists already (a
    job requeued after it finished) returns at once. ``options`` go to :func:`run_experiment`
    (``workdir``, ``cache``, ``device`` ...; absolute paths: a job may start in another folder).
    """

    config: ExperimentConfig
    results: str
    options: dict[str, Any] = field(default_factory=dict)
    keep_checkpoint: bool = False

    def __call__(self) -> str:
        from .runner import run_experiment

        paths = run_paths(self.results, self.config.config_id)
        if paths.row.exists():
            return str(paths.row)
        print(f"kalahash job: {self.config.config_id} ({describe_config(self.config.to_row())})", flush=True)
        try:
            row = run_experiment(
                self.config,
                results=None,
                checkpoint=paths.checkpoint,
                resume=paths.checkpoint.exists(),
                progress=False,
                **self.options,
            )
        except Exception as err:
            write_failure(paths.error, self.config, err)
            raise
        write_run_file(paths.row, row, row["resumed_from_epoch"])
        paths.error.unlink(missing_ok=True)
        if not self.keep_checkpoint:
            paths.checkpoint.unlink(missing_ok=True)
        resumed = row["resumed_from_epoch"]
        went_on = f" (resumed from the checkpoint of epoch {resumed})" if resumed else ""
        print(f"kalahash job: mAP {row['map']:.4f}{went_on}, run file {paths.row}", flush=True)
        return str(paths.row)

    def checkpoint(self, *args: Any, **kwargs: Any) -> Any:
        """submitit's hook on preemption or time-out: the requeued job is this same call. Its state is on
        disk already (the checkpoint written after every epoch), so nothing else is saved here."""
        from submitit.helpers import DelayedSubmission

        return DelayedSubmission(self, *args, **kwargs)


@dataclass(frozen=True)
class FailedRun:
    """A run without a row: its id, what it is, the error line and the job's log (None when unknown)."""

    config_id: str
    what: str
    error: str
    log: str | None = None
    diverged: bool = False

    def line(self) -> str:
        return f"{self.config_id} ({self.what}): {self.error}" + (f"; log: {self.log}" if self.log else "")


@dataclass(frozen=True)
class Collected:
    """What :func:`collect_runs` did: run files merged into the table, those whose row was there
    already, files that could not be used (and why), and failed runs (records without a row)."""

    merged: list[str]
    already: list[str]
    unreadable: list[str]
    failed: list[FailedRun]


def read_failure(path: Path) -> FailedRun:
    """A failure record as a :class:`FailedRun`."""
    record = json.loads(path.read_text(encoding="utf-8"))
    return FailedRun(
        record["config_id"],
        describe_config(record.get("config", {})),
        record.get("error", "unknown error"),
        record.get("log"),
        bool(record.get("diverged")),
    )


def _row_problem(path: Path, record: Any) -> str | None:
    """Why a run file cannot be merged (None: it can)."""
    if not isinstance(record, dict) or record.get("format") != RUN_FILE_FORMAT:
        return f"{path}: not a kalahash run file (format {RUN_FILE_FORMAT})"
    row = record.get("row", {})
    names = [f.name for f in fields(ExperimentConfig)]
    if row.get("config_id") != path.stem or any(n not in row for n in names):
        return f"{path}: its row is not that of run {path.stem}"
    if config_hash({n: row[n] for n in names}) != path.stem:
        return f"{path}: its row's config is not that of run {path.stem} (the file was edited)"
    return None


def _stored(table: Any) -> set[tuple[str, str]]:
    """(config_id, finished_at) of the table's rows: a run file is in the table when both match."""
    if table.empty or "finished_at" not in table:
        return set()
    return set(zip(table["config_id"].astype(str), table["finished_at"].astype(str), strict=True))


def collect_runs(results: str | os.PathLike, only: Iterable[str] | None = None) -> Collected:
    """Merge the run files beside ``results`` (``runs/*.json``; with ``only``, those of these
    config_ids) into the table, appending each row not yet there (:func:`append_result`: atomic,
    damaged rows set aside). A run file is in the table when a row has its config_id and
    ``finished_at``. Failure records of runs with neither a row nor a run file come back in ``failed``.
    """
    from .results import append_result, read_results

    results = Path(results)
    folder = results.parent / RUNS_FOLDER
    wanted = None if only is None else set(only)
    merged, already, unreadable = [], [], []
    folder.mkdir(parents=True, exist_ok=True)
    with Locked(folder / "merge"):
        table = read_results(results)
        stored = _stored(table)
        for path in sorted(folder.glob("*.json")):
            if path.name.endswith(ERROR_SUFFIX) or (wanted is not None and path.stem not in wanted):
                continue
            try:
                record = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, ValueError) as err:
                unreadable.append(f"{path}: {err}")
                continue
            problem = _row_problem(path, record)
            if problem:
                unreadable.append(problem)
                continue
            row = record["row"]
            key = (row["config_id"], str(row.get("finished_at")))
            if key in stored:
                already.append(row["config_id"])
                continue
            append_result(row, results)
            stored.add(key)
            merged.append(row["config_id"])
        with_rows = {c for c, _ in stored}
    failed = []
    for path in sorted(folder.glob(f"*{ERROR_SUFFIX}")):
        config_id = path.name.removesuffix(ERROR_SUFFIX)
        wanted_here = wanted is None or config_id in wanted
        if wanted_here and config_id not in with_rows and not (folder / f"{config_id}.json").exists():
            failed.append(read_failure(path))
    return Collected(merged, already, unreadable, failed)
