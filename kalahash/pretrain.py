"""Pre-training of the built-in ``tiny-shapes`` CLIP on the offline world, and zero-shot checks.

``pretrain_tiny`` trains the registered open_clip config ``tiny-shapes`` from random weights with the
CLIP contrastive loss on captioned images of :func:`kalahash.world.caption_pool`, then ships the
whole model (the text tower too: KALAHash needs class-text knowledge) as fp16 safetensors next to a
provenance JSON. :func:`zero_shot_accuracy` and :func:`linear_probe_accuracy` show that the knowledge
is real: far above chance for the trained model, near chance for a random one.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import math
import platform
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import open_clip
import torch
import torch.nn.functional as F
from torch import nn

from kalahash.backbones import BUILTIN_WEIGHTS, Backbone, load_backbone
from kalahash.data import ImageList, RetrievalData
from kalahash.fileio import atomic_write, atomic_write_text
from kalahash.world import HELD_OUT_PAIRS, caption_pool, make_retrieval_data

CONFIG = "tiny-shapes"
DEFAULT_OUTPUT = BUILTIN_WEIGHTS[CONFIG][1]
DEFAULT_STEPS = 2000
_CHUNK_STEPS = 50  # pool images are generated this many steps ahead


def _normalisation(preprocess: Any) -> tuple[tuple[float, ...], tuple[float, ...]] | None:
    """(mean, std) of the ``Normalize`` step of an open_clip preprocess, None if there is none."""
    for t in getattr(preprocess, "transforms", []):
        if type(t).__name__ == "Normalize":
            return tuple(t.mean), tuple(t.std)
    return None


def images_to_tensor(
    images: np.ndarray,
    mean: tuple[float, ...] = open_clip.OPENAI_DATASET_MEAN,
    std: tuple[float, ...] = open_clip.OPENAI_DATASET_STD,
) -> torch.Tensor:
    """uint8 (N, H, W, 3) -> normalised float (N, 3, H, W): what ``backbone.preprocess`` gives for
    images already at the model's size (its resize and crop are then the identity), without PIL."""
    x = torch.from_numpy(np.array(images, dtype=np.uint8)).permute(0, 3, 1, 2).float().div_(255.0)
    return (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)


@torch.no_grad()
def encode_image_list(backbone: Backbone, images: ImageList, batch_size: int = 512) -> torch.Tensor:
    """Raw projected image features (N, embed) of a whole image list, through ``backbone.preprocess``.

    In-memory images at the model's size take a vectorised path equal to the preprocess."""
    model = backbone.model
    was_training = model.training
    model.eval()
    norm = _normalisation(backbone.preprocess)
    fast = (
        isinstance(images.images, np.ndarray)
        and tuple(images.images.shape[1:3]) == tuple(backbone.image_size)
        and norm is not None
    )
    feats = []
    for start in range(0, len(images), batch_size):
        stop = min(start + batch_size, len(images))
        if fast:
            x = images_to_tensor(images.images[start:stop], *norm)
        else:
            x = torch.stack([backbone.preprocess(images.load_image(i)) for i in range(start, stop)])
        feats.append(backbone.encode_image(x.to(backbone.device)).float().cpu())
    model.train(was_training)
    return torch.cat(feats) if feats else torch.zeros(0, backbone.embed_dim)


def _split(data: RetrievalData, split: str) -> ImageList:
    if split not in ("query", "train", "database"):
        raise ValueError(f"split must be 'query', 'train' or 'database', got {split!r}")
    return getattr(data, split)


def zero_shot_scores(backbone: Backbone, data: RetrievalData, split: str = "query") -> torch.Tensor:
    """Cosine similarity (N, C) between normalised image features and normalised class-text knowledge."""
    images = _split(data, split)
    feats = F.normalize(encode_image_list(backbone, images), dim=-1)
    text = F.normalize(backbone.text_knowledge(list(data.classnames)).cpu(), dim=-1)
    return feats @ text.T


def zero_shot_accuracy(backbone: Backbone, data: RetrievalData, split: str = "query") -> float:
    """Zero-shot accuracy with prompts "a photo of a {class}.".

    Single-label: the argmax class is the label. Multi-label: top-1 hit rate, the argmax class is one
    of the image's labels (chance: mean number of labels / number of classes, see :func:`chance_level`).
    """
    scores = zero_shot_scores(backbone, data, split)
    labels = torch.from_numpy(_split(data, split).labels.astype(np.int64))
    top1 = scores.argmax(dim=1)
    return float(labels.gather(1, top1[:, None]).float().mean())


def chance_level(data: RetrievalData, split: str = "query") -> float:
    """Expected :func:`zero_shot_accuracy` of a guess uniform over classes."""
    labels = _split(data, split).labels
    return float(labels.sum(1).mean() / labels.shape[1])


def per_class_zero_shot(backbone: Backbone, data: RetrievalData, split: str = "query") -> dict[str, float]:
    """Single-label zero-shot accuracy per class name (to compare seen and held-out pairs)."""
    if data.multi_label:
        raise ValueError(f"per_class_zero_shot needs a single-label data set, {data.name!r} is multi-label")
    scores = zero_shot_scores(backbone, data, split)
    labels = _split(data, split).labels
    truth = labels.argmax(1)
    pred = scores.argmax(1).numpy()
    return {name: float((pred[truth == c] == c).mean()) for c, name in enumerate(data.classnames)}


def linear_probe_accuracy(
    backbone: Backbone, data: RetrievalData, shots: int, seed: int = 0, split: str = "query"
) -> float:
    """Accuracy on ``split`` of a logistic regression on frozen, normalised features of ``shots``
    training images a class (single-label only): does the image tower's knowledge transfer?"""
    from sklearn.linear_model import LogisticRegression

    if data.multi_label:
        raise ValueError(f"linear_probe_accuracy needs a single-label data set, {data.name!r} is multi-label")
    if shots < 1:
        raise ValueError(f"shots must be >= 1, got {shots}")
    rng = np.random.default_rng(seed)
    truth = data.train.labels.argmax(1)
    pick = np.concatenate(
        [rng.choice(np.flatnonzero(truth == c), shots, replace=False) for c in range(data.train.num_classes)]
    )
    x_train = F.normalize(encode_image_list(backbone, data.train.subset(pick)), dim=-1).numpy()
    test = _split(data, split)
    x_test = F.normalize(encode_image_list(backbone, test), dim=-1).numpy()
    clf = LogisticRegression(C=10.0, max_iter=2000).fit(x_train, truth[pick])
    return float((clf.predict(x_test) == test.labels.argmax(1)).mean())


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


def _save_fp16_atomic(model: nn.Module, output: Path) -> None:
    from safetensors.torch import save_file

    state = {k: v.detach().to("cpu", torch.float16).contiguous() for k, v in model.state_dict().items()}
    atomic_write(output, lambda tmp: save_file(state, tmp, metadata={"format": "pt", "config": CONFIG}))


def _write_json_atomic(data: dict[str, Any], path: Path) -> None:
    atomic_write_text(path, json.dumps(data, indent=2) + "\n")


def knowledge_report(backbone: Backbone, seed: int = 0) -> dict[str, Any]:
    """Zero-shot (both world sets) and 1/4-shot linear probes of a backbone, with chance levels."""
    shapes = make_retrieval_data("shapes", seed)
    multi = make_retrieval_data("shapes-multi", seed)
    per_class = per_class_zero_shot(backbone, shapes)
    held = {f"{t} {s}" for t, s in HELD_OUT_PAIRS}
    return {
        "shapes_zero_shot": zero_shot_accuracy(backbone, shapes),
        "shapes_zero_shot_seen_pairs": float(np.mean([v for k, v in per_class.items() if k not in held])),
        "shapes_zero_shot_held_out_pairs": float(np.mean([v for k, v in per_class.items() if k in held])),
        "shapes_zero_shot_per_class": per_class,
        "shapes_chance": chance_level(shapes),
        "shapes_multi_zero_shot_top1_hit": zero_shot_accuracy(backbone, multi),
        "shapes_multi_chance": chance_level(multi),
        "shapes_linear_probe_1shot": linear_probe_accuracy(backbone, shapes, shots=1, seed=seed),
        "shapes_linear_probe_4shot": linear_probe_accuracy(backbone, shapes, shots=4, seed=seed),
    }


def pretrain_tiny(
    output: str | Path = DEFAULT_OUTPUT,
    seed: int = 0,
    steps: int = DEFAULT_STEPS,
    batch_size: int = 128,
    lr: float = 1e-3,
    weight_decay: float = 0.1,
    warmup: int = 100,
    threads: int | None = None,
    progress: bool = True,
    evaluate: bool = True,
) -> dict[str, Any]:
    """Contrastively pre-train ``tiny-shapes`` on the offline world and save it (fp16 safetensors).

    Parameters
    ----------
    output : the weights file to write (``.safetensors``); the provenance goes next to it as ``.json``.
        The default is the file ``load_backbone("tiny-shapes")`` loads.
    seed : seeds the random initialisation and picks the pre-training pool (``caption_pool(..., seed)``).
    steps, batch_size : optimisation steps and image-caption pairs a step (fresh pool images each step).
    lr, weight_decay, warmup : AdamW with linear warm-up and cosine decay to zero.
    threads : torch CPU threads (default: torch's choice).
    evaluate : measure zero-shot and linear-probe knowledge of the saved and of a random model.

    Returns
    -------
    The provenance dict written to ``output`` with suffix ``.json``.

    Examples
    --------
    >>> pretrain_tiny("/tmp/tiny.safetensors", steps=20)  # doctest: +SKIP
    """
    torch.set_flush_denormal(True)  # without it CPU steps are ~10x slower (offline-world notes)
    output = Path(output)
    if output.suffix != ".safetensors":
        raise ValueError(f"output must end in .safetensors, got {str(output)!r}")
    if not output.parent.is_dir():
        raise FileNotFoundError(f"output folder {str(output.parent)!r} does not exist: create it first")
    for arg, value in (("steps", steps), ("batch_size", batch_size)):
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{arg} must be a positive int, got {value!r}")
    if seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    if not lr > 0:
        raise ValueError(f"lr must be > 0, got {lr!r}")
    if threads is not None:
        torch.set_num_threads(threads)

    started = dt.datetime.now(dt.timezone.utc)
    t0 = time.perf_counter()
    torch.manual_seed(seed)
    model = open_clip.create_model(CONFIG, pretrained=None)
    model.train()
    tokenizer = open_clip.get_tokenizer(CONFIG)
    loss_fn = open_clip.ClipLoss()
    optimizer = torch.optim.AdamW(_param_groups(model, weight_decay), lr=lr, betas=(0.9, 0.98), eps=1e-6)
    token_cache: dict[str, torch.Tensor] = {}

    def tokens(captions: list[str]) -> torch.Tensor:
        missing = [c for c in dict.fromkeys(captions) if c not in token_cache]
        if missing:
            token_cache.update(zip(missing, tokenizer(missing), strict=True))
        return torch.stack([token_cache[c] for c in captions])

    from tqdm.auto import tqdm

    losses: list[float] = []
    bar = tqdm(range(steps), desc="pretrain tiny-shapes", disable=not progress, mininterval=2.0)
    chunk_images: np.ndarray | None = None
    chunk_captions: list[str] = []
    for step in bar:
        k = step % _CHUNK_STEPS
        if k == 0:  # each step sees new pool images: images step*batch .. (step+1)*batch-1
            chunk = min(_CHUNK_STEPS, steps - step) * batch_size
            chunk_images, chunk_captions = caption_pool(chunk, seed=seed, start=step * batch_size)
        assert chunk_images is not None
        images = images_to_tensor(chunk_images[k * batch_size : (k + 1) * batch_size])
        texts = tokens(chunk_captions[k * batch_size : (k + 1) * batch_size])
        for group in optimizer.param_groups:
            group["lr"] = _lr_at(step, steps, lr, warmup)
        image_features = model.encode_image(images, normalize=True)
        text_features = model.encode_text(texts, normalize=True)
        loss = loss_fn(image_features, text_features, model.logit_scale.exp())  # CLIP InfoNCE
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
    train_seconds = time.perf_counter() - t0
    model.eval()
    _save_fp16_atomic(model, output)

    provenance: dict[str, Any] = {
        "model": CONFIG,
        "weights": output.name,
        "sha256": hashlib.sha256(output.read_bytes()).hexdigest(),
        "bytes": output.stat().st_size,
        "dtype": "float16",
        "seed": seed,
        "steps": steps,
        "batch_size": batch_size,
        "lr": lr,
        "weight_decay": weight_decay,
        "warmup": warmup,
        "images_seen": steps * batch_size,
        "pool": f"the first {steps * batch_size} images of kalahash.world.caption_pool(n, seed={seed})",
        "final_loss": float(np.mean(losses[-50:])),
        "train_wall_seconds": round(train_seconds, 1),
        "started_utc": started.isoformat(timespec="seconds"),
        "call": (
            f"kalahash.pretrain.pretrain_tiny(output={output.name!r}, seed={seed}, steps={steps}, "
            f"batch_size={batch_size}, lr={lr}, weight_decay={weight_decay}, warmup={warmup}, threads={threads})"
        ),
        "argv": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]) if sys.argv and sys.argv[0] else "",
        "torch_threads": torch.get_num_threads(),
        "versions": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "open_clip": open_clip.__version__,
            "numpy": np.__version__,
        },
    }
    if evaluate:
        trained = load_backbone(
            CONFIG, pretrained=output
        )  # exactly what ships: fp16 weights, split attention
        torch.manual_seed(seed)
        random_init = load_backbone(CONFIG, pretrained="random")
        provenance["knowledge"] = {
            "trained": knowledge_report(trained, seed),
            "random_init": knowledge_report(random_init, seed),
        }
    provenance["total_wall_seconds"] = round(time.perf_counter() - t0, 1)
    _write_json_atomic(provenance, output.with_suffix(".json"))
    return provenance


def add_pretrain_tiny_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Arguments of ``kalahash pretrain-tiny``; ``pretrain_tiny(**vars(args))`` takes them as parsed
    (drop any keys the CLI adds itself, such as the sub-command)."""
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT, help="weights file (.safetensors)")
    parser.add_argument("--seed", type=int, default=0, help="initialisation and pre-training pool seed")
    parser.add_argument("--steps", type=int, default=DEFAULT_STEPS, help="optimisation steps")
    parser.add_argument("--batch-size", type=int, default=128, help="image-caption pairs a step")
    parser.add_argument("--lr", type=float, default=1e-3, help="peak AdamW learning rate")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--no-progress", dest="progress", action="store_false", help="hide the progress bar")
    parser.add_argument(
        "--no-evaluate", dest="evaluate", action="store_false", help="skip the knowledge checks"
    )
    return parser


def main(argv: list[str] | None = None) -> None:
    """``python -m kalahash.pretrain [--steps N ...]``: the same as ``kalahash pretrain-tiny``."""
    parser = add_pretrain_tiny_arguments(argparse.ArgumentParser(description=__doc__.splitlines()[0]))
    provenance = pretrain_tiny(**vars(parser.parse_args(argv)))
    print(json.dumps({k: v for k, v in provenance.items() if k != "knowledge"}, indent=2))
    for model, report in provenance.get("knowledge", {}).items():
        summary = {k: round(v, 3) for k, v in report.items() if isinstance(v, float)}
        print(model, json.dumps(summary))


if __name__ == "__main__":
    main()
