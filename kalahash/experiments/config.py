"""What one run is: :class:`ExperimentConfig` (data set, shots, bits, method, backbone, seed ...), the
hyperparameters it resolves to, and its ``config_id``, the key of its row in the results table."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from ..hashing.methods import METHODS as _METHOD_REGISTRY
from ..hashing.methods import check_knowledge_control
from ..metrics import TIES
from ..worlds import WORLDS

# The names of the methods a run may take: those of the registry (kalahash.hashing.methods).
METHODS = tuple(_METHOD_REGISTRY)
# The default world of a run, the demo, the CLI and the notebooks' smoke profile: the offline world built
# after CIFAR-10, and the backbone its spec names (the 12-block CLIP pre-trained on its captions; README:
# The offline world).
DEFAULT_DATASET = "objects10"
DEFAULT_BACKBONE = WORLDS[DEFAULT_DATASET].default_backbone
# Where runs keep the frozen-prefix token cache (kalahash.cache), relative to the working directory.
DEFAULT_CACHE = Path("cache/prefix")
# Where the demo and the notebooks write figures and tables unless told otherwise: beside the results
# table, a folder git ignores, so that running them never looks like a change to the repository (the
# committed figures/ are refreshed on purpose: `kalahash reproduce --update-figures`).
DEFAULT_FIGURES = Path("results/figures")
# Which preset hyperparameters each method uses; the rest of a preset does not apply to it.
_METHOD_KEYS = {
    "lb": (),
    "fft": (),
    "lora": ("rank", "strength"),
    "clora": ("rank", "strength"),
    "kalahash": ("rank", "strength", "kiddo_alpha", "kiddo_beta", "kiddo_gamma"),
    "zeroshot": (),
}
# The list files of dataset "listfile"; unset (None), they are left out of config_id.
LIST_OPTIONS = ("train_list", "query_list", "database_list", "classnames")
# Fields a run sets as fields only, never inside ``hyperparameters``: one run, one config_id. (Rows of
# older versions that held them in hyperparameters still read: their config_id is that of what they record.)
HPARAM_FIELDS = ("loss", "knowledge")
# Fields added after results tables existed: at their default they are left out of config_id, so the
# ids of stored rows stay valid.
_LATER_FIELDS: dict[str, Any] = {"knowledge": "true", **dict.fromkeys(LIST_OPTIONS)}


def check_code_length(bits: Any) -> int:
    """``bits`` if it is a code length a run may choose: a positive multiple of 8, since codes are
    stored and indexed as bytes (``kalahash index``: faiss binary indexes take whole bytes)."""
    if isinstance(bits, bool) or not isinstance(bits, int) or bits <= 0 or bits % 8:
        raise ValueError(
            f"bits must be a positive multiple of 8 (codes are stored and indexed as whole bytes; the paper "
            f"uses 16, 32 and 64), got {bits!r}"
        )
    return bits


def config_hash(row: Mapping[str, Any]) -> str:
    """The config_id of a config's row: everything that determines its result, less later fields at
    their default."""
    kept = {k: v for k, v in row.items() if not (k in _LATER_FIELDS and v == _LATER_FIELDS[k])}
    return hashlib.sha256(json.dumps(kept, sort_keys=True, default=str).encode()).hexdigest()[:12]


def _refuse_hparam_fields(hyperparameters: Mapping[str, Any]) -> None:
    """A field of the run given inside ``hyperparameters`` would make a second config_id for one run."""
    for key in HPARAM_FIELDS:
        if key in hyperparameters:
            value = hyperparameters[key]
            raise ValueError(
                f"hyperparameters hold {key!r}, which is a field of the run: pass {key}={value!r} (CLI: --{key} "
                f"{value}) instead (one run, one config_id)"
            )


@dataclass(frozen=True)
class ExperimentConfig:
    """One run: data set and shots, code length, method and loss, backbone, seed and training length.

    ``seed`` draws the few-shot sample and seeds training; the query/database split of a data set is
    fixed (``split_seed``) so every method and seed is scored on the same images. ``hyperparameters``
    override the preset of the setting (``kalahash.presets``); ``loss`` and ``knowledge`` are fields, and
    refused there (:data:`HPARAM_FIELDS`). Dataset ``listfile`` (your own lists)
    needs ``train_list``, ``query_list``, ``database_list`` and ``classnames`` (a file, one name a
    line), relative to ``data_root`` or absolute. ``knowledge`` is the control of K for the methods that
    read it (``"true"``, ``"permuted"``, ``"random"``; :func:`kalahash.hashing.control_knowledge`),
    seeded with ``seed``. Method ``zeroshot`` trains nothing (``epochs`` is ignored).
    """

    dataset: str = DEFAULT_DATASET
    data_root: str | None = None
    shots: int = 1
    bits: int = 16
    method: str = "kalahash"
    loss: str = "dpsh"
    backbone: str = DEFAULT_BACKBONE
    pretrained: str | None = None
    seed: int = 42
    epochs: int = 100
    batch_size: int = 8
    lr: float = 0.01
    hyperparameters: Mapping[str, Any] = field(default_factory=dict)
    topk: int | None = None
    ties: str = "index"
    split_seed: int = 0
    train_list: str | None = None
    query_list: str | None = None
    database_list: str | None = None
    classnames: str | None = None
    knowledge: str = "true"

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"unknown method {self.method!r}; choose one of {', '.join(METHODS)}")
        for name in ("shots", "bits", "epochs", "batch_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        check_code_length(self.bits)
        from ..data import resolve_dataset_name
        from ..hashing import LOSSES

        # canonical name (aliases such as nus-wide accepted); unknown names fail here, before anything runs
        object.__setattr__(self, "dataset", resolve_dataset_name(self.dataset))
        if self.loss not in LOSSES:
            raise ValueError(f"unknown loss {self.loss!r}; choose one of {', '.join(sorted(LOSSES))}")
        if self.ties not in TIES:
            raise ValueError(f"ties must be {' or '.join(map(repr, TIES))}, got {self.ties!r}")
        object.__setattr__(self, "hyperparameters", dict(self.hyperparameters))
        _refuse_hparam_fields(self.hyperparameters)
        given = [name for name in LIST_OPTIONS if getattr(self, name) is not None]
        if self.dataset == "listfile" and len(given) < len(LIST_OPTIONS):
            missing = ", ".join(
                f"{n}= (CLI: --{n.replace('_', '-')})" for n in LIST_OPTIONS if n not in given
            )
            raise ValueError(f"dataset 'listfile' needs {missing}")
        if self.dataset != "listfile" and given:
            raise ValueError(
                f"{', '.join(given)}: options of dataset 'listfile' only, not of {self.dataset!r}"
            )
        check_knowledge_control(self.method, self.hyperparameters, self.knowledge)

    def data_options(self) -> dict[str, str]:
        """The loader options of the data set (the list files of ``listfile``)."""
        return {name: getattr(self, name) for name in LIST_OPTIONS if getattr(self, name) is not None}

    def with_absolute_paths(self) -> ExperimentConfig:
        """This run with its data root, weights file and (without a data root) list files made absolute,
        as checkpoints record it: they are used from other working directories."""

        def absolute(path: str | None) -> str | None:
            return None if path is None else str(Path(path).expanduser().resolve())

        lists = {} if self.data_root is not None else {n: absolute(getattr(self, n)) for n in LIST_OPTIONS}
        weights = self.pretrained is not None and Path(self.pretrained).expanduser().is_file()
        pretrained = absolute(self.pretrained) if weights else self.pretrained
        return replace(self, data_root=absolute(self.data_root), pretrained=pretrained, **lists)

    def resolved_hparams(self, num_classes: int | None = None) -> tuple[dict[str, Any], str]:
        """The hyperparameters this run uses and where they come from (preset source or 'given').

        A data set without a released setting gets the release's defaults; with ``num_classes`` their
        CLoRA rank is capped at the number of classes (CLoRA selects rank classes per image).
        """
        from ..presets import LORA_BASELINE, setting_hparams

        keys = _METHOD_KEYS[self.method]
        if self.method == "lora":
            base, source = dict(LORA_BASELINE), "release default config"
        elif keys:
            p = setting_hparams(self.dataset, self.shots, self.bits, (self.backbone, self.pretrained))
            base, source = {k: p.hparams[k] for k in keys}, p.source
            if p.defaults and num_classes is not None and base["rank"] > num_classes:
                base["rank"], source = num_classes, f"{source}; rank capped at the {num_classes} classes"
        else:
            base, source = {}, "none needed"
        if self.method != "kalahash":
            base["loss"] = self.loss
        elif self.loss != "dpsh":
            base["loss"] = self.loss  # KIDDO with another similarity loss: plug-and-play
        if self.knowledge != "true":
            base.update(knowledge=self.knowledge, knowledge_seed=self.seed)
        base.update(self.hyperparameters)
        if self.hyperparameters:
            source += "; overridden: " + ", ".join(sorted(self.hyperparameters))
        if "anchor_momentum" in self.hyperparameters:
            source += "; ours, not the paper's: anchor_momentum"
        return base, source

    def to_row(self) -> dict[str, Any]:
        row = asdict(self)
        row["hyperparameters"] = json.dumps(self.hyperparameters, sort_keys=True)
        return row

    @property
    def config_id(self) -> str:
        """Identifies a run by everything that determines its result."""
        return config_hash(self.to_row())
