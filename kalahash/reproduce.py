"""``kalahash reproduce``: every notebook, in order, through papermill into ``runs/<timestamp>/``.

A call continues the latest runs folder made for the same request (profile and data set): a notebook
that finished there, from the same source, is reused; one that failed, was interrupted, changed or was
never run is run. ``fresh`` starts a new folder. Inside a notebook, finished experiments come back from
the results table (``results/results.csv``), so even a fresh call only pays for what is new. The
notebooks write their figures and tables to ``figures/`` of the runs folder (through
``$KALAHASH_FIGURES``, :func:`kalahash.experiments.project_paths`), so a reproduction leaves the
repository's files as they are; ``update_figures`` then copies them into the project's ``figures/``.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from .experiments import Launcher, launcher_setting, project_paths
from .experiments.launch import require_launcher
from .experiments.notebook import FIGURES_VARIABLE
from .extras import require
from .fileio import atomic_write_text

MANIFEST = "manifest.json"
PROFILES = ("auto", "smoke", "paper")


@dataclass(frozen=True)
class Reproduction:
    """What a :func:`reproduce` call did: its runs folder, a line per notebook (``table``: notebook,
    status ran/reused/failed, seconds, output, error), where figures and results are, the figures this
    call wrote, and those it copied into the project's ``figures/`` (``update_figures``)."""

    run_dir: Path
    table: pd.DataFrame
    figures: Path
    results: Path
    figures_written: list[Path]
    figures_updated: list[Path]

    @property
    def ok(self) -> bool:
        return bool((self.table["status"] != "failed").all())


def find_notebooks(directory: str | Path, only: Sequence[str] | None = None) -> list[Path]:
    """The numbered notebooks (``0*.ipynb``) of ``directory`` in order; with ``only``, those whose
    name starts with one of its prefixes ("03", "06_ablations"); a prefix that matches none is refused."""
    directory = Path(directory)
    found = sorted(directory.glob("0*.ipynb"))
    if not found:
        raise FileNotFoundError(f"no numbered notebooks (0*.ipynb) in {str(directory)!r}")
    if not only:
        return found
    unmatched = [p for p in only if not any(n.name.startswith(str(p)) for n in found)]
    if unmatched:
        names = ", ".join(n.stem for n in found)
        raise ValueError(
            f"--only {' '.join(map(str, unmatched))} matches no notebook; the notebooks are: {names}"
        )
    return [n for n in found if any(n.name.startswith(str(p)) for p in only)]


def _fingerprint(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


def _read_manifest(run_dir: Path) -> dict[str, Any]:
    return json.loads((run_dir / MANIFEST).read_text())


def _write_manifest(run_dir: Path, manifest: dict[str, Any]) -> None:
    atomic_write_text(run_dir / MANIFEST, json.dumps(manifest, indent=2))


def latest_run_dir(runs_root: str | Path, request: dict[str, Any]) -> Path | None:
    """The newest runs folder whose manifest was made for ``request``, or None."""
    runs_root = Path(runs_root)
    if not runs_root.is_dir():
        return None
    for candidate in sorted((p for p in runs_root.iterdir() if (p / MANIFEST).is_file()), reverse=True):
        if _read_manifest(candidate).get("request") == request:
            return candidate
    return None


def _new_run_dir(runs_root: Path) -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    run_dir, n = runs_root / stamp, 1
    while run_dir.exists():
        n += 1
        run_dir = runs_root / f"{stamp}-{n}"
    run_dir.mkdir(parents=True)
    return run_dir


def _execute(source: Path, output: Path, parameters: dict[str, Any], cwd: Path, kernel: str | None) -> str:
    """Run one notebook; return "" or the error that stopped it."""
    import papermill

    try:
        papermill.execute_notebook(
            str(source),
            str(output),
            parameters=parameters,
            cwd=str(cwd),
            kernel_name=kernel,
            progress_bar=False,
        )
    except papermill.PapermillExecutionError as err:
        return f"{err.ename}: {err.evalue} (cell {err.exec_count})"
    return ""


def reproduce(
    profile: str = "auto",
    only: Sequence[str] | None = None,
    dataset: str | None = None,
    *,
    root: str | Path | None = None,
    fresh: bool = False,
    kernel: str | None = None,
    update_figures: bool = False,
    launcher: Any = None,
    log: Callable[[str], None] = print,
) -> Reproduction:
    """Run the project's notebooks in order with ``-p profile`` (and ``-p dataset``) into a runs folder.

    ``root`` is the project (default: the one holding the working directory); notebooks come from its
    ``notebooks/``, run with the project as working directory, and their executed copies go to
    ``runs/<timestamp>/``, their figures and tables to ``runs/<timestamp>/figures/``. ``only`` keeps the
    notebooks with those name prefixes. A failed notebook is recorded and the next one runs. With
    ``update_figures`` the runs folder's figures (those of reused notebooks too) are then copied into the
    project's ``figures/``, the committed gallery (CLI: ``--update-figures``). ``launcher`` ("local",
    "slurm" or a :class:`~kalahash.experiments.Launcher`; CLI: ``--launcher``) is every notebook's
    ``launcher`` parameter: each study submits its missing runs as jobs and waits for their rows.
    ``log`` gets a line as each notebook starts and ends.
    """
    if profile not in PROFILES:
        raise ValueError(f"unknown profile {profile!r}; choose one of {', '.join(PROFILES)}")
    require("papermill", "running the notebooks (reproduce)")
    paths = project_paths(root) if root is not None else project_paths()
    root = paths["root"]
    notebooks = find_notebooks(root / "notebooks", only)
    request = {"profile": profile, "dataset": dataset}
    previous = None if fresh else latest_run_dir(root / "runs", request)
    run_dir = previous or _new_run_dir(root / "runs")
    manifest = _read_manifest(run_dir) if previous else {"request": request, "notebooks": {}}
    parameters = {"profile": profile, **({"dataset": dataset} if dataset is not None else {})}
    if Launcher.of(launcher) is not None:
        require_launcher(Launcher.of(launcher))  # before any notebook: each would stop on it
        parameters["launcher"] = launcher_setting(launcher)
    began = time.time()
    figures = run_dir / "figures"
    previous_figures = os.environ.get(FIGURES_VARIABLE)
    os.environ[FIGURES_VARIABLE] = str(figures)  # the notebooks' kernels inherit it
    try:
        lines = _run_notebooks(notebooks, manifest, run_dir, parameters, root, kernel, log)
    finally:
        if previous_figures is None:
            os.environ.pop(FIGURES_VARIABLE, None)
        else:
            os.environ[FIGURES_VARIABLE] = previous_figures
    table = pd.DataFrame(lines)
    table.insert(3, "output", [str(run_dir / n) for n in table["notebook"]])
    made = sorted(p for p in figures.glob("*") if p.is_file()) if figures.is_dir() else []
    written = [p for p in made if p.stat().st_mtime >= began]
    updated = _copy_figures(made, root / "figures") if update_figures else []
    return Reproduction(run_dir, table, figures, paths["results"], written, updated)


def _copy_figures(made: list[Path], gallery: Path) -> list[Path]:
    """Copy a runs folder's figures and tables into the project's ``figures/`` (the committed gallery)."""
    gallery.mkdir(parents=True, exist_ok=True)
    return [Path(shutil.copy2(path, gallery / path.name)) for path in made]


def _run_notebooks(
    notebooks: list[Path],
    manifest: dict[str, Any],
    run_dir: Path,
    parameters: dict[str, Any],
    root: Path,
    kernel: str | None,
    log: Callable[[str], None],
) -> list[dict[str, Any]]:
    """Run (or reuse) each notebook in order, recording it in the manifest; a line per notebook."""
    lines = []
    for i, source in enumerate(notebooks, 1):
        output = run_dir / source.name
        entry = manifest["notebooks"].get(source.name, {})
        if entry.get("status") == "done" and entry.get("source") == _fingerprint(source) and output.exists():
            lines.append(
                {"notebook": source.name, "status": "reused", "seconds": entry["seconds"], "error": ""}
            )
            log(f"[{i}/{len(notebooks)}] {source.name}: finished before, reused")
            continue
        log(f"[{i}/{len(notebooks)}] {source.name}: running")
        manifest["notebooks"][source.name] = {"status": "running", "source": _fingerprint(source)}
        _write_manifest(run_dir, manifest)
        start = time.perf_counter()
        error = _execute(source, output, parameters, root, kernel)
        seconds = round(time.perf_counter() - start, 1)
        status = "failed" if error else "done"
        manifest["notebooks"][source.name].update(status=status, seconds=seconds, error=error)
        _write_manifest(run_dir, manifest)
        lines.append(
            {
                "notebook": source.name,
                "status": "failed" if error else "ran",
                "seconds": seconds,
                "error": error,
            }
        )
        log(
            f"[{i}/{len(notebooks)}] {source.name}: {status} in {seconds} s" + (f": {error}" if error else "")
        )
    return lines
