"""Frozen CLIP backbones: one factory over open_clip names, tags, local files, our built-ins and SLIP.

The factory returns a :class:`Backbone` whose image tower has its fused attention split into
explicit q, k, v and out projections (:mod:`kalahash.towers`, where the towers' names live), so that
adapters (``kalahash.lora``) can wrap any of them.
"""

from __future__ import annotations

import contextlib
import difflib
import hashlib
import logging
import os
import re
import socket
import warnings
import zipfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import open_clip
import torch
from torch import nn

from . import slip
from .prompts import CLASS_PROMPT
from .towers import ImageTower, image_tower, split_attention, split_timm_attention

__all__ = [
    "BUILTIN_WEIGHTS",
    "MODEL_CONFIG_DIR",
    "RANDOM",
    "WEIGHTS_DIR",
    "Backbone",
    "CompactTokenEmbedding",
    "UnknownWordsWarning",
    "WeightsUnavailableError",
    "available_models",
    "expand_compact_state",
    "load_backbone",
    "parameter_count",
    "state_fingerprint",
]

MODEL_CONFIG_DIR = Path(__file__).parent / "model_configs"
WEIGHTS_DIR = Path(__file__).parent / "weights"

open_clip.add_model_config(MODEL_CONFIG_DIR)

# Built-in pre-trained models that ship with the package: name -> (open_clip config, weights file).
# tiny-objects-{s,m,l}: a family of increasing size pre-trained the same way on kalahash.worlds.objects10.
BUILTIN_WEIGHTS: dict[str, tuple[str, Path]] = {
    name: (name, WEIGHTS_DIR / f"{name}.safetensors")
    for name in ("tiny-shapes", "tiny-objects-s", "tiny-objects-m", "tiny-objects-l")
}
# Compact checkpoints store only the token-embedding rows a world's vocabulary uses, and their ids.
COMPACT_ROWS, COMPACT_IDS = "token_embedding.rows", "token_embedding.ids"
RANDOM = "random"
_CHECKPOINT_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors", ".ckpt")


class UnknownWordsWarning(UserWarning):
    """Class prompts use words a built-in tiny CLIP never learned: their text embeddings carry no meaning."""


class CompactTokenEmbedding(nn.Module):
    """A token embedding that holds only the rows of ``ids``, for pre-training on a closed vocabulary.

    A tiny CLIP's full table (49,408 rows) is most of its parameters, yet a world's captions use a few
    dozen tokens: training and storing just those rows saves time and space. Its state dict is the
    compact checkpoint format (``token_embedding.rows`` and ``.ids``); :func:`expand_compact_state`
    rebuilds the full table from it.
    """

    def __init__(self, full: nn.Embedding, ids: torch.Tensor) -> None:
        super().__init__()
        ids = torch.unique(ids.to(torch.long))  # sorted: the end-of-text token stays the largest id
        if ids.numel() == 0 or int(ids[-1]) >= full.num_embeddings or int(ids[0]) < 0:
            raise ValueError(f"ids must be token ids in [0, {full.num_embeddings}), got {ids.tolist()[:8]}")
        self.rows = nn.Parameter(full.weight.detach()[ids].clone())
        self.register_buffer("ids", ids)
        lookup = torch.full((full.num_embeddings,), -1, dtype=torch.long)
        lookup[ids] = torch.arange(len(ids))
        self.register_buffer("lookup", lookup, persistent=False)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        index = self.lookup[tokens]
        if bool((index < 0).any()):
            unknown = sorted(set(tokens[index < 0].tolist()))[:8]
            raise ValueError(f"token ids {unknown} are outside this compact vocabulary")
        return self.rows[index]


def expand_compact_state(state: Mapping[str, torch.Tensor], num_embeddings: int) -> dict[str, torch.Tensor]:
    """A compact state dict with the full ``token_embedding.weight`` rebuilt: the stored rows at their
    ids, zeros elsewhere (so text of the world's vocabulary encodes exactly as it did in training)."""
    state = dict(state)
    rows, ids = state.pop(COMPACT_ROWS), state.pop(COMPACT_IDS).to(torch.long)
    full = rows.new_zeros((num_embeddings, rows.shape[1]))
    full[ids] = rows
    state["token_embedding.weight"] = full
    return state


def _read_compact(path: Path) -> dict[str, torch.Tensor] | None:
    """The tensors of a compact ``.safetensors`` checkpoint, None for any other file."""
    if path.suffix != ".safetensors":
        return None
    from safetensors import safe_open

    with safe_open(path, "pt") as f:
        keys = list(f.keys())  # a safe_open handle supports neither `in` nor iteration
        return {k: f.get_tensor(k) for k in keys} if COMPACT_IDS in keys else None


def state_fingerprint(state: nn.Module | Mapping[str, torch.Tensor]) -> str:
    """A short hash of a module's parameters and buffers (or of named tensors), to tie results and
    checkpoints to exact weights."""
    tensors = state.state_dict() if isinstance(state, nn.Module) else state
    digest = hashlib.sha256()
    for name, tensor in sorted(tensors.items()):
        digest.update(name.encode())
        digest.update(str(tuple(tensor.shape)).encode())
        digest.update(tensor.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


@dataclass
class Backbone:
    """A CLIP model ready for adaptation: image tower (split attention), text tower, tokenizer, preprocess."""

    name: str
    pretrained: str
    model: nn.Module
    tokenizer: Callable[..., torch.Tensor]
    preprocess: Callable[[Any], torch.Tensor]
    embed_dim: int
    width: int
    fingerprint: str
    vocabulary: frozenset[int] | None = None  # token ids with trained rows (compact weights); None: all
    _knowledge_cache: dict = field(default_factory=dict, repr=False)

    @property
    def visual(self) -> nn.Module:
        return self.model.visual

    @property
    def tower(self) -> ImageTower:
        return image_tower(self.model.visual)

    @property
    def blocks(self) -> nn.Module:
        return self.tower.blocks

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def image_size(self) -> tuple[int, int]:
        return tuple(self.model.visual.image_size)

    @torch.no_grad()
    def text_knowledge(self, classnames: list[str], template: str = CLASS_PROMPT) -> torch.Tensor:
        """Class-text knowledge K (C x embed): raw ``encode_text`` of prompts, unnormalised (notes: Model)."""
        if not classnames:
            raise ValueError("classnames is empty: give at least one class name")
        if "{}" not in template:
            raise ValueError(f"template must contain '{{}}' for the class name, got {template!r}")
        key = (tuple(classnames), template)
        if key not in self._knowledge_cache:
            tokens = self.tokenizer([template.format(c) for c in classnames]).to(self.device)
            was_training = self.model.training
            self.model.eval()
            self._knowledge_cache[key] = self.model.encode_text(tokens).float()
            self.model.train(was_training)
        return self._knowledge_cache[key].clone()

    def unknown_words(self, texts: Sequence[str]) -> list[str]:
        """The words of ``texts`` this model has no trained token rows for (a built-in tiny CLIP knows
        only its world's caption vocabulary; the rest of its table is zeros), in order of appearance."""
        if self.vocabulary is None:
            return []
        words = dict.fromkeys(w for text in texts for w in re.findall(r"[^\W_]+|[^\w\s]", text.lower()))
        encode = getattr(self.tokenizer, "encode", None)
        if encode is None:
            return []
        return [w for w in words if not set(encode(w)) <= self.vocabulary]

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        """Raw projected CLS features (not normalised), as the hash head sees them."""
        return self.model.encode_image(images)


def _close_matches(name: str, choices: list[str]) -> str:
    close = difflib.get_close_matches(name, choices, n=5, cutoff=0.5)
    return f" Close matches: {', '.join(close)}." if close else ""


def _unknown_backbone(name: str, models: list[str]) -> str:
    return (
        f"unknown backbone {name!r}.{_close_matches(name, models)} Built in: {', '.join(BUILTIN_WEIGHTS)}, "
        f"{', '.join(slip.SLIP_MODELS)}; open_clip's models, e.g. ViT-B-32, ViT-B-16, ViT-L-14 (from Python, "
        "kalahash.backbones.available_models lists them all)."
    )


def available_models() -> list[str]:
    return sorted(set(open_clip.list_models()) | set(BUILTIN_WEIGHTS) | set(slip.SLIP_MODELS))


def _looks_like_path(pretrained: str) -> bool:
    return os.sep in pretrained or pretrained.endswith(_CHECKPOINT_SUFFIXES) or Path(pretrained).exists()


def _check_checkpoint(path: Path) -> None:
    if not path.is_file():
        raise FileNotFoundError(
            f"checkpoint file {str(path)!r} does not exist. Pass the path of a CLIP weights file "
            "(.pt, .bin or .safetensors) or an open_clip pretrained tag."
        )
    if path.stat().st_size == 0:
        raise ValueError(f"checkpoint file {str(path)!r} is empty (0 bytes): download it again")


def _check_weights_only(path: Path, name: str) -> None:
    """Read a local weights file with torch's weights-only unpickler before open_clip does: open_clip
    retries a load that raised TypeError with torch's default reader, which a crafted file can make raise
    and which ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1`` turns into a full unpickle (it runs code). A file
    refused here is never unpickled by anything else. safetensors and numpy files hold no pickle."""
    if path.suffix in (".safetensors", ".npz", ".npy"):
        return
    try:  # memory-mapped when it is a zip: tensors are not read twice
        torch.load(path, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(path))
    except Exception as err:  # re-raised with what to do; the cause stays chained
        raise ValueError(
            f"could not load checkpoint {str(path)!r} for {name!r}: kalahash reads weights files with torch's "
            "weights-only unpickler, which runs nothing a file holds, and this file is not one it accepts "
            f"(corrupt, TorchScript, or holding other objects; {type(err).__name__}). Pass a state dict saved "
            "with torch.save or a .safetensors file."
        ) from err


class WeightsUnavailableError(ConnectionError):
    """The pretrained weights of a tag are not in the local cache and cannot be downloaded from here."""


def _weights_source(config: str, tag: str) -> tuple[str, str, str | None]:
    """Where open_clip would fetch a tag's weights (host, download address, cached file or None), the
    Hugging Face hub first, as open_clip prefers it."""
    from urllib.parse import urlparse

    cfg = open_clip.get_pretrained_cfg(config, tag)
    hub = cfg.get("hf_hub") if open_clip.pretrained.has_hf_hub() else None
    if hub:
        import huggingface_hub
        from huggingface_hub import constants

        repo, name = os.path.split(hub)
        names = [name] if name else ["open_clip_model.safetensors", "open_clip_pytorch_model.bin"]
        cached = (huggingface_hub.try_to_load_from_cache(repo, n) for n in names)
        found = next((c for c in cached if isinstance(c, str)), None)
        return (
            urlparse(constants.ENDPOINT).netloc,
            f"{constants.ENDPOINT}/{repo}/resolve/main/{names[-1]}",
            found,
        )
    url = cfg.get("url", "")
    cached = Path("~/.cache/clip").expanduser() / os.path.basename(url)  # open_clip's URL cache
    return urlparse(url).netloc, url, str(cached) if url and cached.is_file() else None


def _check_weights_reachable(name: str, config: str, tag: str) -> None:
    """Refuse at once, in one line, a tag whose weights are neither cached nor downloadable (offline),
    instead of a minute of download retries and chained tracebacks."""
    from urllib.request import getproxies

    from huggingface_hub import constants

    host, url, cached = _weights_source(config, tag)
    if cached is not None or not host:
        return
    if constants.HF_HUB_OFFLINE and url.startswith(constants.ENDPOINT):
        reason = "HF_HUB_OFFLINE is set"
    elif "https" in getproxies():  # through a proxy only the download itself can tell
        return
    else:
        name_part, _, port = host.partition(":")
        try:
            socket.create_connection((name_part, int(port or 443)), timeout=5).close()
            return
        except OSError as err:
            reason = f"{host} cannot be reached ({err})"
    raise WeightsUnavailableError(_unavailable_message(name, tag, url, reason))


def _unavailable_message(name: str, tag: str, url: str, reason: str) -> str:
    file = os.path.basename(url) or "weights.bin"
    return (
        f"cannot fetch the pretrained weights {tag!r} of {name!r}: {reason}, and they are not in the local "
        f"cache. On a machine with internet download {url}, copy it here and pass the file: "
        f"pretrained='/path/to/{file}' (CLI: --pretrained /path/to/{file})"
    )


def load_backbone(
    name: str,
    pretrained: str | os.PathLike | None = None,
    device: str | torch.device | None = None,
) -> Backbone:
    """Build a CLIP backbone by open_clip name with a tag, a local checkpoint, or random weights.

    Parameters
    ----------
    name : an open_clip model name (``"ViT-B-32"``), our test config ``"tiny"``, a built-in
        pre-trained model (``"tiny-shapes"``, ``"tiny-objects-s"``, ``-m``, ``-l``: shipped weights) or a
        SLIP model (``"SLIP-ViT-S-16"``, weights from a local SLIP checkpoint file).
        ``available_models()`` lists them.
    pretrained : an open_clip tag (``"openai"``), a path to a weights file, or ``None``: random
        weights for an open_clip name, the shipped weights for a built-in. ``"random"`` forces random.
    device : where to put the model; CPU by default.

    Returns
    -------
    Backbone, in eval mode, every parameter frozen, image-tower attention split into q/k/v/out.
    """
    models = available_models()
    if name not in models:
        raise ValueError(_unknown_backbone(name, models))
    if name in slip.SLIP_MODELS:
        return _load_slip_backbone(name, pretrained, device)
    tag: str | None = None if pretrained is None else os.fspath(pretrained)
    config = name
    if name in BUILTIN_WEIGHTS and tag is None:
        config, weights = BUILTIN_WEIGHTS[name]
        if not weights.is_file():
            raise FileNotFoundError(
                f"the built-in weights of {name!r} are missing ({weights}); reinstall kalahash or "
                "recreate them with `kalahash pretrain-tiny`"
            )
        tag = str(weights)
    if tag == RANDOM:
        tag = None

    kwargs: dict[str, Any] = {}
    if tag is not None and _looks_like_path(tag):
        _check_checkpoint(Path(tag))
        _check_weights_only(Path(tag), name)
    elif tag is not None:
        tags = open_clip.list_pretrained_tags_by_model(config)
        if tag not in tags:
            known = ", ".join(tags) if tags else "none (use a local weights file or pretrained=None)"
            raise ValueError(
                f"unknown pretrained tag {tag!r} for {name!r}.{_close_matches(tag, tags)} Known tags: {known}"
            )
        if open_clip.get_pretrained_cfg(config, tag).get("quick_gelu"):
            kwargs["force_quick_gelu"] = True
        _check_weights_reachable(name, config, tag)

    try:
        compact = _read_compact(Path(tag)) if tag is not None and _looks_like_path(tag) else None
        # open_clip's "no pretrained weights loaded" is untrue for compact weights, loaded right after
        quiet = _quiet_root_logger() if compact is not None else contextlib.nullcontext()
        with warnings.catch_warnings(), quiet:
            warnings.filterwarnings("ignore", message=".*QuickGELU mismatch.*")
            model, _, preprocess = open_clip.create_model_and_transforms(
                config, pretrained=None if compact is not None else tag, device=device, **kwargs
            )
        if compact is not None:
            model.load_state_dict(expand_compact_state(compact, model.token_embedding.num_embeddings))
    except Exception as err:  # re-raised below with what to do; the cause stays chained
        if tag is not None and _looks_like_path(tag):
            raise ValueError(
                f"could not load checkpoint {tag!r} for {name!r}: the file is corrupt or does not hold "
                f"weights of this architecture ({type(err).__name__}: {err}). Download it again or check "
                "the model name."
            ) from err
        if tag is not None:
            _, url, _ = _weights_source(config, tag)
            reason = f"the download failed ({type(err).__name__})"
            raise WeightsUnavailableError(_unavailable_message(name, tag, url, reason)) from err
        raise
    fingerprint = state_fingerprint(model)  # of the weights as open_clip stores them, before the split
    if split_attention(model.visual) == 0:
        raise ValueError(f"{name!r} has no ViT attention to adapt; kalahash needs a ViT image tower")
    model.eval().requires_grad_(False)
    tokenizer = open_clip.get_tokenizer(config)
    transformer = model.visual.transformer
    return Backbone(
        name=name,
        pretrained=RANDOM if tag is None else (str(Path(tag).name) if _looks_like_path(tag) else tag),
        model=model,
        tokenizer=tokenizer,
        preprocess=preprocess,
        embed_dim=model.visual.output_dim,
        width=transformer.width,
        fingerprint=fingerprint,
        vocabulary=None if compact is None else frozenset(compact[COMPACT_IDS].tolist()),
    )


def _load_slip_backbone(name: str, pretrained: str | os.PathLike | None, device: Any) -> Backbone:
    """A SLIP model (:mod:`kalahash.slip`): random weights, or a local SLIP checkpoint file."""
    config = slip.SLIP_MODELS[name]
    path = None if pretrained is None or os.fspath(pretrained) == RANDOM else Path(pretrained)
    if path is not None and not _looks_like_path(str(path)):
        example = config.files[0] if config.files else "slip_small_100ep.pt"
        raise ValueError(
            f"{name!r} loads its weights from a local SLIP checkpoint file, not a tag ({str(path)!r}). "
            f"Download one (e.g. {slip.DOWNLOAD_URL.format(file=example)}) and pass its path: "
            f"pretrained='/path/to/{example}' (CLI: --pretrained /path/to/{example})."
        )
    if path is not None:
        _check_checkpoint(path)
    model = slip.build_slip_model(config)
    if path is not None:
        slip.load_slip_weights(model, path, name)
    if device is not None:
        model = model.to(device)
    fingerprint = state_fingerprint(model)  # of the weights as loaded, before the split
    split_timm_attention(model.visual)
    model.eval().requires_grad_(False)
    return Backbone(
        name=name,
        pretrained=RANDOM if path is None else path.name,
        model=model,
        tokenizer=slip.slip_tokenizer(config),
        preprocess=slip.slip_preprocess(config),
        embed_dim=config.embed_dim,
        width=config.width,
        fingerprint=fingerprint,
    )


@contextmanager
def _quiet_root_logger() -> Iterator[None]:
    """Hide open_clip's "no pretrained weights loaded" warning: building without weights is the point."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)


def parameter_count(name: str) -> int:
    """Parameters of a backbone's whole CLIP model (image and text towers), as open_clip counts them.

    Built on the meta device (shapes only, no memory, no download), so it is cheap for any size; equal
    to ``sum(p.numel() for p in load_backbone(name).model.parameters())``.
    """
    models = available_models()
    if name not in models:
        raise ValueError(_unknown_backbone(name, models))
    if name in slip.SLIP_MODELS:
        model = slip.build_slip_model(slip.SLIP_MODELS[name], device="meta")
    else:
        config = BUILTIN_WEIGHTS[name][0] if name in BUILTIN_WEIGHTS else name
        with _quiet_root_logger(), torch.device("meta"):  # the context skips the random init on the CPU
            model = open_clip.create_model(config, device="meta")
    return sum(p.numel() for p in model.parameters())
