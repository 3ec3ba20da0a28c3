"""Hashing: from image features to ±1 codes, and the one factory that turns a method name into a model.

* :mod:`.methods` — the method registry :data:`METHODS` (and :data:`METHOD_LABELS`, how tables name them),
  :data:`KNOWLEDGE_MODES` and :func:`uses_knowledge` (does a method read K); no torch, so the CLI reads it
  for its help.
* :mod:`.heads` — :class:`HashHead` (feature → u in (−1, 1)), :class:`KnowledgeAnchors` (K → W), :func:`sign`,
  :class:`ZeroShotHead` (the text-only control: the code of each image's zero-shot class).
* :mod:`.knowledge` — :func:`control_knowledge`: K as is, with rows dealt to other classes, or random.
* :mod:`.diagnostics` — per-epoch training diagnostics from a hasher's state (‖W‖, anchors, flips, routing).
* :mod:`.centers` — fixed per-class hash centres (Hadamard, CSQ, MDSH) for the centre losses.
* :mod:`.losses` — the loss registry (:data:`LOSSES`, :func:`register_loss`), one module per paper:
  ``dpsh``, ``hashnet``, ``csq``, ``orthohash``, ``mdsh``.
* :mod:`.kiddo` — KIDDO: L_sim, L_ali, L_qua per batch and the per-epoch discrete B-step.
* :mod:`.model` — :class:`Hasher`, the model API of training, caching and checkpoints (:mod:`.state`).
* :mod:`.factory` — :data:`HPARAMS` and :func:`build_hasher`.

Every name is importable from ``kalahash.hashing``, imported when first asked for (PEP 562), so that
reading the registry (``kalahash.hashing.methods``) imports no torch.

This package may import kalahash's data, backbones, lora (adapters), metrics and fileio modules, never
train, experiments, cli or the worlds: those build on it.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

# Where each name lives, relative to this package (kalahash.lora's adapters too).
_HOMES: dict[str, tuple[str, ...]] = {
    "kalahash.lora": ("CLoRALinear", "LoRALinear"),
    ".centers": ("csq_centers", "gilbert_varshamov_distance", "hadamard", "mdsh_centers"),
    ".factory": ("HPARAMS", "build_hasher"),
    ".heads": ("HashHead", "KnowledgeAnchors", "ZeroShotHead", "sign"),
    ".kiddo": ("KIDDO", "kiddo_b_step", "kiddo_objective"),
    ".knowledge": ("control_knowledge", "knowledge_permutation"),
    ".losses": (
        "LOSSES",
        "CSQLoss",
        "DPSHLoss",
        "HashLoss",
        "HashNetLoss",
        "MDSHLoss",
        "OrthoHashLoss",
        "dpsh_likelihood",
        "register_loss",
    ),
    ".methods": ("KNOWLEDGE_MODES", "METHODS", "METHOD_LABELS", "uses_kiddo", "uses_knowledge"),
    ".model": ("Hasher",),
}
_MODULE_OF = {name: module for module, names in _HOMES.items() for name in names}
__all__ = sorted(_MODULE_OF, key=lambda n: (not n.isupper(), not n[0].isupper(), n))


def __getattr__(name: str) -> Any:
    """A name of this package, from its module (imported on first use)."""
    if name in _MODULE_OF:
        return getattr(import_module(_MODULE_OF[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
