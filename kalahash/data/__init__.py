"""Retrieval data sets: one image-list type, one registry of loaders, the few-shot protocol.

Every benchmark is a :class:`RetrievalData` (query, train pool, database) built by a loader registered
under a short name; :func:`load_dataset` is the only entry point notebooks and the CLI need::

    data = load_dataset("cifar10", "data/cifar10", seed=0)
    train = few_shot_split(data, shots=4, seed=0, out_dir="data/cifar10/splits")
    check = check_data(data)          # files, overlaps, duplicates, fingerprint

What lives where:

- ``types``: :class:`ImageList`, :class:`RetrievalData`, ``SPLITS``;
- ``registry``: :func:`register_dataset`, :func:`load_dataset`, name and option checks;
- ``protocol``: few-shot training sets (:class:`FewShotSet`; classes the pool cannot fill raise a
  :class:`ShortShotsWarning`, or an error with ``strict=True``) and the plain-text split files;
- ``cifar10``, ``listfiles`` (``nuswide``, ``coco``, ``listfile``), ``folder``: the loaders;
- ``checks``: :func:`check_data`, :func:`data_fingerprint` (ids and labels), :func:`content_stamp`
  (file sizes and times, in-memory pixels: whether a remembered check still holds) and
  :func:`file_stamp` (one file's size and time, or its error; the prefix cache keys on it too);
- ``_util``: small checks and message pieces the loaders and the protocol share.

The offline worlds (``objects10``, ``shapes`` and their multi-label sets) are registered by
:mod:`kalahash.worlds` itself (``kalahash/__init__`` imports it). This package imports nothing of kalahash but ``kalahash.fileio``:
never a world, the backbones, adapters, hashing, training, experiments or the CLI.
``data/README.md`` says where each data set goes.
"""

from __future__ import annotations

from .checks import DataCheck, check_data, content_stamp, data_fingerprint, file_stamp
from .cifar10 import (
    CIFAR10_ARCHIVE,
    CIFAR10_FOLDER,
    CIFAR10_MD5,
    CIFAR10_URL,
    download_cifar10,
    file_md5,
    load_cifar10,
    verify_md5,
)
from .folder import IMAGE_EXTENSIONS, load_folder
from .listfiles import LIST_NAMES, load_coco, load_listfile, load_nuswide, read_classnames, read_list_file
from .protocol import (
    RULE_GREEDY,
    RULE_PROTOCOL,
    RULE_RANDOM,
    SPLIT_FORMAT,
    FewShotSet,
    ShortShotsWarning,
    few_shot_indices,
    few_shot_split,
    load_split,
    save_split,
    split_path,
)
from .registry import (
    DATASETS,
    Loader,
    default_data_root,
    load_dataset,
    register_dataset,
    resolve_dataset_name,
)
from .types import IMAGE_FORMATS, SPLITS, ImageList, RetrievalData, Transform, open_image

__all__ = [
    "CIFAR10_ARCHIVE",
    "CIFAR10_FOLDER",
    "CIFAR10_MD5",
    "CIFAR10_URL",
    "DATASETS",
    "IMAGE_EXTENSIONS",
    "IMAGE_FORMATS",
    "LIST_NAMES",
    "RULE_GREEDY",
    "RULE_PROTOCOL",
    "RULE_RANDOM",
    "SPLITS",
    "SPLIT_FORMAT",
    "DataCheck",
    "FewShotSet",
    "ImageList",
    "Loader",
    "RetrievalData",
    "ShortShotsWarning",
    "Transform",
    "check_data",
    "content_stamp",
    "data_fingerprint",
    "default_data_root",
    "download_cifar10",
    "few_shot_indices",
    "few_shot_split",
    "file_md5",
    "file_stamp",
    "load_cifar10",
    "load_coco",
    "load_dataset",
    "load_folder",
    "load_listfile",
    "load_nuswide",
    "load_split",
    "open_image",
    "read_classnames",
    "read_list_file",
    "register_dataset",
    "resolve_dataset_name",
    "save_split",
    "split_path",
    "verify_md5",
]
