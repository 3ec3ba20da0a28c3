"""How big the frozen-prefix cache gets (:mod:`kalahash.cache`): the size to expect for a backbone and a
data set, computed from the backbone's shapes without building it, and what a cache folder holds.

An adapted tower (LoRA, CLoRA, KALAHash: adapters in the last block) stores the tokens before its last
block, (tokens × width) per image; a frozen tower (LB, zero-shot) stores the pooled features, (embed,)
per image. Elements are float32 on the CPU and bf16 under CUDA autocast. Evaluation caches the query
and the database once per backbone and kind; each few-shot training set adds its own small entry
(shots × classes images).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import open_clip
import pandas as pd
import torch

from . import slip
from .backbones import BUILTIN_WEIGHTS, _close_matches, _quiet_root_logger, available_models
from .cache import read_entry

# The paper's protocol (paper-notes.md, Protocol; the DeepHash-pytorch convention): query and database
# images of each data set. The database of CIFAR-10 includes its train pool; NUS-WIDE's and MS-COCO's
# are the usual figures of the released lists.
PROTOCOL_IMAGES = {
    "cifar10": {"query": 1_000, "database": 59_000},
    "nuswide": {"query": 2_100, "database": 193_734},
    "coco": {"query": 5_000, "database": 117_218},
}
BYTES = {"float32": 4, "bfloat16": 2}


def entry_shapes(backbone: str) -> dict[str, tuple[int, ...]]:
    """Per-image shape of each kind of cache entry, ``tokens`` (L, width) and ``pooled`` (embed,), from
    the backbone's config on the meta device (no weights, no memory, no download)."""
    from .towers import image_tower

    models = available_models()
    if backbone not in models:
        raise ValueError(f"unknown backbone {backbone!r}.{_close_matches(backbone, models)}")
    if backbone in slip.SLIP_MODELS:
        model = slip.build_slip_model(slip.SLIP_MODELS[backbone], device="meta")
    else:
        config = BUILTIN_WEIGHTS[backbone][0] if backbone in BUILTIN_WEIGHTS else backbone
        with _quiet_root_logger(), torch.device("meta"):
            model = open_clip.create_model(config, device="meta")
    tower = image_tower(model.visual)
    size = model.visual.image_size
    height, width = (size, size) if isinstance(size, int) else tuple(size)
    tokens = tower.embed(torch.empty(1, 3, height, width, device="meta"))
    return {"tokens": tuple(tokens.shape[1:]), "pooled": tuple(tower.pool_project(tokens).shape[1:])}


def dataset_images(dataset: str, data_root: str | os.PathLike | None = None) -> dict[str, int]:
    """Query and database images of a data set: the paper's protocol for cifar10, nuswide and coco
    (unless ``data_root`` is given), else counted from the data set itself."""
    from .data import load_dataset, resolve_dataset_name

    name = resolve_dataset_name(dataset)
    if name in PROTOCOL_IMAGES and data_root is None:
        return dict(PROTOCOL_IMAGES[name])
    data = load_dataset(name, data_root)
    return {"query": len(data.query), "database": len(data.database)}


def expected_sizes(
    backbones: Sequence[str], datasets: Sequence[str], data_root: str | os.PathLike | None = None
) -> pd.DataFrame:
    """The cache of query + database for each backbone and data set: bytes of an adapted tower's
    tokens and of a frozen tower's pooled features, in float32 (CPU) and bf16 (CUDA autocast)."""
    rows = []
    for backbone in backbones:
        shapes = entry_shapes(backbone)
        for dataset in datasets:
            images = sum(dataset_images(dataset, data_root).values())
            row = {
                "backbone": backbone,
                "dataset": dataset,
                "images": images,
                "tokens": " x ".join(map(str, shapes["tokens"])),
                "embed": shapes["pooled"][0],
            }
            for kind in ("tokens", "pooled"):
                label = "adapted" if kind == "tokens" else "frozen"
                for dtype, size in BYTES.items():
                    row[f"{label} {dtype}"] = images * int(np.prod(shapes[kind])) * size
            rows.append(row)
    return pd.DataFrame(rows)


def cache_contents(root: str | os.PathLike) -> pd.DataFrame:
    """What a cache folder holds, one row per entry: file, stored kind, images, shape per image, dtype
    and bytes on disk (the npy header included)."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"cache folder {str(root)!r} does not exist")
    rows = []
    for path in sorted(root.glob("*.npy")):
        entry = read_entry(path)
        rows.append(
            {
                "file": path.name,
                "stored": "tokens" if entry.dim() == 3 else "pooled",
                "images": entry.shape[0],
                "per image": " x ".join(map(str, entry.shape[1:])),
                "dtype": str(entry.dtype).removeprefix("torch."),
                "bytes": path.stat().st_size,
            }
        )
    columns = ["file", "stored", "images", "per image", "dtype", "bytes"]
    return pd.DataFrame(rows, columns=columns)


def human_bytes(n: float) -> str:
    """Decimal units (GB = 10⁹ bytes), as disks are sold."""
    for unit in ("B", "kB", "MB", "GB"):
        if abs(n) < 1000:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"
