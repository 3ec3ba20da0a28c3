"""Feeding images to the device: worker processes, pinned memory, one pool per pass, or preprocessing on
the device itself.

:func:`image_batches` turns one or several :class:`~kalahash.data.ImageList` into model-input batches on
the device, in order, ``batch_size`` images a batch, a batch never spanning two lists (so every list is
batched exactly as a loader over it alone would batch it). Two paths, chosen by :class:`LoaderOptions`:

- the PIL path (default): the backbone's own preprocess (PIL resize, crop, to-tensor, normalise) image by
  image, in ``workers`` processes (one pool for all the lists of a pass: query and database start their
  workers once), into pinned memory on CUDA. ``workers=None`` is :func:`default_workers`: the spare cores
  on CUDA, none on the CPU, where the main process is the compute and workers would take its cores.
- the device path (``device_preprocess=True``), for in-memory uint8 images of one size (CIFAR-10's
  32×32): the raw batch goes to the device and :class:`DevicePreprocess` resizes, crops and normalises it
  there. Its resize is PIL's own fixed-point resampling reproduced step by step (PIL's filter weights
  rounded to 22-bit integers, the horizontal then the vertical pass, each rounded to uint8 as PIL does;
  the integer sums are exact in float64), so its pixels equal the PIL path's: tolerance 0 (bit-identical)
  on the CPU, asserted in tests/test_loader.py; on CUDA benchmarks/bench_encode.py measures it.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms as T
from tqdm import tqdm

from .data import ImageList

MAX_DEFAULT_WORKERS = 8
# PIL's fixed-point resampling (libImaging/Resample.c): weights and sums carry 22 fractional bits
_PRECISION_BITS = 22
# PIL's filters and their support, as Resample.c defines them
_SUPPORT = {"bicubic": 2.0, "bilinear": 1.0}


def available_cpus() -> int:
    """The cores this process may run on (its affinity where the OS tells, else the machine's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def default_workers(device: str | torch.device) -> int:
    """Worker processes for the PIL path: the spare cores, at most 8, on CUDA; none on the CPU (the
    main process computes there, and workers would compete with torch's threads for the same cores)."""
    if torch.device(device).type != "cuda":
        return 0
    return max(0, min(MAX_DEFAULT_WORKERS, available_cpus() - 1))


@dataclass(frozen=True)
class LoaderOptions:
    """How images reach the device; neither option changes a result on the CPU.

    ``workers``: preprocessing worker processes of the PIL path (None: :func:`default_workers`).
    ``device_preprocess``: resize, crop and normalise in-memory uint8 images on the device
    (:class:`DevicePreprocess`) instead of with PIL.
    """

    workers: int | None = None
    device_preprocess: bool = False

    def __post_init__(self) -> None:
        if self.workers is not None and (
            isinstance(self.workers, bool) or not isinstance(self.workers, int) or self.workers < 0
        ):
            raise ValueError(f"workers must be None (automatic) or an integer >= 0, got {self.workers!r}")
        if not isinstance(self.device_preprocess, bool):
            raise ValueError(f"device_preprocess must be True or False, got {self.device_preprocess!r}")

    def workers_for(self, device: str | torch.device) -> int:
        return default_workers(device) if self.workers is None else self.workers


# ----------------------------------------------------------------------------------------------------------
# Preprocessing on the device


def _filter(kind: str, x: float) -> float:
    """PIL's bicubic (a = -0.5) and bilinear filters, term for term as Resample.c writes them."""
    x = -x if x < 0.0 else x
    if kind == "bilinear":
        return 1.0 - x if x < 1.0 else 0.0
    a = -0.5
    if x < 1.0:
        return ((a + 2.0) * x - (a + 3.0)) * x * x + 1
    if x < 2.0:
        return (((x - 5) * x + 8) * x - 4) * a
    return 0.0


@functools.lru_cache(maxsize=32)
def pil_weights(in_size: int, out_size: int, kind: str) -> np.ndarray:
    """PIL's resampling of ``in_size`` pixels to ``out_size`` as an (out, in) matrix of its 22-bit
    fixed-point integer weights (float64; Resample.c ``precompute_coeffs`` then
    ``normalize_coeffs_8bpc``, in their order of operations)."""
    scale = float(in_size) / out_size
    filterscale = max(scale, 1.0)
    support = _SUPPORT[kind] * filterscale
    weights = np.zeros((out_size, in_size), dtype=np.float64)
    for xx in range(out_size):
        center = (xx + 0.5) * scale
        ss = 1.0 / filterscale
        xmin = max(int(center - support + 0.5), 0)
        xmax = min(int(center + support + 0.5), in_size) - xmin
        k = [_filter(kind, (x + xmin - center + 0.5) * ss) for x in range(xmax)]
        ww = 0.0
        for w in k:
            ww += w
        for x, w in enumerate(k):
            w = w / ww if ww != 0.0 else w
            scaled = w * (1 << _PRECISION_BITS)
            weights[xx, xmin + x] = int(-0.5 + scaled) if w < 0 else int(0.5 + scaled)
    return weights


def _fixed_point_to_uint8(sums: torch.Tensor) -> torch.Tensor:
    """PIL's ``clip8``: add the rounding half, shift out the fraction bits, clip to 0..255."""
    half, unit = float(1 << (_PRECISION_BITS - 1)), 2.0**-_PRECISION_BITS  # exact in float64
    return sums.add_(half).mul_(unit).floor_().clamp_(0, 255)


@dataclass(frozen=True)
class DevicePreprocess:
    """A CLIP preprocess (torchvision ``Resize`` → ``CenterCrop`` → to-tensor → ``Normalize``) applied to
    a uint8 batch (B, H, W, 3) on its own device, with the PIL path's result.

    Built from the backbone's transform by :meth:`from_transform`, which refuses any step it does not
    reproduce. The resize follows PIL's ``Image.resize`` for 8-bit RGB exactly (see the module
    docstring): the pixels equal the PIL path's, bit for bit on the CPU.
    """

    resize: int | None
    interpolation: str
    crop: tuple[int, int] | None
    mean: tuple[float, ...]
    std: tuple[float, ...]

    @classmethod
    def from_transform(cls, transform: Callable[..., Any]) -> DevicePreprocess:
        steps = transform.transforms if isinstance(transform, T.Compose) else [transform]
        resize, interpolation, crop, to_tensor, normalize = None, "bicubic", None, False, None
        for step in steps:
            name = getattr(step, "__name__", type(step).__name__)
            if isinstance(step, T.Resize) and resize is None and crop is None:
                size = step.size if isinstance(step.size, int) else list(step.size)
                if isinstance(size, list) and len(size) == 1:
                    size = size[0]
                mode = step.interpolation.value
                if not isinstance(size, int) or step.max_size is not None or mode not in _SUPPORT:
                    raise ValueError(_cannot(step))
                resize, interpolation = size, mode
            elif isinstance(step, T.CenterCrop) and crop is None:
                crop = tuple(step.size)
            elif name in ("MaybeConvertMode", "_convert_to_rgb"):
                continue  # the images are RGB already
            elif isinstance(step, T.ToTensor) and not to_tensor:
                to_tensor = True
            elif isinstance(step, T.Normalize) and to_tensor and normalize is None:
                normalize = step
            else:
                raise ValueError(_cannot(step))
        if not to_tensor or normalize is None:
            raise ValueError(_cannot(transform))
        return cls(resize, interpolation, crop, tuple(normalize.mean), tuple(normalize.std))

    def output_size(self, height: int, width: int) -> tuple[int, int]:
        """(height, width) of the result for input images of this size."""
        if self.resize is not None:
            height, width = _resized(height, width, self.resize)
        return self.crop if self.crop is not None else (height, width)

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        if images.dtype != torch.uint8 or images.dim() != 4 or images.shape[-1] != 3:
            raise ValueError(f"images must be uint8 (B, H, W, 3), got {images.dtype} {tuple(images.shape)}")
        x = images.permute(0, 3, 1, 2)
        height, width = x.shape[-2:]
        if self.resize is not None and (_resized(height, width, self.resize) != (height, width)):
            out_h, out_w = _resized(height, width, self.resize)
            x = x.to(torch.float64)
            batch, channels = x.shape[:2]
            if out_w != width:  # PIL: the horizontal pass first, rounded to uint8; one 2-D matmul
                weights = torch.from_numpy(pil_weights(width, out_w, self.interpolation)).to(x.device)
                x = _fixed_point_to_uint8(x.reshape(-1, width) @ weights.T)
                x = x.view(batch, channels, height, out_w)
            if out_h != height:  # then the vertical pass, with the rows as the matmul's inner dimension
                weights = torch.from_numpy(pil_weights(height, out_h, self.interpolation)).to(x.device)
                rows = x.transpose(0, 2).reshape(height, -1)
                x = _fixed_point_to_uint8(weights @ rows).view(out_h, channels, batch, out_w).transpose(0, 2)
            height, width = out_h, out_w
        if self.crop is not None:
            crop_h, crop_w = self.crop
            if crop_h > height or crop_w > width:
                raise ValueError(
                    f"centre crop {self.crop} is larger than the resized image ({height}, {width}): the "
                    "device path does not pad; use device_preprocess=False"
                )
            top, left = round((height - crop_h) / 2.0), round((width - crop_w) / 2.0)  # as torchvision
            x = x[..., top : top + crop_h, left : left + crop_w]
        device = x.device
        # as torchvision: to float32, divide by 255, subtract the mean, divide by the std; divisors are
        # device tensors, so CUDA divides too (a CPU-scalar divisor makes it multiply by the reciprocal)
        x = x.to(torch.float32).div(torch.tensor(255.0, device=device))
        mean = torch.tensor(self.mean, dtype=torch.float32, device=device).view(-1, 1, 1)
        std = torch.tensor(self.std, dtype=torch.float32, device=device).view(-1, 1, 1)
        return x.sub(mean).div(std).contiguous()


def _resized(height: int, width: int, size: int) -> tuple[int, int]:
    """torchvision ``Resize(size)``: the shorter edge to ``size``, the longer in proportion (truncated)."""
    short, long = (width, height) if width <= height else (height, width)
    new_short, new_long = size, int(size * long / short)
    return (new_long, new_short) if width <= height else (new_short, new_long)


def _cannot(step: Any) -> str:
    return (
        f"device preprocessing cannot reproduce the preprocess step {step!r}; use the PIL path "
        "(device_preprocess=False; CLI: leave out --device-preprocess)"
    )


# ----------------------------------------------------------------------------------------------------------
# Batches


class _Preprocessed(Dataset):
    """The images of several lists back to back, each through ``preprocess`` (what workers run)."""

    def __init__(self, lists: Sequence[ImageList], preprocess: Callable[[Any], torch.Tensor]) -> None:
        self.lists = list(lists)
        self.offsets = np.cumsum([0, *(len(images) for images in lists)])
        self.preprocess = preprocess

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def __getitem__(self, k: int) -> torch.Tensor:
        i = int(np.searchsorted(self.offsets, k, side="right")) - 1
        return self.preprocess(self.lists[i].load_image(k - int(self.offsets[i])))


def batch_plan(sizes: Sequence[int], batch_size: int) -> list[tuple[int, int, int]]:
    """(list number, start, stop) of every batch, list after list; a batch never spans two lists."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size <= 0:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    return [(i, lo, min(lo + batch_size, n)) for i, n in enumerate(sizes) for lo in range(0, n, batch_size)]


def check_device_preprocess(lists: Sequence[ImageList]) -> None:
    """Device preprocessing needs in-memory uint8 images of one size; say which list is not."""
    shapes = set()
    for images in lists:
        if not images.in_memory:
            raise ValueError(
                f"device preprocessing needs images held in memory as uint8 arrays (as CIFAR-10 is); "
                f"{images!r} reads image files: use device_preprocess=False (CLI: leave out "
                "--device-preprocess)"
            )
        shapes.add(tuple(images.images.shape[1:]))
    if len(shapes) > 1:
        raise ValueError(f"device preprocessing needs images of one size, got {sorted(shapes)}")


def image_batches(
    lists: Sequence[ImageList],
    preprocess: Callable[[Any], torch.Tensor],
    device: str | torch.device,
    *,
    batch_size: int = 256,
    options: LoaderOptions | None = None,
    progress: bool = False,
    desc: str = "preprocessing",
) -> Iterator[tuple[int, int, torch.Tensor]]:
    """(list number, start index, batch on ``device``) for every batch of every list, in order.

    ``preprocess`` is the backbone's transform; ``options`` picks the path (module docstring). One
    DataLoader serves all of ``lists``, so its workers start once; a pass too short to share (one
    batch) runs in the main process.
    """
    options = options or LoaderOptions()
    device = torch.device(device)
    plan = batch_plan([len(images) for images in lists], batch_size)
    bar = tqdm(total=sum(len(images) for images in lists), desc=desc, disable=not progress, unit="img")
    cuda = device.type == "cuda"
    try:
        if options.device_preprocess:
            check_device_preprocess(lists)
            on_device = DevicePreprocess.from_transform(preprocess)
            for i, lo, hi in plan:
                raw = torch.from_numpy(np.array(lists[i].images[lo:hi]))  # a writable copy
                raw = raw.pin_memory() if cuda else raw
                yield i, lo, on_device(raw.to(device, non_blocking=cuda))
                bar.update(hi - lo)
            return
        offsets = np.cumsum([0, *(len(images) for images in lists)])
        sampler = [range(int(offsets[i]) + lo, int(offsets[i]) + hi) for i, lo, hi in plan]
        workers = min(options.workers_for(device), len(plan)) if len(plan) > 1 else 0
        loader = DataLoader(
            _Preprocessed(lists, preprocess),
            batch_sampler=sampler,
            num_workers=workers,
            pin_memory=cuda,
        )
        for (i, lo, hi), batch in zip(plan, loader, strict=True):
            yield i, lo, batch.to(device, non_blocking=cuda)
            bar.update(hi - lo)
    finally:
        bar.close()


def pixel_batch(
    images: ImageList,
    indices: Sequence[int],
    preprocess: Callable[[Any], torch.Tensor],
    device: str | torch.device,
    device_preprocess: bool = False,
) -> torch.Tensor:
    """The model input of some images of one list (a training batch), by either path, on ``device``."""
    if device_preprocess:
        check_device_preprocess([images])
        raw = torch.from_numpy(images.images[np.asarray(indices, dtype=np.int64)])  # a copy
        return DevicePreprocess.from_transform(preprocess)(raw.to(device))
    return torch.stack([preprocess(images.load_image(i)) for i in indices]).to(device)
