"""Fixed per-class hash centres for the centre losses: Hadamard rows, CSQ's centres and MDSH's
minimal-distance-separated centres with their Gilbert–Varshamov target distance."""

from __future__ import annotations

import math

import numpy as np
import torch


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
