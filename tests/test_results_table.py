import json
import math
import multiprocessing as mp
import re

import pandas as pd
import pytest

from kalahash.experiments import (
    HPARAM_FIELDS,
    DamagedRowWarning,
    ExperimentConfig,
    append_result,
    config_hash,
    expand_grid,
    find_result,
    provenance,
    read_results,
    summarize,
)
from kalahash.train import TRAINING_LOOP

# the training loop of today's runs: rows without it are from before the B-step fix
LOOP = {"training_loop": TRAINING_LOOP}


def _append_many(path: str, worker: int, n: int) -> None:
    for i in range(n):
        append_result({"config_id": f"w{worker}-{i}", "map": i / n, "note": "x" * 200}, path)


def test_concurrent_appends_keep_every_row(tmp_path):
    path = tmp_path / "results.csv"
    ctx = mp.get_context("fork")
    procs = [ctx.Process(target=_append_many, args=(str(path), w, 15)) for w in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    table = read_results(path)
    assert len(table) == 45
    assert set(table["config_id"]) == {f"w{w}-{i}" for w in range(3) for i in range(15)}
    assert not list(tmp_path.glob("*.tmp")) and not list(tmp_path.glob(".results.csv.*"))


def test_config_id_identifies_the_result(tmp_path):
    path = tmp_path / "r.csv"
    a = ExperimentConfig(shots=1, seed=0)
    b = ExperimentConfig(shots=1, seed=1)
    assert a.config_id != b.config_id
    assert a.config_id == ExperimentConfig(shots=1, seed=0).config_id
    assert ExperimentConfig(hyperparameters={"rank": 2}).config_id != ExperimentConfig().config_id
    append_result({**a.to_row(), "config_id": a.config_id, "map": 0.5, **LOOP}, path)
    assert find_result(a, path)["map"] == 0.5
    assert find_result(b, path) is None


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"method": "dino"}, "unknown method 'dino'.*kalahash"),
        ({"shots": 0}, "shots must be a positive integer"),
        ({"bits": -8}, "bits must be a positive integer"),
        ({"bits": 7}, "bits must be a positive multiple of 8"),
        ({"epochs": 1.5}, "epochs must be a positive integer"),
        ({"ties": "random"}, "ties must be 'index' or 'average'"),
    ],
)
def test_config_validation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ExperimentConfig(**kwargs)


def test_resolved_hparams_follow_method_and_preset():
    released = {"dataset": "cifar10", "shots": 2, "method": "kalahash", "backbone": "ViT-B-32"}
    hp, source = ExperimentConfig(**released, pretrained="openai").resolved_hparams()
    assert hp == {"rank": 4, "strength": 0.3, "kiddo_alpha": 0.1, "kiddo_beta": 0.1, "kiddo_gamma": 4.0}
    assert source == "released"
    # the same values on another backbone (or ViT-B-32 without OpenAI's weights) are ours, and say so
    assert ExperimentConfig(**released).resolved_hparams() == (
        hp,
        "ours: released for CLIP ViT-B-32 (openai), used with ViT-B-32",
    )
    tiny = ExperimentConfig(**{**released, "backbone": "tiny-objects-m"}).resolved_hparams()[1]
    assert tiny == "ours: released for CLIP ViT-B-32 (openai), used with tiny-objects-m"
    hp, source = ExperimentConfig(dataset="cifar10", method="lb", loss="csq").resolved_hparams()
    assert hp == {"loss": "csq"}
    hp, source = ExperimentConfig(
        dataset="cifar10", method="clora", hyperparameters={"rank": 3}
    ).resolved_hparams()
    assert hp["rank"] == 3 and "overridden: rank" in source


def test_expand_grid_and_summarize():
    configs = expand_grid(ExperimentConfig(), {"shots": [1, 2], "seed": [0, 1, 2]})
    assert [(c.shots, c.seed) for c in configs] == [(s, r) for s in (1, 2) for r in (0, 1, 2)]
    with pytest.raises(ValueError, match="unknown grid keys"):
        expand_grid(ExperimentConfig(), {"shot": [1]})
    rows = pd.DataFrame(
        {"dataset": "shapes", "shots": [1, 1, 1, 2], "bits": 16, "method": "lb", "map": [0.1, 0.2, 0.3, 0.5]}
    )
    table = summarize(rows)
    first = table.iloc[0]
    assert first["mean"] == pytest.approx(0.2) and first["std"] == pytest.approx(0.1) and first["seeds"] == 3
    assert first["map (mean ± std)"] == "0.2000 ± 0.1000 (n=3)"
    second = table.iloc[1]  # one run: no spread to show
    assert math.isnan(second["std"]) and second["map (mean ± std)"] == "0.5000 (n=1)"
    same = summarize(rows.assign(map=0.25), by=("shots",)).iloc[0]  # runs that agree: no "± 0.0000"
    assert same["map (mean ± std)"] == "0.2500 (n=3, all equal)"


def test_provenance_names_versions_and_device():
    info = provenance("cpu")
    assert info["device"].startswith("cpu")
    assert info["torch_version"] and info["open_clip_version"]
    assert info["git_commit"] == "unknown" or len(info["git_commit"].split("+")[0]) == 40


def _row(cfg: ExperimentConfig, map_value: float) -> dict:
    """A row as run_experiment writes it, in its column order (config first, then the scores)."""
    return {"config_id": cfg.config_id, **cfg.to_row(), "hparams_used": json.dumps({"rank": 1}), "map": map_value,
            "map_at": 100, "p_at_100": 0.5, "finished_at": "2025-01-01T00:00:00+0000", **LOOP}  # fmt: skip


def test_a_row_cut_mid_number_is_reported_and_runs_again(tmp_path):
    path = tmp_path / "results.csv"
    kept, cut = ExperimentConfig(seed=0), ExperimentConfig(seed=1)
    append_result(_row(kept, 0.25), path)
    append_result(_row(cut, 0.2686), path)
    text = path.read_text()
    path.write_text(text[: text.index("0.2686") + 4])  # the last row ends in "0.26"
    with pytest.warns(DamagedRowWarning, match=re.escape(f"{path}:3: damaged row skipped")):
        assert find_result(cut, path) is None  # not "stored" with a wrong mAP
    with pytest.warns(DamagedRowWarning):
        assert find_result(kept, path)["map"] == 0.25 and len(read_results(path)) == 1
    with pytest.warns(
        DamagedRowWarning, match=re.escape(f"{path}:3: damaged row moved to results.csv.damaged")
    ):
        append_result(_row(cut, 0.2686), path)
    aside = (tmp_path / "results.csv.damaged").read_text()
    assert "results.csv line 3" in aside and text[: text.index("0.2686") + 4].splitlines()[-1] in aside
    assert find_result(cut, path)["map"] == 0.2686 and find_result(kept, path)["map"] == 0.25
    assert text.splitlines()[1] == path.read_text().splitlines()[1]  # the intact row, byte for byte


def test_a_row_cut_inside_a_quoted_field_names_file_and_line(tmp_path):
    path = tmp_path / "results.csv"
    cfg = ExperimentConfig(seed=1, hyperparameters={"rank": 2, "strength": 0.3})
    append_result(_row(ExperimentConfig(seed=0), 0.25), path)
    append_result(_row(cfg, 0.3), path)
    text = path.read_text()
    path.write_text(text[: text.index("strength")])  # inside the quoted JSON
    with pytest.warns(DamagedRowWarning, match=re.escape(f"{path}:3:") + ".*does not parse as CSV"):
        assert find_result(cfg, path) is None and len(read_results(path)) == 1


def test_rows_that_do_not_hold_up_are_not_trusted(tmp_path):
    path = tmp_path / "results.csv"
    a, b, c = ExperimentConfig(seed=0), ExperimentConfig(seed=1), ExperimentConfig(seed=2)
    rows = [{**_row(a, 0.25), "seed": 7}, _row(b, float("inf")), _row(c, 0.5)]  # a's row edited: not its run
    pd.DataFrame(rows).to_csv(path, index=False)
    with pytest.warns(DamagedRowWarning) as caught:
        assert find_result(a, path) is None and find_result(b, path) is None
    messages = " ".join(str(w.message) for w in caught)
    assert (
        f"{path}:2:" in messages
        and "config_id" in messages
        and f"{path}:3:" in messages
        and "map" in messages
    )
    with pytest.warns(DamagedRowWarning):
        assert find_result(c, path)["map"] == 0.5


def test_tables_written_by_pandas_stay_valid(tmp_path, recwarn):
    """The old appends rewrote the table with pandas: ints of a column with gaps came back as 5.0."""
    path = tmp_path / "results.csv"
    configs = [ExperimentConfig(seed=0), ExperimentConfig(seed=1, topk=5)]
    pd.DataFrame([_row(cfg, 0.1 * (i + 1)) for i, cfg in enumerate(configs)]).to_csv(path, index=False)
    assert "5.0" in path.read_text()
    assert [find_result(cfg, path)["map"] for cfg in configs] == [0.1, 0.2]
    append_result({**_row(ExperimentConfig(seed=2), 0.3), "new_column": 1}, path)
    assert len(read_results(path)) == 3 and not recwarn.list


def test_new_config_fields_keep_the_ids_of_existing_configs():
    """Fields added later (knowledge, the listfile paths) are left out of the id at their default: stored
    tables stay valid."""
    import hashlib

    cfg = ExperimentConfig(
        dataset="nuswide", data_root="/d", shots=2, method="lb", hyperparameters={"rank": 2}
    )
    new = ("knowledge", "train_list", "query_list", "database_list", "classnames")
    before = {k: v for k, v in cfg.to_row().items() if k not in new}
    assert (
        cfg.config_id
        == hashlib.sha256(json.dumps(before, sort_keys=True, default=str).encode()).hexdigest()[:12]
    )
    own = ExperimentConfig(dataset="listfile", data_root="/d", train_list="t.txt", query_list="q.txt",
                           database_list="db.txt", classnames="names.txt")  # fmt: skip
    assert own.config_id != ExperimentConfig(dataset="listfile", data_root="/d", train_list="t2.txt",
                                             query_list="q.txt", database_list="db.txt", classnames="names.txt").config_id  # fmt: skip


def test_a_row_from_before_later_fields_stays_intact_after_they_arrive(tmp_path, recwarn):
    """A row written before knowledge and the list options existed gets empty cells for them when a newer
    row is appended; it must still read as the run its config_id names, not as damaged."""
    import hashlib

    path = tmp_path / "results.csv"
    later = ("knowledge", "train_list", "query_list", "database_list", "classnames")
    old_cfg = ExperimentConfig(method="lb", seed=3)
    old_row = {k: v for k, v in old_cfg.to_row().items() if k not in later}
    old_id = hashlib.sha256(json.dumps(old_row, sort_keys=True, default=str).encode()).hexdigest()[:12]
    append_result({"config_id": old_id, **old_row, "map": 0.25, "map_at": 10, **LOOP}, path)
    new_cfg = ExperimentConfig(method="kalahash", seed=3, knowledge="permuted")
    append_result(
        {"config_id": new_cfg.config_id, **new_cfg.to_row(), "map": 0.5, "map_at": 10, **LOOP}, path
    )
    table = read_results(path)
    assert list(table["config_id"]) == [old_id, new_cfg.config_id]
    assert find_result(old_cfg, path)["map"] == 0.25
    assert not [w for w in recwarn if issubclass(w.category, DamagedRowWarning)]


def test_stored_rows_read_back_as_the_rows_their_runs_returned(tmp_path):
    """Left to pandas, a column holding only "true" reads as booleans and a commit "1234e56" as a float, so
    a sweep mixing stored and fresh rows split one arm into groups True and "true"."""
    path = tmp_path / "results.csv"
    configs = [ExperimentConfig(method="lb", seed=s) for s in (0, 1)]
    fresh = [
        {**_row(c, 0.2 + c.seed / 10), "git_commit": "1234e56", "flags": "", "history_file": "h"}
        for c in configs
    ]
    append_result(fresh[0], path)
    table = read_results(path)
    assert table["knowledge"].tolist() == ["true"] and table["git_commit"].tolist() == ["1234e56"]
    assert table["dataset"].tolist() == ["objects10"] and table["flags"].tolist() == [""]
    stored = find_result(configs[0], path)
    shared = ("knowledge", "git_commit", "seed", "map", "flags")
    assert {k: stored[k] for k in shared} == {k: fresh[0][k] for k in shared}
    summary = summarize(pd.DataFrame([stored, fresh[1]]), by=("method", "knowledge"))
    assert len(summary) == 1 and summary.iloc[0]["seeds"] == 2


def test_an_append_keeps_a_read_only_tables_mode(tmp_path):
    import stat

    path = tmp_path / "results.csv"
    append_result(_row(ExperimentConfig(seed=0), 0.25), path)
    path.chmod(0o444)
    append_result(_row(ExperimentConfig(seed=1), 0.5), path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o444 and len(read_results(path)) == 2


@pytest.mark.parametrize("key,value", [("loss", "csq"), ("knowledge", "permuted")])
def test_run_fields_inside_hyperparameters_are_refused(key, value, capsys):
    """loss and knowledge are fields of the run: set inside hyperparameters they would give one run a
    second config_id, so they are refused where a config is made, in the spelling the user typed."""
    from kalahash.cli import main

    assert key in HPARAM_FIELDS
    with pytest.raises(
        ValueError, match=rf"hyperparameters hold '{key}', which is a field of the run: pass {key}="
    ):
        ExperimentConfig(method="kalahash", hyperparameters={key: value})
    assert main(["run", "--hp", f"{key}={value}", "--epochs", "1", "--quiet"]) == 2
    error = capsys.readouterr().err.strip()
    assert error == (
        f"kalahash run: error: hyperparameters hold '{key}', which is a field of the run: pass --{key} {value} "
        "instead (one run, one config_id)"
    )


def test_old_rows_with_run_fields_in_hyperparameters_still_read(tmp_path, recwarn):
    """A row of an older version that set loss inside hyperparameters is the run its config_id names: it
    reads intact, and the same run spelt with the field is another config (it runs again)."""
    path = tmp_path / "results.csv"
    row = {**ExperimentConfig(method="lb", seed=0).to_row(), "hyperparameters": json.dumps({"loss": "csq"})}
    old_id = config_hash(row)
    append_result({"config_id": old_id, **row, "map": 0.25, "map_at": 10, **LOOP}, path)
    table = read_results(path)
    assert table["config_id"].tolist() == [old_id] and json.loads(table["hyperparameters"][0]) == {
        "loss": "csq"
    }
    assert not [w for w in recwarn if issubclass(w.category, DamagedRowWarning)]
    assert find_result(ExperimentConfig(method="lb", seed=0, loss="csq"), path) is None
