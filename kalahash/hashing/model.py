"""The :class:`Hasher`: a CLIP image tower (frozen, adapted or fine-tuned) + hash head + loss, with the
training, retrieval and frozen-prefix API that training, caching and checkpoints use. Build one with
:func:`kalahash.hashing.build_hasher`; its checkpoint state lives in :mod:`kalahash.hashing.state`."""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from kalahash.lora import CLoRALinear, KnowledgePool, adapters, apply_adapter, knowledge_pool, merge_lora
from kalahash.towers import ImageTower, image_tower

from .heads import HashHead, KnowledgeAnchors, ZeroShotHead, sign
from .losses.base import as_floats, as_label_tensor
from .state import collect_trained_state, restore_trained_state

if TYPE_CHECKING:
    from kalahash.backbones import Backbone

_OWNER_FLAG = "_kalahash_hasher_built"


def serves_a_hasher(backbone: Backbone) -> bool:
    """Whether a hasher was built on this backbone already (building one modifies it in place)."""
    return bool(
        getattr(backbone.model, _OWNER_FLAG, False) or adapters(backbone.visual) or knowledge_pool(backbone)
    )


class Hasher(nn.Module):
    """A CLIP image tower (frozen, adapted or fine-tuned) + hash head + loss; see :func:`build_hasher`.

    Training code uses: ``forward(images) -> u`` (B, bits) in (−1, 1); ``loss_on_batch(u, labels,
    indices)``; ``begin_training(train_labels)`` once before the first epoch; ``end_epoch()`` after
    each epoch (KIDDO's B-step; HashNet's continuation); ``trainable_parameters()`` for the optimiser;
    ``trained_state()`` / ``load_trained_state()`` for checkpoints; the frozen-prefix hooks
    ``trainable_from``, ``prefix_tokens`` and ``forward_from_tokens``. Retrieval uses ``encode``.

    :func:`build_hasher` validates the names and numbers and passes the pieces they resolve to:
    ``hparams`` (resolved), ``criterion`` (the registered loss or KIDDO around it), ``finetune``
    (whether the method trains the whole image tower), ``knowledge`` (K, C × embed, after its control)
    and ``zeroshot`` (a :class:`ZeroShotHead` instead of the hash head: nothing to train).
    """

    def __init__(
        self,
        method: str,
        backbone: Backbone,
        classnames: list[str],
        bits: int,
        hparams: dict[str, Any],
        criterion: nn.Module,
        finetune: bool,
        knowledge: torch.Tensor,
        zeroshot: bool = False,
    ) -> None:
        super().__init__()
        self.method = method
        self.bits = bits
        self.classnames = list(classnames)
        self.num_classes = len(classnames)
        self.hparams = hparams
        self.kiddo = hparams["kiddo"]
        self.finetune = finetune
        self.backbone = backbone  # a plain reference (not a submodule): preprocess, tokenizer, name
        self._merged = False
        device = next(backbone.visual.parameters()).device

        knowledge = knowledge.detach().float().to(device)
        backbone.model.requires_grad_(False)
        if hparams["adapter"] is not None:
            apply_adapter(
                backbone,
                hparams["adapter"],
                blocks=hparams["blocks"],
                targets=hparams["targets"],
                rank=hparams["rank"],
                strength=hparams["strength"],
                knowledge=knowledge if hparams["adapter"] == "clora" else None,
                rank_stabilised=hparams["rank_stabilised"] if hparams["adapter"] == "lora" else True,
                selection=hparams["selection"] if hparams["adapter"] == "clora" else "topr",
            )
        if self.finetune:
            backbone.visual.requires_grad_(True)
        setattr(backbone.model, _OWNER_FLAG, True)
        self.visual = backbone.visual
        self.register_buffer("knowledge", knowledge, persistent=False)
        embed = backbone.embed_dim
        self.head = (
            ZeroShotHead(knowledge, bits) if zeroshot else HashHead(embed, bits, hparams["batch_norm"])
        ).to(device)
        self.anchors = KnowledgeAnchors(embed, bits, hparams["batch_norm"]).to(device) if self.kiddo else None
        self.criterion = criterion.to(device)
        self.register_buffer("epochs_done", torch.zeros((), dtype=torch.long, device=device))
        self._trained_param_names = [n for n, p in self.named_parameters() if p.requires_grad]
        self.train()

    # ------------------------------------------------------------------ modes and bookkeeping

    def train(self, mode: bool = True) -> Hasher:
        """Set the mode of the trained parts; frozen image-tower parts always stay in eval mode."""
        if not isinstance(mode, bool):
            raise ValueError(f"training mode must be True or False, got {mode!r}")
        self.training = mode
        for child in self.children():
            child.train(mode and (child is not self.visual or self.finetune))
        return self

    @property
    def device(self) -> torch.device:
        return self.knowledge.device

    @property
    def tower(self) -> ImageTower:
        """The token path of this hasher's own image tower (open_clip or timm ViT)."""
        return image_tower(self.visual)

    @property
    def num_blocks(self) -> int:
        return len(self.tower.blocks)

    @property
    def knowledge_pool(self) -> KnowledgePool | None:
        pool = getattr(self.visual, "knowledge_pool", None)
        return pool if isinstance(pool, KnowledgePool) else None

    def trainable_parameters(self) -> list[nn.Parameter]:
        """The parameters the optimiser updates (adapters, F, head, G; the image tower under fft)."""
        return [p for p in self.parameters() if p.requires_grad]

    def optimizer_groups(self) -> list[dict[str, Any]]:
        """SGD parameter groups: one for everything trained, unless hparam ``anchor_momentum`` gives G
        its own momentum (ours; see :func:`build_hasher`)."""
        params = self.trainable_parameters()
        if self.anchors is None or self.hparams.get("anchor_momentum") is None:
            return [{"params": params}]
        anchor_ids = {id(p) for p in self.anchors.parameters()}
        return [
            {"params": [p for p in params if id(p) not in anchor_ids]},
            {"params": list(self.anchors.parameters()), "momentum": self.hparams["anchor_momentum"]},
        ]

    def parameter_counts(self) -> dict[str, int]:
        """Trainable parameter counts per part, plus ``total_trainable``."""

        def count(params) -> int:
            return sum(p.numel() for p in params if p.requires_grad)

        adapter_params = [
            p for _, m in adapters(self.visual) for n, p in m.named_parameters() if n.startswith("lora_")
        ]
        pool = self.knowledge_pool
        pool_params = list(pool.parameters()) if pool is not None else []
        special = {id(p) for p in adapter_params + pool_params}
        counts = {
            "adapter": count(adapter_params),
            "knowledge_pool": count(pool_params),
            "head": count(self.head.parameters()),
            "anchors": count(self.anchors.parameters()) if self.anchors is not None else 0,
            "backbone_trainable": count(p for p in self.visual.parameters() if id(p) not in special),
            "loss": count(self.criterion.parameters()),
        }
        counts["total_trainable"] = sum(counts.values())
        return counts

    # ------------------------------------------------------------------ forward paths

    def _check_index(self, name: str, value: int) -> int:
        n = self.num_blocks
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= n:
            raise ValueError(
                f"{name} must be an int in 0..{n} (the image tower has {n} blocks), got {value!r}"
            )
        return value

    def prefix_tokens(self, images: torch.Tensor, upto: int) -> torch.Tensor:
        """Tokens (B, L, width) after the patch embedding and blocks[:upto]."""
        upto = self._check_index("upto", upto)
        tower = self.tower
        return tower.run_blocks(tower.embed(images), 0, upto)

    def features_from_tokens(self, tokens: torch.Tensor, start: int) -> torch.Tensor:
        """Raw projected CLS features from tokens that already went through blocks[:start]."""
        start = self._check_index("start", start)
        tower = self.tower
        return tower.pool_project(tower.run_blocks(tokens, start, self.num_blocks))

    def forward_from_tokens(self, tokens: torch.Tensor, start: int) -> torch.Tensor:
        """u from tokens that already went through blocks[:start]: blocks[start:], pool, proj, head."""
        return self.head(self.features_from_tokens(tokens, start))

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """Raw projected CLS image features (not normalised), as the hash head sees them."""
        return self.features_from_tokens(self.tower.embed(images), 0)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(images))

    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """±1 float codes (sign, 0 → +1), always computed in eval mode (BatchNorm running statistics)."""
        if not self.training:
            return sign(self(images).float())
        # only the head (BatchNorm) and, under fft, the tower depend on the mode: switching just those
        # is far cheaper than a full eval()/train() round trip over every module of the tower
        moded = [self.head, *([self.visual] if self.finetune else [])]
        for module in moded:
            module.eval()
        try:
            return sign(self(images).float())
        finally:
            for module in moded:
                module.train()

    @property
    def trainable_from(self) -> int:
        """Index of the first image-tower block with a trainable parameter (0 under fft: everything,
        the patch embedding included, is trained; the number of blocks when the tower is frozen)."""
        if self.finetune:
            return 0
        for i, block in enumerate(self.tower.blocks):
            if any(p.requires_grad for p in block.parameters()):
                return i
        return self.num_blocks

    # ------------------------------------------------------------------ training

    def begin_training(self, train_labels: Any) -> None:
        """Allocate the loss state for a training set with labels (N, C): KIDDO's B, U, Y, the hash
        centres; reset the epoch counter and the head's tanh slope. Uses torch's global RNG."""
        labels = as_label_tensor(train_labels)
        if labels.shape[1] != self.num_classes:
            raise ValueError(
                f"train_labels has {labels.shape[1]} columns but the hasher has {self.num_classes} classes"
            )
        self.criterion.setup(self.num_classes, self.bits, labels)
        self.criterion.to(self.device)
        self.epochs_done.zero_()
        self._set_scale(self.criterion.continuation_scale(0))

    def anchor_matrix(self) -> torch.Tensor:
        """W = G(K)ᵀ (bits × C), float32; only with KIDDO."""
        if self.anchors is None:
            raise ValueError(f"method {self.method!r} without KIDDO has no knowledge anchors")
        return self.anchors(self.knowledge.float()).float()

    def loss_on_batch(
        self, u: torch.Tensor, labels: torch.Tensor, indices: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """The training loss on a batch: u (B, bits) from ``forward``, labels (B, C) 0/1, indices (B,)
        positions in the training set. Computed in float32 outside autocast. Returns the loss tensor
        and its parts as floats (``"loss"`` and, e.g., KIDDO's ``"sim"``, ``"ali"``, ``"qua"``)."""
        if u.dim() != 2 or u.shape[1] != self.bits:
            raise ValueError(f"u must be (batch, {self.bits}), got {tuple(u.shape)}")
        if labels.dim() != 2 or labels.shape != (u.shape[0], self.num_classes):
            raise ValueError(
                f"labels must be (batch, {self.num_classes}) = ({u.shape[0]}, ...), got {tuple(labels.shape)}"
            )
        indices = torch.as_tensor(indices, device=u.device).long().reshape(-1)
        if indices.shape[0] != u.shape[0]:
            raise ValueError(f"indices must have one entry per image ({u.shape[0]}), got {indices.shape[0]}")
        with torch.autocast(device_type=u.device.type, enabled=False):
            u = u.float()
            labels = labels.to(device=u.device, dtype=torch.float32)
            if self.kiddo:
                terms = self.criterion.terms(u, labels, indices, self.anchor_matrix())
            else:
                terms = self.criterion.terms(u, labels, indices)
        return terms["loss"], as_floats(terms)

    @torch.no_grad()
    def end_epoch(self) -> None:
        """Once per epoch, after its last batch: KIDDO's B-step with the W its criterion kept from the
        epoch's last forward pass (computed before that batch's optimizer step, as the release's DCC
        reads it; notes: KIDDO), then the epoch counter and the head's tanh slope for the next epoch
        (HashNet's continuation)."""
        if self.kiddo:
            self.criterion.b_step()
        self.epochs_done += 1
        self._set_scale(self.criterion.continuation_scale(int(self.epochs_done)))

    def _set_scale(self, value: float) -> None:
        if not isinstance(self.head, HashHead):
            return  # the zero-shot head has no slope
        # a new tensor, not an in-place fill: a graph built before may still hold the old slope
        self.head.scale = torch.tensor(float(value), device=self.head.scale.device)

    def routing_top1(self) -> list[torch.Tensor]:
        """The top-1 class each CLoRA layer selected for each image of the latest forward (one (batch,)
        tensor per layer that has run; empty without CLoRA)."""
        return [m.last_top1 for _, m in adapters(self.visual) if getattr(m, "last_top1", None) is not None]

    # ------------------------------------------------------------------ state

    def trained_state(self) -> dict[str, torch.Tensor]:
        """Only what training changes: adapter A's (and LoRA B's), F, head (with BatchNorm statistics and
        tanh slope), G, loss state (KIDDO B, U, Y; hash centres), the epoch counter; the image tower
        under fft. Detached copies, keyed like ``state_dict``."""
        if self._merged:
            raise RuntimeError("a merged hasher is for inference/export: save its state_dict() instead")
        return collect_trained_state(self, self._trained_param_names)

    @torch.no_grad()
    def load_trained_state(self, state: dict[str, torch.Tensor]) -> None:
        """Load :meth:`trained_state` output (strict: missing or unexpected keys raise ValueError)."""
        if self._merged:
            raise RuntimeError("a merged hasher is for inference/export; load into an unmerged hasher")
        restore_trained_state(self, self._trained_param_names, state)

    def merged(self) -> Hasher:
        """An inference copy with plain LoRA folded into the weights (identical outputs, no adapter
        cost). CLoRA cannot be merged (per-image Top_r): ValueError. The copy shares the backbone
        reference but not its weights; it has no trained_state (export its ``state_dict()``)."""
        if any(isinstance(m, CLoRALinear) for m in self.modules()):
            raise ValueError("CLoRA cannot be merged: its update depends on each image's Top_r classes")
        copy_ = copy.deepcopy(self, memo={id(self.backbone): self.backbone})
        merge_lora(copy_.visual)
        copy_._merged = True
        copy_._trained_param_names = []
        copy_.requires_grad_(False)
        return copy_.eval()

    def extra_repr(self) -> str:
        return f"method={self.method!r}, bits={self.bits}, classes={self.num_classes}, loss={self.hparams['loss']!r}"
