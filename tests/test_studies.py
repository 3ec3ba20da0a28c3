"""The notebooks' studies: settings per profile, the grids of 02/03/06/07, running arms, the tables."""

import copy

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
from helpers import tiny_list_dataset

from kalahash.backbones import load_backbone, parameter_count
from kalahash.experiments import PROFILES, ExperimentConfig, run_experiment
from kalahash.hashing import METHOD_LABELS, build_hasher
from kalahash.plots import backbone_scaling, bar_panels, markdown_table, save_table
from kalahash.studies import (
    ABLATIONS,
    MAIN_DATASETS,
    PAPER_BACKBONES,
    PLUG_LOSSES,
    STUDY_SIZES,
    ablation_grid,
    backbone_grid,
    backbone_table,
    backbone_weights,
    knowledge_grid,
    main_grid,
    main_table,
    main_table_wide,
    plug_and_play_grid,
    plug_and_play_table,
    run_arms,
    shot_scaling_grid,
    skipped_backbones,
    study_settings,
    tie_table,
)


def _plain(settings, **kw) -> ExperimentConfig:
    """The config a notebook such as 01 builds for a plain method: what a study must reuse."""
    return ExperimentConfig(
        dataset=settings["dataset"], data_root=settings.get("data_root"), backbone=settings["backbone"],
        pretrained=settings["pretrained"], epochs=settings["epochs"], **kw,
    )  # fmt: skip


# ---------------------------------------------------------------------------------------------- settings


def test_study_settings_take_the_study_size_between_profile_and_parameters():
    smoke = study_settings("main")
    assert smoke["profile"] == "smoke" and smoke["bits"] == STUDY_SIZES["main"]["smoke"]["bits"]
    assert smoke["shots"] == STUDY_SIZES["main"]["smoke"]["shots"] and smoke["datasets"] == [smoke["dataset"]]
    assert (
        smoke["reduced"].startswith("not the paper's setting")
        and "seeds" in smoke["reduced"]
        and "paper profile: cifar10, nuswide, coco" in smoke["reduced"]
    )
    assert study_settings("main", shots="[2]", bits=32)["shots"] == [2]
    assert study_settings("main", bits=32)["bits"] == [32]
    paper = study_settings("main", profile="paper")
    assert paper["datasets"] == list(MAIN_DATASETS) and paper["reduced"] == ""
    assert study_settings("main", dataset="NUS-WIDE")["datasets"] == ["nuswide"]
    assert study_settings("main", datasets="cifar10 coco")["datasets"] == ["cifar10", "coco"]
    shots = study_settings("shots", profile="paper")
    assert shots["mdsh_fft_shots"] == PROFILES["paper"]["scaling_shots"] and shots["reduced"] == ""
    with pytest.raises(ValueError, match="unknown study 'figure9'"):
        study_settings("figure9")


# ------------------------------------------------------------------------------------------------- grids


def test_main_grid_covers_every_cell_and_reuses_the_plain_runs():
    settings = study_settings("main", profile="paper", seeds=[0, 1])
    arms = main_grid(settings)
    references = [a for a in arms if a.config.method == "zeroshot"]
    assert len(references) == 3 * 3 * 4 and {a.config.seed for a in references} == {0}  # one a cell
    assert len(arms) == 3 * 3 * 4 * 4 * 2 + len(references)  # data sets x bits x shots x methods x seeds
    cells = {(a.config.dataset, a.config.bits, a.config.shots, a.config.method, a.config.seed) for a in arms}
    assert len(cells) == len(arms) and all(a.label == METHOD_LABELS[a.config.method] for a in arms)
    roots = {a.config.dataset: a.config.data_root for a in arms}
    assert all(root.endswith(f"data/{name}") for name, root in roots.items())
    plain = _plain(settings, shots=1, bits=16, method="lb", seed=0)  # cifar10, the profile's data set
    assert arms[0].config.config_id == plain.config_id


def test_shot_scaling_grid_adds_mdsh_fft_where_asked():
    settings = study_settings("shots")
    arms = shot_scaling_grid(settings, bits=16)
    mdsh = [a for a in arms if a.label == "MDSH-FFT"]
    assert {(a.config.method, a.config.loss) for a in mdsh} == {("fft", "mdsh")}
    assert sorted({a.config.shots for a in mdsh}) == settings["mdsh_fft_shots"]
    (reference,) = [a for a in arms if a.label == "zero-shot codes"]
    assert reference.config.method == "zeroshot" and reference.config.seed == settings["seeds"][0]
    others = [a for a in arms if a.label not in ("MDSH-FFT", "zero-shot codes")]
    assert len(others) == len(settings["scaling_shots"]) * len(settings["methods"]) * len(settings["seeds"])


@pytest.fixture(scope="module")
def shapes_backbone():
    return load_backbone("tiny-shapes")


@pytest.mark.parametrize("name", ABLATIONS)
def test_each_ablation_keeps_the_papers_run_and_builds(name, shapes_backbone):
    settings = study_settings("ablations", seeds=[0])
    arms = ablation_grid(name, settings)
    labels = [a.label for a in arms]
    assert len(set(labels)) == len(labels) >= 3
    plain = _plain(settings, shots=1, bits=16, method="kalahash", seed=0)
    assert plain.config_id in {a.config.config_id for a in arms}  # the paper's arm is the plain run
    for arm in arms:  # every arm is a hasher the factory accepts
        hparams, _ = arm.config.resolved_hparams()
        build_hasher(
            arm.config.method,
            copy.deepcopy(shapes_backbone),
            ["a", "b", "c", "d", "e", "f", "g", "h"],
            16,
            **hparams,
        )


def test_component_and_selection_arms_change_what_they_say():
    settings = study_settings("ablations", seeds=[0])
    by_label = {a.label: a.config for a in ablation_grid("components", settings)}
    assert by_label["LB"].method == "lb" and by_label["+CLoRA"].method == "clora"
    kiddo = by_label["+KIDDO"]
    plain_hparams, _ = by_label["+CLoRA +KIDDO"].resolved_hparams()
    assert kiddo.method == "lb" and kiddo.hyperparameters["kiddo"] is True
    assert all(
        kiddo.hyperparameters[k] == plain_hparams[k] for k in ("kiddo_alpha", "kiddo_beta", "kiddo_gamma")
    )
    chosen = {
        a.label: a.config.hyperparameters.get("selection") for a in ablation_grid("selection", settings)
    }
    assert chosen == {"Top_r (paper)": None, "random": "random", "fixed": "fixed"}
    with pytest.raises(ValueError, match="unknown ablation 'depth'"):
        ablation_grid("depth", settings)


def test_knowledge_grid_runs_the_controls_across_shots_with_lb_lora_and_zeroshot():
    settings = study_settings("ablations", knowledge_shots=[1, 4], knowledge_seeds=[0, 1])
    arms = knowledge_grid(settings)
    controls = {a.label: (a.config.method, a.config.knowledge) for a in arms}
    assert controls == {
        "LB": ("lb", "true"),
        "LoRA": ("lora", "true"),
        "KALAHash": ("kalahash", "true"),
        "KALAHash, permuted K": ("kalahash", "permuted"),
        "KALAHash, random K": ("kalahash", "random"),
        "zero-shot codes": ("zeroshot", "true"),
    }
    assert len(arms) == 2 * (5 * 2 + 1)  # shots x (arms x seeds + one zero-shot run)
    plain = _plain(settings, shots=4, bits=16, method="kalahash", seed=1)
    assert plain.config_id in {a.config.config_id for a in arms}  # shared with the other notebooks
    assert study_settings("ablations", profile="paper", seeds=[3])["knowledge_seeds"] == [3]


def test_plug_and_play_grid_puts_each_loss_on_each_variant():
    settings = study_settings("plug_and_play", seeds=[0])
    arms = plug_and_play_grid(settings)
    assert len(arms) == len(PLUG_LOSSES) * 4 + 1  # and the zero-shot codes as a reference
    assert arms[-1].config.method == "zeroshot" and arms[-1].label == "zero-shot codes"
    arms = arms[:-1]
    seen = {(a.config.loss, a.label): a.config.method for a in arms}
    assert {m for (loss, _), m in seen.items() if loss == "csq"} == {"lb", "fft", "clora", "kalahash"}
    plain = _plain(settings, shots=1, bits=16, method="kalahash", seed=0)
    assert next(a for a in arms if a.label == "+CLoRA +KIDDO").config.config_id == plain.config_id


def test_backbone_study_gives_each_backbone_its_weights_and_shares_the_main_runs(tmp_path):
    settings = study_settings("backbones", profile="paper")
    assert settings["backbones"] == list(PAPER_BACKBONES) and settings["reduced"] == ""
    assert backbone_weights(settings) == {"ViT-B-32": "openai", "ViT-L-14": "openai"}
    assert "pass slip_weights" in skipped_backbones(settings)["SLIP-ViT-S-16"]
    arms = backbone_grid(settings)
    assert len(arms) == 2 * (len(settings["methods"]) * len(settings["seeds"]) + 1)  # and zero-shot codes
    plain = _plain(settings, shots=1, bits=16, method="lb", seed=0)  # ViT-B-32, openai: the main table's run
    assert arms[0].config.config_id == plain.config_id
    weights = tmp_path / "slip_small_100ep.pt"
    with_slip = study_settings("backbones", profile="paper", slip_weights=str(weights))
    assert backbone_weights(with_slip)["SLIP-ViT-S-16"] == str(weights) and not skipped_backbones(with_slip)
    with pytest.raises(ValueError, match=r"unknown backbone.*'ViT-B-3'"):
        study_settings("backbones", backbones="ViT-B-3 ViT-L-14")


def test_backbone_study_skips_what_this_version_lacks(monkeypatch):
    """A family named by the study's size but not installed (yet) is reported, never run or faked."""
    sizes = {**STUDY_SIZES["backbones"], "smoke": {"dataset": "nowhere10", "backbones": ["tiny-nowhere"]}}
    monkeypatch.setitem(STUDY_SIZES, "backbones", sizes)
    settings = study_settings("backbones")
    assert settings["dataset"] == "nowhere10" and settings["data_root"] is None
    assert skipped_backbones(settings) == {
        "tiny-nowhere": "data set 'nowhere10' is not in this version of kalahash"
    }
    assert backbone_grid(settings) == []
    settings = study_settings("backbones", dataset="shapes", backbones="tiny-shapes tiny")
    assert backbone_weights(settings) == {
        "tiny-shapes": None,
        "tiny": None,
    }  # a tiny CLIP never gets "openai"
    assert skipped_backbones({**settings, "backbones": ["tiny-nowhere", "tiny"]}) == {
        "tiny-nowhere": "this backbone is not in this version of kalahash"
    }
    with pytest.raises(ValueError, match="unknown dataset 'nowhere10'"):
        study_settings("backbones", dataset="nowhere10")


def test_backbone_runs_give_a_curve_over_parameter_counts(tmp_path):
    settings = study_settings("backbones", dataset="shapes", backbones=["tiny", "tiny-shapes"], methods=["lb"],
                              seeds=[0], epochs=1)  # fmt: skip
    options = {
        "results": tmp_path / "r.csv",
        "workdir": tmp_path / "w",
        "cache": tmp_path / "c",
        "progress": False,
    }
    rows = run_arms(backbone_grid(settings), **options)
    assert list(rows["backbone"]) == ["tiny"] * 2 + ["tiny-shapes"] * 2 and rows["pretrained"].isna().all()
    assert list(rows["method"]) == ["lb", "zeroshot"] * 2
    table = backbone_table(rows[rows["method"] == "lb"])
    assert table["params"].tolist() == [parameter_count("tiny"), parameter_count("tiny-shapes")]
    assert list(table.columns[:4]) == ["backbone", "params", "shots", "method"]
    fig = backbone_scaling(table, "two tiny backbones", value="mean_index", error="std_index")
    line = fig.axes[0].lines[0]
    np.testing.assert_allclose(np.asarray(line.get_xdata(), dtype=float), sorted(table["params"]))
    plt.close(fig)


# ------------------------------------------------------------------------------------- running, tables


def test_run_arms_gives_labelled_rows_and_shares_runs(tmp_path):
    root = tmp_path / "data"
    tiny_list_dataset(root)
    settings = {"profile": "paper", "dataset": "nuswide", "data_root": str(root), "backbone": "tiny",
                "pretrained": None, "epochs": 2, "shots": [1], "seeds": [0, 1]}  # fmt: skip
    options = {
        "results": tmp_path / "r.csv",
        "workdir": tmp_path / "w",
        "cache": tmp_path / "c",
        "progress": False,
    }
    rows = run_arms(ablation_grid("selection", settings), **options)
    assert list(rows["variant"]) == ["Top_r (paper)"] * 2 + ["random"] * 2 + ["fixed"] * 2
    assert set(rows["study"]) == {"selection"} and not rows["skipped"].any()
    table = tie_table(rows)
    assert list(table["variant"]) == ["Top_r (paper)", "random", "fixed"] and set(table["seeds"]) == {2}
    by_rule = rows.groupby("variant", sort=False)["map_ties_average"].mean()
    assert table["mean_average"].tolist() == pytest.approx(by_rule.tolist())
    assert table["mAP, index ties"].str.match(r"\d\.\d{4}( ± \d\.\d{4} \(n=2\)| \(n=2, all equal\))").all()
    plain = _plain(settings, shots=1, bits=16, method="kalahash", seed=1)
    assert run_experiment(plain, **options)["skipped"]  # the study's paper arm is the plain run


def _rows() -> pd.DataFrame:
    """Synthetic result rows: 2 data sets x 2 bits x 1 shot x 2 methods x 2 seeds."""
    lines = []
    for d in ("cifar10", "coco"):
        for bits in (16, 64):
            for m in ("lb", "kalahash"):
                for seed in (0, 1):
                    value = 0.1 * (bits / 16) + (0.05 if m == "kalahash" else 0) + 0.01 * seed
                    lines.append({"dataset": d, "bits": bits, "shots": 1, "method": m, "seed": seed, "loss": "dpsh",
                                  "variant": m, "map_ties_index": value, "map_ties_average": value / 2})  # fmt: skip
    return pd.DataFrame(lines)


def test_main_table_tidy_and_in_the_papers_layout(tmp_path):
    table = main_table(_rows())
    assert len(table) == 8 and set(table["seeds"]) == {2}
    cell = table[(table["dataset"] == "coco") & (table["bits"] == 64) & (table["method"] == "kalahash")]
    assert cell["mean_index"].item() == pytest.approx(0.455) and cell["std_index"].item() == pytest.approx(
        0.00707, abs=1e-5
    )
    wide = main_table_wide(table, "average")
    assert list(wide.columns) == [
        "shots",
        "method",
        "cifar10 · 16 bits",
        "cifar10 · 64 bits",
        "coco · 16 bits",
        "coco · 64 bits",
    ]
    assert (
        list(wide["method"]) == ["lb", "kalahash"]
        and wide.loc[1, "coco · 64 bits"] == "0.2275 ± 0.0035 (n=2)"
    )
    save_table(wide, "main", out_dir=tmp_path, markdown=True)
    lines = (tmp_path / "main.md").read_text().splitlines()
    assert lines[0].startswith("| shots | method | cifar10 · 16 bits") and len(lines) == 4
    assert pd.read_csv(tmp_path / "main.csv").shape == wide.shape
    with pytest.raises(ValueError, match="ties must be one of index, average"):
        main_table_wide(table, "random")


def test_plug_and_play_table_has_a_line_per_loss_and_a_column_per_variant():
    rows = _rows().query("dataset == 'cifar10' and bits == 16")
    rows = pd.concat([rows.assign(loss="mdsh"), rows.assign(loss="csq")])
    wide = plug_and_play_table(rows)
    assert list(wide.columns) == ["shots", "loss", "lb", "kalahash"] and list(wide["loss"]) == ["mdsh", "csq"]


def test_markdown_table_and_bar_panels():
    text = markdown_table(pd.DataFrame({"a|b": [1.234567], "c": ["x\ny"]}))
    assert text.splitlines() == ["| a\\|b | c |", "|---|---|", "| 1.2346 | x y |"]
    summary = tie_table(_rows(), by=("dataset", "method")).rename(
        columns={"mean_index": "mean", "std_index": "std"}
    )
    fig = bar_panels(summary, "two panels", panel="dataset", label="method")
    assert [ax.get_title() for ax in fig.axes] == ["cifar10", "coco"]
    plt.close(fig)


def test_a_diverged_arm_is_a_flagged_row_not_a_crash(monkeypatch):
    from kalahash.experiments import runner
    from kalahash.history import DIVERGED

    arms = ablation_grid("components", study_settings("ablations", seeds=[0]))

    def run(cfg, **_):
        if cfg.method == "kalahash":
            raise FloatingPointError("the loss became inf at epoch 89, step 1 (kalahash)")
        return {"config_id": cfg.config_id, **cfg.to_row(), "map": 0.25, "map_ties_index": 0.25,
                "map_ties_average": 0.25, "flags": ""}  # fmt: skip

    monkeypatch.setattr(runner, "run_experiment", run)
    rows = run_arms(arms)
    diverged = rows[rows["flags"] == DIVERGED]
    assert len(diverged) == (rows["method"] == "kalahash").sum() > 0
    assert diverged["map"].isna().all() and diverged["error"].str.contains("epoch 89").all()
    table = tie_table(rows)
    assert table.loc[table["variant"].isin(diverged["variant"]), "flags"].str.contains(DIVERGED).all()
