"""Figure 1's views: features and codes of hashers, their silhouettes, UMAP maps and the plots."""

from __future__ import annotations

import warnings

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
from helpers import fresh_tiny

from kalahash.cache import PrefixCache
from kalahash.data import ImageList
from kalahash.embeddings import Embeddings, embed, silhouette_scores, umap_2d, umap_coordinates
from kalahash.hashing import build_hasher
from kalahash.metrics import silhouette_100
from kalahash.plots import map_silhouette_bars, umap_grid
from kalahash.train import encode

CLASSES = 4


def synthetic(n: int = 200, spread: float = 0.3, seed: int = 0) -> Embeddings:
    """Four classes around random centres; a small ``spread`` separates them, a large one mixes them."""
    rng = np.random.default_rng(0)  # the same images (labels, centres) for every spread and seed
    y = np.arange(n) % CLASSES
    centres = rng.normal(size=(CLASSES, 16))
    noise = np.random.default_rng(seed + 1).normal(size=(n, 16))
    features = (centres[y] + spread * noise).astype(np.float32)
    codes = np.where(features >= 0, 1, -1).astype(np.int8)
    return Embeddings(features, codes, np.eye(CLASSES, dtype=np.uint8)[y])


def test_silhouettes_rank_separated_above_mixed():
    good, bad = synthetic(spread=0.3), synthetic(spread=3.0)
    table = silhouette_scores({"good": good, "bad": bad})
    assert list(table.columns) == ["method", "space", "metric", "silhouette"]
    assert len(table) == 4 and table["silhouette"].between(0, 100).all()
    score = table.set_index(["method", "space"])["silhouette"]
    assert score["good", "features"] > score["bad", "features"]
    assert score["good", "codes"] > score["bad", "codes"]
    labels = good.labels.argmax(axis=1)
    assert score["good", "codes"] == pytest.approx(silhouette_100(good.codes, labels, metric="hamming"))
    assert score["good", "features"] == pytest.approx(silhouette_100(good.features, labels, metric="cosine"))


def test_silhouette_subsample_is_shared_and_reproducible():
    views = {"a": synthetic(seed=0), "b": synthetic(seed=1)}
    first = silhouette_scores(views, max_points=60, random_state=3)
    pd.testing.assert_frame_equal(first, silhouette_scores(views, max_points=60, random_state=3))
    assert not first.equals(silhouette_scores(views, max_points=60, random_state=4))
    with pytest.raises(ValueError, match="max_points must be an int >= 2"):
        silhouette_scores(views, max_points=1)


def test_views_of_different_images_are_refused():
    other = synthetic()
    other = Embeddings(other.features, other.codes, other.labels[::-1].copy())
    with pytest.raises(ValueError, match="not of the same images"):
        silhouette_scores({"a": synthetic(), "b": other})
    with pytest.raises(ValueError, match="embeddings is empty"):
        umap_coordinates({})
    with pytest.raises(ValueError, match="one row per image"):
        Embeddings(np.zeros((3, 2)), np.zeros((2, 2)), np.zeros((3, 2)))


@pytest.fixture
def tiny_images():
    pixels = np.random.default_rng(0).integers(0, 255, size=(6, 32, 32, 3), dtype=np.uint8)
    return ImageList(pixels, np.eye(2, dtype=np.uint8)[[0, 1, 0, 1, 0, 1]])


@pytest.mark.parametrize("method", ["lb", "lora"])
def test_embed_gives_the_hashers_features_and_codes(tiny_images, tmp_path, method):
    hasher = build_hasher(method, fresh_tiny(), ["cat", "dog"], bits=8, rank=2)
    views = embed(hasher, tiny_images, batch_size=4)
    assert views.features.shape == (6, hasher.backbone.embed_dim) and views.features.dtype == np.float32
    np.testing.assert_array_equal(views.codes, encode(hasher, tiny_images, progress=False))
    np.testing.assert_array_equal(views.labels, tiny_images.labels)
    assert hasher.training  # the mode is restored
    cached = embed(hasher, tiny_images, cache=PrefixCache(tmp_path), batch_size=4)
    np.testing.assert_allclose(cached.features, views.features, atol=1e-5)


def test_umap_maps_features_and_codes_quietly_and_reproducibly(capfd):
    """One test for every UMAP fit: the first call compiles numba code (~25 s on a busy CPU)."""
    views = {"good": synthetic(spread=0.3), "bad": synthetic(spread=3.0)}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        features = umap_coordinates(views, "features", max_points=150, random_state=0)
        codes = umap_coordinates(views, "codes", max_points=150, random_state=0)
        again = umap_coordinates({"good": views["good"]}, "codes", max_points=150, random_state=0)
    assert not caught, [str(w.message) for w in caught]
    out, err = capfd.readouterr()
    assert out == "" and err == ""
    for table in (features, codes):
        assert list(table.columns) == ["method", "x", "y", "label", "index"]
        assert table.groupby("method").size().to_dict() == {"good": 150, "bad": 150}
        assert np.isfinite(table[["x", "y"]].to_numpy()).all()
        # every method maps the same images
        good, bad = (table[table["method"] == m] for m in ("good", "bad"))
        np.testing.assert_array_equal(good["index"].to_numpy(), bad["index"].to_numpy())
        np.testing.assert_array_equal(good["label"], views["good"].labels[good["index"]].argmax(axis=1))
    good_codes = codes[codes["method"] == "good"].reset_index(drop=True)
    pd.testing.assert_frame_equal(again, good_codes)
    # separated classes land in separate places: the class centres in 2-D are far apart
    good = features[features["method"] == "good"]
    centres = good.groupby("label")[["x", "y"]].mean().to_numpy()
    within = good.groupby("label")[["x", "y"]].std().to_numpy().mean()
    gaps = np.linalg.norm(centres[:, None] - centres[None], axis=-1)[np.triu_indices(CLASSES, 1)]
    assert gaps.min() > within
    with pytest.raises(ValueError, match="at least 3 points"):
        umap_2d(np.zeros((2, 4)), "euclidean")


def test_map_and_silhouette_bars_show_means_over_seeds():
    maps = pd.DataFrame(
        {"method": ["lb", "lb", "kalahash", "kalahash"], "seed": [0, 1] * 2, "map": [0.2, 0.4, 0.6, 0.8]}
    )
    sil = pd.DataFrame(
        {
            "method": ["lb", "kalahash"] * 4,
            "space": ["features"] * 4 + ["codes"] * 4,
            "seed": [0, 0, 1, 1] * 2,
            "silhouette": [40.0, 60.0, 50.0, 70.0, 45.0, 65.0, 55.0, 75.0],
        }
    )
    fig = map_silhouette_bars(maps, sil, title="Figure 1")
    left, right = fig.axes
    np.testing.assert_allclose([p.get_height() for p in left.patches], [0.3, 0.7])
    heights = [p.get_height() for p in right.patches]
    np.testing.assert_allclose(heights, [45.0, 65.0, 50.0, 70.0])  # features lb, kalahash; codes lb, kalahash
    assert [t.get_text() for t in right.get_legend().get_texts()] == ["features", "codes"]
    assert [t.get_text() for t in left.get_xticklabels()] == ["LB", "KALAHash"]  # display names
    with pytest.raises(ValueError, match=r"silhouettes lacks the column\(s\) \['space'\]"):
        map_silhouette_bars(maps, sil.drop(columns="space"))
    plt.close("all")


def test_umap_grid_has_a_panel_per_method_coloured_by_class():
    rng = np.random.default_rng(0)
    coords = pd.DataFrame(
        {
            "method": np.repeat(["lb", "lora", "kalahash"], 30),
            "x": rng.normal(size=90),
            "y": rng.normal(size=90),
            "label": np.tile(np.arange(3), 30),
        }
    )
    fig = umap_grid(coords, "maps", classnames=["cat", "dog", "bird"], scores={"lb": 51.25}, ncols=2)
    visible = [ax for ax in fig.axes if ax.get_visible()]
    assert len(visible) == 3 and len(fig.axes) == 4  # a 2 x 2 grid, the spare panel hidden
    assert visible[0].get_title() == "LB (51.2)" and visible[1].get_title() == "LoRA"
    assert [t.get_text() for t in fig.legends[0].get_texts()] == ["cat", "dog", "bird"]
    colours = {tuple(np.round(c, 3)) for c in visible[2].collections[0].get_facecolors()}
    assert len(colours) == 3
    plt.close(fig)
