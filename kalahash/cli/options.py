"""The options the commands share (a run's setting, scoring, results and cache) and what they become:
an :class:`~kalahash.experiments.ExperimentConfig` and the keyword arguments of ``run_experiment``."""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import fields
from types import SimpleNamespace
from typing import Any

from ..experiments.config import DEFAULT_CACHE, LIST_OPTIONS, METHODS, ExperimentConfig, check_code_length
from ..hashing.methods import KNOWLEDGE_MODES
from ..metrics import TIES
from ..results_table import DEFAULT_RESULTS
from ..worlds import WORLDS, family_text, world_datasets

# The defaults of a run, read from ExperimentConfig's fields (building one would import torch).
_DEFAULTS = SimpleNamespace(**{f.name: f.default for f in fields(ExperimentConfig)})


def positive_int(text: str) -> int:
    """An argparse type: a positive integer (argparse then names the option in its error)."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}")
    return value


def code_length(text: str) -> int:
    """An argparse type: a code length a run may choose (:func:`check_code_length`)."""
    try:
        bits: Any = int(text)
    except ValueError:
        bits = text
    try:
        return check_code_length(bits)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def _parse_value(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def _hyperparameters(pairs: list[str]) -> dict[str, Any]:
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ValueError(f"--hp expects KEY=VALUE (e.g. --hp rank=4), got {pair!r}")
        out[key] = _parse_value(value)
    return out


def add_setting_args(p: argparse.ArgumentParser, many: bool) -> None:
    """Options shared by ``run`` and ``sweep``; with ``many`` the grid options take several values."""
    p.add_argument(
        "--dataset",
        default=_DEFAULTS.dataset,
        help=f"data set name: {', '.join(world_datasets())} (built-in offline worlds), cifar10, nuswide, coco, "
        "folder, listfile (default: %(default)s)",
    )
    p.add_argument(
        "--data-root", default=None, help="folder holding the data set (not needed for built-in worlds)"
    )
    add_list_args(p)
    add_run_shape_args(p, many)
    if many:
        p.add_argument(
            "--methods",
            nargs="+",
            default=list(METHODS),
            choices=METHODS,
            help="methods to compare (default: all)",
        )
    else:
        p.add_argument(
            "--method",
            default=_DEFAULTS.method,
            choices=METHODS,
            help="lb: lock backbone, fft: full fine-tuning, lora: plain LoRA, clora: CLoRA, "
            "kalahash: CLoRA + KIDDO, zeroshot: no training, the code of each image's zero-shot class "
            "(default: %(default)s)",
        )
    p.add_argument(
        "--knowledge",
        default=_DEFAULTS.knowledge,
        choices=KNOWLEDGE_MODES,
        help="control of the class-text knowledge K for methods that read it: true, permuted (rows dealt "
        "to other classes), random (Gaussian rows of K's norms); seeded by the run's seed (default: %(default)s)",
    )
    p.add_argument(
        "--loss",
        default=_DEFAULTS.loss,
        help="hashing loss: dpsh, hashnet, csq, orthohash, mdsh (default: %(default)s)",
    )
    p.add_argument(
        "--backbone",
        default=_DEFAULTS.backbone,
        help="open_clip model name (ViT-B-32, ...), SLIP-ViT-S-16, or a built-in CLIP: "
        + ", ".join(family_text(spec.backbones) for spec in WORLDS.values())
        + " (default: %(default)s)",
    )
    p.add_argument(
        "--pretrained",
        default=None,
        help="open_clip pretrained tag (e.g. openai) or a local weights file; default: the built-in "
        "weights for the built-in tiny CLIPs, random init otherwise",
    )
    p.add_argument("--lr", type=float, default=_DEFAULTS.lr, help="SGD learning rate (default: %(default)s)")
    p.add_argument(
        "--hp",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override one method hyperparameter, e.g. --hp rank=4 --hp strength=0.3 (repeatable)",
    )
    add_scoring_args(p)
    add_run_options(p)


def add_run_shape_args(p: argparse.ArgumentParser, many: bool = False) -> None:
    """Shots, bits, seeds, epochs and batch size: ``demo``, ``run`` and ``sweep`` (``many``: shots and bits
    take several values, a grid)."""
    nargs = "+" if many else None
    p.add_argument(
        "--shots",
        type=positive_int,
        nargs=nargs,
        default=[_DEFAULTS.shots] if many else _DEFAULTS.shots,
        help="labelled images per class (default: %(default)s)",
    )
    p.add_argument(
        "--bits",
        type=code_length,
        nargs=nargs,
        default=[_DEFAULTS.bits] if many else _DEFAULTS.bits,
        help="hash code length, a multiple of 8 (default: %(default)s)",
    )
    p.add_argument(
        "--seeds",
        type=int,
        nargs="+",
        default=[_DEFAULTS.seed],
        help="seeds (few-shot sample and training); several give mean ± std (default: %(default)s)",
    )
    p.add_argument("--seed", type=int, nargs="+", dest="seeds", help=argparse.SUPPRESS)  # the old spelling
    p.add_argument(
        "--epochs", type=positive_int, default=_DEFAULTS.epochs, help="training epochs (default: %(default)s)"
    )
    p.add_argument(
        "--batch-size",
        type=positive_int,
        default=_DEFAULTS.batch_size,
        help="few-shot images per training step (default: %(default)s)",
    )


def add_scoring_args(p: argparse.ArgumentParser) -> None:
    """How mAP is scored: ``run``, ``sweep`` and ``eval``."""
    p.add_argument("--topk", type=int, default=None, help="mAP@K cut-off (default: the data set's protocol)")
    p.add_argument(
        "--ties",
        default="index",
        choices=TIES,
        help="tie rule of mAP: database index order, or the exact average over tie orders (default: "
        "%(default)s)",
    )


def add_list_args(p: argparse.ArgumentParser) -> None:
    """The list files of ``--dataset listfile`` (your own data), relative to --data-root or absolute."""
    for name, what in (
        ("train-list", "train pool"),
        ("query-list", "queries"),
        ("database-list", "database"),
    ):
        p.add_argument(f"--{name}", default=None, help=f"--dataset listfile: list file of the {what}")
    p.add_argument(
        "--classnames", default=None, help="--dataset listfile: class names file, one a line, in label order"
    )


def list_options(args: argparse.Namespace) -> dict[str, str]:
    return {n: getattr(args, n) for n in LIST_OPTIONS if getattr(args, n) is not None}


def add_results_args(p: argparse.ArgumentParser) -> None:
    """Where runs keep their rows and their cache: ``demo``, ``run`` and ``sweep``."""
    p.add_argument(
        "--results", default=str(DEFAULT_RESULTS), help="results table, CSV (default: %(default)s)"
    )
    p.add_argument(
        "--cache",
        default=str(DEFAULT_CACHE),
        help="frozen-prefix token cache folder; 'none' disables it (default: %(default)s)",
    )


def cache_folder(args: argparse.Namespace) -> str | None:
    return None if args.cache == "none" else args.cache


def add_run_options(p: argparse.ArgumentParser) -> None:
    add_results_args(p)
    p.add_argument(
        "--workdir",
        default=None,
        help="folder for few-shot split lists and remembered data checks (default: the results table's)",
    )
    p.add_argument(
        "--force",
        action="store_true",
        help="run even if the results table has this config (and overwrite an existing --checkpoint file)",
    )
    p.add_argument(
        "--allow-failed-check", action="store_true", help="run on data whose integrity check failed"
    )
    p.add_argument(
        "--strict-shots",
        action="store_true",
        help="refuse a few-shot set in which some class got fewer than --shots images (by default the "
        "run goes on, as the released MS-COCO / NUS-WIDE splits do, and records the shortfall)",
    )
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    add_loader_args(p)
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def add_loader_args(p: argparse.ArgumentParser) -> None:
    """How images reach the device (kalahash.loader): ``run``, ``sweep`` and ``eval``."""
    p.add_argument(
        "--workers",
        type=_workers,
        default=None,
        help="image preprocessing worker processes (default: the spare cores, at most 8, on CUDA; 0 on "
        "the CPU, where the main process computes)",
    )
    p.add_argument(
        "--device-preprocess",
        action="store_true",
        help="resize and normalise in-memory images (CIFAR-10) on the device instead of with PIL: the same "
        "pixels, without the CPU bottleneck",
    )


def _workers(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {value}")
    return value


def run_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "results": args.results,
        "workdir": args.workdir,
        "cache": cache_folder(args),
        "force": args.force,
        "allow_failed_check": args.allow_failed_check,
        "strict_shots": args.strict_shots,
        "device": args.device,
        "progress": not args.quiet,
        "workers": args.workers,
        "device_preprocess": args.device_preprocess,
    }


def base_config(args: argparse.Namespace, **extra: Any) -> ExperimentConfig:
    return ExperimentConfig(
        dataset=args.dataset,
        data_root=args.data_root,
        loss=args.loss,
        backbone=args.backbone,
        pretrained=args.pretrained,
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        hyperparameters=_hyperparameters(args.hp),
        topk=args.topk,
        ties=args.ties,
        knowledge=args.knowledge,
        **list_options(args),
        **extra,
    )


def warn_flags(rows: Any) -> None:
    """A ``WARNING`` line on stderr for each run whose diagnostics raised flags (kalahash.history)."""
    from ..history import flag_warnings

    for line in flag_warnings(rows):
        print(line, file=sys.stderr)


def print_diverged(rows: Any) -> None:
    """A line for each run of a list whose training loss became non-finite: the list went on without it
    (its row is flagged, with no mAP, and not stored: the same command runs it again)."""
    from ..history import DIVERGED

    if "error" not in rows:
        return
    for row in rows[rows["flags"] == DIVERGED].to_dict("records"):
        what = ", ".join(f"{k} {row[k]}" for k in ("method", "knowledge", "shots", "bits", "seed"))
        print(f"diverged: {what}: {row['error']}; its row is flagged {DIVERGED} (no mAP) and not stored")


def print_table(table: Any) -> None:
    import pandas as pd

    with pd.option_context(
        "display.max_columns", 20, "display.width", 160, "display.float_format", "{:.4f}".format
    ):
        print(table.to_string(index=False))
