"""The lessons the notebooks state, checked on a full-profile run's metrics (``build/results/*.json``).

Marked ``course_claims``: it runs only where ``make course`` has produced full-profile results (on a GPU), and is
skipped elsewhere, CI included. Run it after a GPU run with ``pytest -m course_claims``.
"""

import json
from pathlib import Path

import pytest

RESULTS = Path(__file__).resolve().parents[1] / "build" / "results"
pytestmark = pytest.mark.course_claims


def full_results(name):
    path = RESULTS / f"{name}.json"
    if not path.exists():
        pytest.skip(f"no {path.name}: run `make course` on a GPU first")
    metrics = json.loads(path.read_text())
    if metrics.get("profile") != "full":
        pytest.skip(f"{path.name} is from the {metrics.get('profile')!r} profile; these claims are for 'full'")
    return metrics


def test_02_the_data_shows_the_lesson():
    metrics = full_results("02_freezing_early_vs_late")
    accuracy = {s["name"]: s["test_accuracy"] for s in metrics["strategies"]}
    assert accuracy["all"] - accuracy["head only"] >= 0.10  # a head on frozen features falls far short
    assert accuracy["all"] <= 0.98  # and full fine-tuning does not saturate
    assert accuracy["head only"] < accuracy["top 2"]
    assert accuracy["from scratch"] < accuracy["all"]  # pretraining buys accuracy


def test_03_last_underfits():
    metrics = full_results("03_gradual_unfreezing")
    accuracy = {name: row["test_accuracy"] for name, row in metrics["rows"].items()}
    assert accuracy["Last"] == min(accuracy.values())
    assert metrics["ddp"]["replicas_identical"]


def test_04_head_only_forgets_nothing_and_full_forgets_most_of_the_frozen_series():
    metrics = full_results("04_catastrophic_forgetting")
    forgetting = {row["strategy"]: row["forgetting"] for row in metrics["summary"]}
    assert forgetting["head only"] == pytest.approx(0.0, abs=1e-9)  # its shared layers never move
    assert forgetting["full"] >= max(v for k, v in forgetting.items() if k.startswith("freeze bottom")) - 0.005
