"""MDSH: Wang et al., *Deep Hashing with Minimal-Distance-Separated Hash Centers*, CVPR 2023.
Hash centres at least the Gilbert–Varshamov distance apart, and a softmax centre loss."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..centers import gilbert_varshamov_distance, mdsh_centers
from .base import CenterLoss, register_loss


def _log1mexp(log_p: torch.Tensor) -> torch.Tensor:
    """log(1 − p) from log p ≤ 0, stably; clamped at −100 like ``binary_cross_entropy``."""
    x = log_p.clamp_max(-1e-12)
    out = torch.where(x > -math.log(2), torch.log(-torch.expm1(x)), torch.log1p(-torch.exp(x)))
    return out.clamp_min(-100)


@register_loss("mdsh")
class MDSHLoss(CenterLoss):
    """Centres from :func:`mdsh_centers` (pairwise Hamming distance ≥ the Gilbert–Varshamov distance d,
    stored as ``target_distance``). Centre loss as in the authors' code: logits √bits · cos(u, c_k),
    p = softmax, loss = −mean over images and classes of y log p + (1 − y) log(1 − p), plus
    ``quantization`` · mean (|u| − 1)² (λ = 1e-4). The release's optional memory-bank pair loss
    (switched on after 9 epochs) is not included.
    """

    quantization_option = "quantization"

    def __init__(self, quantization: float = 1e-4, passes: int = 50) -> None:
        super().__init__()
        self.quantization = float(quantization)
        self.passes = int(passes)

    @property
    def target_distance(self) -> int:
        """The Gilbert–Varshamov distance the centres aim at (0 before ``setup``)."""
        if self.centers.numel() == 0:
            return 0
        return gilbert_varshamov_distance(self.centers.shape[1], self.centers.shape[0])

    def _make_centers(self, num_classes: int, bits: int) -> torch.Tensor:
        return mdsh_centers(num_classes, bits, self.passes)[0]

    def terms(self, u: torch.Tensor, labels: torch.Tensor, indices: torch.Tensor) -> dict[str, torch.Tensor]:
        self._check_ready()
        bits = u.shape[-1]
        cos = F.normalize(u, dim=-1) @ F.normalize(self.centers, dim=-1).t()
        log_p = F.log_softmax(math.sqrt(bits) * cos, dim=-1)
        center = -(labels * log_p + (1 - labels) * _log1mexp(log_p)).mean()
        quant = (u.abs() - 1).pow(2).mean()
        return {"loss": center + self.quantization * quant, "center": center, "quantization": quant}
