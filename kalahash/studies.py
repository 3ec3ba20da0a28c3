"""The paper's tables as data: which runs each study makes, and the tidy tables its rows give.

A study is a list of :class:`Arm` s: a label (what the table calls it) and the :class:`ExperimentConfig`
it runs, one arm per seed. Notebooks take their settings from :func:`study_settings`, build the arms
(:func:`main_grid`, :func:`shot_scaling_grid`, :func:`ablation_grid`, :func:`plug_and_play_grid`,
:func:`backbone_grid`, :func:`embedding_grid`), run them with :func:`run_arms` (a stored result is
reused, so a study shares runs with the others) and turn the rows into tables (:func:`tie_table`,
:func:`main_table`, :func:`main_table_wide`, :func:`plug_and_play_table`, :func:`backbone_table`). The
embedding views of Figure 1 need the trained hashers themselves: :mod:`kalahash.views`. An arm that changes nothing of the paper's setting overrides nothing,
so it is the same run, with the same ``config_id``, as the plain method in every other notebook.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, fields, replace
from typing import Any

import pandas as pd

from .experiments import (
    DEFAULT_DATASET,
    PROFILES,
    ExperimentConfig,
    list_setting,
    notebook_settings,
    run_or_flag,
    summarize,
)
from .metrics import TIES
from .worlds import WORLDS

MAIN_DATASETS = ("cifar10", "nuswide", "coco")
MAIN_BITS = (16, 32, 64)
PLUG_LOSSES = ("dpsh", "hashnet", "csq", "orthohash", "mdsh")
KIDDO_WEIGHTS = ("kiddo_alpha", "kiddo_beta", "kiddo_gamma")
# The backbone-scaling figure: the paper's three towers, and the smoke profile's family of tiny CLIPs.
PAPER_BACKBONES = ("SLIP-ViT-S-16", "ViT-B-32", "ViT-L-14")
SMOKE_BACKBONES = WORLDS[DEFAULT_DATASET].backbones
# The paper's weights for an open_clip model that has them; SLIP's come from a local file (slip_weights).
PAPER_WEIGHTS = "openai"
ABLATIONS = ("components", "selection", "rank", "strength", "loss_weights", "placement")
# The ablations' panels, in words.
ABLATION_TITLES = {
    "components": "components",
    "selection": "CLoRA's class selection",
    "rank": "rank r",
    "strength": "strength α",
    "loss_weights": "KIDDO's loss weights",
    "placement": "where CLoRA goes",
}

# What each study runs in each profile, on top of the profile itself (kalahash.experiments.PROFILES).
# The smoke sizes keep CI in its budget on 2 cores; study_settings()["reduced"] says what they leave out.
STUDY_SIZES: dict[str, dict[str, dict[str, Any]]] = {
    "quickstart": {"smoke": {"shots": [1], "bits": [16]}, "paper": {"shots": [1], "bits": [16]}},
    "main": {
        "smoke": {"bits": [16, 32, 64], "shots": [1, 4]},
        "paper": {"bits": list(MAIN_BITS), "datasets": list(MAIN_DATASETS)},
    },
    "shots": {"smoke": {"mdsh_fft_shots": [1, 2, 4]}, "paper": {}},
    "ablations": {
        "smoke": {
            "shots": [1],
            "ablations": list(ABLATIONS),
            "knowledge_shots": [1, 2, 4, 8],
            "knowledge_seeds": [0, 1, 2],
        },
        "paper": {"shots": [1], "ablations": list(ABLATIONS), "knowledge_shots": [1, 2, 4, 8]},
    },
    "plug_and_play": {
        "smoke": {"shots": [1], "losses": list(PLUG_LOSSES)},
        "paper": {"shots": [1], "losses": list(PLUG_LOSSES)},
    },
    "efficiency": {
        "smoke": {"train_shots": 8, "rounds": 5, "methods": ["lb", "fft", "lora", "clora", "kalahash"]},
        "paper": {"train_shots": 8, "rounds": 5, "methods": ["lb", "fft", "lora", "clora", "kalahash"]},
    },
    # the smoke family: three sizes of a tiny CLIP pre-trained on the objects10 world
    "backbones": {
        "smoke": {
            "dataset": DEFAULT_DATASET,
            "backbones": list(SMOKE_BACKBONES),
            "shots": [1],
            "methods": ["lb", "kalahash"],
        },
        "paper": {"backbones": list(PAPER_BACKBONES), "shots": [1], "methods": ["lb", "fft", "kalahash"]},
    },
    "embeddings": {
        "smoke": {"shots": [1], "methods": ["fft", "lb", "kalahash"], "max_points": 1500},
        "paper": {"shots": [1], "methods": ["fft", "lb", "kalahash"], "max_points": 5000},
    },
}
# The settings each study's size is told in, to compare with the paper's.
_STUDY_KEYS = {
    "quickstart": ("shots", "seeds", "epochs"),
    "main": ("datasets", "bits", "shots", "seeds", "epochs"),
    "shots": ("scaling_shots", "mdsh_fft_shots", "seeds", "epochs"),
    "ablations": ("shots", "seeds", "knowledge_shots", "knowledge_seeds", "epochs"),
    "plug_and_play": ("shots", "seeds", "epochs"),
    "efficiency": (),
    "backbones": ("dataset", "backbones", "shots", "methods", "seeds", "epochs"),
    "embeddings": ("shots", "methods", "seeds", "epochs"),
}
_LIST_KEYS = ("datasets", "bits", "mdsh_fft_shots", "ranks", "strengths", "losses", "ablations", "backbones",
              "knowledge_shots", "knowledge_seeds")  # fmt: skip

# The values the ablations try; the setting's own preset value is always added, so the paper's arm is
# the plain method's run.
RANKS = (1, 2, 4, 8)
STRENGTHS = (0.1, 0.3, 0.5, 1.0)
LOSS_WEIGHTS = {
    "kiddo_alpha": (0.01, 0.1, 1.0),
    "kiddo_beta": (0.0, 0.1, 1.0, 3.0),
    "kiddo_gamma": (0.0, 1.0, 3.0),
}
# KIDDO's weights as the release names them (α is CLoRA's strength here)
_WEIGHT_NAMES = {"kiddo_alpha": "ALPHA", "kiddo_beta": "BETA", "kiddo_gamma": "GAMMA"}
PLACEMENTS = (
    ("last block, k v (paper)", {}),
    ("last block, q v", {"targets": ["q", "v"]}),
    ("last block, q k v o", {"targets": ["q", "k", "v", "o"]}),
    ("last 2 blocks, k v", {"blocks": [-2, -1]}),
    ("last 4 blocks, k v", {"blocks": [-4, -3, -2, -1]}),
)


@dataclass(frozen=True)
class Arm:
    """One run of a study: ``study`` (e.g. "rank"), ``label`` (e.g. "r=4") and its configuration."""

    study: str
    label: str
    config: ExperimentConfig


# ----------------------------------------------------------------------------------------------------------
# Settings


def _text(values: Any) -> str:
    return ", ".join(map(str, values)) if isinstance(values, list | tuple) else str(values)


def _named(key: str, values: Any) -> Any:
    """Method ids as tables name them (LB, KALAHash, ...); other settings as they are."""
    from .hashing import METHOD_LABELS

    return [METHOD_LABELS.get(m, m) for m in values] if key == "methods" else values


def _reductions(study: str, settings: Mapping[str, Any]) -> str:
    """Where this study's size is not the paper's, in words ("" when it is)."""
    paper = {**PROFILES["paper"], **STUDY_SIZES[study]["paper"]}
    paper.setdefault("datasets", [paper["dataset"]])
    paper.setdefault("mdsh_fft_shots", paper["scaling_shots"])
    paper.setdefault("knowledge_seeds", paper["seeds"])
    smaller = [
        f"{key.replace('_', ' ')} {_text(_named(key, settings[key]))} (paper profile: {_text(_named(key, paper[key]))})"
        for key in _STUDY_KEYS[study]
        if key in settings and settings[key] != paper[key]
    ]
    return "not the paper's setting: " + "; ".join(smaller) if smaller else ""


def _lacking_dataset(sizes: Mapping[str, Any], chosen: Mapping[str, Any]) -> str | None:
    """The data set the study's size names (none given) if this version of kalahash lacks it."""
    from .data import DATASETS

    name = sizes.get("dataset")
    return name if name is not None and "dataset" not in chosen and name not in DATASETS else None


def study_settings(study: str, profile: str = "auto", **given: Any) -> dict[str, Any]:
    """A study notebook's settings: :func:`notebook_settings` with the study's size for the profile
        (:data:`STUDY_SIZES`) between the profile and the parameters given.

        ``datasets`` (the main table's) defaults to the study's list, or to ``[dataset]`` when a data set is
        given or the profile has one data set. ``reduced`` says in words where the size is not the paper's
    (what the smoke profile leaves out). A data set the study's size names but this version of kalahash
    does not have yet (the smoke backbone family's ``objects10``) is kept by name, without a data root,
    for :func:`skipped_backbones` to report; a data set or backbones given must exist (ValueError).
    """
    from .backbones import available_models
    from .data import resolve_dataset_name

    if study not in STUDY_SIZES:
        raise ValueError(f"unknown study {study!r}; choose one of {', '.join(STUDY_SIZES)}")
    chosen = {k: v for k, v in given.items() if v is not None}
    resolved = notebook_settings(profile, dataset=chosen.get("dataset"))["profile"]
    sizes = dict(STUDY_SIZES[study][resolved])
    lacking = _lacking_dataset(sizes, chosen)
    if lacking:
        del sizes["dataset"]
    settings = notebook_settings(resolved, **{**sizes, **chosen})
    if lacking:
        settings.update(dataset=lacking, data_root=None)
    for key in _LIST_KEYS:
        if settings.get(key) is not None:
            settings[key] = list_setting(key, settings[key])
    unknown = (
        [b for b in settings["backbones"] if b not in available_models()] if "backbones" in chosen else []
    )
    if unknown:
        raise ValueError(
            f"unknown backbone(s) {', '.join(map(repr, unknown))} in backbones; "
            "kalahash.backbones.available_models() lists them"
        )
    if "datasets" not in chosen:
        settings["datasets"] = sizes.get("datasets") if "dataset" not in chosen else None
    settings["datasets"] = [
        d if d == lacking else resolve_dataset_name(d) for d in settings["datasets"] or [settings["dataset"]]
    ]
    if study == "shots" and settings.get("mdsh_fft_shots") is None:
        settings["mdsh_fft_shots"] = settings["scaling_shots"]
    if study == "ablations" and settings.get("knowledge_seeds") is None:
        settings["knowledge_seeds"] = settings["seeds"]
    settings["reduced"] = _reductions(study, settings)
    return settings


def _ours(settings: Mapping[str, Any], bits: Sequence[int]) -> list[str]:
    """What of a run is ours in every profile, not the paper's (paper-notes: Released hyperparameters)."""
    from .worlds import world_of

    datasets = settings.get("datasets") or [settings["dataset"]]
    backbones = ", ".join(settings.get("backbones") or [settings["backbone"]])
    out = []
    if any(world_of(d) is not None for d in datasets):
        out.append(
            f"the data set ({', '.join(datasets)}) is our offline world and {backbones} "
            f"{'CLIPs' if ',' in backbones else 'a CLIP'} of ours: "
            "its numbers show the methods at work there and are not comparable with the paper's"
        )
    elif settings["backbone"] != "ViT-B-32" or settings.get("pretrained") != PAPER_WEIGHTS:
        out.append(
            f"the backbone {settings['backbone']} is not the paper's CLIP ViT-B/32 with OpenAI weights"
        )
    seeds = sorted({*settings.get("seeds", []), *settings.get("knowledge_seeds", [])})
    if seeds:
        out.append(f"seeds {_text(seeds)} (the release trains with seed 42 alone)")
    if any(b != 16 for b in bits):
        out.append(
            "codes longer than 16 bits use the released 16-bit hyperparameters (the release has no others)"
        )
    return out


def describe_run(settings: Mapping[str, Any], study: str, bits: int | Sequence[int] | None = None) -> str:
    """What a study notebook runs, printed from its settings: the data, backbone, code length, shots,
    seeds and methods; where it is smaller than the paper profile; and what of it is ours in every
    profile, not the paper's."""
    bits = list_setting("bits", bits if bits is not None else settings.get("bits", [16]))
    datasets = settings.get("datasets") or [settings["dataset"]]
    weights = settings.get("pretrained") or "its own weights"
    backbone = "the backbones below" if study == "backbones" else f"{settings['backbone']} ({weights})"
    shown = [f"{_text(datasets)} with {backbone}, {_text(bits)} bits"]
    keys = [k for k in _STUDY_KEYS[study] if k not in ("datasets", "dataset", "bits", "epochs")]
    keys += [k for k in _SHOWN_TOO.get(study, ()) if k not in keys]
    shown += [
        f"{key.replace('_', ' ')} {_text(_named(key, settings[key]))}" for key in keys if key in settings
    ]
    if study != "efficiency":  # it times a few epochs, whatever a run's length
        shown.append(f"{settings['epochs']} epochs")
    lines = ["Runs here: " + "; ".join(shown) + "."]
    reduced = settings.get("reduced", "").removeprefix("not the paper's setting: ")
    lines.append(f"Smaller than the paper profile: {reduced}." if reduced else "The paper profile's grid.")
    seeded = settings if study != "efficiency" else {**settings, "seeds": []}  # it times one seed's runs
    lines.append("Ours, not the paper's: " + "; ".join(_ours(seeded, bits)) + ".")
    return "\n".join(lines)


# Settings a study's description names besides those it compares with the paper profile.
_SHOWN_TOO = {
    "quickstart": ("methods",),
    "main": ("methods",),
    "shots": ("methods",),
    "ablations": ("ablations",),
    "plug_and_play": ("losses",),
    "embeddings": ("max_points",),
    "efficiency": ("methods", "train_shots", "rounds"),
}


# ----------------------------------------------------------------------------------------------------------
# Grids


def base_config(settings: Mapping[str, Any], **changes: Any) -> ExperimentConfig:
    """The configuration the settings describe (data set, backbone, weights, epochs), with ``changes``."""
    values = {
        "dataset": settings["dataset"],
        "data_root": settings.get("data_root"),
        "backbone": settings["backbone"],
        "pretrained": settings.get("pretrained"),
        "epochs": settings["epochs"],
        **changes,
    }
    return ExperimentConfig(**values)


def _arms(study: str, label: str, base: ExperimentConfig, seeds: Iterable[int], **changes: Any) -> list[Arm]:
    """One arm per seed; ``changes`` must be fields of ExperimentConfig (a field this version lacks,
    such as a control added later, is named in a ValueError)."""
    missing = sorted(set(changes) - {f.name for f in fields(ExperimentConfig)})
    if missing:
        raise ValueError(
            f"study {study!r} arm {label!r} needs ExperimentConfig field(s) {', '.join(missing)}, "
            "which this version of kalahash does not have"
        )
    return [Arm(study, label, replace(base, seed=int(seed), **changes)) for seed in seeds]


def _data_root(settings: Mapping[str, Any], dataset: str) -> str | None:
    if dataset == settings["dataset"]:
        return settings.get("data_root")
    return notebook_settings(settings["profile"], dataset=dataset).get("data_root")


def _label(method: str) -> str:
    from .hashing import METHOD_LABELS

    return METHOD_LABELS[method]


def _zero_shot(study: str, base: ExperimentConfig, seeds: Sequence[int]) -> list[Arm]:
    """The zero-shot codes as a reference arm: one run, since nothing in it depends on the seed (no
    sample is drawn, nothing is trained)."""
    return _arms(study, _label("zeroshot"), base, list(seeds)[:1], method="zeroshot")


def main_grid(settings: Mapping[str, Any]) -> list[Arm]:
    """The main table: data sets × bits × shots × methods × seeds, labelled by method, and the zero-shot
    codes of each cell as a reference."""
    arms = []
    for dataset in settings["datasets"]:
        root = _data_root(settings, dataset)
        for bits in list_setting("bits", settings["bits"]):
            for shots in settings["shots"]:
                base = base_config(settings, dataset=dataset, data_root=root, bits=bits, shots=shots)
                for method in settings["methods"]:
                    arms += _arms("main", _label(method), base, settings["seeds"], method=method)
                arms += _zero_shot("main", base, settings["seeds"])
    return arms


def shot_scaling_grid(settings: Mapping[str, Any], bits: int) -> list[Arm]:
    """The shot-scaling figure: each method over ``scaling_shots``, the MDSH-FFT baseline (FFT trained
    with the MDSH loss) over ``mdsh_fft_shots``, and the zero-shot codes as a reference level."""
    arms = []
    for shots in settings["scaling_shots"]:
        base = base_config(settings, bits=bits, shots=shots)
        for method in settings["methods"]:
            arms += _arms("shots", _label(method), base, settings["seeds"], method=method)
        if shots in settings["mdsh_fft_shots"]:
            arms += _arms("shots", _label("mdsh-fft"), base, settings["seeds"], method="fft", loss="mdsh")
    first = base_config(settings, bits=bits, shots=settings["scaling_shots"][0])
    return arms + _zero_shot("shots", first, settings["seeds"])


def _preset_value(config: ExperimentConfig, key: str) -> Any:
    """The value of hyperparameter ``key`` the plain method uses in this setting."""
    from .hashing.factory import HPARAMS

    hparams, _ = config.resolved_hparams()
    return hparams.get(key, HPARAMS[key])


def _hp(**values: Any) -> dict[str, Any]:
    return {"hyperparameters": values} if values else {}


def _swept(config: ExperimentConfig, key: str, values: Iterable[Any], name: Callable[[Any], str]) -> list:
    """(label, changes) for each value of hyperparameter ``key`` and the preset's (which changes nothing)."""
    preset = _preset_value(config, key)
    return [
        (name(v) + (" (preset)" if v == preset else ""), _hp() if v == preset else _hp(**{key: v}))
        for v in sorted({*values, preset})
    ]


def _ablation_variants(
    name: str, config: ExperimentConfig, settings: Mapping[str, Any]
) -> list[tuple[str, dict[str, Any]]]:
    """(label, ExperimentConfig changes) of one ablation around the paper's KALAHash in ``config``."""
    if name == "components":
        weights = {k: _preset_value(config, k) for k in KIDDO_WEIGHTS}
        return [
            ("LB", {"method": "lb"}),
            ("+CLoRA", {"method": "clora"}),
            ("+KIDDO", {"method": "lb", **_hp(kiddo=True, **weights)}),
            ("+CLoRA +KIDDO", {}),
        ]
    if name == "selection":
        return [("Top_r (paper)", {}), ("random", _hp(selection="random")), ("fixed", _hp(selection="fixed"))]
    if name == "rank":
        return _swept(config, "rank", settings.get("ranks") or RANKS, lambda v: f"r={v}")
    if name == "strength":
        return _swept(config, "strength", settings.get("strengths") or STRENGTHS, lambda v: f"α={v:g}")
    if name == "loss_weights":
        return [
            variant
            for key in KIDDO_WEIGHTS
            for variant in _swept(
                config, key, LOSS_WEIGHTS[key], lambda v, k=key: f"{_WEIGHT_NAMES[k]}={v:g}"
            )
        ]
    if name == "placement":
        return [(label, _hp(**values)) for label, values in PLACEMENTS]
    raise ValueError(f"unknown ablation {name!r}; choose one of {', '.join(ABLATIONS)}")


def ablation_grid(name: str, settings: Mapping[str, Any], bits: int = 16) -> list[Arm]:
    """The arms of one ablation (:data:`ABLATIONS`) around KALAHash, for each shot count and seed.

    ``components``: LB, +CLoRA, +KIDDO, both; ``selection``: Top_r against random and fixed classes;
    ``rank``, ``strength``, ``loss_weights`` (α, β, γ one at a time): the preset's value and
    :data:`RANKS`, :data:`STRENGTHS`, :data:`LOSS_WEIGHTS`; ``placement``: :data:`PLACEMENTS`. The
    knowledge controls run across shots: :func:`knowledge_grid`.
    """
    arms = []
    for shots in settings["shots"]:
        base = base_config(settings, bits=bits, shots=shots, method="kalahash")
        for label, changes in _ablation_variants(name, base, settings):
            arms += _arms(name, label, base, settings["seeds"], **changes)
    return arms


KNOWLEDGE_ARMS = (
    ("lb", "true"),
    ("lora", "true"),
    ("kalahash", "true"),
    ("kalahash", "permuted"),
    ("kalahash", "random"),
)


def knowledge_grid(settings: Mapping[str, Any], bits: int = 16) -> list[Arm]:
    """Is the knowledge used? At each of ``knowledge_shots`` and ``knowledge_seeds``: LB, plain LoRA,
    KALAHash with the true K, with K's rows permuted between classes and with random K (the controls
    of :func:`kalahash.hashing.control_knowledge`), and the zero-shot codes of the text alone. Labels
    are the arms' names in :func:`kalahash.verdicts.arm_names` ("KALAHash, permuted K")."""
    arms = []
    for shots in settings["knowledge_shots"]:
        base = base_config(settings, bits=bits, shots=shots)
        for method, knowledge in KNOWLEDGE_ARMS:
            label = _label(method) + ("" if knowledge == "true" else f", {knowledge} K")
            arms += _arms(
                "knowledge", label, base, settings["knowledge_seeds"], method=method, knowledge=knowledge
            )
        arms += _zero_shot("knowledge", base, settings["knowledge_seeds"])
    return arms


def plug_and_play_grid(settings: Mapping[str, Any], bits: int = 16) -> list[Arm]:
    """Each hashing loss alone (on LB and on FFT), with CLoRA, and with CLoRA + KIDDO; the zero-shot
    codes as a reference."""
    variants = (("on LB", "lb"), ("on FFT", "fft"), ("+CLoRA", "clora"), ("+CLoRA +KIDDO", "kalahash"))
    arms = []
    for shots in settings["shots"]:
        base = base_config(settings, bits=bits, shots=shots)
        for loss in settings["losses"]:
            for label, method in variants:
                arms += _arms("plug_and_play", label, base, settings["seeds"], method=method, loss=loss)
        arms += _zero_shot("plug_and_play", base, settings["seeds"])
    return arms


def _backbone_plan(settings: Mapping[str, Any]) -> dict[str, tuple[str | None, str]]:
    """backbone -> (the weights it loads, why it cannot run: "" when it can)."""
    import open_clip

    from .backbones import available_models
    from .data import DATASETS
    from .slip import DOWNLOAD_URL, SLIP_MODELS

    plan: dict[str, tuple[str | None, str]] = {}
    for backbone in settings["backbones"]:
        if settings["dataset"] not in DATASETS:
            plan[backbone] = (None, f"data set {settings['dataset']!r} is not in this version of kalahash")
        elif backbone not in available_models():
            plan[backbone] = (None, "this backbone is not in this version of kalahash")
        elif backbone in SLIP_MODELS:
            weights = settings.get("slip_weights")
            example = DOWNLOAD_URL.format(file=next(iter(SLIP_MODELS[backbone].files), ""))
            why = (
                f"SLIP's weights are no open_clip tag: pass slip_weights, a local checkpoint file ({example})"
            )
            plan[backbone] = (weights, "" if weights else why)
        else:
            tags = open_clip.list_pretrained_tags_by_model(backbone)
            plan[backbone] = (PAPER_WEIGHTS if PAPER_WEIGHTS in tags else None, "")
    return plan


def backbone_weights(settings: Mapping[str, Any]) -> dict[str, str | None]:
    """The weights each backbone of the study that can run loads: :data:`PAPER_WEIGHTS` where open_clip
    has them, ``slip_weights`` for a SLIP model, else None (a built-in's own weights)."""
    return {b: weights for b, (weights, why) in _backbone_plan(settings).items() if not why}


def skipped_backbones(settings: Mapping[str, Any]) -> dict[str, str]:
    """Why each backbone of the study that cannot run here is skipped: a data set or backbone family
    this version of kalahash lacks, or a SLIP model without ``slip_weights``."""
    return {b: why for b, (_, why) in _backbone_plan(settings).items() if why}


def backbone_grid(settings: Mapping[str, Any], bits: int = 16) -> list[Arm]:
    """The backbone-scaling figure: backbones (those that can run) × shots × methods × seeds, labelled by
    method, and each backbone's zero-shot codes; each backbone with its own weights
    (:func:`backbone_weights`), never the profile's."""
    arms = []
    for backbone, weights in backbone_weights(settings).items():
        for shots in settings["shots"]:
            base = base_config(settings, backbone=backbone, pretrained=weights, bits=bits, shots=shots)
            for method in settings["methods"]:
                arms += _arms("backbones", _label(method), base, settings["seeds"], method=method)
            arms += _zero_shot("backbones", base, settings["seeds"])
    return arms


def embedding_grid(settings: Mapping[str, Any], bits: int = 16) -> list[Arm]:
    """Figure 1's runs: each method × seed at the one shot count of the settings, labelled by method."""
    if len(settings["shots"]) != 1:
        raise ValueError(
            f"the embedding views compare methods at one shot count; shots is {settings['shots']}"
        )
    base = base_config(settings, bits=bits, shots=settings["shots"][0])
    return [
        arm
        for m in settings["methods"]
        for arm in _arms("embeddings", _label(m), base, settings["seeds"], method=m)
    ]


# ----------------------------------------------------------------------------------------------------------
# Running and tables


def run_arms(arms: Sequence[Arm], **run_options: Any) -> pd.DataFrame:
    """Run every arm (``run_options`` go to :func:`run_experiment`; stored results are reused) and
    return their rows, with the arm's ``study`` and ``variant`` (label) in front. An arm that diverged
    gets NaN mAP and the flag :data:`~kalahash.history.DIVERGED` rather than stopping the study
    (:func:`kalahash.experiments.run_or_flag`, as every list of runs)."""
    return pd.DataFrame(
        [{"study": a.study, "variant": a.label, **run_or_flag(a.config, **run_options)} for a in arms]
    )


def _rule_columns(rule: str) -> list[str]:
    return [f"mean_{rule}", f"std_{rule}", f"mAP, {rule} ties"]


def tie_table(rows: pd.DataFrame, by: Sequence[str] = ("variant",)) -> pd.DataFrame:
    """Mean ± std over seeds of mAP under both tie rules, per group, in the rows' order: columns
    ``by``, ``seeds``, ``mean_<rule>``, ``std_<rule>`` and ``mAP, <rule> ties`` (as text), and
    ``flags`` where :func:`summarize` gives them."""
    if rows.empty:
        raise ValueError("rows is empty: run the study first")
    by = list(by)
    table = None
    for rule in TIES:
        value = f"map_ties_{rule}"
        part = summarize(rows, by=by, value=value)
        part = part.rename(
            columns=dict(zip(("mean", "std", f"{value} (mean ± std)"), _rule_columns(rule), strict=True))
        )
        table = part if table is None else table.merge(part[[*by, *_rule_columns(rule)]], on=by, sort=False)
    columns = [*by, "seeds", *(c for rule in TIES for c in _rule_columns(rule))]
    return table[columns + (["flags"] if "flags" in table else [])]


def main_table(rows: pd.DataFrame) -> pd.DataFrame:
    """The main table, tidy: one line per data set × bits × shots × method (the arms' labels: LB, ...,
    zero-shot codes), both tie rules."""
    named = rows.assign(method=rows["variant"]) if "variant" in rows else rows
    return tie_table(named, by=("dataset", "bits", "shots", "method"))


def main_table_wide(table: pd.DataFrame, ties: str = "index") -> pd.DataFrame:
    """The paper's layout of :func:`main_table`: a line per shots × method, a column per data set ×
    bits, cells "mean ± std" under tie rule ``ties``; flat columns, so it saves as CSV and markdown."""
    column = table["dataset"] + " · " + table["bits"].astype(str) + " bits"
    return _wide(table, ["shots", "method"], column, _tie_column(ties))


def plug_and_play_table(rows: pd.DataFrame, ties: str = "index") -> pd.DataFrame:
    """A line per shots × loss, a column per variant: "mean ± std" mAP under tie rule ``ties`` (the
    zero-shot reference, which has no loss, left out)."""
    table = tie_table(rows[rows["method"] != "zeroshot"], by=("shots", "loss", "variant"))
    return _wide(table, ["shots", "loss"], table["variant"], _tie_column(ties))


def knowledge_table(rows: pd.DataFrame, ties: str = "index") -> pd.DataFrame:
    """The knowledge study in one table (the README quotes it): a line per shot count, a column per arm
    ("mean ± std (n)" under tie rule ``ties``, ⚑ where a run raised a flag), and the mean distinct sign(W)
    anchors of KALAHash and its controls."""
    table = tie_table(rows, by=("shots", "variant"))
    wide = _wide(table, ["shots"], table["variant"], _tie_column(ties))
    kiddo = rows[rows["method"] == "kalahash"]
    anchors = kiddo.groupby(["shots", "variant"], sort=False)["anchors_distinct"].mean().unstack("variant")
    for arm in _first_seen(kiddo["variant"]):
        wide[f"anchors, {arm}"] = wide["shots"].map(anchors[arm]).round(1).to_numpy()
    return wide


def _tie_column(ties: str) -> str:
    if ties not in TIES:
        raise ValueError(f"ties must be one of {', '.join(TIES)}, got {ties!r}")
    return f"mAP, {ties} ties"


def _first_seen(values: Iterable[Any]) -> list[Any]:
    return list(dict.fromkeys(values))


def _wide(table: pd.DataFrame, index: list[str], column: pd.Series, values: str) -> pd.DataFrame:
    """``values`` pivoted to a line per ``index`` and a column per ``column``, both in first-seen order."""
    wide = table.assign(_column=column).pivot(index=index, columns="_column", values=values)
    lines = pd.MultiIndex.from_tuples(_first_seen(zip(*(table[i] for i in index), strict=True)), names=index)
    wide = wide.reindex(index=lines, columns=_first_seen(column))
    wide.columns.name = None
    return wide.reset_index()


def backbone_table(rows: pd.DataFrame) -> pd.DataFrame:
    """:func:`tie_table` per backbone × shots × method, with each backbone's parameter count (``params``,
    the whole CLIP model as open_clip counts it), as :func:`kalahash.plots.backbone_scaling` plots it."""
    from .backbones import parameter_count

    named = rows.assign(method=rows["variant"]) if "variant" in rows else rows
    table = tie_table(named, by=("backbone", "shots", "method"))
    counts = {b: parameter_count(b) for b in table["backbone"].unique()}
    table.insert(1, "params", table["backbone"].map(counts))
    return table
