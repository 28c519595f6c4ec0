"""Task A, then task B: the forgetting experiment, and the statistics over its runs.

The protocol (:func:`sequential_run`): start from the pretrained model; train task A with head A; then train task B
with head B under a strategy, and after every epoch of B evaluate A *with head A*, which never trains during B. The
two heads share every module below them, so any loss on A comes from the shared layers alone. The metrics it reports
are :mod:`layerfreeze.core.forgetting`'s.
"""

from __future__ import annotations

import copy
import dataclasses
import time
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch
from torch import nn

from ..base.data import as_tensors, batches_per_epoch
from ..core.forgetting import backward_transfer, drift, forgetting, learning
from ..core.freezing import freeze
from ..core.layers import layer_groups, replace_module
from ..core.memory import MiB
from ..core.optim import follow_schedule
from ..core.schedules import head_and_body_lrs
from ..core.strategy import Lora, Strategy, apply_preset
from ..core.training import fit
from .evidence import Interval, choose_learning_rate, correct_per_example, difference_interval, direction, grid_edge
from .runs import caches_prefix, memory_estimate

# --- the protocol notebooks 04 and 06 share ------------------------------------------------------------------------

# (body or adapter rate, head rate) pairs a method chooses from on task B's validation data, by a line search from
# two pairs of the grid (evidence.choose_learning_rate); LoRA's adapters conventionally take higher rates, so their
# grid sits higher, with as many points. Few trainable parameters (a block, the biases) take larger steps than many:
# the grids reach up far enough for both.
RATE_GRID = [(3e-5, 3e-4), (1e-4, 1e-3), (3e-4, 3e-3), (1e-3, 1e-2), (3e-3, 3e-2)]
LORA_GRID = [(1e-4, 3e-4), (3e-4, 1e-3), (1e-3, 3e-3), (3e-3, 1e-2), (1e-2, 3e-2)]
RATE_START, LORA_START = RATE_GRID[1:3], LORA_GRID[1:3]
PROTOCOL = {
    "smoke": dict(train=32, eval=32, epochs_a=1, epochs_b=2, batch_size=16, seeds=1,  # one point each: the code path
                  lr_grid=RATE_GRID[1:2], lora_grid=LORA_GRID[2:3], lr_start=None, lora_start=None),
    "cpu": dict(train=128, eval=150, epochs_a=3, epochs_b=3, batch_size=16, seeds=1, lr_grid=RATE_GRID,
                lora_grid=LORA_GRID, lr_start=RATE_START, lora_start=LORA_START),
    "full": dict(train=480, eval=500, epochs_a=3, epochs_b=4, batch_size=32, seeds=5, lr_grid=RATE_GRID,
                 lora_grid=LORA_GRID, lr_start=RATE_START, lora_start=LORA_START),
}


def protocol_settings(seed: int, **extra: dict) -> dict[str, dict]:
    """Per profile, the task A -> task B protocol of notebooks 04 and 06 (:data:`PROTOCOL`: examples per split, epochs
    of A and of B, batch size, the rate grids) with ``seeds`` as the list of seeds from ``seed``, and each notebook's
    own settings added (``extra``: profile -> settings). Both notebooks train model A and full fine-tuning on B
    identically, so where they measure the same thing they measure the same runs.

    >>> protocol_settings(7, cpu={"probe": 100})["cpu"]["seeds"], protocol_settings(7)["full"]["seeds"]
    ([7], [7, 8, 9, 10, 11])
    """
    unknown = sorted(set(extra) - set(PROTOCOL))
    if unknown:
        raise ValueError(f"extra names profiles {unknown}; valid: {', '.join(PROTOCOL)}")
    return {profile: {**shared, "seeds": [seed + i for i in range(shared["seeds"])], **extra.get(profile, {})}
            for profile, shared in PROTOCOL.items()}


# --- two heads over one body ---------------------------------------------------------------------------------------

def with_new_head(model_a: nn.Module, num_labels: int, seed: int = 0) -> nn.Module:
    """A model for task B that shares every module below the head with ``model_a`` and has a head of its own.

    The head group (for BERT: pooler and classifier) is copied, its final layer re-initialised for ``num_labels``;
    embeddings and blocks are the very same module objects, so training B moves A's body too.
    """
    model_b = copy.deepcopy(model_a)
    for group in layer_groups(model_a)[:-1]:
        for name, module in group.modules.items():
            replace_module(model_b, name, module)
    torch.manual_seed(seed)
    head = getattr(model_b, "classifier", None) or getattr(model_b, "score", None)
    owner, attribute = (head, "out_proj") if hasattr(head, "out_proj") else (
        model_b, "classifier" if hasattr(model_b, "classifier") else "score")
    old = getattr(owner, attribute, None)
    if not isinstance(old, nn.Linear):
        raise ValueError(f"cannot find the final classification layer of {type(model_b).__name__}")
    setattr(owner, attribute, nn.Linear(old.in_features, num_labels, bias=old.bias is not None).to(old.weight.device))
    model_b.config = copy.deepcopy(model_a.config)
    model_b.config.num_labels = num_labels
    model_b.num_labels = num_labels
    return model_b


# --- the protocol --------------------------------------------------------------------------------------------------

@dataclass
class SequentialResult:
    """One run of A then B under one strategy."""

    strategy: str
    a_after_a: float
    b_before_b: float
    a_during_b: list[float] = field(default_factory=list)  # A's accuracy (head A) after each epoch of B
    b_during_b: list[float] = field(default_factory=list)  # B's accuracy on its evaluation data after each epoch
    trainable_params: int = 0
    seconds: float = 0.0
    cka: list[float] = field(default_factory=list)  # per layer, the model after A vs after B
    agreement: float = float("nan")
    lr: float = float("nan")
    b_after_b: float | None = None  # on B's test data where one was given, else the last of b_during_b
    # per test example, 1 where right: "a_before", "a_after" (task A), "b_before", "b_after" (task B)
    correct: dict[str, list[float]] = field(default_factory=dict)
    step_seconds: float = 0.0
    peak_memory_mib: float | None = None  # measured by fit: CUDA allocations, or the CPU's resident set
    memory_kind: str = ""
    estimated_memory_mib: float = 0.0  # estimate_memory's total, for the largest trainable set of the run
    phases: list = field(default_factory=list)
    description: dict = field(default_factory=dict)  # Strategy.describe(): its preset, plan, schedule and adapter

    @property
    def matrix(self) -> list[list[float]]:
        """``R`` for tasks (A, B): rows after training A, after training B."""
        return [[self.a_after_a, self.b_before_b], [self.a_during_b[-1], self._b_final]]

    @property
    def _b_final(self) -> float:
        return self.b_during_b[-1] if self.b_after_b is None else self.b_after_b

    def summary(self) -> dict:
        return {"strategy": self.strategy, "lr": self.lr, "a_after_a": self.a_after_a,
                "a_after_b": self.a_during_b[-1], "b_after_b": self._b_final, "b_before_b": self.b_before_b,
                "forgetting": forgetting(self.matrix)["mean"], "backward_transfer": backward_transfer(self.matrix),
                "learning": learning(self.b_before_b, self._b_final), "a_during_b": self.a_during_b,
                "b_during_b": self.b_during_b, "b_validation_final": self.b_during_b[-1],
                "trainable_params": self.trainable_params, "seconds": self.seconds, "cka": self.cka,
                "agreement": self.agreement, "correct": self.correct, "step_seconds": self.step_seconds,
                "peak_memory_mib": self.peak_memory_mib, "memory_kind": self.memory_kind,
                "estimated_memory_mib": self.estimated_memory_mib, "phases": self.phases,
                "description": self.description}


def train_task_a(pretrained: nn.Module, data_a, eval_a, *, epochs: int, batch_size: int, seed: int = 0,
                 lr: float = 1e-4, head_lr: float = 1e-3, progress: bool = True) -> nn.Module:
    """Fine-tune a copy of the pretrained model on task A (everything trains); returns model A."""
    model_a = copy.deepcopy(pretrained)
    apply_preset(model_a, "all")
    fit(model_a, data_a, eval_a, epochs=epochs, lr=head_and_body_lrs(lr, head_lr), batch_size=batch_size,
        seed=seed, progress=progress)
    return model_a


def sequential_run(model_a: nn.Module, strategy: Strategy, data_b, eval_a, eval_b, num_labels_b: int, *,
                   epochs: int, batch_size: int, seed: int = 0, probe=None, test_b=None,
                   progress: bool = True, before: dict | None = None, a_each_epoch: bool = True) -> SequentialResult:
    """Train task B on a copy of ``model_a`` under ``strategy``; evaluate A (head A) and B after every epoch of B.

    ``eval_b`` is B's validation data (the learning-rate grid chooses on it); ``test_b``, where given, B's test data
    for the final accuracy. ``probe`` is ``(input_ids, attention_mask)`` of held-out text for CKA and embedding
    agreement between ``model_a`` and the model after B: what training B moved. The result keeps which test examples
    each model gets right (``correct``), for intervals (:mod:`layerfreeze.study.evidence`). ``before`` holds
    ``a_before`` and ``b_before`` of an earlier run of the same strategy, model A and seed (they do not depend on the
    rates), so that a rate search measures them once. ``a_each_epoch=False`` measures A only after the last epoch of
    B (``a_during_b`` then holds that one value), for a study that needs only the end.
    """
    original_a, model_a = model_a, copy.deepcopy(model_a)
    if strategy.expand(model_a):  # both heads read the expanded body; it is model A's function at init
        original_a = copy.deepcopy(model_a)  # so that CKA compares block with block
    freeze(model_a, allow_nothing_trainable=True)  # head A never trains during B; the shared body is set below
    model_b = with_new_head(model_a, num_labels_b, seed)
    final_b = eval_b if test_b is None else test_b
    correct = ({name: np.asarray(before[name], dtype=float) for name in ("a_before", "b_before")} if before else
               {"a_before": correct_per_example(model_a, eval_a), "b_before": correct_per_example(model_b, final_b)})
    result = SequentialResult(strategy.name, float(correct["a_before"].mean()), float(correct["b_before"].mean()),
                              lr=strategy.lr, description=strategy.describe())
    steps = epochs * batches_per_epoch(len(as_tensors(data_b)[0]), batch_size)
    trained, schedule = strategy.prepare(model_b, steps)

    def measure_a(epoch):  # head A on the shared body, after each epoch of B; the last is A after B
        if not a_each_epoch and epoch < epochs:
            return None
        correct["a_after"] = correct_per_example(model_a, eval_a)
        result.a_during_b.append(float(correct["a_after"].mean()))
        return {"a_accuracy": result.a_during_b[-1]}

    if schedule is not None:  # the memory estimate below is for the schedule's first trainable set
        follow_schedule(trained, schedule, 0)
    estimates = [memory_estimate(trained, data_b, batch_size).total / MiB]
    start = time.perf_counter()
    # a frozen prefix (embeddings and bottom blocks, in eval mode) is computed once: the same result, faster
    history = fit(trained, data_b, eval_b, epochs=epochs, lr=strategy.learning_rates, schedule=schedule,
                  batch_size=batch_size, seed=seed, progress=progress, on_epoch_end=measure_a,
                  cache_prefix=caches_prefix(strategy, trained))
    result.seconds = time.perf_counter() - start
    estimates.append(memory_estimate(trained, data_b, batch_size).total / MiB)
    result.estimated_memory_mib = max(estimates)
    result.step_seconds, result.memory_kind, result.phases = history.step_seconds, history.memory_kind, history.phases
    result.peak_memory_mib = history.summary()["peak_memory_mib"]
    # counted at the end, when a gradual schedule has unfrozen everything it will
    result.trainable_params = sum(p.numel() for p in trained.parameters() if p.requires_grad)
    result.b_during_b = [e["eval_accuracy"] for e in history.epochs]
    correct["b_after"] = correct_per_example(trained, final_b)
    result.correct = {name: hits.tolist() for name, hits in correct.items()}
    result.b_after_b = float(correct["b_after"].mean())
    if probe is not None:
        result.cka, result.agreement = drift(original_a, model_a, *probe)
    return result


def tuned_sequential_run(model_a: nn.Module, strategy: Strategy, grid, data_b, eval_a, eval_b, num_labels_b: int,
                         start=None, **options) -> dict:
    """:func:`sequential_run` at ``(lr, head_lr)`` pairs of ``grid``, and the run whose final accuracy on B's
    validation data (``eval_b``, never a test set) is highest, as its summary, with the pair chosen (``lr``) and each
    tried pair's score (``validation_by_lr``). Every method of a comparison gets its rates this way, from the same
    grid; ``start`` (pairs of ``grid``) makes it a line search that brackets its choice
    (:func:`~layerfreeze.study.evidence.choose_learning_rate`). ``options`` are :func:`sequential_run`'s
    (``epochs``, ``batch_size``, ``seed``, ``probe``, ``test_b``...).
    """
    before = {}  # A and B before training B: the same at every rate, so measured once

    def run(rates):
        tuned = dataclasses.replace(strategy, lr=rates[0], head_lr=rates[1])
        result = sequential_run(model_a, tuned, data_b, eval_a, eval_b, num_labels_b, before=before, **options)
        before.update({name: result.correct[name] for name in ("a_before", "b_before")})
        return result.summary()

    rates, summary, scores = choose_learning_rate(run, grid, score="b_validation_final", start=start)
    return {**summary, "lr": rates, "validation_by_lr": {str(r): score for r, score in scores.items()},
            "rate_edge": grid_edge(rates, grid, accuracy=scores[rates])}


def rate_search(settings: dict, strategy: Strategy, chosen: dict) -> dict:
    """How ``strategy`` gets its rates under the protocol, as :func:`tuned_sequential_run`'s ``grid`` and ``start``:
    the pair it chose on the first seed, once ``chosen`` (name -> pair) holds it; before that, a line search over
    LoRA's grid for LoRA, the shared one for every other method, from the settings' start pairs.

    >>> rate_search(PROTOCOL["cpu"], Strategy("full", "all"), {})["start"]
    [(0.0001, 0.001), (0.0003, 0.003)]
    >>> rate_search(PROTOCOL["cpu"], Strategy("full", "all"), {"full": (1e-4, 1e-3)})
    {'grid': [(0.0001, 0.001)], 'start': None}
    """
    if strategy.name in chosen:
        return {"grid": [chosen[strategy.name]], "start": None}
    kind = "lora" if isinstance(strategy.adapter, Lora) else "lr"
    return {"grid": settings[f"{kind}_grid"], "start": settings[f"{kind}_start"]}


# --- many runs: per-example measures, seeds, intervals --------------------------------------------------------

MEASURES = {"forgetting": ("a_before", "a_after"), "learning": ("b_after", "b_before"),
            "b_accuracy": ("b_after", None)}


def per_example(runs: list[dict], strategy: str, measure: str) -> np.ndarray:
    """``[seeds, examples]``: per test example, A's loss of correctness (``forgetting``: right after A, wrong after
    B is 1), B's gain (``learning``) or B's correctness at the end (``b_accuracy``), from the ``summary()`` rows of
    :func:`sequential_run` for ``strategy``."""
    if measure not in MEASURES:
        raise ValueError(f"measure must be one of {sorted(MEASURES)}; got {measure!r}")
    first, second = MEASURES[measure]
    rows = [run["correct"] for run in runs if run["strategy"] == strategy]
    if not rows:
        raise ValueError(f"no runs of strategy {strategy!r}; have {sorted({run['strategy'] for run in runs})}")
    return np.array([np.subtract(row[first], 0 if second is None else row[second]) for row in rows], dtype=float)


def compare_strategies(runs: list[dict], first: str, second: str, measure: str, seed: int = 0) -> Interval:
    """``measure`` of ``first`` minus ``second``, paired over test examples and seeds, with a bootstrap interval."""
    return difference_interval(per_example(runs, first, measure), per_example(runs, second, measure), seed=seed)


def summarize_runs(runs: list[dict]) -> pd.DataFrame:
    """One row per strategy, in the order first run: means over seeds of forgetting, learning, final accuracies,
    backward transfer and agreement, with 95% bootstrap intervals (over examples and seeds) for forgetting and
    learning, the learning rate each seed chose, and where the first seed's search left it on its grid's edge."""
    rows = []
    for name in dict.fromkeys(run["strategy"] for run in runs):
        mine = pd.DataFrame([run for run in runs if run["strategy"] == name])
        row = {"strategy": name, "lr": sorted(set(map(str, mine["lr"])))}
        for measure in MEASURES:
            interval = difference_interval(per_example(runs, name, measure))
            row.update({measure: interval.estimate, f"{measure}_low": interval.low, f"{measure}_high": interval.high})
        row.update({column: float(mine[column].mean()) for column in
                    ("b_after_b", "a_after_b", "backward_transfer", "agreement", "seconds")})
        row["trainable_params"] = int(mine["trainable_params"].iloc[0])
        row["rate_edge"] = mine["rate_edge"].iloc[0] if "rate_edge" in mine else ""  # the search ran on the first seed
        row["description"] = mine["description"].iloc[0] if "description" in mine else {}
        rows.append(row)
    return pd.DataFrame(rows).set_index("strategy")


def seed_means(runs: list[dict], column: str) -> dict[str, np.ndarray]:
    """Per strategy (in the order of their first run), the mean over seeds of ``column`` in the ``summary()`` rows
    of :func:`sequential_run`: element by element for a list (``a_during_b``, ``b_during_b``, ``cka``).

    >>> runs = [{"strategy": "full", "cka": [1.0, 0.8]}, {"strategy": "full", "cka": [1.0, 0.6]}]
    >>> {name: mean.tolist() for name, mean in seed_means(runs, "cka").items()}
    {'full': [1.0, 0.7]}
    """
    frame = pd.DataFrame(runs)
    return {name: np.mean(np.stack(frame[frame.strategy == name][column].to_list()), axis=0)
            for name in dict.fromkeys(frame.strategy)}


def training_length_curves(runs: list[dict]) -> pd.DataFrame:
    """Learning against forgetting at every training length: per strategy and epoch of B (means over seeds), the
    points of task A lost since training A (``forgetting``: A's accuracy after A minus after that epoch, head A) and
    B's validation accuracy after that epoch (``b_accuracy``). Biderman et al. (2024) compare methods along such
    curves, not at one training length.

    >>> runs = [{"strategy": "full", "a_after_a": 0.9, "a_during_b": [0.8, 0.7], "b_during_b": [0.6, 0.9]}]
    >>> training_length_curves(runs).round(3).to_dict(orient="records")[1]
    {'strategy': 'full', 'epoch': 2, 'forgetting': 20.0, 'b_accuracy': 0.9}
    """
    a_before = {name: float(np.mean(mean)) for name, mean in seed_means(runs, "a_after_a").items()}
    a_during, b_during = seed_means(runs, "a_during_b"), seed_means(runs, "b_during_b")
    return pd.DataFrame([{"strategy": name, "epoch": epoch + 1, "forgetting": 100 * (a_before[name] - a),
                          "b_accuracy": float(b)}
                         for name in a_during for epoch, (a, b) in enumerate(zip(a_during[name], b_during[name]))])


def cka_frame(runs: list[dict]) -> pd.DataFrame:
    """Linear CKA after task B against the model after task A: layers (``layer 0`` is the embeddings' output) by
    strategies, each the mean over seeds; what :func:`~layerfreeze.plots.plot_cka` draws."""
    means = seed_means(runs, "cka")
    layers = len(next(iter(means.values())))
    return pd.DataFrame(means, index=[f"layer {i}" for i in range(layers)])



# --- decoders: forgetting as a rise in perplexity ------------------------------------------------------------------

def clear_pick(values: dict, runs: list[dict] | None = None, measure: str | None = None,
               tolerance: float = 0.10, highest: bool = False) -> tuple[str | None, str]:
    """``(winner, runner-up)`` for the lowest of ``values`` (the highest with ``highest=True``): the winner only where
    it is clearly ahead, else ``None``. Clearly: by the paired interval of ``measure`` over ``runs``
    (:func:`compare_strategies`) when given, else by more than ``tolerance`` of the runner-up's value (0 for exact
    counts: any difference, but not a tie).

    >>> clear_pick({"a": 80.0, "b": 100.0, "c": 120.0}), clear_pick({"a": 95.0, "b": 100.0})
    (('a', 'b'), (None, 'b'))
    >>> clear_pick({"a": 0.9, "b": 1.0, "c": 1.0}, tolerance=0.0, highest=True)
    (None, 'c')
    """
    order = sorted(values, key=values.get, reverse=highest)  # stable: a tie keeps the given order
    if len(order) == 1:
        return order[0], order[0]
    best, runner_up = order[:2]
    if runs is not None and measure is not None:
        clear = direction(compare_strategies(runs, best, runner_up, measure)) == ("higher" if highest else "lower")
    elif highest:
        clear = values[best] > (1 + tolerance) * values[runner_up]
    else:
        clear = values[best] < (1 - tolerance) * values[runner_up]
    return (best if clear else None), runner_up


def reconcile(here: dict, there: dict, measure: str = "forgetting") -> tuple[str, list[str]]:
    """Two notebooks' ``measure`` of the same strategy, side by side: ``("agree", [])`` when their intervals overlap
    (``measure``, ``measure_low``, ``measure_high``), else ``("differ", reasons)``, each reason a measured
    difference between the two runs: a protocol setting (``settings``), model A's accuracy (``a_after_a``), the
    rates chosen (``lr``). An empty list of reasons says the runs match on all of these.

    >>> full_04 = {"forgetting": 0.09, "forgetting_low": 0.03, "forgetting_high": 0.16, "a_after_a": 0.65,
    ...            "lr": ["(0.0001, 0.001)"], "settings": {"epochs_b": 3}}
    >>> reconcile(full_04, {**full_04, "forgetting": 0.05, "forgetting_low": 0.0, "forgetting_high": 0.1})
    ('agree', [])
    >>> reconcile(full_04, {**full_04, "forgetting": -0.01, "forgetting_low": -0.02, "forgetting_high": 0.0,
    ...                     "settings": {"epochs_b": 2}})
    ('differ', ['epochs_b: 3 here, 2 there'])
    """
    if here[f"{measure}_low"] <= there[f"{measure}_high"] and there[f"{measure}_low"] <= here[f"{measure}_high"]:
        return "agree", []
    mine, theirs = here.get("settings", {}), there.get("settings", {})
    reasons = [f"{key}: {mine.get(key)} here, {theirs.get(key)} there" for key in sorted(set(mine) | set(theirs))
               if mine.get(key) != theirs.get(key)]
    if abs(here.get("a_after_a", 0) - there.get("a_after_a", 0)) > 1e-9:
        reasons.append(f"model A scored {here['a_after_a']:.3f} on A here, {there['a_after_a']:.3f} there")
    if here.get("lr") != there.get("lr"):
        reasons.append(f"rates chosen: {here.get('lr')} here, {there.get('lr')} there")
    return "differ", reasons
