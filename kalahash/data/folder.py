"""A user's own images, one sub-folder per class, split like CIFAR-10 (``folder``)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ._util import check_count
from .protocol import saved_protocol_split
from .registry import register_dataset
from .types import ImageList, RetrievalData

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")


@register_dataset("folder", aliases=("imagefolder",))
def load_folder(
    data_root: Path | None,
    *,
    seed: int = 0,
    download: bool = False,
    query_per_class: int = 10,
    train_per_class: int | None = None,
    topk: int | None = None,
    extensions: Sequence[str] = IMAGE_EXTENSIONS,
    name: str = "folder",
    split_dir: str | Path | None = None,
) -> RetrievalData:
    """A folder per class (``<data_root>/<class>/*.jpg``), single-label, split like CIFAR-10.

    Classes are the sub-folder names in sorted order (hidden folders skipped); images are the files
    directly inside each, with one of ``extensions`` (any case). Per class, ``query_per_class`` images
    become queries and ``train_per_class`` (default: all the rest) the train pool; the database is every
    non-query image. Seeded; with ``split_dir`` the split is saved there and read back like CIFAR-10's.
    Ids are ``<class>/<file name>``.
    """
    if data_root is None:
        raise ValueError(
            "the 'folder' dataset needs data_root= (CLI: --data-root): a folder with one sub-folder of images "
            "per class"
        )
    query_per_class = check_count("query_per_class", query_per_class)
    train_per_class = check_count("train_per_class", train_per_class, allow_none=True)
    if not data_root.is_dir():
        raise FileNotFoundError(
            f"image folder {data_root} does not exist: it should contain one sub-folder per class, "
            "each holding that class's images"
        )
    saved = Path(split_dir).resolve() if split_dir is not None else None
    exts = {e.lower() if e.startswith(".") else f".{e.lower()}" for e in extensions}
    class_dirs = sorted(
        d for d in data_root.iterdir() if d.is_dir() and not d.name.startswith(".") and d.resolve() != saved
    )
    if not class_dirs:
        raise ValueError(f"image folder {data_root} has no class sub-folders (empty data set)")
    classnames, files, ids, y = [], [], [], []
    for c, d in enumerate(class_dirs):
        members = sorted(
            f for f in d.iterdir() if f.is_file() and not f.name.startswith(".") and f.suffix.lower() in exts
        )
        if not members:
            raise ValueError(f"class folder {d} holds no images with extensions {', '.join(sorted(exts))}")
        classnames.append(d.name)
        files.extend(members)
        ids.extend(f"{d.name}/{f.name}" for f in members)
        y.extend([c] * len(members))
    y_arr = np.asarray(y, dtype=np.int64)
    q, t, split_files = saved_protocol_split(
        name,
        ids,
        y_arr,
        classnames,
        query_per_class=query_per_class,
        train_per_class=train_per_class,
        seed=seed,
        split_dir=Path(split_dir) if split_dir is not None else None,
    )
    full = ImageList(files, np.eye(len(classnames), dtype=np.uint8)[y_arr], ids)
    db = np.setdiff1d(np.arange(len(y_arr)), q)
    info = {"source": str(data_root), "split_files": split_files, "seed": seed}
    return RetrievalData(name, classnames, full.subset(q), full.subset(t), full.subset(db), topk, info)
