import numpy as np
import pandas as pd
import pytest
from PIL import Image

from kalahash.cli import main
from kalahash.data import ShortShotsWarning


def _run_args(tmp_path, *extra: str) -> list[str]:
    return [
        "run", "--dataset", "shapes", "--backbone", "tiny", "--epochs", "2", "--quiet",
        "--results", str(tmp_path / "results.csv"), "--cache", str(tmp_path / "cache"), *extra,
    ]  # fmt: skip


def test_run_writes_a_row_and_skips_a_repeat(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(_run_args(tmp_path, "--method", "lb")) == 0
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
    split_dir = tmp_path / "results" / "splits" / f"shapes-{row['data_fingerprint'][:12]}-split0"
    assert (split_dir / "shapes_1shot_seed42.txt").exists()
    assert main(_run_args(tmp_path, "--method", "lb")) == 0
    assert "stored result" in capsys.readouterr().out
    assert len(pd.read_csv(tmp_path / "results.csv")) == 1


def test_run_with_several_seeds_prints_mean_and_std(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(_run_args(tmp_path, "--method", "lb", "--seeds", "0", "1")) == 0
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
    split_dir = tmp_path / "results" / "splits" / f"nuswide-{row['data_fingerprint'][:12]}-split0"
    assert "# shortfall: dog=0/1" in (split_dir / "nuswide_1shot_seed42.txt").read_text().splitlines()


@pytest.mark.parametrize(
    "args,message",
    [
        (["run", "--dataset", "imagenette"], "unknown dataset 'imagenette'"),
        (["run", "--shots", "0"], "--shots must be a positive integer"),
        (["run", "--bits", "-16"], "--bits must be a positive integer"),
        (["run", "--loss", "triplet", "--backbone", "tiny", "--epochs", "1"], "triplet"),
        (["check-data", "--dataset", "cifar10", "--data-root", "{tmp}/nothing"], "cifar-10-python.tar.gz"),
        (["eval", "--checkpoint", "{tmp}/missing.ckpt"], "does not exist"),
    ],
)
def test_bad_input_gives_a_clear_error(tmp_path, capsys, monkeypatch, args, message):
    monkeypatch.chdir(tmp_path)
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    if args[0] == "run":
        args += ["--results", str(tmp_path / "r.csv"), "--quiet"]
    assert main(args) == 2
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


def test_hp_must_be_key_value(tmp_path):
    with pytest.raises(SystemExit, match="--hp expects KEY=VALUE"):
        main(["run", "--hp", "rank", "--results", str(tmp_path / "r.csv")])


def test_help_explains_every_option(capsys):
    with pytest.raises(SystemExit):
        main(["run", "--help"])
    out = capsys.readouterr().out
    for option in ("--dataset", "--shots", "--bits", "--method", "--seeds", "--hp", "--ties", "--checkpoint"):
        assert option in out
