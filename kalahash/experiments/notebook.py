"""The notebooks' settings: profiles (:data:`PROFILES`: ``smoke`` on the built-in world, ``paper`` on
real data), :func:`notebook_settings` (a profile with papermill's parameters on top, list settings
parsed from text by :func:`list_setting`) and :func:`project_paths` (where results, figures and the
cache go)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from ..worlds import world_datasets
from .config import DEFAULT_BACKBONE, DEFAULT_DATASET, DEFAULT_FIGURES

# Where the notebooks write their figures and tables, when set (an absolute path, or relative to the
# project): ``kalahash reproduce`` sets it to its runs folder.
FIGURES_VARIABLE = "KALAHASH_FIGURES"

# Notebook profiles: "smoke" runs end-to-end on a CPU in minutes on the built-in offline world (CI runs
# it); "paper" is the paper's setting (CLIP ViT-B/32 with OpenAI weights, 1-8 shots, three seeds).
PROFILES: dict[str, dict[str, Any]] = {
    "smoke": {
        "dataset": DEFAULT_DATASET,
        "backbone": DEFAULT_BACKBONE,
        "pretrained": None,
        "shots": [1, 2, 4],
        "scaling_shots": [1, 2, 4, 8],
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


def list_setting(name: str, value: Any) -> list[Any]:
    """A list setting of a notebook as papermill's ``-p`` passes it: a list, one value, or text such as
    "[1, 2]" or "1 2" (ValueError naming the setting when it is empty)."""
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
    (papermill's ``-p pretrained ""``) also means that default. ``launcher`` (None: runs in the notebook;
    "local", "slurm", a mapping or its JSON text: :class:`~kalahash.experiments.Launcher`) is checked
    here and kept as plain values, for ``run_arms(..., launcher=settings["launcher"])``.
    """
    from ..data import default_data_root, resolve_dataset_name
    from .launch import launcher_setting

    dataset = given.get("dataset")
    if profile == "auto":
        profile = "smoke" if dataset is None or dataset in world_datasets() else "paper"
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
    settings["launcher"] = launcher_setting(settings.get("launcher"))
    settings["dataset"] = resolve_dataset_name(settings["dataset"])
    for name in _LIST_SETTINGS:
        if name in settings:
            settings[name] = list_setting(name, settings[name])
    if settings["dataset"] not in world_datasets() and settings.get("data_root") is None:
        default = default_data_root(settings["dataset"])
        settings["data_root"] = str(default if default.is_absolute() else project_paths()["root"] / default)
    return settings


def project_paths(start: str | os.PathLike | None = None) -> dict[str, Path]:
    """Where results, figures and the cache go: under the project folder (the nearest ancestor of the
    working directory holding both ``kalahash/`` and ``notebooks/``), else under the working directory.

    Notebooks run with their own folder or the repository root as working directory; both land in the
    same ``results/``. Figures go to ``$KALAHASH_FIGURES`` when it is set (``kalahash reproduce``: its
    runs folder), else to ``results/figures/``, which git ignores: executing a notebook (Jupyter, nbval)
    never rewrites the committed ``figures/``; ``kalahash reproduce --update-figures`` refreshes them.
    """
    here = Path(start or Path.cwd()).resolve()
    root = next(
        (p for p in (here, *here.parents) if (p / "kalahash").is_dir() and (p / "notebooks").is_dir()), here
    )
    return {
        "root": root,
        "results": root / "results" / "results.csv",
        "workdir": root / "results",
        "figures": root / os.environ.get(FIGURES_VARIABLE, DEFAULT_FIGURES),
        "cache": root / "cache" / "prefix",
    }
