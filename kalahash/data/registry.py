"""The data-set registry: names -> loaders, and :func:`load_dataset`, the one entry point.

Loaders register themselves with :func:`register_dataset`; the offline worlds register theirs from their
own package (:mod:`kalahash.worlds`), so this package never imports a world.
"""

from __future__ import annotations

import difflib
import inspect
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .types import RetrievalData

Loader = Callable[..., RetrievalData]
DATASETS: dict[str, Loader] = {}
_ALIASES: dict[str, str] = {}


def register_dataset(name: str, *, aliases: Sequence[str] = (), overwrite: bool = False):
    """Register a loader under ``name`` (and ``aliases``).

    A loader is called as ``loader(data_root, *, seed, download, **options)`` with ``data_root`` a
    ``Path`` or ``None`` (the loader picks its default) and returns a :class:`RetrievalData`. Options are
    keyword-only parameters; :func:`load_dataset` rejects unknown ones with the accepted list.
    """
    key = name.strip().lower()

    def decorator(loader: Loader) -> Loader:
        for k in (key, *(a.strip().lower() for a in aliases)):
            if not overwrite and (k in DATASETS or k in _ALIASES):
                raise ValueError(
                    f"dataset name {k!r} is already registered; pass overwrite=True to replace it"
                )
        DATASETS[key] = loader
        for alias in aliases:
            _ALIASES[alias.strip().lower()] = key
        return loader

    return decorator


def resolve_dataset_name(name: str) -> str:
    """The registered name for ``name`` (case-insensitive, aliases such as ``nus-wide`` accepted)."""
    key = str(name).strip().lower()
    key = _ALIASES.get(key, key)
    if key not in DATASETS:
        close = difflib.get_close_matches(key, [*DATASETS, *_ALIASES], n=3, cutoff=0.5)
        close = list(dict.fromkeys(_ALIASES.get(c, c) for c in close))
        hint = f"; did you mean {' or '.join(map(repr, close))}?" if close else ""
        raise ValueError(f"unknown dataset {name!r}; known datasets: {', '.join(sorted(DATASETS))}{hint}")
    return key


def default_data_root(name: str) -> Path:
    """``$KALAHASH_DATA/<name>``, or ``data/<name>`` relative to the working directory."""
    return Path(os.environ.get("KALAHASH_DATA", "data")) / name


def _check_options(name: str, loader: Loader, options: Mapping[str, Any]) -> None:
    params = inspect.signature(loader).parameters.values()
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        return
    accepted = [p.name for p in params if p.kind is inspect.Parameter.KEYWORD_ONLY]
    accepted = [a for a in accepted if a not in ("seed", "download")]
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        hints = {u: difflib.get_close_matches(u, accepted, n=1) for u in unknown}
        hint = "; ".join(f"{u!r}: did you mean {h[0]!r}?" for u, h in hints.items() if h)
        raise ValueError(
            f"unknown option(s) for dataset {name!r}: {', '.join(unknown)}; accepted: "
            f"{', '.join(accepted) or 'none'}" + (f" ({hint})" if hint else "")
        )
    required = [
        p.name
        for p in params
        if p.kind is inspect.Parameter.KEYWORD_ONLY and p.default is inspect.Parameter.empty
    ]
    missing = [r for r in required if r not in options and r not in ("seed", "download")]
    if missing:
        raise ValueError(f"dataset {name!r} needs option(s): {', '.join(missing)}")


def load_dataset(
    name: str,
    /,
    data_root: str | Path | None = None,
    *,
    seed: int = 0,
    download: bool = False,
    **kwargs: Any,
) -> RetrievalData:
    """Load a registered retrieval benchmark by name.

    Parameters
    ----------
    name : (positional only) a key of :data:`DATASETS` (``cifar10``, ``nuswide``, ``coco``,
        ``listfile``, ``folder``, ``shapes``, ``shapes-multi``) or an alias (``cifar-10``, ``nus-wide``,
        ``mscoco``). Positional only, so that loaders may take a ``name=`` option.
    data_root : the data set's folder; ``None`` means :func:`default_data_root` (``data/<name>``).
    seed : seeds the protocol split where the loader makes one (cifar10, folder, worlds); list-file
        data sets come already split and ignore it.
    download : fetch the data if it is missing, where a download exists (only ``cifar10``).
    **kwargs : loader options, e.g. ``query_per_class`` for cifar10 or ``image_root`` for nuswide.
    """
    key = resolve_dataset_name(name)
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    loader = DATASETS[key]
    _check_options(key, loader, kwargs)
    root = None if data_root is None else Path(data_root).expanduser()
    return loader(root, seed=int(seed), download=bool(download), **kwargs)
