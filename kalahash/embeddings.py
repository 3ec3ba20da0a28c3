"""What adaptation does to the embedding space (the paper's Figure 1): silhouettes and UMAP maps.

:func:`embed` runs a trained hasher once over an image list and keeps both views it produces: the
continuous image features the hash head sees and the ±1 codes. :func:`silhouette_scores` scores how
well either view separates the classes (0-100, higher is better); :func:`umap_coordinates` maps them
to 2-D for :func:`kalahash.plots.umap_grid`. Every method is scored and drawn on the same images.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from torch import nn

from .cache import PrefixCache, device_autocast, feature_batches
from .data import ImageList
from .extras import require
from .hashing import sign
from .loader import LoaderOptions
from .metrics import silhouette_100

SPACES = ("features", "codes")
# codes live in Hamming space; CLIP features are compared by angle
DEFAULT_METRICS = {"features": "cosine", "codes": "hamming"}


@dataclass(frozen=True)
class Embeddings:
    """One hasher's two views of the same images: ``features`` (n, embed) float32, the raw projected
    image features its hash head sees; ``codes`` (n, bits) int8 ±1; ``labels`` (n, C) 0/1."""

    features: np.ndarray
    codes: np.ndarray
    labels: np.ndarray

    def __post_init__(self) -> None:
        for name in ("features", "codes", "labels"):
            if getattr(self, name).ndim != 2:
                raise ValueError(f"{name} must be 2-D (items x dims), got shape {getattr(self, name).shape}")
        rows = {len(self.features), len(self.codes), len(self.labels)}
        if len(rows) != 1:
            raise ValueError(
                f"features, codes and labels must have one row per image, got {len(self.features)}, "
                f"{len(self.codes)} and {len(self.labels)} rows"
            )

    def view(self, space: str) -> np.ndarray:
        if space not in SPACES:
            raise ValueError(f"space must be one of {SPACES}, got {space!r}")
        return self.features if space == "features" else self.codes


@torch.no_grad()
def embed(
    hasher: nn.Module,
    images: ImageList,
    *,
    cache: PrefixCache | None = None,
    batch_size: int = 256,
    progress: bool = False,
    loader: LoaderOptions | None = None,
) -> Embeddings:
    """Features and codes of every image in one pass, in eval mode (codes as ``train.encode`` gives);
    ``loader`` sets how images reach the device."""
    if len(images) == 0:
        raise ValueError("images is empty: give at least one image to embed")
    was_training = hasher.training
    hasher.eval()
    features, codes = [], []
    try:
        for f in feature_batches(hasher, images, cache, batch_size, progress, "embedding", loader):
            with device_autocast(f.device):
                u = hasher.head(f)
            features.append(f.float().cpu().numpy())
            codes.append(sign(u.float()).to(torch.int8).cpu().numpy())
    finally:
        hasher.train(was_training)
    return Embeddings(np.concatenate(features), np.concatenate(codes), np.asarray(images.labels))


def _check_same_images(embeddings: Mapping[str, Embeddings]) -> np.ndarray:
    """The shared labels of a non-empty mapping of embeddings of the same images."""
    if not embeddings:
        raise ValueError("embeddings is empty: give {method: Embeddings} for at least one method")
    first_name, first = next(iter(embeddings.items()))
    for name, e in embeddings.items():
        if not isinstance(e, Embeddings):
            raise ValueError(
                f"embeddings[{name!r}] must be an Embeddings (from embed()), got {type(e).__name__}"
            )
        if e.labels.shape != first.labels.shape or not np.array_equal(e.labels, first.labels):
            raise ValueError(
                f"embeddings[{name!r}] and embeddings[{first_name!r}] are not of the same images (their "
                "labels differ): embed the same image list with every hasher"
            )
    return first.labels


def subsample(n: int, max_points: int | None, random_state: int) -> np.ndarray:
    """Sorted indices of at most ``max_points`` of n items (all for None), drawn with ``random_state``:
    the same for every method."""
    if max_points is None or max_points >= n:
        return np.arange(n)
    if isinstance(max_points, bool) or not isinstance(max_points, int) or max_points < 2:
        raise ValueError(f"max_points must be an int >= 2 or None, got {max_points!r}")
    return np.sort(np.random.default_rng(random_state).choice(n, size=max_points, replace=False))


def silhouette_scores(
    embeddings: Mapping[str, Embeddings],
    *,
    feature_metric: str = DEFAULT_METRICS["features"],
    max_points: int | None = None,
    random_state: int = 0,
) -> pd.DataFrame:
    """Silhouette (0-100) of each method's features and codes: rows method, space, metric, silhouette.

    Codes are scored in Hamming distance, features in ``feature_metric``. Single-label data only
    (silhouette needs one class per image). ``max_points`` scores a random subset, the same for every
    method (silhouette costs n² distances).
    """
    labels = _check_same_images(embeddings)
    keep = subsample(len(labels), max_points, random_state)
    metrics = {"features": feature_metric, "codes": DEFAULT_METRICS["codes"]}
    rows = [
        {
            "method": method,
            "space": space,
            "metric": metrics[space],
            "silhouette": silhouette_100(e.view(space)[keep], labels[keep], metric=metrics[space]),
        }
        for method, e in embeddings.items()
        for space in SPACES
    ]
    return pd.DataFrame(rows)


def umap_2d(x: np.ndarray, metric: str, random_state: int = 0, n_neighbors: int = 15) -> np.ndarray:
    """UMAP of the rows of ``x`` to (n, 2) float32, reproducible for a ``random_state``, silently.

    UMAP warns about a seed disabling its parallelism, and about graphs that are not fully connected
    (duplicate codes): both are expected here, so they are hidden.
    """
    if len(x) < 3:
        raise ValueError(f"UMAP needs at least 3 points, got {len(x)}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        umap = require("umap", "a UMAP map")  # slow to import (numba): only when drawn

        reducer = umap.UMAP(
            n_components=2,
            metric=metric,
            n_neighbors=min(n_neighbors, len(x) - 1),
            random_state=random_state,
        )
        return reducer.fit_transform(np.asarray(x, dtype=np.float32)).astype(np.float32)


def umap_coordinates(
    embeddings: Mapping[str, Embeddings],
    space: str = "features",
    *,
    metric: str | None = None,
    max_points: int | None = 2000,
    random_state: int = 0,
    n_neighbors: int = 15,
) -> pd.DataFrame:
    """2-D UMAP coordinates of each method's ``space`` ("features" or "codes") on the same images.

    Returns rows method, x, y, label (the image's class: its first label column, -1 if none), index
    (the image's position in the embedded list). ``metric`` defaults to cosine for features and
    Hamming for codes; ``max_points`` maps a random subset, the same for every method.
    """
    if space not in SPACES:
        raise ValueError(f"space must be one of {SPACES}, got {space!r}")
    labels = _check_same_images(embeddings)
    keep = subsample(len(labels), max_points, random_state)
    metric = DEFAULT_METRICS[space] if metric is None else metric
    classes = np.where(labels[keep].any(axis=1), labels[keep].argmax(axis=1), -1)
    frames = []
    for method, e in embeddings.items():
        xy = umap_2d(e.view(space)[keep], metric, random_state=random_state, n_neighbors=n_neighbors)
        frames.append(
            pd.DataFrame({"method": method, "x": xy[:, 0], "y": xy[:, 1], "label": classes, "index": keep})
        )
    return pd.concat(frames, ignore_index=True)
