"""The Python twins of the CLI's eval, export and check-data (kalahash.experiments), called from Python."""

from dataclasses import replace

import numpy as np
import open_clip
import pytest
import torch
from helpers import fresh_tiny, tiny_list_dataset

from kalahash.backbones import load_backbone
from kalahash.checkpoints import load_checkpoint, save_checkpoint
from kalahash.cli import main
from kalahash.data import DataCheck, load_dataset
from kalahash.experiments import (
    ExperimentConfig,
    ExportedModel,
    UnnamedDatasetError,
    check_dataset,
    evaluate_checkpoint,
    export_checkpoint,
    load_exported,
    run_experiment,
)
from kalahash.hashing import build_hasher
from kalahash.train import encode


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A list-file data set and checkpoints of a plain-LoRA and a CLoRA run on it."""
    tmp = tmp_path_factory.mktemp("twins")
    root = tmp / "data"
    tiny_list_dataset(root)
    paths = {"root": root}
    for method in ("lora", "clora"):
        cfg = ExperimentConfig(
            dataset="nuswide", data_root=str(root), backbone="tiny", epochs=2, batch_size=2, method=method
        )
        paths[method] = tmp / f"{method}.ckpt"
        run_experiment(
            cfg, results=None, cache=None, workdir=tmp / "w", checkpoint=paths[method], progress=False
        )
    return paths


def test_evaluate_checkpoint_reproduces_the_run(runs):
    stored = load_checkpoint(runs["lora"])["result_row"]
    scores = evaluate_checkpoint(runs["lora"], progress=False)
    assert scores["map"] == pytest.approx(stored["map"], abs=1e-12)
    assert scores["map_topk"] == stored["map_at"] and scores["p_at_100"] == pytest.approx(stored["p_at_100"])
    assert scores["query_codes"].shape == (2, 16) and scores["database_codes"].shape == (6, 16)
    cut = evaluate_checkpoint(runs["lora"], topk=3, ties="average", progress=False)
    assert (cut["map_topk"], cut["ties"]) == (3, "average")


def test_evaluate_checkpoint_needs_a_data_set_name(runs, tmp_path, capsys):
    hasher = build_hasher("lb", fresh_tiny(0), ["cat", "dog"], 16)
    bare = save_checkpoint(tmp_path / "bare.ckpt", hasher)  # written outside a run: no experiment
    with pytest.raises(UnnamedDatasetError, match="does not name its data set: pass dataset"):
        evaluate_checkpoint(bare, progress=False)
    scores = evaluate_checkpoint(bare, dataset="nuswide", data_root=runs["root"], progress=False)
    assert 0 <= scores["map"] <= 1 and scores["database_codes"].shape == (6, 16)
    assert main(["eval", "--checkpoint", str(bare), "--quiet"]) == 2  # the CLI's message, a user error's exit
    assert (
        "kalahash eval: error: this checkpoint does not name its data set: pass --dataset"
        in capsys.readouterr().err
    )


def test_export_checkpoint_folds_lora_and_refuses_clora(runs, tmp_path):
    exported = export_checkpoint(runs["lora"], tmp_path / "merged.pt")
    assert exported == ExportedModel(tmp_path / "merged.pt", "lora")
    weights = torch.load(exported.path)["state_dict"]
    assert set(weights) == set(open_clip.create_model("tiny").state_dict())  # open_clip's layout, no more
    assert all(value.device.type == "cpu" for value in weights.values())
    with pytest.raises(ValueError, match="CLoRA cannot be merged"):
        export_checkpoint(runs["clora"], tmp_path / "no.pt")
    assert not (tmp_path / "no.pt").exists()


def test_an_exported_model_loads_back_and_gives_the_run_codes(runs, tmp_path):
    """The round trip: --pretrained loads the exported file as a backbone; with the head in the same file
    (load_exported) it encodes exactly as the trained LoRA run."""
    path = export_checkpoint(runs["lora"], tmp_path / "lora.pt").path
    backbone = load_backbone("tiny", pretrained=path)
    torch.manual_seed(42)  # the run's seed: the random-init base weights the run started from
    assert backbone.pretrained == "lora.pt" and backbone.fingerprint != load_backbone("tiny").fingerprint
    hasher = load_exported(path)
    scores = evaluate_checkpoint(runs["lora"], progress=False)
    data = load_dataset("nuswide", runs["root"])
    np.testing.assert_array_equal(encode(hasher, data.query, progress=False), scores["query_codes"])
    np.testing.assert_array_equal(encode(hasher, data.database, progress=False), scores["database_codes"])
    with pytest.raises(ValueError, match="not a model written by `kalahash export`"):
        load_exported(runs["lora"])


def test_check_dataset_reports_problems(tmp_path):
    clean, leaky = tmp_path / "clean", tmp_path / "leaky"
    tiny_list_dataset(clean)
    tiny_list_dataset(leaky, duplicate_query_into_database=True)
    good = check_dataset("nuswide", clean, progress=False)
    assert isinstance(good, DataCheck) and good.ok and good.problems == []
    assert good.sizes == {"query": 2, "train": 6, "database": 6}
    bad = check_dataset("nus-wide", leaky, progress=False)
    assert not bad.ok and bad.problems and "PROBLEM" in bad.report()
    with pytest.raises(FileNotFoundError):
        check_dataset("nuswide", tmp_path / "nothing", progress=False)


def _config(root, **kw) -> ExperimentConfig:
    """The configuration of the fixture's runs."""
    return ExperimentConfig(
        dataset="nuswide", data_root=str(root), backbone="tiny", epochs=2, batch_size=2, **kw
    )


def test_resuming_a_finished_run_rescores_it(runs, tmp_path):
    ckpt = tmp_path / "lora.ckpt"
    ckpt.write_bytes(runs["lora"].read_bytes())
    stored = load_checkpoint(ckpt)["result_row"]
    row = run_experiment(
        _config(runs["root"], method="lora"), results=None, cache=None, workdir=tmp_path, checkpoint=ckpt,
        resume=True, progress=False,
    )  # fmt: skip
    assert row["resumed_from_epoch"] == 2 and row["map"] == pytest.approx(stored["map"], abs=1e-12)
    assert row["train_seconds"] == stored["train_seconds"]  # nothing was trained


def test_resuming_with_another_configuration_is_refused(runs, tmp_path, monkeypatch):
    import kalahash.experiments.runner as experiments

    ckpt = tmp_path / "run.ckpt"
    cfg = _config(runs["root"], method="lora")
    options = {"results": None, "cache": None, "workdir": tmp_path, "checkpoint": ckpt, "progress": False}

    def killed(*args, **kwargs):
        raise KeyboardInterrupt  # killed after training, before the result: the checkpoint can be resumed

    monkeypatch.setattr(experiments, "evaluate", killed)
    with pytest.raises(KeyboardInterrupt):
        run_experiment(cfg, **options)
    monkeypatch.undo()
    with pytest.raises(ValueError, match=r"another configuration \(shots: 1 there, 2 now\)"):
        run_experiment(replace(cfg, shots=2), resume=True, **options)
    with pytest.raises(ValueError, match="resume=True needs checkpoint="):
        run_experiment(cfg, **{**options, "checkpoint": None}, resume=True)
    assert run_experiment(cfg, resume=True, **options)["resumed_from_epoch"] == 2


def test_a_checkpoint_is_refused_on_other_data(runs, tmp_path):
    trained_on = r"trained on 'nuswide' \(2 classes: cat, dog; labels 2 wide\)"
    given = r"'shapes' \(12 classes: .*; labels 12 wide\)"
    with pytest.raises(ValueError, match=f"{trained_on}, but the data given is {given}: score it"):
        evaluate_checkpoint(runs["lora"], dataset="shapes", progress=False)
    old = tmp_path / "old.ckpt"  # written before checkpoints recorded their data: its classes still tell
    payload = load_checkpoint(runs["lora"])
    del payload["data"]
    torch.save(payload, old)
    with pytest.raises(ValueError, match=f"{trained_on}, but"):
        evaluate_checkpoint(old, dataset="shapes", progress=False)
    ckpt = tmp_path / "lora.ckpt"
    ckpt.write_bytes(runs["lora"].read_bytes())
    shapes = ExperimentConfig(dataset="shapes", backbone="tiny", epochs=2, batch_size=2, method="lora")
    with pytest.raises(ValueError, match=f"{trained_on}, but the data given is {given}: resume it"):
        run_experiment(
            shapes, results=None, cache=None, workdir=tmp_path, checkpoint=ckpt, resume=True, progress=False
        )


def test_eval_works_from_another_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    tiny_list_dataset(tmp_path / "data")
    ckpt = tmp_path / "run.ckpt"
    run_experiment(_config("data", method="lb"), results=None, cache=None, checkpoint=ckpt, progress=False)
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    stored = load_checkpoint(ckpt)
    assert stored["experiment"]["data_root"] == str(tmp_path / "data")
    assert evaluate_checkpoint(ckpt, progress=False)["map"] == pytest.approx(stored["result_row"]["map"])
    stored["experiment"]["data_root"] = "data"  # as older checkpoints stored it
    torch.save(stored, ckpt)
    with pytest.raises(
        FileNotFoundError, match=r"comes from checkpoint .*pass its folder as data_root= \(CLI: --data-root\)"
    ):
        evaluate_checkpoint(ckpt, progress=False)
