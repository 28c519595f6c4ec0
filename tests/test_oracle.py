"""The oracle sweep's candidates, signal scores and verdicts on signals, on tiny models and made-up runs."""

import numpy as np
import pandas as pd
import pytest

from layerfreeze import tiny_model
from layerfreeze.core.signals import plan_from_gradients, plan_from_probe, plan_from_snr, spectrum_snr
from layerfreeze.study.oracle import (candidate_plans, judge_signals, plan_accuracy, plans_within_noise,
                                      rank_correlation, signal_scores)


@pytest.fixture(scope="module")
def bert():
    return tiny_model("bert", num_layers=4)


def test_candidates_cover_each_k_top_bottom_mlp_and_attention(bert):
    plans = candidate_plans(bert, [1, 2])
    assert list(plans) == ["last 1 block", "first 1 block", "last 1 block, MLP", "last 1 block, attention",
                           "last 2 blocks", "first 2 blocks", "last 2 blocks, MLP", "last 2 blocks, attention"]
    assert "first 2 block(s)" in plans["first 2 blocks"].name and "mlp" in plans["last 2 blocks, MLP"].name


@pytest.mark.parametrize("ks", [[], [0], [5], [True], "2", None])
def test_candidates_refuse_block_counts_the_model_lacks(bert, ks):
    with pytest.raises(ValueError, match="ks must be .* from 1 to 4"):
        candidate_plans(bert, ks)


def signal_tables(model, blocks=4):
    probe = pd.DataFrame({"layer": range(blocks + 1), "probe_accuracy": [0.2, 0.3, 0.5, 0.8, 0.9]})
    grads = pd.DataFrame({"group": ["embeddings"] + [f"block.{i}" for i in range(blocks)] + ["head"],
                          "grad_rms": [1.0, 4.0, 3.0, 2.0, 1.0, 9.0]})
    return probe, grads, spectrum_snr(model)


def test_signal_scores_follow_each_signal_block_by_block(bert):
    probe, grads, snr = signal_tables(bert)
    scores = signal_scores(bert, candidate_plans(bert, [1]), probe, grads, snr)
    # block.i reads layer i: the last block's input probes 0.8, the first block's 0.2
    assert scores.loc["last 1 block", "probe"] == pytest.approx(0.8)
    assert scores.loc["first 1 block", "probe"] == pytest.approx(0.2)
    assert scores.loc["first 1 block", "gradient"] == pytest.approx(4.0)
    assert scores.loc["last 1 block, MLP", "gradient"] == pytest.approx(1.0)
    snr_last = snr[snr.group == "block.3"]
    attention = snr_last[snr_last.kind.str.startswith("attention")]["mp_snr"].mean()
    assert scores.loc["last 1 block, attention", "SNR"] == pytest.approx(attention)
    assert scores.loc["last 1 block", "SNR"] == pytest.approx(snr_last["mp_snr"].mean())


def test_signal_scores_accept_the_signals_own_plans(bert):
    probe, grads, snr = signal_tables(bert)
    plans = {"probe plan": plan_from_probe(probe), "gradient plan": plan_from_gradients(grads, 2),
             "SNR plan": plan_from_snr(snr)}
    scores = signal_scores(bert, plans, probe, grads, snr)
    assert scores.loc["gradient plan", "gradient"] == pytest.approx(3.5, rel=0.01)  # blocks 0 and 1, equal sizes
    assert scores.notna().all().all()


def test_rank_correlation_uses_ranks_and_shares_ties():
    assert rank_correlation([1, 2, 3, 100], [1, 2, 3, 4]) == pytest.approx(1.0)
    assert rank_correlation([1, 1, 2, 3], [1, 2, 3, 4]) == pytest.approx(0.9486833)
    assert np.isnan(rank_correlation([1, 1, 1], [1, 2, 3]))
    assert np.isnan(rank_correlation([1, np.nan, 3], [1, 2, 3]))  # two pairs left


def made_up_runs(accuracy_by_plan, examples=200, seeds=(0, 1, 2), params=None, step=None):
    """Runs as sequential_run's summaries hold them: per example correctness on B's test set."""
    runs = []
    for seed in seeds:
        for index, (plan, accuracy) in enumerate(accuracy_by_plan.items()):
            draws = np.random.default_rng([seed, index]).random(examples)  # each plan errs on examples of its own
            right = (draws < accuracy).astype(float).tolist()
            runs.append({"strategy": plan, "b_after_b": float(np.mean(right)), "b_validation_final": accuracy,
                         "trainable_params": (params or {}).get(plan, 1000),
                         "step_seconds": (step or {}).get(plan, 0.1),
                         "correct": {"b_after": right, "b_before": [0.0] * examples}})
    return runs


def test_judge_signals_scores_regret_against_the_oracle_chosen_on_validation():
    accuracy = {"last 2 blocks": 0.9, "first 2 blocks": 0.6, "last 1 block": 0.88, "probe plan": 0.62}
    runs = made_up_runs(accuracy, params={"last 2 blocks": 4000, "last 1 block": 2000, "probe plan": 2000,
                                          "first 2 blocks": 4000})
    scores = pd.DataFrame({"probe": [0.1, 0.9, 0.2, 0.8], "gradient": [4.0, 1.0, 3.0, 2.0], "SNR": [1, 2, 3, 4]},
                          index=list(accuracy))
    oracle, table = judge_signals(runs, scores, {"probe": "probe plan", "gradient": "last 2 blocks",
                                                 "SNR": "last 1 block"})
    assert oracle == "last 2 blocks"
    assert table.loc["gradient", "verdict"] == "is the oracle" and table.loc["gradient", "regret_points"] == 0
    assert table.loc["probe", "verdict"] == "costs accuracy"
    assert table.loc["probe", "regret_points"] == pytest.approx(28, abs=6)
    assert table.loc["probe", "regret_low"] > 0
    assert table.loc["SNR", "verdict"] == "within noise of the oracle"  # 2 points on 200 examples
    assert table.loc["probe", "rank_correlation"] == pytest.approx(-1.0)  # it ranks the plans upside down
    assert table.loc["gradient", "rank_correlation"] == pytest.approx(1.0)
    assert table.loc["SNR", "params_ratio"] == pytest.approx(0.5)
    assert plans_within_noise(runs, oracle) == ["last 2 blocks", "last 1 block"]


def test_judge_signals_names_a_proposal_with_no_runs():
    runs = made_up_runs({"last 1 block": 0.8})
    with pytest.raises(ValueError, match="no runs: probe plan"):
        judge_signals(runs, pd.DataFrame({"probe": [1.0]}, index=["last 1 block"]), {"probe": "probe plan"})


def test_plan_accuracy_is_sorted_by_validation_not_by_test():
    runs = made_up_runs({"a": 0.7, "b": 0.8})
    for run in runs:  # b is better on test, a on validation
        run["b_validation_final"] = 0.9 if run["strategy"] == "a" else 0.5
    table = plan_accuracy(runs)
    assert list(table.index) == ["a", "b"] and table.loc["a", "seeds"] == 3


def test_a_tie_on_validation_goes_to_the_cheaper_plan_never_to_test():
    runs = made_up_runs({"big": 0.7, "small": 0.9}, params={"big": 5000, "small": 100})
    for run in runs:  # both perfect on validation; big would win a tie broken by test, small by cost
        run["b_validation_final"] = 1.0
        run["b_after_b"] = 0.99 if run["strategy"] == "big" else 0.90
    assert list(plan_accuracy(runs).index) == ["small", "big"]


def test_rank_correlations_carry_an_interval_over_the_plans():
    from layerfreeze.study.oracle import rank_interval
    few = rank_interval([1, 2, 3, 4], [1, 3, 2, 4])
    many = rank_interval(list(range(40)), [i + (3 if i % 2 else -3) for i in range(40)])
    assert few[0] < rank_correlation([1, 2, 3, 4], [1, 3, 2, 4]) <= few[1]
    assert many[1] - many[0] < few[1] - few[0], "more plans, a narrower interval"
    assert all(np.isnan(rank_interval([1, 1, 1], [1, 2, 3])))
