"""Which runs each study makes: a study is a list of :class:`Arm` s, a label (what the table calls it)
and the :class:`ExperimentConfig` it runs, one arm per seed (:func:`main_grid`, :func:`shot_scaling_grid`,
:func:`ablation_grid`, :func:`knowledge_grid`, :func:`plug_and_play_grid`, :func:`backbone_grid`,
:func:`embedding_grid`), and :func:`run_arms`, which runs them as every list of runs is run. An arm that
changes nothing of the paper's setting overrides nothing, so it is the same run, with the same
``config_id``, as the plain method in every other notebook."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, fields, replace
from typing import Any

import pandas as pd

from ..experiments import (
    ExperimentConfig,
    launched_rows,
    list_setting,
    notebook_settings,
    run_or_flag,
)
from .settings import ABLATIONS, PAPER_WEIGHTS

KIDDO_WEIGHTS = ("kiddo_alpha", "kiddo_beta", "kiddo_gamma")
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
    from ..hashing import METHOD_LABELS

    return METHOD_LABELS[method]


def _zero_shot(study: str, base: ExperimentConfig, seeds: Sequence[int]) -> list[Arm]:
    """The zero-shot codes as a reference arm: one run, since nothing in it depends on the seed (no
    sample is drawn, nothing is trained)."""
    return _arms(study, _label("zeroshot"), base, list(seeds)[:1], method="zeroshot")


def _methods_and_reference(study: str, base: ExperimentConfig, settings: Mapping[str, Any]) -> list[Arm]:
    """Each of the settings' methods over its seeds, labelled by method, then the zero-shot codes."""
    arms = []
    for method in settings["methods"]:
        arms += _arms(study, _label(method), base, settings["seeds"], method=method)
    return arms + _zero_shot(study, base, settings["seeds"])


def main_grid(settings: Mapping[str, Any]) -> list[Arm]:
    """The main table: data sets × bits × shots × methods × seeds, labelled by method, and the zero-shot
    codes of each cell as a reference."""
    arms = []
    for dataset in settings["datasets"]:
        root = _data_root(settings, dataset)
        for bits in list_setting("bits", settings["bits"]):
            for shots in settings["shots"]:
                base = base_config(settings, dataset=dataset, data_root=root, bits=bits, shots=shots)
                arms += _methods_and_reference("main", base, settings)
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
    from ..hashing.factory import HPARAMS

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

    from ..backbones import available_models
    from ..data import DATASETS
    from ..slip import DOWNLOAD_URL, SLIP_MODELS

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
            arms += _methods_and_reference("backbones", base, settings)
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


def run_arms(arms: Sequence[Arm], launcher: Any = None, **run_options: Any) -> pd.DataFrame:
    """Run every arm (``run_options`` go to :func:`run_experiment`; stored results are reused) and
    return their rows, with the arm's ``study`` and ``variant`` (label) in front. An arm that diverged
    gets NaN mAP and the flag :data:`~kalahash.history.DIVERGED` rather than stopping the study
    (:func:`kalahash.experiments.run_or_flag`, as every list of runs). With ``launcher`` ("local",
    "slurm" or a :class:`~kalahash.experiments.Launcher`) the missing runs go out as jobs
    (:func:`~kalahash.experiments.launched_rows`) and the rows come back once they have all ended."""
    if launcher is None:
        return pd.DataFrame(
            [{"study": a.study, "variant": a.label, **run_or_flag(a.config, **run_options)} for a in arms]
        )
    rows = launched_rows([a.config for a in arms], launcher, **run_options)
    return pd.DataFrame([{"study": a.study, "variant": a.label, **rows[a.config.config_id]} for a in arms])
