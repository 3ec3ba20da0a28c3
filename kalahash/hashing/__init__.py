"""Hashing: from image features to ±1 codes, and the one factory that turns a method name into a model.

* :mod:`.heads` — :class:`HashHead` (feature → u in (−1, 1)), :class:`KnowledgeAnchors` (K → W), :func:`sign`,
  :class:`ZeroShotHead` (the text-only control: the code of each image's zero-shot class).
* :mod:`.knowledge` — :func:`control_knowledge`: K as is, with rows dealt to other classes, or random.
* :mod:`.diagnostics` — per-epoch training diagnostics from a hasher's state (‖W‖, anchors, flips, routing).
* :mod:`.centers` — fixed per-class hash centres (Hadamard, CSQ, MDSH) for the centre losses.
* :mod:`.losses` — the loss registry (:data:`LOSSES`, :func:`register_loss`), one module per paper:
  ``dpsh``, ``hashnet``, ``csq``, ``orthohash``, ``mdsh``.
* :mod:`.kiddo` — KIDDO: L_sim, L_ali, L_qua per batch and the per-epoch discrete B-step.
* :mod:`.model` — :class:`Hasher`, the model API of training, caching and checkpoints (:mod:`.state`).
* :mod:`.factory` — :data:`METHODS`, :data:`HPARAMS` and :func:`build_hasher` (:func:`uses_knowledge`: does a
  method read K).

This package may import kalahash's data, backbones, lora (adapters), metrics and fileio modules, never
train, experiments, cli or world: those build on it.
"""

from kalahash.lora import CLoRALinear, LoRALinear

from .centers import csq_centers, gilbert_varshamov_distance, hadamard, mdsh_centers
from .factory import (
    HPARAMS,
    METHOD_LABELS,
    METHODS,
    build_hasher,
    uses_kiddo,
    uses_knowledge,
)
from .heads import HashHead, KnowledgeAnchors, ZeroShotHead, sign
from .kiddo import KIDDO, kiddo_b_step, kiddo_objective
from .knowledge import KNOWLEDGE_MODES, control_knowledge, knowledge_permutation
from .losses import (
    LOSSES,
    CSQLoss,
    DPSHLoss,
    HashLoss,
    HashNetLoss,
    MDSHLoss,
    OrthoHashLoss,
    dpsh_likelihood,
    register_loss,
)
from .model import Hasher

__all__ = [
    "HPARAMS",
    "KIDDO",
    "KNOWLEDGE_MODES",
    "LOSSES",
    "METHODS",
    "METHOD_LABELS",
    "CLoRALinear",
    "CSQLoss",
    "DPSHLoss",
    "HashHead",
    "HashLoss",
    "HashNetLoss",
    "Hasher",
    "KnowledgeAnchors",
    "LoRALinear",
    "MDSHLoss",
    "OrthoHashLoss",
    "ZeroShotHead",
    "build_hasher",
    "control_knowledge",
    "csq_centers",
    "dpsh_likelihood",
    "gilbert_varshamov_distance",
    "hadamard",
    "kiddo_b_step",
    "kiddo_objective",
    "knowledge_permutation",
    "mdsh_centers",
    "register_loss",
    "sign",
    "uses_kiddo",
    "uses_knowledge",
]
