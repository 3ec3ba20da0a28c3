"""Runs as submitit jobs: local processes and Slurm arrays, one run file per run, their merge into the
results table (`kalahash collect`), and a preempted job that resumes from its checkpoint.

The local jobs are real processes (two at most, one thread each) on the shapes world with the random-init
`tiny` backbone; the Slurm path runs without a cluster: sbatch is replaced by a recorder, and each task of
the array runs as the process Slurm would start (submitit's own command, with Slurm's variables).
"""

import json
import os
import shlex
import signal
import subprocess
import sys
from pathlib import Path
from typing import ClassVar

import cloudpickle
import nbformat
import pandas as pd
import pytest

from kalahash.cli import main
from kalahash.cli.launch import launcher_from_args
from kalahash.cli.main import build_parser
from kalahash.experiments import (
    ExperimentConfig,
    Launcher,
    LaunchError,
    collect_runs,
    expand_grid,
    launch_runs,
    read_results,
    run_experiment,
    run_paths,
    run_sweep,
)
from kalahash.experiments import launch as launch_module
from kalahash.experiments.runfiles import RunJob, write_failure

BASE = ExperimentConfig(dataset="shapes", backbone="tiny", epochs=2, seed=0)


def _comparable(rows: pd.DataFrame) -> pd.DataFrame:
    """Rows without what differs between two runs of the same config: times, when they finished, and the
    machine they ran on (its thread count: a job's process is not the test's)."""
    varying = [c for c in rows if c.endswith("_seconds") or c in ("finished_at", "device")]
    return rows.drop(columns=varying).sort_values("config_id").reset_index(drop=True)


@pytest.fixture
def slurm_commands(monkeypatch):
    """A machine that looks like a cluster's login node: sbatch and srun on the PATH."""
    import shutil

    which = shutil.which
    found = lambda name, *a, **k: f"/usr/bin/{name}" if name in ("sbatch", "srun") else which(name, *a, **k)  # noqa: E731
    monkeypatch.setattr(shutil, "which", found)


@pytest.fixture
def one_thread(monkeypatch):
    """Jobs inherit the environment: one thread each, as the tests' own process (conftest)."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setenv("MKL_NUM_THREADS", "1")


# ------------------------------------------------------------------------------------------------------
# Options


def test_launcher_checks_its_options():
    assert Launcher.of(None) is None and Launcher.of("none") is None and Launcher.of("") is None
    assert Launcher.of("slurm") == Launcher("slurm")
    assert Launcher.of('{"kind": "local", "jobs": 2}') == Launcher("local", jobs=2)
    assert Launcher.of(Launcher("local").to_dict()) == Launcher("local")
    with pytest.raises(ValueError, match="launcher 'gpu' is not one of local, slurm"):
        Launcher.of("gpu")
    with pytest.raises(
        ValueError, match=r"launcher option\(s\) 'bogus' not understood; the options are kind, jobs"
    ):
        Launcher.of({"kind": "local", "bogus": 1})
    with pytest.raises(ValueError, match="needs kind: 'local' or 'slurm'"):
        Launcher.of({"jobs": 2})
    with pytest.raises(
        ValueError, match=r"partition= \(CLI: --slurm-partition\).*options of the slurm launcher"
    ):
        Launcher("local", partition="gpu")
    with pytest.raises(ValueError, match=r"jobs= \(CLI: --jobs\) is the local launcher's.*--max-parallel"):
        Launcher("slurm", jobs=4)
    with pytest.raises(ValueError, match=r"extra Slurm settings time \(set it with timeout_min="):
        Launcher("slurm", extra={"time": 30})
    with pytest.raises(ValueError, match="max_parallel must be an integer of at least 1, got 0"):
        Launcher("slurm", max_parallel=0)
    with pytest.raises(ValueError, match=r"--no-wait.*is for Slurm"):
        Launcher("local", wait=False)


def test_cli_refuses_launcher_options_without_a_launcher_or_for_the_other_one(tmp_path, capsys, monkeypatch):
    args = ["sweep", "--dataset", "shapes", "--backbone", "tiny", "--results", str(tmp_path / "r.csv")]
    assert main([*args, "--jobs", "2", "--slurm-partition", "gpu"]) == 2
    assert (
        "--jobs, --slurm-partition: options of --launcher local or slurm; add --launcher"
        in capsys.readouterr().err
    )
    assert main([*args, "--launcher", "local", "--max-parallel", "2"]) == 2
    assert "--max-parallel: options of the slurm launcher, not of the local one" in capsys.readouterr().err
    monkeypatch.setenv("PATH", str(tmp_path))  # no sbatch, no srun here
    assert main([*args, "--launcher", "slurm"]) == 2
    err = capsys.readouterr().err
    assert "sbatch and srun are not on this machine's PATH: launch from the cluster's login node" in err
    assert "or use --launcher local" in err
    assert not (tmp_path / "r.csv").exists()
    extra = [
        "--slurm-extra",
        "account=proj",
        "--slurm-extra",
        "cpus-per-task=8",
        "--slurm-extra",
        "requeue=true",
    ]
    parsed = build_parser().parse_args(
        [*args, "--launcher", "slurm", *extra, "--max-parallel", "4", "--timeout-min", "30"]
    )
    assert launcher_from_args(parsed) == Launcher(
        "slurm",
        max_parallel=4,
        timeout_min=30,
        extra={"account": "proj", "cpus-per-task": 8, "requeue": True},
    )


def test_without_submitit_the_core_and_the_help_work_and_a_launcher_says_what_to_install(tmp_path):
    """submitit is imported only where a launcher runs: blocked, everything else works, and a launch
    stops before any run with the command that installs it."""
    script = f"""
import sys
sys.modules["submitit"] = None  # import submitit now raises ImportError
from kalahash.cli import main
from kalahash.cli.launch import launcher_from_args
from kalahash.cli.main import build_parser
from kalahash.cli.main import build_parser
from kalahash.experiments import Launcher, collect_runs, notebook_settings
build_parser().parse_args(["sweep", "--launcher", "slurm", "--slurm-partition", "gpu"])
assert notebook_settings(launcher="slurm")["launcher"]["kind"] == "slurm"
sys.exit(main(["sweep", "--dataset", "shapes", "--backbone", "tiny", "--launcher", "local",
               "--results", {str(tmp_path / "results.csv")!r}]))
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 2, done.stderr
    assert "kalahash sweep: error: the local and slurm launchers run on submitit" in done.stderr
    assert "pip install submitit" in done.stderr
    assert not (tmp_path / "results.csv").exists()


# ------------------------------------------------------------------------------------------------------
# Local jobs


def test_two_local_jobs_give_the_rows_of_the_in_process_sweep(tmp_path, one_thread):
    configs = expand_grid(BASE, {"method": ["lb", "lora"]})
    cache = tmp_path / "cache"
    launched = launch_runs(
        configs, Launcher("local", jobs=2, poll_s=0.2), results=tmp_path / "jobs" / "results.csv", cache=cache
    )
    assert (launched.submitted, launched.stored, launched.failed) == (2, 0, [])
    assert list(launched.rows["config_id"]) == [c.config_id for c in configs]
    run_sweep(BASE, {"method": ["lb", "lora"]}, results=tmp_path / "here" / "results.csv", cache=cache)
    merged = read_results(tmp_path / "jobs" / "results.csv")
    assert len(merged) == 2
    pd.testing.assert_frame_equal(
        _comparable(merged), _comparable(read_results(tmp_path / "here" / "results.csv"))
    )
    for config in configs:
        paths = run_paths(tmp_path / "jobs" / "results.csv", config.config_id)
        assert paths.row.exists() and not paths.error.exists() and not paths.checkpoint.exists()
    assert len(list((tmp_path / "jobs" / "logs").glob("*/*_0_log.err"))) == 2
    assert not (tmp_path / "jobs" / "logs" / "%j").exists()

    again = launch_runs(configs, "local", results=tmp_path / "jobs" / "results.csv", cache=cache)
    assert (again.submitted, again.stored) == (0, 2)  # rows in the table: nothing submitted
    assert len(read_results(tmp_path / "jobs" / "results.csv")) == 2


class PreemptedOnce(RunJob):
    """A job that, once, gets submitit's preemption signal (USR2) from itself right after its first
    epoch's checkpoint is written, as Slurm sends it before a preemption or the time limit."""

    def __call__(self):
        import kalahash.train

        marker = Path(self.results).parent / "preempted"
        save = kalahash.train.save_training_state

        def save_then_preempt(*args, **kwargs):
            path = save(*args, **kwargs)
            if not marker.exists():
                marker.write_text("signalled after the first epoch's checkpoint\n")
                os.kill(os.getpid(), signal.SIGUSR2)
            return path

        kalahash.train.save_training_state = save_then_preempt
        return RunJob.__call__(self)


def test_a_preempted_job_is_requeued_and_resumes_to_the_same_map(tmp_path, one_thread, monkeypatch):
    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the job's process has no tests/ to import
    try:
        _preempted_run(tmp_path, monkeypatch)
    finally:
        cloudpickle.unregister_pickle_by_value(sys.modules[__name__])


def _preempted_run(tmp_path, monkeypatch):
    monkeypatch.setattr(
        launch_module._Submitter,
        "job",
        lambda self, config: PreemptedOnce(config, str(self.results), self.options),
    )
    config = ExperimentConfig(dataset="shapes", backbone="tiny", epochs=4, seed=1, method="kalahash")
    results = tmp_path / "jobs" / "results.csv"
    launched = launch_runs([config], Launcher("local", poll_s=0.2), results=results, cache=tmp_path / "cache")
    assert launched.failed == [] and (tmp_path / "jobs" / "preempted").exists()
    record = json.loads(run_paths(results, config.config_id).row.read_text())
    assert record["resumed_from_epoch"] == 1  # the requeued job went on from the first epoch's checkpoint
    log = Path(launched.jobs[0].paths.stderr).read_text()
    assert "Caught signal SIGUSR2" in log and "Requeued job" in log

    whole = run_experiment(
        config, results=tmp_path / "whole" / "results.csv", cache=tmp_path / "cache", progress=False
    )
    resumed = read_results(results).iloc[0]
    assert resumed["map"] == whole["map"] and resumed["map_ties_average"] == whole["map_ties_average"]
    pd.testing.assert_frame_equal(
        _comparable(read_results(results)), _comparable(read_results(tmp_path / "whole" / "results.csv"))
    )


# ------------------------------------------------------------------------------------------------------
# Slurm, without a cluster


class FakeSbatch:
    """Stands for submitit's command runner: keeps each script given to sbatch and answers as sbatch does."""

    scripts: ClassVar[list[str]] = []

    def __init__(self, command, verbose=False, **_):
        self.command = list(command)

    def __call__(self):
        assert self.command[0] == "sbatch", self.command
        FakeSbatch.scripts.append(Path(self.command[1]).read_text())
        return "Submitted batch job 4242\n"


def _run_array_task(script: str, task: int, job) -> subprocess.CompletedProcess:
    """Run one task of the array as Slurm would on a node: the script's command (without srun), its
    variables, its output and error files."""
    command = next(line for line in script.splitlines() if line.startswith("srun "))
    words = shlex.split(command)
    python = words[words.index("-m") - 2 :]
    env = {
        **os.environ,
        "SUBMITIT_EXECUTOR": "slurm",
        "SLURM_JOB_ID": str(4243 + task),
        "SLURM_ARRAY_JOB_ID": "4242",
        "SLURM_ARRAY_TASK_ID": str(task),
        "SLURM_PROCID": "0",
        "SLURM_LOCALID": "0",
        "SLURM_NODEID": "0",
        "SLURM_NTASKS": "1",
        "SLURM_JOB_NUM_NODES": "1",
        "SLURM_JOB_NODELIST": "node1",
    }
    with open(job.paths.stdout, "w") as out, open(job.paths.stderr, "w") as err:
        return subprocess.run(python, env=env, stdout=out, stderr=err, timeout=300)


def test_slurm_array_script_and_its_tasks_without_a_cluster(
    tmp_path, monkeypatch, one_thread, slurm_commands
):
    import submitit.core.utils

    FakeSbatch.scripts = []
    monkeypatch.setattr(submitit.core.utils, "CommandFunction", FakeSbatch)
    good = replace_method(BASE, "lb")
    broken = ExperimentConfig(
        dataset="folder", data_root=str(tmp_path / "no-such-folder"), backbone="tiny", epochs=1
    )
    results = tmp_path / "results" / "results.csv"
    launcher = Launcher(
        "slurm",
        partition="gpu",
        gpus_per_job=1,
        timeout_min=30,
        max_parallel=1,
        extra={"account": "proj", "cpus-per-task": 4, "reservation": "paper", "requeue": True},
        wait=False,
    )
    launched = launch_runs(
        [good, broken], launcher, results=results, cache=tmp_path / "cache", log=lambda _: None
    )
    assert launched.array_id == "4242" and [j.job_id for j in launched.jobs] == ["4242_0", "4242_1"]
    (script,) = FakeSbatch.scripts  # one array job, not one sbatch per run
    for line in (
        "#SBATCH --array=0-1%1",
        "#SBATCH --partition=gpu",
        "#SBATCH --gpus-per-node=1",
        "#SBATCH --time=30",
        "#SBATCH --account=proj",
        "#SBATCH --cpus-per-task=4",
        "#SBATCH --reservation=paper",
        "#SBATCH --requeue",
        "#SBATCH --signal=USR2@90",
        "#SBATCH --job-name=kalahash",
        f"#SBATCH --error={tmp_path / 'results' / 'logs'}/%A_%a/%A_%a_0_log.err",
    ):
        assert line in script.splitlines(), f"{line} not in\n{script}"
    assert "-m submitit.core._submit" in script

    assert _run_array_task(script, 0, launched.jobs[0]).returncode == 0
    assert _run_array_task(script, 1, launched.jobs[1]).returncode != 0
    collected = collect_runs(results)
    assert collected.merged == [good.config_id] and collected.already == []
    (failure,) = collected.failed
    assert failure.config_id == broken.config_id and failure.log == str(launched.jobs[1].paths.stderr)
    assert (
        failure.error.startswith("FileNotFoundError: image folder")
        and failure.error in Path(failure.log).read_text()
    )
    row = read_results(results).iloc[0]
    in_process = run_experiment(
        good, results=tmp_path / "here" / "results.csv", cache=tmp_path / "cache", progress=False
    )
    assert row["map"] == in_process["map"]


def replace_method(config: ExperimentConfig, method: str) -> ExperimentConfig:
    from dataclasses import replace

    return replace(config, method=method)


# ------------------------------------------------------------------------------------------------------
# collect, studies, reproduce


def test_collect_merges_run_files_once_and_lists_failures(tmp_path, capsys):
    results = tmp_path / "results.csv"
    good = replace_method(BASE, "lb")
    RunJob(good, str(results), {"cache": str(tmp_path / "cache"), "workdir": str(tmp_path)})()
    failed = replace_method(BASE, "lora")
    write_failure(
        run_paths(results, failed.config_id).error, failed, FloatingPointError("loss became nan\nat epoch 2")
    )
    edited = json.loads(run_paths(results, good.config_id).row.read_text())
    edited["row"]["config_id"] = edited["config_id"] = "0123456789ab"
    (tmp_path / "runs" / "0123456789ab.json").write_text(json.dumps(edited))
    assert not results.exists()  # a job writes its run file, never the table

    assert main(["collect", "--results", str(results)]) == 1
    out = capsys.readouterr().out
    assert f"merged 1 run file(s) into {results}; 0 already there; 1 failed; 1 unreadable" in out
    assert (
        f"failed: {failed.config_id} (lora, 1 shot, 16 bits, seed 0): FloatingPointError: loss became nan"
        in out
    )
    assert "0123456789ab.json: its row's config is not that of run 0123456789ab (the file was edited)" in out
    stored = read_results(results)
    record = json.loads(run_paths(results, good.config_id).row.read_text())
    assert list(stored["config_id"]) == [good.config_id] and stored.iloc[0]["map"] == record["row"]["map"]
    assert stored.iloc[0]["finished_at"] == record["row"]["finished_at"]

    assert main(["collect", "--results", str(results)]) == 1
    assert "merged 0 run file(s)" in capsys.readouterr().out and len(read_results(results)) == 1
    assert main(["collect", "--results", str(tmp_path / "elsewhere" / "results.csv")]) == 2
    assert "no run files to collect" in capsys.readouterr().err


def test_a_study_with_a_launcher_gets_rows_and_diverged_arms_and_stops_on_other_failures(
    tmp_path, monkeypatch
):
    from kalahash.experiments import FailedRun, Launched
    from kalahash.history import DIVERGED
    from kalahash.studies import Arm, run_arms

    ok, diverged, broken = (replace_method(BASE, m) for m in ("lb", "lora", "fft"))
    calls = []

    def launched(configs, launcher, **options):
        calls.append(([c.config_id for c in configs], launcher, options))
        row = {"config_id": ok.config_id, **ok.to_row(), "map": 0.5}
        failures = [
            FailedRun(diverged.config_id, "lora", "FloatingPointError: loss is nan", "log", diverged=True)
        ]
        if broken in configs:
            failures.append(FailedRun(broken.config_id, "fft", "RuntimeError: CUDA out of memory", "x.err"))
        return Launched(pd.DataFrame([row]), 0, len(configs), failures, [], tmp_path)

    monkeypatch.setattr(launch_module, "launch_runs", launched)
    arms = [Arm("main", "LB", ok), Arm("main", "LoRA", diverged), Arm("other", "LB again", ok)]
    rows = run_arms(arms, launcher="slurm", results=tmp_path / "r.csv")
    assert list(rows["variant"]) == ["LB", "LoRA", "LB again"] and list(rows["study"]) == [
        "main",
        "main",
        "other",
    ]
    assert rows.loc[0, "map"] == 0.5 and rows.loc[1, "flags"] == DIVERGED and pd.isna(rows.loc[1, "map"])
    assert rows.loc[1, "error"] == "loss is nan"
    assert calls[0][0] == [ok.config_id, diverged.config_id, ok.config_id] and calls[0][2] == {
        "results": tmp_path / "r.csv"
    }
    with pytest.raises(
        LaunchError, match=r"1 launched run\(s\) failed:\n.*RuntimeError: CUDA out of memory; log: x.err"
    ):
        run_arms([*arms, Arm("main", "FFT", broken)], launcher="local")
    with pytest.raises(ValueError, match="its launcher must wait"):
        run_arms(arms, launcher={"kind": "slurm", "wait": False})


def test_reproduce_passes_the_launcher_to_every_notebook(tmp_path, monkeypatch, capsys, slurm_commands):
    (tmp_path / "kalahash").mkdir()
    (tmp_path / "notebooks").mkdir()
    nb = nbformat.v4.new_notebook()
    params = nbformat.v4.new_code_cell('profile = "auto"\nlauncher = None')
    params.metadata["tags"] = ["parameters"]
    body = (
        "from kalahash.experiments import notebook_settings, project_paths\n"
        "settings = notebook_settings(profile, launcher=launcher)\n"
        "project_paths()['figures'].mkdir(parents=True, exist_ok=True)\n"
        "(project_paths()['figures'] / 'launcher.json').write_text(__import__('json').dumps(settings['launcher']))"
    )
    nb.cells = [params, nbformat.v4.new_code_cell(body)]
    nb.metadata["kernelspec"] = {"display_name": "Python 3", "language": "python", "name": "python3"}
    nbformat.write(nb, tmp_path / "notebooks" / "01_study.ipynb")
    monkeypatch.chdir(tmp_path)
    argv = [
        "reproduce",
        "--profile",
        "smoke",
        "--launcher",
        "slurm",
        "--slurm-partition",
        "gpu",
        "--max-parallel",
        "8",
    ]
    assert main(argv) == 0, capsys.readouterr()
    (written,) = (tmp_path / "runs").glob("*/figures/launcher.json")
    assert json.loads(written.read_text()) == Launcher("slurm", partition="gpu", max_parallel=8).to_dict()
