"""A hasher's checkpoint state: only what training changes (the trained parameters, the head's and
the loss's buffers, the epoch counter), collected and restored by name, strictly."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from .model import Hasher


def _state_buffers(hasher: Hasher) -> dict[str, torch.Tensor]:
    """The buffers training changes: the epoch counter, the head's, G's and the loss's, by state name."""
    out = {"epochs_done": hasher.epochs_done}
    for prefix, module in (
        ("head", hasher.head),
        ("anchors", hasher.anchors),
        ("criterion", hasher.criterion),
    ):
        if module is not None:
            out.update({f"{prefix}.{n}": b for n, b in module.named_buffers() if b is not None})
    return out


def collect_trained_state(hasher: Hasher, trained_names: list[str]) -> dict[str, torch.Tensor]:
    """Detached copies of the parameters named ``trained_names`` and of the trained buffers."""
    params = dict(hasher.named_parameters())
    state = {n: params[n] for n in trained_names}
    state.update(_state_buffers(hasher))
    return {n: t.detach().clone() for n, t in state.items()}


@torch.no_grad()
def restore_trained_state(hasher: Hasher, trained_names: list[str], state: dict[str, torch.Tensor]) -> None:
    """Copy :func:`collect_trained_state` output into ``hasher``; keys and shapes must match, except the
    loss state, which is sized by the training set and replaced whole."""
    if not isinstance(state, dict):
        raise ValueError(f"state must be a dict from trained_state(), got {type(state).__name__}")
    params = dict(hasher.named_parameters())
    buffers = _state_buffers(hasher)
    expected = set(trained_names) | set(buffers)
    missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
    if missing or unexpected:
        raise ValueError(
            f"trained state does not fit this {hasher.method!r} hasher: missing keys {missing or 'none'}, "
            f"unexpected keys {unexpected or 'none'}"
        )
    for name in trained_names:
        value = state[name]
        if tuple(value.shape) != tuple(params[name].shape):
            raise ValueError(
                f"{name}: shape {tuple(value.shape)} in the state, {tuple(params[name].shape)} in the hasher"
            )
        params[name].copy_(value)
    for name, current in buffers.items():
        value = state[name]
        owner_name, _, attr = name.rpartition(".")
        owner = hasher.get_submodule(owner_name) if owner_name else hasher
        if tuple(value.shape) == tuple(current.shape):
            current.copy_(value)
        elif owner_name.startswith("criterion"):  # loss state sized by the training set
            setattr(owner, attr, value.detach().to(device=current.device, dtype=current.dtype).clone())
        else:
            raise ValueError(
                f"{name}: shape {tuple(value.shape)} in the state, {tuple(current.shape)} in the hasher"
            )
