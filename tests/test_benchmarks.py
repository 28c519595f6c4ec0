"""The benchmark script runs end to end (at smoke size, on a tiny model) and writes its JSON and tables. What it
measures depends on the machine's load, so only the structure and the arithmetic between its numbers are checked."""

import importlib.util
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_benchmarks_write_ratios_beside_the_ideal(tmp_path):
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "run.py"), "--model", "tiny:bert",
                             "--size", "smoke", "--out", str(tmp_path)], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    (json_file,) = tmp_path.glob("*.json")
    payload = json.loads(json_file.read_text())
    rows = payload["rows"]
    assert [row["configuration"] for row in rows] == ["full", "top half", "top 2 blocks", "top 1 block", "head only",
                                                      "decoder: last 2 blocks"]
    for row in rows:
        assert all(math.isfinite(row[f"{name} s/step"]) and row[f"{name} s/step"] > 0
                   for name in ("fit", "hand-written", "Trainer"))
        assert row["fit / hand-written low"] <= row["fit / hand-written"] <= row["fit / hand-written high"]
        assert row["fit / ideal"] == pytest.approx(row["fit s/step"] / row["ideal s/step"])
        assert row["estimate / measured memory"] is None, "the CPU's memory is not measured"
        assert set(row["goals"].values()) <= {"holds", "does not hold", "noisy"}
        for name in ("fit", "hand-written", "Trainer"):  # throughput follows from the step time and the arithmetic
            assert row[f"{name} tokens/s"] == pytest.approx(row["tokens/step"] / row[f"{name} s/step"])
            assert row[f"{name} of peak"] == pytest.approx(
                row["GFLOP/step"] * 1e9 / row[f"{name} s/step"] / payload["peak_flops"])
    assert payload["peak_source"].startswith("measured: ")
    assert rows[0]["GFLOP/step"] > rows[4]["GFLOP/step"], "full fine-tuning does more arithmetic than the head"
    assert rows[-1]["fit tokens/s"] > 0  # the kit's decoder, its last two blocks training
    cached = rows[2]
    assert cached["cache speed-up"] > 0 and cached["ideal cache speed-up"] > 1
    assert cached["cache speed-up / ideal"] == pytest.approx(cached["cache speed-up"] / cached["ideal cache speed-up"])
    assert "cache speed-up" not in rows[0] and "cache >= 90% of ideal" not in rows[0]["goals"]
    table = json_file.with_suffix(".md").read_text()
    assert "| configuration |" in table and "not measured on the CPU" in table
    assert "| fit tokens/s |" in table and "| Trainer of peak |" in table
    assert f"| full | {rows[0]['tokens/step']:,.0f} | {rows[0]['GFLOP/step']:.2f} |" in table
    assert payload["peak_source"] in table
    shifted = json.loads(json_file.read_text())  # the same run with one ratio moved outside its range
    for key in ("fit / hand-written", "fit / hand-written low", "fit / hand-written high"):
        shifted["rows"][0][key] += 10
    assert "16 of 17 ratios agree within their confidence intervals" in benchmark_script().compare(payload, shifted)


def benchmark_script():
    spec = importlib.util.spec_from_file_location("benchmarks_run", ROOT / "benchmarks" / "run.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_profile_splits_a_step_into_its_categories():
    """profile_step.py's arithmetic on made-up profiler events (microseconds): each top-level event lands in one
    category, a range's own time is its Python, and what no event covers is the Python between them."""
    from types import SimpleNamespace as Event
    spec = importlib.util.spec_from_file_location("profile_step", ROOT / "benchmarks" / "profile_step.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    events = [Event(name="forward", cpu_time_total=5000, self_cpu_time_total=1000),
              Event(name="autograd::engine::evaluate_function: MmBackward0", cpu_time_total=8000,
                    self_cpu_time_total=100),
              Event(name="Optimizer.step#AdamW.step", cpu_time_total=3000, self_cpu_time_total=2000),
              Event(name="enumerate(DataLoader)#_SingleProcessDataLoaderIter.__next__", cpu_time_total=500,
                    self_cpu_time_total=500),
              Event(name="aten::_foreach_norm", cpu_time_total=1500, self_cpu_time_total=1500)]
    ms = module.split_step(events, step_seconds=0.010, steps=2)  # two steps of 10 ms, 18 ms covered in all
    assert ms == pytest.approx({"forward ops": 2.0, "forward Python": 0.5, "backward": 4.0, "optimizer ops": 0.5,
                                "optimizer Python": 1.0, "data": 0.25, "other ops": 0.75, "Python between": 1.0})
