"""objects10 and the tiny-objects family: captions, protocol, nuisances, compact weights and real
knowledge (what every world promises: test_worlds.py)."""

from __future__ import annotations

import argparse
import hashlib
import json
import re

import numpy as np
import open_clip
import pytest
import torch
from safetensors import safe_open
from scipy.stats import chi2

from kalahash.backbones import (
    BUILTIN_WEIGHTS,
    COMPACT_IDS,
    COMPACT_ROWS,
    CompactTokenEmbedding,
    load_backbone,
)
from kalahash.prompts import CLASS_PROMPT
from kalahash.worlds import objects10  # importing it registers objects10 and objects10-multi
from kalahash.worlds.evaluation import chance_level, knowledge_stats, zero_shot_accuracy
from kalahash.worlds.objects10 import CLASSNAMES, caption_pool, caption_words, make_retrieval_data
from kalahash.worlds.pretrain import (
    _save_fp16_atomic,
    add_pretrain_tiny_arguments,
    pretrain_tiny,
    vocabulary_ids,
)

FAMILY = ("tiny-objects-s", "tiny-objects-m", "tiny-objects-l")


@pytest.fixture(scope="module")
def single():
    return make_retrieval_data("objects10")


@pytest.fixture(scope="module")
def multi():
    return make_retrieval_data("objects10-multi")


def test_captions_name_the_class_in_varied_templates_within_the_vocabulary():
    images, captions = caption_pool(2048, seed=2)
    assert images.dtype == np.uint8 and images.shape == (2048, 32, 32, 3)
    vocabulary = set(caption_words())
    tokenizer = open_clip.get_tokenizer("tiny-objects-m")
    ids = set(vocabulary_ids(tokenizer, caption_words()).tolist())
    for caption in captions:
        assert set(re.findall(r"[a-z]+|[.,]", caption)) <= vocabulary
        assert any(re.search(rf"\b{c}\b", caption) for c in CLASSNAMES)  # always the class word
        assert set(tokenizer.encode(caption)) <= ids
        assert len(tokenizer.encode(caption)) <= 14  # fits the 16-token context with start and end
    assert set(tokenizer.encode(CLASS_PROMPT.format(" ".join(CLASSNAMES)))) <= ids
    # with and without nuisances, in every template
    for word in ("red", "striped", "small", "left", "noisy"):
        assert 0.005 < np.mean([word in c.split() for c in captions]) < 0.5
    assert any(c in CLASSNAMES for c in (c.removeprefix("a ").removeprefix("an ") for c in captions))
    for template in ("a photo of", "a picture of", "a drawing of", "an image of", " and "):
        assert any(template in c for c in captions)
    # atomic names: one word and one token each, no word shared
    assert len(set(CLASSNAMES)) == 10 and all(len(tokenizer.encode(c)) == 1 for c in CLASSNAMES)


def _check_ids(data, total):
    ids = {s: set(getattr(data, s).ids) for s in ("query", "train", "database")}
    assert ids["query"].isdisjoint(ids["database"]) and ids["train"] <= ids["database"]
    assert ids["query"] | ids["database"] == {f"{data.name}:{i}" for i in range(total)}


def test_single_label_protocol(single):
    assert single.topk is None and not single.multi_label and single.classnames == list(CLASSNAMES)
    for split, per_class in (("query", 100), ("train", 500), ("database", 600)):
        images = getattr(single, split)
        assert images.images.shape[1:] == (32, 32, 3) and images.labels.shape[1] == 10
        np.testing.assert_array_equal(images.labels.sum(1), 1)
        np.testing.assert_array_equal(images.labels.sum(0), per_class)  # balanced
    _check_ids(single, 7000)


def test_multi_label_protocol(multi):
    assert multi.topk == 1000 and multi.multi_label
    for split in ("query", "train", "database"):
        labels = getattr(multi, split).labels
        assert labels.shape[1] == 10 and labels.sum(1).min() == 2 and labels.sum(1).max() == 3
    assert len(multi.query) == 1000 and len(multi.train) == 5000 and len(multi.database) == 9000
    assert (multi.query.labels.sum(0) >= 100).all() and (multi.train.labels.sum(0) >= 500).all()
    _check_ids(multi, 10_000)


def test_nuisances_are_independent_of_the_class():
    classes = np.repeat(np.arange(10), 300)
    _, objs = objects10._render_single(objects10._rng(99, 0), classes)
    small = (objs.radius < objects10._SMALL_BELOW).astype(int)
    edge = (np.abs(objs.cx - 16) > 4).astype(int)
    for values, k in ((objs.colour, 8), (objs.texture, 4), (small, 2), (edge, 2)):
        table = np.stack([np.bincount(values[classes == c], minlength=k) for c in range(10)])
        expected = table.sum(0, keepdims=True) * table.sum(1, keepdims=True) / table.sum()
        statistic = float(((table - expected) ** 2 / expected).sum())
        assert chi2.sf(statistic, df=9 * (k - 1)) > 1e-3  # consistent with independence


def test_colour_of_the_pixels_does_not_reveal_the_class(single):
    """A nearest-centroid classifier on the mean colour of saturated pixels is at chance."""

    def colour(images):
        x = images.astype(np.float64)
        saturated = (x.max(-1) - x.min(-1) > 60)[..., None]
        return (x * saturated).sum((1, 2)) / np.maximum(saturated.sum((1, 2)), 1)

    train, test = colour(single.database.images), colour(single.query.images)
    truth_train, truth_test = single.database.labels.argmax(1), single.query.labels.argmax(1)
    centroids = np.stack([train[truth_train == c].mean(0) for c in range(10)])
    predicted = ((test[:, None, :] - centroids[None]) ** 2).sum(-1).argmin(1)
    assert (predicted == truth_test).mean() < 0.16


def test_compact_weights_round_trip(tmp_path):
    torch.manual_seed(0)
    model = open_clip.create_model("tiny-objects-s", pretrained=None)
    tokenizer = open_clip.get_tokenizer("tiny-objects-s")
    ids = vocabulary_ids(tokenizer, caption_words())
    model.token_embedding = CompactTokenEmbedding(model.token_embedding, ids)
    path = tmp_path / "s.safetensors"
    _save_fp16_atomic(model, path, "tiny-objects-s")
    with safe_open(path, "pt") as f:
        keys = set(f.keys())
        assert {COMPACT_ROWS, COMPACT_IDS} <= keys and "token_embedding.weight" not in keys
        torch.testing.assert_close(f.get_tensor(COMPACT_IDS), ids, rtol=0, atol=0)  # ids stay exact
    loaded = load_backbone("tiny-objects-s", pretrained=path)
    reference = model.half().float().eval()  # what the fp16 file holds
    texts = tokenizer(caption_pool(64, seed=0)[1] + [CLASS_PROMPT.format(c) for c in CLASSNAMES])
    with torch.no_grad():
        torch.testing.assert_close(loaded.model.encode_text(texts), reference.encode_text(texts))
    full = loaded.model.token_embedding.weight
    assert full.shape[0] == 49408 and int((full.abs().sum(1) > 0).sum()) == len(ids)
    with pytest.raises(ValueError, match="outside this compact vocabulary"):
        reference.encode_text(tokenizer(["a photo of an airplane."]))


def test_pretrain_smoke_family_config(tmp_path):
    args = add_pretrain_tiny_arguments(argparse.ArgumentParser()).parse_args(["--config", "tiny-objects-m"])
    assert (args.config, args.world, args.output) == ("tiny-objects-m", None, None)  # the built-in's file
    out = tmp_path / "m.safetensors"
    with pytest.raises(ValueError, match="world must be"):
        pretrain_tiny(out, config="tiny-objects-s", world="cifar", steps=1)
    with pytest.raises(ValueError, match="config must be"):
        pretrain_tiny(out, config="tiny-objects-xl", steps=1)
    provenance = pretrain_tiny(
        out, config="tiny-objects-s", steps=2, batch_size=4, progress=False, evaluate=False
    )
    assert provenance["world"] == "objects10" and provenance["compact_vocabulary"]
    assert provenance["stored_parameters"] < provenance["parameters"] / 3
    assert out.stat().st_size == provenance["bytes"] < 4 * 2**20
    assert provenance["train_cpu_seconds"] > 0 and "config='tiny-objects-s'" in provenance["call"]


def test_knowledge_stats_see_shared_structure():
    rng = torch.Generator().manual_seed(0)
    distinct = torch.randn(10, 64, generator=rng)
    stats = knowledge_stats(distinct)
    assert stats["k_numerical_rank"] == 10 and abs(stats["k_mean_pairwise_cosine"]) < 0.1
    shared = 5 * torch.randn(1, 64, generator=rng) + 0.1 * distinct  # one common direction
    stats = knowledge_stats(shared)
    assert stats["k_numerical_rank"] < 10 and stats["k_mean_pairwise_cosine"] > 0.9
    assert stats["k_mean_energy_share"] > 0.9


@pytest.fixture(scope="module")
def family():
    return {name: load_backbone(name) for name in FAMILY}


def test_family_sizes(family):
    counts = [sum(p.numel() for p in family[name].model.parameters()) for name in FAMILY]
    assert counts == sorted(counts) and len(set(counts)) == 3
    assert len(family["tiny-objects-m"].blocks) >= 8
    assert len(family["tiny-objects-s"].blocks) < len(family["tiny-objects-m"].blocks)
    total = sum(BUILTIN_WEIGHTS[name][1].stat().st_size for name in FAMILY)
    assert total <= 40 * 2**20


def test_family_has_real_knowledge(family, single):
    chance = chance_level(single)
    assert chance == pytest.approx(0.1)
    for name, backbone in family.items():
        assert zero_shot_accuracy(backbone, single) >= 3 * chance, name
        torch.manual_seed(0)
        assert zero_shot_accuracy(load_backbone(name, pretrained="random"), single) <= 2 * chance, name


def test_family_provenance_matches_weights():
    for name in FAMILY:
        weights = BUILTIN_WEIGHTS[name][1]
        provenance = json.loads(weights.with_suffix(".json").read_text())
        assert provenance["model"] == name and provenance["world"] == "objects10"
        assert provenance["bytes"] == weights.stat().st_size
        assert provenance["sha256"] == hashlib.sha256(weights.read_bytes()).hexdigest()
        trained, random_init = provenance["knowledge"]["trained"], provenance["knowledge"]["random_init"]
        # zero-shot far above a 1-shot linear probe on frozen features, as CLIP's on CIFAR-10
        assert trained["objects10_zero_shot"] >= 1.5 * trained["objects10_linear_probe_1shot"]
        # pre-training pulls the class prompts apart: a random text tower maps them all alike
        assert trained["k_mean_pairwise_cosine"] < random_init["k_mean_pairwise_cosine"]
