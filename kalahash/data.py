"""Retrieval data sets: one image-list type, one registry of loaders, the few-shot protocol.

Every benchmark is a :class:`RetrievalData` (query, train pool, database) built by a loader registered
under a short name; :func:`load_dataset` is the only entry point notebooks and the CLI need::

    data = load_dataset("cifar10", "data/cifar10", seed=0)
    train = few_shot_split(data, shots=4, seed=0, out_dir="data/cifar10/splits")
    check = check_data(data)          # files, overlaps, duplicates, fingerprint

Registered names: ``cifar10`` (python pickle archive), ``nuswide`` and ``coco`` (DeepHash-style list
files), ``listfile`` (any list files, explicit paths), ``folder`` (one sub-folder per class) and the
offline worlds ``shapes`` / ``shapes-multi`` (from :mod:`kalahash.world`). ``data/README.md`` says where
each data set goes. Splits are written as plain-text id lists so that every method (and every person)
sees the same images.
"""

from __future__ import annotations

import difflib
import hashlib
import inspect
import io
import os
import pickle
import re
import tarfile
import urllib.error
import urllib.request
import zlib
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from .fileio import atomic_path, atomic_write_text

if TYPE_CHECKING:
    import pandas as pd

Transform = Callable[[Image.Image], torch.Tensor]
SPLITS = ("query", "train", "database")


# --------------------------------------------------------------------------------------------------
# Core types
# --------------------------------------------------------------------------------------------------


class ImageList(Dataset):
    """Images with 0/1 label rows. Items are ``(image, label_row, index)``.

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
        if isinstance(self.images, np.ndarray):
            return Image.fromarray(self.images[index])
        with Image.open(self.images[index]) as img:
            return img.convert("RGB")

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor, int]:
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


# --------------------------------------------------------------------------------------------------
# Small helpers
# --------------------------------------------------------------------------------------------------


def _examples(items: Sequence[Any], n: int = 5) -> str:
    shown = ", ".join(str(x) for x in items[:n])
    return shown + (f" (+{len(items) - n} more)" if len(items) > n else "")


def _class_label(c: int, classnames: Sequence[str] | None) -> str:
    return (
        f"class {c} ({classnames[c]!r})" if classnames is not None and c < len(classnames) else f"class {c}"
    )


def _check_count(name: str, value: Any, *, allow_none: bool = False) -> int | None:
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value <= 0:
        allowed = "a positive int or None" if allow_none else "a positive int"
        raise ValueError(f"{name} must be {allowed}, got {value!r}")
    return int(value)


def _safe_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-") or "data"


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


# --------------------------------------------------------------------------------------------------
# Registry
# --------------------------------------------------------------------------------------------------

Loader = Callable[..., RetrievalData]
DATASETS: dict[str, Loader] = {}
_ALIASES: dict[str, str] = {}


def register_dataset(name: str, *, aliases: Sequence[str] = (), overwrite: bool = False):
    """Register a loader under ``name`` (and ``aliases``).

    A loader is called as ``loader(data_root, *, seed, download, **options)`` with ``data_root`` a
    ``Path`` or ``None`` (the loader picks its default) and returns a :class:`RetrievalData`. Options are
    keyword-only parameters; :func:`load_dataset` rejects unknown ones with the accepted list.
    """
    key = name.strip().lower()

    def decorator(loader: Loader) -> Loader:
        for k in (key, *(a.strip().lower() for a in aliases)):
            if not overwrite and (k in DATASETS or k in _ALIASES):
                raise ValueError(
                    f"dataset name {k!r} is already registered; pass overwrite=True to replace it"
                )
        DATASETS[key] = loader
        for alias in aliases:
            _ALIASES[alias.strip().lower()] = key
        return loader

    return decorator


def resolve_dataset_name(name: str) -> str:
    """The registered name for ``name`` (case-insensitive, aliases such as ``nus-wide`` accepted)."""
    key = str(name).strip().lower()
    key = _ALIASES.get(key, key)
    if key not in DATASETS:
        close = difflib.get_close_matches(key, [*DATASETS, *_ALIASES], n=3, cutoff=0.5)
        close = list(dict.fromkeys(_ALIASES.get(c, c) for c in close))
        hint = f"; did you mean {' or '.join(map(repr, close))}?" if close else ""
        raise ValueError(f"unknown dataset {name!r}; known datasets: {', '.join(sorted(DATASETS))}{hint}")
    return key


def default_data_root(name: str) -> Path:
    """``$KALAHASH_DATA/<name>``, or ``data/<name>`` relative to the working directory."""
    return Path(os.environ.get("KALAHASH_DATA", "data")) / name


def _check_options(name: str, loader: Loader, options: Mapping[str, Any]) -> None:
    params = inspect.signature(loader).parameters.values()
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        return
    accepted = [p.name for p in params if p.kind is inspect.Parameter.KEYWORD_ONLY]
    accepted = [a for a in accepted if a not in ("seed", "download")]
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        hints = {u: difflib.get_close_matches(u, accepted, n=1) for u in unknown}
        hint = "; ".join(f"{u!r}: did you mean {h[0]!r}?" for u, h in hints.items() if h)
        raise ValueError(
            f"unknown option(s) for dataset {name!r}: {', '.join(unknown)}; accepted: "
            f"{', '.join(accepted) or 'none'}" + (f" ({hint})" if hint else "")
        )
    required = [
        p.name
        for p in params
        if p.kind is inspect.Parameter.KEYWORD_ONLY and p.default is inspect.Parameter.empty
    ]
    missing = [r for r in required if r not in options and r not in ("seed", "download")]
    if missing:
        raise ValueError(f"dataset {name!r} needs option(s): {', '.join(missing)}")


def load_dataset(
    name: str,
    /,
    data_root: str | Path | None = None,
    *,
    seed: int = 0,
    download: bool = False,
    **kwargs: Any,
) -> RetrievalData:
    """Load a registered retrieval benchmark by name.

    Parameters
    ----------
    name : (positional only) a key of :data:`DATASETS` (``cifar10``, ``nuswide``, ``coco``,
        ``listfile``, ``folder``, ``shapes``, ``shapes-multi``) or an alias (``cifar-10``, ``nus-wide``,
        ``mscoco``). Positional only, so that loaders may take a ``name=`` option.
    data_root : the data set's folder; ``None`` means :func:`default_data_root` (``data/<name>``).
    seed : seeds the protocol split where the loader makes one (cifar10, folder, worlds); list-file
        data sets come already split and ignore it.
    download : fetch the data if it is missing, where a download exists (only ``cifar10``).
    **kwargs : loader options, e.g. ``query_per_class`` for cifar10 or ``image_root`` for nuswide.
    """
    key = resolve_dataset_name(name)
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    loader = DATASETS[key]
    _check_options(key, loader, kwargs)
    root = None if data_root is None else Path(data_root).expanduser()
    return loader(root, seed=int(seed), download=bool(download), **kwargs)


# --------------------------------------------------------------------------------------------------
# Split files (plain text: header lines "# key: value", then one id a line)
# --------------------------------------------------------------------------------------------------

SPLIT_FORMAT = "kalahash split v1"
RULE_RANDOM = "random-per-class"
RULE_GREEDY = "greedy-file-order"
RULE_PROTOCOL = "per-class-random: query, then train pool from the rest; database = all but query"


def _write_list(path: Path, ids: Sequence[str], header: Mapping[str, Any]) -> Path:
    for i in ids:
        if not isinstance(i, str) or not i.strip() or i != i.strip() or "\n" in i or i.startswith("#"):
            raise ValueError(f"split ids must be non-empty one-line strings not starting with '#', got {i!r}")
    dupes = [i for i, n in Counter(ids).items() if n > 1]
    if dupes:
        raise ValueError(f"split ids must be unique; repeated: {_examples(dupes)}")
    lines = [f"# {SPLIT_FORMAT}"]
    for key, value in {**header, "count": len(ids)}.items():
        text = str(value)
        if "\n" in text or ":" in str(key):
            raise ValueError(f"split header {key!r} must be one line without ':' in the key, got {text!r}")
        lines.append(f"# {key}: {text}")
    atomic_write_text(path, "\n".join([*lines, *ids]) + "\n")
    return path


def save_split(
    path: str | Path,
    ids: Sequence[str],
    *,
    dataset: str,
    shots: int | None,
    seed: int,
    rule: str,
    extra: Mapping[str, Any] | None = None,
) -> Path:
    """Write a split as plain text: ``# key: value`` header lines, then one image id a line.

    The header records what made the list (dataset, shots, seed, rule, count), so a split can be read,
    diffed and shared, and re-deriving it from the seed can be checked against the file. The write is
    atomic.
    """
    header = {"dataset": dataset, "shots": shots, "seed": seed, "rule": rule, **(extra or {})}
    return _write_list(Path(path), list(ids), header)


def load_split(path: str | Path) -> tuple[list[str], dict[str, str]]:
    """Read a split file written by :func:`save_split`: ``(ids, header)``; header values are strings.

    Lines starting with ``#`` are header/comment lines; ``# key: value`` ones fill the header. A file
    whose ``count`` disagrees with its ids (a truncated copy) is refused.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"split file {path} not found")
    ids: list[str] = []
    header: dict[str, str] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith("#"):
            key, sep, value = line[1:].partition(":")
            if sep:
                header[key.strip()] = value.strip()
        elif line.strip():
            ids.append(line.strip())
    if "count" in header and header["count"] != str(len(ids)):
        raise ValueError(
            f"split file {path} says count: {header['count']} but lists {len(ids)} ids (truncated?)"
        )
    return ids, header


# --------------------------------------------------------------------------------------------------
# Few-shot protocol (notes: Protocol)
# --------------------------------------------------------------------------------------------------


def _default_rule(labels: np.ndarray) -> str:
    """Single-label pools (at most one label a row) draw at random per class; multi-label ones go greedy."""
    return RULE_RANDOM if np.asarray(labels).sum(1).max(initial=0) <= 1 else RULE_GREEDY


def few_shot_indices(
    labels: np.ndarray,
    shots: int,
    seed: int = 0,
    *,
    rule: str | None = None,
    classnames: Sequence[str] | None = None,
) -> np.ndarray:
    """Indices of a k-shot training set drawn from a train pool, in ascending (pool) order.

    Rules (notes: Protocol); ``rule=None`` picks by the labels:

    - ``"random-per-class"`` (every labelled row has exactly one label): for each class in index order,
      ``shots`` rows drawn without replacement by ``np.random.default_rng(seed)``.
    - ``"greedy-file-order"`` (multi-label): one pass in pool order; a row is taken only if none of its
      labels has ``shots`` images yet; a taken row counts for all its labels; stop when every class has
      ``shots``. It does not use the seed (the released splits do not depend on one).

    Rows without any label are never taken (they carry no supervision). Raises ``ValueError`` naming
    the class when the pool cannot give it ``shots`` images.
    """
    labels = np.asarray(labels)
    if labels.ndim != 2 or labels.shape[0] == 0:
        raise ValueError(f"labels must be a non-empty 2-D 0/1 matrix (N x C), got shape {labels.shape}")
    if not np.isin(labels, (0, 1)).all():
        raise ValueError("labels must contain only 0 and 1")
    shots = _check_count("shots", shots)
    labels = labels.astype(bool)
    per_row = labels.sum(1)
    rule = _default_rule(labels) if rule is None else rule
    if rule not in (RULE_RANDOM, RULE_GREEDY):
        raise ValueError(f"rule must be None, {RULE_RANDOM!r} or {RULE_GREEDY!r}, got {rule!r}")
    if rule == RULE_RANDOM and per_row.max() > 1:
        raise ValueError(f"rule {RULE_RANDOM!r} needs single-label data; use {RULE_GREEDY!r} for multi-label")
    num_classes = labels.shape[1]

    if rule == RULE_RANDOM:
        rng = np.random.default_rng(seed)
        chosen = []
        for c in range(num_classes):
            pool = np.flatnonzero(labels[:, c])
            if len(pool) < shots:
                raise ValueError(
                    f"few-shot ({rule}, {shots} shots): {_class_label(c, classnames)} has only "
                    f"{len(pool)} images in the train pool"
                )
            chosen.append(rng.choice(pool, size=shots, replace=False))
        return np.sort(np.concatenate(chosen)).astype(np.int64)

    # Greedy file-order rule (notes: Protocol, k-shot multi-label)
    counts = np.zeros(num_classes, dtype=np.int64)
    taken = []
    for i in np.flatnonzero(per_row > 0):
        row = labels[i]
        if (counts[row] < shots).all():
            counts[row] += 1
            taken.append(i)
            if (counts == shots).all():
                break
    short = np.flatnonzero(counts < shots)
    if len(short):
        c = int(short[0])
        raise ValueError(
            f"few-shot ({rule}, {shots} shots): {_class_label(c, classnames)} got only {counts[c]} of "
            f"{shots} images (the pool has {int(labels[:, c].sum())} images with this label)"
            + (f"; {len(short) - 1} more classes are short" if len(short) > 1 else "")
        )
    return np.asarray(taken, dtype=np.int64)


def split_path(out_dir: str | Path, dataset: str, shots: int, seed: int) -> Path:
    """Where :func:`few_shot_split` keeps the list: ``<out_dir>/<dataset>_<shots>shot_seed<seed>.txt``."""
    return Path(out_dir) / f"{_safe_name(dataset)}_{shots}shot_seed{seed}.txt"


def few_shot_split(
    data: RetrievalData,
    shots: int,
    seed: int = 0,
    out_dir: str | Path | None = None,
    *,
    rule: str | None = None,
) -> ImageList:
    """The k-shot training set of ``data`` (a subset of its train pool), saved as a plain-text list.

    With ``out_dir`` the list goes to :func:`split_path`; if that file already exists it must be what
    the same (dataset, shots, seed, rule) derives from the current train pool, otherwise ``ValueError``
    (the data changed since the file was written). Without ``out_dir`` nothing is written.
    """
    shots = _check_count("shots", shots)
    rule = _default_rule(data.train.labels) if rule is None else rule
    idx = few_shot_indices(data.train.labels, shots, seed, rule=rule, classnames=data.classnames)
    ids = [data.train.ids[i] for i in idx]
    if out_dir is not None:
        path = split_path(out_dir, data.name, shots, seed)
        want = {"dataset": data.name, "shots": str(shots), "seed": str(seed), "rule": rule}
        if path.exists():
            saved, header = load_split(path)
            differs = {k: header.get(k) for k, v in want.items() if header.get(k) != v}
            if differs:
                raise ValueError(
                    f"split file {path} was made with {differs}, not {want}; delete it or use another out_dir"
                )
            if saved != ids:
                gone = sorted(set(saved) - set(ids))
                new = sorted(set(ids) - set(saved))
                raise ValueError(
                    f"split file {path} does not match the list re-derived from {data.name!r} "
                    f"(shots={shots}, seed={seed}, rule={rule}): the train pool changed since it was "
                    f"written ({len(gone)} ids only in the file: {_examples(gone, 3)}; {len(new)} only "
                    f"in the re-derived list: {_examples(new, 3)}). Restore the data, or delete the file "
                    "to accept the new split"
                )
        else:
            save_split(path, ids, dataset=data.name, shots=shots, seed=seed, rule=rule)
    return data.train.subset(idx)


# --------------------------------------------------------------------------------------------------
# Protocol split shared by cifar10 and folder (query / train pool / database = all but query)
# --------------------------------------------------------------------------------------------------


def _derive_protocol_split(
    y: np.ndarray,
    num_classes: int,
    query_per_class: int,
    train_per_class: int | None,
    seed: int,
    classnames: Sequence[str],
    dataset: str,
) -> tuple[np.ndarray, np.ndarray]:
    """Per class: a seeded permutation; the first ``query_per_class`` are queries, the next
    ``train_per_class`` (all the rest if None) the train pool. Indices come back sorted."""
    rng = np.random.default_rng(seed)
    query, train = [], []
    need = query_per_class + (train_per_class or 1)
    for c in range(num_classes):
        members = np.flatnonzero(y == c)
        if len(members) < need:
            raise ValueError(
                f"{dataset}: {_class_label(c, classnames)} has {len(members)} images; the split needs "
                f"{need} (query_per_class={query_per_class}, train_per_class={train_per_class})"
            )
        perm = rng.permutation(members)
        query.append(perm[:query_per_class])
        end = None if train_per_class is None else query_per_class + train_per_class
        train.append(perm[query_per_class:end])
    return np.sort(np.concatenate(query)), np.sort(np.concatenate(train))


def _protocol_split(
    dataset: str,
    ids: Sequence[str],
    y: np.ndarray,
    classnames: Sequence[str],
    *,
    query_per_class: int,
    train_per_class: int | None,
    seed: int,
    split_dir: Path | None,
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Query and train-pool indices, read from ``split_dir`` when saved there, else derived (and saved).

    The saved files win over re-derivation, so a split survives numpy changing its random streams.
    """
    num_classes = len(classnames)

    def derive() -> tuple[np.ndarray, np.ndarray]:
        return _derive_protocol_split(
            y, num_classes, query_per_class, train_per_class, seed, classnames, dataset
        )

    if split_dir is None:
        return (*derive(), [])
    tpc = "rest" if train_per_class is None else str(train_per_class)
    stem = f"{_safe_name(dataset)}_q{query_per_class}_t{tpc}_seed{seed}"
    paths = {"query": split_dir / f"{stem}.query.txt", "train": split_dir / f"{stem}.train.txt"}
    header = {"dataset": dataset, "seed": seed, "rule": RULE_PROTOCOL}
    header.update(query_per_class=query_per_class, train_per_class=tpc)
    index = {i: n for n, i in enumerate(ids)}
    loaded: dict[str, np.ndarray] = {}
    for role, path in paths.items():
        if not path.exists():
            continue
        saved, got = load_split(path)
        want = {k: str(v) for k, v in {**header, "split": role}.items()}
        differs = {k: got.get(k) for k, v in want.items() if got.get(k) != v}
        if differs:
            raise ValueError(f"split file {path} has {differs}, expected {want}; delete it to re-derive")
        unknown = [i for i in saved if i not in index]
        if unknown:
            raise ValueError(
                f"split file {path} lists {len(unknown)} ids not in the {dataset} data "
                f"({_examples(unknown, 3)}); the data changed: restore it or delete the file to re-derive"
            )
        loaded[role] = np.asarray([index[i] for i in saved], dtype=np.int64)
    if len(loaded) < 2:
        derived = dict(zip(("query", "train"), derive(), strict=True))
        for role, idx in loaded.items():
            if not np.array_equal(idx, derived[role]):
                partner = paths["train" if role == "query" else "query"]
                raise ValueError(
                    f"split file {paths[role]} exists but its partner {partner} is missing and "
                    "re-deriving gives a different list; delete both files to re-derive"
                )
        try:
            for role in ("query", "train"):
                if role not in loaded:
                    ids_out = [ids[i] for i in derived[role]]
                    _write_list(paths[role], ids_out, {**header, "split": role})
        except OSError as e:
            raise OSError(
                f"cannot write the split to {split_dir} ({e}); pass split_dir= a writable folder"
            ) from e
        loaded = derived
    q, t = loaded["query"], loaded["train"]
    problems = []
    if np.intersect1d(q, t).size:
        problems.append("query and train pool overlap")
    for role, idx, per in (("query", q, query_per_class), ("train", t, train_per_class)):
        counts = np.bincount(y[idx], minlength=num_classes)
        if per is not None and (counts != per).any():
            problems.append(f"{role} has {counts.min()}..{counts.max()} images per class, expected {per}")
    if problems:
        raise ValueError(
            f"split files {paths['query']} / .train.txt do not follow the protocol: {'; '.join(problems)}"
        )
    return q, t, [str(p) for p in paths.values()]


# --------------------------------------------------------------------------------------------------
# CIFAR-10 (python pickle archive)
# --------------------------------------------------------------------------------------------------

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
        f"`mkdir -p {root} && curl -o {root}/{CIFAR10_ARCHIVE} {CIFAR10_URL}`, "
        "or pass download=True (needs network). See data/README.md"
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
    from tqdm.auto import tqdm

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
    query_per_class = _check_count("query_per_class", query_per_class)
    train_per_class = _check_count("train_per_class", train_per_class)
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
    q, t, files = _protocol_split(
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


# --------------------------------------------------------------------------------------------------
# List files (DeepHash-pytorch / released KALAHash format)
# --------------------------------------------------------------------------------------------------

# Role -> accepted file names: the release's (train/query/gallery), then DeepHash-pytorch's.
LIST_NAMES = {
    "train": ("train.txt",),
    "query": ("query.txt", "test.txt"),
    "database": ("gallery.txt", "database.txt"),
}


def read_classnames(path: str | Path) -> list[str]:
    """Class names, one a line (blank lines skipped); the order is the label columns' order."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"class-name file {path} not found: it should hold one class name a line")
    names = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not names:
        raise ValueError(f"class-name file {path} is empty: expected one class name a line")
    dupes = [n for n, k in Counter(names).items() if k > 1]
    if dupes:
        raise ValueError(f"class-name file {path} repeats {_examples(dupes)}")
    return names


def read_list_file(
    path: str | Path, num_classes: int | None = None, *, classnames_source: str = "the class names"
) -> tuple[list[str], np.ndarray]:
    """Parse ``path then C 0/1 values`` lines: ``(paths as written, labels (N, C) uint8)``.

    Blank lines and lines starting with ``#`` are skipped; paths cannot contain spaces. Errors name the
    file and line.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"list file {path} not found")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"list file {path} is not UTF-8 text ({e})") from e
    width = num_classes
    paths: list[str] = []
    rows: list[str] = []
    line_numbers: list[int] = []
    for n, line in enumerate(text.splitlines(), 1):
        tokens = line.split()
        if not tokens or tokens[0].startswith("#"):
            continue
        expected = f"an image path then {width if width is not None else 'C'} label values (0 or 1)"
        if len(tokens) < 2:
            raise ValueError(f"{path}, line {n}: expected {expected}, got {line.strip()[:80]!r}")
        values = tokens[1:]
        if width is None:
            width = len(values)
        if len(values) != width:
            if not paths and num_classes is not None:
                raise ValueError(
                    f"{path} has {len(values)} label values per line (line {n}) but {classnames_source} "
                    f"lists {num_classes} classes: the label width must equal the number of class names"
                )
            raise ValueError(f"{path}, line {n}: expected {expected}, found {len(values)} values")
        joined = "".join(values)
        if len(joined) != width or not set(joined) <= {"0", "1"}:
            col, bad = next((c, v) for c, v in enumerate(values) if v not in ("0", "1"))
            raise ValueError(f"{path}, line {n}: label value {bad!r} in column {col + 1} is not 0 or 1")
        paths.append(tokens[0])
        rows.append(joined)
        line_numbers.append(n)
    if not paths:
        raise ValueError(f"list file {path} lists no images (empty data set)")
    assert width is not None
    flat = np.frombuffer("".join(rows).encode("ascii"), dtype=np.uint8) - ord("0")
    return paths, flat.reshape(len(paths), width)


def _pick_image_root(base: Path, image_root: Path | None, firsts: Sequence[tuple[str, Path, str]]) -> Path:
    """``image_root`` if given, else ``<base>/images`` or ``<base>``: whichever holds the listed images.

    ``firsts`` holds (role, list file, first listed path) per list: checking those three files makes a
    wrong layout fail at load time rather than mid-training.
    """
    candidates = [image_root] if image_root is not None else [base / "images", base]

    def found(root: Path, listed: str) -> bool:
        return (Path(listed) if os.path.isabs(listed) else root / listed).is_file()

    for root in candidates:
        if all(found(root, listed) for _, _, listed in firsts):
            return root
    role, list_path, listed = next(
        (f for f in firsts if not any(found(root, f[2]) for root in candidates)), firsts[0]
    )
    tried = " or ".join(str(root / listed) for root in candidates)
    where = str(image_root) if image_root is not None else f"{base}/images/ (or at paths relative to {base})"
    raise FileNotFoundError(
        f"first image of the {role} list {list_path} not found at {tried}: put the images under {where} "
        "as the lists name them, or pass image_root= the folder the listed paths are relative to"
    )


def _list_dataset(
    name: str,
    lists: Mapping[str, Path],
    classnames: Sequence[str],
    classnames_source: str,
    base: Path,
    image_root: Path | None,
    topk: int | None,
    info: dict[str, Any],
) -> RetrievalData:
    parsed = {
        role: (path, *read_list_file(path, len(classnames), classnames_source=classnames_source))
        for role, path in lists.items()
    }
    root = _pick_image_root(base, image_root, [(r, p, paths[0]) for r, (p, paths, _) in parsed.items()])
    splits = {}
    for role, (_, paths, labels) in parsed.items():
        files = [p if os.path.isabs(p) else os.path.join(root, p) for p in paths]
        splits[role] = ImageList(files, labels, paths)
    info = {**info, "lists": {r: str(p) for r, p in lists.items()}, "image_root": str(root)}
    return RetrievalData(
        name, list(classnames), splits["query"], splits["train"], splits["database"], topk, info
    )


def _find_lists(base: Path, dataset: str) -> tuple[dict[str, Path], str]:
    found: dict[str, Path] = {}
    for role, names in LIST_NAMES.items():
        present = [base / n for n in names if (base / n).is_file()]
        if not present:
            raise FileNotFoundError(
                f"{dataset}: no {role} list in {base}: expected {' or '.join(names)} (one "
                "'relative/path.jpg 0 1 0 ...' line per image). See data/README.md"
            )
        if len(present) > 1:
            raise ValueError(
                f"{dataset}: {base} has both {present[0].name} and {present[1].name} for the {role} list; "
                "remove one, or use the 'listfile' dataset with explicit paths"
            )
        found[role] = present[0]
    release = found["query"].name == "query.txt" and found["database"].name == "gallery.txt"
    deephash = found["query"].name == "test.txt" and found["database"].name == "database.txt"
    convention = (
        "release (train/query/gallery.txt)"
        if release
        else "DeepHash-pytorch (train/test/database.txt)"
        if deephash
        else "mixed (" + ", ".join(p.name for p in found.values()) + ")"
    )
    return found, convention


def _load_deephash_folder(
    dataset: str, data_root: Path | None, download: bool, image_root: str | Path | None, topk: int | None
) -> RetrievalData:
    base = data_root if data_root is not None else default_data_root(dataset)
    contents = (
        "train.txt, query.txt (or test.txt), gallery.txt (or database.txt), classnames.txt and the images "
        "(in images/ or at paths relative to the folder)"
    )
    no_download = " (it cannot be downloaded automatically)" if download else ""
    if not base.is_dir():
        raise FileNotFoundError(
            f"{dataset} data folder {base} does not exist{no_download}: it should contain {contents}. "
            "See data/README.md"
        )
    lists, convention = _find_lists(base, dataset)
    names_file = base / "classnames.txt"
    if not names_file.is_file():
        raise FileNotFoundError(
            f"{dataset}: {names_file} not found: it should hold the class names, one a line, in the order "
            "of the label columns (the release ships it as data/<dataset>/classnames.txt)"
        )
    classnames = read_classnames(names_file)
    info = {"convention": convention, "classnames_file": str(names_file)}
    root = Path(image_root).expanduser() if image_root is not None else None
    return _list_dataset(dataset, lists, classnames, str(names_file), base, root, topk, info)


@register_dataset("nuswide", aliases=("nus-wide", "nus_wide", "nuswide21"))
def load_nuswide(
    data_root: Path | None,
    *,
    seed: int = 0,
    download: bool = False,
    image_root: str | Path | None = None,
    topk: int | None = 5000,
) -> RetrievalData:
    """NUS-WIDE (21 concepts) from DeepHash-style list files in ``data_root`` (default
    ``data/nuswide``): ``train.txt`` plus ``query.txt``/``gallery.txt`` (release names) or
    ``test.txt``/``database.txt`` (DeepHash-pytorch names), and ``classnames.txt``. Listed paths are
    relative to ``image_root``, by default ``<data_root>/images`` if the images are there, else
    ``data_root``. mAP@5000. ``info["convention"]`` says which list names were found."""
    return _load_deephash_folder("nuswide", data_root, download, image_root, topk)


@register_dataset("coco", aliases=("mscoco", "ms-coco", "coco2014"))
def load_coco(
    data_root: Path | None,
    *,
    seed: int = 0,
    download: bool = False,
    image_root: str | Path | None = None,
    topk: int | None = 5000,
) -> RetrievalData:
    """MS-COCO (80 categories), laid out like :func:`load_nuswide` in ``data_root`` (default
    ``data/coco``). mAP@5000."""
    return _load_deephash_folder("coco", data_root, download, image_root, topk)


@register_dataset("listfile", aliases=("lists",))
def load_listfile(
    data_root: Path | None,
    *,
    seed: int = 0,
    download: bool = False,
    train_list: str | Path,
    query_list: str | Path,
    database_list: str | Path,
    classnames: str | Path | Sequence[str],
    image_root: str | Path | None = None,
    topk: int | None = None,
    name: str = "listfile",
) -> RetrievalData:
    """Any data set in the list-file format, with explicit paths.

    Relative list and class-name paths are taken from ``data_root`` when given (else the working
    directory). ``classnames`` is a file (one name a line) or a list of names. Image paths in the lists
    are relative to ``image_root``, by default ``<base>/images`` or ``<base>`` (whichever holds the
    images), where ``base`` is ``data_root`` or the database list's folder. ``name`` names the data set
    in split files and reports.
    """
    base_in = data_root if data_root is not None else Path.cwd()

    def resolve(p: str | Path) -> Path:
        p = Path(p).expanduser()
        return p if p.is_absolute() else base_in / p

    if data_root is not None and not data_root.is_dir():
        raise FileNotFoundError(f"listfile data folder {data_root} does not exist")
    lists = {"train": resolve(train_list), "query": resolve(query_list), "database": resolve(database_list)}
    for role, path in lists.items():
        if not path.is_file():
            raise FileNotFoundError(f"listfile: {role} list {path} not found")
    if isinstance(classnames, (str, Path)):
        names_path = resolve(classnames)
        names, source = read_classnames(names_path), str(names_path)
    else:
        names, source = [str(c) for c in classnames], "classnames="
        if not names:
            raise ValueError("classnames must name at least one class")
    base = data_root if data_root is not None else lists["database"].parent
    root = resolve(image_root) if image_root is not None else None
    return _list_dataset(name, lists, names, source, base, root, topk, {"convention": "explicit paths"})


# --------------------------------------------------------------------------------------------------
# Folder per class (a user's own images)
# --------------------------------------------------------------------------------------------------

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
            "the 'folder' dataset needs data_root= a folder with one sub-folder of images per class"
        )
    query_per_class = _check_count("query_per_class", query_per_class)
    train_per_class = _check_count("train_per_class", train_per_class, allow_none=True)
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
    q, t, split_files = _protocol_split(
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


# --------------------------------------------------------------------------------------------------
# Offline worlds (kalahash.world, imported only when asked for)
# --------------------------------------------------------------------------------------------------


def _world_loader(world_name: str) -> Loader:
    def load(data_root: Path | None, *, seed: int = 0, download: bool = False) -> RetrievalData:
        from kalahash.world import make_retrieval_data

        return make_retrieval_data(world_name, seed)

    load.__name__ = load.__qualname__ = f"load_{world_name.replace('-', '_')}"
    load.__doc__ = f"The offline world {world_name!r}, generated by kalahash.world (data_root is unused)."
    return load


for _world in ("shapes", "shapes-multi"):
    register_dataset(_world)(_world_loader(_world))


# --------------------------------------------------------------------------------------------------
# Split integrity
# --------------------------------------------------------------------------------------------------


def data_fingerprint(data: RetrievalData) -> str:
    """sha256 over the class names and, per split (query, train, database), the ids and label rows.

    Depends only on what the splits are, not on where the files live, so it is stable across runs and
    machines; provenance records it. Image contents are not included (see ``DataCheck.content_fingerprint``).
    """
    h = hashlib.sha256(b"kalahash-data-v1\n")
    h.update(("\n".join(data.classnames) + "\n\n").encode("utf-8"))
    for split, images in data.splits().items():
        h.update(f"{split} {len(images)} {images.num_classes}\n".encode())
        h.update(("\n".join(images.ids) + "\n").encode("utf-8"))
        h.update(np.ascontiguousarray(images.labels, dtype=np.uint8).tobytes())
    return h.hexdigest()


@dataclass
class DataCheck:
    """What :func:`check_data` found. ``ok`` is False when there is any problem; notes are harmless."""

    name: str
    ok: bool
    problems: list[str]
    counts: pd.DataFrame
    fingerprint: str
    sizes: dict[str, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    content_hash: str | None = None
    content_fingerprint: str | None = None

    def report(self) -> str:
        status = "OK" if self.ok else f"{len(self.problems)} problem(s)"
        sizes = " · ".join(f"{s} {n:,}" for s, n in self.sizes.items())
        per_class = ", ".join(
            f"{s} {int(self.counts.loc[s].min()):,}–{int(self.counts.loc[s].max()):,}"
            for s in self.counts.index
        )
        lines = [
            f"check-data {self.name}: {status}",
            f"  images: {sizes}; {self.counts.shape[1]} classes; per class: {per_class}",
            f"  content compared by: {self.content_hash or 'not compared (content_hash=False)'}",
            f"  fingerprint: sha256:{self.fingerprint}",
        ]
        lines += [f"  PROBLEM: {p}" for p in self.problems]
        lines += [f"  note: {n}" for n in self.notes]
        return "\n".join(lines)


def _check_file(path: str, full_decode: bool) -> tuple[str | None, str | None]:
    """(blake2b of the file bytes, None) or (hash or None, what is wrong)."""
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except FileNotFoundError:
        return None, "missing"
    except OSError as e:
        return None, f"unreadable ({e.strerror or e})"
    digest = hashlib.blake2b(raw, digest_size=16).hexdigest()
    try:
        with Image.open(io.BytesIO(raw)) as img:
            if full_decode:
                img.load()
            else:
                img.verify()
    except Exception as e:
        return digest, f"not a readable image ({type(e).__name__}: {e})"
    return digest, None


def check_data(
    data: RetrievalData,
    *,
    content_hash: bool = True,
    progress: bool = True,
    full_decode: bool = False,
    workers: int = 8,
) -> DataCheck:
    """Check a retrieval data set before training on it.

    - every listed file exists and opens (PIL ``verify``, or a full decode with ``full_decode=True``);
      in-memory images are present by construction;
    - counts per split and class (``counts``: split x class DataFrame);
    - ids repeated within a split, and overlaps between splits by id and, with ``content_hash``, by
      content: decoded pixels for in-memory images, file bytes (blake2b) for files, so a re-encoded copy
      is not caught. The protocol allows the train pool inside the database (database = all but query);
      the query must overlap neither;
    - the same id with different labels in two splits, classes absent from the train pool.

    ``fingerprint`` (:func:`data_fingerprint`) identifies the splits' ids and labels.
    """
    import pandas as pd

    problems: list[str] = []
    notes: list[str] = []
    splits = data.splits()

    for split, images in splits.items():
        if len(images) == 0:
            problems.append(f"{split} is empty")
        repeated = [i for i, n in Counter(images.ids).items() if n > 1]
        if repeated:
            problems.append(f"{len(repeated)} ids listed more than once in {split}: {_examples(repeated)}")
        unlabeled = int((images.labels.sum(1) == 0).sum())
        if unlabeled:
            notes.append(f"{unlabeled} {split} images have no label")

    # Overlaps by id (notes: Protocol: database = all but query; train pool may sit inside it)
    id_sets = {s: set(images.ids) for s, images in splits.items()}
    for other in ("train", "database"):
        both = sorted(id_sets["query"] & id_sets[other])
        if both:
            problems.append(f"{len(both)} query images are also in {other} (same id): {_examples(both)}")
    outside = len(id_sets["train"] - id_sets["database"])
    if outside:
        notes.append(f"{outside} train-pool images are not in the database (allowed)")
    conflicts = []
    for a, b in (("query", "train"), ("query", "database"), ("train", "database")):
        position = {i: n for n, i in enumerate(splits[b].ids)}
        pairs = [(n, position[i]) for n, i in enumerate(splits[a].ids) if i in position]
        if pairs:
            ia, ib = np.asarray(pairs).T
            differ = (splits[a].labels[ia] != splits[b].labels[ib]).any(1)
            conflicts += [f"{splits[a].ids[n]} ({a} vs {b})" for n in ia[differ]]
    if conflicts:
        problems.append(
            f"{len(conflicts)} ids have different labels in different splits: {_examples(conflicts)}"
        )

    # Files: exist, open, hash bytes (each distinct file once; database usually contains the train pool)
    hashes: dict[str, list[str | None]] = {}
    file_paths = sorted({str(p) for images in splits.values() if not images.in_memory for p in images.images})
    file_results: dict[str, tuple[str | None, str | None]] = {}
    if file_paths:
        from tqdm.auto import tqdm

        bar = tqdm(
            total=len(file_paths),
            desc=f"check {data.name}",
            unit="file",
            disable=not progress or len(file_paths) < 500,
        )
        with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
            for path, result in zip(
                file_paths, pool.map(lambda p: _check_file(p, full_decode), file_paths), strict=True
            ):
                file_results[path] = result
                bar.update()
        bar.close()
        for what in ("missing", "unreadable", "not a readable image"):
            bad = [p for p, (_, err) in file_results.items() if err is not None and err.startswith(what)]
            if bad:
                detail = file_results[bad[0]][1]
                problems.append(f"{len(bad)} files {what}: {_examples(bad)} (first: {detail})")
    kinds = set()
    for split, images in splits.items():
        if not content_hash:
            break
        if images.in_memory:
            kinds.add("pixels (decoded uint8 arrays, blake2b)")
            rows = np.ascontiguousarray(images.images)
            hashes[split] = [hashlib.blake2b(r.tobytes(), digest_size=16).hexdigest() for r in rows]
        else:
            kinds.add("file bytes (blake2b)")
            hashes[split] = [file_results[str(p)][0] for p in images.images]
    content_fp = None
    if content_hash:
        if len(kinds) > 1:
            notes.append("splits mix in-memory and file images: content compared within each kind only")
        query_by_hash: dict[str, list[str]] = {}
        for i, d in zip(splits["query"].ids, hashes.get("query", []), strict=False):
            if d is not None:
                query_by_hash.setdefault(d, []).append(i)
        for other in ("train", "database"):
            pairs = [
                f"{qid} = {oid}"
                for oid, d in zip(splits[other].ids, hashes.get(other, []), strict=False)
                if d in query_by_hash
                for qid in query_by_hash[d]
                if qid != oid
            ]
            if pairs:
                problems.append(
                    f"{len(pairs)} query images have identical content in {other} under another id: "
                    f"{_examples(sorted(pairs))}"
                )
        for split, digests in hashes.items():
            ids_by_hash: dict[str, set[str]] = {}
            for d, n in Counter(d for d in digests if d is not None).items():
                if n > 1:
                    ids_by_hash[d] = set()
            for i, d in zip(splits[split].ids, digests, strict=True):
                if d in ids_by_hash:
                    ids_by_hash[d].add(i)
            groups = [sorted(g) for g in ids_by_hash.values() if len(g) > 1]
            if groups:
                extra = sum(len(g) - 1 for g in groups)
                example = " = ".join(groups[0][:3])
                notes.append(f"{split} holds {extra} content duplicates under other ids, e.g. {example}")
        h = hashlib.sha256()
        for split in SPLITS:
            h.update(("\n".join(d or "-" for d in hashes.get(split, [])) + "\n").encode())
        content_fp = h.hexdigest()

    counts = pd.DataFrame(
        np.stack([images.labels.sum(0) for images in splits.values()]).astype(np.int64),
        index=pd.Index(list(SPLITS), name="split"),
        columns=pd.Index(list(data.classnames), name="class"),
    )
    absent = [c for c, n in counts.loc["train"].items() if n == 0]
    if absent:
        problems.append(f"classes with no train-pool image (no few-shot split possible): {_examples(absent)}")
    for split in ("query", "database"):
        absent = [c for c, n in counts.loc[split].items() if n == 0]
        if absent:
            notes.append(f"classes with no {split} image: {_examples(absent)}")

    return DataCheck(
        name=data.name,
        ok=not problems,
        problems=problems,
        counts=counts,
        fingerprint=data_fingerprint(data),
        sizes={s: len(images) for s, images in splits.items()},
        notes=notes,
        content_hash=" + ".join(sorted(kinds)) if content_hash else None,
        content_fingerprint=content_fp,
    )
