"""`kalahash reproduce` on a project of tiny notebooks written here, run for real through papermill."""

import json

import nbformat
import pytest

from kalahash.cli import main
from kalahash.reproduce import MANIFEST, find_notebooks, reproduce


def _notebook(path, body: str) -> None:
    """A 2-cell notebook: a `parameters` cell (profile, dataset) and ``body``."""
    nb = nbformat.v4.new_notebook()
    params = nbformat.v4.new_code_cell('profile = "auto"\ndataset = None')
    params.metadata["tags"] = ["parameters"]
    nb.cells = [params, nbformat.v4.new_code_cell(body)]
    nb.metadata["kernelspec"] = {"display_name": "Python 3", "language": "python", "name": "python3"}
    nbformat.write(nb, path)


WRITE_FIGURE = (
    "from kalahash.experiments import project_paths\n"
    "figures = project_paths()['figures']\n"
    "figures.mkdir(parents=True, exist_ok=True)\n"
    "(figures / '{name}.txt').write_text(f'{{profile}} {{dataset}}')"
)


@pytest.fixture
def project(tmp_path):
    (tmp_path / "kalahash").mkdir()
    (tmp_path / "notebooks").mkdir()
    _notebook(tmp_path / "notebooks" / "01_first.ipynb", WRITE_FIGURE.format(name="first"))
    _notebook(tmp_path / "notebooks" / "02_second.ipynb", WRITE_FIGURE.format(name="second"))
    (tmp_path / "notebooks" / "helper.ipynb").write_text("not a numbered notebook")
    return tmp_path


def test_find_notebooks_in_order_and_by_prefix(project):
    names = [p.name for p in find_notebooks(project / "notebooks")]
    assert names == ["01_first.ipynb", "02_second.ipynb"]
    assert [p.name for p in find_notebooks(project / "notebooks", ["02"])] == ["02_second.ipynb"]
    with pytest.raises(ValueError, match=r"--only 05 matches no notebook.*01_first, 02_second"):
        find_notebooks(project / "notebooks", ["05"])
    with pytest.raises(FileNotFoundError, match="no numbered notebooks"):
        find_notebooks(project / "kalahash")


def test_reproduce_runs_in_order_then_reuses_and_continues(project):
    logged = []
    first = reproduce("smoke", dataset="shapes", root=project, log=logged.append)
    assert first.ok and list(first.table["status"]) == ["ran", "ran"]
    assert first.run_dir.parent == project / "runs" and logged[0] == "[1/2] 01_first.ipynb: running"
    # the figures go to the runs folder: the project's own files (its committed figures/) are left alone
    assert (first.run_dir / "figures" / "second.txt").read_text() == "smoke shapes"  # parameters reached it
    assert first.figures == first.run_dir / "figures" and not (project / "figures").exists()
    assert not (project / "results" / "figures").exists()
    executed = nbformat.read(first.run_dir / "01_first.ipynb", as_version=4)
    assert any("injected-parameters" in c.metadata.get("tags", []) for c in executed.cells)
    assert sorted(p.name for p in first.figures_written) == ["first.txt", "second.txt"]

    again = reproduce("smoke", dataset="shapes", root=project, log=logged.append)
    assert again.run_dir == first.run_dir and list(again.table["status"]) == ["reused", "reused"]

    # a changed notebook and an interrupted one run again, in the same folder; the rest is reused
    _notebook(project / "notebooks" / "02_second.ipynb", WRITE_FIGURE.format(name="changed"))
    manifest = json.loads((first.run_dir / MANIFEST).read_text())
    manifest["notebooks"]["01_first.ipynb"]["status"] = "running"
    (first.run_dir / MANIFEST).write_text(json.dumps(manifest))
    resumed = reproduce("smoke", dataset="shapes", root=project, log=logged.append)
    assert resumed.run_dir == first.run_dir and list(resumed.table["status"]) == ["ran", "ran"]
    assert (first.run_dir / "figures" / "changed.txt").exists() and not (project / "figures").exists()
    # asked to, it refreshes the project's figures/ from the runs folder, reused notebooks' figures too
    updated = reproduce("smoke", dataset="shapes", root=project, update_figures=True, log=logged.append)
    assert list(updated.table["status"]) == ["reused", "reused"]
    assert sorted(p.name for p in (project / "figures").iterdir()) == [
        "changed.txt",
        "first.txt",
        "second.txt",
    ]
    assert sorted(p.name for p in updated.figures_updated) == ["changed.txt", "first.txt", "second.txt"]

    other = reproduce("smoke", only=["01"], root=project, log=logged.append)  # another request
    assert other.run_dir != first.run_dir and list(other.table["notebook"]) == ["01_first.ipynb"]
    fresh = reproduce("smoke", dataset="shapes", only=["01"], root=project, fresh=True, log=logged.append)
    assert fresh.run_dir not in (first.run_dir, other.run_dir) and list(fresh.table["status"]) == ["ran"]


def test_a_failing_notebook_is_recorded_and_the_next_still_runs(project, capsys, monkeypatch):
    _notebook(project / "notebooks" / "01_first.ipynb", "raise ValueError('no data here')")
    monkeypatch.chdir(project)
    assert main(["reproduce", "--profile", "smoke"]) == 1
    out = capsys.readouterr().out
    assert "01_first.ipynb failed: ValueError: no data here" in out
    assert "executed notebooks:" in out and f"figures and tables: {project / 'runs'}" in out
    run_dir = next((project / "runs").iterdir())
    statuses = {k: v["status"] for k, v in json.loads((run_dir / MANIFEST).read_text())["notebooks"].items()}
    assert statuses == {"01_first.ipynb": "failed", "02_second.ipynb": "done"}
    with pytest.raises(ValueError, match="unknown profile 'fast'"):
        reproduce("fast", root=project)


def test_a_notebook_run_directly_writes_figures_where_git_ignores_them(project, monkeypatch):
    """Jupyter or nbval run a notebook without reproduce: its figures go to results/figures/, not figures/."""
    from kalahash.experiments import project_paths

    monkeypatch.delenv("KALAHASH_FIGURES", raising=False)
    assert project_paths(project)["figures"] == project / "results" / "figures"
    monkeypatch.setenv("KALAHASH_FIGURES", str(project / "elsewhere"))
    assert project_paths(project)["figures"] == project / "elsewhere"
