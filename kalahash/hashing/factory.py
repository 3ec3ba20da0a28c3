"""Names to objects: the hyper-parameters and their defaults (:data:`HPARAMS`), their validation, and
:func:`build_hasher`, the one way to make a :class:`Hasher` from a method of the registry
(:data:`kalahash.hashing.methods.METHODS`)."""

from __future__ import annotations

import copy
import inspect
import math
import warnings
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
from torch import nn

from kalahash.backbones import UnknownWordsWarning
from kalahash.lora import (
    ADAPTER_KINDS,
    DEFAULT_BLOCKS,
    DEFAULT_RANK,
    DEFAULT_STRENGTH,
    DEFAULT_TARGETS,
    SELECTIONS,
    normalise_blocks,
    normalise_targets,
)
from kalahash.prompts import CLASS_PROMPT

from .kiddo import DEFAULT_ALPHA, DEFAULT_BETA, DEFAULT_GAMMA, DEFAULT_SWEEPS, KIDDO
from .knowledge import control_knowledge
from .losses import LOSSES
from .methods import METHODS, check_knowledge_control, uses_knowledge
from .model import Hasher, serves_a_hasher

if TYPE_CHECKING:
    from kalahash.backbones import Backbone

# hparam -> default (None = decided by the method or the loss); see build_hasher's docstring.
HPARAMS: dict[str, Any] = {
    "adapter": None,
    "rank": DEFAULT_RANK,
    "strength": DEFAULT_STRENGTH,
    "selection": "topr",
    "blocks": list(DEFAULT_BLOCKS),
    "targets": list(DEFAULT_TARGETS),
    "rank_stabilised": True,
    "loss": "dpsh",
    "loss_options": {},
    "kiddo": None,
    "kiddo_alpha": DEFAULT_ALPHA,
    "kiddo_beta": DEFAULT_BETA,
    "kiddo_gamma": DEFAULT_GAMMA,
    "kiddo_sweeps": DEFAULT_SWEEPS,
    "batch_norm": None,
    "template": CLASS_PROMPT,
    "knowledge": "true",
    "knowledge_seed": 0,
    "anchor_momentum": None,
}


def _names(options: Any) -> str:
    return ", ".join(repr(o) for o in options)


def _check_number(name: str, value: Any, minimum: float | None = None, strict: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    if minimum is not None and (value <= minimum if strict else value < minimum):
        raise ValueError(f"{name} must be {'>' if strict else '>='} {minimum}, got {value!r}")
    return float(value)


def _resolve_hparams(method: str, hparams: dict[str, Any]) -> dict[str, Any]:
    unknown = sorted(set(hparams) - set(HPARAMS))
    if unknown:
        raise ValueError(f"unknown hparam(s) {_names(unknown)}: allowed hparams are {_names(HPARAMS)}")
    spec = METHODS[method]
    hp = copy.deepcopy(HPARAMS)
    hp.update(copy.deepcopy(hparams))

    if "adapter" in hparams and hparams["adapter"] != spec["adapter"]:
        if hparams["adapter"] not in (None, *ADAPTER_KINDS):
            raise ValueError(f"unknown adapter {hparams['adapter']!r}: allowed None, {_names(ADAPTER_KINDS)}")
        fitting = [m for m, s in METHODS.items() if s["adapter"] == hparams["adapter"]]
        raise ValueError(
            f"method {method!r} uses adapter {spec['adapter']!r}, not {hparams['adapter']!r}: "
            f"use method {' or '.join(map(repr, fitting))} instead"
        )
    hp["adapter"] = spec["adapter"]
    if hp["kiddo"] is None:
        hp["kiddo"] = spec["kiddo"]
    if not isinstance(hp["kiddo"], bool):
        raise ValueError(f"kiddo must be True or False, got {hp['kiddo']!r}")

    if hp["loss"] not in LOSSES:
        raise ValueError(f"unknown loss {hp['loss']!r}: registered losses are {_names(LOSSES)}")
    loss_cls = LOSSES[hp["loss"]]
    if not isinstance(hp["loss_options"], dict):
        raise ValueError(f"loss_options must be a dict of {hp['loss']} arguments, got {hp['loss_options']!r}")
    allowed = [p for p in inspect.signature(loss_cls.__init__).parameters if p != "self"]
    bad = sorted(set(hp["loss_options"]) - set(allowed))
    if bad:
        raise ValueError(
            f"unknown loss_options {_names(bad)} for {hp['loss']!r}: allowed {_names(allowed) or 'none'}"
        )
    if hp["batch_norm"] is None:
        hp["batch_norm"] = loss_cls.batch_norm
    if not isinstance(hp["batch_norm"], bool):
        raise ValueError(
            f"batch_norm must be True, False or None (the loss's default), got {hp['batch_norm']!r}"
        )

    if isinstance(hp["rank"], bool) or not isinstance(hp["rank"], int) or hp["rank"] <= 0:
        raise ValueError(f"rank must be a positive int, got {hp['rank']!r}")
    hp["strength"] = _check_number("strength", hp["strength"])
    if hp["selection"] not in SELECTIONS:
        raise ValueError(
            f"unknown selection {hp['selection']!r}: allowed selections are {_names(SELECTIONS)}"
        )
    blocks = hp["blocks"]
    hp["blocks"] = [blocks] if isinstance(blocks, int) and not isinstance(blocks, bool) else list(blocks)
    targets = hp["targets"]
    hp["targets"] = [targets] if isinstance(targets, str) else list(targets)
    if not isinstance(hp["rank_stabilised"], bool):
        raise ValueError(f"rank_stabilised must be True or False, got {hp['rank_stabilised']!r}")
    hp["kiddo_alpha"] = _check_number("kiddo_alpha", hp["kiddo_alpha"], 0, strict=True)
    hp["kiddo_beta"] = _check_number("kiddo_beta", hp["kiddo_beta"], 0)
    hp["kiddo_gamma"] = _check_number("kiddo_gamma", hp["kiddo_gamma"], 0)
    sweeps = hp["kiddo_sweeps"]
    if isinstance(sweeps, bool) or not isinstance(sweeps, int) or sweeps < 0:
        raise ValueError(f"kiddo_sweeps must be a non-negative int, got {sweeps!r}")
    if not isinstance(hp["template"], str) or "{}" not in hp["template"]:
        raise ValueError(
            f"template must be a string containing '{{}}' for the class name, got {hp['template']!r}"
        )
    _check_knowledge_options(method, hp)
    if hp["anchor_momentum"] is not None:
        hp["anchor_momentum"] = _check_number("anchor_momentum", hp["anchor_momentum"], 0)
        if not hp["kiddo"]:
            raise ValueError("anchor_momentum sets the momentum of KIDDO's G: it needs kiddo=True")
    return hp


def warn_unknown_words(backbone: Backbone, classnames: Sequence[str], template: str) -> None:
    """Warn (:class:`UnknownWordsWarning`) when the class prompts hold words the backbone has no trained
    tokens for: their text embeddings are near-identical, so K carries nothing of those classes."""
    unknown = backbone.unknown_words([template.format(c) for c in classnames])
    if unknown:
        warnings.warn(
            f"backbone {backbone.name!r} knows only the words of its world's captions, and the class prompts "
            f"use words it never learned: {', '.join(unknown)}. Their text embeddings are near-identical, so "
            "what reads the class text (CLoRA's pool, KIDDO's anchors, zero-shot codes) learns nothing of "
            "these classes; use a CLIP that knows them (e.g. backbone ViT-B-32 with pretrained openai)",
            UnknownWordsWarning,
            stacklevel=3,
        )


def _check_knowledge_options(method: str, hp: dict[str, Any]) -> None:
    hp["knowledge"] = check_knowledge_control(method, hp, hp["knowledge"])
    seed = hp["knowledge_seed"]
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or seed < 0:
        raise ValueError(f"knowledge_seed must be a non-negative int, got {seed!r}")
    if METHODS[method]["zeroshot"] and hp["kiddo"]:
        raise ValueError("method 'zeroshot' trains nothing, so it cannot use KIDDO: drop kiddo=True")


def build_criterion(hparams: dict[str, Any]) -> nn.Module:
    """The training loss of resolved hparams: the registered loss, wrapped in KIDDO when asked."""
    options = dict(hparams["loss_options"])
    loss_cls = LOSSES[hparams["loss"]]
    if hparams["kiddo"] and loss_cls.quantization_option and loss_cls.quantization_option not in options:
        options[loss_cls.quantization_option] = 0.0  # KIDDO's L_qua replaces the loss's own term
    try:
        loss = loss_cls(**options)
    except (TypeError, ValueError) as err:
        raise ValueError(f"bad loss_options for {hparams['loss']!r}: {err}") from err
    if not hparams["kiddo"]:
        return loss
    return KIDDO(
        loss,
        alpha=hparams["kiddo_alpha"],
        beta=hparams["kiddo_beta"],
        gamma=hparams["kiddo_gamma"],
        sweeps=hparams["kiddo_sweeps"],
    )


def build_hasher(
    method: str, backbone: Backbone, classnames: Sequence[str], bits: int, **hparams: Any
) -> Hasher:
    """Build a :class:`Hasher` by method name on ``backbone`` (modified in place: see below).

    Parameters
    ----------
    method : ``"fft"`` (the whole image tower and the head are trained), ``"lb"`` (locked backbone:
        head only), ``"lora"`` (plain LoRA), ``"clora"`` (CLoRA + the loss), ``"kalahash"`` (CLoRA +
        KIDDO with DPSH as L_sim). Every method takes any registered loss (``loss=...``) and KIDDO can
        be switched on or off for any of them (``kiddo=True/False``): plug-and-play. ``"zeroshot"`` is a
        control with nothing to train: each image gets the fixed code of its zero-shot class
        (:class:`ZeroShotHead`), which bounds what the text knowledge gives alone.
    backbone : a fresh :class:`kalahash.backbones.Backbone`. It is modified in place (adapters are
        inserted, ``fft`` unfreezes its image tower) and then belongs to this hasher: building a second
        hasher on it raises ``ValueError``. Load another (``load_backbone``) or ``copy.deepcopy`` it
        first. The hasher shares the backbone's image tower; move the hasher, not the backbone.
    classnames : the class names, in label-column order; the knowledge K is
        ``backbone.text_knowledge(classnames, template)``.
    bits : code length, a positive int.
    **hparams :
        ``rank`` (8) r of LoRA/CLoRA; for CLoRA 1 ≤ r ≤ C (it is also the number of selected classes).
        ``strength`` (0.5) α of LoRA/CLoRA; scaling α/√r.
        ``selection`` ("topr", the paper) how CLoRA picks its r classes per image; ``"random"`` and
        ``"fixed"`` are the ablation's controls (:class:`kalahash.lora.CLoRALinear`).
        ``blocks`` ([-1]) image-tower blocks that get adapters (recorded in ``hparams`` as non-negative
        indices); ``targets`` (["k", "v"]) ⊆ q, k, v, o.
        ``rank_stabilised`` (True) plain LoRA only: α/√r as the release; False gives α/r.
        ``loss`` ("dpsh") a key of :data:`LOSSES`; ``loss_options`` ({}) its constructor arguments.
        ``kiddo`` (method default: True for kalahash only) wrap the loss in :class:`KIDDO`;
        ``kiddo_alpha`` (0.1), ``kiddo_beta`` (1.0), ``kiddo_gamma`` (1.0), ``kiddo_sweeps`` (10).
        ``batch_norm`` (None: the loss's default — True for csq, orthohash, mdsh) BatchNorm in the head
        and in G. ``template`` (:data:`kalahash.prompts.CLASS_PROMPT`, "a photo of a {}.") the text prompt for K.
        ``knowledge`` ("true") a control of K for methods that read it (:func:`control_knowledge`:
        ``"permuted"`` deals the text rows to other classes, ``"random"`` Gaussian rows of K's norms);
        ``knowledge_seed`` (0) seeds it. Methods that do not read K accept only ``"true"``.
        ``anchor_momentum`` (None: the optimiser's, as released) ours, not the paper's: SGD momentum
        for G alone. With the released 0.9, L_ali can drive ‖G‖ up without bound on a K dominated by
        its common mean (tiny-shapes); 0.0 keeps it stable there. Never switched on by default.
        ``adapter`` is accepted for explicitness but must agree with the method.
        Hparams a method does not use (e.g. ``rank`` for ``lb``) are recorded and ignored.

    Returns
    -------
    Hasher, in training mode with the frozen parts in eval mode, on the backbone's device.
    """
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}: allowed methods are {_names(METHODS)}")
    if isinstance(bits, bool) or not isinstance(bits, int | np.integer) or bits <= 0:
        raise ValueError(f"bits must be a positive int, got {bits!r}")
    if isinstance(classnames, str) or not hasattr(classnames, "__iter__"):
        raise ValueError(f"classnames must be a list of class-name strings, got {type(classnames).__name__}")
    classnames = list(classnames)
    if not classnames:
        raise ValueError("classnames is empty: give one name per label column")
    if not all(isinstance(c, str) and c.strip() for c in classnames):
        raise ValueError("classnames must all be non-empty strings")
    duplicates = sorted({c for c in classnames if classnames.count(c) > 1})
    if duplicates:
        raise ValueError(f"classnames has duplicates {_names(duplicates)}: each class needs its own name")
    hp = _resolve_hparams(method, hparams)
    if hp["knowledge"] == "permuted" and len(classnames) < 2:
        raise ValueError("knowledge='permuted' needs at least 2 classes to deal text rows to other classes")
    if hp["adapter"] == "clora" and hp["rank"] > len(classnames):
        raise ValueError(
            f"rank {hp['rank']} exceeds the number of classes {len(classnames)}: CLoRA selects rank classes "
            f"per image, so rank must be in 1..{len(classnames)}"
        )
    if hp["adapter"] is not None:  # validate before anything touches the backbone
        hp["blocks"] = normalise_blocks(hp["blocks"], len(backbone.blocks))
        hp["targets"] = normalise_targets(hp["targets"])
    if hp["kiddo"] and hp["batch_norm"] and len(classnames) < 2:
        raise ValueError(
            "KIDDO with batch_norm normalises G(K) over the classes and needs at least 2 classes"
        )
    if serves_a_hasher(backbone):
        raise ValueError(
            "this backbone already serves a hasher (it is modified in place): load a fresh one with "
            "load_backbone(...) or pass copy.deepcopy(backbone)"
        )
    criterion = build_criterion(hp)
    if uses_knowledge(method, hp):
        warn_unknown_words(backbone, classnames, hp["template"])
    knowledge = backbone.text_knowledge(classnames, hp["template"])
    knowledge = control_knowledge(knowledge, hp["knowledge"], hp["knowledge_seed"])
    spec = METHODS[method]
    return Hasher(
        method, backbone, classnames, int(bits), hp, criterion, spec["finetune"], knowledge, spec["zeroshot"]
    )
