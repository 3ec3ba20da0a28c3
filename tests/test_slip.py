"""SLIP checkpoints as backbones: key mapping, head count, the timm token path, adapters on it.

Checkpoints are written by the test in SLIP's own format (``module.`` keys, ``args`` Namespace,
``epoch``, the SimCLR head), from the shapes of SLIP's models.py, independently of kalahash.slip.
"""

from __future__ import annotations

import argparse
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from timm.layers import Attention

from kalahash import slip
from kalahash.backbones import available_models, load_backbone, parameter_count
from kalahash.cache import PrefixCache
from kalahash.data import ImageList, RetrievalData
from kalahash.hashing import build_hasher
from kalahash.lora import apply_adapter
from kalahash.towers import TimmSplitAttention, split_timm_attention
from kalahash.train import encode, evaluate, fit

TINY = slip.SlipConfig(
    image_size=32,
    patch_size=8,
    width=48,
    layers=2,
    heads=4,
    embed_dim=32,
    text_width=32,
    text_heads=2,
    text_layers=1,
    context_length=16,
)
# (vision width, layers, heads) of SLIP's ViT-S (MoCo v3: 12 heads), ViT-B and ViT-L towers
REAL_SHAPES = {
    "SLIP-ViT-S-16": (384, 12, 12),
    "SLIP-ViT-B-16": (768, 12, 12),
    "SLIP-ViT-L-16": (1024, 24, 16),
}


@pytest.fixture(scope="module")
def tiny_name():
    slip.add_slip_config("SLIP-test-tiny", TINY)
    yield "SLIP-test-tiny"
    del slip.SLIP_MODELS["SLIP-test-tiny"]


def _linear(name: str, out: int, inp: int) -> dict[str, tuple[int, ...]]:
    return {f"{name}.weight": (out, inp), f"{name}.bias": (out,)}


def _norm(name: str, width: int) -> dict[str, tuple[int, ...]]:
    return {f"{name}.weight": (width,), f"{name}.bias": (width,)}


def slip_format_state(
    width: int,
    layers: int,
    patch: int = 16,
    image: int = 224,
    embed: int = 512,
    text_width: int = 512,
    text_layers: int = 12,
    context: int = 77,
    vocab: int = 49408,
    device: str = "cpu",
    seed: int = 0,
) -> dict[str, torch.Tensor]:
    """A random state dict shaped and named as SLIP's SLIP model (timm 0.5 ViT + CLIP text tower + the
    SimCLR head). Head counts change no shape: that is why a wrong head count would load silently."""
    w, tw, mlp = width, text_width, 64
    shapes: dict[str, tuple[int, ...]] = {
        "visual.cls_token": (1, 1, w),
        "visual.pos_embed": (1, 1 + (image // patch) ** 2, w),
        "visual.patch_embed.proj.weight": (w, 3, patch, patch),
        "visual.patch_embed.proj.bias": (w,),
        **_norm("visual.norm", w),
        "token_embedding.weight": (vocab, tw),
        "positional_embedding": (context, tw),
        **_norm("ln_final", tw),
        "image_projection": (w, embed),
        "text_projection": (tw, embed),
        "logit_scale": (),
    }
    for i in range(layers):
        b = f"visual.blocks.{i}."
        shapes |= _norm(b + "norm1", w) | _linear(b + "attn.qkv", 3 * w, w) | _linear(b + "attn.proj", w, w)
        shapes |= _norm(b + "norm2", w) | _linear(b + "mlp.fc1", 4 * w, w) | _linear(b + "mlp.fc2", w, 4 * w)
    for i in range(text_layers):
        t = f"transformer.resblocks.{i}."
        shapes |= {t + "attn.in_proj_weight": (3 * tw, tw), t + "attn.in_proj_bias": (3 * tw,)}
        shapes |= _linear(t + "attn.out_proj", tw, tw) | _norm(t + "ln_1", tw) | _norm(t + "ln_2", tw)
        shapes |= _linear(t + "mlp.c_fc", 4 * tw, tw) | _linear(t + "mlp.c_proj", tw, 4 * tw)
    shapes |= _linear("image_mlp.layer1", mlp, w) | _linear("image_mlp.layer2", mlp, mlp)
    shapes |= _linear("image_mlp.layer3", 16, mlp)
    for bn in ("image_mlp.bn1", "image_mlp.bn2"):
        shapes |= _norm(bn, mlp) | {f"{bn}.running_mean": (mlp,), f"{bn}.running_var": (mlp,)}
    if device == "meta":
        return {"module." + k: torch.empty(s, device="meta") for k, s in shapes.items()}
    gen = torch.Generator().manual_seed(seed)
    state = {}
    for k, s in shapes.items():
        value = torch.randn(s, generator=gen) * 0.05
        if k.endswith(("norm1.weight", "norm2.weight", "norm.weight", "ln_1.weight", "ln_2.weight")):
            value += 1.0
        state["module." + k] = value
    return state


def tiny_state(seed: int = 0, width: int = TINY.width) -> dict[str, torch.Tensor]:
    t = TINY
    return slip_format_state(
        width,
        t.layers,
        t.patch_size,
        t.image_size,
        t.embed_dim,
        t.text_width,
        t.text_layers,
        t.context_length,
        seed=seed,
    )


def save_checkpoint(path, state) -> None:
    args = argparse.Namespace(model="SLIP_VITS16", ssl_mlp_dim=64, ssl_emb_dim=16, lr=3e-3)
    torch.save({"state_dict": state, "args": args, "epoch": 100}, path)


def reference_encode_image(state: dict[str, torch.Tensor], heads: int, images: torch.Tensor) -> torch.Tensor:
    """SLIP's image path written out by hand: ViT (pre-norm blocks, eps 1e-6), class token, projection."""
    s = {k.removeprefix("module.visual.").removeprefix("module."): v for k, v in state.items()}
    x = F.conv2d(images, s["patch_embed.proj.weight"], s["patch_embed.proj.bias"], stride=TINY.patch_size)
    x = x.flatten(2).transpose(1, 2)
    x = torch.cat([s["cls_token"].expand(len(x), -1, -1), x], dim=1) + s["pos_embed"]
    width = x.shape[-1]
    for i in range(TINY.layers):
        p = f"blocks.{i}."
        h = F.layer_norm(x, (width,), s[p + "norm1.weight"], s[p + "norm1.bias"], eps=1e-6)
        q, k, v = F.linear(h, s[p + "attn.qkv.weight"], s[p + "attn.qkv.bias"]).chunk(3, dim=-1)
        q, k, v = (t.unflatten(-1, (heads, width // heads)).transpose(1, 2) for t in (q, k, v))
        attn = (q @ k.transpose(-1, -2) / math.sqrt(width // heads)).softmax(-1)
        h = (attn @ v).transpose(1, 2).flatten(2)
        x = x + F.linear(h, s[p + "attn.proj.weight"], s[p + "attn.proj.bias"])
        h = F.layer_norm(x, (width,), s[p + "norm2.weight"], s[p + "norm2.bias"], eps=1e-6)
        x = x + F.linear(
            F.gelu(F.linear(h, s[p + "mlp.fc1.weight"], s[p + "mlp.fc1.bias"])),
            s[p + "mlp.fc2.weight"],
            s[p + "mlp.fc2.bias"],
        )
    x = F.layer_norm(x, (width,), s["norm.weight"], s["norm.bias"], eps=1e-6)
    return x[:, 0] @ s["image_projection"]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, tiny_name):
    path = tmp_path_factory.mktemp("slip") / "slip_tiny_100ep.pt"
    save_checkpoint(path, tiny_state())
    return path


def images(n: int = 3, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, 3, TINY.image_size, TINY.image_size, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("name", list(REAL_SHAPES))
def test_real_configs_take_slip_keys_and_shapes(name):
    """On the meta device (no memory): every SLIP key maps to a key of the same shape, none is left over,
    the head count is SLIP's, and the parameter count is the checkpoint's (SimCLR head excluded)."""
    width, layers, heads = REAL_SHAPES[name]
    state = slip_format_state(width, layers, device="meta")
    model = slip.build_slip_model(slip.SLIP_MODELS[name], device="meta")
    mapped = slip.slip_state_dict({k.removeprefix("module."): v for k, v in state.items()})
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert {k: tuple(v.shape) for k, v in mapped.items()} == expected
    assert {b.attn.num_heads for b in model.visual.trunk.blocks} == {heads}
    clip_params = sum(v.numel() for k, v in state.items() if ".image_mlp." not in k)
    assert parameter_count(name) == clip_params
    assert name in available_models()


def test_vit_s_16_is_the_moco_v3_shape():
    model = slip.build_slip_model(slip.SLIP_MODELS["SLIP-ViT-S-16"], device="meta")
    trunk = model.visual.trunk
    assert (trunk.embed_dim, len(trunk.blocks), trunk.blocks[0].attn.num_heads) == (384, 12, 12)
    assert trunk.global_pool == "token"
    assert model.visual.head.proj.bias is None
    assert type(model.transformer.resblocks[0].mlp.gelu).__name__ == "QuickGELU"
    assert (model.context_length, model.transformer.width, model.transformer.resblocks[0].attn.num_heads) == (
        77,
        512,
        8,
    )


def test_checkpoint_loads_and_matches_slips_image_path(checkpoint, tiny_name):
    state = tiny_state()
    backbone = load_backbone(tiny_name, pretrained=checkpoint)
    assert backbone.pretrained == checkpoint.name
    assert (backbone.width, backbone.embed_dim, len(backbone.blocks)) == (48, 32, 2)
    assert all(isinstance(b.attn, TimmSplitAttention) for b in backbone.blocks)
    x = images()
    with torch.no_grad():
        ours = backbone.encode_image(x)
    torch.testing.assert_close(ours, reference_encode_image(state, TINY.heads, x), atol=1e-5, rtol=1e-5)
    # a head count that differs from the checkpoint's gives other features: the count matters
    wrong = reference_encode_image(state, 2, x)
    assert (ours - wrong).abs().max() > 1e-3
    text = backbone.model.state_dict()
    torch.testing.assert_close(text["token_embedding.weight"], state["module.token_embedding.weight"])
    knowledge = backbone.text_knowledge(["cat", "dog"])
    assert knowledge.shape == (2, TINY.embed_dim) and torch.isfinite(knowledge).all()
    assert backbone.fingerprint != load_backbone(tiny_name).fingerprint


def test_split_tower_matches_fused_tower():
    torch.manual_seed(0)
    model = slip.build_slip_model(TINY).eval()
    x = images()
    with torch.no_grad():
        fused = model.encode_image(x)
        assert split_timm_attention(model.visual) == TINY.layers
        split = model.encode_image(x)
    torch.testing.assert_close(split, fused, atol=1e-5, rtol=1e-5)


def test_fresh_lora_leaves_the_tower_unchanged(checkpoint, tiny_name):
    backbone = load_backbone(tiny_name, pretrained=checkpoint)
    x = images()
    with torch.no_grad():
        before = backbone.encode_image(x)
        params = apply_adapter(backbone, "lora", blocks=[-1], targets=["q", "k", "v", "o"], rank=4)
        after = backbone.encode_image(x)
    assert len(params) == 8
    torch.testing.assert_close(after, before, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("method", ["kalahash", "lora", "lb"])
def test_hasher_drives_the_timm_tower(checkpoint, tiny_name, method):
    backbone = load_backbone(tiny_name, pretrained=checkpoint)
    with torch.no_grad():
        reference = backbone.encode_image(images())
    hasher = build_hasher(method, backbone, ["cat", "dog", "bird"], bits=16, rank=2)
    hasher.eval()
    x = images()
    with torch.no_grad():
        features = hasher.features(x)
        tokens = hasher.prefix_tokens(x, 1)
        assert tokens.shape == (3, 1 + (TINY.image_size // TINY.patch_size) ** 2, TINY.width)
        torch.testing.assert_close(hasher.features_from_tokens(tokens, 1), features, atol=1e-5, rtol=1e-5)
    if method == "kalahash":  # CLoRA differs from the frozen projection from the first step
        assert (features - reference).abs().max() > 1e-6
    else:
        torch.testing.assert_close(features, reference, atol=1e-5, rtol=1e-5)
    expected_from = TINY.layers if method == "lb" else TINY.layers - 1
    assert hasher.trainable_from == expected_from
    u = hasher.train()(x)
    u.sum().backward()
    assert u.shape == (3, 16)
    adapted = [p for n, p in hasher.named_parameters() if "lora_" in n or "knowledge_pool" in n]
    assert len(adapted) == {"kalahash": 4, "lora": 4, "lb": 0}[method]  # k, v adapters (+ F for CLoRA)
    assert all(p.grad is not None for p in adapted)  # (LoRA's A gets a zero gradient while B is zero)
    assert not adapted or any(p.grad.abs().sum() > 0 for p in adapted)


def test_prefix_state_covers_only_the_prefix(tiny_name):
    backbone = load_backbone(tiny_name)
    state = backbone.tower.prefix_state(1)
    assert {"cls_token", "pos_embed"} <= set(state)
    before = {k: v.clone() for k, v in state.items()}
    with torch.no_grad():
        backbone.blocks[1].mlp.fc1.weight.add_(1.0)  # after the prefix: no effect
    assert all(torch.equal(before[k], v) for k, v in backbone.tower.prefix_state(1).items())


def test_preprocess_and_tokenizer(tiny_name):
    backbone = load_backbone(tiny_name)
    picture = Image.fromarray(np.full((40, 50, 3), 124, dtype=np.uint8))  # ~ImageNet's red mean
    pixels = backbone.preprocess(picture)
    assert pixels.shape == (3, 32, 32)
    assert abs(float(pixels[0].mean()) - (124 / 255 - 0.485) / 0.229) < 1e-4
    assert backbone.tokenizer(["a photo of a cat."]).shape == (1, TINY.context_length)


def test_a_tag_is_refused_with_the_download(tiny_name):
    with pytest.raises(ValueError, match=r"dl\.fbaipublicfiles\.com/slip/slip_small_100ep\.pt"):
        load_backbone("SLIP-ViT-S-16", pretrained="openai")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_backbone(tiny_name, pretrained="/no/such/slip_small_100ep.pt")


def test_wrong_checkpoints_name_the_file(tmp_path, tiny_name):
    wider = tmp_path / "wider.pt"
    save_checkpoint(wider, tiny_state(width=64))
    with pytest.raises(ValueError, match=r"wider\.pt.*trained as SLIP_VITS16.*does not fit"):
        load_backbone(tiny_name, pretrained=wider)
    simclr = tmp_path / "simclr.pt"
    save_checkpoint(simclr, {k: v for k, v in tiny_state().items() if "visual" in k or "image_mlp" in k})
    with pytest.raises(ValueError, match=r"simclr\.pt.*missing keys"):
        load_backbone(tiny_name, pretrained=simclr)
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match=r"could not read SLIP checkpoint"):
        load_backbone(tiny_name, pretrained=garbage)


def test_only_plain_timm_attention_is_split():
    with pytest.raises(ValueError, match="plain timm self-attention"):
        TimmSplitAttention.from_timm(
            Attention(32, num_heads=4, qkv_bias=True, qk_norm=True, norm_layer=torch.nn.LayerNorm)
        )
    split = TimmSplitAttention.from_timm(Attention(32, num_heads=4, qkv_bias=True))
    with pytest.raises(ValueError, match="is_causal"):
        split(torch.randn(1, 3, 32), is_causal=True)


def test_config_validation():
    with pytest.raises(ValueError, match="divisible"):
        slip.SlipConfig(width=384, heads=7)
    with pytest.raises(ValueError, match="open_clip model name"):
        slip.add_slip_config("ViT-B-32", TINY)


def test_a_slip_hasher_trains_through_the_cache_and_restores(checkpoint, tiny_name, tmp_path):
    """The whole path on a timm tower: cached frozen prefix, training, evaluation, trained state."""
    rng = np.random.default_rng(0)
    y = np.arange(24) % 3
    pixels = rng.integers(0, 60, size=(24, 32, 32, 3), dtype=np.uint8)
    pixels[np.arange(24), :, :, y] += 180
    labels = np.eye(3, dtype=np.uint8)[y]
    sets = [
        ImageList(pixels[s], labels[s], [f"{n}{i}" for i in range(8)])
        for n, s in zip("qtd", np.split(np.arange(24), 3), strict=True)
    ]
    data = RetrievalData("toy", ["red", "green", "blue"], *sets, topk=None)

    def hasher():
        torch.manual_seed(0)
        return build_hasher(
            "kalahash", load_backbone(tiny_name, pretrained=checkpoint), data.classnames, 8, rank=2
        )

    trained, cache = hasher(), PrefixCache(tmp_path)
    fit(trained, data.train, epochs=2, batch_size=4, cache=cache, progress=False)
    scores = evaluate(trained, data, cache=cache, progress=False)
    assert 0.0 <= scores["map"] <= 1.0
    assert (cache.misses, cache.hits) == (3, 0)  # train, query and database prefixes, once each
    again = evaluate(trained, data, cache=cache, progress=False)
    assert (cache.misses, cache.hits) == (3, 2)
    np.testing.assert_array_equal(again["database_codes"], scores["database_codes"])
    restored = hasher()
    restored.load_trained_state(trained.trained_state())
    np.testing.assert_array_equal(encode(restored, data.query, progress=False), scores["query_codes"])
