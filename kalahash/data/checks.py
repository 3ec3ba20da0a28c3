"""Split integrity: :func:`check_data` (files, counts, overlaps, duplicates),
:func:`data_fingerprint`, the hash that identifies a data set's splits in provenance, and the cheap
stamps of what the files are now (:func:`file_stamp`, :func:`content_stamp`)."""

from __future__ import annotations

import hashlib
import io
import os
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
from PIL import UnidentifiedImageError

from ._util import examples
from .types import IMAGE_FORMATS, SPLITS, RetrievalData, open_image

if TYPE_CHECKING:
    import pandas as pd

    from .types import ImageList


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


def file_stamp(path: str | os.PathLike) -> str:
    """What a file is now, cheaply: its size and modification time (one ``os.stat``, nothing read), or
    the error a missing or unreadable file gives, so a stamp never fails and changes with the file."""
    try:
        st = os.stat(path)
    except OSError as e:
        return type(e).__name__
    return f"{st.st_size}\t{st.st_mtime_ns}"


def content_stamp(data: RetrievalData) -> str:
    """A cheap stamp of what the images are now: each file's path, size and modification time (one
    ``os.stat`` a file, nothing read), and the pixels of in-memory images.

    With :func:`data_fingerprint` it tells whether a remembered check still holds: a repaired or broken
    file changes it.
    """
    h = hashlib.blake2b(b"kalahash-content-stamp-v1\n", digest_size=32)
    paths = sorted(
        {str(p) for images in data.splits().values() if not images.in_memory for p in images.images}
    )
    for path in paths:
        h.update(f"{path}\t{file_stamp(path)}\n".encode())
    for split, images in data.splits().items():
        if images.in_memory:
            h.update(f"{split} pixels {images.images.shape}\n".encode())
            h.update(np.ascontiguousarray(images.images))
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
        with open_image(io.BytesIO(raw)) as img:
            if full_decode:
                img.load()
            else:
                img.verify()
    except UnidentifiedImageError:  # its own text shows the in-memory stream, not the file
        return digest, f"not a readable image (UnidentifiedImageError: not one of {', '.join(IMAGE_FORMATS)})"
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
    """Check a retrieval data set before training on it, in named phases:

    - :func:`_split_lists`: no split is empty, no id is listed twice in a split, images without a label;
    - :func:`_id_overlaps`: the query overlaps neither the train pool nor the database by id (the protocol
      allows the train pool inside the database: database = all but query); the same id with different
      labels in two splits;
    - :func:`_readable_files`: every listed file exists and opens (PIL ``verify``, or a full decode with
      ``full_decode=True``); in-memory images are present by construction;
    - :func:`_content_overlaps` (with ``content_hash``): the same overlaps by content, decoded pixels for
      in-memory images, file bytes (blake2b) for files, so a re-encoded copy is not caught; duplicates
      within a split;
    - :func:`_class_counts`: counts per split and class (``counts``: split x class DataFrame), classes
      absent from the train pool.

    ``fingerprint`` (:func:`data_fingerprint`) identifies the splits' ids and labels.
    """
    splits = data.splits()
    found = _Findings()
    _split_lists(splits, found)
    _id_overlaps(splits, found)
    file_digests = _readable_files(
        data.name, splits, found, full_decode=full_decode, workers=workers, progress=progress
    )
    kinds, content_fp = _content_overlaps(splits, file_digests, found) if content_hash else (set(), None)
    counts = _class_counts(data, found)
    return DataCheck(
        name=data.name,
        ok=not found.problems,
        problems=found.problems,
        counts=counts,
        fingerprint=data_fingerprint(data),
        sizes={s: len(images) for s, images in splits.items()},
        notes=found.notes,
        content_hash=" + ".join(sorted(kinds)) if content_hash else None,
        content_fingerprint=content_fp,
    )


@dataclass
class _Findings:
    """What the phases of :func:`check_data` found, in the order they found it."""

    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


Splits = dict[str, "ImageList"]


def _split_lists(splits: Splits, found: _Findings) -> None:
    """Each split on its own: not empty, no id listed twice, images without a label (a note)."""
    for split, images in splits.items():
        if len(images) == 0:
            found.problems.append(f"{split} is empty")
        repeated = [i for i, n in Counter(images.ids).items() if n > 1]
        if repeated:
            found.problems.append(
                f"{len(repeated)} ids listed more than once in {split}: {examples(repeated)}"
            )
        unlabeled = int((images.labels.sum(1) == 0).sum())
        if unlabeled:
            found.notes.append(f"{unlabeled} {split} images have no label")


def _id_overlaps(splits: Splits, found: _Findings) -> None:
    """Overlaps by id (notes: Protocol: database = all but query; the train pool may sit inside it) and
    ids whose labels differ between splits."""
    id_sets = {s: set(images.ids) for s, images in splits.items()}
    for other in ("train", "database"):
        both = sorted(id_sets["query"] & id_sets[other])
        if both:
            found.problems.append(f"{len(both)} query images are also in {other} (same id): {examples(both)}")
    outside = len(id_sets["train"] - id_sets["database"])
    if outside:
        found.notes.append(f"{outside} train-pool images are not in the database (allowed)")
    conflicts = []
    for a, b in (("query", "train"), ("query", "database"), ("train", "database")):
        position = {i: n for n, i in enumerate(splits[b].ids)}
        pairs = [(n, position[i]) for n, i in enumerate(splits[a].ids) if i in position]
        if pairs:
            ia, ib = np.asarray(pairs).T
            differ = (splits[a].labels[ia] != splits[b].labels[ib]).any(1)
            conflicts += [f"{splits[a].ids[n]} ({a} vs {b})" for n in ia[differ]]
    if conflicts:
        found.problems.append(
            f"{len(conflicts)} ids have different labels in different splits: {examples(conflicts)}"
        )


def _readable_files(
    name: str, splits: Splits, found: _Findings, *, full_decode: bool, workers: int, progress: bool
) -> dict[str, tuple[str | None, str | None]]:
    """Every listed file exists, reads and opens; each distinct file once (the database usually holds the
    train pool), on ``workers`` threads. Returns path -> (blake2b of its bytes or None, what is wrong)."""
    file_paths = sorted({str(p) for images in splits.values() if not images.in_memory for p in images.images})
    results: dict[str, tuple[str | None, str | None]] = {}
    if not file_paths:
        return results
    from tqdm import tqdm

    bar = tqdm(
        total=len(file_paths),
        desc=f"check {name}",
        unit="file",
        disable=not progress or len(file_paths) < 500,
    )
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        for path, result in zip(
            file_paths, pool.map(lambda p: _check_file(p, full_decode), file_paths), strict=True
        ):
            results[path] = result
            bar.update()
    bar.close()
    for what in ("missing", "unreadable", "not a readable image"):
        bad = [p for p, (_, err) in results.items() if err is not None and err.startswith(what)]
        if bad:
            detail = results[bad[0]][1]
            found.problems.append(f"{len(bad)} files {what}: {examples(bad)} (first, {bad[0]}: {detail})")
    return results


def _content_overlaps(
    splits: Splits, file_digests: dict[str, tuple[str | None, str | None]], found: _Findings
) -> tuple[set[str], str]:
    """Query images whose content (pixels in memory, file bytes on disk) is in the train pool or the
    database under another id, and duplicates within a split (a note). Returns what was compared and
    the content fingerprint (sha256 over every split's digests)."""
    hashes: dict[str, list[str | None]] = {}
    kinds = set()
    for split, images in splits.items():
        if images.in_memory:
            kinds.add("pixels (decoded uint8 arrays, blake2b)")
            rows = np.ascontiguousarray(images.images)
            hashes[split] = [hashlib.blake2b(r.tobytes(), digest_size=16).hexdigest() for r in rows]
        else:
            kinds.add("file bytes (blake2b)")
            hashes[split] = [file_digests[str(p)][0] for p in images.images]
    if len(kinds) > 1:
        found.notes.append("splits mix in-memory and file images: content compared within each kind only")
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
            found.problems.append(
                f"{len(pairs)} query images have identical content in {other} under another id: "
                f"{examples(sorted(pairs))}"
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
            found.notes.append(f"{split} holds {extra} content duplicates under other ids, e.g. {example}")
    h = hashlib.sha256()
    for split in SPLITS:
        h.update(("\n".join(d or "-" for d in hashes.get(split, [])) + "\n").encode())
    return kinds, h.hexdigest()


def _class_counts(data: RetrievalData, found: _Findings) -> pd.DataFrame:
    """Images per split and class; a class without a train-pool image is a problem (no few-shot split),
    without a query or database image a note."""
    import pandas as pd

    splits = data.splits()
    counts = pd.DataFrame(
        np.stack([images.labels.sum(0) for images in splits.values()]).astype(np.int64),
        index=pd.Index(list(SPLITS), name="split"),
        columns=pd.Index(list(data.classnames), name="class"),
    )
    absent = [c for c, n in counts.loc["train"].items() if n == 0]
    if absent:
        found.problems.append(
            f"classes with no train-pool image (no few-shot split possible): {examples(absent)}"
        )
    for split in ("query", "database"):
        absent = [c for c, n in counts.loc[split].items() if n == 0]
        if absent:
            found.notes.append(f"classes with no {split} image: {examples(absent)}")
    return counts
