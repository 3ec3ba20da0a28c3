"""kalahash: knowledge-anchored low-resource adaptation of CLIP for deep hashing."""

__version__ = "0.1.0"

# The worlds register themselves with the data-set registry on import; importing them here, after
# the rest, makes load_dataset("shapes") work whatever the caller imported first.
from . import data, world

__all__ = ["__version__", "data", "world"]
