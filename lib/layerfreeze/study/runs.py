"""Strategies run side by side on one model and one task, and measured: accuracy, which test examples each gets
right, parameters, speed, memory, and the frozen-prefix cache's speed-up (notebook 02, the benchmarks).

What a strategy *is* lives in :mod:`layerfreeze.core.strategy`; this module runs and measures one.
"""

from __future__ import annotations

import copy
import time

import torch
from torch import nn

from ..base.data import as_tensors, batches_per_epoch
from ..core.freezing import count_parameters
from ..core.layers import layer_groups
from ..core.memory import MemoryEstimate, MiB, estimate_memory
from ..core.strategy import Adaptive, Lora, Strategy
from ..core.training import fit
from .evidence import correct_per_example
from .timing import TOLERANCE, StepTimer, interleave


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
        strategy.apply(model)
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


def caches_prefix(strategy: Strategy, model: nn.Module) -> bool:
    """Whether a run of ``strategy`` caches its frozen prefix: every fixed trainable set that leaves the embeddings
    frozen (presets, plans, block expansion), and adaptive freezing, which starts with the embeddings frozen; never a
    schedule that may train the embeddings, nor LoRA. Only where the cache can stand in for the embeddings (one
    module: not GPT-2's ``wte`` + ``wpe``). ``model`` is the one :meth:`Strategy.prepare` returned."""
    groups = layer_groups(model)
    if hasattr(model, "get_base_model") or len(groups[0].modules) != 1:
        return False
    if isinstance(strategy.schedule, Adaptive):
        return True
    return strategy.fixed and not isinstance(strategy.adapter, Lora) and groups[0].trainable is False


def memory_estimate(model: nn.Module, data, batch_size: int, activation_bytes: int | None = None) -> MemoryEstimate:
    """:func:`~layerfreeze.core.memory.estimate_memory` for the current trainable set and ``data``'s width (a LoRA
    model: its base)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return estimate_memory(base, batch_size, as_tensors(data)[0].shape[1], activation_bytes=activation_bytes)


def run_strategy(base: nn.Module, strategy: Strategy, train_data, eval_data, test_data, *, epochs: int = 3,
                 batch_size: int = 32, seed: int = 0, cache_prefix: bool = True, time_uncached_steps: int = 0,
                 progress: bool = True, **fit_options) -> dict:
    """Train a fresh copy of ``base`` with ``strategy`` (any preset, plan, schedule or adapter) and return one row
    of results.

    The row holds the test accuracy and which test examples the model got right (``test_correct``, for intervals),
    parameter counts (at the end of the run), speed (per step and per epoch), measured peak memory and the memory
    estimate. With ``cache_prefix`` the frozen prefix is cached wherever the strategy has one
    (:func:`caches_prefix`); with ``time_uncached_steps`` > 0, short runs with and without the cache, interleaved,
    measure the steady per-step times and the cache's speed-up (:func:`measure_cache_speedup`); the epoch times are
    then those step times times the steps per epoch. Otherwise the epoch time is that of the last epoch, after
    one-off costs.
    """
    steps = epochs * batches_per_epoch(len(as_tensors(train_data)[0]), batch_size)
    model, schedule = strategy.prepare(fresh_copy(base, strategy.from_scratch, seed), steps)
    device = next(model.parameters()).device
    use_cache = cache_prefix and caches_prefix(strategy, model)
    history = fit(model, train_data, eval_data, epochs=epochs, lr=strategy.learning_rates, batch_size=batch_size,
                  schedule=schedule, seed=seed, cache_prefix=use_cache, progress=progress, **fit_options)
    start = time.perf_counter()
    test_correct = correct_per_example(model, test_data)
    test_seconds = time.perf_counter() - start
    estimate = memory_estimate(model, train_data, batch_size, 2 if history.precision in ("bf16", "fp16") else None)
    trainable, total = count_parameters(model)
    row = {**strategy.describe(), "test_accuracy": float(test_correct.mean()), "test_correct": test_correct.tolist(),
           "trainable_params": trainable, "total_params": total, "percent_trainable": 100 * trainable / total,
           "test_seconds": test_seconds, "estimated_memory_mib": estimate.total / MiB,
           "estimated_overhead_mib": estimate.training_overhead / MiB, "estimate": estimate.table()["total"].to_dict(),
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
