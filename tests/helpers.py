"""Helpers shared by the test modules (importable: pytest puts tests/ on sys.path)."""

import torch

from kalahash.backbones import load_backbone


def fresh_tiny(seed: int = 0):
    """A fresh random-init `tiny` backbone (adapters and hashers modify theirs in place); same seed, same weights."""
    torch.manual_seed(seed)
    return load_backbone("tiny")
