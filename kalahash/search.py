"""Hash and search your own images: encode a folder once with a trained checkpoint, then search it.

Three steps, each a function here and a ``kalahash`` sub-command: :func:`encode_folder` (``kalahash
encode``) encodes every image under a folder into a codes folder (:mod:`kalahash.codestore` describes
it); :func:`build_index` (``kalahash index``) adds a faiss binary index beside the codes; :func:`search`
(``kalahash search``) ranks the collection for a query image by Hamming distance, with the Hamming
engine of the mAP (:mod:`kalahash.hamming`), ties broken on purpose (:func:`kalahash.hamming.order_ties`:
the query's own image first; ``rerank`` by the query's real-valued code) and reported (:func:`tie_note`);
:func:`write_html` shows the hits as thumbnails.

Codes are only comparable under the model that made them, so encoding into a folder made by another
model, or searching it with another checkpoint, is refused, naming both models. Under ``torchrun`` (an
initialised ``torch.distributed`` group) every rank encodes its share of each chunk and rank 0 writes.
"""

from __future__ import annotations

import base64
import hashlib
import html
import io
import json
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from .backbones import state_fingerprint
from .cache import device_autocast
from .checkpoints import hasher_from_checkpoint, load_checkpoint
from .codestore import CodeSet, Records, consolidate, load_codes, plan_encode, write_part
from .data import open_image
from .extras import require
from .fileio import atomic_write, atomic_write_text
from .hamming import distances, order_ties, pack_words
from .hashing import sign
from .loader import default_workers
from .machine import resolve_device

__all__ = [
    "ENGINES",
    "INDEX_KINDS",
    "CodeSet",
    "EncodeReport",
    "Hit",
    "build_index",
    "encode_folder",
    "init_distributed",
    "load_codes",
    "model_identity",
    "search",
    "tie_note",
    "write_html",
]

INDEX_KINDS = ("flat", "hnsw")
ENGINES = ("exact", "index")


@dataclass(frozen=True)
class Hit:
    """One search result: its rank (from 1), Hamming distance to the query and image path; ``tied``:
    how many images of the collection are at this distance (16-bit codes tie heavily); ``identical``:
    the query's own image (same file, or same content)."""

    rank: int
    distance: int
    path: Path
    tied: int = 1
    identical: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {
            "rank": self.rank,
            "distance": self.distance,
            "path": str(self.path),
            "tied": self.tied,
            "identical": self.identical,
        }


@dataclass(frozen=True)
class EncodeReport:
    """What :func:`encode_folder` did: images with codes now, encoded by this call, every file of the
    folder without a code (``{"path", "reason"}``: not an image, or unreadable), and whether a faiss
    index built from the earlier codes was removed (the codes changed: ``kalahash index`` again)."""

    out: Path
    count: int
    encoded: int
    skipped: list[dict[str, str]]
    index_removed: bool = False


# ----------------------------------------------------------------------------------------------------
# The model: what identifies it, and rebuilding it from a checkpoint


def model_identity(payload: dict[str, Any]) -> dict[str, Any]:
    """What makes codes comparable: the backbone weights and the trained state (fingerprints of both)."""
    backbone = payload["backbone"]["fingerprint"]
    trained = state_fingerprint(payload["trained_state"])
    return {
        "fingerprint": f"{backbone}-{trained}",
        "backbone": payload["backbone"]["name"],
        "backbone_fingerprint": backbone,
        "trained_fingerprint": trained,
        "method": payload["method"],
        "bits": int(payload["bits"]),
    }


def _load_hasher(
    payload: dict[str, Any], pretrained: str | None, device: str | torch.device | None
) -> nn.Module:
    """The checkpoint's hasher in eval mode, by default on this process's CUDA device (under torchrun,
    the rank's) or the CPU."""
    return hasher_from_checkpoint(payload, pretrained, _device(device)).eval()


def _device(device: str | torch.device | None) -> torch.device:
    """The given device, checked (a CUDA device the machine lacks is refused with what to do, not
    blamed on the weights), or this process's CUDA device (under torchrun, the rank's), or the CPU."""
    if device is None and torch.cuda.is_available():
        return torch.device("cuda", torch.cuda.current_device())
    return resolve_device(device)


class _ImageFiles(Dataset):
    """Image files through the model's preprocessing; a file that does not decode gives its reason."""

    def __init__(self, paths: Sequence[Path], preprocess: Any) -> None:
        self.paths = list(paths)
        self.preprocess = preprocess

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[torch.Tensor | None, str]:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # EXIF and palette warnings are not errors
                with open_image(self.paths[i]) as img:
                    return self.preprocess(img.convert("RGB")), ""
        except Exception as err:  # PIL raises many types for a broken file; all mean: skip it, say why
            return None, " ".join(f"unreadable image ({type(err).__name__}: {err})".split())


def _as_list(batch: list[Any]) -> list[Any]:
    return batch


@torch.no_grad()
def _encode_files(
    hasher: Any, paths: Sequence[Path], batch_size: int, workers: int | None
) -> tuple[np.ndarray, list[str]]:
    """Packed codes (zeros where a file failed) and a reason per file ('' when encoded); ``workers``
    None is :func:`kalahash.loader.default_workers`."""
    codes = np.zeros((len(paths), -(-hasher.bits // 8)), dtype=np.uint8)
    errors = [""] * len(paths)
    device = hasher.backbone.device
    loader = DataLoader(
        _ImageFiles(paths, hasher.backbone.preprocess), batch_size=batch_size,
        num_workers=default_workers(device) if workers is None else workers,
        collate_fn=_as_list, pin_memory=device.type == "cuda",
    )  # fmt: skip
    start = 0
    for batch in loader:
        good = [i for i, (x, _) in enumerate(batch) if x is not None]
        for i, (_, reason) in enumerate(batch):
            errors[start + i] = reason
        if good:
            pixels = torch.stack([batch[i][0] for i in good]).to(device)
            with device_autocast(device):
                u = hasher(pixels)
            codes[[start + i for i in good]] = np.packbits((sign(u.float()) > 0).cpu().numpy(), axis=1)
        start += len(batch)
    return codes, errors


# ----------------------------------------------------------------------------------------------------
# The distributed plumbing: rank 0 plans and writes, every rank encodes its share


def _rank_world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _from_rank0(value: Any, world: int) -> Any:
    """Rank 0's ``value`` on every rank; an exception there is raised on every rank (none hangs)."""
    if world > 1:
        box = [value]
        dist.broadcast_object_list(box, src=0)
        value = box[0]
    if isinstance(value, BaseException):
        raise value
    return value


def _to_rank0(value: Any, world: int) -> list[Any] | None:
    if world == 1:
        return [value]
    gathered = [None] * world if dist.get_rank() == 0 else None
    dist.gather_object(value, gathered, dst=0)
    return gathered


def init_distributed() -> bool:
    """Join the process group that ``torchrun`` describes (``WORLD_SIZE`` > 1); False when run alone.

    NCCL on GPUs (each rank on the GPU of its ``LOCAL_RANK``), gloo on CPUs.
    """
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or dist.is_initialized():
        return False
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group("nccl")
    else:
        dist.init_process_group("gloo")
    return True


# ----------------------------------------------------------------------------------------------------
# Encoding a folder


def _chunk_records(chunk: list[tuple[str, int, int]], shares: list[Any]) -> Records:
    """A chunk's records from the ranks' shares (rank r encoded items r, r + world, ...)."""
    world = len(shares)
    order = [(i % world, i // world) for i in range(len(chunk))]
    return Records(
        [rel for rel, _, _ in chunk], np.array([s for _, s, _ in chunk], np.int64),
        np.array([m for _, _, m in chunk], np.int64), np.stack([shares[r][0][j] for r, j in order]),
        [shares[r][1][j] for r, j in order],
    )  # fmt: skip


def encode_folder(
    checkpoint: str | os.PathLike,
    images: str | os.PathLike,
    out: str | os.PathLike,
    *,
    batch_size: int = 64,
    chunk_size: int = 1024,
    workers: int | None = None,
    pretrained: str | None = None,
    device: str | torch.device | None = None,
    progress: bool = True,
) -> EncodeReport:
    """Encode every image under ``images`` (recursively) with the checkpoint's model into ``out``
    (CLI: ``kalahash encode``).

    Files that are not images, or do not decode, are skipped and listed with the reason, never a
    crash midway. Images already encoded with the same size and modification time are not encoded
    again: a second call after new images arrive encodes only those, and an interrupted call resumes
    from its last complete chunk of ``chunk_size`` images. Images gone from the folder leave the codes.
    Under an initialised ``torch.distributed`` group every rank must call this; each encodes its share
    of each chunk and rank 0 writes (the result is the same as one process's). ``workers``: image
    decoding processes (None: :func:`kalahash.loader.default_workers`, the spare cores on CUDA, none on
    the CPU).
    """
    for name, value in {"batch_size": batch_size, "chunk_size": chunk_size}.items():
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    device = _device(device)
    rank, world = _rank_world()
    root, out = Path(images).resolve(), Path(out).resolve()
    if not root.is_dir():
        raise FileNotFoundError(f"image folder {str(images)!r} does not exist or is not a folder")
    payload = load_checkpoint(checkpoint)
    model = model_identity(payload)
    plan: Any = None  # rank 0's; the other ranks need only what to encode
    if rank == 0:
        try:
            plan = plan_encode(out, root, model)
        except (ValueError, OSError) as err:
            plan = err
    pending = _from_rank0(plan["pending"] if isinstance(plan, dict) else plan, world)
    hasher = _load_hasher(payload, pretrained, device)
    bar = tqdm(total=len(pending), desc="encoding images", disable=not progress or rank != 0)
    encoded = 0
    for n, lo in enumerate(range(0, len(pending), chunk_size)):
        chunk = pending[lo : lo + chunk_size]
        mine = chunk[rank::world]
        shares = _to_rank0(
            _encode_files(hasher, [root / rel for rel, _, _ in mine], batch_size, workers), world
        )
        bar.update(len(chunk))
        if rank == 0:
            rec = _chunk_records(chunk, shares)
            write_part(out / "parts" / f"part-{plan['next_part'] + n:06d}.npz", rec, model["fingerprint"])
            encoded += rec.errors.count("")
    bar.close()
    report: Any = None
    if rank == 0:
        try:
            indexed = (out / "index.faiss").exists()
            view = consolidate(
                out, root, model, plan, checkpoint=str(Path(checkpoint).resolve()), pretrained=pretrained
            )
            removed = indexed and not (out / "index.faiss").exists()
            report = EncodeReport(out, len(view.paths), encoded, view.meta["skipped"], removed)
        except (ValueError, OSError) as err:
            report = err
    return _from_rank0(report, world)


# ----------------------------------------------------------------------------------------------------
# Reading codes, indexing and searching


def build_index(codes: str | os.PathLike, kind: str = "flat", *, neighbors: int = 32) -> Path:
    """Write a faiss binary index of a codes folder beside it, ``index.faiss`` (CLI: ``kalahash index``).

    ``"flat"`` is exact (``IndexBinaryFlat``); ``"hnsw"`` (``IndexBinaryHNSW`` with ``neighbors`` links
    a node) is approximate and meant for very large sets. :func:`search` asks it with
    ``engine="index"``; by default it ranks exactly with kalahash's own engine, the faster exact path.
    """
    faiss = require("faiss", "a faiss index")

    if kind not in INDEX_KINDS:
        raise ValueError(f"kind must be one of {', '.join(INDEX_KINDS)}, got {kind!r}")
    store = load_codes(codes)
    bits = store.meta["model"]["bits"]
    if bits % 8:
        raise ValueError(f"faiss binary indexes need a multiple of 8 bits; these codes have {bits}")
    if not store.paths:
        raise ValueError(f"the codes folder {str(codes)!r} holds no codes to index")
    index = faiss.IndexBinaryFlat(bits) if kind == "flat" else faiss.IndexBinaryHNSW(bits, neighbors)
    index.add(store.codes)
    path = store.folder / "index.faiss"
    atomic_write(path, lambda tmp: faiss.write_index_binary(index, tmp))
    meta = {**store.meta, "index": {"kind": kind, "digest": store.meta["digest"], "count": len(store.paths)}}
    atomic_write_text(store.folder / "meta.json", json.dumps(meta, indent=2))
    return path


def search(
    codes: str | os.PathLike,
    query: str | os.PathLike,
    k: int = 20,
    *,
    checkpoint: str | os.PathLike | None = None,
    engine: str = "exact",
    rerank: bool = False,
    pretrained: str | None = None,
    device: str | torch.device | None = None,
) -> list[Hit]:
    """The ``k`` images of a codes folder nearest to the query image, by Hamming distance
    (CLI: ``kalahash search``).

    The query is encoded with ``checkpoint`` (default: the one that made the codes); codes made by
    another model are refused. Within one distance, the query's own image (the same file, or a file
    with the same content) comes first, then the collection's order; with ``rerank`` the images of a
    tie are ordered by the query's real-valued code u (higher u·b first: the bits they differ on are
    those the query is least sure of). Each hit says how many images share its distance
    (:func:`tie_note` words it). ``engine="exact"`` ranks with kalahash's Hamming engine, faster than
    faiss's exact index (benchmarks/bench_search.py); ``"index"`` asks the faiss index of
    :func:`build_index` (for an HNSW index: approximate) for the candidates, ordered the same way.
    """
    if isinstance(k, bool) or not isinstance(k, int) or k <= 0:
        raise ValueError(f"k must be a positive integer, got {k!r}")
    if engine not in ENGINES:
        raise ValueError(f"engine must be one of {', '.join(ENGINES)}, got {engine!r}")
    device = _device(device)
    store = load_codes(codes)
    checkpoint = checkpoint or store.meta["checkpoint"]
    payload = load_checkpoint(checkpoint)
    model = model_identity(payload)
    made_by = store.meta["model"]["fingerprint"]
    if model["fingerprint"] != made_by:
        raise ValueError(
            f"the codes in {str(codes)!r} were made by model {made_by} (checkpoint "
            f"{store.meta['checkpoint']}), but checkpoint {str(checkpoint)!r} is model {model['fingerprint']}; "
            "search with the checkpoint that made them, or encode the images again with this one"
        )
    if not Path(query).is_file():
        raise FileNotFoundError(f"query image {str(query)!r} does not exist")
    hasher = _load_hasher(payload, pretrained or store.meta.get("pretrained"), device)
    code, u = _encode_query(hasher, Path(query))
    if not store.paths:
        return []
    distance = distances(pack_words(code), np.ascontiguousarray(pack_words(store.codes).T))[0]
    same = _same_image(store, Path(query), distance)
    score = (lambda rows: _real_valued_score(store.codes[rows], u)) if rerank else None
    candidates = _candidates(store, code, min(k, len(store.paths)), engine)
    if candidates is None:
        chosen = order_ties(distance, min(k, len(distance)), first=same, score=score)
    else:  # the same order among the faiss index's hits and the query's own image
        candidates = np.union1d(candidates, same)
        local = None if score is None else (lambda rows: score(candidates[rows]))
        first = np.flatnonzero(np.isin(candidates, same))
        order = order_ties(distance[candidates], len(candidates), first=first, score=local)
        chosen = candidates[order][:k]
    tied = np.bincount(distance, minlength=store.meta["model"]["bits"] + 1)
    return [
        Hit(r + 1, int(distance[i]), store.image_path(int(i)), int(tied[distance[i]]), bool(np.isin(i, same)))
        for r, i in enumerate(chosen)
    ]


def _encode_query(hasher: Any, path: Path) -> tuple[np.ndarray, np.ndarray]:
    """The query's packed code (1, bytes) and its real-valued code u (bits,), from which the sign is taken."""
    image, reason = _ImageFiles([path], hasher.backbone.preprocess)[0]
    if image is None:
        raise ValueError(f"query image {str(path)!r} cannot be used: {reason}")
    with torch.no_grad(), device_autocast(hasher.backbone.device):
        u = hasher(image[None].to(hasher.backbone.device)).float()
    return np.packbits((sign(u) > 0).cpu().numpy(), axis=1), u[0].cpu().numpy()


def _real_valued_score(packed: np.ndarray, u: np.ndarray) -> np.ndarray:
    """u·b of the query's real-valued code u with each packed ±1 code b (asymmetric re-ranking)."""
    bits = np.unpackbits(packed, axis=1)[:, : u.shape[0]].astype(np.float64)
    return (2.0 * bits - 1.0) @ u.astype(np.float64)


def _same_image(store: CodeSet, query: Path, distance: np.ndarray) -> np.ndarray:
    """Indices of the collection's copies of the query: the same file, or (among the codes equal to
    the query's) a file of the same size and content."""
    query = query.resolve()
    found = set()
    try:
        rel = query.relative_to(store.root.resolve()).as_posix()
    except ValueError:
        rel = None
    if rel is not None and rel in store.paths:
        found.add(store.paths.index(rel))
    size, digest = query.stat().st_size, None
    for i in np.flatnonzero(distance == 0).tolist():
        path = store.image_path(i)
        try:
            if i in found or path.stat().st_size != size:
                continue
        except OSError:  # gone since encoding: not the query
            continue
        digest = digest or _file_digest(query)
        if _file_digest(path) == digest:
            found.add(i)
    return np.array(sorted(found), dtype=np.int64)


def _file_digest(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _candidates(store: CodeSet, code: np.ndarray, k: int, engine: str) -> np.ndarray | None:
    """None for the exact engine (every image is a candidate), else the faiss index's k hits."""
    if engine == "exact":
        return None
    built, bits = store.meta.get("index"), store.meta["model"]["bits"]
    if built is None and bits % 8:
        raise ValueError(
            f"the codes in {store.folder} have {bits} bits, and faiss indexes need a multiple of 8: search "
            'them with engine="exact" (CLI: --engine exact, the default)'
        )
    if built is None:
        raise ValueError(
            f"no faiss index in {store.folder}: run `kalahash index --codes {store.folder}` first"
        )
    faiss = require("faiss", "a search with engine='index' (CLI: --engine index)")
    faiss_index = faiss.read_index_binary(str(store.folder / "index.faiss"))
    if built["kind"] == "hnsw":
        faiss_index.hnsw.efSearch = max(faiss_index.hnsw.efSearch, 2 * k)
    _, index = faiss_index.search(code, k)
    return np.sort(index[0][index[0] >= 0])


def tie_note(hits: Sequence[Hit], rerank: bool = False) -> str | None:
    """A sentence when the last hit sits inside a tie that goes on past it (None otherwise): how large
    the tie is, how it was ordered and which --k shows all of it."""
    if not hits:
        return None
    last = hits[-1]
    shown = sum(h.distance == last.distance for h in hits)
    if last.tied <= shown:
        return None
    order = (
        "then the query's real-valued code decides (--rerank)"
        if rerank
        else "then collection order (--rerank: the query's real-valued code)"
    )
    return (
        f"the last hit is in a tie: {last.tied} images are at distance {last.distance}, {shown} of them shown; "
        f"--k {len(hits) - shown + last.tied} shows them all. Within a distance the query's own image comes "
        f"first, {order}."
    )


def write_html(
    hits: Sequence[Hit], out: str | os.PathLike, query: str | os.PathLike | None = None, rerank: bool = False
) -> Path:
    """A page of thumbnails (embedded, so it opens anywhere): the query, then rank, distance and path
    of each hit, and :func:`tie_note` when the last hit is in a tie (``rerank``: how it was ordered)."""

    def thumb(path: Path) -> str:
        try:
            with open_image(path) as img:
                img = img.convert("RGB")
                img.thumbnail((160, 160))
                buf = io.BytesIO()
                img.save(buf, format="PNG")
            return f'<img src="data:image/png;base64,{base64.b64encode(buf.getvalue()).decode()}">'
        except Exception:  # a hit whose file has gone since encoding still gets its row
            return "<div>(image unavailable)</div>"

    def card(image: Path, caption: str) -> str:
        return f"<figure>{thumb(image)}<figcaption>{caption}</figcaption></figure>"

    def caption(h: Hit) -> str:
        same = " &middot; the query's image" if h.identical else ""
        return f"#{h.rank} &middot; distance {h.distance}{same}<br>{html.escape(str(h.path))}"

    cards = [card(h.path, caption(h)) for h in hits]
    head = card(Path(query), f"query<br>{html.escape(str(query))}") if query is not None else ""
    note = tie_note(hits, rerank)
    head += f"<p class='ties'>{html.escape(note)}</p>" if note else ""
    page = (
        "<!doctype html><meta charset='utf-8'><title>kalahash search</title><style>"
        "body{font-family:sans-serif}figure{display:inline-block;width:180px;margin:6px;vertical-align:top}"
        "figcaption{font-size:11px;word-break:break-all}.query{border-bottom:1px solid #ccc}</style>"
        f"<div class='query'>{head}</div><div>{''.join(cards)}</div>\n"
    )
    return atomic_write_text(Path(out), page)
