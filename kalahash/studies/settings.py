"""The studies' settings: each study's size per profile (:data:`STUDY_SIZES`), :func:`study_settings`
(a notebook's settings: the profile, the study's size, the parameters given) and :func:`describe_run`
(what a study notebook runs, where it is smaller than the paper profile, what of it is ours)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from ..experiments import (
    DEFAULT_DATASET,
    PROFILES,
    list_setting,
    notebook_settings,
)
from ..worlds import WORLDS

MAIN_DATASETS = ("cifar10", "nuswide", "coco")
MAIN_BITS = (16, 32, 64)
PLUG_LOSSES = ("dpsh", "hashnet", "csq", "orthohash", "mdsh")
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


def _text(values: Any) -> str:
    return ", ".join(map(str, values)) if isinstance(values, list | tuple) else str(values)


def _named(key: str, values: Any) -> Any:
    """Method ids as tables name them (LB, KALAHash, ...); other settings as they are."""
    from ..hashing import METHOD_LABELS

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
    from ..data import DATASETS

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
    from ..backbones import available_models
    from ..data import resolve_dataset_name

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
    from ..worlds import world_of

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
