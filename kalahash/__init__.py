"""kalahash: knowledge-anchored low-resource adaptation of CLIP for deep hashing."""

__version__ = "0.1.0"
