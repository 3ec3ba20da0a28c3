"""Dependencies by use: the library core imports and runs without the notebooks' and the search's extras,
and what needs one names it."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import tomllib

from kalahash.extras import EXTRAS, MissingExtraError, require

ROOT = Path(__file__).resolve().parents[1]
# Every package an extra installs, as imported: none of them may be needed by the core.
BLOCKED = (
    "umap",
    "faiss",
    "papermill",
    "jupyterlab",
    "jupyter_server",
    "ipykernel",
    "ipywidgets",
    "nbval",
    "submitit",
)

_BLOCKER = f"""
import importlib.abc, sys

class Blocker(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {BLOCKED!r}:
            raise ModuleNotFoundError(f"No module named {{name!r}} (blocked by the test)", name=name)
        return None

sys.meta_path.insert(0, Blocker())
"""


def _run_without_extras(code: str, tmp_path: Path) -> subprocess.CompletedProcess:
    script = tmp_path / "core.py"
    script.write_text(_BLOCKER + textwrap.dedent(code))
    env = {"PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"}
    return subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=600
    )


def test_the_core_runs_without_the_extras(tmp_path):
    """kalahash.lora, hashing, train and experiments import and make a run (and the demo's figure) with
    umap, faiss, papermill and Jupyter unimportable."""
    done = _run_without_extras(
        """
        import torch
        import kalahash.lora, kalahash.hashing, kalahash.train, kalahash.experiments, kalahash.plots
        from kalahash.experiments import ExperimentConfig, run_experiment
        from kalahash.hashing import build_hasher

        torch.set_flush_denormal(True)
        cfg = ExperimentConfig(dataset="shapes", backbone="tiny", method="kalahash", epochs=1, bits=8)
        row = run_experiment(cfg, results="r/results.csv", cache=None, progress=False)
        print("map", row["map"] > 0)
        blocked = sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED)
        print("blocked imported:", blocked)
        """.replace("BLOCKED", repr(BLOCKED)),
        tmp_path,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "map True" in done.stdout and "blocked imported: []" in done.stdout


def test_what_needs_an_extra_names_it(tmp_path):
    """Without the extras, a UMAP map, a faiss index and reproduce each say which extra to install; the CLI
    says so in one line."""
    done = _run_without_extras(
        """
        import numpy as np
        from kalahash.cli import main
        from kalahash.embeddings import umap_2d
        from kalahash.extras import MissingExtraError
        from kalahash.reproduce import reproduce
        from kalahash.search import build_index

        for call in (lambda: umap_2d(np.zeros((5, 4)), "euclidean"), lambda: build_index("codes"), reproduce):
            try:
                call()
            except MissingExtraError as err:
                print("error:", err)
        print("exit", main(["index", "--codes", "codes"]))
        """,
        tmp_path,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.splitlines()
    assert (
        'error: a UMAP map needs umap-learn, which is not installed: pip install "kalahash[notebooks]"'
        in lines
    )
    assert (
        'error: a faiss index needs faiss-cpu, which is not installed: pip install "kalahash[search]"'
        in lines
    )
    assert any(
        line.endswith('needs papermill, which is not installed: pip install "kalahash[notebooks]"')
        for line in lines
    )
    assert "exit 2" in lines
    assert done.stderr.strip().splitlines()[-1] == (
        'kalahash index: error: a faiss index needs faiss-cpu, which is not installed: pip install "kalahash[search]"'
    )


def test_extras_are_the_packages_pyproject_lists():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    core = " ".join(project["dependencies"])
    for package, extra in EXTRAS.values():
        assert package in extras[extra] and package not in core
    for package in (
        "jupyterlab",
        "papermill",
        "ipykernel",
        "ipywidgets",
        "umap-learn",
        "faiss-cpu",
        "submitit",
    ):
        assert package not in core
    assert (
        "kalahash[notebooks,search,launch]" in extras["dev"]
    )  # `pip install -e ".[dev]"` installs everything


def test_require_imports_or_names_the_extra():
    assert require("papermill", "x").__name__ == "papermill"
    with pytest.raises(
        MissingExtraError, match=r'needs faiss-cpu, which is not installed: pip install "kalahash\[search\]"'
    ):
        EXTRAS["kalahash_no_such_module"] = ("faiss-cpu", "search")
        try:
            require("kalahash_no_such_module", "a faiss index")
        finally:
            del EXTRAS["kalahash_no_such_module"]
