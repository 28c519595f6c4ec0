import json

import pytest
import torch

from layerfreeze.course import resolve_profile, save_metrics
from layerfreeze.course.contract import PROFILES


def test_auto_profile_follows_the_device(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_profile("auto") == "full"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_profile("auto") == "cpu"
    assert [resolve_profile(p) for p in ("smoke", "cpu", "full")] == ["smoke", "cpu", "full"]
    with pytest.raises(ValueError, match="auto, smoke, cpu, full"):
        resolve_profile("fast")


def test_save_metrics_writes_clean_json(tmp_path):
    path = save_metrics({"accuracy": torch.tensor(0.5), "nan": float("nan"), "rows": [(1, 2.0)]}, tmp_path, "01_x")
    assert path == tmp_path / "01_x.json"
    payload = json.loads(path.read_text())
    assert payload["accuracy"] == 0.5 and payload["nan"] is None and payload["rows"] == [[1, 2.0]]
    assert payload["notebook"] == "01_x" and "torch" in payload["environment"]


def test_key_tables_keep_their_index_and_columns(tmp_path):
    import pandas as pd
    frame = pd.DataFrame({"accuracy": [0.5, 0.75]}, index=pd.Index(["head", "all"], name="strategy"))
    unnamed = pd.DataFrame({"MiB": [1.5]}, index=["weights"])
    payload = json.loads(save_metrics({}, tmp_path, "02_x", key_tables={"t": frame, "records": [{"a": 1}],
                                                                        "unnamed": unnamed},
                                      key_figures=["02_fig"]).read_text())
    assert payload["key_tables"] == [{"title": "t", "columns": ["strategy", "accuracy"],
                                      "rows": [["head", 0.5], ["all", 0.75]]},
                                     {"title": "records", "columns": ["a"], "rows": [[1]]},
                                     {"title": "unnamed", "columns": ["", "MiB"], "rows": [["weights", 1.5]]}]
    assert payload["key_figures"] == ["02_fig"]


def _fake_run(build, figure_bytes=1000, device="cpu: 2 cores"):
    """A course run's files as run_course and save_metrics leave them, for one notebook."""
    from layerfreeze.course.contract import environment
    save_metrics({"model_name": "m", "seed": 0}, build / "results", "01_x", key_tables={"t": [{"a": 1}]},
                 key_figures=["01_fig"])
    (build / "figures").mkdir(parents=True)
    (build / "figures" / "01_fig.png").write_bytes(b"\0" * figure_bytes)
    (build / "results" / "course_timing.json").write_text(json.dumps(
        {"profile": "auto", "resolved_profile": "full", "seconds": {"01_x": 120.0}, "total_seconds": 120.0,
         "environment": {**environment(), "device": device}}))


def test_publish_refuses_oversized_figures_and_missing_runs(tmp_path):
    from layerfreeze.course.publish import publish_results
    with pytest.raises(FileNotFoundError, match="make course"):
        publish_results(tmp_path / "nothing", tmp_path / "docs")
    _fake_run(tmp_path / "build", figure_bytes=400_000)
    with pytest.raises(ValueError, match="01_fig.png is 400,000 bytes"):
        publish_results(tmp_path / "build", tmp_path / "docs")


def test_publish_replaces_old_figures_and_scales_no_time_to_another_card(tmp_path):
    from layerfreeze.course.publish import publish_results
    _fake_run(tmp_path / "build", device="cuda: NVIDIA H100 80GB HBM3")
    (tmp_path / "docs" / "figures").mkdir(parents=True)
    (tmp_path / "docs" / "figures" / "stale.png").write_bytes(b"old")
    text = publish_results(tmp_path / "build", tmp_path / "docs").read_text()
    assert sorted(p.name for p in (tmp_path / "docs" / "figures").iterdir()) == ["01_fig.png"]
    assert "| 01_x | 120 |" in text and "T4" not in text


def test_a_run_of_some_notebooks_gets_its_own_page_that_names_them(tmp_path):
    import nbformat
    from layerfreeze.course.publish import publish_results
    _fake_run(tmp_path / "build")
    notebooks = tmp_path / "notebooks"
    notebooks.mkdir()
    for stem in ("01_x", "02_y"):
        nbformat.write(nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell(f"# {stem}")]),
                       notebooks / f"{stem}.ipynb")
    text = publish_results(tmp_path / "build", tmp_path / "docs", notebooks, page="results-01.md",
                           figures="figures-01").read_text()
    assert (tmp_path / "docs" / "figures-01" / "01_fig.png").exists()
    assert "One run of notebook 01_x (`python -m layerfreeze course --profile auto --only 01`" in text
    assert "| these notebooks | 120 |" in text and "](figures-01/01_fig.png)" in text
    (notebooks / "02_y.ipynb").unlink()  # now 01_x is the whole course
    assert "One run of the whole course (`make course`" in publish_results(
        tmp_path / "build", tmp_path / "docs", notebooks).read_text()


@pytest.mark.parametrize("flag, value", [("--page", "docs/results.md"), ("--page", "results.txt"),
                                         ("--figures", "a/b"), ("--figures", "..")])
def test_publish_refuses_page_and_figure_names_that_leave_the_docs_folder(flag, value, capsys):
    from layerfreeze.course.cli import main
    with pytest.raises(SystemExit):
        main(["publish", flag, value])
    assert flag in capsys.readouterr().err


def test_real_switch_passes_hub_data_and_model_to_02_and_04_only(tmp_path, monkeypatch):
    from layerfreeze.course import runner
    from layerfreeze.course.contract import REAL_MODEL, real_parameters

    for name in ("01_a", "02_b", "04_c", "06_d"):
        (tmp_path / f"{name}.ipynb").write_text("{}")
    calls = {}
    monkeypatch.setattr(runner, "run_notebook", lambda path, *a, **params: calls.setdefault(path.stem, params) and 1.0)
    runner.run_course("smoke", tmp_path / "build", tmp_path, parameters=real_parameters(environ={}))
    assert sorted(calls) == ["02_b", "04_c"]
    assert calls["04_c"] == {"model_name": REAL_MODEL, "task_a": "sst2", "task_b": "ag_news",
                             "decoder_name": "openai-community/gpt2", "progress": True}
    assert list(real_parameters(["04"], environ={})) == ["04"]
    with pytest.raises(ValueError, match="names none of them"):
        real_parameters(["01"], environ={})


def test_real_switch_is_refused_in_one_line_where_the_hub_is_off(tmp_path, capsys, monkeypatch):
    from layerfreeze.course import cli

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(SystemExit) as exit_:
        cli.main(["course", "--real", "--build-dir", str(tmp_path)])
    error = capsys.readouterr().err.strip()
    assert exit_.value.code == 2 and "HF_HUB_OFFLINE=1" in error and len(error.splitlines()) == 1
