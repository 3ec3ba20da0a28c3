"""The import direction of the package: data → backbones → adapters → hashing → train → experiments →
studies → cli.

Every module of ``kalahash`` has a layer; a module may import only from layers strictly below its own
(or from inside its own package). Imports under ``if TYPE_CHECKING:`` are for type hints only and are
not counted. A new top-level module must be given a layer here, so the rule is decided, not drifted into.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import kalahash

PACKAGE = Path(kalahash.__file__).parent

LAYERS = {
    # utilities that know nothing of the rest
    "fileio": 0,
    "hamming": 0,
    "presets": 0,
    "machine": 0,
    # the metrics rank with the Hamming engine
    "metrics": 1,
    "results_table": 1,
    "data": 1,
    # a run's history and flags: tables only (plots draws them, experiments writes them)
    "history": 1,
    # model definitions that backbones dispatches to (SLIP's checkpoints)
    "slip": 1,
    # the token path of ViT towers (split attention, ImageTower): what backbones builds on
    "towers": 1,
    # the built-in worlds sit above data (they register with it); data never imports them
    "world": 2,
    "objects10": 3,
    "backbones": 2,
    # feeding images to the device (workers, pinned memory, device-side preprocessing): data only
    "loader": 2,
    "lora": 3,
    "hashing": 4,
    "cache": 5,
    "checkpoints": 5,
    "plots": 5,
    "train": 6,
    # expected and actual sizes of the prefix cache, from backbone shapes on the meta device
    "cache_size": 6,
    # features, codes, silhouettes and UMAP views of trained hashers, for the figures
    "embeddings": 6,
    # runs, sweeps and the notebooks' settings: a package whose modules import each other
    "experiments": 7,
    "pretrain": 7,
    "search": 7,
    # the codes folder of `kalahash encode` (files only)
    "codestore": 2,
    # the notebooks' studies, measurements and runner: above the runs they make
    "studies": 8,
    "efficiency": 8,
    "reproduce": 8,
    # trained hashers restored from their checkpoints, embedded for Figure 1
    "views": 8,
    # the notebooks' generated readings of their rows
    "verdicts": 8,
    "cli": 9,
}


def _top_level(path: Path) -> str:
    return path.relative_to(PACKAGE).parts[0].removesuffix(".py")


MODULES = sorted(p for p in PACKAGE.rglob("*.py") if p.name != "__init__.py" or p.parent != PACKAGE)
_MODULE_NAMES = {_top_level(p) for p in MODULES}  # names such as __version__ are not modules


def _type_checking_nodes(tree: ast.AST) -> set[int]:
    skipped: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skipped.update(id(n) for stmt in node.body for n in ast.walk(stmt))
    return skipped


def _imported_modules(path: Path, source: str | None = None) -> list[tuple[int, str]]:
    """(line, top-level kalahash module) for every import in the file, local imports included."""
    tree = ast.parse(path.read_text() if source is None else source)
    skipped = _type_checking_nodes(tree)
    package_parts = path.relative_to(PACKAGE).parent.parts
    found = []
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = list(package_parts[: len(package_parts) - (node.level - 1)])
                module = [*base, *(node.module.split(".") if node.module else [])]
                # "from . import data" at the top imports the sibling modules themselves
                names = (
                    [".".join(["kalahash", *module, a.name]) for a in node.names]
                    if not module
                    else [".".join(["kalahash", *module])]
                )
            else:
                names = [node.module or ""]
        else:
            continue
        for name in names:
            parts = name.split(".")
            if parts[0] == "kalahash" and len(parts) > 1 and parts[1] in _MODULE_NAMES:
                found.append((node.lineno, parts[1]))
    return found


def test_every_module_has_a_layer():
    missing = sorted({_top_level(p) for p in MODULES} - set(LAYERS))
    assert not missing, f"give these modules a layer in LAYERS: {missing}"


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_imports_point_down(path):
    here = _top_level(path)
    wrong = [
        f"line {line}: {here} (layer {LAYERS[here]}) imports {target} (layer {LAYERS[target]})"
        for line, target in _imported_modules(path)
        if target != here and LAYERS[target] >= LAYERS[here]
    ]
    assert not wrong, "\n".join(wrong)


def test_the_checker_sees_a_wrong_import():
    """The rule bites: a data module importing the world inside a function is found, a type hint is not."""
    source = (
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from kalahash.hashing import Hasher\n"
        "def f():\n    from ..world import make_retrieval_data\n    return make_retrieval_data\n"
    )
    assert _imported_modules(PACKAGE / "data" / "probe.py", source) == [(5, "world")]
