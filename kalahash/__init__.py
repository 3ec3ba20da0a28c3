"""kalahash: knowledge-anchored low-resource adaptation of CLIP for deep hashing.

Layers, each importing only from those before it (tests/test_layout.py checks this):
``fileio``/``hamming`` (the Hamming ranking engine)/``presets`` → ``metrics``, ``data``, ``history`` (run
histories and flags) → ``world`` (built-in worlds, registered with data), ``backbones`` → ``lora`` (adapters) →
``hashing`` (heads, losses, KIDDO, the hasher) → ``cache``, ``checkpoints``, ``plots`` → ``train`` →
``experiments``, ``pretrain``, ``search`` → ``studies``, ``efficiency``, ``reproduce`` (what the notebooks
run) → ``cli`` (and the notebooks).
"""

__version__ = "0.1.0"

# The worlds register themselves with the data-set registry on import; importing them here, after
# the rest, makes load_dataset("shapes") work whatever the caller imported first.
from . import data, world

__all__ = ["__version__", "data", "world"]
