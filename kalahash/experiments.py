"""Run one paper setting, or a sweep, and keep every result as a traceable row of a tidy table."""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import time
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd
import torch

from . import results_table
from .checkpoints import check_same_data, data_identity, export_model
from .checkpoints import load_exported as load_exported
from .fileio import atomic_write_text
from .history import FLAG_MARK, group_flags, history_path, history_summary, save_history, stored_flags
from .machine import provenance, resolve_device
from .presets import LORA_BASELINE, setting_hparams
from .results_table import DEFAULT_RESULTS, recorded_fields
from .results_table import DamagedRowWarning as DamagedRowWarning
from .train import PrefixCache, TrainConfig, evaluate, fit, load_checkpoint, restore_hasher, save_checkpoint

if TYPE_CHECKING:
    from torch import nn

    from .data import DataCheck

DEFAULT_CACHE = Path("cache/prefix")
METHODS = ("lb", "fft", "lora", "clora", "kalahash", "zeroshot")
# Which preset hyperparameters each method uses; the rest of a preset does not apply to it.
_METHOD_KEYS = {
    "lb": (),
    "fft": (),
    "lora": ("rank", "strength"),
    "clora": ("rank", "strength"),
    "kalahash": ("rank", "strength", "kiddo_alpha", "kiddo_beta", "kiddo_gamma"),
    "zeroshot": (),
}
# The list files of dataset "listfile"; unset (None), they are left out of config_id.
LIST_OPTIONS = ("train_list", "query_list", "database_list", "classnames")
# Fields added after results tables existed: at their default they are left out of config_id, so the
# ids of stored rows stay valid.
_LATER_FIELDS: dict[str, Any] = {"knowledge": "true", **dict.fromkeys(LIST_OPTIONS)}


def config_hash(row: Mapping[str, Any]) -> str:
    """The config_id of a config's row: everything that determines its result, less later fields at
    their default."""
    kept = {k: v for k, v in row.items() if not (k in _LATER_FIELDS and v == _LATER_FIELDS[k])}
    return hashlib.sha256(json.dumps(kept, sort_keys=True, default=str).encode()).hexdigest()[:12]


@dataclass(frozen=True)
class ExperimentConfig:
    """One run: data set and shots, code length, method and loss, backbone, seed and training length.

    ``seed`` draws the few-shot sample and seeds training; the query/database split of a data set is
    fixed (``split_seed``) so every method and seed is scored on the same images. ``hyperparameters``
    override the preset of the setting (``kalahash.presets``). Dataset ``listfile`` (your own lists)
    needs ``train_list``, ``query_list``, ``database_list`` and ``classnames`` (a file, one name a
    line), relative to ``data_root`` or absolute. ``knowledge`` is the control of K for the methods that
    read it (``"true"``, ``"permuted"``, ``"random"``; :func:`kalahash.hashing.control_knowledge`),
    seeded with ``seed``. Method ``zeroshot`` trains nothing (``epochs`` is ignored).
    """

    dataset: str = "shapes"
    data_root: str | None = None
    shots: int = 1
    bits: int = 16
    method: str = "kalahash"
    loss: str = "dpsh"
    backbone: str = "tiny-shapes"
    pretrained: str | None = None
    seed: int = 42
    epochs: int = 100
    batch_size: int = 8
    lr: float = 0.01
    hyperparameters: Mapping[str, Any] = field(default_factory=dict)
    topk: int | None = None
    ties: str = "index"
    split_seed: int = 0
    train_list: str | None = None
    query_list: str | None = None
    database_list: str | None = None
    classnames: str | None = None
    knowledge: str = "true"

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"unknown method {self.method!r}; choose one of {', '.join(METHODS)}")
        for name in ("shots", "bits", "epochs", "batch_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        from .data import resolve_dataset_name
        from .hashing import LOSSES
        from .hashing.factory import check_knowledge_control

        # canonical name (aliases such as nus-wide accepted); unknown names fail here, before anything runs
        object.__setattr__(self, "dataset", resolve_dataset_name(self.dataset))
        if self.loss not in LOSSES:
            raise ValueError(f"unknown loss {self.loss!r}; choose one of {', '.join(sorted(LOSSES))}")
        if self.ties not in ("index", "average"):
            raise ValueError(f"ties must be 'index' or 'average', got {self.ties!r}")
        object.__setattr__(self, "hyperparameters", dict(self.hyperparameters))
        given = [name for name in LIST_OPTIONS if getattr(self, name) is not None]
        if self.dataset == "listfile" and len(given) < len(LIST_OPTIONS):
            missing = ", ".join(n for n in LIST_OPTIONS if n not in given)
            raise ValueError(f"dataset 'listfile' needs {missing} (CLI: --train-list ... --classnames)")
        if self.dataset != "listfile" and given:
            raise ValueError(
                f"{', '.join(given)}: options of dataset 'listfile' only, not of {self.dataset!r}"
            )
        check_knowledge_control(self.method, self.hyperparameters, self.knowledge)

    def data_options(self) -> dict[str, str]:
        """The loader options of the data set (the list files of ``listfile``)."""
        return {name: getattr(self, name) for name in LIST_OPTIONS if getattr(self, name) is not None}

    def with_absolute_paths(self) -> ExperimentConfig:
        """This run with its data root, weights file and (without a data root) list files made absolute,
        as checkpoints record it: they are used from other working directories."""

        def absolute(path: str | None) -> str | None:
            return None if path is None else str(Path(path).expanduser().resolve())

        lists = {} if self.data_root is not None else {n: absolute(getattr(self, n)) for n in LIST_OPTIONS}
        weights = self.pretrained is not None and Path(self.pretrained).expanduser().is_file()
        pretrained = absolute(self.pretrained) if weights else self.pretrained
        return replace(self, data_root=absolute(self.data_root), pretrained=pretrained, **lists)

    def resolved_hparams(self, num_classes: int | None = None) -> tuple[dict[str, Any], str]:
        """The hyperparameters this run uses and where they come from (preset source or 'given').

        A data set without a released setting gets the release's defaults; with ``num_classes`` their
        CLoRA rank is capped at the number of classes (CLoRA selects rank classes per image).
        """
        keys = _METHOD_KEYS[self.method]
        if self.method == "lora":
            base, source = dict(LORA_BASELINE), "release default config"
        elif keys:
            p = setting_hparams(self.dataset, self.shots, self.bits)
            base, source = {k: p.hparams[k] for k in keys}, p.source
            if p.defaults and num_classes is not None and base["rank"] > num_classes:
                base["rank"], source = num_classes, f"{source}; rank capped at the {num_classes} classes"
        else:
            base, source = {}, "none needed"
        if self.method != "kalahash":
            base["loss"] = self.loss
        elif self.loss != "dpsh":
            base["loss"] = self.loss  # KIDDO with another similarity loss: plug-and-play
        if self.knowledge != "true":
            base.update(knowledge=self.knowledge, knowledge_seed=self.seed)
        base.update(self.hyperparameters)
        if self.hyperparameters:
            source += "; overridden: " + ", ".join(sorted(self.hyperparameters))
        if "anchor_momentum" in self.hyperparameters:
            source += "; ours, not the paper's: anchor_momentum"
        return base, source

    def to_row(self) -> dict[str, Any]:
        row = asdict(self)
        row["hyperparameters"] = json.dumps(self.hyperparameters, sort_keys=True)
        return row

    @property
    def config_id(self) -> str:
        """Identifies a run by everything that determines its result."""
        return config_hash(self.to_row())


# ----------------------------------------------------------------------------------------------------------
# The results table


def _config_problem(cells: Mapping[str, str]) -> str | None:
    """Why a results row is not the run its config_id names (None: it is, or the row cannot tell)."""
    if "config_id" not in cells:
        return None
    try:
        recorded = recorded_fields(cells, ExperimentConfig)
    except ValueError as err:
        return str(err)
    if recorded is None or config_hash(recorded) == cells["config_id"]:
        return None
    return (
        f"its config_id {cells['config_id']} is not that of the config it records ({config_hash(recorded)})"
    )


def read_results(path: str | os.PathLike = DEFAULT_RESULTS) -> pd.DataFrame:
    """The intact rows of a results table (:mod:`kalahash.results_table`); a damaged row (cut, not a
    number, or not the run its config_id names) is skipped with a DamagedRowWarning naming file:line.
    ``flags`` as :func:`kalahash.history.stored_flags` reads them."""
    return stored_flags(results_table.read_results(path, _config_problem))


def append_result(row: Mapping[str, Any], path: str | os.PathLike = DEFAULT_RESULTS) -> None:
    """Append one row atomically (concurrent appends all land); damaged rows move to ``<path>.damaged``."""
    results_table.append_result(row, path, _config_problem)


def find_result(config: ExperimentConfig, path: str | os.PathLike = DEFAULT_RESULTS) -> dict[str, Any] | None:
    return results_table.find_row(config.config_id, path, _config_problem)


# ----------------------------------------------------------------------------------------------------------
# Running


def checked_data(data: Any, cache_dir: str | os.PathLike, progress: bool = True) -> dict[str, Any]:
    """The integrity check of a data set, remembered while its lists and its images stay the same.

    Opening every file of NUS-WIDE or MS-COCO takes minutes, so a sweep reuses the stored verdict for
    the same lists (ids and labels: the fingerprint) as long as every file keeps its size and
    modification time (or the in-memory pixels their content): repairing or breaking an image makes the
    next run check again. ``kalahash check-data`` always checks afresh.
    """
    from .data import check_data, content_stamp, data_fingerprint

    path = Path(cache_dir) / f"{data.name}-{data_fingerprint(data)[:20]}.json"
    stamp = content_stamp(data)  # before the check: a file changed during it is checked again next time
    if path.exists():
        record = json.loads(path.read_text())
        if record.get("content_stamp") == stamp:
            return record
    check = check_data(data, progress=progress)
    record = {
        "ok": check.ok,
        "fingerprint": check.fingerprint,
        "content_stamp": stamp,
        "report": check.report(),
    }
    atomic_write_text(path, json.dumps(record, indent=2))
    return record


def project_paths(start: str | os.PathLike | None = None) -> dict[str, Path]:
    """Where results, figures and the cache go: under the project folder (the nearest ancestor of the
    working directory holding both ``kalahash/`` and ``notebooks/``), else under the working directory.

    Notebooks run with their own folder or the repository root as working directory; both land in the
    same ``results/`` and ``figures/``.
    """
    here = Path(start or Path.cwd()).resolve()
    root = next(
        (p for p in (here, *here.parents) if (p / "kalahash").is_dir() and (p / "notebooks").is_dir()), here
    )
    return {
        "root": root,
        "results": root / "results" / "results.csv",
        "workdir": root / "results",
        "figures": root / "figures",
        "cache": root / "cache" / "prefix",
    }


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
    (``resumed_from_epoch`` of the returned row equals ``epochs``).
    """
    from .backbones import load_backbone
    from .data import few_shot_split, load_dataset
    from .hashing import build_hasher

    if resume and checkpoint is None:
        raise ValueError("resume=True needs checkpoint=, the file to resume from (CLI: --checkpoint)")
    workdir = Path(workdir) if workdir is not None else Path(results or DEFAULT_RESULTS).parent
    if results is not None and not force:
        stored = find_result(cfg, results)
        if stored is not None:
            return {**stored, "skipped": True}
    device = resolve_device(device)
    if cache is not None and not isinstance(cache, PrefixCache):
        cache = PrefixCache(cache)
    data = load_dataset(cfg.dataset, cfg.data_root, seed=cfg.split_seed, **cfg.data_options())
    check = checked_data(data, Path(workdir) / "data_checks", progress=progress)
    if not check["ok"] and not allow_failed_check:
        raise ValueError(
            f"the data check of {cfg.dataset!r} failed:\n{check['report']}\nFix the data, or pass "
            "allow_failed_check=True (CLI: --allow-failed-check) to run anyway."
        )
    split_dir = Path(workdir) / "splits" / f"{cfg.dataset}-{check['fingerprint'][:12]}-split{cfg.split_seed}"
    train_set = few_shot_split(data, cfg.shots, seed=cfg.seed, out_dir=split_dir, strict=strict_shots)
    hparams, hparams_source = cfg.resolved_hparams(num_classes=len(data.classnames))
    torch.manual_seed(cfg.seed)
    backbone = load_backbone(cfg.backbone, cfg.pretrained, device=device)
    hasher = build_hasher(cfg.method, backbone, data.classnames, cfg.bits, **hparams)
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
    )
    began = time.perf_counter()
    scores = evaluate(hasher, data, topk=cfg.topk, cache=cache, ties=cfg.ties, progress=progress)
    counts = hasher.parameter_counts()
    diagnosis = history_summary(trained.history, cfg.bits, len(data.classnames), scores["database_codes"])
    history_file = save_history(trained.history, history_path(workdir, cfg.config_id))
    row = {
        "config_id": cfg.config_id,
        **cfg.to_row(),
        "hparams_used": json.dumps(hparams, sort_keys=True),
        "hparams_source": hparams_source,
        "train_images": len(train_set),
        "shot_shortfall": train_set.shortfall_text,
        "train_batch_size": train_config.batch_size,
        "map": scores["map"],
        "map_at": scores["map_topk"],
        "ties_rule": scores["ties"],
        "map_ties_index": scores["map_ties_index"],
        "map_ties_average": scores["map_ties_average"],
        **{k: v for k, v in scores.items() if k.startswith("p_at_")},
        "train_seconds": round(trained.seconds, 3),
        "eval_seconds": round(time.perf_counter() - began, 3),
        "trainable_params": counts["total_trainable"],
        **diagnosis,
        "history_file": str(history_file),
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
        append_result(row, results)
    return {**row, "skipped": False, "resumed_from_epoch": trained.resumed_from_epoch}


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


def run_sweep(base: ExperimentConfig, grid: Mapping[str, Iterable[Any]], **kwargs: Any) -> pd.DataFrame:
    """Run every configuration of a grid (seeds included), sharing one prefix cache; return the rows."""
    rows = [run_experiment(cfg, **kwargs) for cfg in expand_grid(base, grid)]
    return pd.DataFrame(rows)


def summarize(
    rows: pd.DataFrame,
    by: Iterable[str] = ("dataset", "shots", "bits", "method", "knowledge"),
    value: str = "map",
) -> pd.DataFrame:
    """Mean and standard deviation over seeds of ``value`` for each group, with a 'mean ± std' column.

    ``knowledge`` groups where rows have it (older rows used the true K). With ``flags`` in the rows, a
    ``flags`` column counts each flag's runs and a group with a flagged run gets ⚑ after 'mean ± std'.
    """
    rows = rows.assign(knowledge=rows["knowledge"].fillna("true")) if "knowledge" in rows else rows
    by = [b for b in by if b != "knowledge" or b in rows]
    grouped = rows.groupby(by, sort=False)
    table = grouped[value].agg(mean="mean", std="std", seeds="count").reset_index()
    table["std"] = table["std"].fillna(0.0)
    table[f"{value} (mean ± std)"] = [
        f"{m:.4f} ± {s:.4f}" for m, s in zip(table["mean"], table["std"], strict=True)
    ]
    if "flags" in rows:
        table["flags"] = grouped["flags"].agg(group_flags).to_numpy()
        marked = table["flags"] != ""
        table.loc[marked, f"{value} (mean ± std)"] += f" {FLAG_MARK}"
    return table


DEMO_METHODS = ("lb", "fft", "lora", "kalahash")


def run_demo(
    out_dir: str | os.PathLike = "figures",
    results: str | os.PathLike = DEFAULT_RESULTS,
    *,
    dataset: str = "shapes",
    shots: int = 1,
    bits: int = 16,
    epochs: int = 100,
    seed: int = 42,
    force: bool = False,
    progress: bool = True,
    cache: str | os.PathLike | None = DEFAULT_CACHE,
) -> pd.DataFrame:
    """The README's main job: LB, FFT, plain LoRA and KALAHash on the built-in offline world.

    Split lists and data checks go beside ``results``; ``cache`` is the prefix cache folder (None: none).
    """
    from .plots import bar_by_method, save_figure, save_table

    base = ExperimentConfig(dataset=dataset, shots=shots, bits=bits, epochs=epochs, seed=seed)
    options = {"results": results, "cache": cache, "force": force, "progress": progress}
    rows = pd.DataFrame([run_experiment(replace(base, method=m), **options) for m in DEMO_METHODS])
    table = rows[
        [
            "method",
            "map",
            "map_at",
            "p_at_100",
            "train_seconds",
            "trainable_params",
            "hparams_source",
            "flags",
        ]
    ]
    save_table(rows, "demo_results", out_dir=out_dir)
    title = f"{dataset}, {shots}-shot, {bits} bits (offline world, tiny CLIP)"
    summary = rows.rename(columns={"map": "mean"}).assign(std=0.0)
    save_figure(bar_by_method(summary, title), "demo_map", rows, out_dir=out_dir)
    return table


# ----------------------------------------------------------------------------------------------------------
# Checkpoints and data checks: the Python twins of `kalahash eval`, `export` and `check-data`


class UnnamedDatasetError(ValueError):
    """A checkpoint to evaluate names no data set (it was not written by a run) and none was given."""


@dataclass(frozen=True)
class ExportedModel:
    """What :func:`export_checkpoint` wrote: the file (open_clip weights + hash head) and the run's method."""

    path: Path
    method: str


def _restored_hasher(
    payload: dict[str, Any], pretrained: str | None, device: torch.device | None
) -> nn.Module:
    """The checkpoint's hasher on its backbone, seeded as ``run_experiment`` was so that a
    random-init backbone comes back with the same weights."""
    from .backbones import load_backbone

    experiment = payload.get("experiment", {})
    torch.manual_seed(experiment.get("seed", 0))
    name = payload["backbone"]["name"]
    backbone = load_backbone(name, pretrained or experiment.get("pretrained"), device=device)
    return restore_hasher(payload, backbone)


def evaluate_checkpoint(
    path: str | os.PathLike,
    *,
    dataset: str | None = None,
    data_root: str | os.PathLike | None = None,
    pretrained: str | None = None,
    topk: int | None = None,
    ties: str = "index",
    device: str | torch.device | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Score a checkpoint written by ``run_experiment(..., checkpoint=...)`` (CLI: ``kalahash eval``).

    ``dataset``, ``data_root`` and ``pretrained`` default to the checkpoint's own; the query/database
    split is the run's. Returns :func:`kalahash.train.evaluate`'s scores (``map``, ``map_topk``,
    ``p_at_100``, the codes ...). A checkpoint that names no data set needs ``dataset``
    (:class:`UnnamedDatasetError`, a ValueError, otherwise); data with other classes than the
    checkpoint's is refused (ValueError naming both).
    """
    from .data import load_dataset

    payload = load_checkpoint(path)
    experiment = payload.get("experiment", {})
    dataset = dataset or experiment.get("dataset")
    if dataset is None:
        raise UnnamedDatasetError(f"checkpoint {str(path)!r} does not name its data set: pass dataset")
    own = dataset == experiment.get("dataset")
    options = {n: experiment[n] for n in LIST_OPTIONS if own and experiment.get(n) is not None}
    root = data_root if data_root is not None or not own else experiment.get("data_root")
    device = resolve_device(device)
    try:
        data = load_dataset(dataset, root, seed=experiment.get("split_seed", 0), **options)
    except FileNotFoundError as err:
        if data_root is not None or root is None:
            raise
        raise FileNotFoundError(
            f"{err}\n(data root {root!r} comes from checkpoint {str(path)!r}: if the data is elsewhere now, "
            "pass data_root= its folder; CLI: --data-root)"
        ) from err
    check_same_data(payload, data_identity(data.name, data.classnames), path, "score")
    hasher = _restored_hasher(payload, pretrained, device)
    return evaluate(hasher, data, topk=topk, ties=ties, progress=progress)


def export_checkpoint(
    path: str | os.PathLike, out: str | os.PathLike, *, pretrained: str | None = None
) -> ExportedModel:
    """Fold a checkpoint's plain-LoRA adapters into the weights and write the CLIP model in open_clip's
    layout plus the hash head to ``out`` (atomic; CLI: ``kalahash export``): ``load_backbone(name,
    pretrained=out)`` (CLI: ``--pretrained out``) loads the adapted backbone, ``load_exported(out)``
    the backbone and head (the run's codes). CLoRA cannot be folded: ValueError, nothing written."""
    payload = load_checkpoint(path)
    out = export_model(_restored_hasher(payload, pretrained, None), out)
    return ExportedModel(out, payload["method"])


def check_dataset(
    name: str,
    data_root: str | os.PathLike | None = None,
    *,
    split_seed: int = 0,
    progress: bool = True,
    **options: Any,
) -> DataCheck:
    """Check a data set afresh: files, splits, duplicates, overlaps (CLI: ``kalahash check-data``).

    ``options`` go to the loader (the list files of ``listfile``). Unlike :func:`checked_data`, which
    runs remember, nothing is stored or reused.
    """
    from .data import check_data, load_dataset

    return check_data(load_dataset(name, data_root, seed=split_seed, **options), progress=progress)


WORLDS = ("shapes", "shapes-multi")
# Notebook profiles: "smoke" runs end-to-end on a CPU in minutes on the built-in offline world (CI runs
# it); "paper" is the paper's setting (CLIP ViT-B/32 with OpenAI weights, 1-8 shots, three seeds).
PROFILES: dict[str, dict[str, Any]] = {
    "smoke": {
        "dataset": "shapes",
        "backbone": "tiny-shapes",
        "pretrained": None,
        "shots": [1, 2, 4],
        "scaling_shots": [1, 2, 4, 8, 16],
        "seeds": [0, 1],
        "epochs": 100,
        "methods": ["lb", "fft", "lora", "kalahash"],
    },
    "paper": {
        "dataset": "cifar10",
        "backbone": "ViT-B-32",
        "pretrained": "openai",
        "shots": [1, 2, 4, 8],
        "scaling_shots": [1, 2, 4, 8, 16, 32, 64, 128, 256, 500],
        "seeds": [0, 1, 2],
        "epochs": 100,
        "methods": ["lb", "fft", "lora", "kalahash"],
    },
}


_LIST_SETTINGS = ("shots", "scaling_shots", "seeds", "methods")


def _as_list(name: str, value: Any) -> list[Any]:
    """Lists as papermill's ``-p`` passes them: a list, one value, or text such as "[1, 2]" or "1 2"."""
    if isinstance(value, str):
        text = value.strip()
        try:
            value = json.loads(text)
        except json.JSONDecodeError:
            value = [json.loads(v) if v.lstrip("-").isdigit() else v for v in text.replace(",", " ").split()]
    values = list(value) if isinstance(value, list | tuple) else [value]
    if not values:
        raise ValueError(f"{name} is empty: give at least one value")
    return values


def notebook_settings(profile: str = "auto", **given: Any) -> dict[str, Any]:
    """A notebook's settings: its profile's values, replaced by every parameter given (not None).

    ``profile="auto"`` picks "smoke" for the built-in worlds and "paper" for real data sets, so
    ``papermill 03_shots.ipynb out.ipynb -p dataset cifar10`` runs the paper's setting. A real data
    set without ``data_root`` is looked for in ``data/<name>`` of the project (or ``$KALAHASH_DATA``),
    wherever the notebook runs from. List settings accept text (``-p seeds "0 1 2"``).

    The profile's ``pretrained`` goes with its backbone only: with another backbone (and no
    ``pretrained`` given) it is None, the backbone's own default; ``pretrained=""`` or ``"None"``
    (papermill's ``-p pretrained ""``) also means that default.
    """
    from .data import default_data_root, resolve_dataset_name

    dataset = given.get("dataset")
    if profile == "auto":
        profile = "smoke" if dataset is None or dataset in WORLDS else "paper"
    if profile not in PROFILES:
        raise ValueError(f"unknown profile {profile!r}; choose auto, {', '.join(PROFILES)}")
    chosen = {k: v for k, v in given.items() if v is not None}
    base = dict(PROFILES[profile])
    if chosen.get("backbone", base["backbone"]) != base["backbone"]:
        base["pretrained"] = None  # the profile's weights are its backbone's
    settings = {**base, **chosen}
    if str(settings.get("pretrained")).strip() in ("", "None"):
        settings["pretrained"] = None
    settings["profile"] = profile
    settings["dataset"] = resolve_dataset_name(settings["dataset"])
    for name in _LIST_SETTINGS:
        if name in settings:
            settings[name] = _as_list(name, settings[name])
    if settings["dataset"] not in WORLDS and settings.get("data_root") is None:
        default = default_data_root(settings["dataset"])
        settings["data_root"] = str(default if default.is_absolute() else project_paths()["root"] / default)
    return settings
