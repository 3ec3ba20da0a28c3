"""The built-in offline worlds: deterministic generators of captioned 32x32 images, their retrieval sets
in the paper's protocol, and the tiny CLIPs pre-trained on their captions.

- ``shapes``: the first world (``shapes``, ``shapes-multi``; ``tiny-shapes``);
- ``objects10``: the world built after CIFAR-10 (``objects10``, ``objects10-multi``; ``tiny-objects-s/m/l``);
- ``pretrain``: the tiny CLIPs' pre-training on a world's captions (imports torch; not imported here).

Importing this package registers every world with :func:`kalahash.data.load_dataset`
(``kalahash/__init__`` imports it).
"""

from . import objects10, shapes

__all__ = ["objects10", "shapes"]
