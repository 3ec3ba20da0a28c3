"""The token path of ViT image towers, for adapters and the prefix cache.

Fused attention (open_clip's ``nn.MultiheadAttention``, timm's ``Attention``) is split into explicit
q, k, v and out projections (:class:`SplitAttention`), so that adapters (``kalahash.lora``) can wrap
any of them; :func:`open_clip_state_dict` fuses them back for export. :func:`image_tower` gives the
token path of either kind of tower behind one small interface, :class:`ImageTower`, which the hasher
and the cache use.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

import torch
import torch.nn.functional as F
from timm.layers import Attention as TimmAttention
from torch import nn


class SplitAttention(nn.Module):
    """Multi-head self-attention with separate q, k, v and out projections.

    A drop-in replacement for ``nn.MultiheadAttention`` as open_clip calls it. The projections always
    see batch-first tensors ``(batch, tokens, width)`` with the class token at index 0, whatever the
    layout of the module it replaces; adapters rely on that.
    """

    def __init__(self, width: int, num_heads: int, batch_first: bool = True) -> None:
        super().__init__()
        if width % num_heads:
            raise ValueError(f"width {width} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.batch_first = batch_first
        self.q_proj = nn.Linear(width, width)
        self.k_proj = nn.Linear(width, width)
        self.v_proj = nn.Linear(width, width)
        self.out_proj = nn.Linear(width, width)

    @classmethod
    def from_fused(cls, mha: nn.MultiheadAttention) -> SplitAttention:
        if not mha._qkv_same_embed_dim or mha.in_proj_bias is None or mha.bias_k is not None:
            raise ValueError("only self-attention with a fused, biased in_proj can be split")
        width = mha.embed_dim
        split = cls(width, mha.num_heads, mha.batch_first).to(
            device=mha.in_proj_weight.device, dtype=mha.in_proj_weight.dtype
        )
        with torch.no_grad():
            for i, proj in enumerate((split.q_proj, split.k_proj, split.v_proj)):
                proj.weight.copy_(mha.in_proj_weight[i * width : (i + 1) * width])
                proj.bias.copy_(mha.in_proj_bias[i * width : (i + 1) * width])
            split.out_proj.weight.copy_(mha.out_proj.weight)
            split.out_proj.bias.copy_(mha.out_proj.bias)
        split.train(mha.training)
        return split

    def forward(
        self,
        query: torch.Tensor,
        key: torch.Tensor | None = None,
        value: torch.Tensor | None = None,
        need_weights: bool = False,
        attn_mask: torch.Tensor | None = None,
        **_: Any,
    ) -> tuple[torch.Tensor, None]:
        key = query if key is None else key
        value = query if value is None else value
        if not self.batch_first:
            query, key, value = (t.transpose(0, 1) for t in (query, key, value))
        batch, tokens, width = query.shape
        heads = self.num_heads

        def split_heads(t: torch.Tensor) -> torch.Tensor:
            return t.view(batch, -1, heads, width // heads).transpose(1, 2)

        q = split_heads(self.q_proj(query))
        k = split_heads(self.k_proj(key))
        v = split_heads(self.v_proj(value))
        if attn_mask is not None and attn_mask.dtype != torch.bool:
            attn_mask = attn_mask.to(q.dtype)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
        out = self.out_proj(out.transpose(1, 2).reshape(batch, tokens, width))
        if not self.batch_first:
            out = out.transpose(0, 1)
        return out, None


def split_attention(module: nn.Module) -> int:
    """Replace every fused ``nn.MultiheadAttention`` under ``module`` in place; return how many."""
    count = 0
    for name, child in list(module.named_children()):
        if isinstance(child, nn.MultiheadAttention):
            setattr(module, name, SplitAttention.from_fused(child))
            count += 1
        else:
            count += split_attention(child)
    return count


def open_clip_state_dict(module: nn.Module) -> dict[str, torch.Tensor]:
    """``module``'s state dict (CPU copies) in open_clip's layout: each :class:`SplitAttention` back to
    the fused ``in_proj_weight``/``in_proj_bias`` of ``nn.MultiheadAttention``, so that open_clip, and
    ``load_backbone(name, pretrained=<file>)``, load it. Adapters must be merged first (ValueError)."""
    state = {k: v.detach().cpu().clone() for k, v in module.state_dict().items()}
    for name, child in module.named_modules():
        if not isinstance(child, SplitAttention):
            continue
        prefix = f"{name}." if name else ""
        try:
            for kind in ("weight", "bias"):
                parts = [state.pop(f"{prefix}{p}_proj.{kind}") for p in "qkv"]
                state[f"{prefix}in_proj_{kind}"] = torch.cat(parts)
        except KeyError as err:
            raise ValueError(
                f"{prefix}{err.args[0]} is not a plain projection (an adapter?): merge adapters before export"
            ) from None
    return state


class TimmSplitAttention(SplitAttention):
    """:class:`SplitAttention` called as timm's ``Attention`` is: ``attn(x, attn_mask=None) -> x``."""

    @classmethod
    def from_timm(cls, attn: TimmAttention) -> TimmSplitAttention:
        width = attn.qkv.in_features
        plain = all(isinstance(m, nn.Identity) for m in (attn.q_norm, attn.k_norm, attn.norm))
        if (
            not plain
            or getattr(attn, "gate", None) is not None
            or attn.attn_dim != width
            or attn.proj.out_features != width
            or attn.qkv.bias is None
            or attn.proj.bias is None
        ):
            raise ValueError(
                "only plain timm self-attention (biased qkv and proj, no q/k norm or gate) can be split"
            )
        split = cls(width, attn.num_heads, batch_first=True).to(
            device=attn.qkv.weight.device, dtype=attn.qkv.weight.dtype
        )
        with torch.no_grad():
            # timm's qkv rows are [q; k; v], each (heads × head_dim) wide
            for proj, weight, bias in zip(
                (split.q_proj, split.k_proj, split.v_proj),
                attn.qkv.weight.chunk(3),
                attn.qkv.bias.chunk(3),
                strict=True,
            ):
                proj.weight.copy_(weight)
                proj.bias.copy_(bias)
            split.out_proj.weight.copy_(attn.proj.weight)
            split.out_proj.bias.copy_(attn.proj.bias)
        split.train(attn.training)
        return split

    def forward(  # type: ignore[override]
        self, x: torch.Tensor, attn_mask: torch.Tensor | None = None, is_causal: bool = False, **_: Any
    ) -> torch.Tensor:
        if is_causal:
            raise ValueError("split timm attention is for image towers: is_causal=True is not supported")
        return super().forward(x, attn_mask=attn_mask)[0]


def split_timm_attention(module: nn.Module) -> int:
    """Replace every timm ``Attention`` (fused ``qkv``) under ``module`` in place; return how many."""
    count = 0
    for name, child in list(module.named_children()):
        if isinstance(child, TimmAttention):
            setattr(module, name, TimmSplitAttention.from_timm(child))
            count += 1
        else:
            count += split_timm_attention(child)
    return count


class ImageTower(ABC):
    """The token path of a ViT image tower, whatever library built it.

    ``embed`` (patch embedding, prefix tokens, positions, pre-norm) → ``run_blocks`` → ``pool_project``
    (final norm, pooling, projection) equals the tower's own forward. Tokens are always batch-first
    ``(batch, tokens, width)`` with the class token at index 0. A thin view: it holds no state but the
    tower, so make one whenever needed (:func:`image_tower`).
    """

    batch_first = True

    def __init__(self, visual: nn.Module) -> None:
        self.visual = visual

    @property
    @abstractmethod
    def blocks(self) -> nn.Module:
        """The transformer blocks, indexable and sliceable; each has an ``attn`` (split after loading)."""

    @property
    @abstractmethod
    def width(self) -> int:
        """The token width."""

    @abstractmethod
    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """Batch-first tokens before the first block."""

    @abstractmethod
    def pool_project(self, tokens: torch.Tensor) -> torch.Tensor:
        """Raw projected features (the tower's output) from tokens after the last block."""

    @abstractmethod
    def prefix_state(self, upto: int) -> dict[str, torch.Tensor]:
        """The weights that determine the tokens after ``blocks[:upto]`` (for cache keys)."""

    def run_blocks(self, tokens: torch.Tensor, start: int, stop: int) -> torch.Tensor:
        """Batch-first tokens through ``blocks[start:stop]``."""
        if not self.batch_first:
            tokens = tokens.transpose(0, 1)
        for block in self.blocks[start:stop]:
            tokens = block(tokens)
        if not self.batch_first:
            tokens = tokens.transpose(0, 1)
        return tokens


class OpenClipTower(ImageTower):
    """open_clip's ``VisionTransformer``."""

    @property
    def batch_first(self) -> bool:  # type: ignore[override]
        return getattr(self.visual.transformer, "batch_first", True)

    @property
    def blocks(self) -> nn.ModuleList:
        return self.visual.transformer.resblocks

    @property
    def width(self) -> int:
        return self.visual.transformer.width

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        return self.visual._embeds(images)

    def pool_project(self, tokens: torch.Tensor) -> torch.Tensor:
        pooled, _ = self.visual._pool(tokens)
        return pooled @ self.visual.proj if self.visual.proj is not None else pooled

    def prefix_state(self, upto: int) -> dict[str, torch.Tensor]:
        visual = self.visual
        state = nn.ModuleList([visual.conv1, visual.ln_pre, *self.blocks[:upto]]).state_dict()
        state.update(class_embedding=visual.class_embedding, positional_embedding=visual.positional_embedding)
        return state


class TimmTower(ImageTower):
    """A timm ViT ``trunk`` followed by a ``head`` (open_clip's ``TimmModel`` layout; SLIP's towers)."""

    @property
    def blocks(self) -> nn.Sequential:
        return self.visual.trunk.blocks

    @property
    def width(self) -> int:
        return self.visual.trunk.embed_dim

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        trunk = self.visual.trunk
        tokens = trunk._pos_embed(trunk.patch_embed(images))
        return trunk.norm_pre(trunk.patch_drop(tokens))

    def pool_project(self, tokens: torch.Tensor) -> torch.Tensor:
        trunk = self.visual.trunk
        return self.visual.head(trunk.forward_head(trunk.norm(tokens)))

    def prefix_state(self, upto: int) -> dict[str, torch.Tensor]:
        trunk = self.visual.trunk
        state = nn.ModuleList([trunk.patch_embed, trunk.norm_pre, *self.blocks[:upto]]).state_dict()
        tokens = {"cls_token": trunk.cls_token, "reg_token": trunk.reg_token, "pos_embed": trunk.pos_embed}
        state.update({k: v for k, v in tokens.items() if v is not None})
        return state


def image_tower(visual: nn.Module) -> ImageTower:
    """The :class:`ImageTower` view of a CLIP model's ``visual`` (open_clip ViT or timm ViT)."""
    if hasattr(visual, "trunk") and hasattr(visual.trunk, "blocks"):
        return TimmTower(visual)
    if hasattr(visual, "transformer") and hasattr(visual, "_embeds"):
        return OpenClipTower(visual)
    raise ValueError(
        f"{type(visual).__name__} is not a ViT image tower kalahash can drive: it needs open_clip's "
        "VisionTransformer or a timm ViT trunk"
    )
