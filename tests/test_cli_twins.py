"""The Python twins of the CLI's eval, export and check-data (kalahash.experiments), called from Python."""

import pytest
import torch
from helpers import fresh_tiny, tiny_list_dataset

from kalahash.cli import main
from kalahash.data import DataCheck
from kalahash.experiments import (
    ExperimentConfig,
    ExportedModel,
    UnnamedDatasetError,
    check_dataset,
    evaluate_checkpoint,
    export_checkpoint,
    run_experiment,
)
from kalahash.hashing import build_hasher
from kalahash.train import load_checkpoint, save_checkpoint


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


def test_evaluate_checkpoint_needs_a_data_set_name(runs, tmp_path):
    hasher = build_hasher("lb", fresh_tiny(0), ["cat", "dog"], 16)
    bare = save_checkpoint(tmp_path / "bare.ckpt", hasher)  # written outside a run: no experiment
    with pytest.raises(UnnamedDatasetError, match="does not name its data set: pass dataset"):
        evaluate_checkpoint(bare, progress=False)
    scores = evaluate_checkpoint(bare, dataset="nuswide", data_root=runs["root"], progress=False)
    assert 0 <= scores["map"] <= 1 and scores["database_codes"].shape == (6, 16)
    with pytest.raises(SystemExit, match="error: this checkpoint does not name its data set: pass --dataset"):
        main(["eval", "--checkpoint", str(bare), "--quiet"])  # the CLI keeps its message and exit


def test_export_checkpoint_folds_lora_and_refuses_clora(runs, tmp_path):
    exported = export_checkpoint(runs["lora"], tmp_path / "merged.pt")
    assert exported == ExportedModel(tmp_path / "merged.pt", "lora")
    merged = torch.load(exported.path)
    assert merged and not any("lora_" in key for key in merged)
    assert all(value.device.type == "cpu" for value in merged.values())
    with pytest.raises(ValueError, match="CLoRA cannot be merged"):
        export_checkpoint(runs["clora"], tmp_path / "no.pt")
    assert not (tmp_path / "no.pt").exists()


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
