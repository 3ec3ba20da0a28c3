"""The loader (kalahash.loader): device-side preprocessing against the PIL path, worker defaults, batches
that never span two lists, one worker pool for query and database."""

from __future__ import annotations

import numpy as np
import open_clip
import pytest
import torch
from helpers import fresh_tiny
from PIL import Image
from torchvision import transforms as T

import kalahash.loader
from kalahash.backbones import load_backbone
from kalahash.cache import PrefixCache
from kalahash.data import ImageList, RetrievalData, load_dataset
from kalahash.embeddings import embed
from kalahash.hashing import build_hasher
from kalahash.loader import (
    DevicePreprocess,
    LoaderOptions,
    available_cpus,
    batch_plan,
    default_workers,
    image_batches,
    pil_weights,
)
from kalahash.train import evaluate

# Device preprocessing reproduces PIL's fixed-point resize: the tolerance is 0 (bit-identical pixels).
PIXEL_TOLERANCE = 0.0


def _pil(transform, images: np.ndarray) -> torch.Tensor:
    return torch.stack([transform(Image.fromarray(image)) for image in images])


@pytest.mark.parametrize(
    ("size", "shape", "interpolation"),
    [
        (224, (32, 32), "bicubic"),  # CIFAR-10 into ViT-B/32
        (32, (16, 16), "bicubic"),
        (64, (31, 45), "bicubic"),  # not square: the shorter edge, then the centre crop
        (48, (120, 90), "bicubic"),  # shrinking: PIL's filter widens (antialias)
        (40, (32, 24), "bilinear"),
        (32, (32, 32), "bicubic"),  # no resize at all (the tiny CLIPs on 32x32 worlds)
    ],
)
def test_device_preprocess_gives_the_pil_pixels(size, shape, interpolation):
    transform = open_clip.image_transform(size, is_train=False)
    if interpolation == "bilinear":
        transform.transforms[0] = T.Resize(size, interpolation=T.InterpolationMode.BILINEAR)
    images = np.random.default_rng(size).integers(0, 256, (5, *shape, 3), dtype=np.uint8)
    on_device = DevicePreprocess.from_transform(transform)
    got = on_device(torch.from_numpy(images))
    expected = _pil(transform, images)
    assert got.shape == expected.shape == (5, 3, *on_device.output_size(*shape))
    assert (got - expected).abs().max().item() <= PIXEL_TOLERANCE
    assert torch.equal(got, expected)


def test_pil_weights_are_fixed_point_rows_that_sum_to_one():
    weights = pil_weights(32, 224, "bicubic")
    assert weights.shape == (224, 32) and np.array_equal(weights, np.round(weights))
    # each row sums to 2^22 up to the rounding of its (at most 4) weights
    assert np.abs(weights.sum(axis=1) - 2**22).max() <= 4


def test_device_preprocess_refuses_what_it_cannot_reproduce(tmp_path):
    augmenting = T.Compose([T.RandomResizedCrop(32), T.ToTensor()])
    with pytest.raises(ValueError, match=r"RandomResizedCrop.*device_preprocess=False"):
        DevicePreprocess.from_transform(augmenting)
    with pytest.raises(ValueError, match="uint8"):
        DevicePreprocess.from_transform(open_clip.image_transform(32, is_train=False))(
            torch.zeros(1, 8, 8, 3)
        )
    path = tmp_path / "a.png"
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(path)
    files = ImageList([path], np.ones((1, 1), np.uint8))
    preprocess = open_clip.image_transform(32, is_train=False)
    options = LoaderOptions(device_preprocess=True)
    with pytest.raises(ValueError, match="held in memory"):
        list(image_batches([files], preprocess, "cpu", options=options))
    small, large = (ImageList(np.zeros((2, s, s, 3), np.uint8), np.ones((2, 1), np.uint8)) for s in (8, 16))
    with pytest.raises(ValueError, match="one size"):
        list(image_batches([small, large], preprocess, "cpu", options=options))


def test_worker_defaults_and_validation():
    assert default_workers("cpu") == 0  # the main process is the compute on the CPU
    assert default_workers("cuda") == max(0, min(8, available_cpus() - 1))
    assert LoaderOptions().workers_for("cpu") == 0 and LoaderOptions(workers=3).workers_for("cpu") == 3
    for bad in (-1, True, 1.5):
        with pytest.raises(ValueError, match="workers must be"):
            LoaderOptions(workers=bad)
    with pytest.raises(ValueError, match="device_preprocess must be"):
        LoaderOptions(device_preprocess="yes")


def test_batches_never_span_two_lists():
    assert batch_plan([5, 3], 2) == [(0, 0, 2), (0, 2, 4), (0, 4, 5), (1, 0, 2), (1, 2, 3)]
    rng = np.random.default_rng(0)
    lists = [
        ImageList(rng.integers(0, 256, (n, 8, 8, 3), np.uint8), np.ones((n, 1), np.uint8)) for n in (5, 3)
    ]
    preprocess = open_clip.image_transform(16, is_train=False)
    expected = [(i, lo, _pil(preprocess, lists[i].images[lo:hi])) for i, lo, hi in batch_plan([5, 3], 2)]
    for options in (
        LoaderOptions(workers=0),
        LoaderOptions(workers=2),
        LoaderOptions(device_preprocess=True),
    ):
        got = list(image_batches(lists, preprocess, "cpu", batch_size=2, options=options))
        assert [(i, lo) for i, lo, _ in got] == [(i, lo) for i, lo, _ in expected]
        for (_, _, batch), (_, _, want) in zip(got, expected, strict=True):
            assert torch.equal(batch, want)


def _toy_data(n_query: int = 12, n_database: int = 40) -> RetrievalData:
    rng = np.random.default_rng(5)

    def images(n: int) -> ImageList:
        y = np.arange(n) % 3
        pixels = rng.integers(0, 80, (n, 32, 32, 3), dtype=np.uint8)
        pixels[np.arange(n), :, :, y] += 160
        return ImageList(pixels, np.eye(3, dtype=np.uint8)[y])

    return RetrievalData("toy", ["r", "g", "b"], images(n_query), images(24), images(n_database), None)


def test_one_worker_pool_serves_query_and_database(monkeypatch):
    made = []

    class Counting(torch.utils.data.DataLoader):
        def __init__(self, *args, **kwargs):
            made.append(kwargs["num_workers"])
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(kalahash.loader, "DataLoader", Counting)
    data = _toy_data()
    hasher = build_hasher("lb", fresh_tiny(0), data.classnames, 8)
    scores = evaluate(hasher, data, progress=False, loader=LoaderOptions(workers=2))
    assert made == [2]  # one loader, its workers started once for query and database
    assert scores["query_codes"].shape == (12, 8) and scores["database_codes"].shape == (40, 8)


def test_objects10_at_16_pixels_scores_the_same_with_device_preprocessing():
    """tiny-objects-m reads 32x32: objects10 shrunk to 16x16 makes its preprocess upsample, as CIFAR-10
    into ViT-B/32 does. Pixels, features, codes and mAP agree exactly (a subset; the full world: the
    same, see notes/issue-24)."""
    world = load_dataset("objects10", None)

    def shrunk(images: ImageList, n: int) -> ImageList:
        small = np.stack(
            [np.asarray(Image.fromarray(im).resize((16, 16), Image.BICUBIC)) for im in images.images[:n]]
        )
        return ImageList(small, images.labels[:n], images.ids[:n])

    data = RetrievalData(
        "objects10-16px",
        world.classnames,
        shrunk(world.query, 100),
        world.train,
        shrunk(world.database, 400),
        None,
    )
    torch.manual_seed(0)
    hasher = build_hasher("zeroshot", load_backbone("tiny-objects-m"), data.classnames, 16)
    pil = evaluate(hasher, data, progress=False)
    device = evaluate(hasher, data, progress=False, loader=LoaderOptions(device_preprocess=True))
    assert device["map"] - pil["map"] == 0.0 and pil["map"] > 0.2
    assert np.array_equal(device["database_codes"], pil["database_codes"])
    features = [
        embed(hasher, data.query, loader=LoaderOptions(device_preprocess=d)).features for d in (False, True)
    ]
    assert np.array_equal(*features)


def test_cached_runs_with_device_preprocessing_keep_their_own_entries(tmp_path):
    data = _toy_data()
    hasher = build_hasher("lb", fresh_tiny(0), data.classnames, 8)
    cache = PrefixCache(tmp_path)
    pil = evaluate(hasher, data, cache=cache, progress=False)
    device = evaluate(hasher, data, cache=cache, progress=False, loader=LoaderOptions(device_preprocess=True))
    assert cache.misses == 4 and len(list(tmp_path.glob("*.npy"))) == 4  # query and database, each path
    assert np.array_equal(pil["database_codes"], device["database_codes"])


def test_run_takes_the_loader_options_and_records_them(tmp_path, capsys):
    from helpers import cli_run_args

    from kalahash.cli import main
    from kalahash.experiments import read_results

    assert main(cli_run_args(tmp_path / "pil")) == 0
    assert main(cli_run_args(tmp_path / "device", "--workers", "1", "--device-preprocess")) == 0
    pil, device = (read_results(tmp_path / name / "results.csv").iloc[-1] for name in ("pil", "device"))
    assert (pil["workers"], pil["device_preprocess"]) == (0, False)  # the CPU default: no workers
    assert (device["workers"], device["device_preprocess"]) == (1, True)
    assert device["map"] == pil["map"]
    for phase in ("load", "check", "build", "fit", "encode", "map"):
        assert device[f"{phase}_seconds"] >= 0
    with pytest.raises(SystemExit):
        main(cli_run_args(tmp_path / "bad", "--workers", "-1"))
    assert "--workers: must be 0 or more" in capsys.readouterr().err
