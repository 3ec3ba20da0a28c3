"""What the offline worlds are built with: seeded streams, the drawing pieces they share, the paper's
protocol split, windows of an endless pre-training pool, cached retrieval sets, and each world's spec
(:class:`WorldSpec`), registered once (:func:`register_world`) and read everywhere else.

Streams. Every image comes from a NumPy ``SeedSequence`` whose entropy is the world's tag, a stream id
(:data:`STREAM_POOL` for the pre-training pool, one per retrieval set) and the seed, fed to the legacy
``RandomState`` (MT19937), whose streams NumPy guarantees never to change. The worlds render with
integer arithmetic and IEEE basic float operations only (+, -, *, /, comparisons; no transcendental
functions), so the same seed gives the same bytes on any machine. Pool and retrieval images come from
different streams, so they share no draws: two images could only coincide if all 3,072 bytes of their
per-pixel noise did (the worlds' tests check it by content hash).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from kalahash.data import ImageList, RetrievalData, register_dataset

IMAGE_SIZE = 32
POOL_BLOCK = 1024  # pool images per SeedSequence child: windows of the pool are prefix-consistent
STREAM_POOL = 1  # the pre-training pool's stream id; a world's retrieval sets take the ids after it
# Pixel centres (float) and pixel indices (int) of a row or column.
GRID = np.arange(IMAGE_SIZE, dtype=np.float64) + 0.5
IGRID = np.arange(IMAGE_SIZE, dtype=np.int64)
# Colours and textures every world draws with (their words are in both worlds' captions).
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (215, 35, 35),
    "green": (40, 185, 55),
    "blue": (45, 85, 230),
    "yellow": (235, 215, 40),
    "purple": (145, 55, 200),
    "orange": (245, 135, 25),
    "white": (235, 235, 235),
    "pink": (245, 125, 185),
}
COLOUR_NAMES: tuple[str, ...] = tuple(COLOURS)
TEXTURES: tuple[str, ...] = ("plain", "striped", "dotted", "checked")
PROTOCOL = "query per class, database = all but query, train pool per class from the database"


def seeded_rng(tag: int, *entropy: int, block: int | None = None) -> np.random.RandomState:
    """The legacy MT19937 stream of (``tag``, ``*entropy``), its ``block``-th child: a world's images are
    the same bytes on every platform. Each world has its own ``tag``, so worlds share no draws."""
    spawn_key = () if block is None else (block,)
    seq = np.random.SeedSequence(entropy=[tag, *entropy], spawn_key=spawn_key)
    return np.random.RandomState(np.random.MT19937(seq))


def randints(rs: np.random.RandomState, low: int, high: int, size: int | tuple[int, ...]) -> np.ndarray:
    """Integers in [low, high); dtype fixed so the stream is the same on every platform."""
    return rs.randint(low, high, size=size, dtype=np.int64)


def check_index(name: str, value: object) -> int:
    """``value`` as an int if it is a non-negative int (a count, a seed or a position), else ValueError."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
        raise ValueError(f"{name} must be a non-negative int, got {value!r}")
    return int(value)


def texture_mask(
    texture: str, x: np.ndarray, y: np.ndarray, phase: np.ndarray, orient: np.ndarray
) -> np.ndarray:
    """Which pixels take the object's bright colour (the rest take its dark shade)."""
    if texture == "plain":
        return np.ones(np.broadcast_shapes(x.shape, y.shape), dtype=bool)
    px, py = phase[:, 0, None, None], phase[:, 1, None, None]
    if texture == "striped":  # stripes 2 px wide, horizontal, vertical or diagonal
        o = orient[:, None, None]
        coord = np.where(o == 0, y + py, np.where(o == 1, x + px, x + y + px))
        return (coord // 2) % 2 == 0
    if texture == "dotted":  # 2x2 dots every 4 px
        return ((x + px) % 4 < 2) & ((y + py) % 4 < 2)
    if texture == "checked":  # 3 px checks
        return ((x + px) // 3 + (y + py) // 3) % 2 == 0
    raise ValueError(f"texture must be one of {TEXTURES}, got {texture!r}")


# ------------------------------------------------------------------------------------------------
# The paper's protocol over a world's images
# ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RetrievalSizes:
    """Sizes of one retrieval set, in the DeepHash-pytorch protocol (notes: Protocol), scaled down."""

    total: int  # images generated
    query_per_class: int
    train_per_class: int
    topk: int | None  # mAP@K cut-off; None = all


def per_class_pick(
    rs: np.random.RandomState, labels: np.ndarray, available: np.ndarray, per_class: int
) -> np.ndarray:
    """DeepHash-style sampling: for each class in turn, ``per_class`` not-yet-taken images that have it."""
    taken = np.zeros(len(labels), bool)
    taken[~available] = True
    picks = []
    for c in range(labels.shape[1]):
        candidates = np.flatnonzero(labels[:, c].astype(bool) & ~taken)
        if candidates.size < per_class:
            raise RuntimeError(f"class {c} has only {candidates.size} images left, needs {per_class}")
        chosen = rs.permutation(candidates)[:per_class]
        taken[chosen] = True
        picks.append(chosen)
    return np.sort(np.concatenate(picks))


def draw_protocol_split(
    rs: np.random.RandomState,
    name: str,
    images: np.ndarray,
    labels: np.ndarray,
    query_per_class: int,
    train_per_class: int,
) -> dict[str, ImageList]:
    """The paper's protocol over a world's images, drawn from the world's stream ``rs``: queries per class,
    the database all the rest, the train pool per class drawn from the database (notes: Protocol). A world
    regenerates its split from its seed; data sets on disk keep theirs in split files
    (:func:`kalahash.data.protocol.saved_protocol_split`)."""
    total = len(labels)
    everything = ImageList(images, labels, [f"{name}:{i}" for i in range(total)])
    query = per_class_pick(rs, labels, np.ones(total, bool), query_per_class)
    rest = np.setdiff1d(np.arange(total), query)
    is_rest = np.zeros(total, bool)
    is_rest[rest] = True
    train = per_class_pick(rs, labels, is_rest, train_per_class)
    return {
        "query": everything.subset(query),
        "train": everything.subset(train),
        "database": everything.subset(rest),
    }


class RetrievalSets:
    """A world's retrieval sets, called as ``make_retrieval_data(name, seed=0)``: ``draw(name, seed)``
    renders a set's images and labels and returns the stream it drew them from, which then draws the
    protocol split (:func:`draw_protocol_split`, the set's :class:`RetrievalSizes`).

    Cached in-process (the ``cached`` most recent): a repeated call returns the same object, whose arrays
    are read-only, since every caller gets them.
    """

    def __init__(
        self,
        module: str,
        classnames: Sequence[str],
        sizes: Mapping[str, RetrievalSizes],
        draw: Callable[[str, int], tuple[np.random.RandomState, np.ndarray, np.ndarray]],
        info: Mapping[str, Any] | None = None,
        cached: int = 4,
    ) -> None:
        self.module, self.classnames, self.sizes = module, tuple(classnames), dict(sizes)
        self._draw, self._info = draw, dict(info or {})
        self._make = functools.lru_cache(maxsize=cached)(self._generate)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(self.sizes)

    def __call__(self, name: str, seed: int = 0) -> RetrievalData:
        if name not in self.sizes:
            raise ValueError(f"name must be one of {', '.join(self.sizes)}, got {name!r}")
        return self._make(name, check_index("seed", seed))

    def cache_clear(self) -> None:
        self._make.cache_clear()

    def _generate(self, name: str, seed: int) -> RetrievalData:
        rs, images, labels = self._draw(name, seed)
        images.flags.writeable = False
        size = self.sizes[name]
        splits = draw_protocol_split(rs, name, images, labels, size.query_per_class, size.train_per_class)
        for part in splits.values():  # the cache hands the same arrays to every caller: no edits
            part.images.flags.writeable = False
            part.labels.flags.writeable = False
        info = {"source": f"{self.module} (generated in memory)", "seed": seed, **self._info}
        return RetrievalData(
            name, list(self.classnames), topk=size.topk, info={**info, "protocol": PROTOCOL}, **splits
        )


# ------------------------------------------------------------------------------------------------
# The pre-training pool
# ------------------------------------------------------------------------------------------------


class CaptionPool:
    """A world's endless pre-training pool of captioned images, called as ``caption_pool(n, seed=0,
    start=0)``: images ``start .. start + n - 1`` of the pool of ``seed`` (uint8, (n, 32, 32, 3)) and
    their ``n`` captions.

    The pool is a fixed sequence per seed in blocks of :data:`POOL_BLOCK` images, block ``b`` drawn by
    ``block(seed, b)`` from its own stream, so any window is reproducible and ``caption_pool(n, s)[0][:m]``
    equals ``caption_pool(m, s)[0]``. The 16 most recent blocks are kept (read-only).
    """

    def __init__(self, block: Callable[[int, int], tuple[np.ndarray, list[str]]]) -> None:
        self._block = block
        self._cached = functools.lru_cache(maxsize=16)(self._frozen_block)

    def _frozen_block(self, seed: int, block: int) -> tuple[np.ndarray, tuple[str, ...]]:
        images, captions = self._block(seed, block)
        images.flags.writeable = False
        return images, tuple(captions)

    def __call__(self, n: int, seed: int = 0, start: int = 0) -> tuple[np.ndarray, list[str]]:
        n, seed, start = check_index("n", n), check_index("seed", seed), check_index("start", start)
        if n == 0:
            return np.zeros((0, IMAGE_SIZE, IMAGE_SIZE, 3), np.uint8), []
        first, last = start // POOL_BLOCK, (start + n - 1) // POOL_BLOCK
        blocks = [self._cached(seed, b) for b in range(first, last + 1)]
        offset = start - first * POOL_BLOCK
        images = np.concatenate([b[0] for b in blocks])[offset : offset + n]
        captions = [c for b in blocks for c in b[1]][offset : offset + n]
        return np.ascontiguousarray(images), captions

    def cache_clear(self) -> None:
        """Forget the kept blocks: the next call generates them again."""
        self._cached.cache_clear()


# ------------------------------------------------------------------------------------------------
# A world's spec, registered once
# ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class WorldSpec:
    """What the rest of kalahash reads of a world, registered once by the world's module
    (:func:`register_world`): presets, pre-training, the notebooks' settings, the CLI's help and the
    run defaults all read it here."""

    name: str  # the world, and its single-label retrieval set
    classnames: tuple[str, ...]  # its classes' names, in label order
    sets: RetrievalSets  # make_retrieval_data(name, seed): its retrieval sets, single-label first
    caption_pool: CaptionPool  # caption_pool(n, seed=, start=): its pre-training pool
    borrows: Mapping[str, str]  # retrieval set -> the paper data set whose released presets it uses
    backbones: tuple[str, ...]  # the built-in tiny CLIPs pre-trained on its pool, smallest first
    default_backbone: str  # the one runs on this world use unless told
    words: tuple[str, ...] | None = None  # its captions' vocabulary (compact token rows); None: all rows
    held_out: frozenset[str] = frozenset()  # class names never captioned in pre-training

    @property
    def datasets(self) -> tuple[str, ...]:
        """Its retrieval sets: the single-label one (the world's name), then the multi-label one."""
        return self.sets.names

    @property
    def module(self) -> str:
        return self.sets.module


# The registered worlds by name, in the order of registration (kalahash.worlds imports objects10 first).
WORLDS: dict[str, WorldSpec] = {}


def register_world(spec: WorldSpec) -> WorldSpec:
    """Register a world: its spec in :data:`WORLDS` and each of its retrieval sets with
    :func:`kalahash.data.load_dataset` (data never imports a world). A set's loader takes no options;
    ``data_root`` and ``download`` are unused."""
    if spec.name in WORLDS:
        raise ValueError(f"world {spec.name!r} is already registered")
    if spec.default_backbone not in spec.backbones:
        raise ValueError(f"default_backbone {spec.default_backbone!r} is not one of {spec.backbones}")
    missing = sorted(set(spec.datasets) - set(spec.borrows))
    if missing:
        raise ValueError(f"borrows names no paper data set for {', '.join(missing)}")
    for name in spec.datasets:
        register_dataset(name)(_loader(spec.sets, name))
    WORLDS[spec.name] = spec
    return spec


def _loader(sets: RetrievalSets, name: str) -> Callable[..., RetrievalData]:
    def load(data_root: Path | None, *, seed: int = 0, download: bool = False) -> RetrievalData:
        return sets(name, seed)

    load.__name__ = load.__qualname__ = f"load_{name.replace('-', '_')}"
    load.__doc__ = f"The offline world {name!r}, generated by {sets.module} (data_root is unused)."
    return load


def world_spec(name: str) -> WorldSpec:
    """The registered world ``name`` (ValueError naming the registered ones)."""
    if name not in WORLDS:
        raise ValueError(f"world must be one of {', '.join(WORLDS)}, got {name!r}")
    return WORLDS[name]


def world_of(dataset: str) -> WorldSpec | None:
    """The world a retrieval set belongs to (None for a data set that is not a built-in world's)."""
    return next((spec for spec in WORLDS.values() if dataset in spec.datasets), None)


def world_datasets() -> tuple[str, ...]:
    """Every registered world's retrieval sets, world by world."""
    return tuple(name for spec in WORLDS.values() for name in spec.datasets)


def family_text(backbones: Sequence[str]) -> str:
    """Backbones as the help and the docs write them: ``tiny-objects-s/m/l`` for a family that differs
    only after its last dash, else the names joined by commas."""
    stems = {b.rsplit("-", 1)[0] for b in backbones}
    if len(backbones) > 1 and len(stems) == 1:
        return f"{stems.pop()}-" + "/".join(b.rsplit("-", 1)[1] for b in backbones)
    return ", ".join(backbones)
