"""The GPU run's command, and its rehearsal: the same command and packaging on the CPU with the smoke sizes, with
the GPU's bf16 and fp16-with-scaler paths forced, so that the only untried thing on the GPU machine is CUDA."""

import json
import math
import os
import re
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest
import torch

import layerfreeze as lf
from layerfreeze.course import gpu_run as gr
from layerfreeze.course.runner import notebook_paths
from layerfreeze.base.runtime import FORCE_VARIABLE

ROOT = Path(__file__).resolve().parents[1]
WHEELS_ALLOWANCE = 7 * 2 ** 20  # pack.sh's wheels for the GPU machine: 6.2 MB (5.95 MiB) packed on 2026-12-07


def test_notebook_04_runs_first_and_every_notebook_is_in_the_order():
    names = [p.name[:2] for p in gr.run_order(notebook_paths(ROOT / "notebooks"))]
    assert names[:5] == ["04", "02", "03", "05", "01"] and sorted(names) == sorted(set(names))


@pytest.mark.parametrize("kwargs, message", [
    (dict(profile="gpu"), "profile='gpu'; valid: auto, smoke, cpu, full"),
    (dict(precision="fp8"), "precision='fp8'; valid: one of auto, fp32, bf16, fp16"),
    (dict(precision="bf16,int8"), "precision='bf16,int8'"),
    (dict(budget=0), "budget=0 seconds"),
    (dict(budget=100, course_budget=200), "course_budget=200 seconds; it must be positive and at most budget=100"),
    (dict(part="window"), "part='window'; valid: course, bench, all (window 1, window 2, or both)"),
])
def test_bad_arguments_are_refused_before_anything_runs(tmp_path, kwargs, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        gr.gpu_run(tmp_path / "out", build_dir=tmp_path / "build", **kwargs)
    assert not (tmp_path / "out").exists() and not (tmp_path / "build").exists()


def test_a_run_past_its_limit_is_killed_with_its_children(tmp_path):
    pid_file = tmp_path / "child.pid"
    command = ["bash", "-c", f"sleep 300 & echo $! > {pid_file}; wait"]
    with open(tmp_path / "log", "ab") as log:
        status, seconds = gr.run_limited(command, 2, log)
    assert status == "timed out" and seconds < 60
    child = Path(f"/proc/{int(pid_file.read_text())}/stat")
    for _ in range(100):  # SIGKILL is delivered asynchronously
        if not child.exists() or child.read_text().split()[2] in "ZX":
            break
        time.sleep(0.1)
    assert not child.exists() or child.read_text().split()[2] in "ZX"


def test_exit_codes_become_statuses(tmp_path):
    with open(tmp_path / "log", "ab") as log:
        assert gr.run_limited(["true"], 30, log)[0] == "ok"
        assert gr.run_limited(["false"], 30, log)[0] == "failed"
        assert gr.run_limited(["bash", "-c", f"exit {gr.CELL_TIMEOUT_EXIT}"], 30, log)[0] == "timed out"


def test_what_no_longer_fits_is_skipped_and_says_so(tmp_path):
    summary = gr.gpu_run(tmp_path / "out", profile="full", budget=1, course_budget=1, build_dir=tmp_path / "build",
                         notebook_dir=ROOT / "notebooks")
    assert [n["status"] for n in summary["notebooks"]] == ["skipped"] * len(summary["notebooks"])
    assert all("s left" in n["reason"] for n in summary["notebooks"])
    assert summary["part"] == "course" and summary["bench"] == {
        "status": "skipped", "reason": "part course: the benchmarks run in window 2"}
    assert json.loads((tmp_path / "out" / gr.SUMMARY).read_text()) == summary
    assert tarfile.open(tmp_path / "out" / gr.ARCHIVE).getnames() == ["results", "results/course_timing.json"]


def test_a_failed_notebook_keeps_its_error_in_the_summary(tmp_path):
    """The summary is what comes back when the log is cut short, so it says why a notebook failed."""
    import nbformat
    notebooks = tmp_path / "notebooks"
    notebooks.mkdir()
    broken = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("raise ValueError('broken on purpose')")])
    broken.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(broken, notebooks / "01_broken.ipynb")
    summary = gr.gpu_run(tmp_path / "out", profile="full", budget=59, course_budget=59, build_dir=tmp_path / "build",
                         notebook_dir=notebooks)
    [entry] = summary["notebooks"]
    assert entry["status"] == "failed" and "ValueError: broken on purpose" in entry["error"]
    assert "\x1b" not in entry["error"], "terminal colour codes are noise in a JSON file"
    assert len(entry["error"]) <= gr.ERROR_TAIL and summary["bench"]["status"] == "skipped"


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_forced_precision_trains_on_the_cpu(monkeypatch, precision):
    """The rehearsal's premise: bf16 autocast and fp16 with a gradient scaler run on the CPU too."""
    monkeypatch.setenv(FORCE_VARIABLE, precision)
    model = lf.tiny_model("bert", num_layers=2)
    before = lf.fingerprint(model)
    ids = torch.randint(10, 60, (32, 8), generator=torch.Generator().manual_seed(0))
    history = lf.fit(model, (ids, torch.ones_like(ids), ids[:, 0] % 2), epochs=1, lr=1e-3, batch_size=8,
                     progress=False)
    assert history.precision == precision and math.isfinite(history.epochs[-1]["train_loss"])
    assert lf.changed_parameters(before, lf.fingerprint(model))


def test_the_trainer_gets_the_same_precision(monkeypatch):
    from layerfreeze.core.trainer import trainer_precision
    monkeypatch.setenv(FORCE_VARIABLE, "fp16")
    assert trainer_precision(torch.device("cpu")) == {"bf16": False, "fp16": True, "use_cpu": True}


def test_the_carry_fits_under_the_limit():
    """The working tree plus .carry/ (or, before pack.sh ran, what it will hold: the fp16 model and the wheels)."""
    size = gr.carry_bytes(ROOT)
    if not (ROOT / ".carry" / "minilm-fp16").exists():
        from safetensors import safe_open
        from layerfreeze.base.models import resolve_model_source
        source = Path(resolve_model_source("minilm"))
        with safe_open(source / "model.safetensors", "pt") as weights:  # halved to fp16 by pack.sh
            size += sum(2 * math.prod(weights.get_slice(k).get_shape()) for k in weights.keys())
        size += sum(p.stat().st_size for p in source.iterdir() if p.is_file() and p.name != "model.safetensors")
        size += WHEELS_ALLOWANCE
    assert size < gr.CARRY_LIMIT, f"{size / 2 ** 20:.1f} MiB"


REHEARSED = ("01", "07")  # a real notebook through window 1, and the takeaways run at import


@pytest.mark.notebook
@pytest.mark.slow
def test_rehearsal(tmp_path):
    """`make gpu-rehearsal`'s commands on a short course: notebook 01 in bf16 autocast through window 1, archived;
    window 2's benchmarks; then both imported and published with the takeaways run over them. `make gpu-rehearsal`
    runs every notebook so before a GPU session (bf16 on this CPU is several times slower than fp32: the whole
    course took over 25 min here, more than `make test` may spend), and the smoke course in fp32 runs every notebook
    in `test_notebooks.py`. fp16 with its scaler is tried by test_forced_precision_trains_on_the_cpu: the CPU
    emulates fp16 matrix products, far too slowly for whole notebooks."""
    notebooks = tmp_path / "notebooks"
    notebooks.mkdir()
    for path in notebook_paths(ROOT / "notebooks"):
        if path.name[:2] in REHEARSED:
            shutil.copy(path, notebooks / path.name)
    out, bench_out = tmp_path / "window1", tmp_path / "window2"
    summary = gr.gpu_run(out, profile="smoke", budget=3600, precision="bf16", build_dir=tmp_path / "build1",
                         notebook_dir=notebooks)
    failed = {n["stem"]: n.get("error") for n in summary["notebooks"] if n["status"] != "ok"}
    assert not failed, failed
    assert [n["stem"][:2] for n in summary["notebooks"]] == ["01"]
    assert {n["precision"] for n in summary["notebooks"]} == {"bf16"}
    names = tarfile.open(out / gr.ARCHIVE).getnames()
    for entry in summary["notebooks"]:
        assert f"results/{entry['stem']}.json" in names and f"notebooks/{entry['stem']}.ipynb" in names
    assert sorted(os.listdir(out)) == sorted([gr.ARCHIVE, gr.SUMMARY, gr.LOG])
    bench = gr.gpu_run(bench_out, profile="smoke", budget=1200, part="bench", build_dir=tmp_path / "build2",
                       notebook_dir=notebooks)
    assert bench["notebooks"] == [] and bench["bench"]["status"] == "ok", (bench_out / gr.LOG).read_text()[-3000:]
    assert any(n.startswith("bench/") for n in tarfile.open(bench_out / gr.ARCHIVE).getnames())
    assert any((bench_out / "bench").iterdir()), "each strategy is written into the returned folder as it finishes"
    page = gr.import_gpu_run([out, bench_out], tmp_path / "imported", tmp_path / "docs", tmp_path / "bench",
                             notebooks)
    assert page.name == "results-gpu.md" and "(figures-gpu/" in page.read_text()
    assert (tmp_path / "imported" / "results" / "07_takeaways.json").exists()
    assert any((tmp_path / "bench").iterdir())


def _window(out, device, seconds):
    """What one GPU window returns: an archive of finished notebooks' results and their course timing."""
    build = out / "build"
    for stem in seconds:
        lf.course.save_metrics({"model_name": "m", "seed": 0}, build / "results", stem, key_tables={"t": [{"a": 1}]})
    (build / "results").mkdir(parents=True, exist_ok=True)  # a benchmark window finishes no notebook
    (build / "results" / "course_timing.json").write_text(json.dumps(
        {"profile": "full", "resolved_profile": "full", "seconds": seconds, "total_seconds": sum(seconds.values()),
         "environment": {"device": device, "date": "d", "torch": "t", "transformers": "x", "python": "p"}}))
    gr.write_archive(build, out)


def test_import_merges_windows_on_one_device_and_refuses_two_devices(tmp_path):
    _window(tmp_path / "one", "cuda: NVIDIA H200", {"04_a": 120.0, "02_b": 60.0})
    _window(tmp_path / "two", "cuda: NVIDIA H200", {"06_c": 50.0})
    _window(tmp_path / "other", "cuda: NVIDIA H100 80GB HBM3", {"06_c": 70.0})
    no_takeaways = tmp_path / "notebooks"
    no_takeaways.mkdir()
    page = gr.import_gpu_run([tmp_path / "one", tmp_path / "two"], tmp_path / "imported", tmp_path / "docs", None,
                             no_takeaways)
    timing = json.loads((tmp_path / "imported" / "results" / "course_timing.json").read_text())
    assert timing["seconds"] == {"04_a": 120.0, "02_b": 60.0, "06_c": 50.0} and timing["total_seconds"] == 230.0
    assert "| whole course | 230 |" in page.read_text()
    with pytest.raises(ValueError, match="H100.*H200"):
        gr.import_gpu_run([tmp_path / "one", tmp_path / "other"], tmp_path / "imported", tmp_path / "docs", None,
                          no_takeaways)
    with pytest.raises(FileNotFoundError, match="nowhere"):
        gr.import_gpu_run([tmp_path / "nowhere"], tmp_path / "imported", tmp_path / "docs", None, no_takeaways)


def test_benchmark_results_written_before_a_kill_are_imported(tmp_path):
    """Window 2's benchmarks write each strategy into $OUT/bench as it finishes: import takes them even when the
    command was killed before its archive held them."""
    _window(tmp_path / "one", "cuda: NVIDIA H200", {"04_a": 120.0})
    _window(tmp_path / "two", "cuda: NVIDIA H200", {})
    (tmp_path / "two" / "bench").mkdir()
    (tmp_path / "two" / "bench" / "NVIDIA-H200.json").write_text('{"rows": []}')
    no_takeaways = tmp_path / "notebooks"
    no_takeaways.mkdir()
    gr.import_gpu_run([tmp_path / "one", tmp_path / "two"], tmp_path / "imported", tmp_path / "docs",
                      tmp_path / "bench", no_takeaways)
    assert (tmp_path / "bench" / "NVIDIA-H200.json").read_text() == '{"rows": []}'


def test_window_two_shares_its_time_among_the_strategies():
    assert gr.strategy_seconds(240) * gr.BENCH_STRATEGIES + gr.BENCH_SETUP_SECONDS == 240
    assert gr.strategy_seconds(0) == 10.0  # the minimum rounds run whatever the cap


def test_the_cli_refuses_a_bad_precision_in_one_line():
    result = subprocess.run([sys.executable, "-m", "layerfreeze", "gpu-run", "--out", "x", "--precision", "fp8"],
                            capture_output=True, text=True)
    assert result.returncode == 2 and "fp8" in result.stderr and "Traceback" not in result.stderr


def test_every_notebook_is_sized_and_the_sizing_table_agrees():
    """docs/gpu_runs.md's arithmetic, EXPECTED_SECONDS and the notebooks stay in step; the sum leaves a margin."""
    rows = re.findall(r"^\| (\d\d) \|.*\| \*\*(\d+) s\*\* \|$", (ROOT / "docs" / "gpu_runs.md").read_text(), re.M)
    expected = gr.EXPECTED_SECONDS["full"]
    assert {prefix: int(seconds) for prefix, seconds in rows} == expected
    assert set(expected) | {gr.TAKEAWAYS} == {p.name[:2] for p in notebook_paths(ROOT / "notebooks")}
    window_1 = [prefix for prefix in gr.PRIORITY]  # 06 runs last, in what is left (docs/gpu_runs.md)
    assert sum(expected[p] for p in window_1) <= 0.9 * gr.COURSE_BUDGET_SECONDS  # with 10% to spare
