import argparse
import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from helpers import cli_run_args, tiny_list_dataset
from PIL import Image

from kalahash.cli import build_parser, main
from kalahash.data import ShortShotsWarning
from kalahash.experiments import ExperimentConfig, RowNotWrittenWarning, read_results


def test_run_writes_a_row_and_skips_a_repeat(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(cli_run_args(tmp_path, "--method", "lb")) == 0
    out = capsys.readouterr().out
    assert "seed 42: mAP@" in out and "[done]" in out
    table = pd.read_csv(tmp_path / "results.csv")
    assert len(table) == 1
    row = table.iloc[0]
    assert (row["method"], row["dataset"], row["shots"], row["bits"], row["backbone"]) == (
        "lb",
        "shapes",
        1,
        16,
        "tiny",
    )
    assert 0 <= row["map"] <= 1 and row["trainable_params"] > 0
    assert row["data_check_ok"] and len(row["data_fingerprint"]) == 64
    # split lists go beside the results table, not under the working directory's results/
    split_dir = tmp_path / "splits" / f"shapes-{row['data_fingerprint'][:12]}-split0"
    assert (split_dir / "shapes_1shot_seed42.txt").exists()
    assert not (tmp_path / "results").exists()
    assert main(cli_run_args(tmp_path, "--method", "lb")) == 0
    assert "stored result" in capsys.readouterr().out
    assert len(pd.read_csv(tmp_path / "results.csv")) == 1


def test_run_with_several_seeds_prints_mean_and_std(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(cli_run_args(tmp_path, "--method", "lb", "--seeds", "0", "1")) == 0
    out = capsys.readouterr().out
    assert "seed 0:" in out and "seed 1:" in out and "±" in out
    assert len(pd.read_csv(tmp_path / "results.csv")) == 2


def test_short_few_shot_set_runs_and_is_recorded_unless_strict(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    root = tmp_path / "mine"
    (root / "images").mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(8):
        Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(root / "images" / f"{i}.png")
    (root / "classnames.txt").write_text("cat\ndog\nfish\n")
    # at 1 shot dog only comes with a class already full (cat, then fish), as in MS-COCO
    (root / "train.txt").write_text("0.png 1 0 0\n1.png 1 1 0\n2.png 0 0 1\n3.png 0 1 1\n")
    (root / "query.txt").write_text("4.png 1 0 0\n5.png 0 1 0\n")
    (root / "gallery.txt").write_text("0.png 1 0 0\n1.png 1 1 0\n2.png 0 0 1\n6.png 0 1 0\n7.png 1 0 1\n")
    args = ["run", "--dataset", "nuswide", "--data-root", str(root), "--backbone", "tiny", "--epochs", "1",
            "--method", "lb", "--quiet", "--results", str(tmp_path / "r.csv"), "--cache", "none"]  # fmt: skip
    assert main([*args, "--strict-shots"]) == 2
    assert "class 1 ('dog') got only 0 of 1 images" in capsys.readouterr().err
    assert not (tmp_path / "r.csv").exists()
    with pytest.warns(ShortShotsWarning, match=r"\(dog=0/1\)"):
        assert main(args) == 0
    row = pd.read_csv(tmp_path / "r.csv").iloc[0]
    assert row["shot_shortfall"] == "dog=0/1" and row["train_images"] == 2
    split_dir = tmp_path / "splits" / f"nuswide-{row['data_fingerprint'][:12]}-split0"
    assert "# shortfall: dog=0/1" in (split_dir / "nuswide_1shot_seed42.txt").read_text().splitlines()


@pytest.mark.parametrize(
    "args,message",
    [
        (["run", "--dataset", "imagenette"], "unknown dataset 'imagenette'"),
        (["run", "--shots", "0"], "argument --shots: must be a positive integer, got '0'"),
        (["run", "--bits", "-16"], "argument --bits: bits must be a positive multiple of 8"),
        (["run", "--bits", "7"], "argument --bits: bits must be a positive multiple of 8"),
        (["sweep", "--bits", "16", "12"], "argument --bits: bits must be a positive multiple of 8"),
        (["demo", "--bits", "7"], "argument --bits: bits must be a positive multiple of 8"),
        (["run", "--loss", "triplet", "--backbone", "tiny", "--epochs", "1"], "triplet"),
        (["check-data", "--dataset", "cifar10", "--data-root", "{tmp}/nothing"], "cifar-10-python.tar.gz"),
        (["eval", "--checkpoint", "{tmp}/missing.ckpt"], "does not exist"),
    ],
)
def test_bad_input_gives_a_clear_error(tmp_path, capsys, monkeypatch, args, message):
    monkeypatch.chdir(tmp_path)
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    if args[0] in ("run", "sweep", "demo"):
        args += ["--results", str(tmp_path / "r.csv"), "--quiet"]
    try:
        assert main(args) == 2
    except SystemExit as stop:  # argparse's errors exit 2 too
        assert stop.code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "r.csv").exists()  # nothing written half-way


def test_corrupt_checkpoint_for_eval(tmp_path, capsys):
    bad = tmp_path / "bad.ckpt"
    bad.write_bytes(b"not a checkpoint")
    assert main(["eval", "--checkpoint", str(bad)]) == 2
    assert "corrupt or truncated" in capsys.readouterr().err


def test_malformed_list_file_names_file_and_line(tmp_path, capsys):
    from PIL import Image

    root = tmp_path / "mine"
    (root / "images").mkdir(parents=True)
    for name in ("a.png", "b.png", "c.png"):
        Image.new("RGB", (8, 8)).save(root / "images" / name)
    (root / "classnames.txt").write_text("cat\ndog\n")
    (root / "train.txt").write_text("a.png 1 0\nb.png 0 1\n")
    (root / "query.txt").write_text("c.png 1 0\n")
    (root / "gallery.txt").write_text("a.png 1 0\nb.png 0 x\n")
    assert main(["check-data", "--dataset", "nuswide", "--data-root", str(root), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "gallery.txt" in err and "line 2" in err


def test_hp_must_be_key_value(tmp_path, capsys):
    assert main(["run", "--hp", "rank", "--results", str(tmp_path / "r.csv")]) == 2  # a user error exits 2
    assert (
        capsys.readouterr().err.strip()
        == "kalahash run: error: --hp expects KEY=VALUE (e.g. --hp rank=4), got 'rank'"
    )


def test_help_explains_every_option(capsys):
    with pytest.raises(SystemExit):
        main(["run", "--help"])
    out = capsys.readouterr().out
    for option in ("--dataset", "--shots", "--bits", "--method", "--seeds", "--hp", "--ties", "--checkpoint"):
        assert option in out
    assert "(default: index)" in out


def _image_folder(root, per_class: int = 11, classes: tuple[str, ...] = ("cat", "dog")) -> None:
    """A user's own images, one folder per class (the folder loader keeps 10 per class as queries)."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for name in classes:
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(root / name / f"{i}.png")


def test_the_method_runs_on_a_folder_of_own_images(tmp_path, capsys):
    _image_folder(tmp_path / "mine")
    args = ["run", "--dataset", "folder", "--data-root", str(tmp_path / "mine"), "--method", "kalahash",
            "--backbone", "tiny", "--epochs", "1", "--batch-size", "2", "--quiet", "--cache", "none",
            "--results", str(tmp_path / "results.csv")]  # fmt: skip
    assert main(args) == 0, capsys.readouterr().err
    assert main([*args, "--hp", "rank=1", "--hp", "kiddo_gamma=2"]) == 0
    rows = pd.read_csv(tmp_path / "results.csv")
    defaults, given = (json.loads(h) for h in rows["hparams_used"])
    assert (
        rows["hparams_source"][0]
        == "release defaults (no released setting for 'folder'); rank capped at the 2 classes"
    )
    assert defaults == {"rank": 2, "strength": 0.5, "kiddo_alpha": 0.1, "kiddo_beta": 1.0, "kiddo_gamma": 1.0}
    assert given == {**defaults, "rank": 1, "kiddo_gamma": 2}
    assert rows["hparams_source"][1].endswith("overridden: kiddo_gamma, rank")


def test_own_list_files_from_the_cli(tmp_path, capsys):
    tiny_list_dataset(tmp_path / "mine")
    lists = ["--dataset", "listfile", "--data-root", str(tmp_path / "mine"), "--train-list", "train.txt",
             "--query-list", "query.txt", "--database-list", "gallery.txt", "--classnames", "classnames.txt"]  # fmt: skip
    assert main(["check-data", *lists, "--quiet"]) == 0
    args = ["run", *lists, "--method", "lb", "--backbone", "tiny", "--epochs", "1", "--batch-size", "2",
            "--quiet", "--cache", "none", "--results", str(tmp_path / "results.csv")]  # fmt: skip
    assert main(args) == 0, capsys.readouterr().err
    row = pd.read_csv(tmp_path / "results.csv").iloc[0]
    assert (row["dataset"], row["train_list"], row["classnames"]) == (
        "listfile",
        "train.txt",
        "classnames.txt",
    )
    assert main(args[:5] + args[7:]) == 2  # without --train-list
    err = capsys.readouterr().err
    assert "dataset 'listfile' needs --train-list" in err and "train_list" not in err


def test_resume_without_checkpoint_is_an_error(tmp_path, capsys):
    assert main(cli_run_args(tmp_path, "--resume")) == 2
    assert "kalahash run: error: --resume needs --checkpoint" in capsys.readouterr().err
    assert not (tmp_path / "results.csv").exists()


def test_cuda_without_a_gpu_says_so(tmp_path, capsys, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    args = ["run", "--device", "cuda", "--quiet", "--results", str(tmp_path / "r.csv"), "--epochs", "1"]
    assert main(args) == 2  # the default backbone has a weights file: that is not what is wrong
    err = capsys.readouterr().err
    assert "this machine has no CUDA device" in err and "--device cpu" in err and "weights" not in err


def test_files_follow_the_results_table_or_the_workdir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(cli_run_args(tmp_path / "a", "--method", "lb", "--workdir", str(tmp_path / "w"))) == 0
    assert (tmp_path / "w" / "splits").is_dir() and (tmp_path / "w" / "data_checks").is_dir()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "w"]  # nothing under the working directory


def test_the_demo_honours_cache_and_results(tmp_path, monkeypatch):
    import kalahash.experiments.runner as experiments

    seen = {}

    class Stop(Exception):
        pass

    def record(cfg, **kwargs):
        seen.update(kwargs)
        raise Stop

    monkeypatch.setattr(experiments, "run_experiment", record)
    with pytest.raises(Stop):
        main(["demo", "--cache", str(tmp_path / "c"), "--results", str(tmp_path / "r" / "t.csv"), "--quiet"])
    assert (seen["cache"], seen["results"]) == (str(tmp_path / "c"), str(tmp_path / "r" / "t.csv"))


def test_the_demo_shows_flags_and_warns(tmp_path, capsys, monkeypatch):
    import kalahash.experiments.runner as experiments

    def fake(cfg, **_):
        flags = "anchors_collapsed" if cfg.method == "kalahash" else ""
        return {"config_id": cfg.config_id, **cfg.to_row(), "map": 0.3, "map_at": 10, "p_at_100": 0.4,
                "train_seconds": 1.0, "trainable_params": 5, "hparams_source": "x", "flags": flags}  # fmt: skip

    monkeypatch.setattr(experiments, "run_experiment", fake)
    assert main(["demo", "--out", str(tmp_path / "f"), "--results", str(tmp_path / "r.csv"), "--quiet"]) == 0
    captured = capsys.readouterr()
    assert "flags" in captured.out.splitlines()[1] and "anchors_collapsed" in captured.out
    warnings = [line for line in captured.err.splitlines() if line.startswith("WARNING")]
    assert len(warnings) == 1 and "method kalahash" in warnings[0]


def test_the_command_runs_as_a_module_as_torchrun_starts_it():
    """``torchrun -m kalahash.cli encode ...`` (README) needs ``python -m kalahash.cli`` to be the command."""
    done = subprocess.run(
        [sys.executable, "-m", "kalahash.cli", "encode", "--help"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert "--checkpoint" in done.stdout and "--chunk-size" in done.stdout
    wrong = subprocess.run(
        [sys.executable, "-m", "kalahash.cli", "encode"], capture_output=True, text=True, timeout=120
    )
    assert wrong.returncode == 2 and "--checkpoint" in wrong.stderr


def test_an_unwritable_results_folder_is_refused_before_training(tmp_path, capsys, monkeypatch):
    import kalahash.experiments.runner as runner

    monkeypatch.chdir(tmp_path)
    (tmp_path / "plain-file").write_text("not a folder")
    monkeypatch.setattr(runner, "fit", lambda *a, **k: pytest.fail("trained before checking the results"))
    args = cli_run_args(tmp_path, "--method", "lb")
    args[args.index("--results") + 1] = str(tmp_path / "plain-file" / "results.csv")
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "results table" in err and "cannot be written" in err and "--results" in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_a_row_that_cannot_be_appended_is_printed_and_kept(tmp_path, capsys, monkeypatch):
    import kalahash.results_table as table

    def refuse(self):
        raise PermissionError(13, "Permission denied", str(self.lock_path))

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(table.Locked, "__enter__", refuse)  # the folder turned read-only during the run
    with pytest.warns(RowNotWrittenWarning, match=r"could not append this run's row to .*results.csv.lock"):
        assert main(cli_run_args(tmp_path / "r", "--method", "lb")) == 0
    out = capsys.readouterr().out
    assert "seed 42: mAP@" in out  # the run's result is printed, not lost in a traceback
    [saved] = tmp_path.glob("kalahash-unsaved-row-*.csv")
    row = read_results(saved).iloc[0]
    assert f"= {row['map']:.4f}" in out and row["method"] == "lb"
    assert not (tmp_path / "r" / "results.csv").exists()


def test_ctrl_c_in_run_says_what_was_kept_and_how_to_go_on(tmp_path, capsys, monkeypatch):
    import kalahash.experiments.runner as runner

    real = runner.evaluate

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    ckpt = tmp_path / "run.ckpt"
    monkeypatch.setattr(runner, "evaluate", interrupted)  # Ctrl-C after the last epoch was saved
    assert main(cli_run_args(tmp_path, "--method", "lb", "--checkpoint", str(ckpt))) == 130
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"kalahash run: interrupted: {ckpt} holds the last finished epoch")
    assert "--resume" in err and len(err.splitlines()) == 1
    monkeypatch.setattr(runner, "evaluate", real)
    assert main(cli_run_args(tmp_path, "--method", "lb", "--checkpoint", str(ckpt), "--resume")) == 0
    assert "re-scored" in capsys.readouterr().out
    monkeypatch.setattr(runner, "evaluate", interrupted)
    assert main(cli_run_args(tmp_path, "--method", "lora")) == 130
    assert "--checkpoint FILE saves every epoch" in capsys.readouterr().err


def test_one_class_is_refused_not_scored_as_a_perfect_map(tmp_path, capsys):
    _image_folder(tmp_path / "mine", per_class=30, classes=("red",))
    args = ["run", "--dataset", "folder", "--data-root", str(tmp_path / "mine"), "--method", "lb",
            "--backbone", "tiny", "--epochs", "1", "--quiet", "--cache", "none",
            "--results", str(tmp_path / "results.csv")]  # fmt: skip
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "has one class ('red')" in err and "mAP 1.0" in err and "at least two classes" in err
    assert not (tmp_path / "results.csv").exists()


@pytest.mark.parametrize(
    "args,cli,python",
    [
        (["run", "--dataset", "folder"], "needs --data-root: a folder", "data_root="),
        (["check-data", "--dataset", "cifar10", "--data-root", "{tmp}/none"], "or fetch it with `kalahash "
         "check-data --dataset cifar10 --data-root {tmp}/none --download`; needs network", "download=True"),
        (["run", "--backbone", "ViT-B-99"], "Built in: tiny-shapes, tiny-objects-s", "available_models"),
        (["run", "--method", "lb", "--knowledge", "random"], "use --knowledge true, the default", "knowledge="),
    ],
)  # fmt: skip
def test_errors_speak_the_cli_to_cli_users(tmp_path, capsys, args, cli, python):
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    assert (
        main([*args, "--quiet"] if args[0] == "check-data" else [*args, "--results", str(tmp_path / "r.csv")])
        == 2
    )
    err = capsys.readouterr().err
    assert err.startswith(f"kalahash {args[0]}: error: ") and cli.replace("{tmp}", str(tmp_path)) in err
    assert python not in err and "(CLI:" not in err


def test_warnings_print_one_line_without_their_source(tmp_path):
    """A warning raised during a command is one line naming the command, not file:line plus a code line."""
    _image_folder(tmp_path / "mine", classes=("cat", "airplane"))
    done = subprocess.run(
        [sys.executable, "-m", "kalahash.cli", "run", "--dataset", "folder", "--data-root", str(tmp_path / "mine"),
         "--backbone", "tiny-objects-m", "--method", "kalahash", "--epochs", "1", "--batch-size", "2", "--quiet",
         "--cache", "none", "--results", str(tmp_path / "r.csv")],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    warned = [line for line in done.stderr.splitlines() if "warning" in line.lower()]
    assert warned and warned[0].startswith("kalahash run: warning: backbone 'tiny-objects-m' knows only")
    assert "never learned: airplane" in warned[0] and "UserWarning" not in done.stderr
    assert ".py:" not in done.stderr and "warnings.warn(" not in done.stderr


def _subparsers():
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for p in sub.choices.values():
        if p.later is not None:  # options added when the command is used (pretrain-tiny imports torch)
            p.later(p)
            p.later = None
    return parser, sub.choices


def test_every_option_says_what_it_is_and_its_default():
    silent = (
        argparse._HelpAction,
        argparse._VersionAction,
        argparse._StoreTrueAction,
        argparse._StoreFalseAction,
    )
    for name, p in _subparsers()[1].items():
        for action in p._actions:
            if action.help == argparse.SUPPRESS or isinstance(action, silent):
                continue
            what = action.help.replace("(default: %(default)s)", "").strip() if action.help else ""
            assert what, f"{name} {action.option_strings or action.dest}: no help"
            if action.default not in (None, []) and not action.required:
                assert "default" in action.help, f"{name} {action.option_strings}: default not shown"


def test_one_spelling_for_one_thing():
    commands = _subparsers()[1]
    options = {name: {o for a in p._actions if a.help != argparse.SUPPRESS for o in a.option_strings}
               for name, p in commands.items()}  # fmt: skip
    assert {"--seeds"} <= options["demo"] & options["run"] & options["sweep"] and "--seed" not in options[
        "demo"
    ]
    assert "--out" in options["export"] and "--out" in options["pretrain-tiny"]
    assert not any("--output" in o for o in options.values())
    assert "--codes" in options["index"] and "--codes" in options["search"]
    defaults = {name: (p.get_default("dataset"), p.get_default("backbone")) for name, p in commands.items()}
    assert defaults["demo"] == defaults["run"] == defaults["sweep"] == ("objects10", "tiny-objects-m")
    from kalahash.experiments import ExperimentConfig, notebook_settings

    config = ExperimentConfig()
    assert (config.dataset, config.backbone) == defaults["run"]
    assert (notebook_settings("smoke")["dataset"], notebook_settings("smoke")["backbone"]) == defaults["run"]


def test_old_spellings_still_work(tmp_path):
    parser = build_parser()
    assert parser.parse_args(["demo", "--seed", "3"]).seeds == [3]
    assert parser.parse_args(["export", "--checkpoint", "c", "--output", "x.pt"]).out == "x.pt"
    assert parser.parse_args(["index", "codes/"]).old_codes == "codes/"


def test_version_and_a_quick_help():
    """`kalahash --version`; `--help` imports none of torch, open_clip or pandas (it answers at once)."""
    probe = (
        "import sys\nfrom kalahash.cli import main\nfor argv in (['--help'], ['run', '--help'], ['--version']):\n"
        "    try:\n        main(argv)\n    except SystemExit:\n        pass\n"
        "print('HEAVY', sorted(m for m in ('torch', 'open_clip', 'pandas') if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "HEAVY []" in done.stdout and "kalahash 0." in done.stdout and "--seeds" in done.stdout


def test_a_sweep_goes_on_past_a_run_that_diverged(tmp_path, capsys, monkeypatch):
    """The sweep records a run whose loss became non-finite as a flagged row (NaN mAP), says so, and runs
    the rest, as a study does: one function runs every list of configurations."""
    import kalahash.experiments.runner as runner
    from kalahash.experiments import run_sweep

    ran = []

    def fake(cfg, **_):
        ran.append(cfg.method)
        if cfg.method == "kalahash":
            raise FloatingPointError("the loss became nan at epoch 3, step 1 (kalahash)")
        return {"config_id": cfg.config_id, **cfg.to_row(), "map": 0.3, "flags": ""}

    monkeypatch.setattr(runner, "run_experiment", fake)
    args = [
        "sweep",
        "--methods",
        "kalahash",
        "lb",
        "--seeds",
        "0",
        "--results",
        str(tmp_path / "r.csv"),
        "--quiet",
    ]
    assert main(args) == 0
    assert ran == ["kalahash", "lb"]
    out, err = capsys.readouterr()
    assert (
        "diverged: method kalahash, knowledge true, shots 1, bits 16, seed 0: the loss became nan at epoch 3"
        in out
    )
    assert "loss_nonfinite" in out and "0.3000 (n=1)" in out
    assert [line for line in err.splitlines() if line.startswith("WARNING")] == [
        next(line for line in err.splitlines() if "method kalahash" in line and "loss_nonfinite" in line)
    ]
    rows = run_sweep(ExperimentConfig(), {"method": ["kalahash", "lb"]}, results=None)
    assert rows["map"].isna().tolist() == [True, False] and rows["flags"].tolist() == ["loss_nonfinite", ""]
