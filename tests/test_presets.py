import pytest

from kalahash.presets import PRESET_BITS, PRESET_SHOTS, preset, preset_table


def test_released_values_match_the_release():
    p = preset("cifar10", 1, 16)
    assert p.released and p.source == "released"
    assert p.hparams == {
        "rank": 1,
        "strength": 1.0,
        "kiddo_alpha": 0.1,
        "kiddo_beta": 1.0,
        "kiddo_gamma": 3.0,
    }
    assert preset("nuswide", 8, 16).hparams["rank"] == 8
    assert preset("coco", 4, 16).hparams == {
        "rank": 2,
        "strength": 0.3,
        "kiddo_alpha": 0.001,
        "kiddo_beta": 0.1,
        "kiddo_gamma": 1.0,
    }


@pytest.mark.parametrize(
    "dataset,shots,bits,reason",
    [
        ("cifar10", 1, 32, "16 bits"),
        ("cifar10", 16, 16, "released 8-shot"),
        ("nuswide", 3, 16, "released 2-shot"),
        ("shapes", 1, 16, "borrowed from cifar10"),
        ("shapes-multi", 2, 64, "borrowed from nuswide"),
        ("objects10", 1, 16, "borrowed from cifar10"),
        ("objects10-multi", 4, 16, "borrowed from nuswide"),
    ],
)
def test_values_that_are_not_released_are_marked_ours(dataset, shots, bits, reason):
    p = preset(dataset, shots, bits)
    assert not p.released
    assert p.source.startswith("ours") and reason in p.source


def test_table_covers_every_setting_the_notebooks_use():
    table = preset_table()
    settings = {(p.dataset, p.shots, p.bits) for p in table}
    for dataset in ("cifar10", "nuswide", "coco", "shapes", "shapes-multi", "objects10", "objects10-multi"):
        for shots in PRESET_SHOTS:
            for bits in PRESET_BITS:
                assert (dataset, shots, bits) in settings
    assert sum(p.released for p in table) == 12  # 3 data sets x 4 shot counts at 16 bits


def test_bad_input():
    with pytest.raises(ValueError, match=r"no presets for dataset 'imagenet'.*cifar10"):
        preset("imagenet", 1, 16)
    with pytest.raises(ValueError, match="shots must be a positive integer"):
        preset("cifar10", 0, 16)
    with pytest.raises(ValueError, match="bits must be a positive integer"):
        preset("cifar10", 1, -16)


def test_released_only_on_the_released_backbone():
    assert preset("cifar10", 1, 16, ("ViT-B-32", "openai")).source == "released"
    for backbone, used in [
        (("tiny-objects-m", None), "used with tiny-objects-m"),
        (("ViT-B-32", None), "used with ViT-B-32"),  # random init
        (("ViT-L-14", "openai"), "used with ViT-L-14 (openai)"),
    ]:
        p = preset("cifar10", 1, 16, backbone)
        assert not p.released and p.source == f"ours: released for CLIP ViT-B-32 (openai), {used}"
    both = preset("objects10", 1, 16, ("tiny-objects-m", None)).source
    assert (
        both == "ours: borrowed from cifar10; released for CLIP ViT-B-32 (openai), used with tiny-objects-m"
    )


def test_release_defaults_are_the_hashers_own():
    """A data set without released values gets the defaults the hasher itself has (kalahash.lora's rank
    and strength, KIDDO's loss weights), not a copy of them."""
    from kalahash.hashing import HPARAMS
    from kalahash.presets import LORA_BASELINE, RELEASE_DEFAULTS

    assert {key: HPARAMS[key] for key in RELEASE_DEFAULTS} == RELEASE_DEFAULTS
    assert (
        LORA_BASELINE
        == {"rank": HPARAMS["rank"], "strength": HPARAMS["strength"]}
        == {"rank": 8, "strength": 0.5}
    )
