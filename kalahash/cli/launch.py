"""Launchers on the command line: the options that send a sweep's runs (``sweep``) or a study's
(``reproduce``) out as submitit jobs, a launched sweep, and ``collect``, which merges run files into
the results table."""

from __future__ import annotations

import argparse
from typing import Any

from ..experiments.launch import LAUNCHERS, Launcher
from ..results_table import DEFAULT_RESULTS
from .options import positive_int, print_table, warn_flags


def _key_value(text: str) -> tuple[str, Any]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expects KEY=VALUE (e.g. account=myproject), got {text!r}")
    if value.lower() == "true":
        return key, True  # an sbatch flag without a value: requeue=true writes #SBATCH --requeue
    return key, int(value) if value.isdigit() else value


def _gpus(text: str) -> int:
    value = int(text) if text.isdigit() else -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {text!r}")
    return value


def add_launcher_args(p: argparse.ArgumentParser) -> None:
    """Where the runs go: in this process (default), local submitit jobs, or a Slurm array."""
    g = p.add_argument_group("launcher (runs as submitit jobs; README: Many GPUs)")
    g.add_argument(
        "--launcher",
        choices=LAUNCHERS,
        default=None,
        help="local: submitit jobs on this machine, --jobs at once; slurm: one Slurm array job, one run a "
        "task. Each job writes its row to runs/<config_id>.json beside the results table, which is merged "
        "into it (default: every run in this process, one after another)",
    )
    g.add_argument(
        "--jobs",
        type=positive_int,
        default=None,
        metavar="N",
        help="--launcher local: runs at once, each its own process (default: one per GPU, or 1 without a "
        "GPU). Not --workers, which sets each run's image-loading processes",
    )
    g.add_argument(
        "--gpus-per-job",
        type=_gpus,
        default=None,
        metavar="N",
        help="GPUs of each job (default: 1; locally 0 on a machine without GPUs)",
    )
    g.add_argument(
        "--timeout-min",
        type=positive_int,
        default=Launcher.timeout_min,
        metavar="MIN",
        help="minutes a job may run; at the limit (up to 3 times) or when preempted, it is requeued and "
        "resumes from its last epoch's checkpoint (default: %(default)s)",
    )
    g.add_argument(
        "--slurm-partition", default=None, metavar="NAME", help="--launcher slurm: the partition to submit to"
    )
    g.add_argument(
        "--max-parallel",
        type=positive_int,
        default=None,
        metavar="P",
        help="--launcher slurm: at most this many tasks of the array at once (sbatch --array=0-N%%P; default: "
        "all)",
    )
    g.add_argument(
        "--slurm-extra",
        type=_key_value,
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="--launcher slurm: any other sbatch setting, repeatable: --slurm-extra account=myproject "
        "--slurm-extra cpus_per_task=8 --slurm-extra constraint=a100",
    )
    g.add_argument(
        "--keep-checkpoints",
        action="store_true",
        help="keep each run's checkpoint (checkpoints/<config_id>.ckpt beside the results table) after its "
        "row is written; by default it is removed then",
    )
    g.add_argument(
        "--no-wait",
        action="store_true",
        help="--launcher slurm: submit and return; `kalahash collect` merges the rows as the jobs finish",
    )


def launcher_from_args(args: argparse.Namespace) -> Launcher | None:
    """The launcher the options describe (None: runs in this process); launcher options without
    --launcher are refused."""
    if args.launcher is None:
        given = [
            flag
            for flag, value in (
                ("--jobs", args.jobs),
                ("--gpus-per-job", args.gpus_per_job),
                ("--slurm-partition", args.slurm_partition),
                ("--max-parallel", args.max_parallel),
                ("--slurm-extra", args.slurm_extra),
                ("--keep-checkpoints", args.keep_checkpoints),
                ("--no-wait", args.no_wait),
                ("--timeout-min", args.timeout_min != Launcher.timeout_min),
            )
            if value
        ]
        if given:
            raise ValueError(f"{', '.join(given)}: options of --launcher local or slurm; add --launcher")
        return None
    return Launcher(
        args.launcher,
        jobs=args.jobs,
        gpus_per_job=args.gpus_per_job,
        timeout_min=args.timeout_min,
        partition=args.slurm_partition,
        max_parallel=args.max_parallel,
        extra=dict(args.slurm_extra),
        keep_checkpoints=args.keep_checkpoints,
        wait=not args.no_wait,
    )


def checked_launcher(args: argparse.Namespace) -> Launcher | None:
    """:func:`launcher_from_args`, refused at once (before any run) when submitit, or Slurm for
    ``--launcher slurm``, is not on this machine."""
    from ..experiments.launch import SubmititMissingError, require_launcher

    launcher = launcher_from_args(args)
    if launcher is not None:
        try:
            require_launcher(launcher)
        except SubmititMissingError as err:
            raise ValueError(str(err)) from None
    return launcher


def launched_sweep(launcher: Launcher, configs: list, run_kwargs: dict[str, Any]) -> int:
    """``kalahash sweep --launcher ...``: submit the missing runs, wait, print the table and the failures."""
    from ..experiments import launch_runs, summarize

    done = launch_runs(configs, launcher, **run_kwargs)
    results = run_kwargs["results"]
    print(f"{done.stored} run(s) stored before, {done.submitted} submitted")
    if not launcher.wait:
        print(
            f"the jobs run on; `kalahash collect --results {results}` merges their rows as they finish "
            "(the same sweep command waits for them and prints the table)"
        )
        return 0
    if not done.rows.empty:
        print_table(summarize(done.rows))
        warn_flags(done.rows)
    for failure in done.failed:
        print(f"failed: {failure.line()}")
    if done.failed:
        print(f"{len(done.failed)} run(s) failed; the same command submits them again")
    print(f"results table: {results}")
    return 1 if done.failed else 0


def interrupted_sweep(args: argparse.Namespace) -> str:
    """What a Ctrl-C in ``sweep`` leaves, with or without a launcher."""
    from .commands import interrupted_grid

    if getattr(args, "launcher", None) == "slurm":
        return (
            f"the Slurm jobs run on: `kalahash collect --results {args.results}` merges their rows as they "
            "finish (the same command would submit the unfinished ones again)"
        )
    if getattr(args, "launcher", None) == "local":
        return f"running local jobs were stopped; finished runs are in {args.results}: the same command runs the rest"
    return interrupted_grid(args)


def add_collect_command(sub: Any) -> None:
    p = sub.add_parser(
        "collect",
        help="merge the run files of launched jobs (runs/*.json beside the results table) into the table; "
        "list the failed runs with their log",
    )
    p.add_argument(
        "--results",
        default=str(DEFAULT_RESULTS),
        help="results table, CSV; its run files are in runs/ beside it (default: %(default)s)",
    )
    p.set_defaults(func=cmd_collect)


def cmd_collect(args: argparse.Namespace) -> int:
    from pathlib import Path

    from ..experiments import collect_runs
    from ..experiments.runfiles import RUNS_FOLDER

    folder = Path(args.results).parent / RUNS_FOLDER
    if not folder.is_dir():
        raise ValueError(f"no run files to collect: {folder} does not exist (launched runs write them there)")
    done = collect_runs(args.results)
    print(
        f"merged {len(done.merged)} run file(s) into {args.results}; {len(done.already)} already there; "
        f"{len(done.failed)} failed; {len(done.unreadable)} unreadable"
    )
    for problem in done.unreadable:
        print(f"unreadable: {problem}")
    for failure in done.failed:
        print(f"failed: {failure.line()}")
    return 1 if done.failed or done.unreadable else 0
