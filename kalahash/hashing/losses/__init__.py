"""The hashing losses, one module per paper, each registered under its short name in :data:`LOSSES`.

A new loss subclasses :class:`HashLoss` (``terms(u, labels, indices)``, optionally ``setup``) and is
registered with ``@register_loss("name")``; :func:`kalahash.hashing.build_hasher` then takes
``loss="name"``, alone or inside KIDDO.

``base`` holds the registry and the shared pieces (:class:`HashLoss`, :class:`CenterLoss`, pair
similarity); ``dpsh``, ``hashnet``, ``csq``, ``orthohash`` and ``mdsh`` one loss each. These modules
import torch, numpy and, of kalahash, only ``hashing.heads`` (``sign``) and ``hashing.centers``: never
the hasher, KIDDO or the factory, which build on them.
"""

# isort: off
# The import order is the registry order (the papers' chronological order), which error messages list.
from .base import LOSSES, CenterLoss, HashLoss, as_floats, as_label_tensor, pair_similarity, register_loss
from .dpsh import DPSHLoss, dpsh_likelihood
from .hashnet import HashNetLoss
from .csq import CSQLoss
from .orthohash import OrthoHashLoss
from .mdsh import MDSHLoss

# isort: on

__all__ = [
    "LOSSES",
    "CSQLoss",
    "CenterLoss",
    "DPSHLoss",
    "HashLoss",
    "HashNetLoss",
    "MDSHLoss",
    "OrthoHashLoss",
    "as_floats",
    "as_label_tensor",
    "dpsh_likelihood",
    "pair_similarity",
    "register_loss",
]
