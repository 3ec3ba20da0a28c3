"""CIFAR-10 from the python pickle archive (or its extracted folder), with an optional download."""

from __future__ import annotations

import hashlib
import pickle
import tarfile
import urllib.error
import urllib.request
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from ..fileio import atomic_path
from ._util import check_count
from .protocol import saved_protocol_split
from .registry import default_data_root, register_dataset
from .types import ImageList, RetrievalData

CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
CIFAR10_MD5 = "c58f30108f718f92721af3b95e74349a"
CIFAR10_ARCHIVE = "cifar-10-python.tar.gz"
CIFAR10_FOLDER = "cifar-10-batches-py"
_CIFAR10_BATCHES = (
    "data_batch_1",
    "data_batch_2",
    "data_batch_3",
    "data_batch_4",
    "data_batch_5",
    "test_batch",
)
_CIFAR10_RENAME = {"automobile": "car"}  # the release's classnames.txt says "car"

# The archive is a pickle; only the globals a numpy array needs may be loaded from it.
_PICKLE_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy.core.numeric", "_frombuffer"),
    ("numpy._core.numeric", "_frombuffer"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("_codecs", "encode"),
}


class _ArrayUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _PICKLE_ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a data file")
        if module.startswith("numpy.core") and hasattr(np, "_core"):
            module = "numpy._core" + module[len("numpy.core") :]  # numpy 2 renamed it
        return super().find_class(module, name)


def _unpickle(f: Any, where: str) -> dict:
    try:
        obj = _ArrayUnpickler(f, encoding="bytes").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError) as e:
        raise ValueError(f"{where} is not a CIFAR-10 pickle batch ({e})") from e
    if not isinstance(obj, dict):
        raise ValueError(f"{where} is not a CIFAR-10 pickle batch (got {type(obj).__name__}, expected dict)")
    return obj


def _cifar10_missing(root: Path, reason: str = "") -> str:
    return (
        f"CIFAR-10 not found{': ' + reason if reason else ''}. Put {CIFAR10_ARCHIVE} (md5 {CIFAR10_MD5}, "
        f"from {CIFAR10_URL}) or its extracted folder {CIFAR10_FOLDER}/ into {root}/ , e.g. "
        f"`mkdir -p {root} && curl -o {root}/{CIFAR10_ARCHIVE} {CIFAR10_URL}`, or fetch it with "
        f"download=True (CLI: `kalahash check-data --dataset cifar10 --data-root {root} --download`; needs "
        "network). See data/README.md"
    )


def file_md5(path: str | Path) -> str:
    """MD5 hex digest of a file, read in chunks (used only to verify downloads, not for security)."""
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def verify_md5(path: str | Path, md5: str) -> None:
    """Raise ``ValueError`` if ``path`` does not have checksum ``md5``."""
    got = file_md5(path)
    if got != md5.lower():
        raise ValueError(
            f"checksum mismatch for {path}: md5 {got}, expected {md5}; the file is corrupt or "
            "incomplete: delete it and download again"
        )


def download_cifar10(
    data_root: str | Path, *, url: str | None = None, md5: str | None = None, timeout: float = 60.0
) -> Path:
    """Download the CIFAR-10 python archive into ``data_root`` and verify its md5.

    The file appears only complete and verified (temp file + rename). Network failures raise
    ``FileNotFoundError`` saying where to put the file by hand; a bad checksum raises ``ValueError``.
    """
    url = url or CIFAR10_URL
    md5 = md5 or CIFAR10_MD5
    root = Path(data_root)
    root.mkdir(parents=True, exist_ok=True)
    target = root / CIFAR10_ARCHIVE
    digest = hashlib.md5(usedforsecurity=False)
    from tqdm import tqdm

    with atomic_path(target, suffix=".part") as tmp, open(tmp, "wb") as out:
        try:
            with urllib.request.urlopen(url, timeout=timeout) as response:
                total = int(response.headers.get("Content-Length") or 0) or None
                with tqdm(total=total, unit="B", unit_scale=True, desc=CIFAR10_ARCHIVE, leave=False) as bar:
                    while chunk := response.read(1 << 20):
                        out.write(chunk)
                        digest.update(chunk)
                        bar.update(len(chunk))
        except (urllib.error.URLError, OSError) as e:
            raise FileNotFoundError(_cifar10_missing(root, f"download from {url} failed ({e})")) from e
        if digest.hexdigest() != md5.lower():
            raise ValueError(
                f"downloaded {url} has md5 {digest.hexdigest()}, expected {md5}; nothing was saved in {root}"
            )
    return target


def _find_cifar10(root: Path) -> Path | None:
    for folder in (root / CIFAR10_FOLDER, root):
        if (folder / "data_batch_1").is_file():
            return folder
    archive = root / CIFAR10_ARCHIVE
    return archive if archive.is_file() else None


def _read_cifar10(source: Path) -> tuple[dict[str, dict], dict]:
    """The six batches and batches.meta, from the extracted folder or straight from the archive."""
    wanted = {*_CIFAR10_BATCHES, "batches.meta"}
    blobs: dict[str, dict] = {}
    if source.is_dir():
        for name in sorted(wanted):
            path = source / name
            if not path.is_file():
                raise FileNotFoundError(
                    f"CIFAR-10 folder {source} lacks {name}; re-extract {CIFAR10_ARCHIVE}"
                )
            with open(path, "rb") as f:
                blobs[name] = _unpickle(f, str(path))
    else:
        try:
            with tarfile.open(source, "r|gz") as tar:  # one streaming pass over the archive
                for member in tar:
                    base = member.name.rsplit("/", 1)[-1]
                    if member.isfile() and base in wanted:
                        blobs[base] = _unpickle(tar.extractfile(member), f"{source}:{member.name}")
        except (tarfile.TarError, EOFError, zlib.error, OSError) as e:
            raise ValueError(
                f"{source} is not a readable CIFAR-10 archive ({e}); delete it and download again "
                f"(md5 should be {CIFAR10_MD5})"
            ) from e
        missing = sorted(wanted - set(blobs))
        if missing:
            raise ValueError(f"{source} lacks {', '.join(missing)}: not the CIFAR-10 python archive")
    meta = blobs.pop("batches.meta")
    return blobs, meta


@register_dataset("cifar10", aliases=("cifar-10", "cifar_10"))
def load_cifar10(
    data_root: Path | None,
    *,
    seed: int = 0,
    download: bool = False,
    query_per_class: int = 100,
    train_per_class: int = 500,
    split_dir: str | Path | None = None,
) -> RetrievalData:
    """CIFAR-10 with the DeepHash protocol (notes: Protocol): 100 query and 500 train-pool images per
    class, database = all 59,000 non-query images, mAP@ALL (topk None).

    Reads ``cifar-10-python.tar.gz`` or the extracted ``cifar-10-batches-py/`` from ``data_root``
    (default ``data/cifar10``). The seeded split is saved as two plain-text id lists in ``split_dir``
    (default ``<data_root>/splits``) and read back on later loads. Images stay in memory as uint8
    (N, 32, 32, 3); ids are ``cifar10:<batch>:<row>``.
    """
    root = data_root if data_root is not None else default_data_root("cifar10")
    query_per_class = check_count("query_per_class", query_per_class)
    train_per_class = check_count("train_per_class", train_per_class)
    source = _find_cifar10(root) if root.is_dir() else None
    if source is None:
        if not download:
            reason = f"folder {root} does not exist" if not root.exists() else f"nothing usable in {root}"
            raise FileNotFoundError(_cifar10_missing(root, reason))
        source = download_cifar10(root)
    batches, meta = _read_cifar10(source)
    names = [n.decode() if isinstance(n, bytes) else str(n) for n in meta.get(b"label_names", [])]
    if len(names) != 10:
        raise ValueError(f"{source}: batches.meta has {len(names)} label names, expected 10")
    classnames = [_CIFAR10_RENAME.get(n, n) for n in names]

    images, targets, ids = [], [], []
    for name in _CIFAR10_BATCHES:
        batch = batches[name]
        if b"data" not in batch or b"labels" not in batch:
            raise ValueError(f"{source}: {name} lacks b'data' or b'labels' (keys: {sorted(batch)})")
        rows = np.asarray(batch[b"data"], dtype=np.uint8)
        labels = np.asarray(batch[b"labels"], dtype=np.int64)
        if rows.ndim != 2 or rows.shape[1] != 3072 or len(rows) != len(labels):
            raise ValueError(
                f"{source}: {name} data has shape {rows.shape} for {len(labels)} labels, expected (N, 3072)"
            )
        if labels.size and (labels.min() < 0 or labels.max() > 9):
            raise ValueError(f"{source}: {name} has labels outside 0..9")
        images.append(rows.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))  # rows are R, G, B planes
        targets.append(labels)
        ids.extend(f"cifar10:{name}:{r}" for r in range(len(rows)))
    pixels = np.ascontiguousarray(np.concatenate(images))
    y = np.concatenate(targets)
    if len(y) == 0:
        raise ValueError(f"{source}: the CIFAR-10 batches hold no images")
    onehot = np.eye(10, dtype=np.uint8)[y]

    split_dir = Path(split_dir) if split_dir is not None else root / "splits"
    q, t, files = saved_protocol_split(
        "cifar10",
        ids,
        y,
        classnames,
        query_per_class=query_per_class,
        train_per_class=train_per_class,
        seed=seed,
        split_dir=split_dir,
    )
    db = np.setdiff1d(np.arange(len(y)), q)
    full = ImageList(pixels, onehot, ids)
    info = {"source": str(source), "split_files": files, "seed": seed}
    return RetrievalData("cifar10", classnames, full.subset(q), full.subset(t), full.subset(db), None, info)
