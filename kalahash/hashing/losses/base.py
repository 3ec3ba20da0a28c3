"""What every hashing loss shares: the :class:`HashLoss` base, the registry behind ``loss=name``,
the base of the hash-centre losses and the label checks and helpers the losses and KIDDO use."""

from __future__ import annotations

import abc
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import nn

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


def as_label_tensor(labels: Any, name: str = "train_labels") -> torch.Tensor:
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


def pair_similarity(labels: torch.Tensor) -> torch.Tensor:
    """S_ij = 1 if images i and j share at least one label (the DeepHash convention)."""
    return (labels @ labels.t() > 0).to(labels.dtype)


def as_floats(terms: dict[str, torch.Tensor]) -> dict[str, float]:
    """The scalar terms as Python floats, with one device sync for all of them."""
    values = torch.stack([t.detach().float().reshape(()) for t in terms.values()]).tolist()
    return dict(zip(terms, values, strict=True))


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
        return terms["loss"], as_floats(terms)


class CenterLoss(HashLoss):
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
