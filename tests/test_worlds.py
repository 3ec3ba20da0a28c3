"""What every offline world promises, checked for each: the same seed gives the same bytes (golden
hashes), pool windows are prefix-consistent, the retrieval sets are cached read-only and registered,
and the pre-training pool shares no image with them. What is particular to a world: test_shapes.py,
test_objects10.py."""

from __future__ import annotations

import hashlib
import sys
from dataclasses import replace

import numpy as np
import pytest
from helpers import images_digest, row_hashes

from kalahash.backbones import BUILTIN_WEIGHTS
from kalahash.cli.main import build_parser
from kalahash.data import DATASETS, load_dataset
from kalahash.experiments import DEFAULT_BACKBONE, notebook_settings
from kalahash.presets import preset, setting_hparams
from kalahash.worlds import (
    WORLDS,
    family_text,
    objects10,
    register_world,
    shapes,
    world_datasets,
    world_of,
    world_spec,
)
from kalahash.worlds.pretrain import config_world
from kalahash.worlds.toolkit import RetrievalSets, RetrievalSizes, WorldSpec

# sha256 of caption_pool(16, seed=0): image bytes, then the captions joined by newlines. Pins the
# generator across machines and NumPy versions (the world's promise: same seed, same bytes anywhere).
GOLDEN_POOL_SHA256 = {
    "shapes": "5a4910d966096efbc34c373b23ba39a719c07092c7bb59445f37884ff7a0170e",
    "objects10": "8b6795a2ec92a2989f9986f574454fc1f83037b25a25218c7c5769daa62e51ff",
}
# sha256 of each set's query images, query labels and train-pool ids (seed 0): pins the protocol splits.
GOLDEN_SPLITS_SHA256 = {
    "shapes": "80c85fe6c48a5efbc8d85d30eff159268db8bad22137f0add6c51380d6d0bf22",
    "shapes-multi": "cf149146bc50602ce39958dbaf99abaa9c5324e7f3095f3c586cab734f865c34",
    "objects10": "816ccd4247add618b41c2e37330cc519d42de393f6f5345a549b66f6aff73888",
    "objects10-multi": "5eb1a5ceec8129f1331ade7054e94fa28959ddd480a4ac19a6914083d2e06066",
}
MODULES = {"shapes": shapes, "objects10": objects10}


@pytest.fixture(params=list(MODULES), scope="module")
def world(request):
    return MODULES[request.param]


def test_pool_is_deterministic_golden_and_window_consistent(world):
    images, captions = world.caption_pool(16, seed=0)
    world.caption_pool.cache_clear()  # regenerate for real, not from the cache
    again, captions_again = world.caption_pool(16, seed=0)
    assert images is not again and images_digest(images, captions) == images_digest(again, captions_again)
    assert images_digest(images, captions) == GOLDEN_POOL_SHA256[world.__name__.rsplit(".", 1)[1]]
    assert not np.array_equal(images, world.caption_pool(16, seed=1)[0])
    long, long_captions = world.caption_pool(1040, seed=0)
    window, window_captions = world.caption_pool(30, seed=0, start=1010)  # spans two blocks
    np.testing.assert_array_equal(window, long[1010:1040])
    assert window_captions == long_captions[1010:1040]
    np.testing.assert_array_equal(long[:16], images)
    empty, no_captions = world.caption_pool(0, seed=0)
    assert empty.shape == (0, 32, 32, 3) and no_captions == []


@pytest.mark.parametrize("bad", [-1, 1.5, True])
def test_pool_rejects_bad_arguments(world, bad):
    with pytest.raises(ValueError, match="n must be a non-negative int"):
        world.caption_pool(bad)
    with pytest.raises(ValueError, match="seed must be a non-negative int"):
        world.caption_pool(4, seed=bad)
    with pytest.raises(ValueError, match="start must be a non-negative int"):
        world.caption_pool(4, start=bad)


def test_retrieval_sets_are_golden_cached_read_only_and_registered(world):
    for name in world.WORLD_DATASETS:
        data = world.make_retrieval_data(name)
        h = hashlib.sha256(data.query.images.tobytes())
        h.update(data.query.labels.tobytes())
        h.update(" ".join(data.train.ids).encode())
        assert h.hexdigest() == GOLDEN_SPLITS_SHA256[name]
        assert load_dataset(name) is data is world.make_retrieval_data(name, seed=0)
        assert data.info["source"] == f"{world.__name__} (generated in memory)"
        for split in data.splits().values():
            assert not split.images.flags.writeable and not split.labels.flags.writeable
        with pytest.raises(ValueError, match="read-only"):
            data.query.images[0, 0, 0, 0] = 0
        with pytest.raises(ValueError, match="unknown option"):
            load_dataset(name, query_per_class=5)  # a world's loader takes no options


def test_unknown_set_and_bad_seed_are_named(world):
    other = "objects10" if world is shapes else "shapes"
    with pytest.raises(ValueError, match=", ".join(world.WORLD_DATASETS)):
        world.make_retrieval_data(other)
    with pytest.raises(ValueError, match="seed must be a non-negative int"):
        world.make_retrieval_data(world.WORLD_DATASETS[0], seed=-1)


def test_pretraining_pool_is_disjoint_from_downstream_images(world):
    pool = row_hashes(world.caption_pool(4096, seed=0)[0])
    assert len(pool) == 4096
    for name in world.WORLD_DATASETS:
        data = world.make_retrieval_data(name)
        assert pool.isdisjoint(row_hashes(data.query.images) | row_hashes(data.database.images))


def _toy_draw(name, seed):
    rs = np.random.RandomState(seed)
    labels = np.eye(2, dtype=np.uint8)[np.arange(40) % 2]
    return rs, rs.randint(0, 255, size=(40, 32, 32, 3)).astype(np.uint8), labels


@pytest.fixture
def toy_world():
    """A third world, registered for the test and then removed again."""
    sizes = {
        name: RetrievalSizes(total=40, query_per_class=5, train_per_class=10, topk=None)
        for name in ("toy", "toy-multi")
    }
    spec = WorldSpec(
        name="toy",
        classnames=("cat", "dog"),
        sets=RetrievalSets("tests.toy", ("cat", "dog"), sizes, _toy_draw),
        caption_pool=objects10.caption_pool,
        borrows={"toy": "coco", "toy-multi": "nuswide"},
        backbones=("tiny",),
        default_backbone="tiny",
    )
    yield register_world(spec)
    del WORLDS["toy"]
    for name in spec.datasets:
        del DATASETS[name]


def test_the_specs_name_their_sets_backbones_and_borrowed_presets():
    assert list(WORLDS) == ["objects10", "shapes"]
    assert world_datasets() == ("objects10", "objects10-multi", "shapes", "shapes-multi")
    for spec in WORLDS.values():
        assert spec.datasets == tuple(sys.modules[spec.module].WORLD_DATASETS)
        assert all(world_of(name) is spec for name in spec.datasets)
        assert set(spec.backbones) <= set(BUILTIN_WEIGHTS) and spec.default_backbone in spec.backbones
        assert list(spec.classnames) == load_dataset(spec.name).classnames
    assert world_of("cifar10") is None
    assert WORLDS["objects10"].default_backbone == DEFAULT_BACKBONE
    assert family_text(WORLDS["objects10"].backbones) == "tiny-objects-s/m/l"
    assert family_text(("a-b", "c")) == "a-b, c"
    with pytest.raises(ValueError, match="world must be one of objects10, shapes, got 'cifar'"):
        world_spec("cifar")


def test_a_registered_world_is_read_everywhere(toy_world):
    """One registration: the data registry, presets, the notebooks' settings, pre-training and the CLI's
    help all know the new world."""
    assert load_dataset("toy-multi").name == "toy-multi" and len(load_dataset("toy").query) == 10
    assert "borrowed from coco" in preset("toy", 1, 16).source
    assert "borrowed from nuswide" in setting_hparams("toy-multi", 1, 16).source
    settings = notebook_settings(dataset="toy")
    assert settings["profile"] == "smoke" and "data_root" not in settings
    assert config_world("tiny") == "toy"
    help_text = build_parser()._subparsers._group_actions[0].choices["run"].format_help()
    assert "toy, toy-multi" in " ".join(help_text.split())
    with pytest.raises(ValueError, match="already registered"):
        register_world(toy_world)


def test_a_spec_is_checked_when_registered(toy_world):
    with pytest.raises(ValueError, match="default_backbone 'tiny-shapes' is not one of"):
        register_world(replace(toy_world, name="toy2", default_backbone="tiny-shapes"))
    with pytest.raises(ValueError, match="borrows names no paper data set for toy-multi"):
        register_world(replace(toy_world, name="toy2", borrows={"toy": "coco"}))
