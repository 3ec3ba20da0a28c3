import multiprocessing as mp

import pandas as pd
import pytest

from kalahash.experiments import (
    ExperimentConfig,
    append_result,
    expand_grid,
    find_result,
    provenance,
    read_results,
    summarize,
)


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
    append_result({**a.to_row(), "config_id": a.config_id, "map": 0.5}, path)
    assert find_result(a, path)["map"] == 0.5
    assert find_result(b, path) is None


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"method": "dino"}, "unknown method 'dino'.*kalahash"),
        ({"shots": 0}, "shots must be a positive integer"),
        ({"bits": -8}, "bits must be a positive integer"),
        ({"epochs": 1.5}, "epochs must be a positive integer"),
        ({"ties": "random"}, "ties must be 'index' or 'average'"),
    ],
)
def test_config_validation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ExperimentConfig(**kwargs)


def test_resolved_hparams_follow_method_and_preset():
    hp, source = ExperimentConfig(dataset="cifar10", shots=2, method="kalahash").resolved_hparams()
    assert hp == {"rank": 4, "strength": 0.3, "kiddo_alpha": 0.1, "kiddo_beta": 0.1, "kiddo_gamma": 4.0}
    assert source == "released"
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
    assert first["map (mean ± std)"] == "0.2000 ± 0.1000"
    assert table.iloc[1]["std"] == 0.0


def test_provenance_names_versions_and_device():
    info = provenance("cpu")
    assert info["device"].startswith("cpu")
    assert info["torch_version"] and info["open_clip_version"]
    assert info["git_commit"] == "unknown" or len(info["git_commit"].split("+")[0]) == 40
