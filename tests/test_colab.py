"""The Colab cell that opens every notebook: installs the kit from KIT_SOURCE on Colab, does nothing elsewhere."""

import os
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

from layerfreeze.course import notebook_paths

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = notebook_paths(ROOT / "notebooks")


def first_code_cell(path):
    return next(c for c in nbformat.read(path, as_version=4).cells if c.cell_type == "code").source


def test_every_notebook_opens_with_the_same_colab_cell():
    cells = {first_code_cell(path) for path in NOTEBOOKS}
    assert len(cells) == 1
    (cell,) = cells
    assert "KIT_SOURCE" in cell and "google.colab" in cell
    assert "torch" not in cell.replace("keeps Colab's torch", "")  # it never installs torch


def run_cell(env_extra, tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("LAYERFREEZE_FORCE_COLAB", "KIT_SOURCE")}
    env.update(env_extra)
    return subprocess.run([sys.executable, "-c", first_code_cell(NOTEBOOKS[0])], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=600)


def test_outside_colab_the_cell_does_nothing(tmp_path):
    result = run_cell({"PIP_TARGET": str(tmp_path / "site")}, tmp_path)
    assert result.returncode == 0 and result.stdout == ""
    assert not (tmp_path / "site").exists()


@pytest.mark.slow
def test_on_colab_the_cell_installs_the_kit_from_kit_source(tmp_path):
    target = tmp_path / "site"
    # pip reads its options from PIP_* variables: install into a folder of our own, leave dependencies (and so
    # torch) alone, and build with the setuptools already here (pip reads PIP_NO_BUILD_ISOLATION=0 as "do not
    # isolate", a known quirk of its negative options).
    result = run_cell({"LAYERFREEZE_FORCE_COLAB": "1", "KIT_SOURCE": str(ROOT), "PIP_TARGET": str(target),
                       "PIP_NO_DEPS": "1", "PIP_NO_BUILD_ISOLATION": "0"}, tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    assert (target / "layerfreeze" / "colab.py").is_file()
    assert not (target / "torch").exists()
    assert "No GPU" in result.stdout and "Runtime > Change runtime type" in result.stdout
