"""The offline world: a deterministic generator of captioned 32x32 images and its retrieval sets.

No real CLIP weights or image data can be downloaded on our machines, so the demo, the notebooks'
smoke profiles and the tests run in a small synthetic world where the paper's idea can still show:
a tiny CLIP pre-trained on captions (:mod:`kalahash.worlds.pretrain`) holds real class-text knowledge, and the
downstream classes need more than that knowledge gives zero-shot.

Vocabulary. An object is a *shape* (circle, square, triangle, diamond, cross, star, heart) of a
*colour* (8), a *texture* (plain, striped, dotted, checked) and a *size* (small, big), at a random
position on a noisy, slightly tinted mid-grey background. Captions read like "a big red striped circle"; every
attribute but the shape is left out at random, so each word is learnt on its own.

Downstream classes (:data:`CLASS_PAIRS`) are 12 (texture, shape) pairs such as "striped circle":
every shape is in two classes and every texture in three, so neither the shape nor the texture alone
separates them, and colour is drawn independently of the class, so colour separates nothing.
Four of the pairs (:data:`HELD_OUT_PAIRS`) never occur in pre-training, in any colour or scene: the
model knows their words only from other pairs, so zero-shot is imperfect and few-shot adaptation has
room to help.

Protocol (:func:`make_retrieval_data`). ``"shapes"``: single-label, 12 classes, 800 images a class;
query 100 a class, database = all but the query (8,400), train pool 500 a class drawn from the
database; mAP over the whole database. ``"shapes-multi"``: 12,000 scenes of 2-3 objects of distinct
classes, labels = the classes present; query and train pool "100 / 500 a class" as NUS-WIDE's lists (an
image counts for all its labels), database = all but the query (10,800); mAP@1000.

Streams (:mod:`kalahash.worlds.toolkit`): the tag "KALA", then the pool's or a set's stream and the
seed. Pre-training images are disjoint from the downstream sets because they come from a different
stream: images with a held-out pair cannot occur in it at all, and for the rest two images could only
coincide if 3,072 bytes of independent per-pixel noise did (``tests/test_worlds.py`` checks by content
hash).

Importing this module registers ``shapes`` and ``shapes-multi`` with :func:`kalahash.data.load_dataset`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

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

SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "diamond", "cross", "star", "heart")
SIZES: tuple[str, ...] = ("small", "big")

# Downstream classes: (texture, shape). Each shape twice, each texture three times (module docstring).
CLASS_PAIRS: tuple[tuple[str, str], ...] = (
    ("striped", "circle"),
    ("dotted", "circle"),
    ("dotted", "square"),
    ("checked", "square"),
    ("plain", "triangle"),
    ("checked", "triangle"),
    ("striped", "diamond"),
    ("plain", "diamond"),
    ("checked", "cross"),
    ("dotted", "cross"),
    ("plain", "star"),
    ("striped", "star"),
)
# Pairs never shown in pre-training: one per texture, on four different shapes.
HELD_OUT_PAIRS: frozenset[tuple[str, str]] = frozenset(
    {("dotted", "circle"), ("checked", "triangle"), ("striped", "diamond"), ("plain", "star")}
)
CLASSNAMES: tuple[str, ...] = tuple(f"{t} {s}" for t, s in CLASS_PAIRS)
SPLITS: dict[str, RetrievalSizes] = {
    # CIFAR-10 style: 100 queries a class, database = all but the queries, train pool 500 a class from it.
    "shapes": RetrievalSizes(
        total=800 * len(CLASS_PAIRS), query_per_class=100, train_per_class=500, topk=None
    ),
    # NUS-WIDE style: 100 queries and 500 train images "a class" (an image counts for all its labels),
    # database = all but the queries, mAP@1000 (NUS-WIDE: 5,000 of ~190,000; ours: 1,000 of 10,800).
    "shapes-multi": RetrievalSizes(
        total=1000 * len(CLASS_PAIRS), query_per_class=100, train_per_class=500, topk=1000
    ),
}
WORLD_DATASETS: tuple[str, ...] = tuple(SPLITS)

# SeedSequence entropy words: a tag for the world and one per stream, so streams never share state.
_WORLD_TAG = 0x4B414C41  # "KALA"
_STREAM_IDS = {"shapes": 2, "shapes-multi": 3}
# Star: the five pentagram lines, normals at -18 + 72 j degrees (cos, sin hard-coded for portability).
_STAR_NORMALS = np.array(
    [
        (0.9510565162951535, -0.3090169943749474),
        (0.5877852522924731, 0.8090169943749475),
        (-0.5877852522924731, 0.8090169943749475),
        (-0.9510565162951535, -0.3090169943749474),
        (0.0, -1.0),
    ]
)
_COS72 = 0.30901699437494745
_RADIUS = {"small": (5.0, 7.5), "big": (8.5, 11.5)}
_MULTI_RADIUS = (4.75, 6.5)


def _rng(*entropy: int, block: int | None = None) -> np.random.RandomState:
    return seeded_rng(_WORLD_TAG, *entropy, block=block)


def _shape_mask(shape: str, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Inside test in object coordinates (u right, v down, radius 1), areas roughly matched."""
    au, av = np.abs(u), np.abs(v)
    if shape == "circle":
        return u * u + v * v <= 0.9
    if shape == "square":
        return np.maximum(au, av) <= 0.82
    if shape == "diamond":
        return au + av <= 1.12
    if shape == "triangle":  # apex up, flat base
        return (v <= 0.72) & (au * 1.75 <= (v + 1.05) * 1.05)
    if shape == "cross":
        return ((au <= 0.36) & (av <= 1.0)) | ((av <= 0.36) & (au <= 1.0))
    if shape == "star":  # inside iff at most one of the five pentagram half-planes is violated
        radius = 1.18
        outside = sum(
            (u * cx + v * sy > radius * _COS72).astype(np.int8) for cx, sy in _STAR_NORMALS.tolist()
        )
        return outside <= 1
    if shape == "heart":  # (x^2 + y^2 - 1)^3 <= x^2 y^3 with y up
        x, y = u * 1.12, 0.2 - v * 1.12
        q = x * x + y * y - 1.0
        return q * q * q <= x * x * y * y * y
    raise ValueError(f"shape must be one of {SHAPES}, got {shape!r}")


@dataclass
class _Objects:
    """One object per image in a slot: index arrays into the vocabularies plus geometry."""

    image: np.ndarray  # which image of the batch
    shape: np.ndarray
    texture: np.ndarray
    colour: np.ndarray
    cx: np.ndarray
    cy: np.ndarray
    radius: np.ndarray
    phase: np.ndarray  # (m, 2) int texture offsets
    orient: np.ndarray  # stripe orientation
    rgb: np.ndarray  # (m, 3) jittered bright colour


def _draw_objects(
    rs: np.random.RandomState,
    image: np.ndarray,
    shape: np.ndarray,
    texture: np.ndarray,
    colour: np.ndarray,
    cx: np.ndarray,
    cy: np.ndarray,
    radius: np.ndarray,
) -> _Objects:
    m = len(image)
    jitter = randints(rs, -18, 19, (m, 3))
    rgb = np.clip(np.array(list(COLOURS.values()), dtype=np.int64)[colour] + jitter, 0, 255)
    return _Objects(
        image, shape, texture, colour, cx, cy, radius, randints(rs, 0, 12, (m, 2)), randints(rs, 0, 3, m), rgb
    )


def _paint(canvas: np.ndarray, objs: _Objects) -> None:
    """Composite objects onto ``canvas`` (n, H, W, 3) int16 in place; at most one object per image."""
    m = len(objs.image)
    inside = np.zeros((m, IMAGE_SIZE, IMAGE_SIZE), dtype=bool)
    bright = np.zeros((m, IMAGE_SIZE, IMAGE_SIZE), dtype=bool)
    for s, shape in enumerate(SHAPES):
        sel = np.flatnonzero(objs.shape == s)
        if sel.size:
            r = objs.radius[sel, None, None]
            u = (GRID[None, None, :] - objs.cx[sel, None, None]) / r
            v = (GRID[None, :, None] - objs.cy[sel, None, None]) / r
            inside[sel] = _shape_mask(shape, u, v)
    for t, texture in enumerate(TEXTURES):
        sel = np.flatnonzero(objs.texture == t)
        if sel.size:
            x, y = IGRID[None, None, :], IGRID[None, :, None]
            bright[sel] = texture_mask(texture, x, y, objs.phase[sel], objs.orient[sel])
    rgb = objs.rgb.astype(np.int16)[:, None, None, :]
    pixel = np.where(bright[..., None], rgb, rgb // 4)  # bright colour or its dark shade
    canvas[objs.image] = np.where(inside[..., None], pixel, canvas[objs.image])


def _background(rs: np.random.RandomState, n: int) -> np.ndarray:
    grey = randints(
        rs, 95, 150, (n, 1, 1, 1)
    )  # mid grey: both the bright colour and its dark shade stand out
    tint = randints(rs, -10, 11, (n, 1, 1, 3))
    return np.broadcast_to(grey + tint, (n, IMAGE_SIZE, IMAGE_SIZE, 3)).astype(np.int16)


def _finish(rs: np.random.RandomState, canvas: np.ndarray) -> np.ndarray:
    """Per-pixel triangular noise over everything (objects included), then uint8."""
    noise = randints(rs, -12, 13, canvas.shape)
    noise += randints(rs, -12, 13, canvas.shape)
    noise += canvas
    return np.clip(noise, 0, 255, out=noise).astype(np.uint8)


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def _phrase(words: list[str]) -> str:
    return f"{_article(words[0])} {' '.join(words)}"


def _place_single(rs: np.random.RandomState, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Size class, radius and a centre that keeps the whole object inside the image."""
    big = randints(rs, 0, 2, n)
    lo = np.where(big == 1, _RADIUS["big"][0], _RADIUS["small"][0])
    hi = np.where(big == 1, _RADIUS["big"][1], _RADIUS["small"][1])
    radius = lo + (hi - lo) * rs.random_sample(n)
    margin = radius * 1.2 + 0.5
    cx = margin + (IMAGE_SIZE - 2 * margin) * rs.random_sample(n)
    cy = margin + (IMAGE_SIZE - 2 * margin) * rs.random_sample(n)
    return big, radius, cx, cy


def _place_multi(
    rs: np.random.RandomState, counts: np.ndarray
) -> list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]]:
    """Per slot: (images, radius, cx, cy). Objects sit in distinct cells of a 2x2 grid, reading order."""
    n = len(counts)
    # A random choice of cells per image, kept in reading order so captions read left-to-right, top-down.
    cells = np.argsort(rs.random_sample((n, 4)), axis=1)[:, :3]  # a random order of the four cells
    cells = np.sort(np.where(np.arange(3)[None, :] < counts[:, None], cells, 9), axis=1)  # first `count`
    slots = []
    half = IMAGE_SIZE / 2
    for k in range(3):
        img = np.flatnonzero(cells[:, k] < 9)
        cell = cells[img, k]
        m = len(img)
        radius = _MULTI_RADIUS[0] + (_MULTI_RADIUS[1] - _MULTI_RADIUS[0]) * rs.random_sample(m)
        cx = (cell % 2) * half + half / 2 + (rs.random_sample(m) * 3.0 - 1.5)
        cy = (cell // 2) * half + half / 2 + (rs.random_sample(m) * 3.0 - 1.5)
        slots.append((img, radius, cx, cy))
    return slots


def _names_texture(texture: int, keep: np.ndarray) -> bool:
    """Whether a caption names the texture: 0.85 for patterns, 0.925 for "plain" (a second draw),
    because a caption without a texture word reads the same as one of a plain object."""
    return bool(keep[2] or (keep[3] and TEXTURES[texture] == "plain"))


def _caption_single(big: int, colour: int, texture: int, shape: int, keep: np.ndarray, template: int) -> str:
    words = []
    if keep[0]:
        words.append(SIZES[big])
    if keep[1]:
        words.append(COLOUR_NAMES[colour])
    if _names_texture(texture, keep):
        words.append(TEXTURES[texture])
    words.append(SHAPES[shape])
    obj = _phrase(words)
    return (obj, f"a photo of {obj}.", f"a picture of {obj}.", f"{obj} on a noisy background")[template]


def _caption_multi(objects: list[tuple[int, int, int, np.ndarray]], template: int) -> str:
    phrases = []
    for colour, texture, shape, keep in objects:
        words = [COLOUR_NAMES[colour]] if keep[1] else []
        if _names_texture(texture, keep):
            words.append(TEXTURES[texture])
        words.append(SHAPES[shape])
        phrases.append(_phrase(words))
    body = " and ".join(phrases) if len(phrases) == 2 else f"{phrases[0]}, {phrases[1]} and {phrases[2]}"
    return f"a photo of {body}." if template == 1 and len(phrases) == 2 else body


def _pool_block(seed: int, block: int) -> tuple[np.ndarray, list[str]]:
    """One block of the pre-training pool: 60 % single objects, 40 % scenes of 2-3 objects."""
    rs = _rng(STREAM_POOL, seed, block=block)
    n = POOL_BLOCK
    counts = np.where(rs.random_sample(n) < 0.6, 1, randints(rs, 2, 4, n))
    canvas = _background(rs, n)
    held = np.zeros((len(TEXTURES), len(SHAPES)), bool)
    for t, s in HELD_OUT_PAIRS:
        held[TEXTURES.index(t), SHAPES.index(s)] = True

    def draw_pairs(m: int) -> tuple[np.ndarray, np.ndarray]:
        shape = randints(rs, 0, len(SHAPES), m)
        texture = randints(rs, 0, len(TEXTURES), m)
        while True:  # resample held-out (texture, shape) pairs: they must never occur in pre-training
            bad = np.flatnonzero(held[texture, shape])
            if bad.size == 0:
                return shape, texture
            texture[bad] = randints(rs, 0, len(TEXTURES), bad.size)

    # Caption word dropout: size, colour and texture words are kept with these probabilities; the fourth
    # draw gives "plain" a second chance (see _names_texture).
    keep_p = np.array([0.4, 0.75, 0.85, 0.5])
    single = np.flatnonzero(counts == 1)
    big, radius, cx, cy = _place_single(rs, single.size)
    shape, texture = draw_pairs(single.size)
    colour = randints(rs, 0, len(COLOURS), single.size)
    _paint(canvas, _draw_objects(rs, single, shape, texture, colour, cx, cy, radius))
    keep = rs.random_sample((single.size, 4)) < keep_p
    template = np.maximum(
        randints(rs, 0, 6, single.size) - 2, 0
    )  # half bare, the rest one of three templates
    captions: list[str] = [""] * n
    for j, i in enumerate(single.tolist()):
        captions[i] = _caption_single(big[j], colour[j], texture[j], shape[j], keep[j], template[j])

    multi = np.flatnonzero(counts > 1)
    parts: dict[int, list[tuple[int, int, int, np.ndarray]]] = {i: [] for i in multi.tolist()}
    for img, radius, cx, cy in _place_multi(rs, counts[multi]):
        images = multi[img]
        shape, texture = draw_pairs(images.size)
        colour = randints(rs, 0, len(COLOURS), images.size)
        _paint(canvas, _draw_objects(rs, images, shape, texture, colour, cx, cy, radius))
        keep = rs.random_sample((images.size, 4)) < keep_p
        for j, i in enumerate(images.tolist()):
            parts[i].append((colour[j], texture[j], shape[j], keep[j]))
    template = randints(rs, 0, 2, multi.size)
    for j, i in enumerate(multi.tolist()):
        captions[i] = _caption_multi(parts[i], template[j])
    return _finish(rs, canvas), captions


caption_pool = CaptionPool(_pool_block)  # captions such as "a big red striped circle"


def _class_objects(classes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    texture = np.array([TEXTURES.index(CLASS_PAIRS[c][0]) for c in range(len(CLASS_PAIRS))])[classes]
    shape = np.array([SHAPES.index(CLASS_PAIRS[c][1]) for c in range(len(CLASS_PAIRS))])[classes]
    return shape, texture


def _render_single(rs: np.random.RandomState, classes: np.ndarray) -> np.ndarray:
    """One object of the given class per image; colour, size, position and texture phase at random."""
    n = len(classes)
    canvas = _background(rs, n)
    _, radius, cx, cy = _place_single(rs, n)
    shape, texture = _class_objects(classes)
    colour = randints(rs, 0, len(COLOURS), n)
    _paint(canvas, _draw_objects(rs, np.arange(n), shape, texture, colour, cx, cy, radius))
    return _finish(rs, canvas)


def _render_multi(rs: np.random.RandomState, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Scenes of 2 or 3 objects of distinct classes; labels = the classes present."""
    num_classes = len(CLASS_PAIRS)
    counts = randints(rs, 2, 4, n)
    classes = np.argsort(rs.random_sample((n, num_classes)), axis=1)[:, :3]
    canvas = _background(rs, n)
    labels = np.zeros((n, num_classes), np.uint8)
    for k, (img, radius, cx, cy) in enumerate(_place_multi(rs, counts)):
        cls = classes[img, k]
        labels[img, cls] = 1
        shape, texture = _class_objects(cls)
        colour = randints(rs, 0, len(COLOURS), img.size)
        _paint(canvas, _draw_objects(rs, img, shape, texture, colour, cx, cy, radius))
    return _finish(rs, canvas), labels


def _draw(name: str, seed: int) -> tuple[np.random.RandomState, np.ndarray, np.ndarray]:
    """A retrieval set's images and labels, and the stream that then draws its protocol split."""
    rs = _rng(_STREAM_IDS[name], seed)
    total, num_classes = SPLITS[name].total, len(CLASS_PAIRS)
    if name == "shapes":
        classes = rs.permutation(np.arange(total) % num_classes)
        images = np.concatenate([_render_single(rs, classes[i : i + 2048]) for i in range(0, total, 2048)])
        return rs, images, np.eye(num_classes, dtype=np.uint8)[classes]
    parts = [_render_multi(rs, min(2048, total - i)) for i in range(0, total, 2048)]
    return rs, np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


# A downstream retrieval set in the paper's protocol (module docstring: Protocol): make_retrieval_data(name, seed=0).
make_retrieval_data = RetrievalSets(
    __name__,
    CLASSNAMES,
    SPLITS,
    _draw,
    info={"held_out_pairs": sorted(f"{t} {s}" for t, s in HELD_OUT_PAIRS)},
    cached=8,
)


def is_word_phrase(text: str) -> bool:
    """True for lower-case words separated by single spaces (what class names must look like)."""
    return re.fullmatch(r"[a-z]+( [a-z]+)*", text) is not None


# Registered at import, so load_dataset("shapes") works; kalahash.worlds imports this module.
SPEC = register_world(
    WorldSpec(
        name="shapes",
        classnames=CLASSNAMES,
        sets=make_retrieval_data,
        caption_pool=caption_pool,
        borrows={"shapes": "cifar10", "shapes-multi": "nuswide"},  # the paper's sets it imitates
        backbones=("tiny-shapes",),
        default_backbone="tiny-shapes",
        words=None,  # tiny-shapes keeps the full token table: its shipped weights predate compact storage
        held_out=frozenset(f"{t} {s}" for t, s in HELD_OUT_PAIRS),
    )
)
