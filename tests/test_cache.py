"""The prefix cache's format 2: pooled features for a frozen tower, tokens at their computed precision
(bf16 kept as bf16), keys that change with what is stored; the cache and the loader leave every result
bit-identical on the CPU; the expected sizes of `kalahash cache-size`."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import fresh_tiny

import kalahash.cache
from kalahash.cache import CACHE_FORMAT, PrefixCache, read_entry
from kalahash.cache_size import PROTOCOL_IMAGES, cache_contents, entry_shapes, expected_sizes
from kalahash.cli import main
from kalahash.data import ImageList, RetrievalData
from kalahash.hashing import build_hasher
from kalahash.loader import LoaderOptions
from kalahash.train import evaluate, fit


def _images(n: int, seed: int) -> ImageList:
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 3
    pixels = rng.integers(0, 80, (n, 32, 32, 3), dtype=np.uint8)
    pixels[np.arange(n), :, :, y] += 160
    return ImageList(pixels, np.eye(3, dtype=np.uint8)[y])


@pytest.fixture(scope="module")
def data() -> RetrievalData:
    return RetrievalData("toy", ["r", "g", "b"], _images(12, 1), _images(24, 2), _images(40, 3), None)


def _hasher(method: str, seed: int = 0):
    backbone = fresh_tiny(seed)
    torch.manual_seed(seed + 100)
    return build_hasher(method, backbone, ["r", "g", "b"], 8, rank=2)


def _pixels(hasher, images: ImageList) -> torch.Tensor:
    return torch.stack([hasher.backbone.preprocess(images.load_image(i)) for i in range(len(images))])


@torch.no_grad()
def test_a_frozen_tower_caches_its_pooled_features_only(data, tmp_path):
    hasher = _hasher("lb")
    assert hasher.trainable_from == hasher.num_blocks
    stored = PrefixCache(tmp_path).tokens(hasher, data.database, hasher.num_blocks, progress=False)
    assert stored.shape == (40, hasher.backbone.embed_dim) and stored.dtype == torch.float32
    assert torch.equal(stored, hasher.features(_pixels(hasher, data.database)))


@torch.no_grad()
def test_an_adapted_tower_caches_float32_tokens_on_the_cpu(data, tmp_path):
    hasher = _hasher("kalahash")
    start = hasher.trainable_from
    stored = PrefixCache(tmp_path).tokens(hasher, data.database, start, progress=False)
    assert stored.dtype == torch.float32 and stored.shape == (40, 17, hasher.backbone.width)
    assert torch.equal(stored, hasher.prefix_tokens(_pixels(hasher, data.database), start))


@torch.no_grad()
def test_bf16_tokens_are_stored_as_computed_and_the_tail_reads_them_so(data, tmp_path, monkeypatch):
    """What CUDA autocast does, under the CPU's bf16 autocast: tokens come out bf16, are stored as their
    16 bits (half of float32) and feed the tail in bf16, so cached features equal uncached ones."""

    def bf16(device):
        return torch.autocast("cpu", dtype=torch.bfloat16)

    monkeypatch.setattr(kalahash.cache, "device_autocast", bf16)
    hasher = _hasher("kalahash").eval()
    start = hasher.trainable_from
    cache = PrefixCache(tmp_path)
    stored = cache.tokens(hasher, data.query, start, progress=False)
    (path,) = tmp_path.glob("*.npy")
    assert np.load(path, mmap_mode="r").dtype == np.uint16 and read_entry(path).dtype == torch.bfloat16
    pixels = _pixels(hasher, data.query)
    with bf16("cpu"):
        assert torch.equal(stored, hasher.prefix_tokens(pixels, start))
        uncached = hasher.features(pixels)
    cached = torch.cat([f for _, f in kalahash.cache.features_of(hasher, [data.query], cache, 5, False)])
    assert cached.dtype == torch.bfloat16 and torch.equal(cached, uncached)


def test_the_key_names_the_format_and_the_preprocessing_path(data, tmp_path, monkeypatch):
    hasher = _hasher("kalahash")
    cache, start = PrefixCache(tmp_path), hasher.trainable_from
    key = cache.key(hasher, data.query, start)
    assert cache.key(hasher, data.query, start, LoaderOptions(workers=2)) == key  # workers change nothing
    assert cache.key(hasher, data.query, start, LoaderOptions(device_preprocess=True)) != key
    assert cache.key(hasher, data.query, start - 1) != key
    monkeypatch.setattr(kalahash.cache, "CACHE_FORMAT", CACHE_FORMAT + 1)
    assert cache.key(hasher, data.query, start) != key  # an entry of another format is never read


@pytest.mark.parametrize("method", ["lb", "kalahash"])
def test_loader_and_cache_leave_the_run_bit_identical(data, tmp_path, method):
    """fit + evaluate: no cache and no workers (the old path), against the cache with 2 workers and
    with device preprocessing: the same codes, mAP and trained state."""
    runs = []
    for n, (cached, options) in enumerate(
        [
            (False, LoaderOptions(workers=0)),
            (True, LoaderOptions(workers=2)),
            (True, LoaderOptions(device_preprocess=True)),
        ]
    ):
        hasher = _hasher(method)
        cache = PrefixCache(tmp_path / str(n)) if cached else None
        fit(hasher, data.train, epochs=3, batch_size=8, cache=cache, progress=False, loader=options)
        scores = evaluate(hasher, data, cache=cache, progress=False, loader=options)
        runs.append((scores, hasher.trained_state()))
    (first, state), *others = runs
    for scores, other_state in others:
        assert scores["map"] == first["map"]
        assert np.array_equal(scores["query_codes"], first["query_codes"])
        assert np.array_equal(scores["database_codes"], first["database_codes"])
        for key, value in state.items():
            assert torch.equal(other_state[key], value), key


def test_expected_sizes_come_from_the_backbone_shapes():
    assert entry_shapes("ViT-B-32") == {"tokens": (50, 768), "pooled": (512,)}
    assert entry_shapes("ViT-L-14") == {"tokens": (257, 1024), "pooled": (768,)}
    table = expected_sizes(["ViT-B-32"], ["cifar10", "nuswide"]).set_index("dataset")
    assert table.loc["cifar10", "images"] == 60_000 == sum(PROTOCOL_IMAGES["cifar10"].values())
    assert table.loc["cifar10", "adapted float32"] == 60_000 * 50 * 768 * 4  # 9.2 GB
    assert table.loc["cifar10", "adapted bfloat16"] * 2 == table.loc["cifar10", "adapted float32"]
    assert table.loc["nuswide", "frozen float32"] == 195_834 * 512 * 4
    with pytest.raises(ValueError, match="unknown backbone"):
        entry_shapes("ViT-B-33")


def test_cache_size_command_reports_expected_and_actual_sizes(data, tmp_path, capsys):
    hasher = _hasher("kalahash")
    cache = PrefixCache(tmp_path / "cache")
    cache.tokens(hasher, data.query, hasher.trainable_from, progress=False)
    cache.tokens(hasher, data.query, hasher.num_blocks, progress=False)
    entries = cache_contents(tmp_path / "cache").set_index("stored")
    assert entries.loc["tokens", "images"] == 12 and entries.loc["tokens", "per image"] == "17 x 64"
    assert entries.loc["pooled", "per image"] == "64" and entries.loc["pooled", "dtype"] == "float32"
    expected_bytes = 12 * 17 * 64 * 4
    assert expected_bytes < entries.loc["tokens", "bytes"] <= expected_bytes + 128  # the npy header
    assert main(["cache-size", "--cache", str(tmp_path / "cache")]) == 0
    out = capsys.readouterr().out
    assert "ViT-B-32" in out and "9.2 GB" in out and "4.6 GB" in out and "2 entries" in out
    with pytest.raises(FileNotFoundError, match="does not exist"):
        cache_contents(tmp_path / "missing")
