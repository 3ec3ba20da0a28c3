"""Sweeps that outgrow one process: every missing run as a submitit job, on this machine (``local``: a
few processes at once) or on a Slurm cluster (``slurm``: one array job, one configuration per task).

:func:`launch_runs` merges the run files already there (:func:`~kalahash.experiments.collect_runs`),
submits the configurations that have no row yet, merges each job's run file into the results table as
it finishes and lists the failed ones with their log and error line. Each job checkpoints every epoch;
on preemption or time-out submitit requeues it and it resumes (:class:`~kalahash.experiments.RunJob`).
The files a launch leaves beside the table are described in :mod:`kalahash.experiments.runfiles`.

submitit is imported only when a launcher is used: ``kalahash --help`` and the in-process runs work
without it.
"""

from __future__ import annotations

import inspect
import json
import os
import shutil
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..results_table import DEFAULT_RESULTS
from .config import DEFAULT_CACHE

if TYPE_CHECKING:
    import pandas as pd

    from .config import ExperimentConfig
    from .runfiles import FailedRun

LAUNCHERS = ("local", "slurm")
# Options of run_experiment a launcher sets itself for each job.
_OWN_OPTIONS = ("results", "force", "checkpoint", "resume", "progress")
# Slurm parameters the launcher's own options set; --slurm-extra may not set them.
_SLURM_OWN = {
    "time": "timeout_min= (CLI: --timeout-min)",
    "partition": "partition= (CLI: --slurm-partition)",
    "gpus_per_node": "gpus_per_job= (CLI: --gpus-per-job)",
    "array_parallelism": "max_parallel= (CLI: --max-parallel)",
}
_SLURM_ONLY = {
    "partition": "--slurm-partition",
    "max_parallel": "--max-parallel",
    "extra": "--slurm-extra",
}


class SubmititMissingError(ImportError):
    """A launcher was asked for, but submitit is not installed."""


class SlurmMissingError(FileNotFoundError):
    """The slurm launcher was asked for on a machine without Slurm's commands (sbatch, srun)."""


class LaunchError(RuntimeError):
    """Launched runs failed; their rows are missing (each named, with its log and error line)."""


def require_launcher(launcher: Launcher) -> Any:
    """The submitit module, once it and (for Slurm) the cluster's commands are there; otherwise an error
    that says what to install or where to launch from."""
    try:
        import submitit
    except ImportError:
        raise SubmititMissingError(
            'the local and slurm launchers run on submitit, which is not installed: pip install "kalahash[launch]" '
            "(or pip install submitit)"
        ) from None
    missing = [c for c in ("sbatch", "srun") if launcher.kind == "slurm" and shutil.which(c) is None]
    if missing:
        raise SlurmMissingError(
            f"the slurm launcher submits with Slurm's sbatch and srun; {' and '.join(missing)} "
            f"{'is' if len(missing) == 1 else 'are'} not on this machine's PATH: launch from the cluster's "
            "login node, or use launcher='local' (CLI: --launcher local)"
        )
    return submitit


@dataclass(frozen=True)
class Launcher:
    """Where the runs of a sweep go, as submitit jobs.

    ``kind`` "local": ``jobs`` processes on this machine at once (default: one per GPU, each with
    ``gpus_per_job`` of them, or 1 without a GPU). ``kind`` "slurm": one array job on ``partition``,
    ``gpus_per_job`` GPUs a task (default 1), at most ``max_parallel`` tasks at once (default: all), and
    ``extra`` sbatch settings (``{"account": "proj", "cpus_per_task": 8}``; submitit's name or sbatch's).
    Each job may run ``timeout_min`` minutes; at its end (or when preempted) it is requeued and resumes
    from its checkpoint, up to ``max_requeues`` time-outs (preemptions without limit). ``keep_checkpoints`` keeps each run's
    checkpoint after its run file is written (by default removed). ``poll_s``: seconds between looks at
    the jobs (default: 1 locally, 30 on Slurm). ``wait=False`` returns once the jobs are submitted
    (``kalahash collect`` merges their rows later).
    """

    kind: str
    jobs: int | None = None
    gpus_per_job: int | None = None
    timeout_min: int = 120
    partition: str | None = None
    max_parallel: int | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)
    max_requeues: int = 3
    keep_checkpoints: bool = False
    poll_s: float | None = None
    wait: bool = True

    def __post_init__(self) -> None:
        if self.kind not in LAUNCHERS:
            raise ValueError(f"launcher {self.kind!r} is not one of {', '.join(LAUNCHERS)}")
        for name in ("jobs", "max_parallel", "timeout_min", "gpus_per_job", "max_requeues"):
            value = getattr(self, name)
            least = 0 if name in ("gpus_per_job", "max_requeues") else 1
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < least):
                raise ValueError(f"launcher {name} must be an integer of at least {least}, got {value!r}")
        object.__setattr__(self, "extra", dict(self.extra))
        if self.kind == "local":
            given = [f"{n}= (CLI: {flag})" for n, flag in _SLURM_ONLY.items() if getattr(self, n)]
            if given:
                raise ValueError(f"{', '.join(given)}: options of the slurm launcher, not of the local one")
        if self.kind == "local" and not self.wait:
            raise ValueError(
                "wait=False (CLI: --no-wait) is for Slurm: local jobs end with the process that runs them"
            )
        if self.kind == "slurm" and self.jobs is not None:
            raise ValueError(
                "jobs= (CLI: --jobs) is the local launcher's number of processes; on Slurm, "
                "max_parallel= (CLI: --max-parallel) bounds how many tasks of the array run at once"
            )
        owned = [
            f"{k} (set it with {_SLURM_OWN[k]})" for k in map(_slurm_name, self.extra) if k in _SLURM_OWN
        ]
        if owned:
            raise ValueError(f"extra Slurm settings {', '.join(owned)}")

    @classmethod
    def of(cls, value: Launcher | Mapping[str, Any] | str | None) -> Launcher | None:
        """A launcher from what a notebook parameter or a Python caller gives: None (or "", "none"): runs
        in this process; "local" or "slurm"; a mapping of the fields; or its JSON text."""
        if value is None or isinstance(value, Launcher):
            return value
        if isinstance(value, str):
            text = value.strip()
            if text.lower() in ("", "none"):
                return None
            if not text.startswith("{"):
                return cls(text)
            try:
                value = json.loads(text)
            except json.JSONDecodeError as err:
                raise ValueError(f"launcher {text!r} is not valid JSON ({err})") from None
        if not isinstance(value, Mapping):
            raise ValueError(
                f"launcher must be None, 'local', 'slurm' or a mapping of options, got {value!r}"
            )
        names = [f.name for f in fields(cls)]
        unknown = sorted(set(value) - set(names))
        if unknown:
            raise ValueError(
                f"launcher option(s) {', '.join(map(repr, unknown))} not understood; the options are "
                f"{', '.join(names)}"
            )
        if "kind" not in value:
            raise ValueError(f"launcher {dict(value)!r} needs kind: 'local' or 'slurm'")
        return cls(**value)

    def to_dict(self) -> dict[str, Any]:
        """The launcher as plain values (a notebook parameter)."""
        return asdict(self)


def _slurm_name(key: str) -> str:
    return key.replace("-", "_")


def launcher_setting(value: Any) -> dict[str, Any] | None:
    """A notebook's ``launcher`` parameter, checked, as plain values (None: runs in the notebook)."""
    launcher = Launcher.of(value)
    return None if launcher is None else launcher.to_dict()


@dataclass(frozen=True)
class Launched:
    """What :func:`launch_runs` did: the rows of the configurations (from the results table, in the
    order given; a run without a row has none), how many were found stored, how many were submitted,
    the failed runs, the submitit jobs, where their logs are, and the Slurm array's job id."""

    rows: pd.DataFrame
    stored: int
    submitted: int
    failed: list[FailedRun]
    jobs: list[Any]
    logs: Path
    array_id: str | None = None


def _job_options(results: Path, run_options: Mapping[str, Any]) -> dict[str, Any]:
    """run_experiment's options for every job: checked names, absolute paths."""
    from .runner import run_experiment

    allowed = set(inspect.signature(run_experiment).parameters) - {"cfg", *_OWN_OPTIONS}
    unknown = sorted(set(run_options) - allowed)
    if unknown:
        raise ValueError(
            f"launched runs do not take {', '.join(unknown)} (each job keeps its own checkpoint beside the "
            f"results table); they take {', '.join(sorted(allowed))}"
        )
    options = dict(run_options)
    workdir = options.get("workdir")
    options["workdir"] = str(Path(workdir if workdir is not None else results.parent).resolve())
    cache = options.get("cache", DEFAULT_CACHE)
    if cache is not None and not isinstance(cache, str | os.PathLike):
        cache = cache.root  # a PrefixCache: its folder
    options["cache"] = None if cache is None else str(Path(cache).resolve())
    return options


def _unique(configs: Iterable[ExperimentConfig]) -> list[ExperimentConfig]:
    seen: dict[str, ExperimentConfig] = {}
    for config in configs:
        seen.setdefault(config.config_id, config)
    return list(seen.values())


def launch_runs(
    configs: Iterable[ExperimentConfig],
    launcher: Launcher | Mapping[str, Any] | str,
    *,
    results: str | os.PathLike = DEFAULT_RESULTS,
    force: bool = False,
    progress: bool = True,
    log: Callable[[str], None] = print,
    **run_options: Any,
) -> Launched:
    """Run every configuration without a row in ``results`` as a job of ``launcher`` (a
    :class:`Launcher`, "local", "slurm" or a mapping of its fields) and return their rows.

    Run files already beside the table are merged first; a configuration whose row is then in the table
    is not submitted again (``force``: all are, afresh). Each job's run file is merged as the job ends;
    a failed run is listed in ``failed`` with its error line and log, and the others go on. ``run_options``
    go to :func:`run_experiment` in each job (``workdir``, ``cache``, ``device``, ``allow_failed_check``
    ...). ``log`` gets a line when jobs are submitted; ``progress`` shows a bar of finished runs.
    """
    from .results import find_result
    from .runfiles import LOGS_FOLDER, collect_runs, run_paths

    launcher = Launcher.of(launcher)
    if launcher is None:
        raise ValueError("launch_runs needs a launcher: 'local', 'slurm' or a Launcher")
    if results is None:
        raise ValueError("launched runs need results= (CLI: --results): their rows are merged into it")
    submitit = require_launcher(launcher)
    from ..results_table import check_writable

    results = Path(results).resolve()
    check_writable(results.parent, f"results table {results}", "results= (CLI: --results)")
    options = _job_options(results, run_options)
    configs = _unique(configs)
    collect_runs(results)
    todo = [c for c in configs if force or find_result(c, results) is None]
    for config in todo:
        paths = run_paths(results, config.config_id)
        stale = (paths.row, paths.error, paths.checkpoint) if force else (paths.error,)
        for path in stale:
            path.unlink(missing_ok=True)
    logs = results.parent / LOGS_FOLDER
    jobs, failed, array_id = [], [], None
    if todo:
        submit = _Submitter(submitit, launcher, logs, results, options)
        jobs, failed = submit.run(todo, progress, log)
        array_id = submit.array_id
    rows = [find_result(c, results) for c in configs]
    return Launched(
        rows=_frame([r for r in rows if r is not None]),
        stored=len(configs) - len(todo),
        submitted=len(todo),
        failed=failed,
        jobs=jobs,
        logs=logs,
        array_id=array_id,
    )


def _frame(rows: list[dict[str, Any]]) -> pd.DataFrame:
    import pandas as pd

    return pd.DataFrame(rows)


def launched_rows(
    configs: Sequence[ExperimentConfig], launcher: Any, **run_options: Any
) -> dict[str, dict[str, Any]]:
    """The row of each configuration, by config_id, through :func:`launch_runs` (waiting for its jobs):
    a run whose loss diverged gets :func:`~kalahash.experiments.diverged_row`, as in a study run in
    process; any other failure raises :class:`LaunchError` naming each run, its error and its log."""
    from .runner import diverged_row

    launcher = Launcher.of(launcher)
    if launcher is not None and not launcher.wait:
        raise ValueError("a study builds its tables from the rows: its launcher must wait (wait=True)")
    done = launch_runs(configs, launcher, **run_options)
    rows = {} if done.rows.empty else {r["config_id"]: r for r in done.rows.to_dict("records")}
    by_id = {c.config_id: c for c in configs}
    stopped = []
    for failure in done.failed:
        if failure.diverged:
            rows[failure.config_id] = diverged_row(
                by_id[failure.config_id], failure.error.removeprefix("FloatingPointError: ")
            )
        else:
            stopped.append(failure.line())
    if stopped:
        raise LaunchError(f"{len(stopped)} launched run(s) failed:\n" + "\n".join(stopped))
    return rows


class _Submitter:
    """Submits the jobs of one launch, waits for them and merges their run files as they end."""

    def __init__(
        self, submitit: Any, launcher: Launcher, logs: Path, results: Path, options: dict[str, Any]
    ) -> None:
        self.submitit, self.launcher, self.logs, self.results = submitit, launcher, logs, results
        self.options = options
        self.array_id: str | None = None
        self.gpus = launcher.gpus_per_job

    def job(self, config: ExperimentConfig) -> Any:
        from .runfiles import RunJob

        return RunJob(config, str(self.results), self.options, self.launcher.keep_checkpoints)

    def run(self, todo: list[ExperimentConfig], progress: bool, log: Callable[[str], None]) -> tuple:
        """Submit ``todo``, wait for every job (unless the launcher does not wait); the jobs and failures."""
        if self.launcher.kind == "slurm":
            executor = slurm_executor(self.submitit, self.launcher, self.logs, len(todo))
            with executor.batch():
                jobs = [executor.submit(self.job(c)) for c in todo]
            self.array_id = jobs[0].job_id.split("_")[0]
            at_once = min(len(todo), self.launcher.max_parallel or len(todo))
            log(
                f"submitted {len(todo)} run(s) as Slurm job {self.array_id} ({at_once} at once); logs: {self.logs}"
            )
            if not self.launcher.wait:
                return jobs, []
            return jobs, self.wait(
                [], {job: (c, ()) for job, c in zip(jobs, todo, strict=True)}, [], progress
            )
        slots = self.local_slots()
        log(f"running {len(todo)} run(s) as local jobs, {len(slots)} at once; logs: {self.logs}")
        jobs: list[Any] = []
        failed = self.wait(list(todo), {}, slots, progress, jobs)
        stray = self.logs / "%j"  # submitit's local controller makes a folder of the pattern itself
        if stray.is_dir() and not any(stray.iterdir()):
            stray.rmdir()
        return jobs, failed

    def wait(
        self,
        queue: list[ExperimentConfig],
        running: dict[Any, tuple[ExperimentConfig, tuple[int, ...]]],
        slots: list[tuple[int, ...]],
        progress: bool,
        submitted: list[Any] | None = None,
    ) -> list[FailedRun]:
        """Until every job has ended: fill free local slots from ``queue``, and merge each ended job's run
        file (or note its failure). Interrupted, local jobs are cancelled (they would outlive this
        process); Slurm jobs go on."""
        from tqdm.auto import tqdm

        executor = None
        if queue:
            executor = self.submitit.LocalExecutor(
                folder=self.logs / "%j", max_num_timeout=self.launcher.max_requeues
            )
        failed: list[FailedRun] = []
        bar = tqdm(
            total=len(queue) + len(running),
            desc=f"{self.launcher.kind} jobs",
            unit="run",
            disable=not progress,
        )
        poll = self.launcher.poll_s or (30.0 if self.launcher.kind == "slurm" else 1.0)
        try:
            while queue or running:
                while queue and slots:
                    slot = slots.pop(0)
                    executor.update_parameters(
                        timeout_min=self.launcher.timeout_min, gpus_per_node=len(slot), visible_gpus=slot
                    )
                    job = executor.submit(self.job(queue[0]))
                    submitted.append(job)
                    running[job] = (queue.pop(0), slot)
                ended = [job for job in running if job.done()]
                for job in ended:
                    config, slot = running.pop(job)
                    failure = self.finished(job, config)
                    failed += [failure] if failure else []
                    slots.append(slot)
                    bar.update()
                if not ended:
                    time.sleep(poll)
        except BaseException:
            if self.launcher.kind == "local":
                for job in running:
                    job.cancel()
            raise
        finally:
            bar.close()
        return failed

    def local_slots(self) -> list[tuple[int, ...]]:
        """The GPUs of each local job slot: one slot per GPU group (or ``jobs`` slots without GPUs)."""
        import torch

        available = torch.cuda.device_count()
        gpus = self.gpus if self.gpus is not None else (1 if available else 0)
        jobs = self.launcher.jobs or max(available // gpus if gpus else 1, 1)
        if gpus * jobs > available:
            raise ValueError(
                f"{jobs} local job(s) with {gpus} GPU(s) each need {gpus * jobs} GPUs; this machine has "
                f"{available}: lower jobs= (CLI: --jobs) or gpus_per_job= (CLI: --gpus-per-job)"
            )
        return [tuple(range(k * gpus, (k + 1) * gpus)) for k in range(jobs)]

    def finished(self, job: Any, config: ExperimentConfig) -> FailedRun | None:
        """Merge an ended job's run file; without one, its failure (record, else the log's last line)."""
        from .runfiles import FailedRun, collect_runs, describe_config, read_failure, run_paths

        merged = collect_runs(self.results, only=[config.config_id])
        what = describe_config(config.to_row())
        if merged.unreadable:
            return FailedRun(config.config_id, what, f"its run file was not merged: {merged.unreadable[0]}")
        paths = run_paths(self.results, config.config_id)
        if paths.row.exists():
            return None
        if paths.error.exists():
            return read_failure(paths.error)
        log = Path(job.paths.stderr)
        text = log.read_text(errors="replace") if log.exists() else ""
        lines = [line.strip() for line in text.splitlines() if line.strip()]
        error = lines[-1] if lines else f"job {job.job_id} ended ({job.state}) without a result"
        return FailedRun(config.config_id, what, error, str(log))


def slurm_executor(submitit: Any, launcher: Launcher, logs: Path, count: int) -> Any:
    """A SlurmExecutor for ``count`` runs: one array, the launcher's partition, GPUs, time and
    parallelism; ``extra`` keys that name a submitit Slurm parameter set it, the others go to sbatch as
    they are (``--slurm-extra reservation=paper`` writes ``#SBATCH --reservation=paper``)."""
    executor = submitit.SlurmExecutor(folder=logs / "%j", max_num_timeout=launcher.max_requeues)
    known = set(executor._valid_parameters())  # the names its update_parameters takes
    gpus = 1 if launcher.gpus_per_job is None else launcher.gpus_per_job
    params: dict[str, Any] = {
        "job_name": "kalahash",
        "time": launcher.timeout_min,
        "array_parallelism": launcher.max_parallel or count,
        **({"gpus_per_node": gpus} if gpus else {}),
    }
    if launcher.partition:
        params["partition"] = launcher.partition
    additional = {}
    for key, value in launcher.extra.items():
        if _slurm_name(key) in known:
            params[_slurm_name(key)] = value
        else:
            additional[key] = value
    if additional:
        params["additional_parameters"] = additional
    executor.update_parameters(**params)
    return executor
