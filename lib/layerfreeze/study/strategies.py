"""Strategies: what trains, named, and run side by side on one model and one task.

A :class:`Strategy` is plain data, the one vocabulary of the course (notebooks 02, 04, 05 and 06, the layer picker,
the command line). What trains comes from exactly one of:

* a **preset** (``head``, ``top``, ``bottom``, ``all``, ``bitfit``) with its block count ``k``;
* a **plan** (:class:`~layerfreeze.plans.Plan`): an explicit selection, e.g. one the signals proposed;
* an unfreezing **schedule** built for the run's length: ``gradual`` (ULMFiT), ``lisa`` or ``adaptive``;
* an **adapter**: ``lora`` (low-rank adapters of ``rank``) or ``expansion`` (LLaMA Pro's new blocks).

``lr`` is the body's rate and ``head_lr`` the new head's; ``options`` holds a schedule's or an adapter's own settings
(LISA: gamma, every, seed; adaptive: interval, window, threshold; expansion: every).

>>> from layerfreeze import tiny_model
>>> model = tiny_model("bert", num_layers=4)
>>> apply_strategy(model, Strategy("top-2", "top", k=2)).group_states["block.1"]
'frozen'
>>> Strategy("LoRA", adapter="lora", rank=8).learning_rates
{'head': 0.001, 'default': 0.0001}
"""

from __future__ import annotations

import copy
import time
from dataclasses import asdict, dataclass, field

import torch
from torch import nn

from ..core.adapters import add_lora
from ..base.data import as_tensors
from .evidence import correct_per_example
from ..core.freezing import FreezeReport, bitfit, freeze_to, train_only
from ..core.layers import layer_groups, num_blocks
from ..core.memory import MiB, estimate_memory
from ..core.plans import Plan, adaptive_freezing, apply_plan, lisa
from ..core.schedules import Schedule, gradual_unfreezing, head_and_body_lrs
from .timing import TOLERANCE, StepTimer, interleave
from ..core.training import fit

PRESETS = ("head", "top", "bottom", "all", "bitfit")
SCHEDULES = ("gradual", "lisa", "adaptive")
ADAPTERS = ("lora", "expansion")


@dataclass
class Strategy:
    """What trains (``preset`` and ``k``, or ``plan``, ``schedule`` or ``adapter``), how fast (``lr`` for the body,
    ``head_lr`` for the new head, which needs a larger step), and from what (pretrained, or random weights if
    ``from_scratch``)."""

    name: str
    preset: str = "all"
    k: int | None = None
    lr: float = 1e-4
    head_lr: float | None = 1e-3
    from_scratch: bool = False
    plan: Plan | None = None
    schedule: str | None = None
    adapter: str | None = None
    rank: int = 8  # LoRA's rank (alpha = 2 x rank)
    options: dict = field(default_factory=dict)

    def __post_init__(self):
        for argument, value, valid in (("preset", self.preset, PRESETS), ("schedule", self.schedule, SCHEDULES),
                                       ("adapter", self.adapter, ADAPTERS)):
            if value is not None and value not in valid:
                raise ValueError(f"unknown {argument} {value!r}; valid: {', '.join(valid)}")
        chosen = [what for what in ("plan", "schedule", "adapter") if getattr(self, what) is not None]
        if len(chosen) > 1:
            raise ValueError(f"strategy {self.name!r} sets {' and '.join(chosen)}: give one of plan, schedule or "
                             "adapter (or none, for a preset)")

    @property
    def learning_rates(self) -> float | dict[str, float]:
        """What :func:`~layerfreeze.fit` takes as ``lr``."""
        return head_and_body_lrs(self.lr, self.head_lr)

    @property
    def uses_preset(self) -> bool:
        """Whether the preset decides what trains (no plan, schedule or adapter does)."""
        return self.plan is None and self.schedule is None and self.adapter is None


def apply_preset(model: nn.Module, preset: str, k: int | None = None, eval_frozen: bool = True,
                 untie: bool = False) -> FreezeReport:
    """Set the trainable set by preset: ``head`` only, ``top`` k blocks + head, ``bottom`` k blocks + head,
    ``all``, or ``bitfit`` (biases + head). Frozen groups stay in eval mode unless ``eval_frozen=False``.
    ``untie=True`` gives a head tied to the input embedding a copy of its own (see :func:`~layerfreeze.freeze`)."""
    groups = layer_groups(model)
    blocks = num_blocks(model)
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; valid presets: {', '.join(PRESETS)}")
    if preset in ("top", "bottom"):
        if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= blocks:
            raise ValueError(f"preset {preset!r} needs k, the number of blocks, from 1 to {blocks}; got {k!r}")
    elif k is not None:
        raise ValueError(f"preset {preset!r} takes no k (only 'top' and 'bottom' do)")
    if preset == "head":
        return freeze_to(model, -1, groups, eval_frozen=eval_frozen, untie=untie)
    if preset == "top":
        return freeze_to(model, -(k + 1), groups, eval_frozen=eval_frozen, untie=untie)
    if preset == "bottom":
        return train_only(model, slice(1, 1 + k), "head", groups=groups, eval_frozen=eval_frozen, untie=untie)
    if preset == "all":
        return freeze_to(model, 0, groups, eval_frozen=eval_frozen, untie=untie)
    return bitfit(model, groups=groups, untie=untie)


def apply_strategy(model: nn.Module, strategy: Strategy, eval_frozen: bool = True) -> FreezeReport:
    """Apply a strategy's fixed trainable set (its preset, or its plan) to ``model``; frozen groups stay in eval
    mode unless ``eval_frozen=False``."""
    if strategy.plan is not None:
        return apply_plan(model, strategy.plan, eval_frozen=eval_frozen)
    if not strategy.uses_preset:
        raise ValueError(f"strategy {strategy.name!r} trains with a schedule or an adapter, which "
                         "prepare_strategy(model, strategy, total_steps) sets up")
    return apply_preset(model, strategy.preset, strategy.k, eval_frozen=eval_frozen)


def prepare_strategy(model: nn.Module, strategy: Strategy, total_steps: int) -> tuple[nn.Module, Schedule | None]:
    """Set ``model`` up for ``strategy``; returns the model to train (a LoRA model wraps ``model``) and the unfreezing
    schedule :func:`~layerfreeze.fit` follows (None for a fixed trainable set). A schedule decides what trains from
    step 0; ``expansion`` trains only the new blocks of a body :func:`~layerfreeze.plans.expand_blocks` expanded.

    >>> from layerfreeze import tiny_model
    >>> _, schedule = prepare_strategy(tiny_model("bert", num_layers=2), Strategy("gradual", schedule="gradual"), 12)
    >>> schedule.trainable_at(0), schedule.change_steps()
    (['head'], [1, 2, 3])
    """
    names = [g.name for g in layer_groups(model)]
    rates = strategy.learning_rates
    if strategy.schedule == "gradual":  # everything trains by half-way
        return model, gradual_unfreezing(names, max(1, total_steps // (2 * len(names))), total_steps, rates)
    if strategy.schedule == "lisa":
        return model, lisa(names, total_steps=total_steps, lrs=rates, **strategy.options)
    if strategy.schedule == "adaptive":  # the embeddings stay frozen, so the feature cache can start there
        train_only(model, *names[1:], eval_frozen=True)
        return model, adaptive_freezing(names, total_steps, rates, trainable=names[1:], **strategy.options)
    if strategy.adapter == "lora":
        return add_lora(model, strategy.rank), None
    if strategy.adapter == "expansion":
        new = [g.name for g in layer_groups(model) if any(".expansion_gate." in n for n in g.parameters)]
        train_only(model, *new, "head", eval_frozen=True)
        return model, None
    apply_strategy(model, strategy)
    return model, None


def fresh_copy(base: nn.Module, from_scratch: bool = False, seed: int = 0) -> nn.Module:
    """A deep copy of ``base``, or the same architecture with random weights when ``from_scratch``."""
    if not from_scratch:
        return copy.deepcopy(base)
    torch.manual_seed(seed)
    return type(base)(base.config).to(next(base.parameters()).device)


def _timed_fit(base, strategy, tensors, steps, batch_size, seed, cache, fit_options):
    """A run from scratch of ``steps`` training steps that returns its per-step times."""
    def run():
        model = fresh_copy(base, strategy.from_scratch, seed)
        apply_strategy(model, strategy)
        timer = StepTimer(next(model.parameters()).device)
        subset = tuple(t[: steps * batch_size] for t in tensors)
        fit(model, subset, epochs=1, lr=strategy.learning_rates, batch_size=batch_size, seed=seed, cache_prefix=cache,
            progress=False, on_step_end=lambda step, loss: timer.mark(), **fit_options)
        return timer.seconds()
    return run


def measure_cache_speedup(base, strategy, train_data, steps, batch_size, seed=0, max_seconds=30.0,
                          **fit_options) -> dict:
    """Per-step time with and without the frozen-prefix cache, from short runs interleaved (uncached, cached,
    uncached ...), and the speed-up as the median of the per-pair ratios with a confidence interval for it; noisy
    when that interval stays wider than 10% of the median (see :func:`~layerfreeze.timing.interleave`). Each run trains
    ``steps`` measured steps after a first one that is not (its one-off costs)."""
    tensors = as_tensors(train_data)
    steps = min(steps + 1, len(tensors[0]) // batch_size)
    runs = {cache: _timed_fit(base, strategy, tensors, steps, batch_size, seed, cache, fit_options)
            for cache in (False, True)}
    result = interleave(runs, [(False, True)], warmup=0, max_seconds=max_seconds)
    speedup = result.ratios[False, True]
    return {"step_seconds_uncached": result.step(False).median, "step_seconds_cached": result.step(True).median,
            "cache_speedup": speedup.median, "cache_speedup_low": speedup.low, "cache_speedup_high": speedup.high,
            "cache_speedup_noisy": result.noisy[False, True], "timing_rounds": result.rounds}


def cache_speedup_is_clear(row) -> bool:
    """Whether a measured cache speed-up can show anything: its range stayed narrow, and the ideal gain is larger
    than what the timer resolves. ``row`` as for :func:`describe_cache_speedup`."""
    return not row["cache_speedup_noisy"] and row["ideal_cache_speedup"] >= 1 + TOLERANCE


def describe_cache_speedup(name: str, row) -> str:
    """One strategy's measured cache speed-up in words: the median with its confidence interval and its share of
    the ideal, and why it shows nothing when it cannot (a *noisy* range, or an ideal gain below what the timer
    resolves). ``row`` holds :func:`measure_cache_speedup`'s fields and ``ideal_cache_speedup``.

    >>> row = dict(cache_speedup=1.5, cache_speedup_low=1.4, cache_speedup_high=1.6, ideal_cache_speedup=1.6,
    ...            cache_speedup_noisy=False)
    >>> describe_cache_speedup("top 2", row)
    'top 2 **1.5x** [1.4-1.6], 94% of the ideal 1.6x'
    """
    ratio, ideal = row["cache_speedup"], row["ideal_cache_speedup"]
    text = (f"{name} **{ratio:.1f}x** [{row['cache_speedup_low']:.1f}-{row['cache_speedup_high']:.1f}], "
            f"{ratio / ideal:.0%} of the ideal {ideal:.1f}x")
    if row["cache_speedup_noisy"]:
        return text + (f" (*noisy*: its range stayed wider than {TOLERANCE:.0%} of the median, so it shows nothing "
                       "either way)")
    if ideal < 1 + TOLERANCE:
        return text + (f" (*within noise*: the cache can save at most {ideal - 1:.0%} here, less than the "
                       f"{TOLERANCE:.0%} this timer resolves)")
    if ratio < 1:
        return text + (" (*slower with the cache*, which the ideal does not predict: rerun on a quieter machine to "
                       "tell a fault from noise)")
    return text


def add_cache_timing(row: dict, base: nn.Module, strategy: Strategy, train_data, steps: int, batch_size: int,
                     seed: int = 0, max_seconds: float = 30.0, **fit_options) -> dict:
    """Add the cache's measured speed-up (:func:`measure_cache_speedup`) to a :func:`run_strategy` row that used the
    cache, and its epoch times from those step times; a row without the cache is returned as it is. Call it once for
    the rate a grid chose, rather than for every rate it tried.

    >>> add_cache_timing({"cached": False}, None, Strategy("all", "all"), None, steps=4, batch_size=8)
    {'cached': False}
    """
    if not row["cached"]:
        return row
    row.update(measure_cache_speedup(base, strategy, train_data, steps, batch_size, seed, max_seconds, **fit_options))
    row["epoch_seconds_uncached"] = row["step_seconds_uncached"] * row["steps_per_epoch"]
    row["epoch_seconds_cached"] = row["step_seconds_cached"] * row["steps_per_epoch"]
    return row


def run_strategy(base: nn.Module, strategy: Strategy, train_data, eval_data, test_data, *, epochs: int = 3,
                 batch_size: int = 32, seed: int = 0, cache_prefix: bool = True, time_uncached_steps: int = 0,
                 progress: bool = True, **fit_options) -> dict:
    """Train a fresh copy of ``base`` with ``strategy`` and return one row of results.

    The row holds the test accuracy and which test examples the model got right (``test_correct``, for intervals),
    parameter counts, speed (per step and per epoch), measured peak memory and
    the memory estimate. With ``cache_prefix`` the frozen prefix is cached wherever the strategy has one; with
    ``time_uncached_steps`` > 0, short runs with and without the cache, interleaved, measure the steady per-step
    times and the cache's speed-up (:func:`measure_cache_speedup`); the epoch times are then those step times times
    the steps per epoch. Otherwise the epoch time is that of the last epoch, after one-off costs.
    """
    model = fresh_copy(base, strategy.from_scratch, seed)
    report = apply_strategy(model, strategy)
    device = next(model.parameters()).device
    groups = layer_groups(model)
    use_cache = cache_prefix and groups[0].trainable is False
    history = fit(model, train_data, eval_data, epochs=epochs, lr=strategy.learning_rates, batch_size=batch_size,
                  seed=seed, cache_prefix=use_cache, progress=progress, **fit_options)
    start = time.perf_counter()
    test_correct = correct_per_example(model, test_data)
    test_seconds = time.perf_counter() - start
    seq_len = as_tensors(train_data)[0].shape[1]
    activation_bytes = 2 if history.precision in ("bf16", "fp16") else None
    estimate = estimate_memory(model, batch_size, seq_len, activation_bytes=activation_bytes)
    row = {**asdict(strategy), "test_accuracy": float(test_correct.mean()), "test_correct": test_correct.tolist(),
           "trainable_params": report.trainable_params, "total_params": report.total_params,
           "percent_trainable": report.percent_trainable, "test_seconds": test_seconds,
           "estimated_memory_mib": estimate.total / MiB,
           "estimated_overhead_mib": estimate.training_overhead / MiB,
           "estimate": estimate.table()["total"].to_dict(),
           **history.summary()}
    row["steps_per_epoch"] = history.steps // max(len(history.epochs), 1)
    row["wall_seconds"] = history.train_seconds + history.cache_seconds
    row["cached"] = use_cache
    # per epoch after the first, when one-off costs (kernels, allocator warm-up) are behind us
    steady_epoch = history.epochs[-1]["train_seconds"] if epochs > 1 else history.train_seconds
    row["epoch_seconds_cached" if use_cache else "epoch_seconds_uncached"] = steady_epoch
    if time_uncached_steps:
        add_cache_timing(row, base, strategy, train_data, time_uncached_steps, batch_size, seed, **fit_options)
    del model
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return row
