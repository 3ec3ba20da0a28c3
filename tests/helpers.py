"""Helpers shared by the test modules (importable: pytest puts tests/ on sys.path)."""

import hashlib

import numpy as np
import torch

from kalahash.backbones import load_backbone


def fresh_tiny(seed: int = 0):
    """A fresh random-init `tiny` backbone (adapters and hashers modify theirs in place); same seed, same weights."""
    torch.manual_seed(seed)
    return load_backbone("tiny")


def tiny_list_dataset(root, duplicate_query_into_database: bool = False, prefix: str = "") -> None:
    """A DeepHash-style list-file data set of real PNG files at ``root``: 2 classes, 6 train, 2 query,
    6 database; with ``duplicate_query_into_database`` a query picture reappears under another name.
    ``prefix`` starts every file name (two folders with other prefixes hold other images' ids)."""
    import numpy as np
    from PIL import Image

    (root / "images").mkdir(parents=True)
    pixels = np.random.default_rng(0).integers(0, 255, size=(14, 32, 32, 3), dtype=np.uint8)
    if duplicate_query_into_database:
        pixels[13] = pixels[0]
    for i, image in enumerate(pixels):
        Image.fromarray(image).save(root / "images" / f"{prefix}{i}.png")
    label = ["1 0", "0 1"]
    (root / "classnames.txt").write_text("cat\ndog\n")
    for name, (lo, hi) in {"query.txt": (0, 2), "train.txt": (2, 8), "gallery.txt": (8, 14)}.items():
        (root / name).write_text("".join(f"{prefix}{i}.png {label[i % 2]}\n" for i in range(lo, hi)))


def cli_run_args(tmp_path, *extra: str, epochs: int = 2) -> list[str]:
    """``kalahash run`` on the shapes world with the random-init tiny backbone, quiet, its results table
    and prefix cache under ``tmp_path``; ``extra`` options follow."""
    return [
        "run", "--dataset", "shapes", "--backbone", "tiny", "--epochs", str(epochs), "--quiet",
        "--results", str(tmp_path / "results.csv"), "--cache", str(tmp_path / "cache"), *extra,
    ]  # fmt: skip


def images_digest(images: np.ndarray, captions: list[str] | None = None) -> str:
    """SHA-256 of images' bytes (and captions): the golden hash of a world's generated pool."""
    h = hashlib.sha256(np.ascontiguousarray(images).tobytes())
    if captions is not None:
        h.update("\n".join(captions).encode())
    return h.hexdigest()


def row_hashes(images: np.ndarray) -> set[bytes]:
    """One content hash per image, to check that two image sets share no picture."""
    return {hashlib.sha1(img.tobytes()).digest() for img in images}
