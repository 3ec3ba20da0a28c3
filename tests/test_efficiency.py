"""The measurements of 08_efficiency: alternating timings with their spread, peak tensor memory, the
per-method table, the mAP timing."""

import math

import pytest
import torch
from helpers import tiny_list_dataset

from kalahash.data import load_dataset
from kalahash.efficiency import measure_efficiency, median_spread, noise_reading, peak_tensor_mib, time_map
from kalahash.experiments import provenance

CPU = torch.device("cpu")


def test_median_spread_and_the_reading_of_a_ratio():
    assert median_spread([1.0, 3.0, 2.0]) == (2.0, 1.0)
    assert math.isnan(median_spread([4.0])[1])
    assert noise_reading(1.05, 0.1) == "within noise"
    assert noise_reading(1.3, 0.1) == "slower" and noise_reading(0.7, 0.1) == "faster"
    assert noise_reading(1.3, math.nan) == "one round, no spread"


def test_peak_tensor_memory_counts_what_the_block_allocates_not_what_was_there():
    held = torch.ones(16 * 2**20 // 4)  # 16 MiB allocated before: not counted

    def block() -> None:
        a = torch.ones(2 * 2**20 // 4)  # 2 MiB, freed before the next
        del a
        b = torch.ones(8 * 2**20 // 4)  # 8 MiB
        c = torch.ones(4 * 2**20 // 4)  # 4 MiB while b lives: the peak is 12 MiB
        del b, c

    mib, measure = peak_tensor_mib(block, CPU)
    assert mib == pytest.approx(12, abs=0.1) and "profiler" in measure
    assert held.numel()


def _measure(tmp_path, methods, **kw):
    return measure_efficiency(
        "nuswide", data_root=str(tmp_path / "data"), backbone="tiny", methods=methods, shots=2, rounds=2,
        encode_images=4, **kw,
    )  # fmt: skip


def test_measure_efficiency_times_the_methods_alternately_and_reads_the_ratios(tmp_path):
    tiny_list_dataset(tmp_path / "data")
    table = _measure(tmp_path, ("lb", "lora", "clora", "fft"))
    assert list(table["method"]) == ["lb", "lora", "clora", "fft"] and set(table["rounds"]) == {2}
    params = dict(zip(table["method"], table["trainable_params"], strict=True))
    assert params["lb"] < params["lora"] < params["fft"] and params["lb"] < params["clora"]
    assert (table["train_seconds_per_epoch"] > 0).all() and (table["encode_images_per_second"] > 0).all()
    lb, lora = table.iloc[0], table.iloc[1]
    assert lb["encode_overhead_vs_frozen"] == 1.0 and lb["encode_overhead_vs_frozen_spread"] == 0.0
    assert (
        lb["encode_overhead_vs_frozen_reading"] == "within noise" and lora["encode_overhead_vs_lora"] == 1.0
    )
    assert set(table["device"]) == {provenance(CPU)["device"]}
    memory = dict(zip(table["method"], table["peak_memory_mib"], strict=True))
    assert memory["fft"] > memory["lb"] > 0  # gradients and momentum of the whole tower
    with pytest.raises(ValueError, match="methods is empty"):
        measure_efficiency("nuswide", data_root=str(tmp_path / "data"), methods=())
    with pytest.raises(ValueError, match="rounds must be a positive int"):
        measure_efficiency("nuswide", data_root=str(tmp_path / "data"), rounds=0)


def test_a_method_without_its_reference_has_no_ratio(tmp_path):
    tiny_list_dataset(tmp_path / "data")
    alone = _measure(tmp_path, ("clora",))
    assert alone["encode_overhead_vs_frozen"].isna().all() and alone["encode_overhead_vs_lora"].isna().all()
    assert (alone["encode_overhead_vs_frozen_reading"] == "not measured").all()


def test_methods_are_built_as_runs_build_them(tmp_path):
    """The runner's pieces build each method: data whose check fails is refused as a run refuses it."""
    tiny_list_dataset(tmp_path / "data", duplicate_query_into_database=True)
    with pytest.raises(ValueError, match="the data check of 'nuswide' failed"):
        _measure(tmp_path, ("lb",))


def test_time_map_times_both_tie_rules_on_the_data_sets_sizes(tmp_path):
    tiny_list_dataset(tmp_path / "data")
    data = load_dataset("nuswide", str(tmp_path / "data"))
    table = time_map(data, bits=32, rounds=3)
    assert list(table["ties"]) == ["index", "average"] and set(table["rounds"]) == {3}
    assert set(table["queries"]) == {len(data.query)} and set(table["database"]) == {len(data.database)}
    assert (
        (table["seconds"] > 0).all() and set(table["bits"]) == {32} and table["seconds_spread"].notna().all()
    )
    with pytest.raises(ValueError, match="bits must be a positive int"):
        time_map(data, bits=0)


def test_the_profiler_leaves_nothing_on_stderr(capfd):
    peak_tensor_mib(lambda: torch.ones(1000), CPU)
    assert capfd.readouterr().err == ""  # its native start/stop lines would land in a notebook's output
