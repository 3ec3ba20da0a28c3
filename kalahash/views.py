"""Figure 1's inputs: trained hashers kept as checkpoints, and their embeddings of the same images.

A results row says how well a run retrieves; the figure also needs the hasher itself. :func:`trained_hasher`
keeps each run's checkpoint beside the results table and restores it on later calls (nothing is trained
twice); :func:`embedding_views` embeds the hasher of every arm of a study (:func:`kalahash.studies.
embedding_grid`) on one subsample of the database, and :func:`silhouette_table` scores every seed.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd
import torch

from .cache import PrefixCache
from .checkpoints import hasher_from_checkpoint, load_checkpoint
from .embeddings import Embeddings, embed, silhouette_scores, subsample
from .experiments import (
    DEFAULT_CACHE,
    DEFAULT_RESULTS,
    ExperimentConfig,
    find_result,
    run_experiment,
)
from .machine import resolve_device

if TYPE_CHECKING:
    from torch import nn

    from .data import RetrievalData
    from .studies import Arm


@dataclass(frozen=True)
class TrainedHasher:
    """A run's hasher restored from its checkpoint, the run's data and the run's results row."""

    hasher: nn.Module
    data: RetrievalData
    row: dict[str, Any]


def checkpoint_file(config: ExperimentConfig, workdir: str | os.PathLike) -> Path:
    """Where :func:`trained_hasher` keeps a run's checkpoint: ``<workdir>/checkpoints/<config_id>.ckpt``."""
    return Path(workdir) / "checkpoints" / f"{config.config_id}.ckpt"


def trained_hasher(
    config: ExperimentConfig,
    *,
    results: str | os.PathLike | None = DEFAULT_RESULTS,
    workdir: str | os.PathLike | None = None,
    cache: PrefixCache | str | os.PathLike | None = DEFAULT_CACHE,
    device: str | torch.device | None = None,
    progress: bool = True,
    force: bool = False,
) -> TrainedHasher:
    """The trained hasher of a run, trained once: later calls restore it from its checkpoint
    (:func:`checkpoint_file`; ``workdir`` defaults to the results table's folder).

    A run without a checkpoint is made with :func:`run_experiment` and appended to ``results``; if
    ``results`` already has its row (a notebook ran it without keeping the hasher), it is trained again
    for the checkpoint and the table is left as it is. ``force`` trains again in any case. ``row`` is
    the checkpoint's own row, so it always describes the hasher returned.
    """
    from .data import load_dataset

    workdir = Path(workdir) if workdir is not None else Path(results or DEFAULT_RESULTS).parent
    path = checkpoint_file(config, workdir)
    if force or not path.is_file():
        stored = results is not None and find_result(config, results) is not None
        options = {"workdir": workdir, "cache": cache, "device": device, "progress": progress}
        run_experiment(config, results=None if stored else results, checkpoint=path, force=force, **options)
    payload = load_checkpoint(path)
    hasher = hasher_from_checkpoint(payload, None, resolve_device(device))
    data = load_dataset(config.dataset, config.data_root, seed=config.split_seed, **config.data_options())
    return TrainedHasher(hasher, data, dict(payload["result_row"]))


@dataclass(frozen=True)
class EmbeddingViews:
    """Every arm's :class:`~kalahash.embeddings.Embeddings` of the same database images.

    ``rows``: one per arm (``study``, ``variant`` and the run's row); ``embeddings``: keyed by
    (label, seed); ``classnames``: the data set's, for the class colours.
    """

    rows: pd.DataFrame
    embeddings: dict[tuple[str, int], Embeddings]
    classnames: list[str]

    def of_seed(self, seed: int) -> dict[str, Embeddings]:
        """{label: Embeddings} of one seed, as :func:`kalahash.embeddings.umap_coordinates` takes them."""
        views = {label: e for (label, s), e in self.embeddings.items() if s == seed}
        if not views:
            seeds = sorted({s for _, s in self.embeddings})
            raise ValueError(f"no embeddings of seed {seed}; the seeds are {seeds}")
        return views


def embedding_views(
    arms: Sequence[Arm], *, max_points: int | None = None, random_state: int = 0, **run_options: Any
) -> EmbeddingViews:
    """Each arm's trained hasher (:func:`trained_hasher`, with ``run_options``) embedded on the same
    database images: at most ``max_points`` of them, drawn with ``random_state`` (silhouettes cost n²).
    The arms must share their data (one data set and split): the views compare methods on one image set."""
    if not arms:
        raise ValueError("arms is empty: give the arms of embedding_grid()")
    datasets = {(a.config.dataset, a.config.data_root, a.config.split_seed) for a in arms}
    if len(datasets) > 1:
        raise ValueError(f"the arms must share one data set and split, got {sorted(map(str, datasets))}")
    keys = [(a.label, a.config.seed) for a in arms]
    twice = sorted({k for k in keys if keys.count(k) > 1})
    if twice:
        raise ValueError(f"arms label several runs alike (label, seed): {twice}; label each run once")
    cache = run_options.get("cache", DEFAULT_CACHE)
    prefix = cache if cache is None or isinstance(cache, PrefixCache) else PrefixCache(cache)
    rows, embeddings, images, classnames = [], {}, None, []  # images: drawn from the first arm's data
    for arm in arms:
        trained = trained_hasher(arm.config, **run_options)
        if images is None:
            database = trained.data.database
            images = database.subset(subsample(len(database), max_points, random_state))
            classnames = list(trained.data.classnames)
        embeddings[arm.label, arm.config.seed] = embed(trained.hasher, images, cache=prefix)
        rows.append({"study": arm.study, "variant": arm.label, **trained.row})
    return EmbeddingViews(pd.DataFrame(rows), embeddings, classnames)


def silhouette_table(views: EmbeddingViews, **options: Any) -> pd.DataFrame:
    """:func:`kalahash.embeddings.silhouette_scores` of every seed (``options`` go to it): rows method,
    space, metric, silhouette (0-100) and seed, as :func:`kalahash.plots.map_silhouette_bars` takes them."""
    if not views.embeddings:
        raise ValueError("views holds no embeddings: make them with embedding_views()")
    seeds = list(dict.fromkeys(s for _, s in views.embeddings))
    return pd.concat(
        [silhouette_scores(views.of_seed(s), **options).assign(seed=s) for s in seeds], ignore_index=True
    )
