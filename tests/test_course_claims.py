"""The lessons the notebooks state, checked on a course run's metrics (``build/results/*.json``).

Marked ``course_claims``: it runs only where ``make course`` has produced results, and is skipped elsewhere, CI
included. Run it after a course run with ``pytest -m course_claims``; on a GPU run's results (``build-gpu/results``
after ``python -m layerfreeze gpu-import``) with ``LAYERFREEZE_RESULTS=build-gpu/results pytest -m course_claims``. The first group holds on any real run (``cpu``
or ``full``): they follow from how the course measures, not from what the data happen to show. The second group is
what the full profile's data are built to show.
"""

import json
import os
from pathlib import Path

import pytest

RESULTS = Path(os.environ.get("LAYERFREEZE_RESULTS", Path(__file__).resolve().parents[1] / "build" / "results"))
pytestmark = pytest.mark.course_claims


def course_results(name, profiles=("cpu", "full")):
    path = RESULTS / f"{name}.json"
    if not path.exists():
        pytest.skip(f"no {path.name}: run `make course` first")
    metrics = json.loads(path.read_text())
    if metrics.get("profile") not in profiles:
        pytest.skip(f"{path.name} is from the {metrics.get('profile')!r} profile; these claims are for {profiles}")
    return metrics


# --- on any real run -----------------------------------------------------------------------------------------------

def test_02_each_strategy_chose_its_rate_from_the_same_grid_on_validation():
    metrics = course_results("02_freezing_early_vs_late")
    grid = metrics["settings"]["lr_grid"]
    for row in metrics["strategies"]:
        assert row["lr"] in grid and len(row["validation_by_lr"]) == len(grid)
        assert row["lr"] == max(grid, key=lambda rate: row["validation_by_lr"][str(rate)])
        assert sum(row["test_correct"]) / len(row["test_correct"]) == pytest.approx(row["test_accuracy"])


def test_02_grids_bracket_or_say_so_and_every_run_trained_to_a_plateau():
    metrics = course_results("02_freezing_early_vs_late")
    grid, settings = metrics["settings"]["lr_grid"], metrics["settings"]
    assert len(grid) >= (4 if metrics["profile"] == "full" else 3)
    for row in metrics["strategies"]:
        on_edge = row["lr"] in (min(grid), max(grid))
        assert bool(row["rate_edge"]) == on_edge and (not on_edge or "edge of its grid" in row["rate_edge"])
        assert 1 <= row["best_epoch"] <= row["stopped_epoch"] <= settings["epochs"]
        assert row["stopped_epoch"] == len(row["epochs"]) and row["stop_reason"]
        scores = [e["eval_accuracy"] for e in row["epochs"]]
        assert scores[row["best_epoch"] - 1] == max(scores)


def test_02_seeds_share_one_rate_and_each_verdict_says_what_its_interval_covers():
    metrics = course_results("02_freezing_early_vs_late")
    seeds = metrics["seeds"]
    assert len(seeds) == metrics["settings"]["seeds"] and (metrics["profile"] != "full" or len(seeds) >= 5)
    for row in metrics["strategies"]:
        assert len(metrics["seed_accuracy"][row["name"]]) == len(seeds)
        assert metrics["seed_accuracy"][row["name"]][0] == pytest.approx(row["test_accuracy"])
    for found in metrics["verdicts"]:
        if found["key"] in ("full_beats_head_only", "top_beats_bottom"):
            assert found["seeds"] == len(seeds)
            assert found["interval over"] == ("across seeds" if len(seeds) > 1 else "test sample")
            assert found["effect size"].endswith(f"over {len(seeds)} seeds" if len(seeds) > 1 else ")") or \
                "Cohen's h" in found["effect size"]
        if found["verdict"] == "holds":
            assert found["low"] > found["threshold"]
        elif found["verdict"] == "does not hold":
            assert found["high"] < found["threshold"]
        elif found["verdict"] == "within noise":
            assert found["low"] <= found["threshold"] <= found["high"]


def test_02_memory_is_shown_as_measured_only_on_cuda():
    metrics = course_results("02_freezing_early_vs_late")
    on_cuda = all(row["memory_kind"].startswith("cuda") for row in metrics["strategies"])
    assert metrics["memory_measured"] == on_cuda
    strategies_table = next(t for t in metrics["key_tables"] if t["title"] == "Strategies")
    assert ("peak_memory_mib" in strategies_table["columns"]) == on_cuda


def test_04_what_never_moves_neither_forgets_nor_drifts():
    metrics = course_results("04_catastrophic_forgetting")
    summary = {row["strategy"]: row for row in metrics["summary"]}
    assert summary["head only"]["forgetting"] == pytest.approx(0.0, abs=1e-9)  # its shared layers never move
    assert metrics["cka"]["head only"] == pytest.approx({layer: 1.0 for layer in metrics["cka"]["head only"]})
    frozen = f"freeze bottom {len(metrics['cka']['full']) - 2}"  # all blocks but the top one
    assert list(metrics["cka"][frozen].values())[:-1] == pytest.approx([1.0] * (len(metrics["cka"]["full"]) - 1))


@pytest.mark.parametrize("name", ["02_freezing_early_vs_late", "03_gradual_unfreezing", "04_catastrophic_forgetting"])
def test_every_verdict_has_a_reason_unless_it_holds(name):
    for row in course_results(name)["verdicts"]:
        assert row["verdict"] in ("holds", "does not hold", "within noise", "untestable here")
        assert (row["verdict"] == "holds") == (row["likely reason"] == "")
        if row["verdict"] == "untestable here":  # the number that makes it so, measured
            assert row["likely reason"].startswith(("not converged:", "ceiling:"))


def test_04_lora_is_conventional_and_the_decoder_runs_only_when_pretrained():
    metrics = course_results("04_catastrophic_forgetting")
    assert 8 <= metrics["lora"]["rank"] <= 16 and metrics["lora"]["alpha"] == 2 * metrics["lora"]["rank"]
    if metrics["decoder"]["model"].startswith("tiny:"):
        assert metrics["decoder"]["skipped"] and not metrics["decoder"]["rows"]


def test_07_the_takeaways_cite_every_notebook():
    metrics = course_results("07_takeaways")
    assert {"01_parameter_inspection", "02_freezing_early_vs_late", "04_catastrophic_forgetting"} <= set(
        metrics["notebooks"])
    assert not any(row["this course's evidence"].startswith("not measured: notebook")
                   for row in metrics["decision_guide"])


# --- what the full profile's data are built to show ----------------------------------------------------------------

def test_02_the_data_shows_the_lesson():
    metrics = course_results("02_freezing_early_vs_late", profiles=("full",))
    accuracy = {s["name"]: s["test_accuracy"] for s in metrics["strategies"]}
    assert accuracy["all"] - accuracy["head only"] >= 0.10  # a head on frozen features falls far short
    assert accuracy["all"] <= 0.98  # and full fine-tuning does not saturate
    assert accuracy["head only"] < accuracy["top 2"]
    assert accuracy["from scratch"] < accuracy["all"]  # pretraining buys accuracy


def test_03_ddp_replicas_agree():
    metrics = course_results("03_gradual_unfreezing", profiles=("full",))
    assert metrics["ddp"]["replicas_identical"]
