"""The frozen-prefix token cache: the output of the blocks before the adapters, once per image, on disk.

Adapters sit in the last block(s) only, so the blocks before them are frozen and their output depends
on the image alone. :class:`PrefixCache` computes those tokens once per image and stores them on disk;
training epochs and every evaluation of a sweep then run only the trainable tail of the model.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from .backbones import state_fingerprint
from .data import ImageList, file_stamp
from .fileio import atomic_write


def device_autocast(device: torch.device) -> Any:
    """Mixed precision on CUDA (bf16 where supported, else fp16); plain float32 elsewhere."""
    if device.type != "cuda":
        return nullcontext()
    dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.autocast("cuda", dtype=dtype)


def images_fingerprint(images: ImageList) -> str:
    """Identify an image list by ids, labels and content (pixels in memory, :func:`~kalahash.data.file_stamp`
    on disk: size and mtime, or the error of a missing file)."""
    digest = hashlib.sha256()
    digest.update("\n".join(images.ids).encode())
    digest.update(images.labels.tobytes())
    if isinstance(images.images, np.ndarray):
        digest.update(np.ascontiguousarray(images.images).tobytes())
    else:
        for path in images.images:
            digest.update(file_stamp(path).encode())
    return digest.hexdigest()[:16]


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
        parts = {
            "backbone": backbone.name,
            "prefix_weights": state_fingerprint(backbone.tower.prefix_state(upto)),
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
        view = images.with_transform(hasher.backbone.preprocess)
        loader = DataLoader(view, batch_size=self.batch_size, num_workers=self.num_workers)

        def write(tmp: str) -> None:
            out = None
            start = 0
            for batch, _, _ in tqdm(loader, desc=f"caching frozen blocks 0-{upto - 1}", disable=not progress):
                with device_autocast(device):
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


def uses_cache(hasher: nn.Module, cache: PrefixCache | None) -> bool:
    """Whether ``hasher`` can run from ``cache``'s tokens: a cache is given and some prefix is frozen."""
    return cache is not None and hasher.trainable_from > 0


def feature_batches(
    hasher: nn.Module,
    images: ImageList,
    cache: PrefixCache | None,
    batch_size: int,
    progress: bool,
    desc: str = "encoding",
) -> Iterator[torch.Tensor]:
    """Raw image features batch by batch (no grad context of its own), from the cached frozen-prefix
    tokens when the hasher allows it, else from pixels; what codes and embeddings are both made from."""
    device = hasher.backbone.device
    if uses_cache(hasher, cache):
        start = hasher.trainable_from
        tokens = cache.tokens(hasher, images, start, progress=progress)
        for lo in tqdm(range(0, len(images), batch_size), desc=desc, disable=not progress):
            with device_autocast(device):
                yield hasher.features_from_tokens(tokens[lo : lo + batch_size].to(device), start)
    else:
        loader = DataLoader(images.with_transform(hasher.backbone.preprocess), batch_size=batch_size)
        for batch, _, _ in tqdm(loader, desc=desc, disable=not progress):
            with device_autocast(device):
                yield hasher.features(batch.to(device))
