"""Checkpoint files: only a hasher's trained parts, plus what identifies the backbone they belong to."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .fileio import atomic_write

CHECKPOINT_FORMAT = "kalahash-checkpoint"
CHECKPOINT_VERSION = 1


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
