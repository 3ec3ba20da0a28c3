"""CSQ: Yuan et al., *Central Similarity Quantization for Efficient Image and Video Retrieval*,
CVPR 2020. Codes are pulled towards fixed per-class hash centres."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from ..centers import csq_centers
from ..heads import sign
from .base import CenterLoss, register_loss


@register_loss("csq")
class CSQLoss(CenterLoss):
    """Hash centres from :func:`csq_centers` (Hadamard rows, then balanced Bernoulli codes). An image's
    centre is the sign of the mean of its classes' centres, with a fixed random ±1 code breaking exact
    ties (multi-label); loss = BCE((u + 1)/2, (centre + 1)/2) + ``quantization`` · mean (|u| − 1)²
    (λ = 1e-4 as in DeepHash-pytorch).
    """

    quantization_option = "quantization"

    def __init__(self, quantization: float = 1e-4) -> None:
        super().__init__()
        self.quantization = float(quantization)
        self.register_buffer("tie_breaker", torch.empty(0))

    def _make_centers(self, num_classes: int, bits: int) -> torch.Tensor:
        return csq_centers(num_classes, bits)

    def setup(self, num_classes: int, bits: int, train_labels: Any) -> None:
        super().setup(num_classes, bits, train_labels)
        self.tie_breaker = sign(torch.randint(0, 2, (bits,)).float() - 0.5).to(self.centers.device)

    def targets(self, labels: torch.Tensor) -> torch.Tensor:
        """Per-image centres: sign of the mean of its classes' centres, ties from ``tie_breaker``."""
        self._check_ready()
        total = labels @ self.centers  # the sign of the sum is the sign of the mean
        return torch.where(total == 0, self.tie_breaker.expand_as(total), torch.sign(total))

    def terms(self, u: torch.Tensor, labels: torch.Tensor, indices: torch.Tensor) -> dict[str, torch.Tensor]:
        target = self.targets(labels)
        center = F.binary_cross_entropy((u + 1) / 2, (target + 1) / 2)
        quant = (u.abs() - 1).pow(2).mean()
        return {"loss": center + self.quantization * quant, "center": center, "quantization": quant}
