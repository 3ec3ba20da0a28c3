"""Knowledge controls (true / permuted / random K), the zeroshot method and the `ours` anchor momentum."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers import fresh_tiny

from kalahash.cache import PrefixCache
from kalahash.data import ImageList
from kalahash.hashing import (
    KNOWLEDGE_MODES,
    build_hasher,
    control_knowledge,
    csq_centers,
    hadamard,
    knowledge_permutation,
)
from kalahash.train import encode, fit, make_optimizer

CLASSES = ["red circle", "blue square", "green triangle", "plain star"]


def _knowledge(rows: int = 6, dim: int = 5) -> torch.Tensor:
    return torch.randn(rows, dim, generator=torch.Generator().manual_seed(7)) * 3 + 1


def test_true_knowledge_is_an_equal_copy():
    k = _knowledge()
    out = control_knowledge(k, "true")
    assert torch.equal(out, k) and out.data_ptr() != k.data_ptr()


def test_permuted_knowledge_deals_every_row_to_another_class():
    k = _knowledge()
    perm = knowledge_permutation(6, seed=3)
    assert sorted(perm.tolist()) == list(range(6)) and not np.any(perm == np.arange(6))  # a derangement
    assert torch.equal(control_knowledge(k, "permuted", seed=3), k[torch.from_numpy(perm)])
    assert np.array_equal(knowledge_permutation(6, seed=3), perm)  # seeded
    assert any(not np.array_equal(knowledge_permutation(6, seed=s), perm) for s in range(4, 10))
    assert np.array_equal(knowledge_permutation(2, seed=0), [1, 0])  # the only derangement of two
    with pytest.raises(ValueError, match="at least 2 classes"):
        knowledge_permutation(1, seed=0)


def test_random_knowledge_keeps_row_norms_and_leaves_the_global_rng_alone():
    k = _knowledge()
    state = torch.get_rng_state()
    out = control_knowledge(k, "random", seed=5)
    assert torch.equal(torch.get_rng_state(), state)
    torch.testing.assert_close(out.norm(dim=1), k.norm(dim=1))
    cosine = F.cosine_similarity(out, k, dim=1)
    assert cosine.abs().max() < 0.99  # not the same directions
    assert torch.equal(control_knowledge(k, "random", seed=5), out)
    assert not torch.equal(control_knowledge(k, "random", seed=6), out)


def test_unknown_knowledge_mode_lists_the_allowed_ones():
    with pytest.raises(
        ValueError, match="unknown knowledge 'shuffled': allowed 'true', 'permuted', 'random'"
    ):
        control_knowledge(_knowledge(), "shuffled")
    assert KNOWLEDGE_MODES == ("true", "permuted", "random")


def test_build_hasher_feeds_the_controlled_knowledge_to_the_pool_and_the_anchors():
    true = build_hasher("kalahash", fresh_tiny(), CLASSES, 8, rank=2)
    permuted = build_hasher(
        "kalahash", fresh_tiny(), CLASSES, 8, rank=2, knowledge="permuted", knowledge_seed=4
    )
    perm = torch.from_numpy(knowledge_permutation(len(CLASSES), 4))
    assert torch.equal(permuted.knowledge, true.knowledge[perm])
    assert torch.equal(permuted.knowledge_pool.knowledge, true.knowledge[perm])
    anchors = permuted.anchors.linear
    torch.testing.assert_close(
        permuted.anchor_matrix(), (true.knowledge[perm] @ anchors.weight.t() + anchors.bias).t()
    )
    assert permuted.hparams["knowledge"] == "permuted" and permuted.hparams["knowledge_seed"] == 4


def test_knowledge_control_needs_a_method_that_reads_k():
    with pytest.raises(ValueError, match="method 'lb' does not: use knowledge='true'"):
        build_hasher("lb", fresh_tiny(), CLASSES, 8, knowledge="random")
    hasher = build_hasher("lb", fresh_tiny(), CLASSES, 8, knowledge="random", kiddo=True)  # G reads K
    assert hasher.hparams["knowledge"] == "random"
    with pytest.raises(ValueError, match="knowledge_seed must be a non-negative int"):
        build_hasher("clora", fresh_tiny(), CLASSES, 8, rank=2, knowledge="random", knowledge_seed=-1)
    with pytest.raises(ValueError, match="at least 2 classes"):
        build_hasher("zeroshot", fresh_tiny(), ["cat"], 8, knowledge="permuted")


def _images(n: int = 10) -> ImageList:
    rng = np.random.default_rng(0)
    labels = np.eye(len(CLASSES), dtype=np.uint8)[np.arange(n) % len(CLASSES)]
    return ImageList(rng.integers(0, 255, size=(n, 32, 32, 3), dtype=np.uint8), labels)


def test_zeroshot_codes_are_the_class_codes_of_the_argmax_class(tmp_path):
    hasher = build_hasher("zeroshot", fresh_tiny(), CLASSES, 8)
    assert hasher.parameter_counts()["total_trainable"] == 0 and not hasher.trainable_parameters()
    assert torch.equal(hasher.head.codes, hadamard(8)[: len(CLASSES)])  # bits a power of two, C <= bits
    images = _images()
    pixels = torch.stack(
        [images.with_transform(hasher.backbone.preprocess)[i][0] for i in range(len(images))]
    )
    with torch.no_grad():
        features = hasher.features(pixels)
    cosine = F.normalize(features, dim=-1) @ F.normalize(hasher.knowledge, dim=-1).t()
    expected = hasher.head.codes[cosine.argmax(dim=1)].to(torch.int8).numpy()
    assert np.array_equal(encode(hasher, images, progress=False), expected)
    cached = encode(hasher, images, cache=PrefixCache(tmp_path), progress=False)  # the prefix-cache path
    assert np.array_equal(cached, expected) and hasher.trainable_from == hasher.num_blocks


def test_zeroshot_uses_csq_centres_when_hadamard_rows_run_out():
    hasher = build_hasher("zeroshot", fresh_tiny(), CLASSES, 6)  # 6 bits: no Hadamard matrix
    codes = hasher.head.codes
    assert codes.shape == (4, 6) and set(codes.unique().tolist()) == {-1.0, 1.0}
    assert len(torch.unique(codes, dim=0)) == 4
    with torch.random.fork_rng():
        torch.manual_seed(0)
        assert torch.equal(codes, csq_centers(4, 6))


def test_zeroshot_fit_does_nothing():
    hasher = build_hasher("zeroshot", fresh_tiny(), CLASSES, 8)
    before = {k: v.clone() for k, v in hasher.trained_state().items()}
    result = fit(hasher, _images(), epochs=3, batch_size=4, progress=False)
    assert result.history == [] and result.seconds == 0.0 and int(hasher.epochs_done) == 0
    for key, value in hasher.trained_state().items():
        assert torch.equal(value, before[key]), key
    with pytest.raises(ValueError, match="cannot use KIDDO"):
        build_hasher("zeroshot", fresh_tiny(), CLASSES, 8, kiddo=True)


def test_anchor_momentum_gives_g_its_own_optimizer_group():
    from kalahash.train import TrainConfig

    released = build_hasher("kalahash", fresh_tiny(), CLASSES, 8, rank=2)
    optimizer, _ = make_optimizer(released, TrainConfig())
    assert len(optimizer.param_groups) == 1 and optimizer.param_groups[0]["momentum"] == 0.9
    ours = build_hasher("kalahash", fresh_tiny(), CLASSES, 8, rank=2, anchor_momentum=0.0)
    optimizer, _ = make_optimizer(ours, TrainConfig())
    rest, anchors = optimizer.param_groups
    assert {id(p) for p in anchors["params"]} == {id(p) for p in ours.anchors.parameters()}
    assert anchors["momentum"] == 0.0 and rest["momentum"] == 0.9
    assert len(rest["params"]) + len(anchors["params"]) == len(ours.trainable_parameters())
    with pytest.raises(ValueError, match=r"anchor_momentum .* needs kiddo=True"):
        build_hasher("clora", fresh_tiny(), CLASSES, 8, rank=2, anchor_momentum=0.0)


def test_a_checkpoint_restores_the_same_control(tmp_path):
    from kalahash.checkpoints import load_checkpoint, restore_hasher, save_checkpoint

    for method, hp in (("kalahash", {"rank": 2}), ("zeroshot", {})):
        hasher = build_hasher(method, fresh_tiny(), CLASSES, 8, knowledge="random", knowledge_seed=9, **hp)
        path = save_checkpoint(tmp_path / f"{method}.ckpt", hasher)
        restored = restore_hasher(load_checkpoint(path), fresh_tiny())
        assert torch.equal(restored.knowledge, hasher.knowledge), method
        assert restored.hparams["knowledge"] == "random" and restored.hparams["knowledge_seed"] == 9
        images = _images()
        assert np.array_equal(
            encode(restored, images, progress=False), encode(hasher, images, progress=False)
        )
