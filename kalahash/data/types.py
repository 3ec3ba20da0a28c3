"""The two data types every loader returns: :class:`ImageList` (images + 0/1 label rows + stable ids)
and :class:`RetrievalData` (query, train pool and database of one benchmark)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

if TYPE_CHECKING:
    import torch

Transform = Callable[[Image.Image], "torch.Tensor"]
SPLITS = ("query", "train", "database")
# The formats an image file may be read as (those of ``IMAGE_EXTENSIONS``), whatever its name: Pillow
# would open others too, EPS among them, which it renders by running Ghostscript on the file.
IMAGE_FORMATS = ("JPEG", "PNG", "BMP", "GIF", "WEBP", "TIFF")


def open_image(fp: str | Path | Any) -> Image.Image:
    """``PIL.Image.open`` limited to :data:`IMAGE_FORMATS`: a file of any other format raises
    ``UnidentifiedImageError``, so no file an image folder holds starts another program."""
    return Image.open(fp, formats=IMAGE_FORMATS)


class ImageList:
    """Images with 0/1 label rows. Items are ``(image, label_row, index)``: a map-style data set for
    torch's ``DataLoader`` (torch is imported when an item is read, so importing kalahash stays light).

    ``images`` is either a list of file paths or a uint8 array (N, H, W, 3) held in memory.
    ``ids`` are stable names for the images (relative paths, or ``"<set>:<index>"``) used in split
    lists, integrity checks and fingerprints, so they must not depend on where the data lives.
    """

    def __init__(
        self,
        images: Sequence[str | Path] | np.ndarray,
        labels: np.ndarray,
        ids: Sequence[str] | None = None,
        transform: Transform | None = None,
    ) -> None:
        labels = np.asarray(labels)
        if labels.ndim != 2:
            raise ValueError(f"labels must be a 2-D 0/1 matrix (N x C), got shape {labels.shape}")
        if len(images) != len(labels):
            raise ValueError(f"{len(images)} images but {len(labels)} label rows")
        if isinstance(images, np.ndarray) and (images.ndim != 4 or images.shape[-1] != 3):
            raise ValueError(f"in-memory images must be uint8 (N, H, W, 3), got shape {images.shape}")
        if labels.size and not np.isin(labels, (0, 1)).all():
            bad = np.unique(labels[~np.isin(labels, (0, 1))])[:5].tolist()
            raise ValueError(f"labels must contain only 0 and 1, found {bad}")
        self.images = images if isinstance(images, np.ndarray) else [Path(p) for p in images]
        self.labels = labels.astype(np.uint8)
        if ids is None:
            ids = [str(i) for i in range(len(labels))] if self.in_memory else [str(p) for p in self.images]
        self.ids = list(ids)
        if len(self.ids) != len(self.labels):
            raise ValueError(f"{len(self.ids)} ids but {len(self.labels)} label rows")
        self.transform = transform

    def __len__(self) -> int:
        return len(self.labels)

    def __repr__(self) -> str:
        where = f"in memory {tuple(self.images.shape[1:])}" if self.in_memory else "files"
        return f"ImageList({len(self)} images, {self.num_classes} classes, {where})"

    @property
    def num_classes(self) -> int:
        return self.labels.shape[1]

    @property
    def in_memory(self) -> bool:
        return isinstance(self.images, np.ndarray)

    def load_image(self, index: int) -> Image.Image:
        """Image ``index`` as RGB; a file that is gone or does not decode raises an error naming it."""
        if isinstance(self.images, np.ndarray):
            return Image.fromarray(self.images[index])
        path = self.images[index]
        try:
            with open_image(path) as img:
                return img.convert("RGB")
        except FileNotFoundError as e:
            raise FileNotFoundError(
                f"image {path} (id {self.ids[index]!r}) is missing; restore it, or run `kalahash check-data` "
                "on its data set to find every missing file"
            ) from e
        except Exception as e:  # PIL raises many types for a broken file; all mean the same here
            raise ValueError(
                f"image {path} (id {self.ids[index]!r}) cannot be read ({type(e).__name__}: {e}); replace "
                "or repair the file, then run `kalahash check-data` on its data set to check the rest"
            ) from e

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor, int]:
        import torch

        image = self.load_image(index)
        tensor = self.transform(image) if self.transform is not None else torch.from_numpy(np.array(image))
        return tensor, torch.from_numpy(self.labels[index].astype(np.float32)), index

    def subset(self, indices: Sequence[int] | np.ndarray) -> ImageList:
        indices = np.asarray(indices, dtype=np.int64)
        images = (
            self.images[indices] if isinstance(self.images, np.ndarray) else [self.images[i] for i in indices]
        )
        return ImageList(images, self.labels[indices], [self.ids[i] for i in indices], self.transform)

    def with_transform(self, transform: Transform | None) -> ImageList:
        return ImageList(self.images, self.labels, self.ids, transform)


@dataclass
class RetrievalData:
    """A retrieval benchmark: query, train pool and database, with class names and the mAP cut-off.

    ``info`` records where the data came from (files found, list-file convention, split files) for
    reports; it never changes what the data is.
    """

    name: str
    classnames: list[str]
    query: ImageList
    train: ImageList
    database: ImageList
    topk: int | None
    info: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for split, images in self.splits().items():
            if images.num_classes != len(self.classnames):
                raise ValueError(
                    f"{self.name}: {split} labels have {images.num_classes} columns but there are "
                    f"{len(self.classnames)} class names"
                )

    @property
    def multi_label(self) -> bool:
        return bool((self.train.labels.sum(1) > 1).any() or (self.database.labels.sum(1) > 1).any())

    def splits(self) -> dict[str, ImageList]:
        """The three splits by name, in the fixed order query, train, database."""
        return {"query": self.query, "train": self.train, "database": self.database}

    def with_transform(self, transform: Transform | None) -> RetrievalData:
        return RetrievalData(
            self.name,
            self.classnames,
            self.query.with_transform(transform),
            self.train.with_transform(transform),
            self.database.with_transform(transform),
            self.topk,
            dict(self.info),
        )
