"""The import direction of the package: data → backbones → adapters → hashing → train → experiments →
studies → cli.

Every module of ``kalahash`` has a layer; a module may import only from layers strictly below its own,
or from inside its own package at its own layer or below. A package's modules share its layer unless
the table gives one of them its own (``"worlds.pretrain"``). Every form of import counts
(``import kalahash.x``, ``from kalahash import x``, ``from kalahash.x import y``, relative imports of any
depth, ``from . import x``), inside functions too; imports under ``if TYPE_CHECKING:`` are for type hints
only and are not counted. A new top-level module must be given a layer here, so the rule is decided,
not drifted into.
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
    "machine": 0,
    # the class prompt CLIP's text tower reads (backbones, hashing and the worlds' vocabularies)
    "prompts": 0,
    # optional dependencies: imported where used, or an error naming the extra that installs them
    "extras": 0,
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
    "worlds": 2,
    # the tiny CLIPs' pre-training on a world's captions: above the backbones it trains
    "worlds.pretrain": 3,
    # zero-shot accuracy, linear probes and K's shape of a CLIP on a world: above the backbones it reads
    "worlds.evaluation": 3,
    "backbones": 2,
    # feeding images to the device (workers, pinned memory, device-side preprocessing): data only
    "loader": 2,
    "lora": 3,
    "hashing": 4,
    # the released hyperparameters, what the worlds' sets borrow of them (their specs), and the release's
    # defaults (the adapters' and KIDDO's own)
    "presets": 5,
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


def _dotted(path: Path) -> str:
    """The module's name below ``kalahash``: ``data.checks``, ``experiments`` for its ``__init__``."""
    parts = list(path.relative_to(PACKAGE).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = sorted(p for p in PACKAGE.rglob("*.py") if p.name != "__init__.py" or p.parent != PACKAGE)
_NAMES = {_dotted(p) for p in PACKAGE.rglob("*.py")} - {""}  # every module and package of kalahash


def _layer_key(name: str) -> str:
    """The entry of LAYERS that decides module ``name``'s layer: its own, else its package's."""
    parts = name.split(".")
    for end in range(len(parts), 0, -1):
        key = ".".join(parts[:end])
        if key in LAYERS:
            return key
    return parts[0]


def _type_checking_nodes(tree: ast.AST) -> set[int]:
    skipped: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skipped.update(id(n) for stmt in node.body for n in ast.walk(stmt))
    return skipped


def _targets(base: str, names: list[str]) -> list[str]:
    """What ``from <base> import <names>`` imports: each name that is a module of kalahash, else
    ``base`` itself (``base`` is below ``kalahash``, "" for the package)."""
    found = []
    for name in names:
        sub = f"{base}.{name}" if base else name
        if sub in _NAMES:
            found.append(sub)
        elif base:
            found.append(base)
    return found


def _imported_modules(path: Path, source: str | None = None) -> list[tuple[int, str]]:
    """(line, LAYERS entry of the imported kalahash module) for every import in the file, local
    imports included."""
    tree = ast.parse(path.read_text() if source is None else source)
    skipped = _type_checking_nodes(tree)
    package = _dotted(path).split(".") if path.name == "__init__.py" else _dotted(path).split(".")[:-1]
    found = []
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            names = [a.name.removeprefix("kalahash.") for a in node.names if a.name.startswith("kalahash.")]
        elif isinstance(node, ast.ImportFrom) and node.level:
            base = package[: len(package) - (node.level - 1)]
            base = ".".join([*base, *(node.module.split(".") if node.module else [])])
            names = _targets(base, [a.name for a in node.names])
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "kalahash":
            base = node.module.removeprefix("kalahash").removeprefix(".")
            names = _targets(base, [a.name for a in node.names])
        else:
            continue
        found += [(node.lineno, _layer_key(name)) for name in names]
    return found


def test_every_module_has_a_layer():
    missing = sorted({_dotted(p).split(".")[0] for p in MODULES} - set(LAYERS))
    assert not missing, f"give these modules a layer in LAYERS: {missing}"


def test_every_layer_names_a_module():
    stale = sorted(set(LAYERS) - _NAMES)
    assert not stale, f"LAYERS names modules that do not exist: {stale}"


def _wrong_imports(path: Path, source: str | None = None) -> list[str]:
    """The imports of a module that do not point down, in words."""
    here = _layer_key(_dotted(path))
    wrong = []
    for line, target in _imported_modules(path, source):
        if target == here:
            continue
        inside = target.split(".")[0] == here.split(".")[0]  # the same package: its own layer is fine
        if LAYERS[target] > LAYERS[here] or (LAYERS[target] == LAYERS[here] and not inside):
            wrong.append(
                f"line {line}: {here} (layer {LAYERS[here]}) imports {target} (layer {LAYERS[target]})"
            )
    return wrong


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_imports_point_down(path):
    wrong = _wrong_imports(path)
    assert not wrong, "\n".join(wrong)


def test_the_checker_sees_a_wrong_import():
    """The rule bites: a data module importing a world inside a function is found, a type hint is not;
    inside a package, a module may not import one of its package's modules that sits higher."""
    source = (
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from kalahash.hashing import Hasher\n"
        "def f():\n    from ..worlds import shapes\n    return shapes\n"
    )
    assert _imported_modules(PACKAGE / "data" / "probe.py", source) == [(5, "worlds")]
    assert _wrong_imports(PACKAGE / "data" / "probe.py", source) == [
        "line 5: data (layer 1) imports worlds (layer 2)"
    ]
    assert _wrong_imports(PACKAGE / "worlds" / "probe.py", "from . import pretrain") == [
        "line 1: worlds (layer 2) imports worlds.pretrain (layer 3)"
    ]
    assert (
        _wrong_imports(PACKAGE / "worlds" / "pretrain.py", "from . import shapes\nimport kalahash.backbones")
        == []
    )
    assert _wrong_imports(PACKAGE / "backbones.py", "from kalahash import worlds") == [
        "line 1: backbones (layer 2) imports worlds (layer 2)"
    ]


@pytest.mark.parametrize(
    "where,source,expected",
    [
        ("data/probe.py", "from kalahash import worlds", ["worlds"]),
        ("data/probe.py", "from kalahash import __version__, worlds", ["worlds"]),
        ("data/probe.py", "import kalahash.worlds", ["worlds"]),
        ("data/probe.py", "import kalahash.worlds as w, numpy", ["worlds"]),
        ("data/probe.py", "from kalahash.experiments.runner import run_experiment", ["experiments"]),
        ("data/probe.py", "from kalahash.experiments import runner", ["experiments"]),
        ("data/probe.py", "from .. import worlds", ["worlds"]),
        ("data/probe.py", "from ..worlds import caption_pool", ["worlds"]),
        ("data/probe.py", "from . import checks", ["data"]),
        ("data/probe.py", "from .checks import check_data", ["data"]),
        ("hashing/losses/probe.py", "from ... import worlds", ["worlds"]),
        ("hashing/losses/probe.py", "from ...worlds import caption_pool", ["worlds"]),
        ("hashing/losses/probe.py", "from .. import model", ["hashing"]),
        ("probe.py", "from . import worlds, data", ["worlds", "data"]),
        ("probe.py", "from .worlds import caption_pool", ["worlds"]),
        ("experiments/__init__.py", "from . import runner", ["experiments"]),
        ("data/probe.py", "from kalahash.worlds import pretrain", ["worlds.pretrain"]),
        ("data/probe.py", "import kalahash.worlds.pretrain", ["worlds.pretrain"]),
        ("worlds/probe.py", "from . import pretrain, shapes", ["worlds.pretrain", "worlds"]),
        ("worlds/probe.py", "from .pretrain import pretrain_tiny", ["worlds.pretrain"]),
        ("data/probe.py", "import numpy\nfrom numpy import kalahash", []),
    ],
)
def test_the_checker_sees_every_import_form(where, source, expected):
    assert [name for _, name in _imported_modules(PACKAGE / where, source)] == expected


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_a_module_fits_in_a_readers_head(path):
    """No module over 600 lines (the guide: a module a reader can hold in their head)."""
    lines = len(path.read_text().splitlines())
    assert lines < 600, f"{path.relative_to(PACKAGE)} has {lines} lines: split it by what it holds"


def test_the_readme_maps_every_module():
    """README's "How the pieces fit" has a row for each top-level module and package."""
    text = (PACKAGE.parent / "README.md").read_text()
    rows = {
        name: f"`kalahash/{name}{'/' if (PACKAGE / name).is_dir() else '.py'}`"
        for name in LAYERS
        if "." not in name
    }
    missing = sorted(name for name, row in rows.items() if f"| {row} |" not in text)
    assert not missing, f"give these modules a row in README's module map: {missing}"
