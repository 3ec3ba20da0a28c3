"""The generated readings of the notebooks: paired differences, their reading, and the verdict text."""

import math

import pandas as pd
import pytest

from kalahash.history import FLAG_MEANINGS
from kalahash.verdicts import (
    CANNOT_TELL,
    CONTRADICTS,
    SUPPORTS,
    arm_names,
    claim_verdict,
    knowledge_differences,
    paired_differences,
    reading,
    what_this_shows,
)


def _rows(values: dict[str, list[float]], shots: int = 1, **extra) -> pd.DataFrame:
    """Rows of arms (method ids) over seeds 0, 1, ...: one value per seed, in map_ties_index."""
    lines = [
        {"method": m, "knowledge": "true", "shots": shots, "seed": seed, "map_ties_index": v,
         "dataset": "objects10", "backbone": "tiny-objects-m", "bits": 16, "flags": "", **extra}
        for m, vs in values.items() for seed, v in enumerate(vs)
    ]  # fmt: skip
    return pd.DataFrame(lines)


def test_reading_compares_the_mean_with_the_seed_spread():
    assert reading(0.02, 0.01, 3) == "above" and reading(-0.02, 0.01, 3) == "below"
    assert reading(0.005, 0.01, 3) == "within the seed spread"
    assert (
        reading(0.05, math.nan, 1) == "one seed, no spread" and reading(math.nan, math.nan, 0) == "no result"
    )


def test_paired_differences_pair_by_seed_within_each_setting():
    rows = pd.concat([
        _rows({"lb": [0.20, 0.30], "kalahash": [0.22, 0.33]}, shots=1),
        _rows({"lb": [0.40, 0.10], "kalahash": [0.30, 0.20]}, shots=2),
    ])  # fmt: skip
    table = paired_differences(rows, "LB", by=("shots",))
    one, two = table.iloc[0], table.iloc[1]
    assert list(table["arm"]) == ["KALAHash", "KALAHash"] and list(table["n"]) == [2, 2]
    assert one["mean"] == pytest.approx(0.025) and one["spread"] == pytest.approx(0.00707, abs=1e-5)
    assert one["reading"] == "above"  # paired: the seeds' own levels cancel
    assert two["mean"] == pytest.approx(0.0) and two["reading"] == "within the seed spread"


def test_a_diverged_run_pairs_with_nothing_and_one_seed_has_no_spread():
    rows = _rows({"lb": [0.2, 0.3], "kalahash": [0.25, float("nan")]})
    (line,) = paired_differences(rows, "LB").to_dict("records")
    assert line["n"] == 1 and math.isnan(line["spread"]) and line["reading"] == "one seed, no spread"


def test_arm_names_use_display_names_and_the_knowledge_control():
    rows = pd.DataFrame({"method": ["lb", "kalahash", "kalahash", "zeroshot"],
                         "knowledge": ["true", "true", "permuted", "true"]})  # fmt: skip
    assert list(arm_names(rows)) == ["LB", "KALAHash", "KALAHash, permuted K", "zero-shot codes"]
    assert list(arm_names(rows.assign(variant=list("abcd")))) == list("abcd")


def test_claims_are_supported_contradicted_or_cannot_tell():
    better = _rows({"lb": [0.20, 0.30, 0.25], "fft": [0.1, 0.1, 0.1], "lora": [0.2, 0.3, 0.25],
                    "kalahash": [0.25, 0.36, 0.30]})  # fmt: skip
    assert claim_verdict("main", better)[0] == SUPPORTS
    worse = better.assign(map_ties_index=better["map_ties_index"].where(better["method"] != "kalahash", 0.0))
    verdict, why = claim_verdict("main", worse)
    assert verdict == CONTRADICTS and "3 below" in why
    tie = better.assign(
        map_ties_index=better["map_ties_index"].where(better["method"] != "kalahash", [0.2, 0.3, 0.25] * 4)
    )
    assert claim_verdict("main", tie)[0] == CANNOT_TELL


def test_the_shot_claim_needs_lb_to_gain_from_four_times_the_shots():
    flat = pd.concat([_rows({"lb": [0.2, 0.3], "kalahash": [0.25, 0.35]}, shots=1),
                      _rows({"lb": [0.2, 0.3]}, shots=4)])  # fmt: skip
    verdict, why = claim_verdict("shots", flat)
    assert verdict == CANNOT_TELL and "LB at 4 − LB at 1: +0.000" in why
    rising = pd.concat([_rows({"lb": [0.2, 0.3], "kalahash": [0.42, 0.51]}, shots=1),
                        _rows({"lb": [0.4, 0.5]}, shots=4)])  # fmt: skip
    assert claim_verdict("shots", rising)[0] == SUPPORTS
    short = pd.concat([_rows({"lb": [0.2, 0.3], "kalahash": [0.21, 0.32]}, shots=1),
                       _rows({"lb": [0.4, 0.5]}, shots=4)])  # fmt: skip
    assert claim_verdict("shots", short)[0] == CONTRADICTS


def test_the_verdict_reads_the_rows_with_reference_flags_and_claims():
    rows = pd.concat([
        _rows({"lb": [0.20, 0.30, 0.25], "kalahash": [0.18, 0.28, 0.23]}),
        _rows({"zeroshot": [0.44]}),
    ]).reset_index(drop=True)  # fmt: skip
    rows.loc[rows["method"] == "kalahash", "flags"] = [
        "anchors_collapsed",
        "anchors_collapsed;W_diverged",
        "",
    ]
    text = what_this_shows(rows, {"profile": "smoke"}, ["main"], by=("shots",))
    assert text.startswith("### What this shows") and "ours, not the paper's setting" in text
    assert "| 1 | KALAHash | -0.020 ± 0.000 (n=3) | below |" in text
    assert "score 0.440, above every trained arm (best trained: LB, shots 1, 0.250)" in text
    assert f"`anchors_collapsed` in 2 of 7 runs (KALAHash ×2): {FLAG_MEANINGS['anchors_collapsed']}" in text
    assert "`W_diverged` in 1 of 7 runs" in text
    assert (
        "the main table: the paper claims KALAHash scores above LB" in text and "**contradicts it**" in text
    )
    assert text._repr_markdown_() == str(text)
    clean = what_this_shows(rows.assign(flags=""), {"profile": "paper"})
    assert "no run raised a flag" in clean and "the paper's setting" in clean and "claims" not in clean


def test_knowledge_differences_compare_kalahash_with_lb_and_its_controls():
    rows = _rows({"lb": [0.2, 0.3], "kalahash": [0.25, 0.36]})
    controls = _rows({"kalahash": [0.24, 0.37]}).assign(knowledge="permuted")
    table = knowledge_differences(pd.concat([rows, controls]))
    assert list(table["comparison"]) == ["KALAHash − LB", "KALAHash − permuted K"]  # no random K run: no line
    assert table["mean"].tolist() == pytest.approx([0.055, 0.0])


def test_the_backbone_claim_reads_the_gain_against_the_backbones_sizes():
    small = _rows({"lb": [0.20, 0.30], "kalahash": [0.20, 0.30]}, backbone="tiny")
    large = _rows({"lb": [0.20, 0.30], "kalahash": [0.30, 0.41]}, backbone="tiny-shapes")
    verdict, why = claim_verdict("backbones", pd.concat([large.drop(columns=[]), small]))
    assert verdict == SUPPORTS and why.index("tiny ") < why.index("tiny-shapes")  # ordered by size
    assert (
        claim_verdict(
            "backbones", pd.concat([small.assign(backbone="tiny-shapes"), large.assign(backbone="tiny")])
        )[0]
        == CONTRADICTS
    )


def test_a_cost_table_reads_its_ratios_against_their_spread():
    costs = pd.DataFrame({"method": ["lb", "clora"], "device": "cpu (x86_64, 1 threads)", "rounds": 5,
                          "train_ratio_vs_frozen": [1.0, 3.0], "train_ratio_vs_frozen_spread": [0.0, 0.2],
                          "train_ratio_vs_frozen_reading": ["within noise", "slower"],
                          "encode_overhead_vs_frozen": [1.0, 1.05], "encode_overhead_vs_frozen_spread": [0.0, 0.1],
                          "encode_overhead_vs_frozen_reading": ["within noise", "within noise"],
                          "encode_overhead_vs_lora": [math.nan] * 2, "encode_overhead_vs_lora_spread": [math.nan] * 2,
                          "encode_overhead_vs_lora_reading": ["not measured"] * 2})  # fmt: skip
    text = what_this_shows(costs, {"dataset": "objects10", "backbone": "tiny-objects-m"}, ["efficiency"])
    assert "| CLoRA | 3.00 ± 0.20, slower | 1.05 ± 0.10, within noise | — |" in text
    assert "**supports it** (CLoRA encodes at 1.05× ± 0.10 the frozen tower's time" in text


def test_a_setting_where_an_arm_diverged_on_every_seed_is_listed_as_no_result():
    rows = _rows({"lb": [0.2, 0.3], "kalahash": [float("nan"), float("nan")]})
    (line,) = paired_differences(rows, "LB", by=("shots",)).to_dict("records")
    assert line["arm"] == "KALAHash" and line["n"] == 0 and line["reading"] == "no result"


def test_the_reference_reads_each_setting_against_its_own_zero_shot_codes():
    rows = pd.concat([
        _rows({"lb": [0.20, 0.30], "zeroshot": [0.40]}, backbone="small"),
        _rows({"lb": [0.50, 0.60], "zeroshot": [0.45]}, backbone="large"),
    ])  # fmt: skip
    text = what_this_shows(rows, {"profile": "smoke"}, by=("backbone",))
    assert "score 0.400 to 0.450, above every trained arm in 1 of the 2 settings" in text
    assert "(best trained: LB, backbone large, 0.550)" in text
