"""Intervals, verdicts, plateau checks and the learning-rate grid: the evidence behind every sentence of the course."""

import numpy as np
import pytest
import torch

from layerfreeze import tiny_model
from layerfreeze.study.evidence import (Interval, choose_learning_rate, combine_verdicts, correct_per_example, curve_shape,
                                  difference_interval, likely_reason, still_improving, verdict)
from layerfreeze.core.evaluation import evaluate


def test_correct_per_example_averages_to_evaluate_accuracy():
    data = (torch.randint(5, 99, (40, 6)), torch.ones(40, 6, dtype=torch.long), torch.randint(0, 2, (40,)))
    model = tiny_model("bert").train()
    hits = correct_per_example(model, data, batch_size=16)
    assert hits.shape == (40,) and set(np.unique(hits)) <= {0.0, 1.0}
    assert hits.mean() == pytest.approx(evaluate(model, data)["accuracy"])
    assert model.training  # its mode is restored


def test_a_clear_difference_holds_and_its_reverse_does_not():
    rng = np.random.default_rng(0)
    better, worse = (rng.random(500) < 0.9).astype(float), (rng.random(500) < 0.6).astype(float)
    interval = difference_interval(better, worse)
    assert interval.low < interval.estimate < interval.high
    assert verdict(interval) == "holds" and verdict(difference_interval(worse, better)) == "does not hold"
    assert verdict(interval, threshold=0.5) == "does not hold"  # 30 points is not 50


def test_a_small_difference_on_few_examples_is_within_noise():
    a = np.r_[np.ones(52), np.zeros(48)]
    b = np.r_[np.ones(50), np.zeros(50)]
    assert verdict(difference_interval(a, b)) == "within noise"


def test_more_examples_narrow_the_interval_and_seeds_add_their_spread():
    rng = np.random.default_rng(1)
    small = difference_interval((rng.random(100) < 0.8).astype(float))
    large = difference_interval((rng.random(2000) < 0.8).astype(float))
    assert large.high - large.low < small.high - small.low
    steady = np.tile((rng.random(300) < 0.8).astype(float), (3, 1))
    shaky = steady.copy()
    shaky[1, :60], shaky[2, :60] = 0.0, 1.0  # the seeds disagree
    assert difference_interval(shaky).high - difference_interval(shaky).low > \
        difference_interval(steady).high - difference_interval(steady).low


@pytest.mark.parametrize("bad, message", [(([[1, 0]], [[1, 1, 0]]), "same shape"), (([],), "at least one example")])
def test_bad_input_names_what_is_wrong(bad, message):
    with pytest.raises(ValueError, match=message):
        difference_interval(*bad)


def test_verdicts_combine_and_explain():
    assert combine_verdicts(["holds", "holds"]) == "holds"
    assert combine_verdicts(["holds", "does not hold"]) == "does not hold"
    assert combine_verdicts(["holds", "untestable here"]) == "untestable here"
    assert likely_reason("does not hold", {"a": [0.5, 0.5]}, "the data") == "hypothesis: the data"
    with pytest.raises(ValueError, match="must be one of"):
        likely_reason("maybe", {}, "")
    assert Interval(0.1, 0.05, 0.15).points() == "+10.0 points (95% CI +5.0 to +15.0)"


def test_curve_shapes():
    assert still_improving([0.5, 0.6, 0.7]) and not still_improving([0.5, 0.7, 0.702])
    assert curve_shape([0.605, 0.855, 0.945, 0.945]) == "plateau"  # not "peaked and fell back"
    assert curve_shape([0.6, 0.95, 0.90]) == "fell back"
    with pytest.raises(ValueError, match="empty"):
        still_improving([])


def test_the_learning_rate_is_chosen_on_the_score_alone():
    seen = []

    def run(rate):
        seen.append(rate)
        return {"best_accuracy": {1e-4: 0.8, 3e-4: 0.9, 1e-3: 0.7}[rate], "test_accuracy": 1 - rate}

    rate, result, scores = choose_learning_rate(run, [1e-4, 3e-4, 1e-3])
    assert seen == [1e-4, 3e-4, 1e-3] and rate == 3e-4 and result["best_accuracy"] == 0.9
    assert scores == {1e-4: 0.8, 3e-4: 0.9, 1e-3: 0.7}
    with pytest.raises(ValueError, match="at least one"):
        choose_learning_rate(run, [])


def test_a_line_search_brackets_its_choice_with_fewer_runs():
    grid = [1e-5, 3e-5, 1e-4, 3e-4, 1e-3, 3e-3]
    for peak in grid:
        seen = []

        def run(rate):
            seen.append(rate)
            return {"best_accuracy": -abs(np.log10(rate / peak))}

        rate, _, scores = choose_learning_rate(run, grid, start=[1e-4, 3e-4])
        assert rate == peak and set(seen) == set(scores) and len(seen) == len(set(seen))
        i = grid.index(peak)
        assert all(grid[j] in scores for j in (i - 1, i + 1) if 0 <= j < len(grid))  # bracketed, or at the end
        assert len(seen) < len(grid) or peak in (grid[0], grid[-1])
    flat = []
    rate, _, scores = choose_learning_rate(lambda lr: flat.append(lr) or {"best_accuracy": 0.6}, grid,
                                           start=[1e-4, 3e-4])
    assert rate == 1e-4 and flat == [1e-4, 3e-4, 3e-5]  # a tie keeps the first tried: one step, then it stops
    with pytest.raises(ValueError, match="start must hold rates of the grid"):
        choose_learning_rate(run, grid, start=[2e-4])
    with pytest.raises(ValueError, match="ascending"):
        choose_learning_rate(run, grid[::-1], start=[1e-4])


def test_an_undecidable_claim_is_untestable_with_its_number():
    """Issue 24's cases: a curve still rising beyond its noise, or both sides at the ceiling, cannot decide a claim,
    whichever way its interval points (issue 38: the rule is symmetric); a rise within the validation noise keeps
    the verdict."""
    from layerfreeze.study.evidence import finding

    flat = {"full": [0.80, 0.90, 0.90], "LoRA": [0.80, 0.89, 0.90]}
    rising = {"full": [0.70, 0.80, 0.90], "LoRA": [0.80, 0.89, 0.90]}
    within = Interval(0.01, -0.02, 0.04)
    assert finding("k", "c", within, flat, "small", examples=500).verdict == "within noise"
    untestable = finding("k", "c", within, rising, "small", examples=500)
    assert untestable.verdict == "untestable here" and "full gained +10.0 points" in untestable.reason
    assert finding("k", "c", Interval(0.05, 0.02, 0.08), rising, "small", examples=500).verdict == "untestable here"
    assert finding("k", "c", Interval(0.05, 0.02, 0.08), flat, "small", examples=500).verdict == "holds"
    assert finding("k", "c", Interval(0.05, 0.02, 0.08), flat, "small", examples=500, ceiling=0.96,
                   accuracies={"full": 0.955, "LoRA": 0.953}).verdict == "untestable here"
    assert finding("k", "c", within, {"a": [0.80, 0.81]}, "small", examples=100).verdict == "within noise"
    capped = finding("k", "c", Interval(-0.01, -0.03, 0.01), flat, "small", examples=500, ceiling=0.96,
                     accuracies={"full": 0.955, "LoRA": 0.953})
    assert capped.verdict == "untestable here" and capped.reason.startswith("ceiling: full 95.5%, LoRA 95.3%")
    threshold = finding("k", "adds >= 10 points", Interval(0.05, 0.02, 0.08), {}, "x", threshold=0.10)
    assert threshold.verdict == "does not hold" and threshold.difference.endswith("against the claim's +10")


# --- the protocol: intervals across seeds, effect sizes, too few seeds, one rate per method ---------------------------

from layerfreeze.study.evidence import (ACROSS_SEEDS, SEEDS_AND_TEST_SAMPLE, TEST_SAMPLE, UNTESTABLE, Finding,
                                        effect_size, finding, rate_fixed_across_seeds, seed_interval)


def test_an_interval_says_what_it_resamples_and_over_how_many_seeds():
    one = difference_interval(np.r_[np.ones(80), np.zeros(20)], np.r_[np.ones(60), np.zeros(40)])
    assert (one.kind, one.seeds) == (TEST_SAMPLE, 1) and "seeds" not in one.points()
    several = difference_interval(np.ones((3, 50)), np.zeros((3, 50)))
    assert (several.kind, several.seeds) == (SEEDS_AND_TEST_SAMPLE, 3) and "3 seeds" in several.points()
    across = seed_interval([0.80, 0.84, 0.82, 0.83, 0.81], [0.70, 0.71, 0.69, 0.72, 0.70])
    assert (across.kind, across.seeds) == (ACROSS_SEEDS, 5) and "across 5 seeds" in across.points()


def test_a_seed_interval_widens_with_run_to_run_spread_and_is_t_based():
    steady = seed_interval([0.80, 0.80, 0.80], [0.75, 0.75, 0.75])
    assert steady.low == steady.high == pytest.approx(0.05)
    noisy = seed_interval([0.90, 0.70, 0.80], [0.75, 0.75, 0.75])
    assert noisy.low < 0 < noisy.high  # a +5-point mean whose seeds disagree by 20 points shows nothing
    # two seeds: t with 1 degree of freedom (12.71), far wider than the normal's 1.96
    two = seed_interval([0.8, 0.9], [0.7, 0.7])
    assert two.high - two.estimate == pytest.approx(12.706 * 0.0707107 / 2 ** 0.5, rel=1e-3)
    with pytest.raises(ValueError, match="at least 2 seeds"):
        seed_interval([0.8], [0.7])
    with pytest.raises(ValueError, match="one value per seed"):
        seed_interval([0.8, 0.9], [0.7])


def test_effect_size_in_points_and_standardised():
    assert effect_size([0.5], [0.5]) == "+0.0 points, Cohen's h 0.00"
    assert effect_size([0.8], [0.9]).startswith("-10.0 points, Cohen's h -0.")
    assert effect_size([0.9, 0.8], [0.8, 0.8]).endswith("over 2 seeds")
    with pytest.raises(ValueError, match="one accuracy per seed"):
        effect_size([0.9, 0.8], [0.8])


def test_too_few_seeds_is_untestable_whatever_the_interval_and_says_how_many():
    clear = Interval(0.10, 0.05, 0.15)  # one seed
    assert finding("k", "a beats b", clear, {}, "x").verdict == "holds"
    one = finding("k", "a beats b", clear, {}, "x", min_seeds=3)
    assert one.verdict == UNTESTABLE and "1 seed" in one.reason and "at least 3" in one.reason
    across = seed_interval([0.8, 0.82, 0.81], [0.7, 0.71, 0.7])
    enough = finding("k", "a beats b", across, {}, "x", min_seeds=3, effect="+10 points")
    assert enough.verdict == "holds" and enough.seeds == 3 and enough.interval_kind == ACROSS_SEEDS
    row = enough.record()
    assert row["interval over"] == ACROSS_SEEDS and row["seeds"] == 3 and row["effect size"] == "+10 points"
    back = Finding.from_record(row)
    assert (back.interval_kind, back.seeds, back.effect) == (ACROSS_SEEDS, 3, "+10 points")


def test_a_threshold_claim_is_tested_against_its_threshold_not_zero():
    gain = Interval(0.06, 0.03, 0.09)  # clearly above zero, clearly below 10 points
    found = finding("last_block_adds_10", "the last block adds >= 10 points", gain, {}, "x", threshold=0.10)
    assert found.verdict == "does not hold" and "against the claim's +10" in found.difference
    assert finding("k", "adds >= 5", gain, {}, "x", threshold=0.05).verdict == "within noise"


def test_the_rate_is_chosen_once_on_the_first_seed_and_fixed_for_the_others():
    calls = []

    def run(rate, seed):
        calls.append((rate, seed))
        best = {0: 1e-4, 1: 1e-3, 2: 1e-3}[seed]  # later seeds would prefer another rate: they must not get it
        return {"best_accuracy": 1 - abs(np.log10(rate / best)), "seed": seed}

    rate, results, scores = rate_fixed_across_seeds(run, [3e-5, 1e-4, 3e-4, 1e-3], seeds=[0, 1, 2])
    assert rate == 1e-4 and set(scores) == {3e-5, 1e-4, 3e-4, 1e-3}
    assert [seed for r, seed in calls if r != 1e-4] == [0, 0, 0]  # the grid runs on seed 0 only
    assert [r["seed"] for r in results] == [0, 1, 2] and results[0]["rate_edge"] == ""
    with pytest.raises(ValueError, match="at least 4 learning rates"):
        rate_fixed_across_seeds(run, [1e-4, 1e-3], seeds=[0])


def test_an_edge_choice_is_printed_and_recorded(capsys):
    rate, results, _ = rate_fixed_across_seeds(lambda lr, seed: {"best_accuracy": -lr}, [1e-5, 1e-4, 1e-3, 1e-2],
                                               seeds=[0, 1])
    assert rate == 1e-5 and "lower edge" in results[0]["rate_edge"] and "lower edge" in capsys.readouterr().out


def test_a_rise_too_small_for_the_gap_is_no_reason_for_it():
    """Issue 38: a -27 point gap is not explained by a curve that still rose 1.3 points."""
    found = finding("k", "gradual beats full", Interval(-0.27, -0.33, -0.21), {"gradual": [0.787, 0.80]},
                    "the rates were tuned for an LSTM", examples=500)
    assert found.verdict == "does not hold" and found.reason.startswith("hypothesis: the rates were tuned")
    assert "too little to explain 27.0" in found.reason
    explained = finding("k", "a beats b", Interval(-0.05, -0.08, -0.02), {"a": [0.70, 0.80]}, "x", examples=50)
    assert explained.reason.startswith("likely reason: a still rising")
