"""Figure 1's inputs: hashers trained once and restored from their checkpoints, embedded on the same images."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import kalahash.views as views_module
from kalahash.embeddings import embed
from kalahash.experiments import read_results, run_experiment
from kalahash.plots import map_silhouette_bars
from kalahash.studies import embedding_grid, study_settings
from kalahash.views import checkpoint_file, embedding_views, silhouette_table, trained_hasher


def _options(tmp_path) -> dict:
    return {
        "results": tmp_path / "r.csv",
        "workdir": tmp_path / "w",
        "cache": tmp_path / "c",
        "progress": False,
    }


def _settings(**given):
    """The smoke profile on the built-in shapes world, one epoch: seconds per run."""
    return study_settings("embeddings", dataset="shapes", backbone="tiny-shapes", epochs=1, **given)


@pytest.fixture
def counted_runs(monkeypatch):
    """Every run_experiment call trained_hasher makes, by config_id."""
    calls = []

    def counting(config, **options):
        calls.append(config.config_id)
        return run_experiment(config, **options)

    monkeypatch.setattr(views_module, "run_experiment", counting)
    return calls


def test_trained_hasher_trains_once_and_leaves_a_stored_row_alone(tmp_path, counted_runs):
    options = _options(tmp_path)
    config = embedding_grid(_settings(seeds=[0], methods=["kalahash"]))[0].config
    stored = run_experiment(config, **options)  # a notebook ran it without keeping the hasher
    first = trained_hasher(config, **options)
    assert counted_runs == [config.config_id] and checkpoint_file(config, tmp_path / "w").is_file()
    assert len(read_results(options["results"])) == 1  # trained again for the checkpoint, not appended
    assert first.row["config_id"] == config.config_id
    assert first.row["map"] == pytest.approx(stored["map"])
    second = trained_hasher(config, **options)
    assert counted_runs == [config.config_id]  # restored: nothing trained
    images = second.data.database.subset(np.arange(40))
    np.testing.assert_array_equal(embed(first.hasher, images).codes, embed(second.hasher, images).codes)
    assert second.data.classnames == first.data.classnames and second.row == first.row


def test_embedding_views_embed_every_arm_on_the_same_images_silently(tmp_path, counted_runs, capfd):
    arms = embedding_grid(_settings(seeds=[0, 1], methods=["lb", "kalahash"]))
    options = _options(tmp_path)
    views = embedding_views(arms, max_points=120, random_state=3, **options)
    assert capfd.readouterr() == ("", "")  # nothing leaks into a notebook's output
    assert len(counted_runs) == 4
    assert sorted(views.embeddings) == [("KALAHash", 0), ("KALAHash", 1), ("LB", 0), ("LB", 1)]
    labels = {e.labels.tobytes() for e in views.embeddings.values()}
    assert len(labels) == 1 and all(len(e.codes) == 120 for e in views.embeddings.values())
    assert list(views.rows["variant"]) == ["LB", "LB", "KALAHash", "KALAHash"]
    assert views.rows["config_id"].tolist() == [a.config.config_id for a in arms]
    assert len(views.classnames) == views.embeddings["LB", 0].labels.shape[1]
    assert set(views.of_seed(1)) == {"LB", "KALAHash"}
    with pytest.raises(ValueError, match=r"no embeddings of seed 7; the seeds are \[0, 1\]"):
        views.of_seed(7)
    again = embedding_views(arms, max_points=120, random_state=3, **options)
    assert len(counted_runs) == 4  # every hasher restored
    np.testing.assert_array_equal(
        again.embeddings["KALAHash", 1].codes, views.embeddings["KALAHash", 1].codes
    )

    table = silhouette_table(views)
    assert capfd.readouterr() == ("", "")
    assert len(table) == 2 * 2 * 2 and table["silhouette"].between(0, 100).all()
    assert table.groupby(["method", "space"]).size().eq(2).all() and set(table["seed"]) == {0, 1}
    fig = map_silhouette_bars(views.rows, table)
    assert len(fig.axes) == 2


def test_embedding_views_refuse_mixed_data_and_no_arms(tmp_path):
    settings = _settings(seeds=[0], methods=["lb"])
    arms = embedding_grid(settings) + embedding_grid({**settings, "dataset": "shapes-multi"})
    with pytest.raises(ValueError, match="one data set and split"):
        embedding_views(arms, **_options(tmp_path))
    with pytest.raises(ValueError, match=r"label several runs alike \(label, seed\): \[\('LB', 0\)\]"):
        embedding_views(arms[:1] * 2, **_options(tmp_path))
    with pytest.raises(ValueError, match="arms is empty"):
        embedding_views([], **_options(tmp_path))
    with pytest.raises(ValueError, match="one shot count"):
        embedding_grid({**settings, "shots": [1, 2]})


def test_silhouette_table_of_no_seed_is_refused():
    empty = views_module.EmbeddingViews(pd.DataFrame(), {}, [])
    with pytest.raises(ValueError, match="views holds no embeddings"):
        silhouette_table(empty)
