"""Checkpoints from Python: the twins of ``kalahash eval`` (:func:`evaluate_checkpoint`) and ``kalahash
export`` (:func:`export_checkpoint`)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from ..checkpoints import (
    check_same_data,
    data_identity,
    export_model,
    hasher_from_checkpoint,
    load_checkpoint,
)
from ..loader import LoaderOptions
from ..machine import resolve_device
from ..train import evaluate
from .config import LIST_OPTIONS

if TYPE_CHECKING:
    pass


class UnnamedDatasetError(ValueError):
    """A checkpoint to evaluate names no data set (it was not written by a run) and none was given."""


@dataclass(frozen=True)
class ExportedModel:
    """What :func:`export_checkpoint` wrote: the file (open_clip weights + hash head) and the run's method."""

    path: Path
    method: str


def evaluate_checkpoint(
    path: str | os.PathLike,
    *,
    dataset: str | None = None,
    data_root: str | os.PathLike | None = None,
    pretrained: str | None = None,
    topk: int | None = None,
    ties: str = "index",
    device: str | torch.device | None = None,
    progress: bool = True,
    workers: int | None = None,
    device_preprocess: bool = False,
) -> dict[str, Any]:
    """Score a checkpoint written by ``run_experiment(..., checkpoint=...)`` (CLI: ``kalahash eval``).

    ``dataset``, ``data_root`` and ``pretrained`` default to the checkpoint's own; the query/database
    split is the run's. Returns :func:`kalahash.train.evaluate`'s scores (``map``, ``map_topk``,
    ``p_at_100``, the codes ...). A checkpoint that names no data set needs ``dataset``
    (:class:`UnnamedDatasetError`, a ValueError, otherwise); data with other classes than the
    checkpoint's is refused (ValueError naming both). ``workers`` and ``device_preprocess`` set how
    images reach the device (:class:`~kalahash.loader.LoaderOptions`).
    """
    from ..data import load_dataset

    payload = load_checkpoint(path)
    experiment = payload.get("experiment", {})
    dataset = dataset or experiment.get("dataset")
    if dataset is None:
        raise UnnamedDatasetError(f"checkpoint {str(path)!r} does not name its data set: pass dataset")
    own = dataset == experiment.get("dataset")
    options = {n: experiment[n] for n in LIST_OPTIONS if own and experiment.get(n) is not None}
    root = data_root if data_root is not None or not own else experiment.get("data_root")
    device = resolve_device(device)
    try:
        data = load_dataset(dataset, root, seed=experiment.get("split_seed", 0), **options)
    except FileNotFoundError as err:
        if data_root is not None or root is None:
            raise
        raise FileNotFoundError(
            f"{err}\n(data root {root!r} comes from checkpoint {str(path)!r}: if the data is elsewhere now, "
            "pass its folder as data_root= (CLI: --data-root))"
        ) from err
    check_same_data(payload, data_identity(data.name, data.classnames), path, "score")
    hasher = hasher_from_checkpoint(payload, pretrained, device)
    loader = LoaderOptions(workers, device_preprocess)
    return evaluate(hasher, data, topk=topk, ties=ties, progress=progress, loader=loader)


def export_checkpoint(
    path: str | os.PathLike, out: str | os.PathLike, *, pretrained: str | None = None
) -> ExportedModel:
    """Fold a checkpoint's plain-LoRA adapters into the weights and write the CLIP model in open_clip's
    layout plus the hash head to ``out`` (atomic; CLI: ``kalahash export``): ``load_backbone(name,
    pretrained=out)`` (CLI: ``--pretrained out``) loads the adapted backbone, ``load_exported(out)``
    the backbone and head (the run's codes). CLoRA cannot be folded: ValueError, nothing written."""
    payload = load_checkpoint(path)
    out = export_model(hasher_from_checkpoint(payload, pretrained, None), out)
    return ExportedModel(out, payload["method"])
