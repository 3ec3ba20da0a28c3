"""Training diagnostics (kalahash.hashing.diagnostics), run histories and flags (kalahash.history), the
history plot, and the CLoRA routing record they rely on."""

import math

import numpy as np
import pandas as pd
import pytest
import torch
from helpers import fresh_tiny

from kalahash.data import ImageList
from kalahash.hashing import build_hasher
from kalahash.hashing.diagnostics import (
    EPOCH_COLUMNS,
    EpochTally,
    alignment_ratio,
    bit_balance,
    distinct_codes,
    routing_purity,
)
from kalahash.history import (
    flag_warnings,
    group_flags,
    history_path,
    history_summary,
    read_history,
    save_history,
    w_bound,
)
from kalahash.plots import plot_history
from kalahash.train import TrainConfig, batch_source, finish_epoch, fit, make_optimizer, train_epoch

CLASSES = ["red circle", "blue square", "green triangle"]


def _images(n: int = 24) -> ImageList:
    rng = np.random.default_rng(1)
    y = np.arange(n) % 3
    pixels = rng.integers(0, 60, size=(n, 32, 32, 3), dtype=np.uint8)
    pixels[np.arange(n), :, :, y] += 180
    return ImageList(pixels, np.eye(3, dtype=np.uint8)[y])


def test_distinct_codes_counts_sign_rows():
    codes = torch.tensor([[1, -1, 1], [1, -1, 1], [-1, -1, 1], [0.2, -3.0, 0.0]])
    assert distinct_codes(codes) == 2  # the last row signs to the first (0 -> +1)
    assert distinct_codes(torch.empty(0, 4)) == 0
    with pytest.raises(ValueError, match="must be 2-D"):
        distinct_codes(torch.ones(3))


def test_alignment_ratio_against_w_zero():
    Y = torch.eye(2)[[0, 1, 1, 0]].t()  # (C=2, N=4)
    B = torch.tensor([[1.0, 1, 1, 1], [1, -1, -1, 1]])  # (bits=2, N): a constant bit and the class bit
    assert alignment_ratio(Y, B, torch.zeros(2, 2)) == pytest.approx(1.0)
    W = torch.linalg.lstsq(B.t(), Y.t()).solution  # the least-squares anchors fit these labels exactly
    assert alignment_ratio(Y, B, W) == pytest.approx(0.0, abs=1e-6)
    assert alignment_ratio(Y, B, 10 * W) > 1  # blown-up anchors do worse than none
    with pytest.raises(ValueError, match="shape mismatch"):
        alignment_ratio(Y, B, torch.zeros(3, 2))


def test_bit_balance_and_routing_purity_on_hand_made_values():
    balanced = torch.tensor([[1.0, 1], [-1, -1], [1, -1], [-1, 1]])  # (N=4, bits=2)
    assert bit_balance(balanced) == 0.0
    assert bit_balance(torch.ones(5, 3)) == 1.0
    assert bit_balance(balanced.t(), dim=1) == 0.0 and math.isnan(bit_balance(torch.empty(0, 2)))
    labels = torch.tensor([[1, 0, 0], [0, 1, 1], [0, 0, 1], [1, 0, 0]])
    assert routing_purity(torch.tensor([0, 2, 1, 1]), labels) == 0.5  # multi-label: any label counts
    assert math.isnan(routing_purity(torch.empty(0, dtype=torch.long), labels[:0]))


def test_clora_records_its_top1_selection_without_changing_the_output():
    hasher = build_hasher("clora", fresh_tiny(), CLASSES, 8, rank=2)
    layer = next(m for m in hasher.visual.modules() if type(m).__name__ == "CLoRALinear")
    x = torch.randn(3, 5, layer.in_features)
    out = layer(x)
    assert torch.equal(layer.last_top1, layer.select(x, layer.pool())[:, 0])
    assert torch.equal(layer(x), out)
    pixels = torch.randn(3, 3, 32, 32)
    hasher(pixels)
    tops = hasher.routing_top1()
    assert len(tops) == 2 and all(t.shape == (3,) for t in tops)  # k and v of the last block


def _ready(method: str = "kalahash"):
    torch.manual_seed(0)
    hasher = build_hasher(method, fresh_tiny(), CLASSES, 8, rank=2)
    train = _images()
    hasher.begin_training(train.labels)
    config = TrainConfig(epochs=1)
    optimizer, scaler = make_optimizer(hasher, config)
    return hasher, train, optimizer, scaler, config


def test_epoch_diagnostics_read_the_hasher_state():
    from kalahash.train import TrainResult

    hasher, train, optimizer, scaler, config = _ready()
    source = batch_source(hasher, train, None, progress=False)
    tally = EpochTally(hasher)
    means = train_epoch(hasher, source, optimizer, scaler, config, 0, tally)
    b_before = hasher.criterion.B.clone()
    row = finish_epoch(hasher, TrainResult(), 0, means, tally)
    W = hasher.criterion.kept_W  # the anchors the B-step used: the epoch's last forward pass's
    assert not torch.equal(W, hasher.anchor_matrix().detach())  # not those after its optimizer step
    assert row["w_norm"] == pytest.approx(float(W.norm()))
    assert row["b_flips"] == float((b_before != hasher.criterion.B).sum()) > 0
    assert row["anchors_distinct"] == len(torch.unique(torch.where(W.t() >= 0, 1.0, -1.0), dim=0))
    Y, B = hasher.criterion.Y, hasher.criterion.B
    assert row["ali_ratio"] == pytest.approx(float((Y - W.t() @ B).pow(2).mean() / Y.pow(2).mean()))
    assert 0 <= row["routing_purity"] <= 1 and 0 <= row["bit_balance"] <= 1
    assert set(EPOCH_COLUMNS) <= set(row)


def test_epoch_tally_purity_matches_the_selected_classes():
    hasher, train, *_ = _ready("clora")
    labels = torch.from_numpy(train.labels[:6].astype(np.float32))
    tally = EpochTally(hasher)
    pixels = torch.stack([train.with_transform(hasher.backbone.preprocess)[i][0] for i in range(6)])
    u = hasher(pixels)
    tally.add(u, labels)
    tops = hasher.routing_top1()
    expected = np.mean([routing_purity(t, labels) for t in tops])
    summary = tally.summary()
    assert summary["routing_purity"] == pytest.approx(expected)
    assert summary["bit_balance"] == pytest.approx(bit_balance(torch.where(u >= 0, 1.0, -1.0)))


def test_fit_history_has_diagnostics_and_nan_where_they_do_not_apply():
    kala = fit(
        build_hasher("kalahash", fresh_tiny(), CLASSES, 8, rank=2), _images(), epochs=2, progress=False
    )
    lb = fit(build_hasher("lb", fresh_tiny(), CLASSES, 8), _images(), epochs=2, progress=False)
    for row in kala.history:
        assert all(np.isfinite(row[c]) for c in EPOCH_COLUMNS), row
    for row in lb.history:
        assert all(math.isnan(row[c]) for c in EPOCH_COLUMNS if c != "bit_balance")
        assert 0 <= row["bit_balance"] <= 1


def _history(w_norms, anchors, ali):
    return [
        {
            "epoch": i + 1,
            "loss": 1.0,
            "w_norm": w,
            "anchors_distinct": a,
            "ali_ratio": r,
            "routing_purity": 0.25,
        }
        for i, (w, a, r) in enumerate(zip(w_norms, anchors, ali, strict=True))
    ]


def test_flags_on_a_diverging_history():
    bits, classes = 16, 12
    codes = np.sign(np.random.default_rng(0).standard_normal((100, bits))).astype(np.int8)
    healthy = history_summary(_history([2.0, 3.0, 3.5], [12, 12, 12], [2.0, 0.9, 0.6]), bits, classes, codes)
    assert healthy["flags"] == "" and healthy["w_norm_final"] == 3.5 and healthy["w_norm_max"] == 3.5
    assert healthy["anchors_distinct"] == 12 and healthy["routing_purity"] == 0.25
    assert healthy["db_distinct_codes"] == len(np.unique(codes, axis=0))

    bound = w_bound(bits, classes)
    assert bound == pytest.approx(10 * np.sqrt(16 * 12))
    diverging = _history([2.0, 50.0, bound * 1.5, bound * 40], [12, 5, 1, 1], [2.0, 3.0, 20.0, 1e4])
    collapsed = np.repeat(codes[:3], 10, axis=0)
    summary = history_summary(diverging, bits, classes, collapsed)
    assert summary["flags"] == "W_diverged;anchors_collapsed;anchors_misfit;codes_collapsed"
    assert summary["w_norm_max"] == bound * 40 and summary["db_distinct_codes"] == 3

    none = history_summary([], bits, classes, codes)  # zeroshot: no epochs
    assert none["flags"] == "" and math.isnan(none["w_norm_final"]) and math.isnan(none["routing_purity"])


def test_history_file_round_trip(tmp_path):
    history = _history([1.0, 2.0], [3, 2], [0.5, 0.4])
    path = save_history(history, history_path(tmp_path, "abc123"))
    assert path == tmp_path / "histories" / "abc123.csv"
    table = read_history(tmp_path, "abc123")
    assert table["epoch"].tolist() == [1, 2] and table["w_norm"].tolist() == [1.0, 2.0]
    save_history([], history_path(tmp_path, "empty"))
    assert read_history(tmp_path, "empty").empty
    with pytest.raises(FileNotFoundError, match=r"no history for run missing.*force=True"):
        read_history(tmp_path, "missing")
    assert read_history(tmp_path, "missing", missing_ok=True).empty


def test_group_flags_and_warnings():
    flags = ["anchors_collapsed;anchors_misfit", "", float("nan"), "anchors_collapsed"]
    assert group_flags(flags) == "anchors_collapsed×2;anchors_misfit×1"
    assert group_flags(["", float("nan")]) == ""
    rows = pd.DataFrame(
        {"method": ["kalahash", "lb"], "knowledge": ["permuted", "true"], "seed": [1, 2], "config_id": ["a1", "b2"],
         "flags": ["W_diverged", float("nan")]}
    )  # fmt: skip
    assert flag_warnings(rows) == [
        "WARNING: method kalahash, knowledge permuted, seed 1 (config a1) flags: W_diverged"
    ]


def test_plot_history_draws_each_recorded_quantity():
    history = _history([1.0, 10.0, 100.0], [12, 4, 1], [1.0, 2.0, 3.0])
    fig = plot_history(history, title="run", num_classes=12, w_limit=50.0)
    axes = fig.axes
    assert len(axes) == 5
    assert axes[1].get_yscale() == "log" and axes[1].lines[0].get_ydata().tolist() == [1.0, 10.0, 100.0]
    assert [line.get_ydata()[0] for line in axes[2].lines] == [12, 12]  # the anchors and the class line
    assert "not recorded" in axes[3].texts[0].get_text()  # no B-step flips in this history
    empty = plot_history([])
    assert all("not recorded" in ax.texts[0].get_text() for ax in empty.axes)
