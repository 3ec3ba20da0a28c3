"""LoRA / CLoRA layers and apply_adapter, on random tensors and the real `tiny` open_clip config."""

import math

import pytest
import torch
from helpers import fresh_tiny
from torch import nn

from kalahash.lora import (
    CLoRALinear,
    KnowledgePool,
    LoRALinear,
    adapters,
    apply_adapter,
    knowledge_pool,
    merge_lora,
)


def images(n: int = 3, seed: int = 1) -> torch.Tensor:
    return torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


# ----------------------------------------------------------------------------------------------- LoRA


def test_fresh_lora_equals_base_and_init_follows_kaiming():
    torch.manual_seed(0)
    base = nn.Linear(12, 10)
    layer = LoRALinear(base, rank=4, alpha=2.0)
    x = torch.randn(5, 7, 12)
    assert torch.equal(layer(x), base(x))  # B = 0 at init
    assert torch.count_nonzero(layer.lora_B) == 0
    bound = 1 / math.sqrt(12)  # Kaiming-uniform with a = sqrt(5) on fan_in = 12
    assert layer.lora_A.abs().max() <= bound and layer.lora_A.abs().max() > 0.5 * bound
    assert not base.weight.requires_grad and layer.lora_A.requires_grad and layer.lora_B.requires_grad


def test_lora_scaling_plain_and_rank_stabilised():
    base = nn.Linear(8, 8)
    assert LoRALinear(base, rank=4, alpha=2.0).scaling == pytest.approx(0.5)
    assert LoRALinear(base, rank=4, alpha=2.0, rank_stabilised=True).scaling == pytest.approx(1.0)


@pytest.mark.parametrize("rank_stabilised", [False, True])
def test_lora_merge_is_exact(rank_stabilised):
    torch.manual_seed(0)
    layer = LoRALinear(nn.Linear(16, 12), rank=3, alpha=0.7, rank_stabilised=rank_stabilised)
    with torch.no_grad():
        layer.lora_B.normal_()
    x = torch.randn(4, 5, 16)
    merged = layer.merge()
    assert type(merged) is nn.Linear and not merged.weight.requires_grad
    expected = layer.base(x) + layer.scaling * (x @ layer.lora_A.t()) @ layer.lora_B.t()
    torch.testing.assert_close(layer(x), expected, atol=1e-5, rtol=0)
    torch.testing.assert_close(merged(x), layer(x), atol=1e-5, rtol=0)
    assert not torch.allclose(merged(x), layer.base(x), atol=1e-3)  # the update is not trivial


def test_lora_bad_rank():
    with pytest.raises(ValueError, match="rank must be a positive int"):
        LoRALinear(nn.Linear(4, 4), rank=0, alpha=1.0)


# ---------------------------------------------------------------------------------------------- CLoRA


def identity_pool(classes: int = 4, width: int = 8) -> KnowledgePool:
    """A pool whose F is the identity, so F(K) = K = the first `classes` unit vectors."""
    pool = KnowledgePool(torch.eye(classes, width), width)
    with torch.no_grad():
        pool.F.weight.copy_(torch.eye(width))
        pool.F.bias.zero_()
    return pool


def test_top_r_picks_the_most_similar_classes_and_ignores_cls():
    pool = identity_pool(classes=4, width=8)
    layer = CLoRALinear(nn.Linear(8, 8), pool, rank=2, alpha=1.0)
    e = torch.eye(8)
    # image 0: patch mean ∝ 3 e2 + 2 e0 + e1 → classes [2, 0]; its CLS token points at class 3 (ignored)
    # image 1: patch mean ∝ 5 e1 + 4 e3 → classes [1, 3]
    x = torch.stack(
        [
            torch.stack([100 * e[3], 6 * e[2] + 4 * e[0], 2 * e[1]]),
            torch.stack([100 * e[0], 10 * e[1], 8 * e[3]]),
        ]
    )
    top = layer.select(x, pool())
    assert top.tolist() == [[2, 0], [1, 3]]


def test_clora_with_zero_A_is_the_frozen_projection():
    torch.manual_seed(0)
    pool = KnowledgePool(torch.randn(5, 6), 8)
    base = nn.Linear(8, 8)
    layer = CLoRALinear(base, pool, rank=3, alpha=0.9)
    x = torch.randn(2, 4, 8)
    assert not torch.allclose(layer(x), base(x))  # B_i = rows of F(K) is not zero: differs at init
    with torch.no_grad():
        layer.lora_A.zero_()
    assert torch.equal(layer(x), base(x))


def test_clora_vectorised_forward_equals_per_image_loop():
    torch.manual_seed(0)
    pool = KnowledgePool(torch.randn(6, 10), 8)
    base = nn.Linear(8, 8)
    layer = CLoRALinear(base, pool, rank=3, alpha=0.8)
    x = torch.randn(5, 7, 8)
    rows = pool()
    s = 0.8 / math.sqrt(3)  # rank-stabilised scaling
    reference = []
    for xi in x:  # the notes' formula, one image at a time
        q = xi[1:].mean(0)
        q = q / q.norm()
        sims = torch.stack([q @ (row / row.norm()) for row in rows])
        top = sims.topk(3).indices
        b_i = rows[top]  # (r, out)
        reference.append(xi @ base.weight.t() + base.bias + s * (xi @ layer.lora_A.t()) @ b_i)
    torch.testing.assert_close(layer(x), torch.stack(reference), atol=1e-5, rtol=1e-5)


def test_clora_gradients_reach_A_and_F_only():
    torch.manual_seed(0)
    pool = KnowledgePool(torch.randn(4, 6), 8)
    base = nn.Linear(8, 8)
    layer = CLoRALinear(base, pool, rank=2, alpha=1.0)
    layer(torch.randn(3, 5, 8)).square().sum().backward()
    assert layer.lora_A.grad is not None and layer.lora_A.grad.abs().sum() > 0
    assert pool.F.weight.grad is not None and pool.F.weight.grad.abs().sum() > 0
    assert base.weight.grad is None and base.bias.grad is None
    assert "_pool" not in dict(layer.named_children())  # shared pool: not a child (no duplicate keys)


def test_clora_rejects_rank_above_classes_and_width_mismatch():
    pool = KnowledgePool(torch.randn(3, 6), 8)
    with pytest.raises(ValueError, match=r"rank 4 exceeds the number of classes 3.*1\.\.3"):
        CLoRALinear(nn.Linear(8, 8), pool, rank=4, alpha=1.0)
    with pytest.raises(ValueError, match="pool width 8"):
        CLoRALinear(nn.Linear(16, 16), pool, rank=2, alpha=1.0)
    with pytest.raises(ValueError, match="knowledge is empty"):
        KnowledgePool(torch.empty(0, 6), 8)


def test_clora_under_bf16_autocast_is_finite():
    torch.manual_seed(0)
    layer = CLoRALinear(nn.Linear(8, 8), KnowledgePool(torch.randn(4, 6), 8), rank=2, alpha=1.0)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = layer(torch.randn(2, 5, 8))
    assert out.shape == (2, 5, 8) and torch.isfinite(out.float()).all()


def test_topr_selection_is_the_default_and_unchanged():
    """selection="topr" is the paper's Top_r, bit for bit: same output as the default layer, same
    indices as the similarity ranking, and no draw from the global RNG."""
    pool = KnowledgePool(torch.randn(6, 10, generator=torch.Generator().manual_seed(0)), 8)
    base = nn.Linear(8, 8)
    torch.manual_seed(1)
    default = CLoRALinear(base, pool, rank=3, alpha=0.8)
    torch.manual_seed(1)
    topr = CLoRALinear(base, pool, rank=3, alpha=0.8, selection="topr")
    x = torch.randn(5, 7, 8)
    state = torch.get_rng_state()
    assert torch.equal(topr(x), default(x))
    assert torch.equal(torch.get_rng_state(), state)
    query = torch.nn.functional.normalize(x[:, 1:].mean(1), dim=-1)
    keys = torch.nn.functional.normalize(pool().detach(), dim=-1)
    assert torch.equal(topr.select(x, pool()), (query @ keys.t()).topk(3, dim=-1).indices)


def test_fixed_selection_takes_the_first_r_classes_for_every_image():
    layer = CLoRALinear(nn.Linear(8, 8), identity_pool(classes=4), rank=2, alpha=1.0, selection="fixed")
    x = torch.randn(3, 5, 8)
    assert layer.select(x, layer.pool()).tolist() == [[0, 1]] * 3
    assert layer.select(-x, layer.pool()).tolist() == [[0, 1]] * 3  # whatever the tokens


def test_random_selection_draws_distinct_classes_per_image_from_its_seed():
    def layer(seed: int) -> CLoRALinear:
        pool = KnowledgePool(torch.randn(6, 10), 8)
        return CLoRALinear(nn.Linear(8, 8), pool, rank=3, alpha=1.0, selection="random", seed=seed)

    x = torch.randn(40, 5, 8)
    a, b, other = layer(7), layer(7), layer(8)
    first = a.select(x, a.pool())
    assert first.shape == (40, 3) and first.min() >= 0 and first.max() < 6
    assert all(len(set(row)) == 3 for row in first.tolist())  # distinct classes per image
    assert len({tuple(sorted(row)) for row in first.tolist()}) > 1  # not the same for every image
    second = a.select(x, a.pool())
    assert not torch.equal(first, second)  # a new draw at every forward
    assert torch.equal(b.select(x, b.pool()), first)  # same seed, same draws
    assert not torch.equal(other.select(x, other.pool()), first)
    assert torch.equal(b.select(-x, b.pool()), second)  # the tokens play no part


def test_apply_random_selection_shares_one_seed_between_the_projections():
    backbone = fresh_tiny()
    torch.manual_seed(3)
    apply_adapter(backbone, "clora", rank=2, knowledge=torch.randn(5, 64), selection="random")
    layers = [m for _, m in adapters(backbone.visual)]
    assert {m.selection for m in layers} == {"random"} and len({m.seed for m in layers}) == 1
    x = torch.randn(4, 3, backbone.width)
    k, v = (m.select(x, m.pool()) for m in layers)
    assert torch.equal(k, v)  # as Top_r picks the same classes for the shared input


# --------------------------------------------------------------------------------------- apply_adapter


def test_apply_clora_defaults_last_block_k_v():
    backbone = fresh_tiny()
    knowledge = backbone.text_knowledge(["cat", "dog", "car"])
    params = apply_adapter(backbone, "clora", rank=2, strength=0.5, knowledge=knowledge)
    names = [n for n, _ in adapters(backbone.visual)]
    assert names == ["transformer.resblocks.1.attn.k_proj", "transformer.resblocks.1.attn.v_proj"]
    pool = knowledge_pool(backbone)
    assert isinstance(pool, KnowledgePool) and pool.num_classes == 3
    width, embed = backbone.width, backbone.embed_dim
    assert sum(p.numel() for p in params) == 2 * 2 * width + embed * width + width
    trainable = {id(p) for p in backbone.model.parameters() if p.requires_grad}
    assert trainable == {id(p) for p in params}
    assert all(m.pool is pool for _, m in adapters(backbone.visual))  # one pool shared


def test_apply_lora_fresh_equals_frozen_and_merges_exactly():
    reference = fresh_tiny()
    backbone = fresh_tiny()
    x = images()
    params = apply_adapter(backbone, "lora", blocks=[0, -1], targets=["q", "o"], rank=3, strength=1.0)
    assert len(params) == 2 * 2 * 2  # A and B, 2 targets, 2 blocks
    with torch.no_grad():
        assert torch.equal(backbone.encode_image(x), reference.encode_image(x))
        for p in params:
            p.normal_(std=0.05)
        adapted = backbone.encode_image(x)
        assert merge_lora(backbone.visual) == 4 and not adapters(backbone.visual)
        torch.testing.assert_close(backbone.encode_image(x), adapted, atol=1e-5, rtol=0)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"kind": "dora"}, r"unknown adapter kind 'dora'.*'lora', 'clora'"),
        ({"kind": "lora", "rank": 0}, "rank must be a positive int"),
        ({"kind": "lora", "targets": ["k", "x"]}, r"unknown target 'x'.*'q', 'k', 'v', 'o'"),
        ({"kind": "lora", "blocks": [2]}, r"block index 2 is out of range.*-2\.\.1"),
        ({"kind": "lora", "blocks": []}, "blocks is empty"),
        ({"kind": "clora", "rank": 4, "knowledge": torch.randn(3, 64)}, r"rank 4 exceeds.*1\.\.3"),
        ({"kind": "clora", "knowledge": torch.empty(0, 64), "rank": 1}, "knowledge is empty"),
        ({"kind": "clora", "rank": 1}, "needs knowledge"),
        ({"kind": "lora", "knowledge": torch.randn(3, 64)}, "only used by kind='clora'"),
        ({"kind": "lora", "selection": "random"}, "selection='random' is CLoRA's"),
        (
            {"kind": "clora", "rank": 1, "knowledge": torch.randn(3, 64), "selection": "best"},
            "unknown selection",
        ),
    ],
)
def test_apply_adapter_bad_input(tiny_backbone, kwargs, message):
    # validation happens before any change, so the shared session backbone stays untouched
    with pytest.raises(ValueError, match=message):
        apply_adapter(tiny_backbone, **kwargs)
    assert not adapters(tiny_backbone.visual) and knowledge_pool(tiny_backbone) is None


def test_apply_adapter_twice_and_clora_merge_refused():
    backbone = fresh_tiny()
    apply_adapter(backbone, "clora", rank=1, knowledge=torch.randn(2, 64))
    with pytest.raises(ValueError, match="already"):
        apply_adapter(backbone, "lora", rank=1)
    with pytest.raises(ValueError, match="CLoRA cannot be merged"):
        merge_lora(backbone.visual)
