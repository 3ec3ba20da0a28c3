"""Running: one configuration (:func:`run_experiment`), a list of them (:func:`run_configs`, where a run
that diverged is a flagged row, :func:`run_or_flag`), a grid (:func:`run_sweep`), the README's demo
(:func:`run_demo`), and the mean ± std over seeds of their rows (:func:`summarize`).

The functions that call :func:`run_experiment` live here with it, so replacing it in this module
(``monkeypatch.setattr(kalahash.experiments.runner, "run_experiment", ...)``) reaches all of them.
"""

from __future__ import annotations

import itertools
import json
import os
import time
from collections.abc import Iterable, Mapping
from dataclasses import asdict, fields, replace
from pathlib import Path
from typing import Any, NamedTuple

import pandas as pd
import torch

from ..cache import PrefixCache
from ..checkpoints import data_identity, save_checkpoint
from ..history import DIVERGED, FLAG_MARK, group_flags, history_path, history_summary, save_history
from ..loader import LoaderOptions
from ..machine import provenance, resolve_device
from ..results_table import DEFAULT_RESULTS, check_writable, keep_unwritten_row
from ..train import TRAINING_LOOP, TrainConfig, evaluate, fit
from .config import DEFAULT_BACKBONE, DEFAULT_CACHE, DEFAULT_DATASET, DEFAULT_FIGURES, ExperimentConfig
from .data_checks import checked_data
from .results import append_result, find_result

# the phases of a run before evaluation, timed in its row as <phase>_seconds (then encode and map)
RUN_PHASES = ("load", "check", "build", "fit")


def run_experiment(
    cfg: ExperimentConfig,
    *,
    results: str | os.PathLike | None = DEFAULT_RESULTS,
    force: bool = False,
    cache: PrefixCache | str | os.PathLike | None = DEFAULT_CACHE,
    workdir: str | os.PathLike | None = None,
    checkpoint: str | os.PathLike | None = None,
    resume: bool = False,
    allow_failed_check: bool = False,
    device: str | torch.device | None = None,
    progress: bool = True,
    strict_shots: bool = False,
    workers: int | None = None,
    device_preprocess: bool = False,
) -> dict[str, Any]:
    """Train and evaluate one configuration; return its row and append it to ``results``.

    A configuration already in ``results`` is not run again (its stored row comes back with
    ``skipped=True``) unless ``force``. Data whose integrity check failed is refused unless
    ``allow_failed_check``. ``cache`` is a :class:`PrefixCache` or its folder (``None``: no cache).
    ``workdir`` keeps the split lists (``splits/``), data checks (``data_checks/``) and each run's history
    (``histories/``; :mod:`kalahash.history`), summarised in its row with ``flags`` ("" when none); by
    default the results table's folder. A class the train pool cannot give ``shots`` images is recorded
    in ``shot_shortfall``; ``strict_shots`` refuses to run instead. ``resume`` continues ``checkpoint``
    (refused for another configuration or data); a finished run's checkpoint is re-scored
    (``resumed_from_epoch`` of the returned row equals ``epochs``). ``workers`` and
    ``device_preprocess`` set how images reach the device (:class:`~kalahash.loader.LoaderOptions`;
    neither changes a result on the CPU); the row records them and times each phase (``load_seconds``,
    ``check_seconds``, ``build_seconds``, ``fit_seconds``, ``encode_seconds``, ``map_seconds``).
    """
    if resume and checkpoint is None:
        raise ValueError("resume=True needs checkpoint= (CLI: --checkpoint), the file to resume from")
    workdir = Path(workdir) if workdir is not None else Path(results or DEFAULT_RESULTS).parent
    if results is not None and not force:
        stored = find_result(cfg, results)
        if stored is not None:
            return {**stored, "skipped": True}
    if results is not None:
        check_writable(Path(results).parent, f"results table {results}", "results= (CLI: --results)")
    if results is None or workdir != Path(results).parent:
        check_writable(workdir, "folder of split lists and run histories", "workdir= (CLI: --workdir)")
    if checkpoint is not None and not resume and not force and Path(checkpoint).exists():
        raise FileExistsError(
            f"checkpoint file {str(checkpoint)!r} already exists and holds {_checkpoint_contents(checkpoint)}: "
            "continue it with resume=True (CLI: --resume), write another file, or pass force=True (CLI: "
            "--force) to overwrite it"
        )
    device = resolve_device(device)
    loader = LoaderOptions(workers, device_preprocess)
    if cache is not None and not isinstance(cache, PrefixCache):
        cache = PrefixCache(cache)
    clock = [time.perf_counter()]
    data = load_run_data(cfg)
    clock.append(time.perf_counter())
    check = check_run_data(cfg, data, workdir, progress=progress, allow_failed_check=allow_failed_check)
    clock.append(time.perf_counter())
    built = build_run(cfg, data, check, workdir, device=device, strict_shots=strict_shots)
    train_set, hparams, hparams_source, backbone, hasher = built
    clock.append(time.perf_counter())
    train_config = TrainConfig(
        epochs=cfg.epochs, batch_size=min(cfg.batch_size, len(train_set)), lr=cfg.lr, seed=cfg.seed
    )
    extra = {
        "experiment": cfg.with_absolute_paths().to_row(),
        "data": data_identity(data.name, data.classnames),
    }
    trained = fit(
        hasher,
        train_set,
        train_config,
        cache=cache,
        checkpoint=checkpoint,
        resume=resume,
        progress=progress,
        checkpoint_extra=extra,
        loader=loader,
    )
    clock.append(time.perf_counter())
    scores = evaluate(
        hasher, data, topk=cfg.topk, cache=cache, ties=cfg.ties, progress=progress, loader=loader
    )
    counts = hasher.parameter_counts()
    diagnosis = history_summary(trained.history, cfg.bits, len(data.classnames), scores["database_codes"])
    history_file = save_history(trained.history, history_path(workdir, cfg.config_id))
    row = {
        "config_id": cfg.config_id,
        **cfg.to_row(),
        "hparams_used": json.dumps(hparams, sort_keys=True),
        "hparams_source": hparams_source,
        "classes": len(data.classnames),
        "train_images": len(train_set),
        "shot_shortfall": train_set.shortfall_text,
        "train_batch_size": train_config.batch_size,
        "map": scores["map"],
        "map_at": scores["map_topk"],
        "ties_rule": scores["ties"],
        "map_ties_index": scores["map_ties_index"],
        "map_ties_average": scores["map_ties_average"],
        **{k: v for k, v in scores.items() if k.startswith("p_at_")},
        "training_loop": TRAINING_LOOP,
        "train_seconds": round(trained.seconds, 3),
        "eval_seconds": round(time.perf_counter() - clock[-1], 3),
        **{
            f"{phase}_seconds": round(end - begin, 3)
            for phase, (begin, end) in zip(RUN_PHASES, itertools.pairwise(clock), strict=True)
        },
        "encode_seconds": round(scores["encode_seconds"], 3),
        "map_seconds": round(scores["map_seconds"], 3),
        "workers": loader.workers_for(device),
        "device_preprocess": device_preprocess,
        "trainable_params": counts["total_trainable"],
        **diagnosis,
        "history_file": str(history_file.relative_to(workdir)),  # relative: tables move between machines
        "backbone_fingerprint": backbone.fingerprint,
        "data_fingerprint": check["fingerprint"],
        "data_check_ok": check["ok"],
        **provenance(device),
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    if checkpoint is not None:
        save_checkpoint(
            checkpoint,
            hasher,
            epoch=cfg.epochs,
            history=trained.history,
            seconds=trained.seconds,
            train_config=asdict(train_config),
            result_row=row,
            **extra,
        )
    if results is not None:
        try:
            append_result(row, results)
        except OSError as err:  # e.g. the folder turned read-only during the run: keep the row anyway
            keep_unwritten_row(row, results, err)
    return {**row, "skipped": False, "resumed_from_epoch": trained.resumed_from_epoch}


def load_run_data(cfg: ExperimentConfig) -> Any:
    """A run's data set, refused when it has one class (every image is relevant to every query)."""
    from ..data import load_dataset

    data = load_dataset(cfg.dataset, cfg.data_root, seed=cfg.split_seed, **cfg.data_options())
    if len(data.classnames) < 2:
        raise ValueError(
            f"data set {cfg.dataset!r} has one class ({data.classnames[0]!r}): every database image is "
            "relevant to every query, so any codes score mAP 1.0 and the run would show nothing; give at "
            "least two classes (for --dataset folder: a sub-folder per class)"
        )
    return data


def check_run_data(
    cfg: ExperimentConfig,
    data: Any,
    workdir: str | os.PathLike,
    *,
    progress: bool = True,
    allow_failed_check: bool = False,
) -> dict[str, Any]:
    """The data's integrity check (remembered under ``workdir``: :func:`checked_data`); a failed one is
    refused unless ``allow_failed_check``."""
    check = checked_data(data, Path(workdir) / "data_checks", progress=progress)
    if not check["ok"] and not allow_failed_check:
        raise ValueError(
            f"the data check of {cfg.dataset!r} failed:\n{check['report']}\nFix the data, or pass "
            "allow_failed_check=True (CLI: --allow-failed-check) to run anyway."
        )
    return check


class BuiltRun(NamedTuple):
    """A run ready to train: its few-shot set, hyperparameters (and their source), backbone and hasher."""

    train_set: Any
    hparams: dict[str, Any]
    hparams_source: str
    backbone: Any
    hasher: Any


def build_run(
    cfg: ExperimentConfig,
    data: Any,
    check: Mapping[str, Any],
    workdir: str | os.PathLike,
    *,
    device: torch.device,
    strict_shots: bool = False,
) -> BuiltRun:
    """The few-shot training set (its list kept under ``workdir``), the hyperparameters and the hasher
    of a run on checked data: what :func:`run_experiment` trains and ``kalahash.efficiency`` times."""
    from ..backbones import load_backbone
    from ..data import few_shot_split
    from ..hashing import build_hasher

    split_dir = Path(workdir) / "splits" / f"{cfg.dataset}-{check['fingerprint'][:12]}-split{cfg.split_seed}"
    train_set = few_shot_split(data, cfg.shots, seed=cfg.seed, out_dir=split_dir, strict=strict_shots)
    hparams, hparams_source = cfg.resolved_hparams(num_classes=len(data.classnames))
    torch.manual_seed(cfg.seed)
    backbone = load_backbone(cfg.backbone, cfg.pretrained, device=device)
    hasher = build_hasher(cfg.method, backbone, data.classnames, cfg.bits, **hparams)
    return BuiltRun(train_set, hparams, hparams_source, backbone, hasher)


def _checkpoint_contents(path: str | os.PathLike) -> str:
    """What an existing checkpoint file holds, in a few words, for the refusal to overwrite it."""
    from ..checkpoints import load_checkpoint

    try:
        payload = load_checkpoint(path)
    except (ValueError, OSError) as err:
        return f"something else: {err}"
    run = payload.get("experiment", {})
    done = f", {payload['epoch']} of {run['epochs']} epochs" if "epoch" in payload and "epochs" in run else ""
    setting = f"{run['dataset']!r}, {run['shots']} shot(s), seed {run['seed']}, " if "dataset" in run else ""
    return f"a {payload['method']} run on {payload['backbone']['name']!r} ({setting}{payload['bits']} bits{done})"


def expand_grid(base: ExperimentConfig, grid: Mapping[str, Iterable[Any]]) -> list[ExperimentConfig]:
    """Every combination of the grid's values over ``base`` (keys are ExperimentConfig fields)."""
    names = {f.name for f in fields(ExperimentConfig)}
    unknown = sorted(set(grid) - names)
    if unknown:
        raise ValueError(f"unknown grid keys {unknown}; allowed: {', '.join(sorted(names))}")
    keys = list(grid)
    return [
        replace(base, **dict(zip(keys, values, strict=True))) for values in itertools.product(*grid.values())
    ]


def run_or_flag(cfg: ExperimentConfig, **kwargs: Any) -> dict[str, Any]:
    """The row of one configuration of a list (``kwargs`` go to :func:`run_experiment`). A run whose
    training loss became non-finite is a result of the list, not a crash: its row has NaN mAP, the flag
    :data:`~kalahash.history.DIVERGED` and the error in ``error``; it is not stored, so it runs again next
    time (and stops the same way)."""
    try:
        return run_experiment(cfg, **kwargs)
    except FloatingPointError as err:
        return diverged_row(cfg, str(err))


def diverged_row(config: ExperimentConfig, error: str) -> dict[str, Any]:
    """The row of a run whose loss became non-finite: a result of a list of runs, not a crash. NaN mAP,
    the flag :data:`~kalahash.history.DIVERGED` and the error; it is not stored, so it runs again next
    time and stops the same way (in this process, :func:`run_or_flag`; as a launched job,
    :func:`~kalahash.experiments.launched_rows`)."""
    nan = float("nan")
    return {"config_id": config.config_id, **config.to_row(), "map": nan, "map_ties_index": nan,
            "map_ties_average": nan, "flags": DIVERGED, "error": error}  # fmt: skip


def run_configs(configs: Iterable[ExperimentConfig], **kwargs: Any) -> pd.DataFrame:
    """Run configurations one after the other (``kwargs`` go to :func:`run_experiment`: a stored result is
    reused, the prefix cache shared) and return a row each; one that diverged is a flagged row
    (:func:`run_or_flag`), and the list goes on."""
    return pd.DataFrame([run_or_flag(cfg, **kwargs) for cfg in configs])


def run_sweep(base: ExperimentConfig, grid: Mapping[str, Iterable[Any]], **kwargs: Any) -> pd.DataFrame:
    """Run every configuration of a grid (seeds included) with :func:`run_configs`; return the rows."""
    return run_configs(expand_grid(base, grid), **kwargs)


def mean_text(mean: float, std: float, n: int) -> str:
    """A mean with its spread and its number of runs: "0.2300 ± 0.0100 (n=3)"; one run has no spread
    to show ("0.2300 (n=1)"); runs that gave the very same value say so ("53.5443 (n=2, all equal)": a
    frozen tower's features do not depend on the seed); no run with a result reads "no result (n=0)"."""
    if n == 0:
        return "no result (n=0)"
    if n == 1:
        return f"{mean:.4f} (n=1)"
    return f"{mean:.4f} (n={n}, all equal)" if std == 0 else f"{mean:.4f} ± {std:.4f} (n={n})"


def summarize(
    rows: pd.DataFrame,
    by: Iterable[str] = ("dataset", "shots", "bits", "method", "knowledge"),
    value: str = "map",
) -> pd.DataFrame:
    """Mean and standard deviation over seeds of ``value`` for each group, with a 'mean ± std' column
    that names the number of runs (:func:`mean_text`; ``std`` is NaN for a single run).

    ``knowledge`` groups where rows have it (older rows used the true K). With ``flags`` in the rows, a
    ``flags`` column counts each flag's runs and a group with a flagged run gets ⚑ after 'mean ± std'.
    With ``anchors_distinct`` in the rows (KIDDO's distinct sign(W) anchors at the end), ``anchors``
    gives its mean over the group (NaN for methods without anchors).
    """
    rows = rows.assign(knowledge=rows["knowledge"].fillna("true")) if "knowledge" in rows else rows
    by = [b for b in by if b != "knowledge" or b in rows]
    grouped = rows.groupby(by, sort=False)
    table = grouped[value].agg(mean="mean", std="std", seeds="count").reset_index()
    table[f"{value} (mean ± std)"] = [
        mean_text(m, s, n) for m, s, n in zip(table["mean"], table["std"], table["seeds"], strict=True)
    ]
    if "anchors_distinct" in rows:
        table["anchors"] = grouped["anchors_distinct"].mean().to_numpy()
    if "flags" in rows:
        table["flags"] = grouped["flags"].agg(group_flags).to_numpy()
        marked = table["flags"] != ""
        table.loc[marked, f"{value} (mean ± std)"] += f" {FLAG_MARK}"
    return table


DEMO_METHODS = ("lb", "fft", "lora", "kalahash")


def run_demo(
    out_dir: str | os.PathLike = DEFAULT_FIGURES,
    results: str | os.PathLike = DEFAULT_RESULTS,
    *,
    dataset: str = DEFAULT_DATASET,
    backbone: str = DEFAULT_BACKBONE,
    shots: int = 1,
    bits: int = 16,
    epochs: int = 100,
    batch_size: int = 8,
    seeds: Iterable[int] = (42,),
    force: bool = False,
    progress: bool = True,
    cache: str | os.PathLike | None = DEFAULT_CACHE,
) -> pd.DataFrame:
    """The README's main job: LB, FFT, plain LoRA and KALAHash on the built-in offline world
    (``objects10`` with the 12-block ``tiny-objects-m`` CLIP by default), one run per method and seed.

    Returns a row per run; the figure (mean ± std over ``seeds``) and the table go to ``out_dir``. Split
    lists and data checks go beside ``results``; ``cache`` is the prefix cache folder (None: none).
    """
    from ..plots import bar_by_method, save_figure, save_table

    base = ExperimentConfig(
        dataset=dataset, backbone=backbone, shots=shots, bits=bits, epochs=epochs, batch_size=batch_size
    )
    options = {"results": results, "cache": cache, "force": force, "progress": progress}
    grid = itertools.product(DEMO_METHODS, list(seeds))
    rows = run_configs([replace(base, method=m, seed=s) for m, s in grid], **options)
    columns = ["method", "seed", "map", "map_at", "p_at_100", "train_seconds", "trainable_params"]
    table = rows.reindex(columns=[*columns, "hparams_source", "flags"])  # a diverged run lacks some
    save_table(rows, "demo_results", out_dir=out_dir)
    title = f"{dataset}, {shots}-shot, {bits} bits (offline world, {backbone})"
    save_figure(bar_by_method(summarize(rows), title), "demo_map", rows, out_dir=out_dir)
    return table
