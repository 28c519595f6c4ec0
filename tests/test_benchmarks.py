"""The benchmark script runs end to end (at smoke size, on a tiny model) and writes its JSON and table."""

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_benchmarks_write_ratios(tmp_path):
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "run.py"), "--model", "tiny:bert",
                             "--size", "smoke", "--out", str(tmp_path)], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    (json_file,) = tmp_path.glob("*.json")
    payload = json.loads(json_file.read_text())
    assert [row["configuration"] for row in payload["rows"]] == ["full", "top half", "top 2 blocks", "top 1 block",
                                                                 "head only"]
    for row in payload["rows"]:
        assert all(math.isfinite(row[f"{name} s/step"]) for name in ("fit", "hand-written", "Trainer"))
        assert row["fit / hand-written"] == pytest.approx(row["fit s/step"] / row["hand-written s/step"])
    assert "cache speed-up" in payload["rows"][2] and "cache speed-up" not in payload["rows"][0]
    assert "| configuration |" in json_file.with_suffix(".md").read_text()
