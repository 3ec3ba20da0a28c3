"""The frozen-prefix cache: what the frozen blocks make of each image, computed once, kept on disk.

Adapters sit in the last block(s) only, so the blocks before them are frozen and their output depends
on the image alone. :class:`PrefixCache` computes it once per image and stores it on disk; training
epochs and every evaluation of a sweep then run only the trainable tail of the model.

What is stored (format 2):

- an adapted tower (adapters from block ``upto`` on): the tokens after ``blocks[:upto]``, (N, L, width),
  at the precision they were computed in: float32 on the CPU; under CUDA autocast bf16 (or fp16 where
  bf16 is missing), since open_clip's towers carry their token stream in the autocast dtype. The tail
  reads them in that dtype, so a cached run computes what an uncached one does.
- a frozen tower (``upto`` = the number of blocks: LB, zero-shot): the pooled, projected features only,
  (N, embed): all such a hasher reads.

numpy has no bfloat16: bf16 entries are stored as their raw 16 bits, so ``uint16`` in a cache file
means bfloat16. :func:`feature_batches` and :func:`cached_features` are the readers.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from .backbones import state_fingerprint
from .data import ImageList, file_stamp
from .fileio import atomic_path
from .loader import LoaderOptions, image_batches

# 1: float32 tokens for every hasher. 2: tokens at their computed precision; pooled features for a
# frozen tower. Part of every key, so an entry of another format is never read as this one.
CACHE_FORMAT = 2
_NUMPY_DTYPES = {torch.float32: np.float32, torch.float16: np.float16, torch.bfloat16: np.uint16}


def compute_dtype(device: torch.device | str) -> torch.dtype:
    """The dtype the tower computes in on ``device``: bf16 (fp16 without bf16) under CUDA autocast,
    float32 elsewhere."""
    if torch.device(device).type != "cuda":
        return torch.float32
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def device_autocast(device: torch.device | str) -> Any:
    """Mixed precision on CUDA (bf16 where supported, else fp16); plain float32 elsewhere."""
    if torch.device(device).type != "cuda":
        return nullcontext()
    return torch.autocast("cuda", dtype=compute_dtype(device))


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


def stores_pooled(hasher: nn.Module, upto: int) -> bool:
    """Whether the cache keeps pooled features (a frozen tower: ``upto`` is past the last block)."""
    return upto == hasher.num_blocks


def read_entry(path: str | os.PathLike) -> torch.Tensor:
    """A cache file as a CPU tensor in its stored dtype, memory-mapped (uint16 on disk is bfloat16)."""
    array = np.load(path, mmap_mode="c")
    tensor = torch.from_numpy(array)
    return tensor.view(torch.bfloat16) if array.dtype == np.uint16 else tensor


class PrefixCache:
    """Disk cache of the frozen blocks' output, keyed by everything that determines it.

    The key covers the cache format, the backbone name, a fingerprint of the frozen weights as they are
    now, the preprocess transform and where it runs (PIL or the device), the images (ids, labels,
    content), the block index and the precision it is computed in, so a stale entry cannot be read back
    for different inputs. ``batch_size`` is the batch of the frozen blocks' pass.
    """

    def __init__(self, root: str | os.PathLike = "cache/prefix", batch_size: int = 256) -> None:
        self.root = Path(root)
        self.batch_size = batch_size
        self.hits = 0
        self.misses = 0

    def _frozen_weights(self, hasher: nn.Module, upto: int) -> str:
        if stores_pooled(hasher, upto):  # the pooling and projection too: every weight of the tower
            return state_fingerprint(hasher.visual)
        return state_fingerprint(hasher.backbone.tower.prefix_state(upto))

    def key(
        self,
        hasher: nn.Module,
        images: ImageList,
        upto: int,
        loader: LoaderOptions | None = None,
        weights: str | None = None,
    ) -> str:
        """The entry's name; ``weights`` is the frozen weights' fingerprint when already computed."""
        backbone = hasher.backbone
        loader = loader or LoaderOptions()
        parts = {
            "format": CACHE_FORMAT,
            "stored": "pooled" if stores_pooled(hasher, upto) else "tokens",
            "backbone": backbone.name,
            "frozen_weights": weights or self._frozen_weights(hasher, upto),
            "preprocess": repr(backbone.preprocess),
            "preprocess_on": "device" if loader.device_preprocess else "pil",
            "images": images_fingerprint(images),
            "upto": upto,
            "precision": str(compute_dtype(backbone.device)),
        }
        return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:24]

    @torch.no_grad()
    def load(
        self,
        hasher: nn.Module,
        lists: Sequence[ImageList],
        upto: int,
        *,
        loader: LoaderOptions | None = None,
        progress: bool = True,
    ) -> list[torch.Tensor]:
        """The stored output for each list (memory-mapped CPU tensors): tokens after ``blocks[:upto]``,
        or the pooled features when ``upto`` is the number of blocks. Missing entries are computed in
        one pass over their lists (one worker pool) and written whole or not at all."""
        weights = self._frozen_weights(hasher, upto)
        paths = [self.root / f"{self.key(hasher, images, upto, loader, weights)}.npy" for images in lists]
        missing = [i for i, path in enumerate(paths) if len(lists[i]) and not path.exists()]
        self.hits += sum(len(images) > 0 for images in lists) - len(missing)
        self.misses += len(missing)
        if missing:
            todo = [lists[i] for i in missing], [paths[i] for i in missing]
            self._compute(hasher, *todo, upto, loader, progress)
        return [
            read_entry(path) if len(images) else torch.zeros(0)
            for images, path in zip(lists, paths, strict=True)
        ]

    def tokens(
        self,
        hasher: nn.Module,
        images: ImageList,
        upto: int,
        progress: bool = True,
        loader: LoaderOptions | None = None,
    ) -> torch.Tensor:
        """:meth:`load` for one list."""
        return self.load(hasher, [images], upto, loader=loader, progress=progress)[0]

    def _compute(
        self,
        hasher: nn.Module,
        lists: list[ImageList],
        paths: list[Path],
        upto: int,
        loader: LoaderOptions | None,
        progress: bool,
    ) -> None:
        device = hasher.backbone.device
        was_training = hasher.training
        hasher.eval()
        pooled = stores_pooled(hasher, upto)
        what = "frozen tower (pooled features)" if pooled else f"frozen blocks 0-{upto - 1}"
        batches = image_batches(
            lists,
            hasher.backbone.preprocess,
            device,
            batch_size=self.batch_size,
            options=loader,
            progress=progress,
            desc=f"caching {what}",
        )
        try:
            with ExitStack() as stack:
                tmps = [stack.enter_context(atomic_path(path)) for path in paths]
                outs: list[np.ndarray | None] = [None] * len(lists)
                for i, lo, batch in batches:
                    with device_autocast(device):
                        out = hasher.features(batch) if pooled else hasher.prefix_tokens(batch, upto)
                    array = out.cpu()
                    array = (array.view(torch.uint16) if out.dtype == torch.bfloat16 else array).numpy()
                    if outs[i] is None:
                        shape = (len(lists[i]), *array.shape[1:])
                        outs[i] = np.lib.format.open_memmap(
                            tmps[i], mode="w+", dtype=_NUMPY_DTYPES[out.dtype], shape=shape
                        )
                    outs[i][lo : lo + len(array)] = array
                for out in outs:
                    out.flush()
                del outs
        finally:
            hasher.train(was_training)


def uses_cache(hasher: nn.Module, cache: PrefixCache | None) -> bool:
    """Whether ``hasher`` can run from ``cache``'s entries: a cache is given and some prefix is frozen."""
    return cache is not None and hasher.trainable_from > 0


def cached_features(hasher: nn.Module, stored: torch.Tensor, start: int) -> torch.Tensor:
    """Raw image features from a batch of a cache entry (on the device): the pooled features as they
    are, or the tokens through ``blocks[start:]``, pooling and projection."""
    return stored if stores_pooled(hasher, start) else hasher.features_from_tokens(stored, start)


def features_of(
    hasher: nn.Module,
    lists: Sequence[ImageList],
    cache: PrefixCache | None,
    batch_size: int,
    progress: bool,
    desc: str = "encoding",
    loader: LoaderOptions | None = None,
) -> Iterator[tuple[int, torch.Tensor]]:
    """(list number, raw image features) batch by batch for every list in order (no grad context of
    its own): from the cache when the hasher allows it, else from pixels through one loader for all
    ``lists``; what codes and embeddings are both made from."""
    device = hasher.backbone.device
    if uses_cache(hasher, cache):
        start = hasher.trainable_from
        stored = cache.load(hasher, lists, start, loader=loader, progress=progress)
        bar = tqdm(total=sum(len(s) for s in stored), desc=desc, disable=not progress, unit="img")
        for i, entry in enumerate(stored):
            for lo in range(0, len(entry), batch_size):
                batch = entry[lo : lo + batch_size].to(device)
                with device_autocast(device):
                    yield i, cached_features(hasher, batch, start)
                bar.update(len(batch))
        bar.close()
        return
    batches = image_batches(
        lists,
        hasher.backbone.preprocess,
        device,
        batch_size=batch_size,
        options=loader,
        progress=progress,
        desc=desc,
    )
    for i, _, batch in batches:
        with device_autocast(device):
            yield i, hasher.features(batch)


def feature_batches(
    hasher: nn.Module,
    images: ImageList,
    cache: PrefixCache | None,
    batch_size: int,
    progress: bool,
    desc: str = "encoding",
    loader: LoaderOptions | None = None,
) -> Iterator[torch.Tensor]:
    """:func:`features_of` for one list: its raw image features batch by batch."""
    for _, features in features_of(hasher, [images], cache, batch_size, progress, desc, loader):
        yield features
