"""DPSH: Li, Wang & Kang, *Feature Learning based Deep Supervised Hashing with Pairwise Labels*,
IJCAI 2016. Its pairwise likelihood is KIDDO's L_sim in the notes."""

from __future__ import annotations

import torch

from ..heads import sign
from .base import HashLoss, pair_similarity, register_loss


def dpsh_likelihood(u: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """DPSH pairwise negative log-likelihood on a batch (notes: KIDDO, L_sim).

    θ = u uᵀ / 2; mean over all pairs of log(1 + e^{−|θ|}) + max(θ, 0) − S ⊙ θ.
    """
    theta = u @ u.t() / 2
    s = pair_similarity(labels)
    return (torch.log1p(torch.exp(-theta.abs())) + theta.clamp_min(0) - s * theta).mean()


@register_loss("dpsh")
class DPSHLoss(HashLoss):
    """The pairwise likelihood of the notes' L_sim, plus ``quantization`` · mean (u − sign u)²
    (0.1 as in DeepHash-pytorch; 0 inside KIDDO, where L_sim is the likelihood alone as in the notes).
    """

    quantization_option = "quantization"

    def __init__(self, quantization: float = 0.1) -> None:
        super().__init__()
        self.quantization = float(quantization)

    def terms(self, u: torch.Tensor, labels: torch.Tensor, indices: torch.Tensor) -> dict[str, torch.Tensor]:
        likelihood = dpsh_likelihood(u, labels)
        quant = (u - sign(u.detach())).pow(2).mean()
        return {
            "loss": likelihood + self.quantization * quant,
            "likelihood": likelihood,
            "quantization": quant,
        }
