"""benchmarks/bench_encode.py runs end to end on the CPU: (a) and (b) measured, (c) with its archive
built and every run skipped by a zero budget (the runs themselves are run_experiment's, tested there;
`--quick` runs them all, by hand: about 30 s here)."""

from __future__ import annotations

import json
import runpy
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parent.parent / "benchmarks" / "bench_encode.py"


def test_bench_encode_quick_writes_its_tables_and_json(tmp_path, monkeypatch, capsys):
    out = tmp_path / "bench.json"
    argv = [str(BENCH), "--quick", "--out", str(out), "--budget", "0", "--workdir", str(tmp_path)]
    monkeypatch.setattr(sys, "argv", argv)
    runpy.run_path(str(BENCH), run_name="__main__")
    results = json.loads(out.read_text())
    assert results["info"]["backbone"] == "tiny" and results["info"]["default_workers"] == 0
    paths = [row["path"] for row in results["preprocess"]]
    assert paths[0] == "PIL, 0 workers" and paths[-1] == "device"
    assert results["preprocess"][-1]["max_abs_pixel_difference_vs_pil"] == 0.0
    assert all(row["images_per_s"] > 0 for row in results["preprocess"] + results["encode"])
    assert {(row["tower"], row["precision"]) for row in results["encode"]} == {
        ("frozen", "fp32"),
        ("CLoRA", "fp32"),
    }
    assert len(results["protocol"]) == 10 and all(row["skipped"] == "budget" for row in results["protocol"])
    printed = capsys.readouterr().out
    assert "(a) preprocessing, images/s" in printed and "(c) the full protocol, seconds" in printed
    assert not list(tmp_path.glob("bench_encode-*"))  # the archive and caches are cleaned up
