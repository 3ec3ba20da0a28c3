import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch

torch.set_flush_denormal(True)
# The test models are tiny: one thread is as fast, and it never oversubscribes a loaded machine.
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tiny_backbone():
    """The random-init `tiny` config: fast, offline, a real open_clip model (not a mock)."""
    from kalahash.backbones import load_backbone

    torch.manual_seed(0)
    return load_backbone("tiny")
