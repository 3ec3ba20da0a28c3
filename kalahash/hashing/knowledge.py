"""Controls for the class-text knowledge K: is a run's result due to *which* class each text row belongs to?

``control_knowledge(K, mode, seed)`` returns K itself (``"true"``), K with its rows dealt to the wrong
classes (``"permuted"``: a seeded derangement, so no class keeps its own row), or Gaussian rows with K's
row norms (``"random"``: the scale is kept, the text is gone). A method whose score does not drop under
these controls does not use the knowledge, whatever it claims. :func:`build_hasher` applies the control
where K is computed, so CLoRA's pool F(K), KIDDO's anchors G(K) and the zero-shot codes all see it.
(For ``zeroshot`` on single-label data ``"permuted"`` changes nothing: it only renames the classes' codes,
and retrieval never looks at names.)
"""

from __future__ import annotations

import numpy as np
import torch

from .methods import check_knowledge_mode


def knowledge_permutation(num_classes: int, seed: int) -> np.ndarray:
    """A seeded derangement of ``range(num_classes)``: row c of the permuted K is row ``perm[c]`` of K.

    Drawn uniformly among the permutations without fixed points (rejection: about e draws on average),
    so every class loses its own text row and the control cannot be partly the truth.
    """
    if isinstance(num_classes, bool) or not isinstance(num_classes, int | np.integer) or num_classes < 2:
        raise ValueError(
            f"knowledge='permuted' needs at least 2 classes to deal rows to other classes, got {num_classes!r}"
        )
    rng = np.random.default_rng(seed)
    while True:
        perm = rng.permutation(int(num_classes))
        if not np.any(perm == np.arange(num_classes)):
            return perm


def control_knowledge(knowledge: torch.Tensor, mode: str, seed: int = 0) -> torch.Tensor:
    """K (C × embed) under a control ``mode`` (see the module docstring); a new tensor, K's dtype and device.

    ``"random"`` draws from a generator seeded with ``seed`` (torch's global RNG is untouched), then
    rescales row c to ‖K_c‖.
    """
    mode = check_knowledge_mode(mode)
    if not isinstance(knowledge, torch.Tensor) or knowledge.dim() != 2:
        raise ValueError("knowledge must be a (classes, embed) tensor")
    if mode == "true":
        return knowledge.clone()
    if mode == "permuted":
        perm = torch.from_numpy(knowledge_permutation(knowledge.shape[0], seed)).to(knowledge.device)
        return knowledge[perm].clone()
    generator = torch.Generator().manual_seed(int(seed))
    rows = torch.randn(knowledge.shape, generator=generator, dtype=torch.float64)
    norms = knowledge.detach().double().cpu().norm(dim=1, keepdim=True)
    rows = rows / rows.norm(dim=1, keepdim=True) * norms
    return rows.to(device=knowledge.device, dtype=knowledge.dtype)
