"""Per-setting hyperparameters: the released ones where they exist, ours (marked) elsewhere.

The release tuned CLoRA's rank r and strength α and KIDDO's loss weights per data set and shot count,
for 16 bits on CLIP ViT-B/32 (notes: Released hyperparameters). Every other setting the notebooks use
gets the values of the nearest released shot count, and says so in ``source``. An offline world's sets
borrow the values of the paper data set their spec names (:class:`kalahash.worlds.WorldSpec`). A data
set the release has no setting for (a user's own) gets the release's defaults, marked ``release defaults``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .hashing.kiddo import DEFAULT_ALPHA, DEFAULT_BETA, DEFAULT_GAMMA
from .lora import DEFAULT_RANK, DEFAULT_STRENGTH
from .worlds import WORLDS, world_of

RELEASED_SHOTS = (1, 2, 4, 8)
PRESET_SHOTS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 500)
PRESET_BITS = (16, 32, 64)

# dataset -> per released shot count: (rank r, strength α, KIDDO ALPHA, BETA, GAMMA)
_RELEASED: dict[str, dict[int, tuple[int, float, float, float, float]]] = {
    "cifar10": {
        1: (1, 1.0, 0.1, 1.0, 3.0),
        2: (4, 0.3, 0.1, 0.1, 4.0),
        4: (1, 0.1, 0.01, 0.01, 2.0),
        8: (4, 0.2, 0.01, 0.1, 1.0),
    },
    "coco": {
        1: (1, 0.8, 0.001, 1.0, 1.0),
        2: (4, 0.8, 0.001, 1.0, 1.0),
        4: (2, 0.3, 0.001, 0.1, 1.0),
        8: (2, 0.8, 0.001, 1.0, 1.0),
    },
    "nuswide": {
        1: (1, 0.9, 0.01, 3.0, 2.0),
        2: (1, 0.4, 0.001, 1.0, 2.0),
        4: (4, 0.2, 0.001, 0.1, 1.0),
        8: (8, 0.4, 0.001, 1.0, 2.0),
    },
}
# The backbone the release tuned on (open_clip name, pretrained tag): only runs on it are "released".
RELEASED_BACKBONE = ("ViT-B-32", "openai")
# Plain LoRA baseline: the release's default model config before per-setting overrides (the adapters'
# defaults, kalahash.lora).
LORA_BASELINE = {"rank": DEFAULT_RANK, "strength": DEFAULT_STRENGTH}
# For data sets the release has no setting for (a user's own): that default config and the paper's
# default loss weights (KIDDO's defaults, kalahash.hashing.kiddo).
RELEASE_DEFAULTS = {
    **LORA_BASELINE,
    "kiddo_alpha": DEFAULT_ALPHA,
    "kiddo_beta": DEFAULT_BETA,
    "kiddo_gamma": DEFAULT_GAMMA,
}
DEFAULTS_SOURCE = "release defaults"


@dataclass(frozen=True)
class Preset:
    dataset: str
    shots: int
    bits: int
    hparams: dict = field(hash=False)
    source: str

    @property
    def released(self) -> bool:
        return self.source == "released"

    @property
    def defaults(self) -> bool:
        """Whether these are the release's defaults, not a per-setting preset."""
        return self.source.startswith(DEFAULTS_SOURCE)


def _borrowed(dataset: str) -> str:
    """The data set whose released values ``dataset`` uses: the paper's one an offline world's set
    imitates (its spec's ``borrows``), else itself."""
    world = world_of(dataset)
    return dataset if world is None else world.borrows[dataset]


def _nearest_released(shots: int) -> int:
    return min(RELEASED_SHOTS, key=lambda s: (abs(s - shots), s))


def preset(dataset: str, shots: int, bits: int, backbone: tuple[str, str | None] | None = None) -> Preset:
    """Hyperparameters of ``kalahash`` (CLoRA + KIDDO) for one setting, with where they come from.

    ``backbone`` (name, pretrained) is the run's: values are ``released`` only on
    :data:`RELEASED_BACKBONE` (None: the backbone is not part of the question)."""
    base = _borrowed(dataset)
    if base not in _RELEASED:
        known = ", ".join(sorted([*_RELEASED, *_world_sets()]))
        raise ValueError(f"no presets for dataset {dataset!r}; presets exist for: {known}")
    if not isinstance(shots, int) or shots <= 0:
        raise ValueError(f"shots must be a positive integer, got {shots!r}")
    if not isinstance(bits, int) or bits <= 0:
        raise ValueError(f"bits must be a positive integer, got {bits!r}")
    near = _nearest_released(shots)
    rank, strength, alpha, beta, gamma = _RELEASED[base][near]
    hparams = {
        "rank": rank,
        "strength": strength,
        "kiddo_alpha": alpha,
        "kiddo_beta": beta,
        "kiddo_gamma": gamma,
    }
    reasons = []
    if base != dataset:
        reasons.append(f"borrowed from {base}")
    if shots != near:
        reasons.append(f"values of the released {near}-shot setting")
    if bits != 16:
        reasons.append("released values are for 16 bits")
    if backbone is not None and tuple(backbone) != RELEASED_BACKBONE:
        name, pretrained = backbone
        reasons.append(
            f"released for CLIP {RELEASED_BACKBONE[0]} ({RELEASED_BACKBONE[1]}), used with {name}"
            + (f" ({pretrained})" if pretrained else "")
        )
    source = "ours: " + "; ".join(reasons) if reasons else "released"
    return Preset(dataset, shots, bits, hparams, source)


def setting_hparams(
    dataset: str, shots: int, bits: int, backbone: tuple[str, str | None] | None = None
) -> Preset:
    """The preset of a setting (on ``backbone``, see :func:`preset`); for a data set without presets,
    the release's defaults, marked so."""
    if _borrowed(dataset) in _RELEASED:
        return preset(dataset, shots, bits, backbone)
    source = f"{DEFAULTS_SOURCE} (no released setting for {dataset!r})"
    return Preset(dataset, shots, bits, dict(RELEASE_DEFAULTS), source)


def _world_sets() -> list[str]:
    return [name for spec in WORLDS.values() for name in spec.borrows]


def preset_table() -> list[Preset]:
    """Every preset the notebooks use: data sets x shots x bits."""
    return [preset(d, s, b) for d in [*_RELEASED, *_world_sets()] for s in PRESET_SHOTS for b in PRESET_BITS]
