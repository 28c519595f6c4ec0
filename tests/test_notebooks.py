"""Every notebook: committed clean, with a parameters cell, and runnable offline under papermill (profile=smoke);
the results page is then written from that smoke run of the whole course."""

import json
import os
from pathlib import Path

import nbformat
import pytest
import torch
import transformers

from layerfreeze.course.runner import notebook_paths, run_course, run_notebook
from layerfreeze.course.publish import publish_results
from tests.task_files import FORMATS, write_task

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = notebook_paths(ROOT / "notebooks")
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


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_seeded_before_the_model_is_loaded(path):
    """A new classification head is initialised at random when the model loads: unseeded, two runs of the same
    notebook and seed give different numbers."""
    code = "\n".join(c.source for c in nbformat.read(path, as_version=4).cells if c.cell_type == "code")
    if "load_model(" not in code:  # the takeaways page loads no model
        pytest.skip(f"{path.name} loads no model")
    # the set-up cell seeds through lf.course.start(profile=..., seed=seed, ...); a notebook may also seed itself
    seeded = [i for i in (code.find("seed_everything(seed)"), code.find("course.start(profile=profile, seed=seed"))
              if i >= 0]
    assert seeded and min(seeded) < code.find("load_model("), f"{path.name}: seed before load_model"


@pytest.fixture(scope="module")
def smoke_course(tmp_path_factory):
    """The whole course, run once in order with profile=smoke, as `make course` runs it."""
    assert os.environ.get("HF_HUB_OFFLINE") == "1"
    build = tmp_path_factory.mktemp("build")
    # The timeout turns a hang into a failure; it is not a speed limit: on a 2-core machine loaded by other jobs a
    # smoke cell that takes 30 s alone has taken over 300 s.
    run_course("smoke", build, ROOT / "notebooks", cell_timeout=900)
    return build


@pytest.mark.notebook
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_runs_in_smoke_profile(path, smoke_course):
    metrics = json.loads((smoke_course / "results" / f"{path.stem}.json").read_text())
    assert metrics["notebook"] == path.stem and metrics["profile"] == "smoke"
    # the kernel is this environment's Python (make floor relies on it), not one registered elsewhere
    assert metrics["environment"]["torch"] == torch.__version__
    assert metrics["environment"]["transformers"] == transformers.__version__
    assert metrics["key_tables"] and all(t["rows"] for t in metrics["key_tables"])
    for name in metrics.get("key_figures", []):  # the takeaways page has tables only
        assert (smoke_course / "figures" / f"{name}.png").exists(), f"{path.stem} names a figure it did not save"
    assert (smoke_course / "notebooks" / path.name).exists()


@pytest.mark.notebook
def test_results_page_from_the_course_run(smoke_course, tmp_path):
    page = publish_results(smoke_course, tmp_path / "docs", ROOT / "notebooks")
    text = page.read_text()
    timing = json.loads((smoke_course / "results" / "course_timing.json").read_text())
    assert timing["environment"]["device"] in text and f"torch {torch.__version__}" in text
    for path in NOTEBOOKS:
        title = nbformat.read(path, as_version=4).cells[0].source.splitlines()[0].lstrip("# ")
        assert f"## {title}" in text
        metrics = json.loads((smoke_course / "results" / f"{path.stem}.json").read_text())
        for table in metrics["key_tables"]:
            assert f"**{table['title']}**" in text
            assert "| " + " | ".join(table["columns"]) + " |" in text
        for name in metrics.get("key_figures", []):  # the takeaways page has tables only
            assert f"(figures/{name}.png)" in text
            assert (tmp_path / "docs" / "figures" / f"{name}.png").read_bytes() == \
                (smoke_course / "figures" / f"{name}.png").read_bytes()
    # the CPU is on no datasheet: no T4 estimate is made up for it
    assert "T4" not in text


# One more smoke run of each notebook that loads data, on local files: the formats rotate so each is read by two or
# more notebooks (CSV, JSON lines, Parquet, a folder in the Hub's own layout), notebook 01 reads other column names
# and string labels, and 02, 04 and 06 run a tiny decoder in the same run (03 and 05 a tiny encoder, for time).
OWN_DATA_RUNS = {
    "01_parameter_inspection": dict(task_a="csv", columns=("review", "stars"), model_name="minilm"),
    "02_freezing_early_vs_late": dict(task_a="jsonl", model_name="tiny:llama"),
    "03_gradual_unfreezing": dict(task_a="parquet", model_name="tiny:bert"),
    "04_catastrophic_forgetting": dict(task_a="hub", task_b="csv", model_name="tiny:gpt2"),  # BitFit needs biases
    "05_interactive_layer_picker": dict(task_a="hub", model_name="tiny:bert"),
    "06_freezing_in_llm_work": dict(task_a="parquet", task_b="jsonl", model_name="tiny:llama"),
}


def test_own_data_runs_cover_every_format_and_notebook():
    formats = [run[key] for run in OWN_DATA_RUNS.values() for key in ("task_a", "task_b") if key in run]
    assert set(formats) == set(FORMATS)
    loading = [p.stem for p in NOTEBOOKS if "load_task(" in p.read_text()]
    assert sorted(OWN_DATA_RUNS) == loading


@pytest.mark.notebook
@pytest.mark.parametrize("stem", OWN_DATA_RUNS)
def test_runs_on_local_files(stem, tmp_path):
    run = OWN_DATA_RUNS[stem]
    text_column, label_column = run.get("columns", ("text", "label"))
    files = {key: str(write_task(task, tmp_path / "data", run[key], text_column=text_column,
                                 label_column=label_column, label_names="columns" in run))
             for key, task in (("task_a", "a"), ("task_b", "b")) if key in run}
    run_notebook(ROOT / "notebooks" / f"{stem}.ipynb", tmp_path / "executed", tmp_path / "results",
                 tmp_path / "figures", profile="smoke", cell_timeout=900, model_name=run["model_name"],
                 text_column=text_column, label_column=label_column, **files)
    metrics = json.loads((tmp_path / "results" / f"{stem}.json").read_text())
    assert metrics["profile"] == "smoke" and metrics["key_tables"] and all(t["rows"] for t in metrics["key_tables"])
    executed = (tmp_path / "executed" / f"{stem}.ipynb").read_text()
    assert files["task_a"].replace("\\", "\\\\") in executed  # the note printed what was loaded
