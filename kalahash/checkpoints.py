"""Checkpoint files: only a hasher's trained parts, plus what identifies the backbone they belong to."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .fileio import atomic_write

CHECKPOINT_FORMAT = "kalahash-checkpoint"
CHECKPOINT_VERSION = 1
EXPORT_FORMAT = "kalahash-export"


def save_checkpoint(path: str | os.PathLike, hasher: nn.Module, **extra: Any) -> Path:
    """Save only the trained parts plus what identifies the backbone (atomic)."""
    backbone = hasher.backbone
    payload = {
        "format": CHECKPOINT_FORMAT,
        "version": CHECKPOINT_VERSION,
        "method": hasher.method,
        "bits": hasher.bits,
        "classnames": list(hasher.classnames),
        "hparams": dict(hasher.hparams),
        "backbone": {
            "name": backbone.name,
            "pretrained": backbone.pretrained,
            "fingerprint": backbone.fingerprint,
        },
        "trained_state": {k: v.detach().cpu() for k, v in hasher.trained_state().items()},
        **extra,
    }
    path = Path(path)
    atomic_write(path, lambda tmp: torch.save(payload, tmp))
    return path


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint`, with a clear error for anything else."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {str(path)!r} does not exist")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:  # re-raised with what to do; the cause stays chained
        raise ValueError(
            f"checkpoint {str(path)!r} is corrupt or truncated ({type(err).__name__}); delete it and train again"
        ) from err
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{str(path)!r} is not a kalahash checkpoint (no '{CHECKPOINT_FORMAT}' header)")
    if payload.get("version", 0) > CHECKPOINT_VERSION:
        raise ValueError(
            f"{str(path)!r} was written by a newer kalahash (format {payload['version']}); upgrade"
        )
    return payload


def check_backbone_matches(payload: dict[str, Any], backbone: Any) -> None:
    """Refuse trained parts meant for other backbone weights: they would load and score silently wrong."""
    want = payload["backbone"]
    if (want["name"], want["fingerprint"]) != (backbone.name, backbone.fingerprint):
        raise ValueError(
            f"checkpoint was trained on backbone {want['name']!r} (pretrained {want['pretrained']!r}, weights "
            f"fingerprint {want['fingerprint']}), but the given backbone is {backbone.name!r} (pretrained "
            f"{backbone.pretrained!r}, fingerprint {backbone.fingerprint}). Load the same backbone weights."
        )


def restore_hasher(payload: dict[str, Any], backbone: Any) -> nn.Module:
    """Rebuild a hasher from a checkpoint on a matching backbone."""
    from .hashing import build_hasher

    check_backbone_matches(payload, backbone)
    hasher = build_hasher(
        payload["method"], backbone, payload["classnames"], payload["bits"], **payload["hparams"]
    )
    hasher.load_trained_state(payload["trained_state"])
    return hasher


def hasher_from_checkpoint(
    payload: dict[str, Any], pretrained: str | None = None, device: str | torch.device | None = None
) -> nn.Module:
    """A checkpoint's hasher on its own backbone: loaded with ``pretrained`` or the run's weights (CPU
    when ``device`` is None) after seeding torch with the run's seed, as ``run_experiment`` did, so that
    a random-init backbone comes back with the same weights (:func:`restore_hasher` checks them)."""
    from .backbones import load_backbone

    experiment = payload.get("experiment", {})
    torch.manual_seed(experiment.get("seed", 0))
    name = payload["backbone"]["name"]
    backbone = load_backbone(name, pretrained or experiment.get("pretrained"), device=device)
    return restore_hasher(payload, backbone)


def data_identity(name: str | None, classnames: Sequence[str]) -> dict[str, Any]:
    """What a checkpoint records of its training data (key ``"data"``): name, class names, label width."""
    return {"dataset": name, "classnames": list(classnames), "label_width": len(classnames)}


def _describe(identity: Mapping[str, Any]) -> str:
    names = list(identity["classnames"])
    shown = ", ".join(names[:6]) + (", ..." if len(names) > 6 else "")
    name = repr(identity["dataset"]) if identity.get("dataset") else "a data set"
    return f"{name} ({len(names)} classes: {shown}; labels {identity['label_width']} wide)"


def check_same_data(
    payload: dict[str, Any], given: Mapping[str, Any], path: str | os.PathLike, use: str
) -> None:
    """Refuse data whose classes or label width are not those the checkpoint was trained on: its codes
    would be scored, or its training continued, against labels they do not mean. Checkpoints older than
    the ``"data"`` record are checked by their class names (and their run's data set name, if any)."""
    stored = payload.get("data") or data_identity(
        payload.get("experiment", {}).get("dataset"), payload["classnames"]
    )
    if (list(stored["classnames"]), stored["label_width"]) == (
        list(given["classnames"]),
        given["label_width"],
    ):
        return
    where = f" (dataset={stored['dataset']!r} and its data_root)" if stored.get("dataset") else ""
    raise ValueError(
        f"checkpoint {str(path)!r} was trained on {_describe(stored)}, but the data given is "
        f"{_describe(given)}: {use} it on the data it was trained on{where}"
    )


def check_same_run(payload: dict[str, Any], experiment: Mapping[str, Any], path: str | os.PathLike) -> None:
    """Refuse to resume a checkpoint under another configuration (shots, method, data, seed ...): the
    run would silently continue as something else. A checkpoint written outside a run is not checked."""
    stored = payload.get("experiment")
    if stored is None:
        return
    changed = sorted(k for k in {*stored, *experiment} if stored.get(k) != experiment.get(k))
    if changed:
        diffs = "; ".join(f"{k}: {stored.get(k)!r} there, {experiment.get(k)!r} now" for k in changed)
        raise ValueError(
            f"checkpoint {str(path)!r} is of another configuration ({diffs}): resume with its settings, "
            "or start a new run (another checkpoint file, or without resume)"
        )


def export_model(hasher: nn.Module, path: str | os.PathLike) -> Path:
    """Write ``hasher`` as a CLIP weights file with its hash head (atomic), for use without kalahash's
    checkpoints: ``"state_dict"`` holds the whole CLIP model in open_clip's layout with plain LoRA folded
    into the image tower (loadable by open_clip and by ``load_backbone(name, pretrained=path)``);
    ``"kalahash"`` holds the backbone name, classes, bits and the head, which :func:`load_exported`
    puts back on top. CLoRA cannot be folded: ValueError, nothing written."""
    from .towers import open_clip_state_dict

    merged = hasher.merged()
    backbone = hasher.backbone
    whole = backbone.model.state_dict()
    state = {k: v.detach().cpu().clone() for k, v in whole.items() if not k.startswith("visual.")}
    state.update({f"visual.{k}": v for k, v in open_clip_state_dict(merged.visual).items()})
    meta = {
        "format": EXPORT_FORMAT,
        "version": 1,
        "backbone": backbone.name,
        "base_pretrained": backbone.pretrained,
        "method": hasher.method,
        "bits": hasher.bits,
        "classnames": list(hasher.classnames),
        "loss": hasher.hparams["loss"],
        "batch_norm": hasher.hparams["batch_norm"],
        "head": {k: v.detach().cpu().clone() for k, v in merged.head.state_dict().items()},
    }
    path = Path(path)
    atomic_write(path, lambda tmp: torch.save({"state_dict": state, "kalahash": meta}, tmp))
    return path


def load_exported(path: str | os.PathLike, device: str | torch.device | None = None) -> nn.Module:
    """The hasher of a file written by :func:`export_model`: its CLIP weights as a frozen backbone and
    its hash head on top (method ``"lb"``, in eval mode); it gives the codes of the exported model."""
    from .backbones import load_backbone
    from .hashing import build_hasher

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"exported model {str(path)!r} does not exist")
    try:  # weights only, as open_clip reads it: a kalahash checkpoint or other pickle fails here
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # any unreadable file gets the message below
        payload = None
    meta = payload.get("kalahash") if isinstance(payload, dict) else None
    if not isinstance(meta, dict) or meta.get("format") != EXPORT_FORMAT:
        raise ValueError(
            f"{str(path)!r} is not a model written by `kalahash export` (no '{EXPORT_FORMAT}' record)"
        )
    backbone = load_backbone(meta["backbone"], path, device=device)
    hasher = build_hasher(
        "lb", backbone, meta["classnames"], meta["bits"], loss=meta["loss"], batch_norm=meta["batch_norm"]
    )
    hasher.head.load_state_dict(meta["head"])
    return hasher.eval()
