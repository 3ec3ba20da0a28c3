"""One training loop and one evaluator for every method, with a frozen-prefix token cache.

Adapters sit in the last block(s) only, so the blocks before them are frozen and their output depends
on the image alone. :class:`PrefixCache` computes those tokens once per image and stores them on disk;
training epochs and every evaluation of a sweep then run only the trainable tail of the model.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from .backbones import state_fingerprint
from .data import ImageList, RetrievalData
from .fileio import atomic_write
from .hashing import sign
from .metrics import mean_average_precision, precision_at_k

CHECKPOINT_FORMAT = "kalahash-checkpoint"
CHECKPOINT_VERSION = 1


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


def images_fingerprint(images: ImageList) -> str:
    """Identify an image list by ids, labels and content (pixels in memory, size and mtime on disk)."""
    digest = hashlib.sha256()
    digest.update("\n".join(images.ids).encode())
    digest.update(images.labels.tobytes())
    if isinstance(images.images, np.ndarray):
        digest.update(np.ascontiguousarray(images.images).tobytes())
    else:
        for path in images.images:
            stat = path.stat()
            digest.update(f"{stat.st_size}:{stat.st_mtime_ns}".encode())
    return digest.hexdigest()[:16]


def _autocast(device: torch.device) -> Any:
    if device.type != "cuda":
        return nullcontext()
    dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.autocast("cuda", dtype=dtype)


def _loader(images: ImageList, batch_size: int, num_workers: int, **kwargs: Any) -> DataLoader:
    return DataLoader(images, batch_size=batch_size, num_workers=num_workers, **kwargs)


class PrefixCache:
    """Disk cache of the frozen blocks' output tokens, keyed by everything that determines them.

    The key covers the backbone name, a fingerprint of the prefix weights as they are now, the
    preprocess transform, the images (ids, labels, content) and the block index, so a stale entry
    cannot be read back for different inputs.
    """

    def __init__(self, root: str | os.PathLike = "cache/prefix", batch_size: int = 256, num_workers: int = 0):
        self.root = Path(root)
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.hits = 0
        self.misses = 0

    def key(self, hasher: nn.Module, images: ImageList, upto: int) -> str:
        backbone = hasher.backbone
        visual = backbone.visual
        prefix = nn.ModuleList([visual.conv1, visual.ln_pre, *backbone.blocks[:upto]]).state_dict()
        prefix.update(
            class_embedding=visual.class_embedding, positional_embedding=visual.positional_embedding
        )
        parts = {
            "backbone": backbone.name,
            "prefix_weights": state_fingerprint(prefix),
            "preprocess": repr(backbone.preprocess),
            "images": images_fingerprint(images),
            "upto": upto,
        }
        return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:24]

    @torch.no_grad()
    def tokens(self, hasher: nn.Module, images: ImageList, upto: int, progress: bool = True) -> torch.Tensor:
        """Tokens after ``blocks[:upto]`` for every image, (N, L, width) float32 on the CPU (memory-mapped)."""
        path = self.root / f"{self.key(hasher, images, upto)}.npy"
        if path.exists():
            self.hits += 1
            return torch.from_numpy(np.load(path, mmap_mode="c"))
        self.misses += 1
        device = hasher.backbone.device
        was_training = hasher.training
        hasher.eval()
        loader = _loader(images.with_transform(hasher.backbone.preprocess), self.batch_size, self.num_workers)

        def write(tmp: str) -> None:
            out = None
            start = 0
            for batch, _, _ in tqdm(loader, desc=f"caching frozen blocks 0-{upto - 1}", disable=not progress):
                with _autocast(device):
                    tok = hasher.prefix_tokens(batch.to(device), upto).float().cpu().numpy()
                if out is None:
                    out = np.lib.format.open_memmap(
                        tmp, mode="w+", dtype=np.float32, shape=(len(images), *tok.shape[1:])
                    )
                out[start : start + len(tok)] = tok
                start += len(tok)
            out.flush()
            del out

        try:
            atomic_write(path, write)
        finally:
            hasher.train(was_training)
        return torch.from_numpy(np.load(path, mmap_mode="c"))


def _use_cache(hasher: nn.Module, cache: PrefixCache | None) -> bool:
    return cache is not None and hasher.trainable_from > 0


# ----------------------------------------------------------------------------------------------------------
# Checkpoints


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


# ----------------------------------------------------------------------------------------------------------
# Training


def _batches(n: int, batch_size: int, drop_last: bool, seed: int, epoch: int) -> Iterator[torch.Tensor]:
    """Shuffled index batches; the order depends only on (seed, epoch), so a resumed run repeats it."""
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch))
    stop = n - n % batch_size if drop_last else n
    for start in range(0, stop, batch_size):
        yield order[start : start + batch_size]


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
    **overrides: Any,
) -> TrainResult:
    """Train ``hasher`` on ``train_set`` (the few-shot images) with SGD; KIDDO's B-step runs once per epoch.

    ``config`` defaults to the released settings; keyword ``overrides`` replace single fields
    (``fit(h, data, epochs=5)``). With ``cache`` the frozen blocks run once per image. ``checkpoint`` is
    written atomically after every epoch; ``resume=True`` continues from it and reaches the same result
    as an uninterrupted run. A non-finite loss stops training with the epoch and step that produced it.
    """
    config = TrainConfig(**{**asdict(config or TrainConfig()), **overrides})
    if len(train_set) < config.batch_size and config.drop_last:
        raise ValueError(
            f"the training set has {len(train_set)} images, fewer than batch_size={config.batch_size} with "
            "drop_last: lower batch_size or use more shots"
        )
    if train_set.num_classes != hasher.num_classes:
        raise ValueError(
            f"training labels have {train_set.num_classes} columns, the hasher {hasher.num_classes} classes"
        )
    torch.set_flush_denormal(True)
    device = hasher.backbone.device
    torch.manual_seed(config.seed)
    hasher.begin_training(train_set.labels)
    optimizer = torch.optim.SGD(
        hasher.trainable_parameters(),
        lr=config.lr,
        momentum=config.momentum,
        weight_decay=config.weight_decay,
    )
    use_bf16_or_fp32 = device.type != "cuda" or torch.cuda.is_bf16_supported()
    scaler = torch.amp.GradScaler("cuda", enabled=not use_bf16_or_fp32)
    result = TrainResult()
    start_epoch = 0
    ckpt_path = Path(checkpoint) if checkpoint is not None else None
    if resume and ckpt_path is not None and ckpt_path.exists():
        payload = load_checkpoint(ckpt_path)
        check_backbone_matches(payload, hasher.backbone)
        if payload.get("train_config") != asdict(config):
            raise ValueError(
                f"checkpoint {str(ckpt_path)!r} was written with training settings {payload.get('train_config')}, "
                f"not {asdict(config)}; resume with the same settings or start a new run"
            )
        hasher.load_trained_state(payload["trained_state"])
        optimizer.load_state_dict(payload["optimizer"])
        start_epoch = payload["epoch"]
        result.history = list(payload["history"])
        result.seconds = float(payload["seconds"])
        result.resumed_from_epoch = start_epoch

    labels = torch.from_numpy(train_set.labels.astype(np.float32)).to(device)
    if _use_cache(hasher, cache):
        start_block = hasher.trainable_from
        tokens = cache.tokens(hasher, train_set, start_block, progress=progress)

        def fetch(idx: torch.Tensor) -> torch.Tensor:
            return tokens[idx].to(device)

        def forward(batch: torch.Tensor) -> torch.Tensor:
            return hasher.forward_from_tokens(batch, start_block)
    else:
        view = train_set.with_transform(hasher.backbone.preprocess)

        def fetch(idx: torch.Tensor) -> torch.Tensor:
            return torch.stack([view[i][0] for i in idx.tolist()]).to(device)

        forward = hasher

    began = time.perf_counter() - result.seconds
    bar = tqdm(
        range(start_epoch, config.epochs),
        desc=f"training {hasher.method}",
        disable=not progress,
        initial=start_epoch,
        total=config.epochs,
    )
    with _train_mode(hasher):
        for epoch in bar:
            sums: dict[str, float] = {}
            steps = 0
            for step, idx in enumerate(
                _batches(len(train_set), config.batch_size, config.drop_last, config.seed, epoch)
            ):
                idx_dev = idx.to(device)
                batch = fetch(idx)
                optimizer.zero_grad(set_to_none=True)
                with _autocast(device):
                    u = forward(batch)
                loss, parts = hasher.loss_on_batch(u.float(), labels[idx_dev], idx_dev)
                if not torch.isfinite(loss):
                    raise FloatingPointError(
                        f"the loss became {loss.item()} at epoch {epoch + 1}, step {step + 1} ({hasher.method}); "
                        "lower the learning rate or check the inputs"
                    )
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()
                for name, value in {"loss": loss.item(), **parts}.items():
                    sums[name] = sums.get(name, 0.0) + float(value)
                steps += 1
            hasher.end_epoch()
            row = {"epoch": epoch + 1, **{k: v / max(steps, 1) for k, v in sums.items()}}
            result.history.append(row)
            bar.set_postfix(loss=f"{row.get('loss', math.nan):.4f}")
            result.seconds = time.perf_counter() - began
            if ckpt_path is not None:
                save_checkpoint(
                    ckpt_path,
                    hasher,
                    epoch=epoch + 1,
                    optimizer=optimizer.state_dict(),
                    history=result.history,
                    seconds=result.seconds,
                    train_config=asdict(config),
                )
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
) -> np.ndarray:
    """±1 codes (N, bits) as int8 for every image, through the cache when the hasher allows it."""
    device = hasher.backbone.device
    was_training = hasher.training
    hasher.eval()
    chunks = []
    try:
        if _use_cache(hasher, cache):
            start = hasher.trainable_from
            tokens = cache.tokens(hasher, images, start, progress=progress)
            for lo in tqdm(range(0, len(images), batch_size), desc=desc, disable=not progress):
                with _autocast(device):
                    u = hasher.forward_from_tokens(tokens[lo : lo + batch_size].to(device), start)
                chunks.append(_codes(u))
        else:
            loader = _loader(images.with_transform(hasher.backbone.preprocess), batch_size, 0)
            for batch, _, _ in tqdm(loader, desc=desc, disable=not progress):
                with _autocast(device):
                    u = hasher(batch.to(device))
                chunks.append(_codes(u))
    finally:
        hasher.train(was_training)
    return np.concatenate(chunks) if chunks else np.zeros((0, hasher.bits), np.int8)


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
) -> dict[str, Any]:
    """mAP@K (protocol cut-off unless ``topk`` is given) and P@k of query against database codes.

    ``map`` follows ``ties``; ``map_ties_index`` and ``map_ties_average`` give both rules, since 16-bit
    codes tie massively and the two can differ.
    """
    if ties not in ("index", "average"):
        raise ValueError(f"ties must be 'index' or 'average', got {ties!r}")
    topk = data.topk if topk is None else topk
    query = encode(hasher, data.query, cache=cache, progress=progress, desc="encoding query")
    database = encode(hasher, data.database, cache=cache, progress=progress, desc="encoding database")
    args = (query, data.query.labels, database, data.database.labels)
    by_rule = {rule: mean_average_precision(*args, topk=topk, ties=rule) for rule in ("index", "average")}
    return {
        "map": by_rule[ties],
        "map_ties_index": by_rule["index"],
        "map_ties_average": by_rule["average"],
        "map_topk": topk if topk is not None else len(database),
        "ties": ties,
        f"p_at_{precision_k}": precision_at_k(*args, k=min(precision_k, len(database)), ties=ties),
        "query_codes": query,
        "database_codes": database,
    }
