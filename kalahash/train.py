"""One training loop and one evaluator for every method.

:func:`fit` is a short loop over named steps: :func:`check_training_input`, :func:`make_optimizer`,
:func:`restore_training_state` (resume), :func:`batch_source` (through the frozen-prefix cache when the
hasher allows it), then per epoch :func:`train_epoch` (with :func:`check_finite_loss` on every step),
:func:`finish_epoch` (KIDDO's B-step and the history row, with the epoch's diagnostics from
:mod:`kalahash.hashing.diagnostics`) and :func:`save_training_state`. A hasher with nothing to train
(method ``zeroshot``) is not trained at all.
The token cache (:mod:`kalahash.cache`), checkpoint files (:mod:`kalahash.checkpoints`) and the image
loader (:mod:`kalahash.loader`) live in their own modules: import their names from there.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from .cache import PrefixCache, cached_features, device_autocast, features_of, uses_cache
from .checkpoints import (
    check_backbone_matches,
    check_same_data,
    check_same_run,
    data_identity,
    load_checkpoint,
    save_checkpoint,
)
from .data import ImageList, RetrievalData
from .hashing import sign
from .hashing.diagnostics import EpochTally, epoch_diagnostics
from .loader import LoaderOptions, pixel_batch
from .metrics import TIES, mean_average_precision, precision_at_k

__all__ = [
    "TRAINING_LOOP",
    "BatchSource",
    "TrainConfig",
    "TrainResult",
    "batch_source",
    "check_finite_loss",
    "check_training_input",
    "encode",
    "encode_lists",
    "evaluate",
    "finish_epoch",
    "fit",
    "make_optimizer",
    "restore_training_state",
    "save_training_state",
    "train_epoch",
]


# The version of the training loop a result row was made by (``training_loop`` in the row).
# 2: KIDDO's B-step uses the W of the epoch's last forward pass, as released; 1 (rows without the column):
# it used W recomputed after the epoch's last optimizer step. Only runs with KIDDO differ between them.
TRAINING_LOOP = 2


@dataclass
class TrainConfig:
    """Training settings; the defaults are the released ones (notes: Released hyperparameters)."""

    epochs: int = 100
    batch_size: int = 8
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 1e-5
    seed: int = 42
    drop_last: bool = True

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if not self.lr > 0:
            raise ValueError(f"lr must be positive, got {self.lr!r}")


@dataclass
class TrainResult:
    history: list[dict[str, float]] = field(default_factory=list)
    seconds: float = 0.0
    resumed_from_epoch: int = 0


@dataclass
class BatchSource:
    """Where training batches come from: every image's labels on the device, the model input for some
    indices (cached prefix tokens or preprocessed pixels) and the forward from that input to u."""

    labels: torch.Tensor
    inputs: Callable[[torch.Tensor], torch.Tensor]
    forward: Callable[[torch.Tensor], torch.Tensor]


# ----------------------------------------------------------------------------------------------------------
# The steps of training


def check_training_input(hasher: nn.Module, train_set: ImageList, config: TrainConfig) -> None:
    """Refuse a training set that cannot fill one batch, or whose label columns are not the hasher's classes."""
    if len(train_set) < config.batch_size and config.drop_last:
        raise ValueError(
            f"the training set has {len(train_set)} images, fewer than batch_size={config.batch_size} with "
            "drop_last: lower batch_size or use more shots"
        )
    if train_set.num_classes != hasher.num_classes:
        raise ValueError(
            f"training labels have {train_set.num_classes} columns, the hasher {hasher.num_classes} classes"
        )


def make_optimizer(hasher: nn.Module, config: TrainConfig) -> tuple[torch.optim.SGD, torch.amp.GradScaler]:
    """SGD over the trainable parameters (in the hasher's groups), and a gradient scaler that is on only
    under fp16 autocast."""
    optimizer = torch.optim.SGD(
        hasher.optimizer_groups(),
        lr=config.lr,
        momentum=config.momentum,
        weight_decay=config.weight_decay,
    )
    device = hasher.backbone.device
    use_bf16_or_fp32 = device.type != "cuda" or torch.cuda.is_bf16_supported()
    return optimizer, torch.amp.GradScaler("cuda", enabled=not use_bf16_or_fp32)


def restore_training_state(
    path: str | os.PathLike,
    hasher: nn.Module,
    optimizer: torch.optim.Optimizer,
    config: TrainConfig,
    expected: Mapping[str, Any] | None = None,
) -> TrainResult:
    """Resume: load the trained parts and optimizer of a checkpoint written by :func:`save_training_state`
    with the same data (classes), settings, backbone and ``expected`` ``"data"``/``"experiment"``
    records; the result carries its history, seconds and epochs done. The checkpoint of a finished
    run (all epochs done, no optimizer state) comes back as it is, with nothing left to train."""
    payload = load_checkpoint(path)
    expected = expected or {}
    check_same_data(payload, expected.get("data") or data_identity(None, hasher.classnames), path, "resume")
    if "experiment" in expected:
        check_same_run(payload, expected["experiment"], path)
    check_backbone_matches(payload, hasher.backbone)
    if payload.get("train_config") != asdict(config):
        raise ValueError(
            f"checkpoint {str(path)!r} was written with training settings {payload.get('train_config')}, "
            f"not {asdict(config)}; resume with the same settings or start a new run"
        )
    finished = payload.get("epoch", 0) >= config.epochs
    if "optimizer" not in payload and not finished:
        raise ValueError(
            f"checkpoint {str(path)!r} holds no optimizer state (it was not written by fit), so training "
            "cannot continue from it: start a new run"
        )
    hasher.load_trained_state(payload["trained_state"])
    if not finished:
        optimizer.load_state_dict(payload["optimizer"])
    return TrainResult(
        history=list(payload["history"]),
        seconds=float(payload["seconds"]),
        resumed_from_epoch=payload["epoch"],
    )


def save_training_state(
    path: str | os.PathLike,
    hasher: nn.Module,
    optimizer: torch.optim.Optimizer,
    result: TrainResult,
    config: TrainConfig,
    epochs_done: int,
    **extra: Any,
) -> Path:
    """Checkpoint after an epoch with everything :func:`restore_training_state` needs (atomic); ``extra``
    entries (a run's ``"data"`` and ``"experiment"``) are stored too."""
    return save_checkpoint(
        path,
        hasher,
        epoch=epochs_done,
        optimizer=optimizer.state_dict(),
        history=result.history,
        seconds=result.seconds,
        train_config=asdict(config),
        **extra,
    )


def batch_source(
    hasher: nn.Module,
    train_set: ImageList,
    cache: PrefixCache | None,
    progress: bool = True,
    loader: LoaderOptions | None = None,
) -> BatchSource:
    """Batches through the cache's entries (frozen-prefix tokens, or a frozen tower's pooled features)
    when the hasher allows it, else from pixels (PIL, or on the device with ``loader.device_preprocess``)."""
    device = hasher.backbone.device
    labels = torch.from_numpy(train_set.labels.astype(np.float32)).to(device)
    if uses_cache(hasher, cache):
        start_block = hasher.trainable_from
        stored = cache.tokens(hasher, train_set, start_block, progress=progress, loader=loader)

        def from_cache(batch: torch.Tensor) -> torch.Tensor:
            return hasher.head(cached_features(hasher, batch, start_block))

        return BatchSource(labels, lambda idx: stored[idx].to(device), from_cache)
    on_device = loader is not None and loader.device_preprocess

    def pixels(idx: torch.Tensor) -> torch.Tensor:
        return pixel_batch(train_set, idx.tolist(), hasher.backbone.preprocess, device, on_device)

    return BatchSource(labels, pixels, hasher)


def _batches(n: int, batch_size: int, drop_last: bool, seed: int, epoch: int) -> Iterator[torch.Tensor]:
    """Shuffled index batches; the order depends only on (seed, epoch), so a resumed run repeats it."""
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch))
    stop = n - n % batch_size if drop_last else n
    for start in range(0, stop, batch_size):
        yield order[start : start + batch_size]


def check_finite_loss(loss: torch.Tensor, epoch: int, step: int, method: str) -> None:
    """Stop at the first non-finite loss, before it reaches the weights; ``epoch`` and ``step`` count from 1."""
    if not torch.isfinite(loss):
        raise FloatingPointError(
            f"the loss became {loss.item()} at epoch {epoch}, step {step} ({method}); "
            "lower the learning rate or check the inputs"
        )


def train_epoch(
    hasher: nn.Module,
    source: BatchSource,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    config: TrainConfig,
    epoch: int,
    tally: EpochTally | None = None,
) -> dict[str, float]:
    """One SGD pass over epoch ``epoch``'s (0-based) shuffled batches; the loss and its parts averaged
    over its steps. ``tally`` sees each batch's u and labels (bit balance, CLoRA routing)."""
    device = hasher.backbone.device
    sums: dict[str, float] = {}
    steps = 0
    batches = _batches(len(source.labels), config.batch_size, config.drop_last, config.seed, epoch)
    for step, idx in enumerate(batches):
        idx_dev = idx.to(device)
        batch = source.inputs(idx)
        optimizer.zero_grad(set_to_none=True)
        with device_autocast(device):
            u = source.forward(batch)
        if tally is not None:
            tally.add(u, source.labels[idx_dev])
        loss, parts = hasher.loss_on_batch(u.float(), source.labels[idx_dev], idx_dev)
        check_finite_loss(loss, epoch + 1, step + 1, hasher.method)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        for name, value in {"loss": loss.item(), **parts}.items():
            sums[name] = sums.get(name, 0.0) + float(value)
        steps += 1
    return {k: v / max(steps, 1) for k, v in sums.items()}


def finish_epoch(
    hasher: nn.Module,
    result: TrainResult,
    epoch: int,
    means: dict[str, float],
    tally: EpochTally | None = None,
) -> dict[str, float]:
    """After epoch ``epoch``'s (0-based) last batch: the hasher's end-of-epoch work (KIDDO's B-step, the
    epoch counter), then its history row, appended to ``result`` and returned. With the epoch's
    ``tally`` the row also carries the diagnostics (:mod:`kalahash.hashing.diagnostics`)."""
    hasher.end_epoch()
    row = {"epoch": epoch + 1, **means}
    if tally is not None:
        row.update(tally.summary(), **epoch_diagnostics(hasher))
    result.history.append(row)
    return row


@contextmanager
def _train_mode(hasher: nn.Module) -> Iterator[None]:
    was_training = hasher.training
    hasher.train()
    try:
        yield
    finally:
        hasher.train(was_training)


def fit(
    hasher: nn.Module,
    train_set: ImageList,
    config: TrainConfig | None = None,
    *,
    cache: PrefixCache | None = None,
    checkpoint: str | os.PathLike | None = None,
    resume: bool = False,
    progress: bool = True,
    checkpoint_extra: Mapping[str, Any] | None = None,
    loader: LoaderOptions | None = None,
    **overrides: Any,
) -> TrainResult:
    """Train ``hasher`` on ``train_set`` (the few-shot images) with SGD; KIDDO's B-step runs once per epoch.

    ``config`` defaults to the released settings; keyword ``overrides`` replace single fields
    (``fit(h, data, epochs=5)``). With ``cache`` the frozen blocks run once per image. ``checkpoint`` is
    written atomically after every epoch, with the ``checkpoint_extra`` entries; ``resume=True``
    continues from it (refused for other data, settings or ``checkpoint_extra`` records) and reaches the
    same result as an uninterrupted run; a finished run's checkpoint trains no further
    (``resumed_from_epoch == epochs``). A non-finite loss stops training with the epoch and step that
    produced it. Each history row holds the epoch's loss terms and diagnostics. A hasher without
    trainable parameters (``zeroshot``) returns at once: no epochs, no history. ``loader``
    (:class:`~kalahash.loader.LoaderOptions`) sets how images reach the device.
    """
    if resume and checkpoint is None:
        raise ValueError("resume=True needs checkpoint=, the file to resume from")
    config = TrainConfig(**{**asdict(config or TrainConfig()), **overrides})
    if not hasher.trainable_parameters():
        return TrainResult()
    check_training_input(hasher, train_set, config)
    torch.set_flush_denormal(True)
    torch.manual_seed(config.seed)  # the order of every draw below is part of the result: keep it
    hasher.begin_training(train_set.labels)
    optimizer, scaler = make_optimizer(hasher, config)
    ckpt_path = Path(checkpoint) if checkpoint is not None else None
    if resume and ckpt_path is not None and ckpt_path.exists():
        result = restore_training_state(ckpt_path, hasher, optimizer, config, checkpoint_extra)
    else:
        result = TrainResult()
    source = batch_source(hasher, train_set, cache, progress, loader)
    extra = dict(checkpoint_extra or {})
    began = time.perf_counter() - result.seconds
    first = result.resumed_from_epoch
    epochs = tqdm(
        range(first, config.epochs),
        desc=f"training {hasher.method}",
        disable=not progress,
        initial=first,
        total=config.epochs,
    )
    with _train_mode(hasher):
        for epoch in epochs:
            tally = EpochTally(hasher)
            means = train_epoch(hasher, source, optimizer, scaler, config, epoch, tally)
            row = finish_epoch(hasher, result, epoch, means, tally)
            epochs.set_postfix(loss=f"{row.get('loss', math.nan):.4f}")
            result.seconds = time.perf_counter() - began
            if ckpt_path is not None:
                save_training_state(ckpt_path, hasher, optimizer, result, config, epoch + 1, **extra)
    return result


# ----------------------------------------------------------------------------------------------------------
# Encoding and evaluation


@torch.no_grad()
def encode(
    hasher: nn.Module,
    images: ImageList,
    *,
    cache: PrefixCache | None = None,
    batch_size: int = 256,
    progress: bool = True,
    desc: str = "encoding",
    loader: LoaderOptions | None = None,
) -> np.ndarray:
    """±1 codes (N, bits) as int8 for every image, through the cache when the hasher allows it."""
    return encode_lists(
        hasher, [images], cache=cache, batch_size=batch_size, progress=progress, desc=desc, loader=loader
    )[0]


@torch.no_grad()
def encode_lists(
    hasher: nn.Module,
    lists: Sequence[ImageList],
    *,
    cache: PrefixCache | None = None,
    batch_size: int = 256,
    progress: bool = True,
    desc: str = "encoding",
    loader: LoaderOptions | None = None,
) -> list[np.ndarray]:
    """:func:`encode` for several lists in one pass (one worker pool, one cache fill): their codes."""
    device = hasher.backbone.device
    was_training = hasher.training
    hasher.eval()
    chunks: list[list[np.ndarray]] = [[] for _ in lists]
    try:
        for i, features in features_of(hasher, lists, cache, batch_size, progress, desc, loader):
            with device_autocast(device):
                chunks[i].append(_codes(hasher.head(features)))
    finally:
        hasher.train(was_training)
    return [np.concatenate(c) if c else np.zeros((0, hasher.bits), np.int8) for c in chunks]


def _codes(u: torch.Tensor) -> np.ndarray:
    return sign(u.float()).to(torch.int8).cpu().numpy()


def evaluate(
    hasher: nn.Module,
    data: RetrievalData,
    *,
    topk: int | None = None,
    cache: PrefixCache | None = None,
    ties: str = "index",
    progress: bool = True,
    precision_k: int = 100,
    loader: LoaderOptions | None = None,
) -> dict[str, Any]:
    """mAP@K (protocol cut-off unless ``topk`` is given) and P@k of query against database codes.

    ``map`` follows ``ties``; ``map_ties_index`` and ``map_ties_average`` give both rules, since 16-bit
    codes tie massively and the two can differ. Query and database are encoded in one pass (one worker
    pool); ``encode_seconds`` and ``map_seconds`` time the two phases.
    """
    if ties not in TIES:
        raise ValueError(f"ties must be {' or '.join(map(repr, TIES))}, got {ties!r}")
    topk = data.topk if topk is None else topk
    began = time.perf_counter()
    lists = [data.query, data.database]
    query, database = encode_lists(
        hasher, lists, cache=cache, progress=progress, desc="encoding query + database", loader=loader
    )
    encoded = time.perf_counter()
    args = (query, data.query.labels, database, data.database.labels)
    by_rule = {rule: mean_average_precision(*args, topk=topk, ties=rule) for rule in TIES}
    p_at_k = precision_at_k(*args, k=min(precision_k, len(database)), ties=ties)
    return {
        "map": by_rule[ties],
        "map_ties_index": by_rule["index"],
        "map_ties_average": by_rule["average"],
        "map_topk": topk if topk is not None else len(database),
        "ties": ties,
        f"p_at_{precision_k}": p_at_k,
        "query_codes": query,
        "database_codes": database,
        "encode_seconds": encoded - began,
        "map_seconds": time.perf_counter() - encoded,
    }
