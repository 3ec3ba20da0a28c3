import copy

import open_clip
import pytest
import torch
from helpers import fresh_tiny

from kalahash.backbones import (
    WeightsUnavailableError,
    load_backbone,
    state_fingerprint,
)
from kalahash.cli import main
from kalahash.towers import SplitAttention, open_clip_state_dict, split_attention


@pytest.mark.parametrize("name,size", [("tiny", 32), ("ViT-B-32", 224)])
def test_split_attention_matches_fused(name, size):
    torch.manual_seed(0)
    fused = open_clip.create_model(name).eval()
    split = copy.deepcopy(fused)
    n_blocks = len(fused.visual.transformer.resblocks)
    assert split_attention(split.visual) == n_blocks
    assert all(isinstance(b.attn, SplitAttention) for b in split.visual.transformer.resblocks)
    images = torch.randn(3, 3, size, size)
    with torch.no_grad():
        expected = fused.encode_image(images)
        got = split.encode_image(images)
    assert got.shape == expected.shape
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_split_attention_handles_sequence_first_layout():
    torch.manual_seed(0)
    mha = torch.nn.MultiheadAttention(16, 4, batch_first=False).eval()
    split = SplitAttention.from_fused(mha)
    x = torch.randn(5, 2, 16)  # (tokens, batch, width)
    torch.testing.assert_close(split(x, x, x)[0], mha(x, x, x, need_weights=False)[0], atol=1e-6, rtol=1e-5)


def test_projections_see_batch_first_tokens(tiny_backbone):
    seen = []
    proj = tiny_backbone.blocks[-1].attn.k_proj
    handle = proj.register_forward_hook(lambda m, inp, out: seen.append(inp[0].shape))
    try:
        tiny_backbone.encode_image(torch.randn(2, 3, 32, 32))
    finally:
        handle.remove()
    assert seen == [torch.Size([2, 17, 64])]  # 16 patches + CLS, width 64


def test_tiny_backbone_fields(tiny_backbone):
    b = tiny_backbone
    assert (b.embed_dim, b.width, b.image_size, b.pretrained) == (64, 64, (32, 32), "random")
    assert not any(p.requires_grad for p in b.model.parameters())
    assert len(b.fingerprint) == 16
    feats = b.encode_image(torch.randn(4, 3, 32, 32))
    assert feats.shape == (4, 64)


def test_text_knowledge_is_raw_and_cached(tiny_backbone):
    k = tiny_backbone.text_knowledge(["cat", "dog", "ship"])
    assert k.shape == (3, 64) and k.dtype == torch.float32
    assert not torch.allclose(k.norm(dim=1), torch.ones(3))  # not L2-normalised
    first = k[0].clone()
    k[0] = 0  # a returned copy: the cache stays intact
    torch.testing.assert_close(tiny_backbone.text_knowledge(["cat", "dog", "ship"])[0], first)
    torch.testing.assert_close(tiny_backbone.text_knowledge(["cat"])[0], first, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="classnames is empty"):
        tiny_backbone.text_knowledge([])
    with pytest.raises(ValueError, match="template"):
        tiny_backbone.text_knowledge(["cat"], template="a photo")


def test_local_checkpoint_round_trip(tmp_path):
    torch.manual_seed(1)
    fused = open_clip.create_model("tiny")
    path = tmp_path / "tiny.pt"
    torch.save(fused.state_dict(), path)
    torch.manual_seed(2)
    reloaded = load_backbone("tiny", pretrained=path)
    assert reloaded.fingerprint == state_fingerprint(fused)
    assert reloaded.pretrained == "tiny.pt"
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(
            reloaded.encode_image(images), fused.eval().encode_image(images), atol=1e-5, rtol=1e-5
        )
    assert load_backbone("tiny").fingerprint != reloaded.fingerprint  # random init differs


def test_fingerprint_tracks_weights(tiny_backbone):
    model = copy.deepcopy(tiny_backbone.model)
    before = state_fingerprint(model)
    with torch.no_grad():
        model.visual.proj[0, 0] += 1e-3
    assert state_fingerprint(model) != before


def test_unknown_model_names_close_matches():
    with pytest.raises(ValueError, match=r"unknown backbone 'ViT-B-23'.*ViT-B-32"):
        load_backbone("ViT-B-23")


def test_unknown_tag_lists_known_tags():
    with pytest.raises(ValueError, match=r"unknown pretrained tag 'opena1'.*openai"):
        load_backbone("ViT-B-32", pretrained="opena1")


def test_missing_checkpoint(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_backbone("tiny", pretrained=tmp_path / "nope.pt")


@pytest.mark.parametrize("content", [b"", b"this is not a checkpoint at all" * 10])
def test_corrupt_checkpoint(tmp_path, content):
    path = tmp_path / "broken.pt"
    path.write_bytes(content)
    with pytest.raises(ValueError, match=r"empty|corrupt"):
        load_backbone("tiny", pretrained=path)


def test_wrong_architecture_checkpoint(tmp_path):
    path = tmp_path / "tiny.pt"
    torch.save(open_clip.create_model("tiny").state_dict(), path)
    with pytest.raises(ValueError, match="does not hold weights of this architecture"):
        load_backbone("tiny-shapes", pretrained=path)


@pytest.fixture
def offline(monkeypatch):
    """No cached copy of any hub file, no network, and no download attempt allowed."""
    import socket

    import huggingface_hub
    from huggingface_hub import constants

    def unreachable(*args, **kwargs):
        raise OSError("[Errno -2] Name or service not known")

    monkeypatch.setattr(huggingface_hub, "try_to_load_from_cache", lambda *a, **k: None)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(socket, "create_connection", unreachable)
    monkeypatch.setattr(
        open_clip, "create_model_and_transforms", lambda *a, **k: pytest.fail("tried to download")
    )
    return constants


def test_an_offline_tag_is_refused_at_once_saying_how_to_pass_a_file(offline):
    with pytest.raises(WeightsUnavailableError) as caught:
        load_backbone("ViT-B-32", pretrained="openai")
    message = str(caught.value)
    assert (
        "cannot fetch the pretrained weights 'openai' of 'ViT-B-32': huggingface.co cannot be reached"
        in message
    )
    assert "/timm/vit_base_patch32_clip_224.openai/resolve/main/open_clip_pytorch_model.bin" in message
    assert (
        message.endswith("(CLI: --pretrained /path/to/open_clip_pytorch_model.bin)") and "\n" not in message
    )
    offline.HF_HUB_OFFLINE = True
    with pytest.raises(WeightsUnavailableError, match="'openai' of 'ViT-B-32': HF_HUB_OFFLINE is set"):
        load_backbone("ViT-B-32", pretrained="openai")


def test_the_cli_says_it_in_one_line(offline, tmp_path, capsys):
    args = ["run", "--dataset", "shapes", "--backbone", "ViT-B-32", "--pretrained", "openai", "--quiet",
            "--results", str(tmp_path / "r.csv"), "--cache", "none"]  # fmt: skip
    assert main(args) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert "cannot fetch the pretrained weights 'openai'" in err and "--pretrained /path/to/" in err


def test_open_clip_layout_loads_into_open_clip():
    """The split attention goes back to open_clip's fused in_proj: a strict load, the same features."""
    backbone = fresh_tiny(0)
    model = open_clip.create_model("tiny")
    model.load_state_dict(open_clip_state_dict(backbone.model))  # strict: no missing or unexpected keys
    images = torch.randn(2, 3, *backbone.image_size)
    torch.testing.assert_close(model.eval().encode_image(images), backbone.encode_image(images))
