"""Freezing strategies: which layers train, named, and run side by side on one model and one task.

A :class:`Strategy` is plain data: a preset (``head``, ``top``, ``bottom``, ``all``, ``bitfit``), a block count
``k`` where the preset takes one, a learning rate, and whether to start from random weights.

>>> from layerfreeze import tiny_model
>>> model = tiny_model("bert", num_layers=4)
>>> apply_strategy(model, Strategy("top-2", "top", k=2)).group_states["block.1"]
'frozen'
"""

from __future__ import annotations

import copy
import time
from dataclasses import asdict, dataclass

import torch
from torch import nn

from .evidence import correct_per_example
from .freezing import FreezeReport, bitfit, freeze_to, train_only
from .layers import layer_groups
from .memory import estimate_memory
from .training import _tensors, fit

PRESETS = ("head", "top", "bottom", "all", "bitfit")


@dataclass
class Strategy:
    """What trains (``preset``, ``k``), how fast (``lr`` for the body, ``head_lr`` for the new head, which needs a
    larger step), and from what (pretrained, or random weights if ``from_scratch``)."""

    name: str
    preset: str
    k: int | None = None
    lr: float = 1e-4
    head_lr: float | None = 1e-3
    from_scratch: bool = False

    @property
    def learning_rates(self) -> float | dict[str, float]:
        """What :func:`~layerfreeze.fit` takes as ``lr``."""
        return self.lr if self.head_lr is None else {"head": self.head_lr, "default": self.lr}


def apply_preset(model: nn.Module, preset: str, k: int | None = None, eval_frozen: bool = True) -> FreezeReport:
    """Set the trainable set by preset: ``head`` only, ``top`` k blocks + head, ``bottom`` k blocks + head,
    ``all``, or ``bitfit`` (biases + head). Frozen groups stay in eval mode unless ``eval_frozen=False``."""
    groups = layer_groups(model)
    blocks = len(groups) - 2
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; valid presets: {', '.join(PRESETS)}")
    if preset in ("top", "bottom"):
        if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= blocks:
            raise ValueError(f"preset {preset!r} needs k, the number of blocks, from 1 to {blocks}; got {k!r}")
    elif k is not None:
        raise ValueError(f"preset {preset!r} takes no k (only 'top' and 'bottom' do)")
    if preset == "head":
        return freeze_to(model, -1, groups, eval_frozen=eval_frozen)
    if preset == "top":
        return freeze_to(model, -(k + 1), groups, eval_frozen=eval_frozen)
    if preset == "bottom":
        return train_only(model, slice(1, 1 + k), "head", groups=groups, eval_frozen=eval_frozen)
    if preset == "all":
        return freeze_to(model, 0, groups, eval_frozen=eval_frozen)
    return bitfit(model, groups=groups)


def apply_strategy(model: nn.Module, strategy: Strategy) -> FreezeReport:
    """Apply a strategy's trainable set to ``model``."""
    return apply_preset(model, strategy.preset, strategy.k)


def fresh_copy(base: nn.Module, from_scratch: bool = False, seed: int = 0) -> nn.Module:
    """A deep copy of ``base``, or the same architecture with random weights when ``from_scratch``."""
    if not from_scratch:
        return copy.deepcopy(base)
    torch.manual_seed(seed)
    return type(base)(base.config).to(next(base.parameters()).device)


def _uncached_step_seconds(base, strategy, train_data, steps, batch_size, seed, fit_options) -> float:
    """Steady-state seconds per step without the cache: (time of ``steps`` + 1 steps - time of 1 step) / steps,
    so that the first step's one-off costs drop out."""
    tensors = _tensors(train_data)
    seconds = []
    for count in (1, steps + 1):
        model = fresh_copy(base, strategy.from_scratch, seed)
        apply_strategy(model, strategy)
        subset = tuple(t[: count * batch_size] for t in tensors)
        seconds.append(fit(model, subset, epochs=1, lr=strategy.learning_rates, batch_size=batch_size, seed=seed,
                           cache_prefix=False, progress=False, **fit_options).train_seconds)
        del model
    return (seconds[1] - seconds[0]) / steps


def run_strategy(base: nn.Module, strategy: Strategy, train_data, eval_data, test_data, *, epochs: int = 3,
                 batch_size: int = 32, seed: int = 0, cache_prefix: bool = True, time_uncached_steps: int = 0,
                 progress: bool = True, **fit_options) -> dict:
    """Train a fresh copy of ``base`` with ``strategy`` and return one row of results.

    The row holds the test accuracy and which test examples the model got right (``test_correct``, for intervals),
    parameter counts, speed (per step and per epoch), measured peak memory and
    the memory estimate. With ``cache_prefix`` the frozen prefix is cached wherever the strategy has one; with
    ``time_uncached_steps`` > 0, short uncached runs also measure the steady speed without the cache. Epoch times
    are those of the last epoch, after one-off costs.
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
    seq_len = _tensors(train_data)[0].shape[1]
    activation_bytes = 2 if history.precision in ("bf16", "fp16") else None
    estimate = estimate_memory(model, batch_size, seq_len, activation_bytes=activation_bytes)
    row = {**asdict(strategy), "test_accuracy": float(test_correct.mean()), "test_correct": test_correct.tolist(),
           "trainable_params": report.trainable_params, "total_params": report.total_params,
           "percent_trainable": report.percent_trainable, "test_seconds": test_seconds,
           "estimated_memory_mib": estimate.total / 2 ** 20,
           "estimated_overhead_mib": estimate.training_overhead / 2 ** 20,
           "estimate": estimate.table()["total"].to_dict(),
           **history.summary()}
    steps_per_epoch = history.steps // max(len(history.epochs), 1)
    row["wall_seconds"] = history.train_seconds + history.cache_seconds
    # per epoch after the first, when one-off costs (kernels, allocator warm-up) are behind us
    steady_epoch = history.epochs[-1]["train_seconds"] if epochs > 1 else history.train_seconds
    row["epoch_seconds_cached" if use_cache else "epoch_seconds_uncached"] = steady_epoch
    if use_cache and time_uncached_steps:
        row["step_seconds_uncached"] = _uncached_step_seconds(base, strategy, train_data, time_uncached_steps,
                                                              batch_size, seed, fit_options)
        row["epoch_seconds_uncached"] = row["step_seconds_uncached"] * steps_per_epoch
        row["cache_speedup"] = row["epoch_seconds_uncached"] / row["epoch_seconds_cached"]
    del model
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return row
