"""Every notebook in notebooks/ runs top to bottom (nbclient, the venv's python3 kernel),
shows its figures, and writes only into a temporary folder."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat", reason="pip install nbclient nbformat ipykernel")
nbclient = pytest.importorskip("nbclient", reason="pip install nbclient nbformat ipykernel")

REPO = Path(__file__).resolve().parents[1]
NOTEBOOKS = REPO / "notebooks"
# notebook -> the least number of figures it must display
EXPECTED = {
    "01_quickstart.ipynb": 2,
    "02_tuning.ipynb": 1,
    "03_capacity_planning.ipynb": 3,
    "04_validation.ipynb": 1,
    "05_applications.ipynb": 2,
}


def test_every_notebook_is_listed():
    assert sorted(p.name for p in NOTEBOOKS.glob("*.ipynb")) == sorted(EXPECTED)


def run_notebook(name: str, out: Path, monkeypatch) -> "nbformat.NotebookNode":
    monkeypatch.setenv("SIMTUNE_NOTEBOOK_OUT", str(out))
    monkeypatch.setenv("PYTHONWARNINGS", "ignore")
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code"), f"{name}: commit it without outputs"
    client = nbclient.NotebookClient(nb, timeout=900, kernel_name="python3",
                                     resources={"metadata": {"path": str(NOTEBOOKS)}})
    client.execute()  # raises CellExecutionError naming the failing cell
    return nb


def figures(nb) -> int:
    return sum(1 for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
               if "image/png" in o.get("data", {}))


@pytest.mark.parametrize("name", [n for n in EXPECTED if n != "04_validation.ipynb"])
def test_notebook_runs(name, tmp_path, monkeypatch):
    before = set(os.listdir(REPO))
    nb = run_notebook(name, tmp_path, monkeypatch)
    assert figures(nb) >= EXPECTED[name]
    assert set(os.listdir(REPO)) == before  # nothing written into the repository
    if name == "03_capacity_planning.ipynb":
        assert (tmp_path / "plan_gpu" / "report.html").exists()


@pytest.mark.slow
def test_validation_notebook_real_ray(tmp_path, monkeypatch):
    """A 50 s replay on a local Ray Serve (about 1.5 minutes with startup and teardown)."""
    nb = run_notebook("04_validation.ipynb", tmp_path, monkeypatch)
    assert figures(nb) >= 1
    assert (tmp_path / "validation_step" / "fidelity.json").exists()
