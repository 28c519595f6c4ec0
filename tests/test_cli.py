"""The command line: help with defaults and no torch import, one-line errors (exit 2) before anything loads, and the
course command outside a checkout."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from layerfreeze.course import cli

ROOT = Path(__file__).resolve().parents[1]


def command(*args, cwd=ROOT, importtime=False):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    flags = ["-X", "importtime"] if importtime else []
    return subprocess.run([sys.executable, *flags, "-m", "layerfreeze", *args], capture_output=True, text=True,
                          env=env, cwd=cwd, timeout=300)


def imported_modules(importtime_stderr: str) -> set[str]:
    """Top-level module names from ``python -X importtime`` output."""
    return {line.rsplit("|", 1)[-1].strip().split(".")[0] for line in importtime_stderr.splitlines()
            if line.startswith("import time:") and "|" in line}


@pytest.mark.parametrize("args", [["--help"], ["train", "--help"], ["course", "--help"]], ids=" ".join)
def test_help_shows_defaults_and_imports_no_torch(args):
    result = command(*args, importtime=True)
    assert result.returncode == 0, result.stderr[-2000:]
    modules = imported_modules(result.stderr)
    assert "argparse" in modules and not modules & {"torch", "transformers", "pandas", "matplotlib", "datasets"}
    if args[0] == "train":
        assert "(default: 32)" in result.stdout and "(default: top:2)" in result.stdout
        assert "{linear,cosine,constant,stlr,one-cycle}" in result.stdout


BAD_FLAGS = [
    (["--epochs", "0"], "--epochs: invalid value '0': expected a whole number of at least 1"),
    (["--epochs", "two"], "--epochs: invalid value 'two'"),
    (["--batch-size", "0"], "--batch-size: invalid value '0'"),
    (["--batch-size", "-4"], "--batch-size: invalid value '-4'"),
    (["--train-limit", "0"], "--train-limit: invalid value '0'"),
    (["--eval-limit", "-1"], "--eval-limit: invalid value '-1'"),
    (["--max-length", "0"], "--max-length: invalid value '0'"),
    (["--every", "0"], "--every: invalid value '0'"),
    (["--lr", "nan"], "--lr: invalid value 'nan': expected a finite number above 0"),
    (["--lr=-1e-3"], "--lr: invalid value '-1e-3'"),
    (["--discriminative", "inf"], "--discriminative: invalid value 'inf'"),
    (["--plan", "top:x"], "--plan: invalid plan 'top:x': expected head, top:K, bottom:K, all or bitfit"),
    (["--plan", "head:2"], "--plan: invalid plan 'head:2'"),
    (["--plan", "top"], "--plan: invalid plan 'top'"),
    (["--curve", "steps"], "--curve: invalid choice: 'steps'"),
    (["--task", "mnist"], "--task: invalid choice: 'mnist'"),
    (["--seed", "-1"], "--seed: invalid value '-1'"),
    (["--schedule", "ulmfit"], "--schedule: invalid choice: 'ulmfit'"),
]


@pytest.mark.parametrize("flags, message", BAD_FLAGS, ids=lambda v: " ".join(v) if isinstance(v, list) else "")
def test_a_bad_flag_is_one_line_before_anything_loads(flags, message):
    result = command("train", *flags, importtime=True)
    errors = [line for line in result.stderr.splitlines() if not line.startswith("import time:")]
    assert result.returncode == 2 and len(errors) == 1, result.stderr[-2000:]
    assert message in errors[0] and "(--help lists the valid options)" in errors[0]
    assert "torch" not in imported_modules(result.stderr)


def test_a_bad_output_path_is_refused_before_training(tmp_path):
    (tmp_path / "file.txt").write_text("")
    for output, message in [(tmp_path, "is a folder"), (tmp_path / "file.txt" / "out.json", "is a file")]:
        result = command("train", "--output", str(output))
        assert result.returncode == 2 and message in result.stderr and len(result.stderr.splitlines()) == 1


@pytest.mark.parametrize("model, message", [("/missing/dir", "model directory '/missing/dir' does not exist"),
                                            ("tiny:gpt5", "unknown tiny family 'gpt5'")])
def test_a_bad_model_is_one_line_before_the_data_loads(model, message, monkeypatch, capsys):
    import layerfreeze.base.data

    monkeypatch.setattr(layerfreeze.base.data, "load_task", lambda *a, **k: pytest.fail("the data loaded first"))
    with pytest.raises(SystemExit) as exit_:
        cli.main(["train", "--model", model])
    assert exit_.value.code == 2
    error = capsys.readouterr().err
    assert error.startswith("python -m layerfreeze train: error: ") and message in error
    assert len(error.splitlines()) == 1


def test_course_without_notebooks_says_where_they_are(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main(["course", "--notebook-dir", str(tmp_path), "--build-dir", str(tmp_path / "build")])
    assert exit_.value.code == 2
    error = capsys.readouterr().err
    assert f"no course notebooks (NN_name.ipynb) in {tmp_path}" in error and "--notebook-dir" in error
    assert "/content/layerfreeze" in error and len(error.splitlines()) == 1
    assert not (tmp_path / "build").exists()


def test_the_notebooks_default_to_the_checkout_from_anywhere(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert cli._checkout_notebooks() == ROOT / "notebooks"  # an editable install finds its checkout
    (tmp_path / "notebooks").mkdir()
    assert cli._checkout_notebooks() == Path("notebooks")  # a notebooks/ folder here comes first


def test_plan_and_output_types(tmp_path):
    from layerfreeze.core.strategy import PRESETS

    assert set(cli.PRESETS_WITH_K + cli.PRESETS_WITHOUT_K) == set(PRESETS)
    assert cli.plan("bottom:3") == ("bottom", 3) and cli.plan("bitfit") == ("bitfit", None)
    assert cli.output_file(str(tmp_path / "new" / "m.json")) == tmp_path / "new" / "m.json"
    assert not (tmp_path / "new").exists()  # checked, not created, while parsing


@pytest.mark.slow
def test_train_runs_and_writes_its_metrics(tmp_path):
    output = tmp_path / "out" / "metrics.json"
    result = command("train", "--model", "tiny:bert", "--train-limit", "16", "--eval-limit", "8", "--epochs", "1",
                     "--batch-size", "8", "--plan", "top:1", "--output", str(output), cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    metrics = json.loads(output.read_text())
    assert metrics["steps"] == 2 and metrics["replicas_identical"]


@pytest.mark.slow
def test_train_on_your_own_csv_and_bad_files_are_one_line(tmp_path):
    from tests.task_files import write_task

    data = write_task("a", tmp_path, "csv", text_column="review", label_column="stars", label_names=True)
    output = tmp_path / "metrics.json"
    result = command("train", "--data", str(data), "--text-column", "review", "--label-column", "stars",
                     "--model", "tiny:bert", "--train-limit", "16", "--eval-limit", "8", "--epochs", "1",
                     "--batch-size", "8", "--output", str(output), cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "validation split made from train" in result.stdout
    assert json.loads(output.read_text())["steps"] == 2
    for flags, message in [(["--text-column", "body"], "has no column 'body' (text_column); its columns: review, "
                                                         "stars"),
                           (["--task", "b"], "both name the task")]:
        result = command("train", "--data", str(data), "--label-column", "stars", *flags, cwd=tmp_path)
        assert result.returncode == 2 and message in result.stderr, result.stderr[-2000:]
        assert len(result.stderr.strip().splitlines()) == 1
