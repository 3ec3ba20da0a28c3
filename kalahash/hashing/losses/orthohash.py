"""OrthoHash: Hoe et al., *One Loss for All: Deep Hashing with a Single Cosine Similarity based
Learning Objective*, NeurIPS 2021. A cosine-margin softmax over fixed ±1 class codes."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..centers import hadamard
from ..heads import sign
from .base import CenterLoss, register_loss


@register_loss("orthohash")
class OrthoHashLoss(CenterLoss):
    """Fixed ±1 class codes (``codebook="orthogonal"``: Hadamard rows, mutually orthogonal, for the first
    min(C, bits) classes when bits is a power of two, Bernoulli codes beyond; ``"bernoulli"``: all
    Bernoulli, the authors' script default). Logits s·(cos(u, c_k) − m·y_k) with s = 8, m = 0.2; loss =
    cross-entropy against the label-smoothed target y / Σy (plain CE for one-hot labels), plus the
    optional ``quantization`` · mean (1 − cos(u, sign u)) (0 by default, as in the paper).
    """

    quantization_option = "quantization"
    CODEBOOKS = ("orthogonal", "bernoulli")

    def __init__(
        self, scale: float = 8.0, margin: float = 0.2, quantization: float = 0.0, codebook: str = "orthogonal"
    ) -> None:
        super().__init__()
        if codebook not in self.CODEBOOKS:
            raise ValueError(f"unknown orthohash codebook {codebook!r}: allowed {', '.join(self.CODEBOOKS)}")
        self.scale = float(scale)
        self.margin = float(margin)
        self.quantization = float(quantization)
        self.codebook = codebook

    def _make_centers(self, num_classes: int, bits: int) -> torch.Tensor:
        codes = sign(torch.rand(num_classes, bits) - 0.5)
        if self.codebook == "orthogonal" and bits & (bits - 1) == 0:
            n = min(num_classes, bits)
            codes[:n] = hadamard(bits)[:n]
        return codes

    def terms(self, u: torch.Tensor, labels: torch.Tensor, indices: torch.Tensor) -> dict[str, torch.Tensor]:
        self._check_ready()
        cos = F.normalize(u, dim=-1) @ F.normalize(self.centers, dim=-1).t()
        logits = self.scale * (cos - self.margin * labels)
        target = labels / labels.sum(-1, keepdim=True).clamp_min(1)
        ce = -(target * F.log_softmax(logits, dim=-1)).sum(-1).mean()
        quant = (1 - F.cosine_similarity(u, sign(u.detach()), dim=-1)).mean()
        return {"loss": ce + self.quantization * quant, "ce": ce, "quantization": quant}
