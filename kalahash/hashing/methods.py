"""The method registry, without torch: each method's parts (:data:`METHODS`), how tables name it
(:data:`METHOD_LABELS`), the controls of the class-text knowledge K (:data:`KNOWLEDGE_MODES`) and which
methods read K (:func:`uses_knowledge`).

The factory (:func:`kalahash.hashing.build_hasher`) builds from it; the run configs, the CLI (whose
``--help`` imports no torch), the studies and the verdicts read the names here.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

# method -> (adapter, full fine-tuning, KIDDO by default, zero-shot head); the loss defaults to DPSH. In
# the paper's order: the baselines, then CLoRA alone and with KIDDO, then the text-only control.
METHODS: dict[str, dict[str, Any]] = {
    "lb": {"adapter": None, "finetune": False, "kiddo": False, "zeroshot": False},
    "fft": {"adapter": None, "finetune": True, "kiddo": False, "zeroshot": False},
    "lora": {"adapter": "lora", "finetune": False, "kiddo": False, "zeroshot": False},
    "clora": {"adapter": "clora", "finetune": False, "kiddo": False, "zeroshot": False},
    "kalahash": {"adapter": "clora", "finetune": False, "kiddo": True, "zeroshot": False},
    "zeroshot": {"adapter": None, "finetune": False, "kiddo": False, "zeroshot": True},
}

# How tables, figures and verdicts name each method (and the shot-scaling figure's MDSH-FFT baseline).
METHOD_LABELS = {
    "lb": "LB",
    "fft": "FFT",
    "lora": "LoRA",
    "clora": "CLoRA",
    "kalahash": "KALAHash",
    "zeroshot": "zero-shot codes",
    "mdsh-fft": "MDSH-FFT",
}

# The controls of K a run may take (what each does: kalahash.hashing.knowledge.control_knowledge).
KNOWLEDGE_MODES = ("true", "permuted", "random")


def uses_kiddo(method: str, hparams: Mapping[str, Any]) -> bool:
    """Whether a method with these (resolved or given) hparams trains with KIDDO."""
    kiddo = hparams.get("kiddo")
    return bool(METHODS[method]["kiddo"] if kiddo is None else kiddo)


def uses_knowledge(method: str, hparams: Mapping[str, Any]) -> bool:
    """Whether a method with these (resolved or given) hparams reads K: CLoRA's pool, KIDDO's anchors or
    the zero-shot codes."""
    spec = METHODS[method]
    return spec["adapter"] == "clora" or spec["zeroshot"] or uses_kiddo(method, hparams)


def check_knowledge_mode(mode: object) -> str:
    """``mode`` if it is one of :data:`KNOWLEDGE_MODES`, else a ValueError that lists them."""
    if mode not in KNOWLEDGE_MODES:
        allowed = ", ".join(repr(m) for m in KNOWLEDGE_MODES)
        raise ValueError(f"unknown knowledge {mode!r}: allowed {allowed}")
    return str(mode)


def check_knowledge_control(method: str, hparams: Mapping[str, Any], knowledge: Any) -> str:
    """``knowledge`` if it is a control mode this method (with these hparams) can take: a control other
    than ``"true"`` needs a method that reads K (:func:`uses_knowledge`)."""
    knowledge = check_knowledge_mode(knowledge)
    if knowledge != "true" and not uses_knowledge(method, hparams):
        readers = ", ".join(m for m in METHODS if uses_knowledge(m, {}))
        raise ValueError(
            f"knowledge {knowledge!r} is a control for methods that read K ({readers}, or any method with "
            f"kiddo=True); method {method!r} does not: use knowledge='true' (CLI: --knowledge true, the "
            "default)"
        )
    return knowledge
