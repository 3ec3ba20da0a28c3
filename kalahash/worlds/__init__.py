"""The built-in offline worlds: deterministic generators of captioned 32x32 images, their retrieval sets
in the paper's protocol, and the tiny CLIPs pre-trained on their captions.

- ``toolkit``: what the worlds are built with (seeded streams, the protocol split, pool windows, cached
  retrieval sets) and each world's :class:`WorldSpec` (vocabulary, retrieval sets, pre-training pool,
  tiny CLIPs and default backbone, the paper data sets whose presets it borrows), registered once in
  :data:`WORLDS` and read by presets, pre-training, the notebooks' settings, the CLI's help and the run
  defaults;
- ``objects10``: the world built after CIFAR-10 (``objects10``, ``objects10-multi``; ``tiny-objects-s/m/l``);
- ``shapes``: the first world (``shapes``, ``shapes-multi``; ``tiny-shapes``);
- ``pretrain``: the tiny CLIPs' pre-training on a world's captions (imports torch; not imported here);
- ``evaluation``: what a CLIP knows of a world: zero-shot accuracy, linear probes, chance levels and the
  shape of K (imports torch; not imported here).

Importing this package registers every world with :func:`kalahash.data.load_dataset`
(``kalahash/__init__`` imports it).
"""

from . import objects10, shapes
from .toolkit import WORLDS, WorldSpec, family_text, register_world, world_datasets, world_of, world_spec

__all__ = [
    "WORLDS",
    "WorldSpec",
    "family_text",
    "objects10",
    "register_world",
    "shapes",
    "world_datasets",
    "world_of",
    "world_spec",
]
