"""SLIP and CLIP ViT models of facebookresearch/SLIP (YFCC15M), as open_clip models with a timm image tower.

SLIP's checkpoints (``slip_small_{25,50,100}ep.pt``, ``clip_small_25ep.pt``, ... from
https://dl.fbaipublicfiles.com/slip/) hold ``state_dict`` (keys prefixed ``module.``), ``args`` (an
argparse Namespace) and ``epoch``. Their image tower is a timm ViT pooled on the class token, followed
by a bias-free ``image_projection``; their text tower is OpenAI CLIP's (QuickGELU, the CLIP tokenizer).
The SLIP ViT-S/16 follows MoCo v3 and has 12 heads where timm's and open_clip's ViT-S have 6: the
weights have the same shapes either way, so the head count must come from :class:`SlipConfig`, never
from a default. ``image_mlp.*`` (SLIP's SimCLR head) is not part of the CLIP model and is dropped.

:func:`build_slip_model` turns a config into an ``open_clip.CLIP`` whose ``visual`` is a
:class:`SlipImageTower` (keys ``visual.trunk.*`` and ``visual.head.proj.weight``, as open_clip's own
``TimmModel`` names them); :func:`load_slip_weights` maps a checkpoint into it, strictly.
:mod:`kalahash.backbones` dispatches the names of :data:`SLIP_MODELS` here.
"""

from __future__ import annotations

import argparse
import os
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import open_clip
import torch
from open_clip.constants import IMAGENET_MEAN, IMAGENET_STD
from open_clip.model import CLIPTextCfg, CLIPVisionCfg
from timm.models.vision_transformer import VisionTransformer
from torch import nn

DOWNLOAD_URL = "https://dl.fbaipublicfiles.com/slip/{file}"
_DROPPED_PREFIXES = ("image_mlp.",)  # SLIP's SimCLR head: not part of the CLIP model


@dataclass(frozen=True)
class SlipConfig:
    """The shapes of a SLIP/CLIP model of the SLIP repository (defaults: ViT-S/16, MoCo v3 style)."""

    image_size: int = 224
    patch_size: int = 16
    width: int = 384
    layers: int = 12
    heads: int = 12
    embed_dim: int = 512
    text_width: int = 512
    text_heads: int = 8
    text_layers: int = 12
    context_length: int = 77
    vocab_size: int = 49408
    files: tuple[str, ...] = ()  # the released checkpoints of this shape, the one to suggest first

    def __post_init__(self) -> None:
        for name in (
            "image_size",
            "patch_size",
            "width",
            "layers",
            "heads",
            "embed_dim",
            "text_width",
            "text_heads",
            "text_layers",
            "context_length",
            "vocab_size",
        ):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"SlipConfig.{name} must be a positive int, got {value!r}")
        if self.width % self.heads or self.text_width % self.text_heads:
            raise ValueError(
                f"widths must be divisible by the head counts: width {self.width} / heads {self.heads}, "
                f"text_width {self.text_width} / text_heads {self.text_heads}"
            )
        if self.image_size % self.patch_size:
            raise ValueError(
                f"image_size {self.image_size} is not a multiple of patch_size {self.patch_size}"
            )


# name -> shapes; ViT-B and ViT-L use timm's vit_base/vit_large shapes (12 and 16 heads)
SLIP_MODELS: dict[str, SlipConfig] = {
    "SLIP-ViT-S-16": SlipConfig(
        files=("slip_small_100ep.pt", "slip_small_50ep.pt", "slip_small_25ep.pt", "clip_small_25ep.pt")
    ),
    "SLIP-ViT-B-16": SlipConfig(
        width=768,
        heads=12,
        files=("slip_base_100ep.pt", "slip_base_50ep.pt", "slip_base_25ep.pt", "clip_base_25ep.pt"),
    ),
    "SLIP-ViT-L-16": SlipConfig(
        width=1024,
        layers=24,
        heads=16,
        files=("slip_large_100ep.pt", "slip_large_50ep.pt", "slip_large_25ep.pt", "clip_large_25ep.pt"),
    ),
}


def add_slip_config(name: str, config: SlipConfig) -> None:
    """Register a SLIP-format model shape under ``name`` (like ``open_clip.add_model_config``)."""
    if not isinstance(config, SlipConfig):
        raise ValueError(f"config must be a SlipConfig, got {type(config).__name__}")
    if name in open_clip.list_models():
        raise ValueError(f"{name!r} is an open_clip model name; choose another name for the SLIP config")
    SLIP_MODELS[name] = config


class SlipImageTower(nn.Module):
    """A timm ViT pooled on its class token, then a bias-free linear projection to the joint space.

    The layout of open_clip's ``TimmModel`` (``trunk``, ``head.proj``), built from explicit shapes so
    that the head count is the config's, not a timm default's.
    """

    def __init__(self, config: SlipConfig) -> None:
        super().__init__()
        self.trunk = VisionTransformer(
            img_size=config.image_size,
            patch_size=config.patch_size,
            embed_dim=config.width,
            depth=config.layers,
            num_heads=config.heads,
            num_classes=0,
            global_pool="token",
        )
        self.head = nn.Sequential(OrderedDict(proj=nn.Linear(config.width, config.embed_dim, bias=False)))
        self.image_size = (config.image_size, config.image_size)
        self.output_dim = config.embed_dim

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.trunk(images))


def build_slip_model(config: SlipConfig, device: str | torch.device | None = None) -> open_clip.CLIP:
    """A randomly initialised ``open_clip.CLIP`` of SLIP's shapes (``device="meta"``: shapes only)."""
    text_cfg = CLIPTextCfg(
        context_length=config.context_length,
        vocab_size=config.vocab_size,
        width=config.text_width,
        heads=config.text_heads,
        layers=config.text_layers,
    )
    # open_clip.CLIP always builds a vision tower from its config and cannot build a timm ViT with a
    # given head count, so it gets a one-block stand-in that is replaced right away
    stand_in = CLIPVisionCfg(
        layers=1, width=8, head_width=8, patch_size=config.image_size, image_size=config.image_size
    )
    with torch.device(device if device is not None else "cpu"):
        model = open_clip.CLIP(config.embed_dim, stand_in, text_cfg, quick_gelu=True)
        model.visual = SlipImageTower(config)
    return model


def slip_preprocess(config: SlipConfig) -> Any:
    """SLIP's evaluation transform: resize the short side (bilinear), centre crop, ImageNet mean and std."""
    return open_clip.image_transform(
        config.image_size,
        is_train=False,
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        resize_mode="shortest",
        interpolation="bilinear",
    )


def slip_tokenizer(config: SlipConfig) -> open_clip.SimpleTokenizer:
    """OpenAI CLIP's BPE tokenizer, which SLIP uses, padded to the config's context length."""
    return open_clip.SimpleTokenizer(context_length=config.context_length)


def read_slip_checkpoint(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The state dict of a SLIP checkpoint file (``module.`` prefix removed) and its ``args``/``epoch``.

    Read with ``weights_only=True``, allowing only argparse's Namespace besides tensors, so a file
    cannot run code. A bare state dict (no ``state_dict`` entry) is accepted too.
    """
    path = Path(path)
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            content = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # re-raised with what to do; the cause stays chained
        raise ValueError(
            f"could not read SLIP checkpoint {str(path)!r} ({type(err).__name__}: {err}). It must be a "
            f"file of the SLIP release, e.g. {DOWNLOAD_URL.format(file='slip_small_100ep.pt')}; "
            "download it again if it is truncated."
        ) from err
    if not isinstance(content, Mapping):
        raise ValueError(f"SLIP checkpoint {str(path)!r} holds a {type(content).__name__}, not a dict")
    state = content.get("state_dict", content)
    meta = {"args": content.get("args"), "epoch": content.get("epoch")}
    return {k.removeprefix("module."): v for k, v in state.items()}, meta


def slip_state_dict(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """SLIP's keys (without ``module.``) mapped to those of :func:`build_slip_model`'s model.

    ``visual.*`` moves under ``visual.trunk.``; ``image_projection`` (width × embed, used as
    ``x @ P``) becomes ``visual.head.proj.weight`` (embed × width, used as ``x Wᵀ``); the SimCLR head
    ``image_mlp.*`` is dropped; the text tower's keys are open_clip's already.
    """
    mapped: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if key.startswith(_DROPPED_PREFIXES):
            continue
        if key == "image_projection":
            mapped["visual.head.proj.weight"] = value.t().contiguous()
        elif key.startswith("visual."):
            mapped["visual.trunk." + key.removeprefix("visual.")] = value
        else:
            mapped[key] = value
    return mapped


def load_slip_weights(model: nn.Module, path: str | os.PathLike, name: str) -> dict[str, Any]:
    """Load a SLIP checkpoint file into ``model`` (from :func:`build_slip_model`), strictly.

    Returns the checkpoint's ``args`` and ``epoch``. A missing, unexpected or mis-shaped key raises
    ``ValueError`` naming the file and the model.
    """
    state, meta = read_slip_checkpoint(path)
    trained_as = getattr(meta["args"], "model", None)
    what = f" (trained as {trained_as})" if trained_as else ""
    try:
        missing, unexpected = model.load_state_dict(slip_state_dict(state), strict=False)
    except RuntimeError as err:  # shape mismatches
        raise ValueError(
            f"SLIP checkpoint {str(path)!r}{what} does not fit {name!r}: {err}. Check the model name "
            f"against the file (released files of {name!r}: {', '.join(SLIP_MODELS[name].files) or '-'})."
        ) from err
    if missing or unexpected:
        raise ValueError(
            f"SLIP checkpoint {str(path)!r}{what} does not fit {name!r}: missing keys {sorted(missing)[:5]}, "
            f"unexpected keys {sorted(unexpected)[:5]} ({len(missing)} and {len(unexpected)} in all). Is it "
            "a SLIP or CLIP checkpoint of the SLIP repository (not SimCLR, which has no text tower)?"
        )
    return meta
