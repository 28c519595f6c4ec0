"""The Colab cell that opens every notebook: installs the kit from KIT_SOURCE on Colab, does nothing elsewhere."""

import os
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

from layerfreeze.course.runner import notebook_paths

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
    assert (target / "layerfreeze" / "course" / "colab.py").is_file()
    assert not (target / "torch").exists()
    assert "No GPU" in result.stdout and "Runtime > Change runtime type" in result.stdout


def test_the_cell_defaults_to_what_was_uploaded():
    from layerfreeze.course.colab import DEFAULT_KIT_SOURCE, UPLOADED_WHEELS

    cell = first_code_cell(NOTEBOOKS[0])
    assert f'"{DEFAULT_KIT_SOURCE}"' in cell and f'"{UPLOADED_WHEELS}"' in cell
    assert "github.com/layerfreeze" not in cell  # no repository that does not exist


@pytest.mark.skipif(Path("/content/layerfreeze").exists(), reason="this machine has an uploaded kit")
@pytest.mark.parametrize("source", [None, "missing-folder", "git+https://kit.invalid/layerfreeze.git"])
def test_an_unreachable_kit_source_gets_one_paragraph_and_no_traceback(source, tmp_path):
    env = {"LAYERFREEZE_FORCE_COLAB": "1", "PIP_TARGET": str(tmp_path / "site"), "PIP_NO_DEPS": "1",
           "PIP_RETRIES": "0", "PIP_TIMEOUT": "5", "GIT_TERMINAL_PROMPT": "0"}
    if source:
        env["KIT_SOURCE"] = str(tmp_path / source) if source == "missing-folder" else source
    result = run_cell(env, tmp_path)
    assert result.returncode == 1 and "Traceback" not in result.stderr + result.stdout
    (paragraph,) = result.stdout.splitlines()
    shown = env.get("KIT_SOURCE", "/content/layerfreeze")
    assert paragraph.startswith(f"Could not install the kit from KIT_SOURCE={shown!r} (")
    assert "/content/layerfreeze" in paragraph and "os.environ['KIT_SOURCE']" in paragraph
    if source is None or source == "missing-folder":
        assert "(no such file or folder)" in paragraph


@pytest.mark.slow
def test_an_uploaded_wheel_installs_and_the_course_command_says_where_the_notebooks_are(tmp_path):
    wheels = tmp_path / "wheels"
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                            str(wheels), str(ROOT)], capture_output=True, text=True, timeout=600)
    assert built.returncode == 0, built.stderr[-2000:]
    (built_wheel,) = wheels.glob("layerfreeze-*.whl")
    wheel = built_wheel.rename(built_wheel.with_name(built_wheel.stem + " (1).whl"))  # as Colab names a re-upload
    target = tmp_path / "site"
    result = run_cell({"LAYERFREEZE_FORCE_COLAB": "1", "KIT_SOURCE": str(wheel), "PIP_TARGET": str(target),
                       "PIP_NO_DEPS": "1"}, tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr[-2000:]
    assert (target / "layerfreeze" / "course" / "cli.py").is_file() and not (target / "notebooks").exists()
    env = {**os.environ, "PYTHONPATH": str(target), "HF_HUB_OFFLINE": "1"}
    course = subprocess.run([sys.executable, "-m", "layerfreeze", "course", "--profile", "smoke"], env=env,
                            cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert course.returncode == 2 and "Traceback" not in course.stderr, course.stderr[-2000:]
    assert f"no course notebooks (NN_name.ipynb) in {tmp_path / 'notebooks'}" in course.stderr
    assert "--notebook-dir" in course.stderr and len(course.stderr.splitlines()) == 1


def test_on_colab_the_default_results_folder_stays_under_the_working_folder(tmp_path, monkeypatch):
    from layerfreeze.course.contract import results_folder, save_metrics

    monkeypatch.chdir(tmp_path)
    assert results_folder("../build/results") == Path("../build/results")  # a checkout: beside notebooks/
    monkeypatch.setenv("LAYERFREEZE_FORCE_COLAB", "1")
    assert results_folder("../build/results") == tmp_path / "build" / "results"
    assert results_folder("/content/out") == Path("/content/out") and results_folder("out") == Path("out")
    assert save_metrics({"seed": 0}, "../build/results", "02_x") == tmp_path / "build" / "results" / "02_x.json"
