"""Controls and diagnostics wherever a run happens: run_experiment rows, history files, summarize, the CLI."""

import hashlib
import json

import pandas as pd
import pytest
from helpers import cli_run_args

from kalahash.cli import main
from kalahash.experiments import LIST_OPTIONS, ExperimentConfig, read_results, run_experiment, summarize
from kalahash.history import read_history
from kalahash.plots import plot_run_history


def _config(**kw) -> ExperimentConfig:
    return ExperimentConfig(dataset="shapes", backbone="tiny", epochs=2, **kw)


def test_config_id_of_a_default_knowledge_run_is_unchanged():
    cfg = _config(method="kalahash", seed=1)
    row = cfg.to_row()
    assert row["knowledge"] == "true"
    for later in ("knowledge", *LIST_OPTIONS):
        del row[later]  # the id as computed before these fields existed
    old_id = hashlib.sha256(json.dumps(row, sort_keys=True, default=str).encode()).hexdigest()[:12]
    assert cfg.config_id == old_id
    assert _config(method="kalahash", seed=1, knowledge="permuted").config_id != old_id


def test_knowledge_config_is_validated_up_front():
    with pytest.raises(ValueError, match="unknown knowledge 'shuffled'"):
        _config(knowledge="shuffled")
    with pytest.raises(ValueError, match="method 'lora' does not"):
        _config(method="lora", knowledge="random")
    hp, source = _config(method="kalahash", seed=3, knowledge="random").resolved_hparams()
    assert hp["knowledge"] == "random" and hp["knowledge_seed"] == 3
    assert "knowledge" not in _config(method="kalahash").resolved_hparams()[0]  # released runs unchanged
    _, source = _config(method="kalahash", hyperparameters={"anchor_momentum": 0.0}).resolved_hparams()
    assert "ours, not the paper's: anchor_momentum" in source


def test_rows_record_knowledge_diagnostics_and_the_history_file(tmp_path):
    options = {
        "results": tmp_path / "r.csv",
        "cache": tmp_path / "cache",
        "workdir": tmp_path / "w",
        "progress": False,
    }
    cfg = _config(method="kalahash", seed=0, knowledge="permuted")
    row = run_experiment(cfg, **options)
    assert row["knowledge"] == "permuted" and isinstance(row["flags"], str)
    assert set(row["flags"].split(";")) - {""} <= {
        "W_diverged",
        "anchors_collapsed",
        "anchors_misfit",
        "codes_collapsed",
    }
    history = read_history(tmp_path / "w", cfg.config_id)
    assert row["history_file"] == f"histories/{cfg.config_id}.csv"  # relative to the workdir
    assert history["epoch"].tolist() == [1, 2]
    assert row["w_norm_final"] == pytest.approx(history["w_norm"].iloc[-1])
    assert row["w_norm_max"] == pytest.approx(history["w_norm"].max())
    assert row["anchors_distinct"] == history["anchors_distinct"].iloc[-1]
    assert row["routing_purity"] == pytest.approx(history["routing_purity"].mean())
    assert 1 <= row["db_distinct_codes"] <= 2**16

    zero = run_experiment(_config(method="zeroshot", seed=0), **options)
    assert zero["trainable_params"] == 0 and zero["train_seconds"] == 0.0
    assert read_history(tmp_path / "w", _config(method="zeroshot", seed=0).config_id).empty
    stored = read_results(tmp_path / "r.csv")
    assert stored["knowledge"].tolist() == ["permuted", "true"]
    assert stored["flags"].tolist() == [row["flags"], zero["flags"]]  # "" read back as "", not NaN
    fig = plot_run_history(row, tmp_path / "w", num_classes=12)
    assert f"flags: {row['flags'] or 'none'}" in fig.get_suptitle()
    assert fig.axes[1].lines[0].get_ydata().tolist() == history["w_norm"].tolist()
    old = plot_run_history({**row, "config_id": "never-kept"}, tmp_path / "w", num_classes=12)
    assert "not recorded" in old.axes[0].texts[0].get_text()
    assert {"flags", "w_norm_final", "routing_purity", "db_distinct_codes", "history_file"} <= set(stored)


def test_summarize_groups_by_knowledge_and_marks_flagged_groups():
    rows = pd.DataFrame(
        {"dataset": "shapes", "shots": 1, "bits": 16, "method": "kalahash",
         "knowledge": ["true", "true", "permuted", float("nan")], "map": [0.2, 0.4, 0.1, 0.3],
         "flags": ["anchors_collapsed", float("nan"), "", ""]}
    )  # fmt: skip
    table = summarize(rows)
    assert table["knowledge"].tolist() == ["true", "permuted"]  # a row without knowledge used the true K
    first, second = table.iloc[0], table.iloc[1]
    assert first["seeds"] == 3 and first["mean"] == pytest.approx(0.3)
    assert first["map (mean ± std)"].endswith(" ⚑") and first["flags"] == "anchors_collapsed×1"
    assert second["map (mean ± std)"] == "0.1000 (n=1)" and second["flags"] == ""
    assert "anchors" not in table  # rows without KIDDO's anchor count
    counted = summarize(rows.assign(anchors_distinct=[3.0, 5.0, 10.0, 7.0]))
    assert counted["anchors"].tolist() == [5.0, 10.0]  # the mean over each group's runs
    old = summarize(rows.drop(columns=["knowledge", "flags"]))  # an old table: neither column
    assert "knowledge" not in old and "flags" not in old and old.iloc[0]["seeds"] == 4


def test_cli_knowledge_option(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(cli_run_args(tmp_path, "--method", "kalahash", "--knowledge", "random", epochs=1)) == 0
    assert read_results(tmp_path / "results.csv")["knowledge"].tolist() == ["random"]
    with pytest.raises(SystemExit) as exit_info:
        main(cli_run_args(tmp_path, "--knowledge", "bogus", epochs=1))
    assert exit_info.value.code == 2
    assert "argument --knowledge: invalid choice: 'bogus'" in capsys.readouterr().err
    assert main(cli_run_args(tmp_path, "--method", "lb", "--knowledge", "permuted", epochs=1)) == 2
    assert "method 'lb' does not: use --knowledge true, the default" in capsys.readouterr().err


def test_cli_warns_about_flagged_runs(tmp_path, capsys, monkeypatch):
    import kalahash.experiments

    def flagged(cfg, **_):
        return {"config_id": cfg.config_id, **cfg.to_row(), "map": 0.1, "map_at": 10, "ties_rule": "index",
                "flags": "anchors_collapsed;codes_collapsed", "skipped": False, "resumed_from_epoch": 0}  # fmt: skip

    monkeypatch.setattr(kalahash.experiments, "run_experiment", flagged)
    assert main(cli_run_args(tmp_path, "--method", "kalahash", "--seeds", "4", epochs=1)) == 0
    captured = capsys.readouterr()
    assert "seed 4: mAP@10 = 0.1000" in captured.out
    assert "WARNING: method kalahash, knowledge true, shots 1, bits 16, seed 4" in captured.err
    assert captured.err.strip().endswith("flags: anchors_collapsed;codes_collapsed")
