"""Low-rank adapters for the frozen CLIP image tower: plain LoRA and knowledge-anchored CLoRA.

Small layers in the timm style: each wraps one ``nn.Linear`` (a projection of
:class:`kalahash.towers.SplitAttention`), knows nothing about data sets or training and can be
tested with random tensors. :func:`apply_adapter` inserts them into a backbone.

CLoRA (notes: Model) replaces LoRA's learned up-matrix with rows of a *knowledge pool* F(K): the
projections of the class-text embeddings K into the ViT width. Each image picks the ``r`` pool rows
closest to the mean of its patch tokens, so the low-rank update is anchored in class knowledge and
differs per image.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

ADAPTER_KINDS = ("lora", "clora")
# How CLoRA picks the r pool rows of each image: the paper's Top_r, or the ablation's controls.
SELECTIONS = ("topr", "random", "fixed")
# Short target names -> SplitAttention attribute names.
TARGETS = {"q": "q_proj", "k": "k_proj", "v": "v_proj", "o": "out_proj"}
# Release defaults (configs/model/kalahash.yaml): last block, key and value, rank 8, strength 0.5.
DEFAULT_BLOCKS = (-1,)
DEFAULT_TARGETS = ("k", "v")
DEFAULT_RANK = 8
DEFAULT_STRENGTH = 0.5


def _check_rank(rank: int) -> None:
    if isinstance(rank, bool) or not isinstance(rank, int) or rank <= 0:
        raise ValueError(f"rank must be a positive int, got {rank!r}")


def _init_down(weight: torch.Tensor) -> None:
    # LoRA's down-matrix starts like an nn.Linear weight: Kaiming-uniform with a = sqrt(5).
    nn.init.kaiming_uniform_(weight, a=math.sqrt(5))


class _AdaptedLinear(nn.Module):
    """Shared by the adapter layers: a frozen ``base`` Linear whose shape they keep."""

    base: nn.Linear

    @property
    def in_features(self) -> int:
        return self.base.in_features

    @property
    def out_features(self) -> int:
        return self.base.out_features


class LoRALinear(_AdaptedLinear):
    """A frozen ``nn.Linear`` plus a learned low-rank update: ``y = W0 x + b + s · B A x``.

    A (rank × in) starts Kaiming-uniform, B (out × rank) starts at zero, so a fresh layer computes
    exactly the frozen projection. ``s = alpha / rank`` (Hu et al. 2021) or, with
    ``rank_stabilised=True``, ``alpha / sqrt(rank)`` (rsLoRA; the released KALAHash code uses it for
    both LoRA and CLoRA). :meth:`merge` folds the update into the weight for export.
    """

    def __init__(self, base: nn.Linear, rank: int, alpha: float, rank_stabilised: bool = False) -> None:
        super().__init__()
        if not isinstance(base, nn.Linear):
            raise ValueError(f"base must be an nn.Linear, got {type(base).__name__}")
        _check_rank(rank)
        self.base = base.requires_grad_(False)
        self.rank = rank
        self.alpha = float(alpha)
        self.rank_stabilised = bool(rank_stabilised)
        self.scaling = self.alpha / (math.sqrt(rank) if rank_stabilised else rank)
        w = base.weight
        self.lora_A = nn.Parameter(torch.empty(rank, base.in_features, device=w.device, dtype=w.dtype))
        self.lora_B = nn.Parameter(torch.zeros(base.out_features, rank, device=w.device, dtype=w.dtype))
        _init_down(self.lora_A)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # LoRA: W0 x + s · B (A x)
        down = F.linear(x, self.lora_A.to(x.dtype))
        return self.base(x) + self.scaling * F.linear(down, self.lora_B.to(x.dtype))

    @torch.no_grad()
    def merge(self) -> nn.Linear:
        """A plain, frozen ``nn.Linear`` with weight ``W0 + s · B A``: same outputs, no adapter cost."""
        base = self.base
        merged = nn.Linear(
            base.in_features,
            base.out_features,
            bias=base.bias is not None,
            device=base.weight.device,
            dtype=base.weight.dtype,
        )
        delta = (self.lora_B.double() @ self.lora_A.double()) * self.scaling
        merged.weight.copy_((base.weight.double() + delta).to(base.weight.dtype))
        if base.bias is not None:
            merged.bias.copy_(base.bias)
        return merged.requires_grad_(False)

    def extra_repr(self) -> str:
        return f"rank={self.rank}, alpha={self.alpha}, scaling={self.scaling:.4g}"


class KnowledgePool(nn.Module):
    """The knowledge pool F(K) (notes: Model, Knowledge pool).

    Holds the class-text knowledge K (C × embed, a non-persistent buffer: it is derived from the
    backbone and the class names) and the learnable map F: Linear(embed → width). One pool is
    shared by every CLoRA projection of a model.
    """

    def __init__(self, knowledge: torch.Tensor, width: int) -> None:
        super().__init__()
        if not isinstance(knowledge, torch.Tensor) or knowledge.dim() != 2:
            shape = tuple(knowledge.shape) if isinstance(knowledge, torch.Tensor) else type(knowledge)
            raise ValueError(f"knowledge must be a (classes, embed) tensor, got {shape}")
        if knowledge.shape[0] == 0 or knowledge.shape[1] == 0:
            raise ValueError(
                f"knowledge is empty (shape {tuple(knowledge.shape)}): give one text embedding per class"
            )
        if isinstance(width, bool) or not isinstance(width, int) or width <= 0:
            raise ValueError(f"width must be a positive int, got {width!r}")
        knowledge = knowledge.detach().float()
        self.register_buffer("knowledge", knowledge.clone(), persistent=False)
        self.F = nn.Linear(knowledge.shape[1], width, device=knowledge.device)

    @property
    def num_classes(self) -> int:
        return self.knowledge.shape[0]

    @property
    def width(self) -> int:
        return self.F.out_features

    def forward(self) -> torch.Tensor:
        """F(K): (C × width)."""
        return self.F(self.knowledge)


class CLoRALinear(_AdaptedLinear):
    """A frozen ``nn.Linear`` with the knowledge-anchored low-rank update of CLoRA (notes: Model).

    For an input ``x`` (batch, tokens, in) with the class token at index 0, per image i:

    * query q_i = normalise(mean of the patch tokens of x_i), without gradient;
    * Top_r: the r classes with the largest cosine similarity between q_i and the rows of F(K);
    * B_i (r × out) = those r rows of F(K), unnormalised, so the gradient reaches F;
    * ``y_i = W0 x_i + b + s · (x_i Aᵀ) B_i`` with the learned A (r × in) and s = alpha / sqrt(r).

    r is both the rank and the number of selected classes (r ≤ C). Unlike LoRA, B_i is not zero at
    init, so the adapted projection differs from the frozen one from the first step.

    Cannot be merged into ``W0``: ΔW_i = s · Aᵀ B_i depends on each image's own tokens through the
    Top_r selection, so there is no single weight that reproduces it for every input.

    ``last_top1`` holds the top-1 selected class of each image of the latest forward (batch,), for the
    routing diagnostics; it is a by-product of the selection and changes nothing in the output.
    ``selection`` replaces Top_r for the ablation that asks whether choosing by similarity matters:
    ``"topr"`` (the paper, default), ``"random"`` (r distinct classes drawn per image at every forward,
    from a generator seeded with ``seed``; the draws are not part of a checkpoint), ``"fixed"`` (the
    first r classes, the same for every image).
    """

    def __init__(
        self,
        base: nn.Linear,
        pool: KnowledgePool,
        rank: int,
        alpha: float,
        selection: str = "topr",
        seed: int = 0,
    ) -> None:
        super().__init__()
        _check_selection(selection)
        if not isinstance(base, nn.Linear):
            raise ValueError(f"base must be an nn.Linear, got {type(base).__name__}")
        if not isinstance(pool, KnowledgePool):
            raise ValueError(f"pool must be a KnowledgePool, got {type(pool).__name__}")
        _check_rank(rank)
        if rank > pool.num_classes:
            raise ValueError(
                f"rank {rank} exceeds the number of classes {pool.num_classes}: CLoRA selects rank "
                f"classes per image, so rank must be in 1..{pool.num_classes}"
            )
        if pool.width != base.in_features or pool.width != base.out_features:
            raise ValueError(
                f"the knowledge pool width {pool.width} must equal the projection's in and out features "
                f"({base.in_features}, {base.out_features})"
            )
        self.base = base.requires_grad_(False)
        self.rank = rank
        self.alpha = float(alpha)
        self.scaling = self.alpha / math.sqrt(rank)  # rank-stabilised s = α / √r (notes: Model)
        w = base.weight
        self.lora_A = nn.Parameter(torch.empty(rank, base.in_features, device=w.device, dtype=w.dtype))
        _init_down(self.lora_A)
        # Shared with the other CLoRA projections and owned by the model (apply_adapter attaches it to
        # the image tower), so it is kept out of this module's children: no duplicate state-dict keys.
        object.__setattr__(self, "_pool", pool)
        self.last_top1: torch.Tensor | None = None
        self.selection = selection
        self.seed = int(seed)
        self._generator: torch.Generator | None = None

    @property
    def pool(self) -> KnowledgePool:
        return self._pool

    def _random_classes(self, batch: int, device: torch.device) -> torch.Tensor:
        """r distinct classes per image, uniformly at random, from this layer's own seeded generator."""
        if self._generator is None or self._generator.device != device:
            self._generator = torch.Generator(device=device).manual_seed(self.seed)
        scores = torch.rand(batch, self.pool.num_classes, generator=self._generator, device=device)
        return scores.topk(self.rank, dim=-1).indices

    def select(self, x: torch.Tensor, pool_rows: torch.Tensor) -> torch.Tensor:
        """The class indices (batch, r) of each input of x (batch, tokens, in), by ``selection``. Top_r:
        no gradient, float32 even under autocast (a bf16 similarity could reorder near-equal classes)."""
        if self.selection == "fixed":
            return torch.arange(self.rank, device=x.device).expand(x.shape[0], self.rank)
        if self.selection == "random":
            return self._random_classes(x.shape[0], x.device)
        with torch.no_grad(), torch.autocast(device_type=x.device.type, enabled=False):
            # query: L2-normalised mean of the patch tokens (CLS at index 0 excluded)
            query = F.normalize(x[:, 1:].float().mean(dim=1), dim=-1)
            keys = F.normalize(pool_rows.detach().float(), dim=-1)
            similarity = query @ keys.t()  # cosine similarity with every class, (batch, C)
            return similarity.topk(self.rank, dim=-1).indices  # Top_r

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 3 or x.shape[1] < 2:
            raise ValueError(
                f"CLoRA expects batch-first tokens (batch, tokens >= 2, {self.in_features}) with the class "
                f"token at index 0, got shape {tuple(x.shape)}"
            )
        pool_rows = self._pool()  # F(K), (C, width); gradient flows to F
        top = self.select(x, pool_rows)
        self.last_top1 = top[:, 0]
        up = pool_rows[top].to(x.dtype)  # B_i: the selected rows of F(K), (batch, r, out)
        down = F.linear(x, self.lora_A.to(x.dtype))  # x Aᵀ, (batch, tokens, r)
        # CLoRA: W0 x + s · (x Aᵀ) B_i, one fused batched matmul-add for the whole batch
        base = self.base(x)
        return torch.baddbmm(base, down.to(base.dtype), up.to(base.dtype), alpha=self.scaling)

    def extra_repr(self) -> str:
        return (
            f"rank={self.rank}, alpha={self.alpha}, scaling={self.scaling:.4g}, selection={self.selection!r}"
        )


def _check_selection(selection: str) -> None:
    if selection not in SELECTIONS:
        raise ValueError(
            f"unknown selection {selection!r}: allowed selections are {', '.join(map(repr, SELECTIONS))}"
        )


def adapters(module: nn.Module) -> list[tuple[str, LoRALinear | CLoRALinear]]:
    """All LoRA/CLoRA layers under ``module``, with their qualified names."""
    return [(n, m) for n, m in module.named_modules() if isinstance(m, LoRALinear | CLoRALinear)]


def knowledge_pool(backbone) -> KnowledgePool | None:
    """The knowledge pool :func:`apply_adapter` attached to the image tower (None without CLoRA)."""
    pool = getattr(backbone.visual, "knowledge_pool", None)
    return pool if isinstance(pool, KnowledgePool) else None


def normalise_blocks(blocks: Iterable[int], num_blocks: int) -> list[int]:
    """Sorted, de-duplicated non-negative block indices; negative indices count from the end."""
    if isinstance(blocks, int):
        blocks = [blocks]
    blocks = list(blocks)
    if not blocks:
        raise ValueError(
            f"blocks is empty: give image-tower block indices in -{num_blocks}..{num_blocks - 1}"
        )
    out: list[int] = []
    for b in blocks:
        if isinstance(b, bool) or not isinstance(b, int) or not -num_blocks <= b < num_blocks:
            raise ValueError(
                f"block index {b!r} is out of range: the image tower has {num_blocks} blocks, allowed "
                f"indices are -{num_blocks}..{num_blocks - 1}"
            )
        b = b % num_blocks
        if b not in out:
            out.append(b)
    return sorted(out)


def normalise_targets(targets: Iterable[str]) -> list[str]:
    """Validated target names in q, k, v, o order."""
    if isinstance(targets, str):
        targets = [targets]
    targets = list(targets)
    allowed = ", ".join(repr(t) for t in TARGETS)
    if not targets:
        raise ValueError(f"targets is empty: choose from {allowed}")
    for t in targets:
        if t not in TARGETS:
            raise ValueError(f"unknown target {t!r}: allowed targets are {allowed}")
    return [t for t in TARGETS if t in targets]


def apply_adapter(
    backbone,
    kind: str,
    blocks: Sequence[int] = DEFAULT_BLOCKS,
    targets: Sequence[str] = DEFAULT_TARGETS,
    rank: int = DEFAULT_RANK,
    strength: float = DEFAULT_STRENGTH,
    knowledge: torch.Tensor | None = None,
    rank_stabilised: bool = True,
    selection: str = "topr",
    selection_seed: int | None = None,
) -> list[nn.Parameter]:
    """Insert LoRA or CLoRA adapters into the image tower of ``backbone``, in place.

    Parameters
    ----------
    backbone : a :class:`kalahash.backbones.Backbone` (split attention).
    kind : ``"lora"`` or ``"clora"``.
    blocks : image-tower block indices; negative counts from the end (default ``[-1]``, the last).
    targets : subset of ``{"q", "k", "v", "o"}`` (q_proj, k_proj, v_proj, out_proj); default k, v.
    rank : r; for CLoRA also the number of classes selected per image (1 ≤ r ≤ C).
    strength : α; the update is scaled by α/√r (CLoRA always; LoRA with ``rank_stabilised``) or α/r.
    knowledge : CLoRA only: the class-text knowledge K (C × embed).
    rank_stabilised : LoRA only; ``True`` (default) follows the release, which uses α/√r.
    selection : CLoRA only: ``"topr"`` (default, the paper), ``"random"`` or ``"fixed"``
        (:class:`CLoRALinear`). ``selection_seed`` seeds ``"random"``; None draws it from torch's global
        RNG (seeded runs stay reproducible). Every layer gets the same seed, so the projections of one
        block draw the same classes, as Top_r picks the same for their shared input.

    Returns
    -------
    The new trainable parameters (LoRA: each A and B; CLoRA: each A, then F's weight and bias).
    Everything else in the backbone is frozen. For CLoRA the shared :class:`KnowledgePool` is attached
    as ``backbone.visual.knowledge_pool`` (see :func:`knowledge_pool`) so a model holding the tower
    owns, saves and counts it once.
    """
    if kind not in ADAPTER_KINDS:
        raise ValueError(
            f"unknown adapter kind {kind!r}: allowed kinds are {', '.join(map(repr, ADAPTER_KINDS))}"
        )
    num_blocks = len(backbone.blocks)
    block_ids = normalise_blocks(blocks, num_blocks)
    target_names = normalise_targets(targets)
    _check_rank(rank)
    strength = float(strength)
    if not math.isfinite(strength):
        raise ValueError(f"strength must be a finite number, got {strength!r}")
    if kind == "lora" and knowledge is not None:
        raise ValueError("knowledge is only used by kind='clora'; pass knowledge=None for plain LoRA")
    _check_selection(selection)
    if kind == "lora" and selection != "topr":
        raise ValueError(f"selection={selection!r} is CLoRA's; plain LoRA selects nothing: use 'topr'")
    if kind == "clora":
        if knowledge is None:
            raise ValueError("kind='clora' needs knowledge: the class-text embeddings K (classes × embed)")
        if not rank_stabilised:
            raise ValueError(
                "CLoRA always scales by strength / sqrt(rank); rank_stabilised=False is LoRA-only"
            )
        if isinstance(knowledge, torch.Tensor) and knowledge.dim() == 2 and 0 < knowledge.shape[0] < rank:
            raise ValueError(
                f"rank {rank} exceeds the number of classes {knowledge.shape[0]}: CLoRA selects rank classes "
                f"per image, so rank must be in 1..{knowledge.shape[0]}"
            )
        if knowledge_pool(backbone) is not None:
            raise ValueError("this backbone already has a knowledge pool: load a fresh backbone")
    for b in block_ids:
        attn = backbone.blocks[b].attn
        for t in target_names:
            proj = getattr(attn, TARGETS[t], None)
            if not isinstance(proj, nn.Linear):
                raise ValueError(
                    f"block {b} {TARGETS[t]} is {type(proj).__name__}, not a plain nn.Linear: adapters were "
                    "already inserted; load a fresh backbone"
                )

    pool: KnowledgePool | None = None
    if kind == "clora":
        device = backbone.blocks[0].attn.q_proj.weight.device
        pool = KnowledgePool(knowledge, backbone.width).to(device)  # validates K before any change
    if selection == "random" and selection_seed is None:
        selection_seed = int(torch.randint(0, 2**31 - 1, ()).item())
    backbone.model.requires_grad_(False)
    params: list[nn.Parameter] = []
    for b in block_ids:
        attn = backbone.blocks[b].attn
        for t in target_names:
            base = getattr(attn, TARGETS[t])
            if kind == "lora":
                layer: nn.Module = LoRALinear(base, rank, strength, rank_stabilised=rank_stabilised)
                params += [layer.lora_A, layer.lora_B]
            else:
                layer = CLoRALinear(base, pool, rank, strength, selection, selection_seed or 0)
                params.append(layer.lora_A)
            setattr(attn, TARGETS[t], layer)
    if pool is not None:
        backbone.visual.knowledge_pool = pool
        params += list(pool.F.parameters())
    return params


def merge_lora(module: nn.Module) -> int:
    """Replace every :class:`LoRALinear` under ``module`` by its merged ``nn.Linear``; return how many.

    Raises ``ValueError`` if ``module`` holds CLoRA layers, which cannot be merged.
    """
    if any(isinstance(m, CLoRALinear) for m in module.modules()):
        raise ValueError("CLoRA cannot be merged: its update depends on each image's Top_r classes")
    count = 0
    for name, child in list(module.named_children()):
        if isinstance(child, LoRALinear):
            setattr(module, name, child.merge())
            count += 1
        else:
            count += merge_lora(child)
    return count
