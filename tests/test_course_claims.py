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
    for row in metrics["strategies"]:
        grid = row["lr_grid"]  # the shared grid, or from scratch's own
        assert grid == metrics["settings"]["lr_grid"] or row["from_scratch"]
        tried = {float(rate): score for rate, score in row["validation_by_lr"].items()}  # in the order they ran
        assert set(tried) <= set(grid) and row["lr"] == max(tried, key=tried.get)
        assert sum(row["test_correct"]) / len(row["test_correct"]) == pytest.approx(row["test_accuracy"])


def test_02_grids_bracket_or_say_so_and_every_run_trained_to_a_plateau():
    metrics = course_results("02_freezing_early_vs_late")
    settings = metrics["settings"]
    for row in metrics["strategies"]:
        grid = row["lr_grid"]
        assert len(grid) >= 4
        tried = {float(rate): score for rate, score in row["validation_by_lr"].items()}
        on_edge = row["lr"] in (min(grid), max(grid))
        assert bool(row["rate_edge"]) == on_edge and (not on_edge or "edge of its grid" in row["rate_edge"])
        at = grid.index(row["lr"])
        neighbours = [grid[i] for i in (at - 1, at + 1) if 0 <= i < len(grid)]
        assert all(rate in tried and tried[rate] <= tried[row["lr"]] for rate in neighbours)  # bracketed
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


def bracketed_or_said(chosen, tried: dict, grid: list, edge: str) -> bool:
    """A search's choice: the best of the rates it tried, with each grid neighbour tried and scoring no higher, or on
    the grid's edge and said so."""
    at = grid.index(chosen)
    neighbours = [grid[i] for i in (at - 1, at + 1) if 0 <= i < len(grid)]
    on_edge = at in (0, len(grid) - 1)
    return (chosen == max(tried, key=tried.get) and bool(edge) == on_edge
            and all(rate in tried and tried[rate] <= tried[chosen] for rate in neighbours))


@pytest.mark.parametrize("name", ["04_catastrophic_forgetting", "06_freezing_in_llm_work"])
def test_04_and_06_every_method_searched_its_rates_on_bs_validation(name):
    metrics = course_results(name)
    first_seed = metrics["settings"]["seeds"][0]
    for run in metrics["runs"]:
        if run["seed"] != first_seed or run.get("same_run_as"):
            continue  # later seeds keep the first seed's rates; a shared run is its twin's
        grid = [tuple(pair) for pair in metrics["settings"]["lora_grid" if run["strategy"].startswith("LoRA")
                                                           else "lr_grid"]]
        tried = {tuple(float(r) for r in key.strip("()").split(", ")): score
                 for key, score in run["validation_by_lr"].items()}
        assert len(grid) >= 4 and set(tried) <= set(grid) and len(tried) >= 3, run["strategy"]
        assert bracketed_or_said(tuple(run["lr"]), tried, grid, run["rate_edge"]), run["strategy"]


def test_06_the_guide_names_the_most_accurate_method_only_when_the_runner_up_is_measurably_lower():
    from layerfreeze.study.evidence import direction
    from layerfreeze.study.sequential import compare_strategies

    metrics = course_results("06_freezing_in_llm_work")
    choice = next(row["choose"] for row in metrics["guide"] if row["priority"] == "accuracy on B")
    ranked = sorted(metrics["summary"], key=lambda row: row["b_accuracy"], reverse=True)  # stable: ties keep order
    best, runner_up = ranked[0]["method"], ranked[1]["method"]
    runs = [run for run in metrics["runs"] if run["strategy"] in (best, runner_up)]
    clearly_ahead = direction(compare_strategies(runs, best, runner_up, "b_accuracy")) == "higher"
    assert choice == (best if clearly_ahead else "no clear winner"), (best, runner_up)


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
