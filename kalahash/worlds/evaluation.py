"""What a CLIP knows of an offline world: zero-shot accuracy with the class prompts, linear probes on
frozen image features, chance levels, and the shape of the class-text knowledge K.

:func:`knowledge_report` gathers them for a world's two retrieval sets; pre-training
(:mod:`kalahash.worlds.pretrain`) records it for the saved and for a random model: the knowledge is real
when the first is far above chance and the second near it. Notebook 01 reads its zero-shot reference here.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import open_clip
import torch
import torch.nn.functional as F

from kalahash.backbones import Backbone
from kalahash.data import ImageList, RetrievalData, load_dataset

from .toolkit import world_spec


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
    """Zero-shot accuracy with the class prompts (:data:`kalahash.prompts.CLASS_PROMPT`).

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


def knowledge_stats(knowledge: torch.Tensor) -> dict[str, float]:
    """Shape of class-text knowledge K (C x D): mean row norm, mean cosine between distinct rows,
    numerical rank (singular values needed for 99 % of the energy) and the common mean's energy share.
    Compositional class names show as a high cosine and a rank below C (offline-world notes)."""
    k = knowledge.double().cpu()
    c = k.shape[0]
    unit = F.normalize(k, dim=1)
    cos = unit @ unit.T
    energy = torch.linalg.svdvals(k) ** 2
    share = torch.cumsum(energy, 0) / energy.sum()
    return {
        "k_row_norm": float(k.norm(dim=1).mean()),
        "k_mean_pairwise_cosine": float(cos[~torch.eye(c, dtype=torch.bool)].mean()) if c > 1 else 1.0,
        "k_numerical_rank": int((share < 0.99).sum()) + 1,
        "k_mean_energy_share": float(c * k.mean(0).norm() ** 2 / k.norm() ** 2),
    }


def knowledge_report(backbone: Backbone, seed: int = 0, world: str = "shapes") -> dict[str, Any]:
    """Zero-shot (both retrieval sets of ``world``), 1/4-shot linear probes, chance levels and the
    shape of K (:func:`knowledge_stats`). Keys start with the set's name (``shapes_zero_shot``)."""
    spec = world_spec(world)
    single, multi = (load_dataset(name, seed=seed) for name in spec.datasets)
    a, b = (name.replace("-", "_") for name in spec.datasets)
    per_class = per_class_zero_shot(backbone, single)
    report: dict[str, Any] = {f"{a}_zero_shot": zero_shot_accuracy(backbone, single)}
    if spec.held_out:
        seen = [v for k, v in per_class.items() if k not in spec.held_out]
        report[f"{a}_zero_shot_seen_pairs"] = float(np.mean(seen))
        report[f"{a}_zero_shot_held_out_pairs"] = float(np.mean([per_class[k] for k in spec.held_out]))
    report |= {
        f"{a}_zero_shot_per_class": per_class,
        f"{a}_chance": chance_level(single),
        f"{b}_zero_shot_top1_hit": zero_shot_accuracy(backbone, multi),
        f"{b}_chance": chance_level(multi),
        f"{a}_linear_probe_1shot": linear_probe_accuracy(backbone, single, shots=1, seed=seed),
        f"{a}_linear_probe_4shot": linear_probe_accuracy(backbone, single, shots=4, seed=seed),
    }
    return report | knowledge_stats(backbone.text_knowledge(list(single.classnames)))
