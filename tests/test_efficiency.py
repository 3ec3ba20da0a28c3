"""The measurements of 08_efficiency: timing, peak memory, the per-method table, the mAP timing."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import tiny_list_dataset

from kalahash.data import load_dataset
from kalahash.efficiency import measure_efficiency, median_seconds, time_map
from kalahash.experiments import provenance

CPU = torch.device("cpu")
ROOT = Path(__file__).resolve().parent.parent


def test_median_seconds_warms_up_then_times_each_repeat():
    calls = []
    seconds = median_seconds(lambda: calls.append(1), CPU, repeats=3)
    assert len(calls) == 4 and 0 <= seconds < 1
    with pytest.raises(ValueError, match="repeats must be a positive int"):
        median_seconds(lambda: None, CPU, repeats=0)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="VmHWM is Linux's")
def test_peak_memory_on_the_cpu_sees_a_large_allocation_in_a_fresh_process():
    code = (
        "import numpy as np, torch\n"
        "from kalahash.efficiency import peak_memory\n"
        "with peak_memory(torch.device('cpu')) as small:\n    np.ones(1000)\n"
        "with peak_memory(torch.device('cpu')) as large:\n    block = np.ones(64 * 2**20 // 8); del block\n"
        "print(small['mib'], large['mib'], large['measure'])"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    small, large, measure = out.stdout.split(maxsplit=2)
    assert "peak RSS" in measure and float(large) >= 48 and float(small) < float(large)


def _measure(tmp_path, methods, **kw):
    return measure_efficiency(
        "nuswide", data_root=str(tmp_path / "data"), backbone="tiny", methods=methods, shots=2, epochs=1,
        encode_images=4, repeats=1, **kw,
    )  # fmt: skip


def test_measure_efficiency_reports_each_method_on_its_device(tmp_path):
    tiny_list_dataset(tmp_path / "data")
    table = _measure(tmp_path, ("lb", "lora", "clora"), isolate=False)
    assert list(table["method"]) == ["lb", "lora", "clora"]
    params = dict(zip(table["method"], table["trainable_params"], strict=True))
    assert params["lb"] < params["lora"] and params["lb"] < params["clora"]
    assert (table["train_seconds_per_epoch"] > 0).all() and (table["encode_images_per_second"] > 0).all()
    assert table.loc[0, "encode_overhead_vs_frozen"] == 1.0 and table.loc[1, "encode_overhead_vs_lora"] == 1.0
    assert set(table["device"]) == {provenance(CPU)["device"]} and table["peak_memory_mib"].notna().all()
    assert table["memory_measure"].str.endswith("in a reused process").all()
    with pytest.raises(ValueError, match="methods is empty"):
        measure_efficiency("nuswide", data_root=str(tmp_path / "data"), methods=())


def test_measure_efficiency_isolates_each_method(tmp_path):
    tiny_list_dataset(tmp_path / "data")
    isolated = _measure(tmp_path, ("fft",))
    assert isolated["peak_memory_mib"].item() > 0  # gradients and momentum of the whole tower
    assert "reused" not in isolated["memory_measure"].item()
    assert (
        isolated["encode_overhead_vs_lora"].isna().all()
        and isolated["encode_overhead_vs_frozen"].isna().all()
    )
    in_process = _measure(tmp_path, ("fft",), isolate=False)
    assert in_process["trainable_params"].item() == isolated["trainable_params"].item()


def test_time_map_times_both_tie_rules_on_the_data_sets_sizes(tmp_path):
    tiny_list_dataset(tmp_path / "data")
    data = load_dataset("nuswide", str(tmp_path / "data"))
    table = time_map(data, bits=32)
    assert list(table["ties"]) == ["index", "average"]
    assert set(table["queries"]) == {len(data.query)} and set(table["database"]) == {len(data.database)}
    assert (table["seconds"] > 0).all() and set(table["bits"]) == {32}
    with pytest.raises(ValueError, match="bits must be a positive int"):
        time_map(data, bits=0)
