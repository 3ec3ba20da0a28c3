"""The codes folder of ``kalahash encode``: its files, the record that makes encoding resumable, reading.

- ``codes.npy``: uint8 (n, bits / 8), the ±1 codes bit-packed (``np.packbits``, +1 is a set bit);
- ``paths.txt``: the images, relative to the encoded folder, one a line, in the order of the codes;
- ``meta.json``: the model's identity (fingerprints of backbone weights and trained state, bits,
  method), checkpoint, image folder, counts, the skipped files and why, and a digest of codes and paths;
- ``parts/``: the record of what is encoded, in chunks written whole or not at all, with each file's
  size and modification time; the latest entry of a path wins, so a resumed or later encode only
  appends, and :func:`consolidate` folds the parts into one and rewrites the three files above;
- ``index.faiss`` (``kalahash index``), recorded in meta.json with the digest it was built from.

The three view files are written one by one, meta.json last; :func:`load_codes` checks the digest, so
a view left half-written by a crash is detected (the next encode rewrites it from the parts).
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .data import IMAGE_EXTENSIONS
from .fileio import atomic_path, atomic_write, atomic_write_text

__all__ = [
    "CODES_FORMAT",
    "CodeSet",
    "Records",
    "codes_digest",
    "consolidate",
    "list_folder",
    "load_codes",
    "other_model_error",
    "part_files",
    "plan_encode",
    "read_parts",
    "write_part",
]

CODES_FORMAT = "kalahash-codes"


@dataclass(frozen=True)
class CodeSet:
    """A codes folder as read back by :func:`load_codes`."""

    folder: Path
    codes: np.ndarray
    paths: list[str]
    meta: dict[str, Any]

    @property
    def root(self) -> Path:
        return Path(self.meta["images"])

    def image_path(self, i: int) -> Path:
        return self.root / self.paths[i]


# ----------------------------------------------------------------------------------------------------
# The record of encoding: parts written whole, read back with the latest entry of a path winning


@dataclass
class Records:
    """Encoded files: relative path, size, mtime (ns), packed code (zeros if it failed) and why it
    failed ('' when encoded)."""

    paths: list[str]
    sizes: np.ndarray
    mtimes: np.ndarray
    codes: np.ndarray
    errors: list[str]

    @classmethod
    def empty(cls, nbytes: int) -> Records:
        return cls([], np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros((0, nbytes), np.uint8), [])

    def take(self, rows: Sequence[int]) -> Records:
        rows = np.asarray(rows, dtype=np.int64)
        return Records(
            [self.paths[i] for i in rows], self.sizes[rows], self.mtimes[rows], self.codes[rows],
            [self.errors[i] for i in rows],
        )  # fmt: skip


def _text(lines: list[str]) -> np.ndarray:
    return np.frombuffer("\n".join(lines).encode(), dtype=np.uint8)


def _lines(arr: np.ndarray, n: int) -> list[str]:
    return bytes(arr).decode().split("\n") if n else []


def write_part(path: Path, rec: Records, fingerprint: str) -> None:
    """One chunk of records, written whole or not at all (text as UTF-8 bytes: no pickles to load)."""

    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            np.savez(
                f, codes=rec.codes, paths=_text(rec.paths), errors=_text(rec.errors), sizes=rec.sizes,
                mtimes=rec.mtimes, fingerprint=_text([fingerprint]),
            )  # fmt: skip

    atomic_write(path, write)


def read_parts(parts: list[Path], model: dict[str, Any]) -> Records:
    """Every record of the parts, the latest one per path, sorted by path; parts of another model are
    refused."""
    chunks = []
    for part in parts:
        try:
            with np.load(part, allow_pickle=False) as z:
                fingerprint = bytes(z["fingerprint"]).decode()
                n = len(z["sizes"])
                chunks.append(
                    Records(
                        _lines(z["paths"], n), z["sizes"], z["mtimes"], z["codes"], _lines(z["errors"], n)
                    )
                )
        except Exception as err:  # any failure to read means the same: this part cannot be trusted
            raise ValueError(
                f"{part} is not a readable part of a codes folder ({type(err).__name__}: {err}); delete it "
                "and encode again (its images are encoded anew)"
            ) from err
        if fingerprint != model["fingerprint"]:
            raise other_model_error(part.parent.parent, fingerprint, model)
    if not chunks:
        return Records.empty(-(-model["bits"] // 8))
    every = Records(
        [p for c in chunks for p in c.paths], np.concatenate([c.sizes for c in chunks]),
        np.concatenate([c.mtimes for c in chunks]), np.concatenate([c.codes for c in chunks]),
        [e for c in chunks for e in c.errors],
    )  # fmt: skip
    latest = {p: i for i, p in enumerate(every.paths)}
    return every.take([latest[p] for p in sorted(latest)])


def other_model_error(folder: Path, fingerprint: str, model: dict[str, Any]) -> ValueError:
    return ValueError(
        f"the codes in {folder} were made by model {fingerprint}, not by this checkpoint's model "
        f"{model['fingerprint']}; codes of two models cannot be mixed: encode into a new --out folder "
        "(or delete this one)"
    )


def part_files(out: Path) -> list[Path]:
    return sorted((out / "parts").glob("part-*.npz"))


def list_folder(root: Path, exclude: Path) -> tuple[list[tuple[str, int, int]], list[tuple[str, str]]]:
    """(relative path, size, mtime_ns) of every image under ``root`` (hidden entries and ``exclude``
    left out), and (relative path, reason) of every other file."""
    exts = set(IMAGE_EXTENSIONS)
    images, others = [], []
    for folder, dirs, files in os.walk(root):
        here = Path(folder)
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and (here / d).resolve() != exclude)
        for name in sorted(files):
            if name.startswith("."):
                continue
            path = here / name
            rel = path.relative_to(root).as_posix()
            if "\n" in rel or "\r" in rel:
                others.append((rel.replace("\n", "\\n").replace("\r", "\\r"), "file name holds a line break"))
            elif path.suffix.lower() not in exts:
                others.append((rel, f"not an image file (extensions: {' '.join(IMAGE_EXTENSIONS)})"))
            else:
                try:
                    st = path.stat()
                except OSError as err:
                    others.append((rel, f"cannot be read ({type(err).__name__})"))
                    continue
                images.append((rel, st.st_size, st.st_mtime_ns))
    return images, others


def plan_encode(out: Path, root: Path, model: dict[str, Any]) -> dict[str, Any]:
    """What to encode (``pending``: new or changed images, with size and mtime), the images the codes
    must follow (``present``), the other files (``others``, with why) and the next part's number."""
    meta_path = out / "meta.json"
    if meta_path.exists():
        made_by = json.loads(meta_path.read_text())["model"]["fingerprint"]
        if made_by != model["fingerprint"]:
            raise other_model_error(out, made_by, model)
    parts = part_files(out)
    done = read_parts(parts, model)
    known = dict(zip(done.paths, zip(done.sizes.tolist(), done.mtimes.tolist(), strict=True), strict=True))
    images, others = list_folder(root, exclude=out)
    pending = [(rel, size, mtime) for rel, size, mtime in images if known.get(rel) != (size, mtime)]
    next_part = int(parts[-1].stem.split("-")[1]) + 1 if parts else 0
    present = [rel for rel, _, _ in images]
    return {"pending": pending, "present": present, "others": others, "next_part": next_part}


def codes_digest(codes: np.ndarray, paths: list[str]) -> str:
    h = hashlib.sha256(codes.tobytes())
    h.update("\n".join(paths).encode())
    return h.hexdigest()[:32]


def consolidate(
    out: Path, root: Path, model: dict[str, Any], plan: dict[str, Any], **meta_fields: Any
) -> CodeSet:
    """Fold the parts into one, keeping the images of ``plan["present"]`` (those gone from the folder
    leave), and write the searchable view: codes.npy, paths.txt, then meta.json last (with
    ``meta_fields``); a stale index is removed."""
    parts = part_files(out)
    records = read_parts(parts, model)
    present = set(plan["present"])
    records = records.take([i for i, p in enumerate(records.paths) if p in present])
    merged = out / "parts" / f"part-{int(parts[-1].stem.split('-')[1]) + 1 if parts else 0:06d}.npz"
    write_part(merged, records, model["fingerprint"])
    for part in parts:
        part.unlink()
    ok = [i for i, e in enumerate(records.errors) if not e]
    codes = records.codes[ok]
    paths = [records.paths[i] for i in ok]
    skipped = [{"path": records.paths[i], "reason": e} for i, e in enumerate(records.errors) if e]
    skipped += [{"path": rel, "reason": reason} for rel, reason in plan["others"]]
    skipped.sort(key=lambda s: s["path"])
    meta_path = out / "meta.json"
    old = json.loads(meta_path.read_text()) if meta_path.exists() else {}
    digest = codes_digest(codes, paths)
    with atomic_path(out / "codes.npy") as tmp, open(tmp, "wb") as f:
        np.save(f, codes)
    atomic_write_text(out / "paths.txt", "".join(f"{p}\n" for p in paths))
    now = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    meta = {
        "format": CODES_FORMAT,
        "version": 1,
        "model": model,
        **meta_fields,
        "images": str(root),
        "count": len(paths),
        "skipped_count": len(skipped),
        "skipped": skipped,
        "digest": digest,
        "created": old.get("created", now),
        "updated": now,
    }
    if old.get("index", {}).get("digest") == digest:
        meta["index"] = old["index"]
    else:
        (out / "index.faiss").unlink(missing_ok=True)
    atomic_write_text(meta_path, json.dumps(meta, indent=2))
    return CodeSet(out, codes, paths, meta)


def load_codes(folder: str | os.PathLike) -> CodeSet:
    """A codes folder written by :func:`encode_folder`, checked whole (codes, paths and their digest)."""
    folder = Path(folder)
    meta_path = folder / "meta.json"
    if not meta_path.is_file():
        raise FileNotFoundError(f"{str(folder)!r} holds no codes (no meta.json): run `kalahash encode` first")
    meta = json.loads(meta_path.read_text())
    if meta.get("format") != CODES_FORMAT:
        raise ValueError(f"{meta_path} is not the meta.json of a kalahash codes folder")
    codes = np.load(folder / "codes.npy", allow_pickle=False)
    text = (folder / "paths.txt").read_text(encoding="utf-8")
    paths = text.split("\n")[:-1] if text else []
    if (
        codes.shape != (meta["count"], -(-meta["model"]["bits"] // 8))
        or codes_digest(codes, paths) != meta["digest"]
    ):
        raise ValueError(
            f"the codes folder {str(folder)!r} is inconsistent (an encode stopped while writing it); run "
            "`kalahash encode` with the same folders again to finish it"
        )
    return CodeSet(folder, codes, paths, meta)
