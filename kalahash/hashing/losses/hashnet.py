"""HashNet: Cao, Long, Wang & Yu, *HashNet: Deep Learning to Hash by Continuation*, ICCV 2017.
A class-balanced pairwise loss, and a tanh that sharpens towards sign over the epochs."""

from __future__ import annotations

import math

import torch

from .base import HashLoss, pair_similarity, register_loss


@register_loss("hashnet")
class HashNetLoss(HashLoss):
    """Weighted pairwise cross-entropy on the batch with the sigmoid parameter ``alpha`` (0.1):
    l_ij = log(1 + e^{α⟨u_i,u_j⟩}) − S_ij α⟨u_i,u_j⟩, similar pairs weighted |S|/|S₁| and dissimilar
    pairs |S|/|S₀| (to balance them), averaged over |S|. Continuation: the head computes
    tanh(β z) with β = sqrt(epoch // ``step`` + 1) (DeepHash-pytorch: step 20).
    """

    def __init__(self, alpha: float = 0.1, step: int = 20) -> None:
        super().__init__()
        if isinstance(step, bool) or not isinstance(step, int) or step <= 0:
            raise ValueError(
                f"hashnet step must be a positive int (epochs per continuation stage), got {step!r}"
            )
        self.alpha = float(alpha)
        self.step = step

    def continuation_scale(self, epochs_done: int) -> float:
        return math.sqrt(epochs_done // self.step + 1)

    def terms(self, u: torch.Tensor, labels: torch.Tensor, indices: torch.Tensor) -> dict[str, torch.Tensor]:
        ip = self.alpha * (u @ u.t())
        s = pair_similarity(labels)
        pair = torch.log1p(torch.exp(-ip.abs())) + ip.clamp_min(0) - s * ip
        n = float(s.numel())
        n_sim = s.sum()
        n_dis = n - n_sim
        weight = torch.where(s > 0, n / n_sim.clamp_min(1), n / n_dis.clamp_min(1))
        loss = (weight * pair).sum() / n
        return {"loss": loss}
