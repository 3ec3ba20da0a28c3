import json

import pandas as pd
import pytest
import torch
from helpers import tiny_list_dataset
from PIL import Image

from kalahash.checkpoints import load_checkpoint
from kalahash.cli import main
from kalahash.experiments import ExperimentConfig, notebook_settings, project_paths, run_experiment
from kalahash.plots import save_figure, shot_scaling


def _config(root, **kw) -> ExperimentConfig:
    return ExperimentConfig(
        dataset="nuswide", data_root=str(root), backbone="tiny", epochs=2, batch_size=2, **kw
    )


def test_run_refuses_data_whose_check_failed(tmp_path):
    root = tmp_path / "data"
    tiny_list_dataset(root, duplicate_query_into_database=True)
    with pytest.raises(ValueError, match=r"(?s)data check of 'nuswide' failed.*PROBLEM.*allow_failed_check"):
        run_experiment(
            _config(root, method="lb"), results=tmp_path / "r.csv", workdir=tmp_path / "w", progress=False
        )
    assert not (tmp_path / "r.csv").exists()
    row = run_experiment(
        _config(root, method="lb"), results=tmp_path / "r.csv", workdir=tmp_path / "w", allow_failed_check=True,
        cache=tmp_path / "cache", progress=False,
    )  # fmt: skip
    assert row["data_check_ok"] is False and len(pd.read_csv(tmp_path / "r.csv")) == 1


def test_rows_carry_provenance_and_the_split_file(tmp_path):
    root = tmp_path / "data"
    tiny_list_dataset(root, duplicate_query_into_database=False)
    row = run_experiment(_config(root, method="kalahash", seed=3), results=tmp_path / "r.csv", workdir=tmp_path / "w",
                         cache=tmp_path / "cache", progress=False)  # fmt: skip
    for column in (
        "git_commit",
        "torch_version",
        "open_clip_version",
        "device",
        "data_fingerprint",
        "backbone_fingerprint",
        "hparams_used",
        "hparams_source",
        "map_ties_index",
        "map_ties_average",
    ):
        assert row[column] not in (None, ""), column  # fmt: skip
    assert json.loads(row["hparams_used"])["rank"] == 1  # the nuswide 1-shot preset
    split_dir = tmp_path / "w" / "splits" / f"nuswide-{row['data_fingerprint'][:12]}-split0"
    lines = (split_dir / "nuswide_1shot_seed3.txt").read_text().splitlines()
    assert "# rule: random-per-class" in lines and "# seed: 3" in lines  # single-label: k per class, seeded
    assert "# shortfall: none" in lines and row["shot_shortfall"] == "none"
    picked = [line for line in lines if not line.startswith("#")]
    assert len(picked) == 2 and {int(p.split(".")[0]) % 2 for p in picked} == {0, 1}  # one cat, one dog
    assert all(2 <= int(p.split(".")[0]) < 8 for p in picked)  # from the train pool


def test_data_check_verdict_follows_the_files(tmp_path):
    root = tmp_path / "data"
    tiny_list_dataset(root, duplicate_query_into_database=False)
    image = root / "images" / "9.png"  # in the database
    raw = image.read_bytes()
    config = _config(root, method="lb")
    kwargs = {"results": None, "workdir": tmp_path / "w", "cache": None, "progress": False}
    image.write_bytes(b"not a png")
    with pytest.raises(ValueError, match=r"(?s)data check of 'nuswide' failed.*not a readable image.*9\.png"):
        run_experiment(config, **kwargs)
    image.write_bytes(raw)  # repaired: checked again, and it runs
    assert run_experiment(config, **kwargs)["data_check_ok"]
    image.write_bytes(b"broken after a passing check")
    with pytest.raises(ValueError, match="data check of 'nuswide' failed"):
        run_experiment(config, **kwargs)
    with pytest.raises(ValueError, match=r"image \S*9\.png \(id '9\.png'\) cannot be read .*check-data"):
        run_experiment(config, allow_failed_check=True, **kwargs)  # met during the run: named, not raw PIL


def test_two_data_folders_keep_their_own_splits_in_one_workdir(tmp_path):
    rows = []
    for name in ("a", "b"):  # same data set name, different images and lists
        tiny_list_dataset(tmp_path / name, duplicate_query_into_database=False, prefix=name)
        config = _config(tmp_path / name, method="lb")
        rows.append(run_experiment(config, results=None, workdir=tmp_path / "w", cache=None, progress=False))
    dirs = sorted(d.name for d in (tmp_path / "w" / "splits").iterdir())
    assert dirs == sorted(f"nuswide-{row['data_fingerprint'][:12]}-split0" for row in rows)
    assert rows[0]["data_fingerprint"] != rows[1]["data_fingerprint"]


def test_checkpoint_then_eval_and_export(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    root = tmp_path / "data"
    tiny_list_dataset(root, duplicate_query_into_database=False)
    ckpt = tmp_path / "lora.ckpt"
    common = ["--dataset", "nuswide", "--data-root", str(root), "--backbone", "tiny", "--epochs", "2",
              "--batch-size", "2", "--quiet"]  # fmt: skip
    assert main(["run", *common, "--method", "lora", "--checkpoint", str(ckpt)]) == 0
    stored = load_checkpoint(ckpt)
    assert stored["experiment"]["method"] == "lora" and stored["epoch"] == 2
    trained_map = stored["result_row"]["map"]
    capsys.readouterr()
    assert main(["eval", "--checkpoint", str(ckpt), "--quiet"]) == 0
    assert f"= {trained_map:.4f}" in capsys.readouterr().out  # the same codes as at the end of training
    assert main(["export", "--checkpoint", str(ckpt), "--out", str(tmp_path / "merged.pt")]) == 0
    merged = torch.load(tmp_path / "merged.pt")["state_dict"]
    assert merged and not any("lora_" in key for key in merged)

    clora = tmp_path / "clora.ckpt"
    assert main(["run", *common, "--method", "clora", "--checkpoint", str(clora)]) == 0
    capsys.readouterr()
    assert main(["export", "--checkpoint", str(clora), "--output", str(tmp_path / "no.pt")]) == 2
    assert "CLoRA" in capsys.readouterr().err and not (tmp_path / "no.pt").exists()


def test_run_refuses_to_overwrite_a_checkpoint_unless_forced(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    root = tmp_path / "data"
    tiny_list_dataset(root, duplicate_query_into_database=False)
    ckpt = tmp_path / "run.ckpt"
    common = ["--dataset", "nuswide", "--data-root", str(root), "--backbone", "tiny", "--epochs", "1",
              "--batch-size", "2", "--quiet", "--checkpoint", str(ckpt)]  # fmt: skip
    assert main(["run", *common, "--method", "lora"]) == 0
    before = ckpt.read_bytes()
    capsys.readouterr()
    assert main(["run", *common, "--method", "lb"]) == 2  # another method would overwrite the lora run
    err = capsys.readouterr().err
    assert f"checkpoint file {str(ckpt)!r} already exists and holds a lora run on 'tiny'" in err
    assert "'nuswide', 1 shot(s), seed 42, 16 bits, 1 of 1 epochs" in err
    assert "continue it with --resume" in err and "pass --force to" in err and "resume=True" not in err
    assert ckpt.read_bytes() == before and len(pd.read_csv(tmp_path / "results" / "results.csv")) == 1
    (tmp_path / "junk.ckpt").write_text("my notes")
    assert main(["run", *common[:-1], str(tmp_path / "junk.ckpt"), "--method", "lb"]) == 2
    assert "holds something else" in capsys.readouterr().err
    assert (tmp_path / "junk.ckpt").read_text() == "my notes"
    assert main(["run", *common, "--method", "lb", "--force"]) == 0
    assert load_checkpoint(ckpt)["method"] == "lb"


def test_notebook_settings_pick_the_profile():
    smoke = notebook_settings()
    assert (smoke["profile"], smoke["dataset"], smoke["backbone"]) == ("smoke", "objects10", "tiny-objects-m")
    assert notebook_settings(dataset="shapes")["profile"] == "smoke"
    paper = notebook_settings(dataset="cifar10")
    assert (paper["profile"], paper["backbone"], paper["pretrained"]) == ("paper", "ViT-B-32", "openai")
    assert notebook_settings("smoke", seeds=[5])["seeds"] == [5]
    # papermill -p passes text: lists are parsed
    assert notebook_settings(seeds="0 1 2", methods="lb, kalahash", shots="[1, 4]")["seeds"] == [0, 1, 2]
    assert notebook_settings(methods="lb, kalahash")["methods"] == ["lb", "kalahash"]
    assert notebook_settings(shots="[1, 4]")["shots"] == [1, 4]
    assert notebook_settings(seeds=7)["seeds"] == [7]
    assert notebook_settings(dataset="NUS-WIDE")["dataset"] == "nuswide"
    assert notebook_settings(dataset="cifar10")["data_root"].endswith("data/cifar10")
    assert notebook_settings(dataset="cifar10", data_root="/d")["data_root"] == "/d"
    with pytest.raises(ValueError, match="unknown profile 'fast'"):
        notebook_settings("fast")


def test_a_notebook_parameter_wins_over_the_profile():
    """papermill 03_shots.ipynb -p dataset cifar10 -p data_root D -p backbone tiny: the paper profile's
    'openai' belongs to its ViT-B-32; another backbone gets its own default weights."""
    from kalahash.backbones import load_backbone

    tiny = notebook_settings(dataset="cifar10", data_root="/d", backbone="tiny")
    assert (tiny["backbone"], tiny["pretrained"], tiny["data_root"]) == ("tiny", None, "/d")
    assert load_backbone(tiny["backbone"], tiny["pretrained"]).pretrained == "random"
    for cleared in ("", "None"):  # -p pretrained "" (or the text None): the backbone's own default
        assert notebook_settings(dataset="cifar10", pretrained=cleared)["pretrained"] is None
    assert notebook_settings(dataset="cifar10", backbone="tiny", pretrained="/w.pt")["pretrained"] == "/w.pt"
    assert notebook_settings(dataset="cifar10", backbone="ViT-B-32")["pretrained"] == "openai"


def test_list_files_belong_to_the_listfile_dataset():
    with pytest.raises(
        ValueError,
        match=r"dataset 'listfile' needs query_list= \(CLI: --query-list\), classnames= \(CLI: --classnames\)",
    ):
        ExperimentConfig(dataset="listfile", train_list="t.txt", database_list="d.txt")
    with pytest.raises(ValueError, match="train_list: options of dataset 'listfile' only, not of 'nuswide'"):
        ExperimentConfig(dataset="nuswide", train_list="t.txt")


def test_project_paths_find_the_repository(tmp_path):
    (tmp_path / "kalahash").mkdir()
    (tmp_path / "notebooks" / "deep").mkdir(parents=True)
    paths = project_paths(tmp_path / "notebooks" / "deep")
    assert paths["root"] == tmp_path and paths["figures"] == tmp_path / "results" / "figures"
    assert paths["results"] == tmp_path / "results" / "results.csv"
    elsewhere = tmp_path / "notebooks" / "deep" / "x"
    elsewhere.mkdir()
    assert project_paths(tmp_path.parent)["root"] == tmp_path.parent


def test_figures_are_traceable_to_their_rows(tmp_path):
    import matplotlib.pyplot as plt

    from kalahash.machine import git_commit
    from kalahash.plots import save_table

    rows = pd.DataFrame({
        "config_id": ["a1", "b2", "c3", "d4"], "method": ["lb", "lb", "kalahash", "kalahash"], "shots": [1, 2, 1, 2],
        "seed": [0, 1, 0, 1], "map": [0.2, 0.3, 0.25, 0.4], "git_commit": "abc", "torch_version": "2.x",
        "dataset": "objects10", "backbone": "tiny-objects-m",
    })  # fmt: skip
    summary = rows.rename(columns={"map": "mean"}).assign(std=0.0)
    fig = shot_scaling(summary, "t")
    saved = save_figure(fig, "fig", rows, out_dir=tmp_path, settings={"profile": "smoke", "seeds": [0, 1]})
    assert not plt.fignum_exists(fig.number)  # closed: a notebook shows the saved PNG, under any backend
    assert sorted(p.name for p in saved.paths) == ["fig.figure.json", "fig.pdf", "fig.png", "fig.rows.csv"]
    assert saved._repr_png_() == (tmp_path / "fig.png").read_bytes()
    assert repr(saved) == "figure fig: fig.png, fig.pdf, fig.rows.csv, fig.figure.json"
    info = json.loads((tmp_path / "fig.figure.json").read_text())
    assert info["config_ids"] == ["a1", "b2", "c3", "d4"] and info["git_commit"] == ["abc"]
    assert info["seeds"] == [0, 1] and info["profile"] == "smoke" and info["dataset"] == ["objects10"]
    assert info["backbone"] == ["tiny-objects-m"] and info["written_by_commit"] == git_commit()
    assert pd.read_csv(tmp_path / "fig.rows.csv")["config_id"].tolist() == ["a1", "b2", "c3", "d4"]
    written = f"kalahash fig; commit {git_commit()}"
    assert Image.open(tmp_path / "fig.png").text["Description"].startswith(written)
    assert written.encode() in (tmp_path / "fig.pdf").read_bytes()
    save_table(rows, "fig", out_dir=tmp_path)  # a table of the same name keeps its own provenance file
    assert json.loads((tmp_path / "fig.figure.json").read_text()) == info
    assert json.loads((tmp_path / "fig.table.json").read_text())["rows"] == 4


def test_rows_of_kiddo_runs_from_the_older_training_loop_run_again(tmp_path):
    """Rows made before the B-step fix (no ``training_loop``) are not a KIDDO run's result today."""
    from kalahash.experiments import StaleRowWarning
    from kalahash.train import TRAINING_LOOP

    root = tmp_path / "data"
    tiny_list_dataset(root)
    options = {
        "results": tmp_path / "r.csv",
        "workdir": tmp_path / "w",
        "cache": tmp_path / "c",
        "progress": False,
    }
    rows = {m: run_experiment(_config(root, method=m), **options) for m in ("lb", "kalahash")}
    assert {row["training_loop"] for row in rows.values()} == {TRAINING_LOOP}
    table = pd.read_csv(tmp_path / "r.csv", dtype=str, keep_default_na=False)
    table.drop(columns="training_loop").to_csv(tmp_path / "r.csv", index=False)  # as older runs wrote it
    assert run_experiment(_config(root, method="lb"), **options)["skipped"]  # no KIDDO: the same result
    with pytest.warns(StaleRowWarning, match=r"kalahash .*training loop 1.*made again"):
        again = run_experiment(_config(root, method="kalahash"), **options)
    assert not again["skipped"] and again["training_loop"] == TRAINING_LOOP
    assert run_experiment(_config(root, method="kalahash"), **options)["skipped"]  # the new row serves
