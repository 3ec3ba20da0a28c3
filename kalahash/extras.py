"""Optional dependencies, by use. The library core (data, backbones, adapters, hashing, training, runs,
the demo's figure) needs none of them; the notebooks (papermill, Jupyter, UMAP maps), the faiss index of
``kalahash index`` and the launchers of ``kalahash sweep --launcher`` (submitit) are extras of the package
(pyproject.toml: ``notebooks``, ``search``, ``launch``; ``dev`` installs them all). :func:`require` imports one where it is used, or says which extra installs it.
"""

from __future__ import annotations

import importlib
from types import ModuleType

# module -> (the package that provides it, the extra of kalahash that installs it)
EXTRAS: dict[str, tuple[str, str]] = {
    "umap": ("umap-learn", "notebooks"),
    "papermill": ("papermill", "notebooks"),
    "faiss": ("faiss-cpu", "search"),
    "submitit": ("submitit", "launch"),  # the launchers raise their own SubmititMissingError, naming it
}


class MissingExtraError(ModuleNotFoundError):
    """An optional package is not installed; the message names the extra of kalahash that installs it."""


def require(module: str, purpose: str) -> ModuleType:
    """``module`` imported, or a :class:`MissingExtraError` saying that ``purpose`` needs it and how to
    install it (``pip install "kalahash[<extra>]"``). A package that is installed but fails to import
    raises its own error."""
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as err:
        if err.name != module:
            raise
        package, extra = EXTRAS[module]
        raise MissingExtraError(
            f'{purpose} needs {package}, which is not installed: pip install "kalahash[{extra}]"', name=module
        ) from None
