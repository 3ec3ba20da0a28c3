"""Pre-training of the built-in tiny CLIPs on the offline worlds.

``pretrain_tiny`` trains a registered open_clip config (``tiny-shapes`` on the ``shapes`` world, the
family ``tiny-objects-s/m/l`` on ``objects10``) from random weights with the CLIP contrastive loss on
a world's captioned pre-training pool, then ships the whole model (the text tower too: KALAHash needs
class-text knowledge) as fp16 safetensors next to a provenance JSON. Worlds that declare their
vocabulary train and store only the token-embedding rows it uses (``CompactTokenEmbedding``).
With ``evaluate``, the provenance records :func:`~kalahash.worlds.evaluation.knowledge_report` of the
saved and of a random model: the knowledge is real when the first is far above chance and the second
near it.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import math
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import open_clip
import torch
from torch import nn

from kalahash.backbones import BUILTIN_WEIGHTS, CompactTokenEmbedding, load_backbone
from kalahash.fileio import atomic_write, atomic_write_text

from .evaluation import images_to_tensor, knowledge_report
from .toolkit import WORLDS, WorldSpec, family_text, world_spec

CONFIG = "tiny-shapes"  # the default config
DEFAULT_STEPS = 2000
_CHUNK_STEPS = 50  # pool images are generated this many steps ahead


def _param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Weight decay on matrices only (not gains, biases, embeddings or the logit scale), as CLIP does."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if p.ndim < 2 or "embedding" in name or "logit_scale" in name or name.endswith("class_embedding"):
            no_decay.append(p)
        else:
            decay.append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def _lr_at(step: int, steps: int, lr: float, warmup: int) -> float:
    """Linear warm-up then cosine decay to zero."""
    if step < warmup:
        return lr * (step + 1) / warmup
    progress = (step - warmup) / max(1, steps - warmup)
    return 0.5 * lr * (1.0 + math.cos(math.pi * progress))


def _save_fp16_atomic(model: nn.Module, output: Path, config: str) -> None:
    """Floating tensors as fp16 (integer buffers, such as compact token ids, as they are)."""
    from safetensors.torch import save_file

    state = {
        k: (v.to(torch.float16) if v.is_floating_point() else v).detach().cpu().contiguous()
        for k, v in model.state_dict().items()
    }
    atomic_write(output, lambda tmp: save_file(state, tmp, metadata={"format": "pt", "config": config}))


def _write_json_atomic(data: dict[str, Any], path: Path) -> None:
    atomic_write_text(path, json.dumps(data, indent=2) + "\n")


def vocabulary_ids(tokenizer: Any, words: tuple[str, ...]) -> torch.Tensor:
    """Sorted token ids of ``words`` plus padding (0), start- and end-of-text: every token that a
    caption made of these words can produce, the rows a compact token embedding keeps."""
    ids = {0, tokenizer.sot_token_id, tokenizer.eot_token_id}
    for word in words:
        ids.update(tokenizer.encode(word))
    return torch.tensor(sorted(ids), dtype=torch.long)


def config_world(config: str) -> str | None:
    """The world a built-in config is pre-trained on: the one whose spec lists it (None: no world's)."""
    return next((spec.name for spec in WORLDS.values() if config in spec.backbones), None)


def _resolve(config: str, world: str | None, output: str | Path | None) -> tuple[str, Path]:
    """The world and output file of a call: a built-in config's own unless given."""
    if config not in open_clip.list_models():
        known = ", ".join(b for spec in WORLDS.values() for b in spec.backbones)
        raise ValueError(f"config must be an open_clip model config (built-ins: {known}), got {config!r}")
    if world is None:
        world = config_world(config)
        if world is None:
            raise ValueError(
                f"config {config!r} has no default world: pass world= (CLI: --world) one of {', '.join(WORLDS)}"
            )
    world_spec(world)
    if output is None:
        if config not in BUILTIN_WEIGHTS:
            raise ValueError(
                f"config {config!r} is not a built-in: pass output= (CLI: --out) a .safetensors file"
            )
        output = BUILTIN_WEIGHTS[config][1]
    output = Path(output)
    if output.suffix != ".safetensors":
        raise ValueError(f"output= (CLI: --out) must end in .safetensors, got {str(output)!r}")
    if not output.parent.is_dir():
        raise FileNotFoundError(f"output folder {str(output.parent)!r} does not exist: create it first")
    return world, output


def _build(config: str, seed: int, spec: WorldSpec) -> tuple[nn.Module, Any]:
    """A random-init model of ``config`` (seeded) and its tokenizer; compact token rows if the world
    declares its vocabulary (the other rows never get a gradient: nothing is lost)."""
    torch.manual_seed(seed)
    model = open_clip.create_model(config, pretrained=None)
    tokenizer = open_clip.get_tokenizer(config)
    if spec.words is not None:
        model.token_embedding = CompactTokenEmbedding(
            model.token_embedding, vocabulary_ids(tokenizer, spec.words)
        )
    return model.train(), tokenizer


def _train(
    model: nn.Module, tokenizer: Any, spec: WorldSpec, seed: int, steps: int, batch_size: int,
    lr: float, weight_decay: float, warmup: int, progress: bool, desc: str,
) -> list[float]:  # fmt: skip
    """CLIP InfoNCE with AdamW, warm-up and cosine decay; fresh pool images every step. Returns losses."""
    from tqdm import tqdm

    loss_fn = open_clip.ClipLoss()
    optimizer = torch.optim.AdamW(_param_groups(model, weight_decay), lr=lr, betas=(0.9, 0.98), eps=1e-6)
    token_cache: dict[str, torch.Tensor] = {}

    def tokens(captions: list[str]) -> torch.Tensor:
        missing = [c for c in dict.fromkeys(captions) if c not in token_cache]
        if missing:
            token_cache.update(zip(missing, tokenizer(missing), strict=True))
        return torch.stack([token_cache[c] for c in captions])

    losses: list[float] = []
    bar = tqdm(range(steps), desc=desc, disable=not progress, mininterval=2.0)
    chunk_images: np.ndarray | None = None
    chunk_captions: list[str] = []
    for step in bar:
        k = step % _CHUNK_STEPS
        if k == 0:  # each step sees new pool images: images step*batch .. (step+1)*batch-1
            chunk = min(_CHUNK_STEPS, steps - step) * batch_size
            chunk_images, chunk_captions = spec.caption_pool(chunk, seed=seed, start=step * batch_size)
        assert chunk_images is not None
        images = images_to_tensor(chunk_images[k * batch_size : (k + 1) * batch_size])
        texts = tokens(chunk_captions[k * batch_size : (k + 1) * batch_size])
        for group in optimizer.param_groups:
            group["lr"] = _lr_at(step, steps, lr, warmup)
        image_features = model.encode_image(images, normalize=True)
        text_features = model.encode_text(texts, normalize=True)
        loss = loss_fn(image_features, text_features, model.logit_scale.exp())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, math.log(100))
        losses.append(float(loss.detach()))
        if step % 20 == 0 or step == steps - 1:
            bar.set_postfix(
                loss=f"{np.mean(losses[-20:]):.3f}", scale=f"{model.logit_scale.exp().item():.1f}"
            )
    return losses


def pretrain_tiny(
    output: str | Path | None = None,
    seed: int = 0,
    steps: int = DEFAULT_STEPS,
    batch_size: int = 128,
    lr: float = 1e-3,
    weight_decay: float = 0.1,
    warmup: int = 100,
    threads: int | None = None,
    progress: bool = True,
    evaluate: bool = True,
    config: str = CONFIG,
    world: str | None = None,
) -> dict[str, Any]:
    """Contrastively pre-train a tiny CLIP on an offline world and save it (fp16 safetensors).

    Parameters
    ----------
    output : the weights file to write (``.safetensors``); the provenance goes next to it as ``.json``.
        Default: the file ``load_backbone(config)`` loads (built-in configs only).
    seed : seeds the random initialisation and picks the pre-training pool (``caption_pool(..., seed)``).
    steps, batch_size : optimisation steps and image-caption pairs a step (fresh pool images each step).
    lr, weight_decay, warmup : AdamW with linear warm-up and cosine decay to zero.
    threads : torch CPU threads (default: torch's choice; 1 is fastest on a busy machine).
    evaluate : measure zero-shot, linear-probe knowledge and K's shape of the saved and of a random model.
    config : the open_clip model config (``tiny-shapes``, ``tiny-objects-s``, ``-m``, ``-l``).
    world : a registered world (:data:`kalahash.worlds.WORLDS`); default: the built-in config's
        (:func:`config_world`).

    Returns
    -------
    The provenance dict written to ``output`` with suffix ``.json``.

    Examples
    --------
    >>> pretrain_tiny("/tmp/tiny.safetensors", steps=20)  # doctest: +SKIP
    >>> pretrain_tiny(config="tiny-objects-m", steps=1500, threads=1)  # doctest: +SKIP
    """
    torch.set_flush_denormal(True)  # without it CPU steps are ~10x slower (offline-world notes)
    world, output = _resolve(config, world, output)
    for arg, value in (("steps", steps), ("batch_size", batch_size)):
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{arg} must be a positive int, got {value!r}")
    if seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    if not lr > 0:
        raise ValueError(f"lr must be > 0, got {lr!r}")
    if threads is not None:
        torch.set_num_threads(threads)
    spec = world_spec(world)

    started = dt.datetime.now(dt.timezone.utc)
    load_before = os.getloadavg()
    t0, cpu0 = time.perf_counter(), time.process_time()
    model, tokenizer = _build(config, seed, spec)
    losses = _train(
        model,
        tokenizer,
        spec,
        seed,
        steps,
        batch_size,
        lr,
        weight_decay,
        warmup,
        progress,
        f"pretrain {config}",
    )
    train_seconds, train_cpu = time.perf_counter() - t0, time.process_time() - cpu0
    model.eval()
    _save_fp16_atomic(model, output, config)
    full_params = sum(p.numel() for p in open_clip.create_model(config, pretrained=None).parameters())

    provenance: dict[str, Any] = {
        "model": config,
        "world": world,
        "weights": output.name,
        "sha256": hashlib.sha256(output.read_bytes()).hexdigest(),
        "bytes": output.stat().st_size,
        "dtype": "float16",
        "parameters": full_params,
        "stored_parameters": sum(p.numel() for p in model.parameters()),
        "compact_vocabulary": spec.words is not None,
        "image_blocks": len(model.visual.transformer.resblocks),
        "seed": seed,
        "steps": steps,
        "batch_size": batch_size,
        "lr": lr,
        "weight_decay": weight_decay,
        "warmup": warmup,
        "images_seen": steps * batch_size,
        "pool": f"the first {steps * batch_size} images of {spec.module}.caption_pool(n, seed={seed})",
        "final_loss": float(np.mean(losses[-50:])),
        "train_wall_seconds": round(train_seconds, 1),
        "train_cpu_seconds": round(train_cpu, 1),
        "load_average_before_after": [round(load_before[0], 2), round(os.getloadavg()[0], 2)],
        "machine_note": "shared machine: wall time includes waiting for other jobs; CPU time does not",
        "started_utc": started.isoformat(timespec="seconds"),
        "call": (
            f"kalahash.worlds.pretrain.pretrain_tiny(output={output.name!r}, seed={seed}, steps={steps}, "
            f"batch_size={batch_size}, lr={lr}, weight_decay={weight_decay}, warmup={warmup}, "
            f"threads={threads}, config={config!r}, world={world!r})"
        ),
        "argv": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]) if sys.argv and sys.argv[0] else "",
        "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "versions": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "open_clip": open_clip.__version__,
            "numpy": np.__version__,
        },
    }
    if evaluate:
        trained = load_backbone(config, pretrained=output)  # exactly what ships: fp16, split attention
        torch.manual_seed(seed)
        random_init = load_backbone(config, pretrained="random")
        provenance["knowledge"] = {
            "trained": knowledge_report(trained, seed, world),
            "random_init": knowledge_report(random_init, seed, world),
        }
    provenance["total_wall_seconds"] = round(time.perf_counter() - t0, 1)
    provenance["total_cpu_seconds"] = round(time.process_time() - cpu0, 1)
    _write_json_atomic(provenance, output.with_suffix(".json"))
    return provenance


def add_pretrain_tiny_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Arguments of ``kalahash pretrain-tiny``; ``pretrain_tiny(**vars(args))`` takes them as parsed
    (drop any keys the CLI adds itself, such as the sub-command)."""
    parser.add_argument(
        "--config",
        default=CONFIG,
        help=f"model config: {', '.join(family_text(spec.backbones) for spec in WORLDS.values())} (default: "
        "%(default)s)",
    )
    parser.add_argument("--world", default=None, help=f"{' or '.join(WORLDS)} (default: the config's world)")
    parser.add_argument(
        "--out",
        dest="output",
        type=Path,
        default=None,
        help="weights file (.safetensors; default: the config's built-in)",
    )
    parser.add_argument("--output", dest="output", type=Path, help=argparse.SUPPRESS)  # the old spelling
    parser.add_argument(
        "--seed", type=int, default=0, help="initialisation and pre-training pool seed (default: %(default)s)"
    )
    parser.add_argument(
        "--steps", type=int, default=DEFAULT_STEPS, help="optimisation steps (default: %(default)s)"
    )
    parser.add_argument(
        "--batch-size", type=int, default=128, help="image-caption pairs a step (default: %(default)s)"
    )
    parser.add_argument(
        "--lr", type=float, default=1e-3, help="peak AdamW learning rate (default: %(default)s)"
    )
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--no-progress", dest="progress", action="store_false", help="hide the progress bar")
    parser.add_argument(
        "--no-evaluate", dest="evaluate", action="store_false", help="skip the knowledge checks"
    )
    return parser


def main(argv: list[str] | None = None) -> None:
    """``python -m kalahash.worlds.pretrain [--steps N ...]``: the same as ``kalahash pretrain-tiny``."""
    parser = add_pretrain_tiny_arguments(argparse.ArgumentParser(description=__doc__.splitlines()[0]))
    provenance = pretrain_tiny(**vars(parser.parse_args(argv)))
    print(json.dumps({k: v for k, v in provenance.items() if k != "knowledge"}, indent=2))
    for model, report in provenance.get("knowledge", {}).items():
        summary = {k: round(v, 3) for k, v in report.items() if isinstance(v, (int, float))}
        print(model, json.dumps(summary))


if __name__ == "__main__":
    main()
