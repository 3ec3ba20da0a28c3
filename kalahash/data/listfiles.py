"""Data sets given as list files (DeepHash-pytorch / released KALAHash format): ``nuswide``, ``coco``
and ``listfile`` (any list files, explicit paths).

A list file has one ``relative/path.jpg 0 1 0 ...`` line per image; ``classnames.txt`` names the
label columns, one a line.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ._util import examples
from .registry import Loader, default_data_root, register_dataset
from .types import ImageList, RetrievalData

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
        raise ValueError(f"class-name file {path} repeats {examples(dupes)}")
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
        "as the lists name them (from Python, image_root= names the folder the listed paths are relative to)"
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


def _deephash_loader(dataset: str, doc: str) -> Loader:
    """The loader of a DeepHash-style folder of list files: ``nuswide`` and ``coco`` take the same options."""

    def load(
        data_root: Path | None,
        *,
        seed: int = 0,
        download: bool = False,
        image_root: str | Path | None = None,
        topk: int | None = 5000,
    ) -> RetrievalData:
        return _load_deephash_folder(dataset, data_root, download, image_root, topk)

    load.__name__ = load.__qualname__ = f"load_{dataset}"
    load.__doc__ = doc
    return load


load_nuswide = register_dataset("nuswide", aliases=("nus-wide", "nus_wide", "nuswide21"))(
    _deephash_loader(
        "nuswide",
        """NUS-WIDE (21 concepts) from DeepHash-style list files in ``data_root`` (default
    ``data/nuswide``): ``train.txt`` plus ``query.txt``/``gallery.txt`` (release names) or
    ``test.txt``/``database.txt`` (DeepHash-pytorch names), and ``classnames.txt``. Listed paths are
    relative to ``image_root``, by default ``<data_root>/images`` if the images are there, else
    ``data_root``. mAP@5000. ``info["convention"]`` says which list names were found.""",
    )
)
load_coco = register_dataset("coco", aliases=("mscoco", "ms-coco", "coco2014"))(
    _deephash_loader(
        "coco",
        """MS-COCO (80 categories), laid out like :func:`load_nuswide` in ``data_root`` (default
    ``data/coco``). mAP@5000.""",
    )
)


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
