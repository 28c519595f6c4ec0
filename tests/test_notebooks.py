"""Every notebook: committed clean, with a parameters cell, and runnable offline under papermill (profile=smoke)."""

import json
import os
from pathlib import Path

import nbformat
import pytest
import torch
import transformers

from layerfreeze.course import notebook_paths, run_notebook

NOTEBOOKS = notebook_paths(Path(__file__).resolve().parents[1] / "notebooks")
REQUIRED_PARAMETERS = ("profile", "model_name", "seed", "output_dir")


def test_there_are_notebooks():
    assert NOTEBOOKS and NOTEBOOKS[0].name == "01_parameter_inspection.ipynb"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_committed_without_outputs_and_with_parameters(path):
    notebook = nbformat.read(path, as_version=4)
    for cell in notebook.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, f"{path.name} has outputs: clear them"
    tagged = [c for c in notebook.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1, f"{path.name} needs exactly one cell tagged 'parameters'"
    for name in REQUIRED_PARAMETERS:
        assert f"{name} =" in tagged[0].source, f"{path.name}: parameters cell lacks {name}"
    assert notebook.cells[0].cell_type == "markdown" and notebook.cells[0].source.startswith("# ")


@pytest.mark.notebook
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_runs_in_smoke_profile(path, tmp_path):
    assert os.environ.get("HF_HUB_OFFLINE") == "1"
    run_notebook(path, tmp_path / "executed", tmp_path / "results", tmp_path / "figures", profile="smoke",
                 cell_timeout=300)
    metrics = json.loads((tmp_path / "results" / f"{path.stem}.json").read_text())
    assert metrics["notebook"] == path.stem and metrics["profile"] == "smoke"
    # the kernel is this environment's Python (make floor relies on it), not one registered elsewhere
    assert metrics["environment"]["torch"] == torch.__version__
    assert metrics["environment"]["transformers"] == transformers.__version__
    assert list((tmp_path / "figures").glob("*.png")), "the notebook saved no figure"
