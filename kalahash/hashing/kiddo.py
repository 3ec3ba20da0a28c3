"""KIDDO, knowledge-guided discrete optimisation (notes: KIDDO), around any registered loss.

State over the N training images: B (bits × N) ±1, U (bits × N) the latest head outputs, Y (C × N) the
labels; W = G(K)ᵀ (bits × C) are the knowledge anchors. Per batch (:meth:`KIDDO.terms`):

    loss = γ·L_sim + α·L_ali + β·L_qua

with L_sim the wrapped registered loss (DPSH's likelihood by default), L_qua (:func:`l_qua`) and L_ali
(:func:`l_ali`). Once per epoch the B-step (:func:`kiddo_b_step`) minimises the discrete objective
(:func:`kiddo_objective`) over B with W, Y and U fixed.

The order is the release's (notes: KIDDO). Per batch: forward (W = G(K)ᵀ and u), keep W and u
(:meth:`KIDDO.terms`), loss, backward, SGD step. After the epoch's last batch: the B-step with the W kept
from that last forward pass, computed *before* its optimizer step, not a W recomputed after it.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .losses.base import HashLoss, as_label_tensor

# The paper's default loss weights (ALPHA, BETA, GAMMA of the release's config) and B-step sweeps: the
# hasher's defaults (factory.HPARAMS) and the presets' release defaults read them here.
DEFAULT_ALPHA = 0.1
DEFAULT_BETA = 1.0
DEFAULT_GAMMA = 1.0
DEFAULT_SWEEPS = 10


def l_qua(u: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """L_qua = mean (u − B[:, idx]ᵀ)²: pulls the head outputs u (batch, bits) to their codes b."""
    return (u - b).pow(2).mean()


def l_ali(labels: torch.Tensor, b: torch.Tensor, W: torch.Tensor) -> torch.Tensor:
    """L_ali = mean (Y_batch − B[:, idx]ᵀ W)²: codes b are fixed, so the gradient reaches W (G) only."""
    return (labels - b @ W).pow(2).mean()


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
    default; any registered loss plays this role: plug-and-play). U[:, idx] ← uᵀ (detached) each
    batch, and W is kept (``kept_W``) as the release's criterion keeps it; :meth:`b_step` runs
    :func:`kiddo_b_step` once per epoch with that kept W (module docstring: the release's order).

    State (buffers, allocated by :meth:`setup`): B (bits × N) random ±1, U (bits × N) zeros,
    Y (C × N) the training labels. ``kept_W``: the W of the latest forward pass (None after
    :meth:`setup`). ``last_flips``: entries of B the latest B-step changed (diagnostics).
    """

    def __init__(
        self,
        similarity: HashLoss,
        alpha: float = DEFAULT_ALPHA,
        beta: float = DEFAULT_BETA,
        gamma: float = DEFAULT_GAMMA,
        sweeps: int = DEFAULT_SWEEPS,
    ) -> None:
        super().__init__()
        if not alpha > 0:
            raise ValueError(f"kiddo_alpha must be > 0 (the B-step divides by it), got {alpha!r}")
        self.similarity = similarity
        self.alpha, self.beta, self.gamma, self.sweeps = float(alpha), float(beta), float(gamma), int(sweeps)
        for name in ("B", "U", "Y"):
            self.register_buffer(name, torch.empty(0, 0))
        self.kept_W: torch.Tensor | None = None
        self.last_flips = 0

    @property
    def batch_norm(self) -> bool:
        return self.similarity.batch_norm

    def setup(self, num_classes: int, bits: int, train_labels: Any) -> None:
        labels = as_label_tensor(train_labels)
        self.similarity.setup(num_classes, bits, labels)
        device = self.B.device
        n = labels.shape[0]
        self.B = (torch.randint(0, 2, (bits, n)) * 2 - 1).float().to(device)  # random signs
        self.U = torch.zeros(bits, n, device=device)
        self.Y = labels.t().contiguous().to(device)
        self.kept_W = None

    def continuation_scale(self, epochs_done: int) -> float:
        return self.similarity.continuation_scale(epochs_done)

    def _check_ready(self) -> None:
        if self.B.numel() == 0:
            raise RuntimeError("KIDDO state is not allocated: call hasher.begin_training(train_labels) first")

    def terms(
        self, u: torch.Tensor, labels: torch.Tensor, indices: torch.Tensor, W: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        """The per-batch loss γ·L_sim + α·L_ali + β·L_qua and its parts; records u in U and keeps W
        for the epoch's B-step (the release's forward stores both)."""
        self._check_ready()
        n = self.B.shape[1]
        idx = indices.to(device=self.B.device, dtype=torch.long)
        if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= n):
            raise ValueError(f"indices must be positions in the training set, 0..{n - 1}")
        with torch.no_grad():
            self.U[:, idx] = u.detach().t().to(self.U.dtype)
        self.kept_W = W.detach()
        b = self.B[:, idx].t()  # (batch, bits), fixed
        inner = self.similarity.terms(u, labels, indices)
        sim, qua, ali = inner["loss"], l_qua(u, b), l_ali(labels, b, W)
        loss = self.gamma * sim + self.alpha * ali + self.beta * qua
        parts = {"loss": loss, "sim": sim, "ali": ali, "qua": qua}
        parts.update({f"sim.{k}": v for k, v in inner.items() if k != "loss"})
        return parts

    @torch.no_grad()
    def b_step(self, W: torch.Tensor | None = None) -> None:
        """The B-step rule B_i ← sign(P_i − B'ᵀ W' w_i) for every bit (the release's DCC), with ``W`` or,
        by default, ``kept_W``: the anchors of the latest forward pass, as the release's DCC reads them."""
        self._check_ready()
        if W is None:
            if self.kept_W is None:
                raise RuntimeError(
                    "the B-step uses the W of the epoch's last forward pass, and no batch has run since "
                    "setup: compute the loss on a batch (terms) first"
                )
            W = self.kept_W
        updated = kiddo_b_step(self.B, W.float(), self.Y, self.U, self.alpha, self.beta, self.sweeps)
        self.last_flips = int((updated != self.B).sum())
        self.B = updated

    def objective(self, W: torch.Tensor) -> float:
        return kiddo_objective(self.B, W.float(), self.Y, self.U, self.alpha, self.beta)
