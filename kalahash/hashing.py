"""Hash heads, hashing losses, KIDDO and the one factory that turns a method name into a model.

* :class:`HashHead` (image feature → continuous code in (−1, 1)) and :class:`KnowledgeAnchors`
  (class-text knowledge → anchors W in code space), both from the notes' *Model* section.
* A loss registry (:data:`LOSSES`, :func:`register_loss`): ``dpsh``, ``hashnet``, ``csq``,
  ``orthohash``, ``mdsh``. Each loss is a small module with ``forward(u, labels, indices) ->
  (loss, parts)`` and, where it needs state, ``setup(num_classes, bits, train_labels)``.
* :class:`KIDDO` (notes: KIDDO), the per-batch loss around any registered similarity loss, and
  :func:`kiddo_b_step`, its per-epoch discrete B-step as a pure function.
* :func:`build_hasher` and :class:`Hasher`, the model API that training, caching and checkpoints use.
"""

from __future__ import annotations

import abc
import copy
import inspect
import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from kalahash.lora import (
    ADAPTER_KINDS,
    DEFAULT_BLOCKS,
    DEFAULT_RANK,
    DEFAULT_STRENGTH,
    DEFAULT_TARGETS,
    CLoRALinear,
    KnowledgePool,
    LoRALinear,
    adapters,
    apply_adapter,
    knowledge_pool,
    merge_lora,
    normalise_blocks,
    normalise_targets,
)

DEFAULT_TEMPLATE = "a photo of a {}."


def sign(x: torch.Tensor) -> torch.Tensor:
    """±1 codes with 0 → +1 (``torch.sign`` would give 0, which is not a code)."""
    return torch.where(x >= 0, torch.ones_like(x), -torch.ones_like(x))


def _as_label_tensor(labels: Any, name: str = "train_labels") -> torch.Tensor:
    """A (N, C) float tensor of 0/1 labels from a numpy array or tensor, validated once here."""
    if isinstance(labels, torch.Tensor):
        t = labels.detach().cpu()
    else:
        try:
            t = torch.as_tensor(np.asarray(labels))
        except (TypeError, ValueError) as err:
            raise ValueError(f"{name} must be a (N, classes) 0/1 array, got {type(labels).__name__}") from err
    if t.dim() != 2 or t.shape[0] == 0 or t.shape[1] == 0:
        raise ValueError(f"{name} must be a non-empty 2-D (N, classes) 0/1 array, got shape {tuple(t.shape)}")
    t = t.float()
    if not torch.all((t == 0) | (t == 1)):
        raise ValueError(f"{name} must hold only 0 and 1 (one-hot or multi-hot rows)")
    return t


# --------------------------------------------------------------------------------------------------
# Heads
# --------------------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------------------
# Hash centres
# --------------------------------------------------------------------------------------------------


def hadamard(n: int) -> torch.Tensor:
    """The Sylvester Hadamard matrix of order n (a power of two): ±1 rows, mutually orthogonal."""
    if n < 1 or n & (n - 1):
        raise ValueError(f"a Sylvester Hadamard matrix needs a power-of-two order, got {n}")
    h = torch.ones(1, 1)
    while h.shape[0] < n:
        h = torch.cat([torch.cat([h, h], 1), torch.cat([h, -h], 1)], 0)
    return h


def _balanced_codes(count: int, bits: int) -> torch.Tensor:
    """Random ±1 codes with exactly bits // 2 entries −1 each (CSQ's Bernoulli centres)."""
    codes = torch.ones(count, bits)
    for row in codes:
        row[torch.randperm(bits)[: bits // 2]] = -1
    return codes


def _pairwise_hamming(codes: torch.Tensor) -> torch.Tensor:
    """Hamming distances of all pairs i < j of ±1 rows, as a flat tensor."""
    bits = codes.shape[1]
    d = (bits - codes @ codes.t()) / 2
    i, j = torch.triu_indices(len(codes), len(codes), offset=1)
    return d[i, j]


def csq_centers(num_classes: int, bits: int, tries: int = 20) -> torch.Tensor:
    """CSQ hash centres (Yuan et al. 2020), (C × bits) ±1.

    Rows of [H; −H] for a power-of-two ``bits`` (H the Hadamard matrix: any two rows at Hamming
    distance ≥ bits/2), then balanced random codes for the classes beyond 2·bits (or all classes when
    ``bits`` is not a power of two), redrawn up to ``tries`` times until the minimum pairwise distance
    exceeds bits/4 and the mean reaches bits/2 (otherwise the draw with the largest minimum is kept).
    Uses torch's global RNG.
    """
    if bits & (bits - 1) == 0:
        h = hadamard(bits)
        fixed = torch.cat([h, -h], 0)[:num_classes]
    else:
        fixed = torch.empty(0, bits)
    missing = num_classes - len(fixed)
    if missing <= 0:
        return fixed.clone()
    best, best_min = None, -1.0
    for _ in range(tries):
        codes = torch.cat([fixed, _balanced_codes(missing, bits)], 0)
        d = _pairwise_hamming(codes)
        d_min = float(d.min()) if len(d) else float(bits)
        if d_min > best_min:
            best, best_min = codes, d_min
        if len(d) == 0 or (d_min > bits / 4 and float(d.mean()) >= bits / 2):
            return codes
    return best


def gilbert_varshamov_distance(bits: int, num_classes: int) -> int:
    """MDSH's target minimal distance: the smallest d with Σ_{j<d} binom(bits, j) ≥ 2^bits / C.

    By the Gilbert–Varshamov bound, C codes with pairwise Hamming distance ≥ d exist for this d
    (Wang et al. 2023, ``get_margin`` in their release).
    """
    total = 0
    for d in range(1, bits + 2):
        total += math.comb(bits, d - 1)
        if total * num_classes >= 2**bits:
            return d
    return bits + 1


def _center_score(dist: np.ndarray) -> np.ndarray:
    # MDSH's per-centre score: mean + min − variance of its Hamming distances to the other centres
    return dist.mean(-1) + dist.min(-1) - dist.var(-1)


def mdsh_centers(num_classes: int, bits: int, passes: int = 50) -> tuple[torch.Tensor, int]:
    """MDSH hash centres (Wang et al. CVPR 2023), (C × bits) ±1, and the target minimal distance d.

    The release starts from the CSQ centres and improves one centre at a time (the others fixed),
    aiming at pairwise Hamming distances ≥ d, the Gilbert–Varshamov distance, and keeping a change
    only when it raises the centre's score mean + min − variance of its distances to the others; it
    stops when all distances reach d or after 50 passes. We keep that start, target, score and stopping
    rule, but search each centre by exhaustive single-bit flips instead of the release's ℓp-box ADMM
    proposals: a flip is taken when it lowers the total shortfall Σ_j max(0, d − dist_j) or, at equal
    shortfall, raises the score. Deterministic given torch's global RNG (used by the CSQ start only).
    """
    codes = csq_centers(num_classes, bits)
    target = gilbert_varshamov_distance(bits, num_classes)
    if num_classes < 2:
        return codes, target
    h = codes.numpy().astype(np.float64)
    for _ in range(passes):
        if _pairwise_hamming(torch.from_numpy(h)).min() >= target:
            break
        changed = False
        for i in range(num_classes):
            others = np.delete(h, i, axis=0)
            b = h[i].copy()
            dist = (bits - others @ b) / 2  # (C-1,)
            while True:
                short = np.maximum(target - dist, 0).sum()
                score = _center_score(dist)
                # flipping bit k moves dist_j by +1 where b_k == others_jk, by -1 elsewhere: (bits, C-1)
                cand = dist[None, :] + (others * b).T
                cand_short = np.maximum(target - cand, 0).sum(-1)
                cand_score = _center_score(cand)
                better = (cand_short < short) | ((cand_short == short) & (cand_score > score + 1e-9))
                if not better.any():
                    break
                # best flip: least shortfall, then highest score, then lowest index
                k = int(np.argmax(np.where(better, -cand_short * 1e6 + cand_score, -np.inf)))
                dist = cand[k]
                b[k] = -b[k]
                changed = True
            h[i] = b
        if not changed:
            break
    return torch.from_numpy(h).float(), target


# --------------------------------------------------------------------------------------------------
# Loss registry
# --------------------------------------------------------------------------------------------------

LOSSES: dict[str, type[HashLoss]] = {}


def register_loss(name: str) -> Callable[[type[HashLoss]], type[HashLoss]]:
    """Class decorator: make a :class:`HashLoss` available to :func:`build_hasher` as ``loss=name``."""

    def deco(cls: type[HashLoss]) -> type[HashLoss]:
        if name in LOSSES:
            raise ValueError(f"a loss named {name!r} is already registered ({LOSSES[name].__name__})")
        cls.name = name
        LOSSES[name] = cls
        return cls

    return deco


def _pair_similarity(labels: torch.Tensor) -> torch.Tensor:
    """S_ij = 1 if images i and j share at least one label (the DeepHash convention)."""
    return (labels @ labels.t() > 0).to(labels.dtype)


def dpsh_likelihood(u: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """DPSH pairwise negative log-likelihood on a batch (notes: KIDDO, L_sim).

    θ = u uᵀ / 2; mean over all pairs of log(1 + e^{−|θ|}) + max(θ, 0) − S ⊙ θ.
    """
    theta = u @ u.t() / 2
    s = _pair_similarity(labels)
    return (torch.log1p(torch.exp(-theta.abs())) + theta.clamp_min(0) - s * theta).mean()


class HashLoss(nn.Module, metaclass=abc.ABCMeta):
    """Base of the registered losses.

    Subclasses implement :meth:`terms` (a dict of scalar tensors with the total under ``"loss"``);
    :meth:`forward` returns ``(loss, parts)`` with the parts as Python floats (one device sync).

    Class attributes: ``batch_norm`` — whether the release puts a BatchNorm in the hash head for this
    loss; ``quantization_option`` — the constructor argument weighting the loss's own quantisation
    term (``None`` if it has none); inside KIDDO it defaults to 0, since KIDDO's β‖u − B‖² replaces it.
    """

    name: str = ""
    batch_norm: bool = False
    quantization_option: str | None = None

    def setup(self, num_classes: int, bits: int, train_labels: Any) -> None:
        """Allocate state (hash centres...) before training; a no-op for stateless losses."""

    def continuation_scale(self, epochs_done: int) -> float:
        """The tanh slope of the hash head for the next epoch (HashNet's continuation); 1 otherwise."""
        return 1.0

    @abc.abstractmethod
    def terms(self, u: torch.Tensor, labels: torch.Tensor, indices: torch.Tensor) -> dict[str, torch.Tensor]:
        """The loss's scalar terms, its total under ``"loss"``."""

    def forward(
        self, u: torch.Tensor, labels: torch.Tensor, indices: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, float]]:
        terms = self.terms(u, labels, indices)
        return terms["loss"], _floats(terms)


def _floats(terms: dict[str, torch.Tensor]) -> dict[str, float]:
    values = torch.stack([t.detach().float().reshape(()) for t in terms.values()]).tolist()
    return dict(zip(terms, values, strict=True))


class _CenterLoss(HashLoss):
    """Shared state of the losses that pull codes towards fixed per-class hash centres."""

    batch_norm = True

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("centers", torch.empty(0, 0))

    @abc.abstractmethod
    def _make_centers(self, num_classes: int, bits: int) -> torch.Tensor:
        """The (num_classes, bits) ±1 hash centres of this loss."""

    def setup(self, num_classes: int, bits: int, train_labels: Any) -> None:
        self.centers = self._make_centers(num_classes, bits).to(self.centers.device)

    def _check_ready(self) -> None:
        if self.centers.numel() == 0:
            raise RuntimeError(
                f"the {self.name} hash centres are not set: call hasher.begin_training(...) first"
            )


@register_loss("dpsh")
class DPSHLoss(HashLoss):
    """DPSH: Li, Wang & Kang, *Feature Learning based Deep Supervised Hashing with Pairwise Labels*,
    IJCAI 2016.

    The pairwise likelihood of the notes' L_sim, plus ``quantization`` · mean (u − sign u)²
    (0.1 as in DeepHash-pytorch; 0 inside KIDDO, where L_sim is the likelihood alone as in the notes).
    """

    quantization_option = "quantization"

    def __init__(self, quantization: float = 0.1) -> None:
        super().__init__()
        self.quantization = float(quantization)

    def terms(self, u, labels, indices):
        likelihood = dpsh_likelihood(u, labels)
        quant = (u - sign(u.detach())).pow(2).mean()
        return {
            "loss": likelihood + self.quantization * quant,
            "likelihood": likelihood,
            "quantization": quant,
        }


@register_loss("hashnet")
class HashNetLoss(HashLoss):
    """HashNet: Cao, Long, Wang & Yu, *HashNet: Deep Learning to Hash by Continuation*, ICCV 2017.

    Weighted pairwise cross-entropy on the batch with the sigmoid parameter ``alpha`` (0.1):
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

    def terms(self, u, labels, indices):
        ip = self.alpha * (u @ u.t())
        s = _pair_similarity(labels)
        pair = torch.log1p(torch.exp(-ip.abs())) + ip.clamp_min(0) - s * ip
        n = float(s.numel())
        n_sim = s.sum()
        n_dis = n - n_sim
        weight = torch.where(s > 0, n / n_sim.clamp_min(1), n / n_dis.clamp_min(1))
        loss = (weight * pair).sum() / n
        return {"loss": loss}


@register_loss("csq")
class CSQLoss(_CenterLoss):
    """CSQ: Yuan et al., *Central Similarity Quantization for Efficient Image and Video Retrieval*,
    CVPR 2020.

    Hash centres from :func:`csq_centers` (Hadamard rows, then balanced Bernoulli codes). An image's
    centre is the sign of the mean of its classes' centres, with a fixed random ±1 code breaking exact
    ties (multi-label); loss = BCE((u + 1)/2, (centre + 1)/2) + ``quantization`` · mean (|u| − 1)²
    (λ = 1e-4 as in DeepHash-pytorch).
    """

    quantization_option = "quantization"

    def __init__(self, quantization: float = 1e-4) -> None:
        super().__init__()
        self.quantization = float(quantization)
        self.register_buffer("tie_breaker", torch.empty(0))

    def _make_centers(self, num_classes, bits):
        return csq_centers(num_classes, bits)

    def setup(self, num_classes, bits, train_labels):
        super().setup(num_classes, bits, train_labels)
        self.tie_breaker = sign(torch.randint(0, 2, (bits,)).float() - 0.5).to(self.centers.device)

    def targets(self, labels: torch.Tensor) -> torch.Tensor:
        """Per-image centres: sign of the mean of its classes' centres, ties from ``tie_breaker``."""
        self._check_ready()
        total = labels @ self.centers  # the sign of the sum is the sign of the mean
        return torch.where(total == 0, self.tie_breaker.expand_as(total), torch.sign(total))

    def terms(self, u, labels, indices):
        target = self.targets(labels)
        center = F.binary_cross_entropy((u + 1) / 2, (target + 1) / 2)
        quant = (u.abs() - 1).pow(2).mean()
        return {"loss": center + self.quantization * quant, "center": center, "quantization": quant}


@register_loss("orthohash")
class OrthoHashLoss(_CenterLoss):
    """OrthoHash: Hoe et al., *One Loss for All: Deep Hashing with a Single Cosine Similarity based
    Learning Objective*, NeurIPS 2021.

    Fixed ±1 class codes (``codebook="orthogonal"``: Hadamard rows, mutually orthogonal, for the first
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

    def _make_centers(self, num_classes, bits):
        codes = sign(torch.rand(num_classes, bits) - 0.5)
        if self.codebook == "orthogonal" and bits & (bits - 1) == 0:
            n = min(num_classes, bits)
            codes[:n] = hadamard(bits)[:n]
        return codes

    def terms(self, u, labels, indices):
        self._check_ready()
        cos = F.normalize(u, dim=-1) @ F.normalize(self.centers, dim=-1).t()
        logits = self.scale * (cos - self.margin * labels)
        target = labels / labels.sum(-1, keepdim=True).clamp_min(1)
        ce = -(target * F.log_softmax(logits, dim=-1)).sum(-1).mean()
        quant = (1 - F.cosine_similarity(u, sign(u.detach()), dim=-1)).mean()
        return {"loss": ce + self.quantization * quant, "ce": ce, "quantization": quant}


def _log1mexp(log_p: torch.Tensor) -> torch.Tensor:
    """log(1 − p) from log p ≤ 0, stably; clamped at −100 like ``binary_cross_entropy``."""
    x = log_p.clamp_max(-1e-12)
    out = torch.where(x > -math.log(2), torch.log(-torch.expm1(x)), torch.log1p(-torch.exp(x)))
    return out.clamp_min(-100)


@register_loss("mdsh")
class MDSHLoss(_CenterLoss):
    """MDSH: Wang et al., *Deep Hashing with Minimal-Distance-Separated Hash Centers*, CVPR 2023.

    Centres from :func:`mdsh_centers` (pairwise Hamming distance ≥ the Gilbert–Varshamov distance d,
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

    def _make_centers(self, num_classes, bits):
        return mdsh_centers(num_classes, bits, self.passes)[0]

    def terms(self, u, labels, indices):
        self._check_ready()
        bits = u.shape[-1]
        cos = F.normalize(u, dim=-1) @ F.normalize(self.centers, dim=-1).t()
        log_p = F.log_softmax(math.sqrt(bits) * cos, dim=-1)
        center = -(labels * log_p + (1 - labels) * _log1mexp(log_p)).mean()
        quant = (u.abs() - 1).pow(2).mean()
        return {"loss": center + self.quantization * quant, "center": center, "quantization": quant}


# --------------------------------------------------------------------------------------------------
# KIDDO
# --------------------------------------------------------------------------------------------------


def kiddo_objective(
    B: torch.Tensor, W: torch.Tensor, Y: torch.Tensor, U: torch.Tensor, alpha: float, beta: float
) -> float:
    """The discrete objective the B-step minimises: α‖Y − WᵀB‖² + β‖B − U‖² (notes: KIDDO)."""
    return float(alpha * (Y - W.t() @ B).pow(2).sum() + beta * (B - U).pow(2).sum())


def kiddo_b_step(
    B: torch.Tensor,
    W: torch.Tensor,
    Y: torch.Tensor,
    U: torch.Tensor,
    alpha: float,
    beta: float,
    sweeps: int = 10,
) -> torch.Tensor:
    """KIDDO B-step (notes: KIDDO): discrete cyclic coordinate descent over the bits, ``sweeps`` times.

    B (bits × N) ±1, W (bits × C), Y (C × N), U (bits × N). With P = W Y + (β/α) U and M = W Wᵀ, bit i
    becomes sign(P_i − Σ_{j≠i} M_ji B_j) = sign(P_i − B'ᵀ W' w_i) (B', W' without row i, w_i row i of W),
    using the rows already updated in this sweep. This is the exact minimiser of
    α‖Y − WᵀB‖² + β‖B − U‖² over row i with the other rows fixed, so the objective never increases.

    Tie rule: where the argument is exactly 0 both signs give the same objective; we keep the current
    bit (the release's ``torch.sign`` would write 0, leaving {±1}). Returns a new tensor; B is not
    modified. P and M are computed once; each bit costs one (bits)·(bits × N) product.
    """
    if B.dim() != 2 or W.dim() != 2 or Y.dim() != 2 or U.dim() != 2:
        raise ValueError("B, W, Y and U must be 2-D: B (bits, N), W (bits, C), Y (C, N), U (bits, N)")
    bits, n = B.shape
    if W.shape[0] != bits or U.shape != B.shape or Y.shape != (W.shape[1], n):
        raise ValueError(
            f"shape mismatch: B {tuple(B.shape)}, W {tuple(W.shape)}, Y {tuple(Y.shape)}, U {tuple(U.shape)}; "
            "need B (bits, N), W (bits, C), Y (C, N), U (bits, N)"
        )
    if not alpha > 0:
        raise ValueError(f"alpha must be > 0 (the B-step divides by it), got {alpha!r}")
    if isinstance(sweeps, bool) or not isinstance(sweeps, int) or sweeps < 0:
        raise ValueError(f"sweeps must be a non-negative int, got {sweeps!r}")
    if not torch.all(B.abs() == 1):
        raise ValueError("B must hold only -1 and +1")
    dtype = torch.promote_types(torch.promote_types(W.dtype, U.dtype), torch.float32)
    W = W.detach().to(dtype)
    P = W @ Y.detach().to(device=W.device, dtype=dtype) + (beta / alpha) * U.detach().to(dtype)
    M = W @ W.t()
    M.fill_diagonal_(0)  # Σ_{j≠i}: drop the bit's own term
    Mt = M.t().contiguous()  # row i holds M_ji for all j
    out = B.detach().to(dtype).clone()
    # On the CPU the loop runs on numpy views of the same memory: few-shot N is tiny, and numpy's
    # per-call overhead is a fraction of torch's (the B-step would otherwise dominate a cached epoch).
    p, m, b = (P.numpy(), Mt.numpy(), out.numpy()) if out.device.type == "cpu" else (P, Mt, out)
    for _ in range(sweeps):
        for i in range(bits):
            q = p[i] - m[i] @ b
            row = b[i]
            row[q > 0] = 1.0
            row[q < 0] = -1.0  # exact ties keep the current bit
    return out.to(B.dtype)


class KIDDO(nn.Module):
    """Knowledge-guided discrete optimisation (notes: KIDDO) around a similarity loss.

    Per batch: loss = γ·L_sim + α·L_ali + β·L_qua with L_sim the wrapped registered loss (DPSH by
    default; any registered loss plays this role: plug-and-play), L_qua = mean (u − B[:, idx]ᵀ)² and
    L_ali = mean (Y_batch − B[:, idx]ᵀ W)² (B is a buffer, so the gradient reaches only W, i.e. G).
    U[:, idx] ← uᵀ (detached) each batch. :meth:`b_step` runs :func:`kiddo_b_step` once per epoch.

    State (buffers, allocated by :meth:`setup`): B (bits × N) random ±1, U (bits × N) zeros,
    Y (C × N) the training labels.
    """

    def __init__(
        self,
        similarity: HashLoss,
        alpha: float = 0.1,
        beta: float = 1.0,
        gamma: float = 1.0,
        sweeps: int = 10,
    ) -> None:
        super().__init__()
        if not alpha > 0:
            raise ValueError(f"kiddo_alpha must be > 0 (the B-step divides by it), got {alpha!r}")
        self.similarity = similarity
        self.alpha, self.beta, self.gamma, self.sweeps = float(alpha), float(beta), float(gamma), int(sweeps)
        for name in ("B", "U", "Y"):
            self.register_buffer(name, torch.empty(0, 0))

    @property
    def batch_norm(self) -> bool:
        return self.similarity.batch_norm

    def setup(self, num_classes: int, bits: int, train_labels: Any) -> None:
        labels = _as_label_tensor(train_labels)
        self.similarity.setup(num_classes, bits, labels)
        device = self.B.device
        n = labels.shape[0]
        self.B = (torch.randint(0, 2, (bits, n)) * 2 - 1).float().to(device)  # random signs
        self.U = torch.zeros(bits, n, device=device)
        self.Y = labels.t().contiguous().to(device)

    def continuation_scale(self, epochs_done: int) -> float:
        return self.similarity.continuation_scale(epochs_done)

    def terms(
        self, u: torch.Tensor, labels: torch.Tensor, indices: torch.Tensor, W: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        if self.B.numel() == 0:
            raise RuntimeError("KIDDO state is not allocated: call hasher.begin_training(train_labels) first")
        n = self.B.shape[1]
        idx = indices.to(device=self.B.device, dtype=torch.long)
        if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= n):
            raise ValueError(f"indices must be positions in the training set, 0..{n - 1}")
        with torch.no_grad():
            self.U[:, idx] = u.detach().t().to(self.U.dtype)
        b = self.B[:, idx].t()  # (batch, bits), fixed
        inner = self.similarity.terms(u, labels, indices)
        sim = inner["loss"]  # L_sim
        qua = (u - b).pow(2).mean()  # L_qua
        ali = (labels - b @ W).pow(2).mean()  # L_ali: gradient reaches W (G) only
        loss = self.gamma * sim + self.alpha * ali + self.beta * qua
        parts = {"loss": loss, "sim": sim, "ali": ali, "qua": qua}
        parts.update({f"sim.{k}": v for k, v in inner.items() if k != "loss"})
        return parts

    @torch.no_grad()
    def b_step(self, W: torch.Tensor) -> None:
        if self.B.numel() == 0:
            raise RuntimeError("KIDDO state is not allocated: call hasher.begin_training(train_labels) first")
        self.B = kiddo_b_step(self.B, W.float(), self.Y, self.U, self.alpha, self.beta, self.sweeps)

    def objective(self, W: torch.Tensor) -> float:
        return kiddo_objective(self.B, W.float(), self.Y, self.U, self.alpha, self.beta)


# --------------------------------------------------------------------------------------------------
# Methods and the factory
# --------------------------------------------------------------------------------------------------

# method -> (adapter, full fine-tuning, KIDDO by default); the loss defaults to DPSH for all.
METHODS: dict[str, dict[str, Any]] = {
    "fft": {"adapter": None, "finetune": True, "kiddo": False},
    "lb": {"adapter": None, "finetune": False, "kiddo": False},
    "lora": {"adapter": "lora", "finetune": False, "kiddo": False},
    "clora": {"adapter": "clora", "finetune": False, "kiddo": False},
    "kalahash": {"adapter": "clora", "finetune": False, "kiddo": True},
}

# hparam -> default (None = decided by the method or the loss); see build_hasher's docstring.
HPARAMS: dict[str, Any] = {
    "adapter": None,
    "rank": DEFAULT_RANK,
    "strength": DEFAULT_STRENGTH,
    "blocks": list(DEFAULT_BLOCKS),
    "targets": list(DEFAULT_TARGETS),
    "rank_stabilised": True,
    "loss": "dpsh",
    "loss_options": {},
    "kiddo": None,
    "kiddo_alpha": 0.1,
    "kiddo_beta": 1.0,
    "kiddo_gamma": 1.0,
    "kiddo_sweeps": 10,
    "batch_norm": None,
    "template": DEFAULT_TEMPLATE,
}

_OWNER_FLAG = "_kalahash_hasher_built"


def _names(options) -> str:
    return ", ".join(repr(o) for o in options)


def _check_number(name: str, value: Any, minimum: float | None = None, strict: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    if minimum is not None and (value <= minimum if strict else value < minimum):
        raise ValueError(f"{name} must be {'>' if strict else '>='} {minimum}, got {value!r}")
    return float(value)


def _resolve_hparams(method: str, hparams: dict[str, Any]) -> dict[str, Any]:
    unknown = sorted(set(hparams) - set(HPARAMS))
    if unknown:
        raise ValueError(f"unknown hparam(s) {_names(unknown)}: allowed hparams are {_names(HPARAMS)}")
    spec = METHODS[method]
    hp = copy.deepcopy(HPARAMS)
    hp.update(copy.deepcopy(hparams))

    if "adapter" in hparams and hparams["adapter"] != spec["adapter"]:
        if hparams["adapter"] not in (None, *ADAPTER_KINDS):
            raise ValueError(f"unknown adapter {hparams['adapter']!r}: allowed None, {_names(ADAPTER_KINDS)}")
        fitting = [m for m, s in METHODS.items() if s["adapter"] == hparams["adapter"]]
        raise ValueError(
            f"method {method!r} uses adapter {spec['adapter']!r}, not {hparams['adapter']!r}: "
            f"use method {' or '.join(map(repr, fitting))} instead"
        )
    hp["adapter"] = spec["adapter"]
    if hp["kiddo"] is None:
        hp["kiddo"] = spec["kiddo"]
    if not isinstance(hp["kiddo"], bool):
        raise ValueError(f"kiddo must be True or False, got {hp['kiddo']!r}")

    if hp["loss"] not in LOSSES:
        raise ValueError(f"unknown loss {hp['loss']!r}: registered losses are {_names(LOSSES)}")
    loss_cls = LOSSES[hp["loss"]]
    if not isinstance(hp["loss_options"], dict):
        raise ValueError(f"loss_options must be a dict of {hp['loss']} arguments, got {hp['loss_options']!r}")
    allowed = [p for p in inspect.signature(loss_cls.__init__).parameters if p != "self"]
    bad = sorted(set(hp["loss_options"]) - set(allowed))
    if bad:
        raise ValueError(
            f"unknown loss_options {_names(bad)} for {hp['loss']!r}: allowed {_names(allowed) or 'none'}"
        )
    if hp["batch_norm"] is None:
        hp["batch_norm"] = loss_cls.batch_norm
    if not isinstance(hp["batch_norm"], bool):
        raise ValueError(
            f"batch_norm must be True, False or None (the loss's default), got {hp['batch_norm']!r}"
        )

    if isinstance(hp["rank"], bool) or not isinstance(hp["rank"], int) or hp["rank"] <= 0:
        raise ValueError(f"rank must be a positive int, got {hp['rank']!r}")
    hp["strength"] = _check_number("strength", hp["strength"])
    blocks = hp["blocks"]
    hp["blocks"] = [blocks] if isinstance(blocks, int) and not isinstance(blocks, bool) else list(blocks)
    targets = hp["targets"]
    hp["targets"] = [targets] if isinstance(targets, str) else list(targets)
    if not isinstance(hp["rank_stabilised"], bool):
        raise ValueError(f"rank_stabilised must be True or False, got {hp['rank_stabilised']!r}")
    hp["kiddo_alpha"] = _check_number("kiddo_alpha", hp["kiddo_alpha"], 0, strict=True)
    hp["kiddo_beta"] = _check_number("kiddo_beta", hp["kiddo_beta"], 0)
    hp["kiddo_gamma"] = _check_number("kiddo_gamma", hp["kiddo_gamma"], 0)
    sweeps = hp["kiddo_sweeps"]
    if isinstance(sweeps, bool) or not isinstance(sweeps, int) or sweeps < 0:
        raise ValueError(f"kiddo_sweeps must be a non-negative int, got {sweeps!r}")
    if not isinstance(hp["template"], str) or "{}" not in hp["template"]:
        raise ValueError(
            f"template must be a string containing '{{}}' for the class name, got {hp['template']!r}"
        )
    return hp


def build_hasher(method: str, backbone, classnames: Sequence[str], bits: int, **hparams: Any) -> Hasher:
    """Build a :class:`Hasher` by method name on ``backbone`` (modified in place: see below).

    Parameters
    ----------
    method : ``"fft"`` (the whole image tower and the head are trained), ``"lb"`` (locked backbone:
        head only), ``"lora"`` (plain LoRA), ``"clora"`` (CLoRA + the loss), ``"kalahash"`` (CLoRA +
        KIDDO with DPSH as L_sim). Every method takes any registered loss (``loss=...``) and KIDDO can
        be switched on or off for any of them (``kiddo=True/False``): plug-and-play.
    backbone : a fresh :class:`kalahash.backbones.Backbone`. It is modified in place (adapters are
        inserted, ``fft`` unfreezes its image tower) and then belongs to this hasher: building a second
        hasher on it raises ``ValueError``. Load another (``load_backbone``) or ``copy.deepcopy`` it
        first. The hasher shares the backbone's image tower; move the hasher, not the backbone.
    classnames : the class names, in label-column order; the knowledge K is
        ``backbone.text_knowledge(classnames, template)``.
    bits : code length, a positive int.
    **hparams :
        ``rank`` (8) r of LoRA/CLoRA; for CLoRA 1 ≤ r ≤ C (it is also the number of selected classes).
        ``strength`` (0.5) α of LoRA/CLoRA; scaling α/√r.
        ``blocks`` ([-1]) image-tower blocks that get adapters (recorded in ``hparams`` as non-negative
        indices); ``targets`` (["k", "v"]) ⊆ q, k, v, o.
        ``rank_stabilised`` (True) plain LoRA only: α/√r as the release; False gives α/r.
        ``loss`` ("dpsh") a key of :data:`LOSSES`; ``loss_options`` ({}) its constructor arguments.
        ``kiddo`` (method default: True for kalahash only) wrap the loss in :class:`KIDDO`;
        ``kiddo_alpha`` (0.1), ``kiddo_beta`` (1.0), ``kiddo_gamma`` (1.0), ``kiddo_sweeps`` (10).
        ``batch_norm`` (None: the loss's default — True for csq, orthohash, mdsh) BatchNorm in the head
        and in G. ``template`` ("a photo of a {}.") the text prompt for K.
        ``adapter`` is accepted for explicitness but must agree with the method.
        Hparams a method does not use (e.g. ``rank`` for ``lb``) are recorded and ignored.

    Returns
    -------
    Hasher, in training mode with the frozen parts in eval mode, on the backbone's device.
    """
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}: allowed methods are {_names(METHODS)}")
    if isinstance(bits, bool) or not isinstance(bits, int | np.integer) or bits <= 0:
        raise ValueError(f"bits must be a positive int, got {bits!r}")
    if isinstance(classnames, str) or not hasattr(classnames, "__iter__"):
        raise ValueError(f"classnames must be a list of class-name strings, got {type(classnames).__name__}")
    classnames = list(classnames)
    if not classnames:
        raise ValueError("classnames is empty: give one name per label column")
    if not all(isinstance(c, str) and c.strip() for c in classnames):
        raise ValueError("classnames must all be non-empty strings")
    duplicates = sorted({c for c in classnames if classnames.count(c) > 1})
    if duplicates:
        raise ValueError(f"classnames has duplicates {_names(duplicates)}: each class needs its own name")
    hp = _resolve_hparams(method, hparams)
    if hp["adapter"] == "clora" and hp["rank"] > len(classnames):
        raise ValueError(
            f"rank {hp['rank']} exceeds the number of classes {len(classnames)}: CLoRA selects rank classes "
            f"per image, so rank must be in 1..{len(classnames)}"
        )
    if hp["adapter"] is not None:  # validate before anything touches the backbone
        hp["blocks"] = normalise_blocks(hp["blocks"], len(backbone.blocks))
        hp["targets"] = normalise_targets(hp["targets"])
    if hp["kiddo"] and hp["batch_norm"] and len(classnames) < 2:
        raise ValueError(
            "KIDDO with batch_norm normalises G(K) over the classes and needs at least 2 classes"
        )
    if getattr(backbone.model, _OWNER_FLAG, False) or adapters(backbone.visual) or knowledge_pool(backbone):
        raise ValueError(
            "this backbone already serves a hasher (it is modified in place): load a fresh one with "
            "load_backbone(...) or pass copy.deepcopy(backbone)"
        )
    return Hasher(method, backbone, classnames, int(bits), hp)


class Hasher(nn.Module):
    """A CLIP image tower (frozen, adapted or fine-tuned) + hash head + loss; see :func:`build_hasher`.

    Training code uses: ``forward(images) -> u`` (B, bits) in (−1, 1); ``loss_on_batch(u, labels,
    indices)``; ``begin_training(train_labels)`` once before the first epoch; ``end_epoch()`` after
    each epoch (KIDDO's B-step; HashNet's continuation); ``trainable_parameters()`` for the optimiser;
    ``trained_state()`` / ``load_trained_state()`` for checkpoints; the frozen-prefix hooks
    ``trainable_from``, ``prefix_tokens`` and ``forward_from_tokens``. Retrieval uses ``encode``.
    """

    def __init__(
        self, method: str, backbone, classnames: list[str], bits: int, hparams: dict[str, Any]
    ) -> None:
        super().__init__()
        self.method = method
        self.bits = bits
        self.classnames = list(classnames)
        self.num_classes = len(classnames)
        self.hparams = hparams
        self.kiddo = hparams["kiddo"]
        self.finetune = METHODS[method]["finetune"]
        self.backbone = backbone  # a plain reference (not a submodule): preprocess, tokenizer, name
        self._merged = False
        device = next(backbone.visual.parameters()).device

        options = dict(hparams["loss_options"])
        loss_cls = LOSSES[hparams["loss"]]
        if self.kiddo and loss_cls.quantization_option and loss_cls.quantization_option not in options:
            options[loss_cls.quantization_option] = 0.0  # KIDDO's L_qua replaces the loss's own term
        try:
            loss = loss_cls(**options)
        except (TypeError, ValueError) as err:
            raise ValueError(f"bad loss_options for {hparams['loss']!r}: {err}") from err
        if self.kiddo:
            loss = KIDDO(
                loss,
                alpha=hparams["kiddo_alpha"],
                beta=hparams["kiddo_beta"],
                gamma=hparams["kiddo_gamma"],
                sweeps=hparams["kiddo_sweeps"],
            )

        knowledge = backbone.text_knowledge(self.classnames, hparams["template"]).to(device)
        backbone.model.requires_grad_(False)
        if hparams["adapter"] is not None:
            apply_adapter(
                backbone,
                hparams["adapter"],
                blocks=hparams["blocks"],
                targets=hparams["targets"],
                rank=hparams["rank"],
                strength=hparams["strength"],
                knowledge=knowledge if hparams["adapter"] == "clora" else None,
                rank_stabilised=hparams["rank_stabilised"] if hparams["adapter"] == "lora" else True,
            )
        if self.finetune:
            backbone.visual.requires_grad_(True)
        setattr(backbone.model, _OWNER_FLAG, True)
        self.visual = backbone.visual
        self.register_buffer("knowledge", knowledge, persistent=False)
        embed = backbone.embed_dim
        self.head = HashHead(embed, bits, hparams["batch_norm"]).to(device)
        self.anchors = KnowledgeAnchors(embed, bits, hparams["batch_norm"]).to(device) if self.kiddo else None
        self.criterion = loss.to(device)
        self.register_buffer("epochs_done", torch.zeros((), dtype=torch.long, device=device))
        self._trained_param_names = [n for n, p in self.named_parameters() if p.requires_grad]
        self.train()

    # ------------------------------------------------------------------ modes and bookkeeping

    def train(self, mode: bool = True) -> Hasher:
        """Set the mode of the trained parts; frozen image-tower parts always stay in eval mode."""
        if not isinstance(mode, bool):
            raise ValueError(f"training mode must be True or False, got {mode!r}")
        self.training = mode
        for child in self.children():
            child.train(mode and (child is not self.visual or self.finetune))
        return self

    @property
    def device(self) -> torch.device:
        return self.knowledge.device

    @property
    def num_blocks(self) -> int:
        return len(self.visual.transformer.resblocks)

    @property
    def knowledge_pool(self) -> KnowledgePool | None:
        pool = getattr(self.visual, "knowledge_pool", None)
        return pool if isinstance(pool, KnowledgePool) else None

    def trainable_parameters(self) -> list[nn.Parameter]:
        """The parameters the optimiser updates (adapters, F, head, G; the image tower under fft)."""
        return [p for p in self.parameters() if p.requires_grad]

    def parameter_counts(self) -> dict[str, int]:
        """Trainable parameter counts per part, plus ``total_trainable``."""

        def count(params) -> int:
            return sum(p.numel() for p in params if p.requires_grad)

        adapter_params = [
            p for _, m in adapters(self.visual) for n, p in m.named_parameters() if n.startswith("lora_")
        ]
        pool = self.knowledge_pool
        pool_params = list(pool.parameters()) if pool is not None else []
        special = {id(p) for p in adapter_params + pool_params}
        counts = {
            "adapter": count(adapter_params),
            "knowledge_pool": count(pool_params),
            "head": count(self.head.parameters()),
            "anchors": count(self.anchors.parameters()) if self.anchors is not None else 0,
            "backbone_trainable": count(p for p in self.visual.parameters() if id(p) not in special),
            "loss": count(self.criterion.parameters()),
        }
        counts["total_trainable"] = sum(counts.values())
        return counts

    # ------------------------------------------------------------------ forward paths

    def _run_blocks(self, x: torch.Tensor, start: int, stop: int) -> torch.Tensor:
        transformer = self.visual.transformer
        batch_first = getattr(transformer, "batch_first", True)
        if not batch_first:
            x = x.transpose(0, 1)
        for block in transformer.resblocks[start:stop]:
            x = block(x)
        if not batch_first:
            x = x.transpose(0, 1)
        return x

    def _check_index(self, name: str, value: int) -> int:
        n = self.num_blocks
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= n:
            raise ValueError(
                f"{name} must be an int in 0..{n} (the image tower has {n} blocks), got {value!r}"
            )
        return value

    def prefix_tokens(self, images: torch.Tensor, upto: int) -> torch.Tensor:
        """Tokens (B, L, width) after the patch embedding and blocks[:upto]."""
        upto = self._check_index("upto", upto)
        return self._run_blocks(self.visual._embeds(images), 0, upto)

    def _pool_project(self, tokens: torch.Tensor) -> torch.Tensor:
        pooled, _ = self.visual._pool(tokens)
        if self.visual.proj is not None:
            pooled = pooled @ self.visual.proj
        return pooled

    def features_from_tokens(self, tokens: torch.Tensor, start: int) -> torch.Tensor:
        """Raw projected CLS features from tokens that already went through blocks[:start]."""
        start = self._check_index("start", start)
        return self._pool_project(self._run_blocks(tokens, start, self.num_blocks))

    def forward_from_tokens(self, tokens: torch.Tensor, start: int) -> torch.Tensor:
        """u from tokens that already went through blocks[:start]: blocks[start:], pool, proj, head."""
        return self.head(self.features_from_tokens(tokens, start))

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """Raw projected CLS image features (not normalised), as the hash head sees them."""
        return self.features_from_tokens(self.visual._embeds(images), 0)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(images))

    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """±1 float codes (sign, 0 → +1), always computed in eval mode (BatchNorm running statistics)."""
        if not self.training:
            return sign(self(images).float())
        # only the head (BatchNorm) and, under fft, the tower depend on the mode: switching just those
        # is far cheaper than a full eval()/train() round trip over every module of the tower
        moded = [self.head, *([self.visual] if self.finetune else [])]
        for module in moded:
            module.eval()
        try:
            return sign(self(images).float())
        finally:
            for module in moded:
                module.train()

    @property
    def trainable_from(self) -> int:
        """Index of the first image-tower block with a trainable parameter (0 under fft: everything,
        the patch embedding included, is trained; the number of blocks when the tower is frozen)."""
        if self.finetune:
            return 0
        for i, block in enumerate(self.visual.transformer.resblocks):
            if any(p.requires_grad for p in block.parameters()):
                return i
        return self.num_blocks

    # ------------------------------------------------------------------ training

    def begin_training(self, train_labels: Any) -> None:
        """Allocate the loss state for a training set with labels (N, C): KIDDO's B, U, Y, the hash
        centres; reset the epoch counter and the head's tanh slope. Uses torch's global RNG."""
        labels = _as_label_tensor(train_labels)
        if labels.shape[1] != self.num_classes:
            raise ValueError(
                f"train_labels has {labels.shape[1]} columns but the hasher has {self.num_classes} classes"
            )
        self.criterion.setup(self.num_classes, self.bits, labels)
        self.criterion.to(self.device)
        self.epochs_done.zero_()
        self._set_scale(self.criterion.continuation_scale(0))

    def anchor_matrix(self) -> torch.Tensor:
        """W = G(K)ᵀ (bits × C), float32; only with KIDDO."""
        if self.anchors is None:
            raise ValueError(f"method {self.method!r} without KIDDO has no knowledge anchors")
        return self.anchors(self.knowledge.float()).float()

    def loss_on_batch(
        self, u: torch.Tensor, labels: torch.Tensor, indices: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """The training loss on a batch: u (B, bits) from ``forward``, labels (B, C) 0/1, indices (B,)
        positions in the training set. Computed in float32 outside autocast. Returns the loss tensor
        and its parts as floats (``"loss"`` and, e.g., KIDDO's ``"sim"``, ``"ali"``, ``"qua"``)."""
        if u.dim() != 2 or u.shape[1] != self.bits:
            raise ValueError(f"u must be (batch, {self.bits}), got {tuple(u.shape)}")
        if labels.dim() != 2 or labels.shape != (u.shape[0], self.num_classes):
            raise ValueError(
                f"labels must be (batch, {self.num_classes}) = ({u.shape[0]}, ...), got {tuple(labels.shape)}"
            )
        indices = torch.as_tensor(indices, device=u.device).long().reshape(-1)
        if indices.shape[0] != u.shape[0]:
            raise ValueError(f"indices must have one entry per image ({u.shape[0]}), got {indices.shape[0]}")
        with torch.autocast(device_type=u.device.type, enabled=False):
            u = u.float()
            labels = labels.to(device=u.device, dtype=torch.float32)
            if self.kiddo:
                terms = self.criterion.terms(u, labels, indices, self.anchor_matrix())
            else:
                terms = self.criterion.terms(u, labels, indices)
        return terms["loss"], _floats(terms)

    @torch.no_grad()
    def end_epoch(self) -> None:
        """Once per epoch, after its last batch: KIDDO's B-step (with the current W), then the epoch
        counter and the head's tanh slope for the next epoch (HashNet's continuation)."""
        if self.kiddo:
            with torch.autocast(device_type=self.device.type, enabled=False):
                self.criterion.b_step(self.anchor_matrix())
        self.epochs_done += 1
        self._set_scale(self.criterion.continuation_scale(int(self.epochs_done)))

    def _set_scale(self, value: float) -> None:
        # a new tensor, not an in-place fill: a graph built before may still hold the old slope
        self.head.scale = torch.tensor(float(value), device=self.head.scale.device)

    # ------------------------------------------------------------------ state

    def _state_buffers(self) -> dict[str, torch.Tensor]:
        out = {"epochs_done": self.epochs_done}
        for prefix, module in (("head", self.head), ("anchors", self.anchors), ("criterion", self.criterion)):
            if module is not None:
                out.update({f"{prefix}.{n}": b for n, b in module.named_buffers() if b is not None})
        return out

    def trained_state(self) -> dict[str, torch.Tensor]:
        """Only what training changes: adapter A's (and LoRA B's), F, head (with BatchNorm statistics and
        tanh slope), G, loss state (KIDDO B, U, Y; hash centres), the epoch counter; the image tower
        under fft. Detached copies, keyed like ``state_dict``."""
        if self._merged:
            raise RuntimeError("a merged hasher is for inference/export: save its state_dict() instead")
        params = dict(self.named_parameters())
        state = {n: params[n] for n in self._trained_param_names}
        state.update(self._state_buffers())
        return {n: t.detach().clone() for n, t in state.items()}

    @torch.no_grad()
    def load_trained_state(self, state: dict[str, torch.Tensor]) -> None:
        """Load :meth:`trained_state` output (strict: missing or unexpected keys raise ValueError)."""
        if self._merged:
            raise RuntimeError("a merged hasher is for inference/export; load into an unmerged hasher")
        if not isinstance(state, dict):
            raise ValueError(f"state must be a dict from trained_state(), got {type(state).__name__}")
        params = dict(self.named_parameters())
        buffers = self._state_buffers()
        expected = set(self._trained_param_names) | set(buffers)
        missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
        if missing or unexpected:
            raise ValueError(
                f"trained state does not fit this {self.method!r} hasher: missing keys {missing or 'none'}, "
                f"unexpected keys {unexpected or 'none'}"
            )
        for name in self._trained_param_names:
            value = state[name]
            if tuple(value.shape) != tuple(params[name].shape):
                raise ValueError(
                    f"{name}: shape {tuple(value.shape)} in the state, {tuple(params[name].shape)} in the hasher"
                )
            params[name].copy_(value)
        for name, current in buffers.items():
            value = state[name]
            owner_name, _, attr = name.rpartition(".")
            owner = self.get_submodule(owner_name) if owner_name else self
            if tuple(value.shape) == tuple(current.shape):
                current.copy_(value)
            elif owner_name.startswith("criterion"):  # loss state sized by the training set
                setattr(owner, attr, value.detach().to(device=current.device, dtype=current.dtype).clone())
            else:
                raise ValueError(
                    f"{name}: shape {tuple(value.shape)} in the state, {tuple(current.shape)} in the hasher"
                )

    def merged(self) -> Hasher:
        """An inference copy with plain LoRA folded into the weights (identical outputs, no adapter
        cost). CLoRA cannot be merged (per-image Top_r): ValueError. The copy shares the backbone
        reference but not its weights; it has no trained_state (export its ``state_dict()``)."""
        if any(isinstance(m, CLoRALinear) for m in self.modules()):
            raise ValueError("CLoRA cannot be merged: its update depends on each image's Top_r classes")
        copy_ = copy.deepcopy(self, memo={id(self.backbone): self.backbone})
        merge_lora(copy_.visual)
        copy_._merged = True
        copy_._trained_param_names = []
        copy_.requires_grad_(False)
        return copy_.eval()

    def extra_repr(self) -> str:
        return f"method={self.method!r}, bits={self.bits}, classes={self.num_classes}, loss={self.hparams['loss']!r}"


__all__ = [
    "HPARAMS",
    "KIDDO",
    "LOSSES",
    "METHODS",
    "CLoRALinear",
    "CSQLoss",
    "DPSHLoss",
    "HashHead",
    "HashLoss",
    "HashNetLoss",
    "Hasher",
    "KnowledgeAnchors",
    "LoRALinear",
    "MDSHLoss",
    "OrthoHashLoss",
    "build_hasher",
    "csq_centers",
    "dpsh_likelihood",
    "gilbert_varshamov_distance",
    "hadamard",
    "kiddo_b_step",
    "kiddo_objective",
    "mdsh_centers",
    "register_loss",
    "sign",
]
