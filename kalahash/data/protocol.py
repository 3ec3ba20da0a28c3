"""The few-shot protocol and its split files (notes: Protocol).

Split files are plain text: ``# key: value`` header lines, then one image id a line, so that every
method (and every person) sees the same images. :func:`few_shot_split` draws and keeps the k-shot
training set; :func:`saved_protocol_split` is the query / train pool split that cifar10 and folder share,
kept in split files (the offline worlds draw theirs from their own streams:
``kalahash.worlds.toolkit.draw_protocol_split``).
"""

from __future__ import annotations

import warnings
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..fileio import atomic_write_text
from ._util import check_count, class_label, examples, safe_name
from .checks import data_fingerprint
from .types import ImageList, RetrievalData

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
        raise ValueError(f"split ids must be unique; repeated: {examples(dupes)}")
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


class ShortShotsWarning(UserWarning):
    """A few-shot training set has fewer than ``shots`` images for some classes, and training goes on."""


class FewShotSet(ImageList):
    """A k-shot training set: an :class:`ImageList` that also says which classes fell short.

    ``shortfall`` maps each class with fewer than ``shots`` images to the number it got (empty when every
    class is full); :attr:`shortfall_text` is how split files and results rows record it.
    """

    def __init__(self, images: ImageList, shots: int, shortfall: Mapping[str, int]) -> None:
        super().__init__(images.images, images.labels, images.ids, images.transform)
        self.shots = shots
        self.shortfall = dict(shortfall)

    @property
    def shortfall_text(self) -> str:
        """``"none"``, or ``"person=0/1, car=0/1"`` (class=got/wanted)."""
        return _shortfall_text(self.shortfall, self.shots)


def _shortfall(taken: np.ndarray, shots: int, classnames: Sequence[str] | None) -> dict[str, int]:
    """``{class: images taken}`` for every class with fewer than ``shots`` among the taken label rows."""
    counts = taken.sum(0)
    return {
        classnames[c] if classnames is not None and c < len(classnames) else f"class {c}": int(counts[c])
        for c in np.flatnonzero(counts < shots)
    }


def _shortfall_text(shortfall: Mapping[str, int], shots: int) -> str:
    return ", ".join(f"{name}={got}/{shots}" for name, got in shortfall.items()) or "none"


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
    strict: bool = False,
) -> np.ndarray:
    """Indices of a k-shot training set drawn from a train pool, in ascending (pool) order.

    Rules (notes: Protocol); ``rule=None`` picks by the labels:

    - ``"random-per-class"`` (every labelled row has exactly one label): for each class in index order,
      ``shots`` rows drawn without replacement by ``np.random.default_rng(seed)``; a class with fewer
      images in the pool gives all it has.
    - ``"greedy-file-order"`` (multi-label): one pass in pool order; a row is taken only if none of its
      labels has ``shots`` images yet; a taken row counts for all its labels; stop when every class has
      ``shots``. It does not use the seed (the released splits do not depend on one). A class whose
      images all carry labels that are already full ends short, as in the released MS-COCO splits
      (at 1 shot 6 of its 80 classes get no image).

    Rows without any label are never taken (they carry no supervision). When a class ends with fewer
    than ``shots`` images, a :class:`ShortShotsWarning` names each such class (``got/wanted``) and the
    set is returned as it is, like the release does; ``strict=True`` raises ``ValueError`` instead.
    """
    labels = np.asarray(labels)
    if labels.ndim != 2 or labels.shape[0] == 0:
        raise ValueError(f"labels must be a non-empty 2-D 0/1 matrix (N x C), got shape {labels.shape}")
    if not np.isin(labels, (0, 1)).all():
        raise ValueError("labels must contain only 0 and 1")
    shots = check_count("shots", shots)
    labels = labels.astype(bool)
    per_row = labels.sum(1)
    rule = _default_rule(labels) if rule is None else rule
    if rule not in (RULE_RANDOM, RULE_GREEDY):
        raise ValueError(f"rule must be None, {RULE_RANDOM!r} or {RULE_GREEDY!r}, got {rule!r}")
    if rule == RULE_RANDOM and per_row.max() > 1:
        raise ValueError(f"rule {RULE_RANDOM!r} needs single-label data; use {RULE_GREEDY!r} for multi-label")
    idx = _draw_random(labels, shots, seed) if rule == RULE_RANDOM else _draw_greedy(labels, shots)
    short = _shortfall(labels[idx], shots, classnames)
    if short:
        c = int(np.flatnonzero(labels[idx].sum(0) < shots)[0])
        got, pool = int(labels[idx, c].sum()), int(labels[:, c].sum())
        if strict:
            raise ValueError(
                f"few-shot ({rule}, {shots} shots): {class_label(c, classnames)} got only {got} of "
                f"{shots} images (the pool has {pool} images with this label)"
                + (f"; {len(short) - 1} more classes are short" if len(short) > 1 else "")
            )
        warnings.warn(
            f"few-shot ({rule}, {shots} shots): {len(short)} classes got fewer than {shots} images "
            f"({_shortfall_text(short, shots)}); going on with the {len(idx)} images taken, as the "
            "released splits do (strict=True, CLI --strict-shots, refuses instead)",
            ShortShotsWarning,
            stacklevel=2,
        )
    return idx


def _draw_random(labels: np.ndarray, shots: int, seed: int) -> np.ndarray:
    """Random-per-class rule: ``shots`` seeded draws per class (all of a smaller class)."""
    rng = np.random.default_rng(seed)
    chosen = []
    for c in range(labels.shape[1]):
        pool = np.flatnonzero(labels[:, c])
        chosen.append(pool if len(pool) < shots else rng.choice(pool, size=shots, replace=False))
    return np.sort(np.concatenate(chosen)).astype(np.int64)


def _draw_greedy(labels: np.ndarray, shots: int) -> np.ndarray:
    """Greedy file-order rule (notes: Protocol, k-shot multi-label)."""
    counts = np.zeros(labels.shape[1], dtype=np.int64)
    taken = []
    for i in np.flatnonzero(labels.any(1)):
        row = labels[i]
        if (counts[row] < shots).all():
            counts[row] += 1
            taken.append(i)
            if (counts == shots).all():
                break
    return np.asarray(taken, dtype=np.int64)


def split_path(out_dir: str | Path, dataset: str, shots: int, seed: int) -> Path:
    """Where :func:`few_shot_split` keeps the list: ``<out_dir>/<dataset>_<shots>shot_seed<seed>.txt``."""
    return Path(out_dir) / f"{safe_name(dataset)}_{shots}shot_seed{seed}.txt"


def few_shot_split(
    data: RetrievalData,
    shots: int,
    seed: int = 0,
    out_dir: str | Path | None = None,
    *,
    rule: str | None = None,
    strict: bool = False,
) -> FewShotSet:
    """The k-shot training set of ``data`` (a subset of its train pool), saved as a plain-text list.

    With ``out_dir`` the list goes to :func:`split_path`; if that file already exists it must be what
    the same (dataset, shots, seed, rule) derives from the current train pool, otherwise ``ValueError``
    saying which ids differ and whether the data or the drawing changed. Without ``out_dir`` nothing is
    written. Classes that end short (see :func:`few_shot_indices`; ``strict=True`` refuses) are in the
    result's ``shortfall`` and the file's ``shortfall`` header line.
    """
    shots = check_count("shots", shots)
    rule = _default_rule(data.train.labels) if rule is None else rule
    idx = few_shot_indices(
        data.train.labels, shots, seed, rule=rule, classnames=data.classnames, strict=strict
    )
    ids = [data.train.ids[i] for i in idx]
    shortfall = _shortfall(data.train.labels[idx].astype(bool), shots, data.classnames)
    if out_dir is not None:
        path = split_path(out_dir, data.name, shots, seed)
        want = {"dataset": data.name, "shots": str(shots), "seed": str(seed), "rule": rule}
        fingerprint = data_fingerprint(data)
        if path.exists():
            _check_saved_split(path, want, ids, fingerprint)
        else:
            extra = {"shortfall": _shortfall_text(shortfall, shots), "data_fingerprint": fingerprint}
            save_split(path, ids, dataset=data.name, shots=shots, seed=seed, rule=rule, extra=extra)
    return FewShotSet(data.train.subset(idx), shots, shortfall)


def _check_saved_split(path: Path, want: Mapping[str, str], ids: Sequence[str], fingerprint: str) -> None:
    """Refuse a saved split that is not the list re-derived now, saying what differs.

    Files written before the ``data_fingerprint`` / ``shortfall`` header lines existed still verify.
    """
    saved, header = load_split(path)
    differs = {k: header.get(k) for k, v in want.items() if header.get(k) != v}
    if differs:
        raise ValueError(
            f"split file {path} was made with {differs}, not {dict(want)}; delete it or use another out_dir"
        )
    if saved == list(ids):
        return
    gone = sorted(set(saved) - set(ids))
    new = sorted(set(ids) - set(saved))
    was = header.get("data_fingerprint")
    if was is None:
        why = "the train pool or the way the list is drawn changed since it was written"
    elif was != fingerprint:
        why = f"the data changed since it was written (data fingerprint {was[:12]} then, {fingerprint[:12]} now)"
    else:
        why = (
            f"the data is the same (fingerprint {fingerprint[:12]}), so the drawing changed (another numpy "
            "or kalahash version?)"
        )
    raise ValueError(
        f"split file {path} does not match the list re-derived from {want['dataset']!r} (shots="
        f"{want['shots']}, seed={want['seed']}, rule={want['rule']}): {why}; {len(gone)} ids only in the "
        f"file: {examples(gone, 3)}; {len(new)} only in the re-derived list: {examples(new, 3)}. Restore "
        "the data or the versions that wrote the file, or delete the file to accept the new list"
    )


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
                f"{dataset}: {class_label(c, classnames)} has {len(members)} images; the split needs "
                f"{need} (query_per_class={query_per_class}, train_per_class={train_per_class})"
            )
        perm = rng.permutation(members)
        query.append(perm[:query_per_class])
        end = None if train_per_class is None else query_per_class + train_per_class
        train.append(perm[query_per_class:end])
    return np.sort(np.concatenate(query)), np.sort(np.concatenate(train))


def saved_protocol_split(
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
    stem = f"{safe_name(dataset)}_q{query_per_class}_t{tpc}_seed{seed}"
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
                f"({examples(unknown, 3)}); the data changed: restore it or delete the file to re-derive"
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
                f"cannot write the split to {split_dir} ({e}): make the folder writable (from Python, "
                "split_dir= names another)"
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
