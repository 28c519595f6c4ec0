"""The oracle sweep: which signal can you trust to choose what trains?

A signal (a probe, gradient norms, Spectrum's SNR) is worth reading only if it predicts what training then shows.
The sweep trains every plan a signal could propose (:func:`candidate_plans`: the last k and the first k blocks, and
the last k blocks' MLP only and attention only, for each k) under one budget: the same task, steps, seeds and rate
grid. The plan that scores best on validation data is the **oracle**, the plan you would pick with hindsight. Each
signal is then judged by :func:`judge_signals`:

* **rank correlation**: does the signal order the candidates as training does? (Spearman's, between the signal's
  score of each plan, :func:`signal_scores`, and the plan's measured accuracy);
* **regret**: how many points of accuracy its own proposal loses against the oracle, with a paired interval, and
  what it costs (trainable parameters and step time, as ratios to the oracle's).

>>> from ..base.models import tiny_model
>>> list(candidate_plans(tiny_model("bert", num_layers=4), [1]))
['last 1 block', 'first 1 block', 'last 1 block, MLP', 'last 1 block, attention']
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from torch import nn

from ..core.freezing import select_parameters
from ..core.layers import layer_groups, num_blocks
from ..core.plans import Plan, factory_plan
from .evidence import direction
from .sequential import compare_strategies

SIGNALS = ("probe", "gradient", "SNR")


def plan_name(where: str, k: int, modules: str = "all") -> str:
    """How the sweep names a plan: ``plan_name("last", 2, "mlp")`` is ``'last 2 blocks, MLP'``."""
    return f"{where} {k} block{'s' if k > 1 else ''}" + {"all": "", "mlp": ", MLP", "attention": ", attention"}[modules]


def candidate_plans(model: nn.Module, ks: Sequence[int]) -> dict[str, Plan]:
    """Every plan the sweep trains, for each ``k`` in ``ks``: the last k blocks, the first k, and the last k blocks'
    MLP only and attention only (LLaMA-Factory's ``freeze_trainable_layers`` and ``freeze_trainable_modules``); each
    also trains the task head. ``ks`` are block counts from 1 to the model's number of blocks."""
    blocks = num_blocks(model)
    if isinstance(ks, (str, bytes)) or not isinstance(ks, Sequence) or not ks or any(
            isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= blocks for k in ks):
        raise ValueError(f"ks must be a non-empty list of block counts from 1 to {blocks} (the model's blocks); "
                         f"got {ks!r}")
    plans = {}
    for k in dict.fromkeys(ks):
        plans[plan_name("last", k)] = factory_plan(model, k)
        plans[plan_name("first", k)] = factory_plan(model, -k)
        plans[plan_name("last", k, "mlp")] = factory_plan(model, k, "mlp")
        plans[plan_name("last", k, "attention")] = factory_plan(model, k, "attention")
    return plans


def _block_values(probe: pd.DataFrame, gradients: pd.DataFrame) -> dict[str, dict[str, float]]:
    """Per signal, a value for each block: the probe's accuracy on the block's input (layer i feeds ``block.i``; a
    block that receives the task's information is the one worth training, :func:`~layerfreeze.signals.plan_from_probe`'s
    rule) and the block's RMS gradient."""
    blocks = gradients[gradients["group"].str.startswith("block.")]
    return {"probe": {f"block.{i}": float(probe["probe_accuracy"].iloc[i]) for i in range(len(blocks))},
            "gradient": dict(zip(blocks["group"], blocks["grad_rms"].astype(float)))}


def signal_scores(model: nn.Module, plans: dict[str, Plan], probe: pd.DataFrame, gradients: pd.DataFrame,
                  snr: pd.DataFrame) -> pd.DataFrame:
    """Each signal's score of each plan (rows: plans; columns: :data:`SIGNALS`), higher meaning "train this":
    for the probe and the gradient, the mean of the block's value over the block parameters the plan trains
    (weighted by their size); for the SNR, the mean ``mp_snr`` of the weight matrices it trains. A plan that trains
    nothing a signal can score (no block) scores NaN. ``probe``, ``gradients`` and ``snr`` are the tables of
    :mod:`layerfreeze.signals`."""
    groups = layer_groups(model)
    group_of = {name: g.name for g in groups for name in g.parameters}
    values, matrix_snr = _block_values(probe, gradients), dict(zip(snr["parameter"], snr["mp_snr"].astype(float)))
    rows = {}
    for name, plan in plans.items():
        trained = select_parameters(model, *plan.selection, groups=groups)
        in_blocks = {n: p.numel() for n, p in trained.items() if group_of[n].startswith("block.")}
        weights = np.array(list(in_blocks.values()), dtype=float)
        row = {}
        for signal, by_block in values.items():
            scores = np.array([by_block.get(group_of[n], np.nan) for n in in_blocks])
            row[signal] = float(np.average(scores, weights=weights)) if in_blocks else np.nan
        matrices = [matrix_snr[n] for n in trained if n in matrix_snr]
        row["SNR"] = float(np.mean(matrices)) if matrices else np.nan
        rows[name] = row
    return pd.DataFrame.from_dict(rows, orient="index")[list(SIGNALS)]


def rank_correlation(x: Sequence[float], y: Sequence[float]) -> float:
    """Spearman's rank correlation (ties share their mean rank), over the pairs where both are numbers; NaN where
    fewer than 3 pairs remain or either side is constant.

    >>> rank_correlation([1, 2, 3, 4], [10, 20, 30, 40]), rank_correlation([1, 2, 3, 4], [4, 3, 2, 1])
    (1.0, -1.0)
    """
    frame = pd.DataFrame({"x": list(x), "y": list(y)}, dtype=float).dropna()
    if len(frame) < 3 or frame["x"].nunique() < 2 or frame["y"].nunique() < 2:
        return float("nan")
    ranks = frame.rank()
    return float(np.corrcoef(ranks["x"], ranks["y"])[0, 1])


def rank_interval(x: Sequence[float], y: Sequence[float], *, level: float = 0.95, resamples: int = 2000,
                  seed: int = 0) -> tuple[float, float]:
    """A percentile bootstrap interval for :func:`rank_correlation`, resampling the pairs (the plans): with a
    handful of plans a correlation of -0.5 can sit beside +0.5. NaN where the correlation is.

    >>> low, high = rank_interval([1, 2, 3, 4, 5, 6], [1, 3, 2, 4, 6, 5])
    >>> -1 <= low < 0.83 < high <= 1
    True
    """
    pairs = pd.DataFrame({"x": list(x), "y": list(y)}, dtype=float).dropna().to_numpy()
    if np.isnan(rank_correlation(pairs[:, 0], pairs[:, 1])):
        return float("nan"), float("nan")
    picks = np.random.default_rng(seed).integers(0, len(pairs), size=(resamples, len(pairs)))
    values = np.array([rank_correlation(pairs[i, 0], pairs[i, 1]) for i in picks])
    values = values[~np.isnan(values)]
    tail = 100 * (1 - level) / 2
    return float(np.percentile(values, tail)), float(np.percentile(values, 100 - tail))


def plan_accuracy(runs: list[dict]) -> pd.DataFrame:
    """Per plan (``strategy`` in the runs), the mean over seeds of B's test accuracy (``b_after_b``), its standard
    deviation over seeds, B's final validation accuracy (``b_validation_final``), the trainable parameters and the
    step time, sorted best first by validation; plans tied on validation go cheapest first (fewer trainable
    parameters), never by test accuracy, which only judges."""
    frame = pd.DataFrame(runs)
    table = frame.groupby("strategy", sort=False).agg(
        b_accuracy=("b_after_b", "mean"), b_accuracy_std=("b_after_b", lambda s: float(np.std(s))),
        validation=("b_validation_final", "mean"), trainable_params=("trainable_params", "first"),
        step_seconds=("step_seconds", "mean"), seeds=("b_after_b", "size"))
    return table.sort_values(["validation", "trainable_params"], ascending=[False, True], kind="stable")


def judge_signals(runs: list[dict], scores: pd.DataFrame, proposals: dict[str, str]) -> tuple[str, pd.DataFrame]:
    """``(oracle, table)``: the oracle is the plan whose mean validation accuracy on B is highest (chosen on
    validation, so the test set only judges); one row per signal in ``proposals`` (signal -> the name of the plan it
    proposed, which ``runs`` holds).

    Columns: ``proposal``; ``rank_correlation`` between the signal's ``scores`` of the plans and their mean test
    accuracy, with a bootstrap interval over the plans (``rank_low``, ``rank_high``); ``regret_points``, the
    oracle's test accuracy minus the proposal's, with its paired interval over test examples and seeds
    (``regret_low``, ``regret_high``) and ``verdict``: *costs accuracy* when the whole interval
    lies above zero, *within noise of the oracle* otherwise (or *is the oracle*); ``params_ratio`` and
    ``step_time_ratio``, the proposal's over the oracle's.
    """
    unknown = sorted(set(proposals.values()) - {run["strategy"] for run in runs})
    if unknown:
        raise ValueError(f"proposals name plans with no runs: {', '.join(unknown)}")
    plans = plan_accuracy(runs)
    oracle = plans.index[0]
    rows = []
    for signal, proposal in proposals.items():
        regret = compare_strategies(runs, oracle, proposal, "b_accuracy")
        scored = scores[signal].reindex(plans.index)
        low, high = rank_interval(scored, plans["b_accuracy"])
        rows.append({"signal": signal, "proposal": proposal,
                     "rank_correlation": rank_correlation(scored, plans["b_accuracy"]),
                     "rank_low": low, "rank_high": high,
                     "regret_points": 100 * regret.estimate, "regret_low": 100 * regret.low,
                     "regret_high": 100 * regret.high,
                     "verdict": "is the oracle" if proposal == oracle else
                     "costs accuracy" if direction(regret) == "higher" else "within noise of the oracle",
                     "params_ratio": plans.loc[proposal, "trainable_params"] / plans.loc[oracle, "trainable_params"],
                     "step_time_ratio": plans.loc[proposal, "step_seconds"] / plans.loc[oracle, "step_seconds"]})
    return oracle, pd.DataFrame(rows).set_index("signal")


def plans_within_noise(runs: list[dict], oracle: str) -> list[str]:
    """The plans whose B accuracy is not measurably below the oracle's (paired interval over examples and seeds):
    where every plan is, the task cannot tell plans apart and no signal can be judged on it."""
    names = dict.fromkeys(run["strategy"] for run in runs)
    return [name for name in names
            if name == oracle or direction(compare_strategies(runs, oracle, name, "b_accuracy")) != "higher"]


def blocks_trained(model: nn.Module, plan: Plan) -> list[int]:
    """The indices of the blocks in which ``plan`` trains anything, bottom first.

    >>> from ..base.models import tiny_model
    >>> model = tiny_model("bert", num_layers=4)
    >>> blocks_trained(model, candidate_plans(model, [2])["first 2 blocks"])
    [0, 1]
    """
    groups = layer_groups(model)
    trained = set(select_parameters(model, *plan.selection, groups=groups))
    return [i for i, g in enumerate(g for g in groups if g.kind == "block") if trained & set(g.parameters)]


def same_plans(model: nn.Module, plans: dict[str, Plan]) -> dict[str, str]:
    """Each plan that trains exactly the parameters of an earlier plan in ``plans``, mapped to that earlier plan's
    name: one run then serves both, since the same parameters, seed and rate grid give the same run.

    >>> from ..base.models import tiny_model
    >>> model = tiny_model("bert", num_layers=4)
    >>> plans = candidate_plans(model, [1, 2])
    >>> same_plans(model, {**plans, "probe plan": plans["last 1 block"]})
    {'probe plan': 'last 1 block'}
    """
    groups = layer_groups(model)
    first, same = {}, {}
    for name, plan in plans.items():
        same[name] = first.setdefault(frozenset(select_parameters(model, *plan.selection, groups=groups)), name)
    return {name: earlier for name, earlier in same.items() if earlier != name}
