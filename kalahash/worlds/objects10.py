"""``objects10``: the second offline world, built after the paper's CIFAR-10 setting.

Why a second world. ``shapes`` (:mod:`kalahash.worlds.shapes`) made the machinery testable offline, but its 12
class names are compositional (texture x shape), so its class-text knowledge K has effective rank 6,
and its tiny CLIP has only 4 image blocks. This world keeps what matters in the paper's setting:

Classes. Ten object names, each one word and one token of CLIP's vocabulary, none shared with
another class, as CIFAR-10's are (:data:`CLASSNAMES`): house, tree, car, boat, fish, key, cup,
umbrella, ladder, hammer. Each is a procedural glyph assembled from a few parts (a roof on a body,
a canopy on a trunk, wheels under a car body, ...), so the class is the *arrangement* of parts: no
single part, colour or texture gives it away. Every instance is rotated (up to 24 degrees), may be
mirrored, and is stretched or squeezed by up to 15 %.

Nuisances, all drawn independently of the class: colour (8), texture (plain, striped, dotted,
checked, with a random phase and stripe direction), size (radius 7-12 px; "small" below 9.5),
position, background (grey level, tint, flat, a horizontal or vertical gradient or faint checks),
0-2 small clutter blobs (discs, squares, rings, bars in any colour), and per-pixel noise of one of
three strengths. Colour is uniform over classes, so it separates nothing (offline-world notes,
pitfalls); glyph area differs between classes, as object area does in photographs.

Protocol (notes: Protocol), 32x32 images as CIFAR-10's:
``objects10``: 700 images a class; query 100 a class (1,000), database = all but the query (6,000),
train pool 500 a class drawn from the database (5,000); mAP over the whole database.
``objects10-multi`` (NUS-WIDE style): 10,000 scenes of 2-3 objects of distinct classes in the cells
of a 2x2 grid (radius 5.5-7.5 px: harder to read, as small objects in real scenes are); query and
train pool "100 / 500 a class" (an image counts for all its labels), database = all but the query
(9,000); mAP@1000.

Pre-training captions (:func:`caption_pool`) always name the class word and name each nuisance only
some of the time (size 35 %, colour 60 %, texture 60 % or 80 % for "plain", position 25 %), in
varied templates: "a fish", "a photo of a big red striped fish.", "a drawing of a key on the
left.", "an image of a small umbrella", "a cup on a noisy background", "a house and a green tree"
(70 % single objects, 30 % scenes). Clutter is never named, as backgrounds in web captions are not.
The downstream class prompt (:data:`kalahash.prompts.CLASS_PROMPT`, "a photo of a {class}.") is one of
the templates.

Disjointness. Pool and downstream images come from different streams (:mod:`kalahash.worlds.toolkit`;
tag "OBJ1", then a stream id and the seed), so they share no draws (``tests/test_worlds.py`` checks it
by content hash). Rotations use a fixed table of cosines, so no transcendental function is needed and
the same seed gives the same bytes on any machine.

What the world is for: a tiny CLIP family (``tiny-objects-s/m/l``, 6 to 12 image blocks) pre-trained
on it holds class-text knowledge with no words shared between classes, classifies zero-shot far
above a 1-shot linear probe on its frozen features, as CLIP does on CIFAR-10, and leaves room for
few-shot adaptation (zero-shot well below 1). What it is not: a stand-in for natural images;
absolute mAPs here say nothing about CIFAR-10's, only how methods compare.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from kalahash.prompts import CLASS_PROMPT

from .toolkit import (
    COLOUR_NAMES,
    COLOURS,
    GRID,
    IGRID,
    IMAGE_SIZE,
    POOL_BLOCK,
    STREAM_POOL,
    TEXTURES,
    CaptionPool,
    RetrievalSets,
    RetrievalSizes,
    WorldSpec,
    randints,
    register_world,
    seeded_rng,
    texture_mask,
)

CLASSNAMES: tuple[str, ...] = (
    "house", "tree", "car", "boat", "fish", "key", "cup", "umbrella", "ladder", "hammer",
)  # fmt: skip
SIZES: tuple[str, ...] = ("small", "big")
POSITIONS: tuple[str, ...] = ("on the left", "on the right", "at the top", "at the bottom", "in the middle")
SINGLE_TEMPLATES: tuple[str, ...] = (
    "{}", "a photo of {}.", "a picture of {}.", "a drawing of {}.", "an image of {}", "{} on a noisy background",
)  # fmt: skip
SPLITS: dict[str, RetrievalSizes] = {
    "objects10": RetrievalSizes(
        total=700 * len(CLASSNAMES), query_per_class=100, train_per_class=500, topk=None
    ),
    "objects10-multi": RetrievalSizes(total=10_000, query_per_class=100, train_per_class=500, topk=1000),
}
WORLD_DATASETS: tuple[str, ...] = tuple(SPLITS)

_WORLD_TAG = 0x4F424A31  # "OBJ1": never the shapes world's tag, so no stream is shared with it
_STREAM_IDS = {"objects10": 2, "objects10-multi": 3}
# Rotations of -24 .. 24 degrees in steps of 8: (cos, sin), hard-coded for portability.
_ROTATIONS = np.array(
    [
        (0.9135454576426009, -0.4067366430758002),
        (0.9612616959383189, -0.27563735581699916),
        (0.9902680687415704, -0.13917310096006544),
        (1.0, 0.0),
        (0.9902680687415704, 0.13917310096006544),
        (0.9612616959383189, 0.27563735581699916),
        (0.9135454576426009, 0.4067366430758002),
    ]
)
_RADIUS = (7.0, 12.0)
_SMALL_BELOW = 9.5
_MULTI_RADIUS = (5.5, 7.5)
_PALETTE = np.array(list(COLOURS.values()), dtype=np.int64)


def _rng(*entropy: int, block: int | None = None) -> np.random.RandomState:
    return seeded_rng(_WORLD_TAG, *entropy, block=block)


# ------------------------------------------------------------------------------------------------
# Glyphs: inside tests in object coordinates (u right, v down, the glyph within about [-1, 1]^2)
# ------------------------------------------------------------------------------------------------


def _box(u: np.ndarray, v: np.ndarray, u0: float, u1: float, v0: float, v1: float) -> np.ndarray:
    return (u >= u0) & (u <= u1) & (v >= v0) & (v <= v1)


def _disc(u: np.ndarray, v: np.ndarray, cu: float, cv: float, r: float) -> np.ndarray:
    du, dv = u - cu, v - cv
    return du * du + dv * dv <= r * r


def _ring(u: np.ndarray, v: np.ndarray, cu: float, cv: float, outer: float, inner: float) -> np.ndarray:
    return _disc(u, v, cu, cv, outer) & ~_disc(u, v, cu, cv, inner)


def _house(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    roof = (v >= -0.9) & (v <= -0.1) & (np.abs(u) <= (v + 0.9) * 1.1)
    return (roof | _box(u, v, -0.62, 0.62, -0.1, 0.85)) & ~_box(u, v, -0.16, 0.16, 0.35, 0.85)


def _tree(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    return _disc(u, v, 0.0, -0.3, 0.68) | _box(u, v, -0.16, 0.16, 0.2, 1.0)


def _car(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    cabin = (v >= -0.55) & (v <= -0.05) & (np.abs(u + 0.05) <= 0.4 + (v + 0.55) * 0.6)
    body = _box(u, v, -1.0, 1.0, -0.05, 0.4)
    return cabin | body | _disc(u, v, -0.55, 0.5, 0.27) | _disc(u, v, 0.55, 0.5, 0.27)


def _boat(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    hull = (v >= 0.35) & (v <= 0.8) & (np.abs(u) <= 1.0 - (v - 0.35) * 0.8)
    sail = (u >= 0.12) & (v >= -0.9) & (v <= 0.22) & (u - 0.12 <= (v + 0.9) * 0.7)
    return hull | sail | _box(u, v, -0.12, 0.06, -0.95, 0.35)


def _fish(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    du, dv = (u + 0.2) / 0.75, v / 0.45
    tail = (u >= 0.38) & (u <= 1.0) & (np.abs(v) <= (u - 0.38) * 0.9)
    return ((du * du + dv * dv <= 1.0) | tail) & ~_disc(u, v, -0.6, -0.08, 0.13)


def _key(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    teeth = _box(u, v, 0.5, 0.68, 0.0, 0.42) | _box(u, v, 0.8, 0.98, 0.0, 0.32)
    return _ring(u, v, -0.6, 0.0, 0.42, 0.2) | _box(u, v, -0.25, 0.98, -0.11, 0.11) | teeth


def _cup(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    body = (v >= -0.65) & (v <= 0.7) & (np.abs(u + 0.2) <= 0.5 - (v + 0.65) * 0.08)
    return body | (_ring(u, v, 0.3, 0.0, 0.45, 0.22) & (u >= 0.25))


def _umbrella(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    canopy = _disc(u, v, 0.0, 0.0, 0.95) & (v <= 0.0)
    hook = _ring(u, v, -0.2, 0.7, 0.3, 0.1) & (v >= 0.7)
    return canopy | _box(u, v, 0.0, 0.2, -0.05, 0.72) | hook


def _ladder(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    rails = _box(u, v, -0.62, -0.4, -1.0, 1.0) | _box(u, v, 0.4, 0.62, -1.0, 1.0)
    rungs = _box(np.abs(u), v, 0.0, 0.5, -1.0, 1.0) & (np.abs((v + 1.0) % 0.5 - 0.25) <= 0.09)
    return rails | rungs


def _hammer(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    head = _box(u, v, -0.55, 0.75, -0.95, -0.45) & (v >= -0.95 + (u - 0.45) * 0.6)
    return head | _box(u, v, -0.13, 0.13, -0.5, 1.0) | _box(u, v, -0.8, -0.5, -0.85, -0.55)


_GLYPHS: tuple[Callable[[np.ndarray, np.ndarray], np.ndarray], ...] = (
    _house, _tree, _car, _boat, _fish, _key, _cup, _umbrella, _ladder, _hammer,
)  # fmt: skip


# ------------------------------------------------------------------------------------------------
# Scenes
# ------------------------------------------------------------------------------------------------


@dataclass
class _Objects:
    """Objects to paint, one an image per call: which image, class, nuisances and geometry."""

    image: np.ndarray
    cls: np.ndarray
    colour: np.ndarray
    texture: np.ndarray
    cx: np.ndarray
    cy: np.ndarray
    radius: np.ndarray


def _paint(rs: np.random.RandomState, canvas: np.ndarray, objs: _Objects) -> None:
    """Draw glyphs (rotated, mirrored, stretched at random) with colour and texture, in place."""
    m = len(objs.image)
    rot = _ROTATIONS[randints(rs, 0, len(_ROTATIONS), m)]
    flip = np.where(randints(rs, 0, 2, m) == 1, -1.0, 1.0)
    stretch = 0.85 + 0.3 * rs.random_sample(m)
    phase, orient = randints(rs, 0, 12, (m, 2)), randints(rs, 0, 3, m)
    rgb = np.clip(_PALETTE[objs.colour] + randints(rs, -18, 19, (m, 3)), 0, 255).astype(np.int16)
    dx = (GRID[None, None, :] - objs.cx[:, None, None]) / objs.radius[:, None, None]
    dy = (GRID[None, :, None] - objs.cy[:, None, None]) / objs.radius[:, None, None]
    cos, sin = rot[:, 0, None, None], rot[:, 1, None, None]
    u = (cos * dx + sin * dy) * flip[:, None, None] / stretch[:, None, None]
    v = (cos * dy - sin * dx) * stretch[:, None, None]
    inside = np.zeros((m, IMAGE_SIZE, IMAGE_SIZE), dtype=bool)
    bright = np.zeros_like(inside)
    for c, glyph in enumerate(_GLYPHS):
        sel = np.flatnonzero(objs.cls == c)
        if sel.size:
            inside[sel] = glyph(u[sel], v[sel])
    for t, texture in enumerate(TEXTURES):
        sel = np.flatnonzero(objs.texture == t)
        if sel.size:
            x, y = IGRID[None, None, :], IGRID[None, :, None]
            bright[sel] = texture_mask(texture, x, y, phase[sel], orient[sel])
    pixel = np.where(bright[..., None], rgb[:, None, None, :], rgb[:, None, None, :] // 4)
    canvas[objs.image] = np.where(inside[..., None], pixel, canvas[objs.image])


def _background(rs: np.random.RandomState, n: int) -> np.ndarray:
    """Grey with a tint, then flat, a horizontal or vertical gradient, or faint 8-px checks."""
    grey = randints(rs, 85, 166, (n, 1, 1, 1)) + randints(rs, -12, 13, (n, 1, 1, 3))
    kind = randints(rs, 0, 4, n)[:, None, None, None]
    slope = randints(rs, -8, 9, (n, 1, 1, 1))
    x, y = IGRID[None, None, :, None], IGRID[None, :, None, None]
    ramp = np.where(kind == 1, (x - 16) * slope // 8, np.where(kind == 2, (y - 16) * slope // 8, 0))
    checks = np.where(kind == 3, ((x // 8 + y // 8) % 2) * 12 - 6, 0)
    return (grey + ramp + checks).astype(np.int16)


def _clutter(rs: np.random.RandomState, canvas: np.ndarray) -> None:
    """0-2 small unnamed blobs an image (disc, square, ring or bar, any colour), under the objects."""
    n = len(canvas)
    count = np.minimum(randints(rs, 0, 5, n), 2)  # 0, 1, 2 with probabilities 0.2, 0.2, 0.6
    for k in range(2):
        img = np.flatnonzero(count > k)
        m = img.size
        kind = randints(rs, 0, 4, m)[:, None, None]
        r = (1.5 + 2.0 * rs.random_sample(m))[:, None, None]
        dx = GRID[None, None, :] - (2.0 + 28.0 * rs.random_sample(m))[:, None, None]
        dy = GRID[None, :, None] - (2.0 + 28.0 * rs.random_sample(m))[:, None, None]
        d2 = dx * dx + dy * dy
        box = np.maximum(np.abs(dx), np.abs(dy))
        bar = np.where(randints(rs, 0, 2, m)[:, None, None] == 1, np.abs(dx), np.abs(dy))
        mask = np.where(
            kind == 0,
            d2 <= r * r,
            np.where(kind == 1, box <= r, np.where(kind == 2, (d2 <= r * r) & (d2 >= r * r / 4), bar <= 0.9)),
        )
        mask &= box <= r * 1.6
        rgb = _PALETTE[randints(rs, 0, len(COLOURS), m)].astype(np.int16)[:, None, None, :]
        canvas[img] = np.where(mask[..., None], rgb, canvas[img])


def _finish(rs: np.random.RandomState, canvas: np.ndarray) -> np.ndarray:
    """Triangular per-pixel noise of strength 1, 2 or 3 (up to +-12, 24, 36), then uint8."""
    level = randints(rs, 1, 4, (len(canvas), 1, 1, 1))
    noise = randints(rs, -6, 7, canvas.shape) + randints(rs, -6, 7, canvas.shape)
    return np.clip(canvas + noise * level, 0, 255).astype(np.uint8)


def _place_single(rs: np.random.RandomState, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    radius = _RADIUS[0] + (_RADIUS[1] - _RADIUS[0]) * rs.random_sample(n)
    margin = radius * 1.05 + 0.5
    cx = margin + (IMAGE_SIZE - 2 * margin) * rs.random_sample(n)
    cy = margin + (IMAGE_SIZE - 2 * margin) * rs.random_sample(n)
    return radius, cx, cy


def _place_multi(rs: np.random.RandomState, counts: np.ndarray) -> list[tuple[np.ndarray, ...]]:
    """Per slot k: (images, radius, cx, cy); objects in distinct cells of a 2x2 grid, reading order."""
    n = len(counts)
    cells = np.argsort(rs.random_sample((n, 4)), axis=1)[:, :3]
    cells = np.sort(np.where(np.arange(3)[None, :] < counts[:, None], cells, 9), axis=1)
    half = IMAGE_SIZE / 2
    slots = []
    for k in range(3):
        img = np.flatnonzero(cells[:, k] < 9)
        cell, m = cells[img, k], img.size
        radius = _MULTI_RADIUS[0] + (_MULTI_RADIUS[1] - _MULTI_RADIUS[0]) * rs.random_sample(m)
        cx = (cell % 2) * half + half / 2 + (rs.random_sample(m) * 2.0 - 1.0)
        cy = (cell // 2) * half + half / 2 + (rs.random_sample(m) * 2.0 - 1.0)
        slots.append((img, radius, cx, cy))
    return slots


def _render_single(rs: np.random.RandomState, classes: np.ndarray) -> tuple[np.ndarray, _Objects]:
    """One object of the given class an image, every nuisance at random; returns what was drawn."""
    n = len(classes)
    canvas = _background(rs, n)
    _clutter(rs, canvas)
    radius, cx, cy = _place_single(rs, n)
    objs = _Objects(
        np.arange(n),
        classes,
        randints(rs, 0, len(COLOURS), n),
        randints(rs, 0, len(TEXTURES), n),
        cx,
        cy,
        radius,
    )
    _paint(rs, canvas, objs)
    return _finish(rs, canvas), objs


def _render_multi(rs: np.random.RandomState, n: int) -> tuple[np.ndarray, list[_Objects]]:
    """Scenes of 2-3 objects of distinct classes; returns the images and each slot's objects."""
    counts = randints(rs, 2, 4, n)
    classes = np.argsort(rs.random_sample((n, len(CLASSNAMES))), axis=1)[:, :3]
    canvas = _background(rs, n)
    _clutter(rs, canvas)
    slots = []
    for k, (img, radius, cx, cy) in enumerate(_place_multi(rs, counts)):
        colour, texture = randints(rs, 0, len(COLOURS), img.size), randints(rs, 0, len(TEXTURES), img.size)
        objs = _Objects(img, classes[img, k], colour, texture, cx, cy, radius)
        _paint(rs, canvas, objs)
        slots.append(objs)
    return _finish(rs, canvas), slots


# ------------------------------------------------------------------------------------------------
# Captions and the pre-training pool
# ------------------------------------------------------------------------------------------------


def _position(cx: float, cy: float) -> str:
    dx, dy = cx - IMAGE_SIZE / 2, cy - IMAGE_SIZE / 2
    if max(abs(dx), abs(dy)) < 3.0:
        return POSITIONS[4]
    if abs(dx) >= abs(dy):
        return POSITIONS[0] if dx < 0 else POSITIONS[1]
    return POSITIONS[2] if dy < 0 else POSITIONS[3]


def _phrase(objs: _Objects, j: int, keep: np.ndarray, with_size: bool) -> str:
    """ "a big red striped fish", each nuisance word kept or dropped by ``keep``."""
    words = []
    if with_size and keep[0]:
        words.append(SIZES[int(objs.radius[j] >= _SMALL_BELOW)])
    if keep[1]:
        words.append(COLOUR_NAMES[objs.colour[j]])
    texture = TEXTURES[objs.texture[j]]
    if keep[2] or (keep[3] and texture == "plain"):  # a bare caption reads as a plain object
        words.append(texture)
    words.append(CLASSNAMES[objs.cls[j]])
    return f"{'an' if words[0][0] in 'aeiou' else 'a'} {' '.join(words)}"


_KEEP_P = np.array([0.35, 0.6, 0.6, 0.5, 0.25])  # size, colour, texture, "plain" again, position


def _single_captions(rs: np.random.RandomState, objs: _Objects) -> list[str]:
    m = len(objs.image)
    keep = rs.random_sample((m, len(_KEEP_P))) < _KEEP_P
    template = np.maximum(randints(rs, 0, len(SINGLE_TEMPLATES) + 2, m) - 2, 0)  # 3/8 bare, 1/8 each other
    captions = []
    for j in range(m):
        text = SINGLE_TEMPLATES[template[j]].format(_phrase(objs, j, keep[j], with_size=True))
        if keep[j, 4] and template[j] < len(SINGLE_TEMPLATES) - 1:  # position, before any final "."
            where = _position(objs.cx[j], objs.cy[j])
            text = f"{text[:-1]} {where}." if text.endswith(".") else f"{text} {where}"
        captions.append(text)
    return captions


def _multi_captions(rs: np.random.RandomState, n: int, slots: list[_Objects]) -> list[str]:
    parts: list[list[str]] = [[] for _ in range(n)]
    for objs in slots:
        keep = rs.random_sample((len(objs.image), len(_KEEP_P))) < _KEEP_P
        for j, i in enumerate(objs.image.tolist()):
            parts[i].append(_phrase(objs, j, keep[j], with_size=False))
    photo = randints(rs, 0, 2, n)
    captions = []
    for i, p in enumerate(parts):
        body = " and ".join(p) if len(p) == 2 else f"{p[0]}, {p[1]} and {p[2]}"
        captions.append(f"a photo of {body}." if photo[i] and len(p) == 2 else body)  # <= 14 tokens
    return captions


def _pool_block(seed: int, block: int) -> tuple[np.ndarray, list[str]]:
    """One block of the pool: 70 % single objects (classes uniform), 30 % scenes of 2-3 objects."""
    rs = _rng(STREAM_POOL, seed, block=block)
    n = POOL_BLOCK
    single = rs.random_sample(n) < 0.7
    images = np.zeros((n, IMAGE_SIZE, IMAGE_SIZE, 3), np.uint8)
    captions = [""] * n
    index = np.flatnonzero(single)
    images[index], objs = _render_single(rs, randints(rs, 0, len(CLASSNAMES), index.size))
    for i, text in zip(index.tolist(), _single_captions(rs, objs), strict=True):
        captions[i] = text
    index = np.flatnonzero(~single)
    images[index], slots = _render_multi(rs, index.size)
    for i, text in zip(index.tolist(), _multi_captions(rs, index.size, slots), strict=True):
        captions[i] = text
    return images, captions


# captions such as "a photo of a big red striped fish."
caption_pool = CaptionPool(_pool_block)


def caption_words() -> tuple[str, ...]:
    """Every word and punctuation mark a pool caption or the class prompt can contain, sorted: the
    world's vocabulary (the tiny CLIPs store token-embedding rows for these tokens only)."""
    text = " ".join(
        [
            *SINGLE_TEMPLATES,
            CLASS_PROMPT,
            *POSITIONS,
            *CLASSNAMES,
            *COLOUR_NAMES,
            *TEXTURES,
            *SIZES,
            "an and ,",
        ]
    )
    return tuple(sorted(set(re.findall(r"[a-z]+|[.,]", text))))


# ------------------------------------------------------------------------------------------------
# Downstream retrieval sets
# ------------------------------------------------------------------------------------------------


def _draw(name: str, seed: int) -> tuple[np.random.RandomState, np.ndarray, np.ndarray]:
    """A retrieval set's images and labels, and the stream that then draws its protocol split."""
    rs = _rng(_STREAM_IDS[name], seed)
    total, num_classes, chunk = SPLITS[name].total, len(CLASSNAMES), 2048
    if name == "objects10":
        classes = rs.permutation(np.arange(total) % num_classes)
        images = np.concatenate(
            [_render_single(rs, classes[i : i + chunk])[0] for i in range(0, total, chunk)]
        )
        return rs, images, np.eye(num_classes, dtype=np.uint8)[classes]
    parts = [_render_multi(rs, min(chunk, total - i)) for i in range(0, total, chunk)]
    labels = np.zeros((total, num_classes), np.uint8)
    offset = 0
    for images, slots in parts:
        for objs in slots:
            labels[offset + objs.image, objs.cls] = 1
        offset += len(images)
    return rs, np.concatenate([p[0] for p in parts]), labels


# ``objects10`` or ``objects10-multi`` in the paper's protocol (module docstring: Protocol):
# make_retrieval_data(name, seed=0).
make_retrieval_data = RetrievalSets(__name__, CLASSNAMES, SPLITS, _draw)


# Registered at import, so load_dataset("objects10") works; kalahash.worlds imports this module.
SPEC = register_world(
    WorldSpec(
        name="objects10",
        classnames=CLASSNAMES,
        sets=make_retrieval_data,
        caption_pool=caption_pool,
        borrows={"objects10": "cifar10", "objects10-multi": "nuswide"},  # the paper's sets it imitates
        backbones=("tiny-objects-s", "tiny-objects-m", "tiny-objects-l"),
        default_backbone="tiny-objects-m",
        words=caption_words(),
    )
)
