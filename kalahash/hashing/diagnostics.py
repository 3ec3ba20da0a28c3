"""Training diagnostics: numbers that say whether the knowledge anchors and the routing do anything.

Pure functions on tensors (:func:`distinct_codes`, :func:`alignment_ratio`, :func:`bit_balance`,
:func:`routing_purity`), :func:`epoch_diagnostics` (a hasher's state at the end of an epoch) and
:class:`EpochTally` (what only the batches see: the signs of u and CLoRA's routing). A number that does
not apply to a method (‖W‖ without KIDDO, routing without CLoRA) is NaN, never 0.

Per epoch, in a run's history:

* ``w_norm`` — ‖W‖_F of the anchors W = G(K)ᵀ the epoch's B-step used (its last forward pass's);
* ``ali_ratio`` — L_ali over all training images at the current B and W, divided by its value at W = 0
  (mean Y²): below 1 the anchors explain the labels, above 1 they do worse than no anchors;
* ``anchors_distinct`` — distinct codes among the C columns of sign(W) (C when every class has its own);
* ``b_flips`` — entries of B the epoch's B-step changed; ``b_balance`` — :func:`bit_balance` of B;
* ``bit_balance`` — :func:`bit_balance` of sign(u) over the epoch's batches (every method);
* ``routing_purity`` — share of images whose top-1 CLoRA class is one of their labels (over layers).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch

from .heads import sign

if TYPE_CHECKING:
    from .model import Hasher

EPOCH_COLUMNS = (
    "w_norm",
    "ali_ratio",
    "anchors_distinct",
    "b_flips",
    "b_balance",
    "bit_balance",
    "routing_purity",
)


def distinct_codes(codes: torch.Tensor) -> int:
    """Number of distinct ±1 rows of ``codes`` (N, bits); real values are signed first (0 → +1)."""
    if codes.dim() != 2:
        raise ValueError(f"codes must be 2-D (N, bits), got shape {tuple(codes.shape)}")
    if codes.shape[0] == 0:
        return 0
    return int(torch.unique(sign(codes.float()), dim=0).shape[0])


def alignment_ratio(Y: torch.Tensor, B: torch.Tensor, W: torch.Tensor) -> float:
    """mean (Y − WᵀB)² / mean Y²: L_ali over all images (Y C × N, B bits × N, W bits × C) against W = 0."""
    Y, B, W = Y.float(), B.float(), W.float()
    if B.shape[0] != W.shape[0] or Y.shape != (W.shape[1], B.shape[1]):
        raise ValueError(
            f"shape mismatch: Y {tuple(Y.shape)}, B {tuple(B.shape)}, W {tuple(W.shape)}; "
            "need Y (C, N), B (bits, N), W (bits, C)"
        )
    zero = float(Y.pow(2).mean())
    if zero == 0:
        return math.nan
    return float((Y - W.t() @ B).pow(2).mean()) / zero


def bit_balance(codes: torch.Tensor, dim: int = 0) -> float:
    """Mean over bits of |mean of the bit over images|, for ±1 ``codes`` whose images run along ``dim``.

    0: every bit is +1 for half the images; 1: every bit is constant (the codes say nothing).
    """
    if codes.dim() != 2 or codes.shape[dim] == 0:
        return math.nan
    return float(sign(codes.float()).mean(dim=dim).abs().mean())


def _routing_hits(top1: torch.Tensor, labels: torch.Tensor) -> int:
    return int((labels.gather(1, top1.long().reshape(-1, 1).to(labels.device)) > 0).sum())


def routing_purity(top1: torch.Tensor, labels: torch.Tensor) -> float:
    """Share of images whose selected class ``top1`` (N,) is one of their labels (N, C) 0/1."""
    if top1.dim() != 1 or labels.dim() != 2 or labels.shape[0] != top1.shape[0]:
        raise ValueError(
            f"need top1 (N,) and labels (N, C), got {tuple(top1.shape)} and {tuple(labels.shape)}"
        )
    return _routing_hits(top1, labels) / top1.shape[0] if top1.numel() else math.nan


@torch.no_grad()
def epoch_diagnostics(hasher: Hasher) -> dict[str, float]:
    """The anchor and B-step numbers of the module docstring from ``hasher``'s state after ``end_epoch``
    (NaN without KIDDO). W is the one the epoch's B-step used, kept from its last forward pass."""
    out = dict.fromkeys(("w_norm", "ali_ratio", "anchors_distinct", "b_flips", "b_balance"), math.nan)
    criterion = hasher.criterion
    if not hasher.kiddo or criterion.B.numel() == 0 or criterion.kept_W is None:
        return out
    W = criterion.kept_W  # the anchors the B-step used: no extra forward pass of G
    out.update(
        w_norm=float(W.norm()),
        ali_ratio=alignment_ratio(criterion.Y, criterion.B, W),
        anchors_distinct=float(distinct_codes(W.t())),
        b_flips=float(criterion.last_flips),
        b_balance=bit_balance(criterion.B, dim=1),
    )
    return out


class EpochTally:
    """What an epoch's batches show: the signs of u (bit balance) and CLoRA's top-1 routing (purity).

    Call :meth:`add` after each forward with its u and labels; :meth:`summary` at the end of the epoch.
    """

    def __init__(self, hasher: Hasher) -> None:
        self.hasher = hasher
        self.signs: list[torch.Tensor] = []
        self.hits = 0
        self.routed = 0

    @torch.no_grad()
    def add(self, u: torch.Tensor, labels: torch.Tensor) -> None:
        self.signs.append(sign(u.detach().float()).cpu())
        for top1 in self.hasher.routing_top1():
            if top1.shape[0] == labels.shape[0]:
                self.hits += _routing_hits(top1, labels)
                self.routed += top1.shape[0]

    def summary(self) -> dict[str, float]:
        balance = bit_balance(torch.cat(self.signs)) if self.signs else math.nan
        purity = self.hits / self.routed if self.routed else math.nan
        return {"bit_balance": balance, "routing_purity": purity}
