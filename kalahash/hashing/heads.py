"""The two small layers of the notes' *Model* section: the hash head and the knowledge anchors, plus
:func:`sign`, the one rule that turns continuous outputs into ±1 codes everywhere in kalahash, and
:class:`ZeroShotHead`, the text-only control that needs no training."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .centers import csq_centers


def sign(x: torch.Tensor) -> torch.Tensor:
    """±1 codes with 0 → +1 (``torch.sign`` would give 0, which is not a code)."""
    return torch.where(x >= 0, torch.ones_like(x), -torch.ones_like(x))


class HashHead(nn.Module):
    """Linear(embed → bits), optional BatchNorm, then tanh: continuous codes u in (−1, 1) (notes: Model).

    Weights start N(0, 0.01) as in the release; the BatchNorm (momentum 0.1) is what the release uses
    for losses that cannot be optimised without it (CSQ, OrthoHash, MDSH, GreedyHash). ``scale`` is
    the tanh slope β of HashNet's continuation, ``tanh(β z)``; 1 for every other loss.
    """

    def __init__(self, embed: int, bits: int, batch_norm: bool = False) -> None:
        super().__init__()
        self.linear = nn.Linear(embed, bits)
        nn.init.normal_(self.linear.weight, std=0.01)
        self.bn = nn.BatchNorm1d(bits, momentum=0.1) if batch_norm else None
        self.register_buffer("scale", torch.ones(()))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        z = self.linear(features)
        if self.bn is not None:
            z = self.bn(z)
        return torch.tanh(self.scale * z)


class KnowledgeAnchors(nn.Module):
    """G: Linear(embed → bits) applied to K; returns the anchors W = G(K)ᵀ (bits × C) (notes: Model).

    With ``batch_norm`` a BatchNorm over the C class rows follows, as in the release. It never tracks
    running statistics: W is only used in training (L_ali and the B-step), where the release always
    normalised with the statistics of K itself, so W does not depend on train/eval mode.
    """

    def __init__(self, embed: int, bits: int, batch_norm: bool = False) -> None:
        super().__init__()
        self.linear = nn.Linear(embed, bits)
        nn.init.normal_(self.linear.weight, std=0.01)
        self.bn = nn.BatchNorm1d(bits, track_running_stats=False) if batch_norm else None

    def forward(self, knowledge: torch.Tensor) -> torch.Tensor:
        g = self.linear(knowledge)
        if self.bn is not None:
            g = self.bn(g)
        return g.t()


class ZeroShotHead(nn.Module):
    """Codes from the text side alone: each image gets the code of its zero-shot class (no parameters).

    The zero-shot class is CLIP's rule, argmax over c of cos(image feature, K_c) (both normalised for
    the cosine only). Class codes are well-separated fixed rows: :func:`csq_centers`, i.e. Hadamard rows
    when ``bits`` is a power of two and C ≤ 2·bits, balanced random codes otherwise (drawn with seed 0,
    outside torch's global RNG, so every run of a setting gets the same codes). Multi-label images get
    the code of their top-1 class only. This bounds what the knowledge gives with no adaptation at all.
    """

    def __init__(self, knowledge: torch.Tensor, bits: int) -> None:
        super().__init__()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            codes = csq_centers(knowledge.shape[0], bits)
        self.register_buffer("keys", F.normalize(knowledge.detach().float(), dim=-1), persistent=False)
        self.register_buffer("codes", codes.to(knowledge.device), persistent=False)

    def classify(self, features: torch.Tensor) -> torch.Tensor:
        """The zero-shot class index of each feature row, (batch,)."""
        with torch.autocast(device_type=features.device.type, enabled=False):
            return (F.normalize(features.float(), dim=-1) @ self.keys.t()).argmax(dim=-1)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.codes[self.classify(features)]
