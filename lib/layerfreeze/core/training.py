"""A lean training loop: :func:`fit` and :func:`evaluate`.

``fit`` does what a careful hand-written loop does and nothing more per step: AdamW (fused on CUDA and CPU) over the
trainable parameters only, one parameter group per layer group (discriminative rates), warm-up then a decaying
learning rate, mixed precision on CUDA (bf16 where the card supports it, else fp16 with a GradScaler), gradient
clipping, ``zero_grad(set_to_none=True)``, one evaluation per epoch, and a :class:`History` of what happened.

Two things decide a run's learning rates and trainable set, and ``fit`` takes them apart: the learning-rate ``curve``
(``"linear"``, ``"cosine"``, ...) for a fixed trainable set, or an unfreezing ``schedule``
(:class:`~layerfreeze.core.schedules.Schedule`: gradual unfreezing, chain-thaw, LISA), which carries its own curve.
Either way ``fit`` first turns them into one schedule (a fixed set is a schedule with one phase, as fastai's
``fit_one_cycle`` builds its schedule before it hands it to the loop), then runs one loop over small named steps:
change the trainable set when the schedule says so (:mod:`~layerfreeze.core.optim` adds the new groups to the live
optimizer), set the rates, take an optimizer step, record the epoch. Under ``torchrun`` it trains with
DistributedDataParallel and re-wraps the model whenever the trainable set changes, because DDP registers the
parameters that need gradients when it is built. With ``fsdp=True`` it shards the model with FSDP2 instead
(:func:`shard_by_group`, one unit per layer group), which reads the trainable set at every step and needs no
re-wrapping. The frozen-prefix cache lives in :mod:`~layerfreeze.core.cache`, the peak-memory measurement in
:mod:`~layerfreeze.core.memory`.
"""

from __future__ import annotations

import time
from contextlib import ExitStack
from dataclasses import dataclass, field

import pandas as pd
import torch
from torch import nn

from . import cache as feature_cache
from ..base.checks import check_choice, check_int, check_number, check_rates
from ..base.data import (as_tensors, batches_per_epoch, eval_batch_size as default_eval_batch_size, index_batches,
                         length_bucketed_batches, real_lengths)
from .evaluation import check_data, evaluate, forward_rows
from .freezing import count_parameters
from .layers import LayerGroup, layer_groups
from .memory import MiB, PeakMemory
from .optim import drop_stale_gradients, follow_schedule, make_optimizer
from ..base.runtime import (autocast, check_fsdp, distributed_context, grad_scaler, is_sharded,
                             resolve_precision, seed_everything)
from .schedules import CURVES, Schedule, constant_schedule

# --- history -------------------------------------------------------------------------------------------------------

@dataclass
class History:
    """What :func:`fit` did: one row per epoch, plus speed and memory."""

    epochs: list[dict] = field(default_factory=list)
    steps: int = 0
    train_seconds: float = 0.0  # optimizer steps only, no evaluation, no cache building
    cache_seconds: float = 0.0
    eval_seconds: float = 0.0
    examples: int = 0
    peak_memory_bytes: int | None = None
    memory_kind: str = ""
    precision: str = "fp32"
    cached_groups: list[str] = field(default_factory=list)
    trainable_params: int = 0
    total_params: int = 0
    phases: list[tuple[int, list[str]]] = field(default_factory=list)  # (step, groups that train from then on)
    stopped_epoch: int | None = None  # the last epoch trained (early stopping: where it stopped)
    best_epoch: int | None = None  # early stopping: the epoch whose weights the model holds at the end
    stop_reason: str = ""  # why training stopped, in words

    @property
    def step_seconds(self) -> float:
        return self.train_seconds / max(self.steps, 1)

    @property
    def examples_per_second(self) -> float:
        return self.examples / max(self.train_seconds, 1e-9)

    @property
    def epoch_seconds(self) -> list[float]:
        return [e["train_seconds"] for e in self.epochs]

    @property
    def final_accuracy(self) -> float | None:
        return self.epochs[-1].get("eval_accuracy") if self.epochs else None

    @property
    def best_accuracy(self) -> float | None:
        scores = [e["eval_accuracy"] for e in self.epochs if e.get("eval_accuracy") is not None]
        return max(scores) if scores else None

    def frame(self) -> pd.DataFrame:
        return pd.DataFrame(self.epochs).set_index("epoch")

    def summary(self) -> dict:
        """The numbers a notebook reports, as plain Python values."""
        return {"final_accuracy": self.final_accuracy, "best_accuracy": self.best_accuracy, "steps": self.steps,
                "step_seconds": self.step_seconds, "examples_per_second": self.examples_per_second,
                "epoch_seconds": self.epoch_seconds, "cache_seconds": self.cache_seconds,
                "peak_memory_mib": None if self.peak_memory_bytes is None else self.peak_memory_bytes / MiB,
                "memory_kind": self.memory_kind, "precision": self.precision, "cached_groups": self.cached_groups,
                "trainable_params": self.trainable_params, "total_params": self.total_params,
                "phases": self.phases, "epochs": self.epochs, "stopped_epoch": self.stopped_epoch,
                "best_epoch": self.best_epoch, "stop_reason": self.stop_reason}

    def __repr__(self) -> str:
        last = self.epochs[-1] if self.epochs else {}
        accuracy = last.get("eval_accuracy")
        return (f"History({len(self.epochs)} epochs, {self.steps} steps, {self.step_seconds * 1000:.1f} ms/step, "
                f"{self.examples_per_second:.0f} examples/s"
                + (f", eval accuracy {accuracy:.3f}" if accuracy is not None else "") + ")")


# --- distributed and compiled models -------------------------------------------------------------------------------

def _wrap(model: nn.Module, device: torch.device, world_size: int) -> nn.Module:
    """DistributedDataParallel over the parameters that train *now* (rebuilt after every change of that set); a
    model sharded by FSDP2 is its own wrapper."""
    if world_size == 1 or is_sharded(model):
        return model
    from torch.nn.parallel import DistributedDataParallel
    return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)


def shard_by_group(model: nn.Module, groups: list[LayerGroup] | None = None) -> nn.Module:
    """Shard ``model`` in place with FSDP2 (``torch.distributed.fsdp.fully_shard``): one unit per layer group, then
    the model itself as the root unit. Every rank then holds a slice of each tensor; a unit is gathered for its
    forward and backward only. Gradients are reduce-scattered only for tensors that have one, so a wholly frozen
    group costs no reduction; the optimizer, built after sharding over the trainable tensors, holds state for those
    only. Run it under ``torchrun`` (or ``accelerate launch``), after ``distributed_context()``.

    Example (two processes)::

        rank, world_size = distributed_context()
        shard_by_group(model)   # or fit(model, data, fsdp=True), which calls it
    """
    from torch.distributed.fsdp import fully_shard

    groups = groups if groups is not None else layer_groups(model)
    owners: dict[int, str] = {}
    for group in groups:
        for name, param in group.parameters.items():
            if owners.setdefault(id(param), group.name) != group.name:
                raise ValueError(f"{name} is shared by groups {owners[id(param)]!r} and {group.name!r} (tied "
                                 "weights): FSDP2 cannot shard one tensor in two units; train it without fsdp")
        units = [m for m in group.modules.values() if any(True for _ in m.parameters())]
        if units:
            fully_shard(units if len(units) > 1 else units[0])
    fully_shard(model)
    return model


def _is_compiled(model: nn.Module) -> bool:
    return hasattr(model, "_orig_mod")


def enable_gradient_checkpointing(model: nn.Module) -> None:
    """Recompute activations in backward instead of keeping them, in the form that works with frozen embeddings.

    With the old re-entrant checkpoint, a block whose *input* does not require grad (it comes from frozen
    embeddings) gets no gradient at all, so its trainable weights silently stop learning. The non-re-entrant
    implementation (``use_reentrant=False``) has no such limit; the classic workaround was
    ``model.enable_input_require_grads()``.
    """
    if hasattr(model, "activation_checkpointing_enable"):  # transformers 5 renamed it
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})


# --- fit: the arguments --------------------------------------------------------------------------------------------

@dataclass
class _Options:
    """:func:`fit`'s keyword arguments, checked once and carried by the steps below."""

    epochs: int
    lr: float | dict[str, float]
    batch_size: int
    weight_decay: float
    warmup: float | int
    curve: str
    schedule: Schedule | None
    max_grad_norm: float | None
    precision: str
    seed: int
    device: torch.device | str | None
    cache_prefix: bool | int
    progress: bool
    eval_batch_size: int | None
    fsdp: bool = False
    bucket_by_length: bool = False
    early_stopping: int | None = None


def _curve_and_schedule(options: _Options) -> None:
    """``curve`` names the learning-rate curve; ``schedule`` is a Schedule (what trains at each step), never a name."""
    if isinstance(options.schedule, str):
        raise ValueError(f"schedule={options.schedule!r}: schedule takes a Schedule (e.g. lf.gradual_unfreezing(...)); "
                         f"a learning-rate curve goes to curve=, one of {', '.join(CURVES)}")
    if options.schedule is not None and not isinstance(options.schedule, Schedule):
        raise ValueError(f"schedule must be an unfreezing Schedule (e.g. layerfreeze.gradual_unfreezing(...)) or "
                         f"None; got {type(options.schedule).__name__}")


def _check_fit_arguments(model, train_data, eval_data, options: _Options) -> None:
    """:func:`fit`'s arguments, checked before anything moves or trains (each error names the argument)."""
    if not isinstance(model, nn.Module):
        raise ValueError(f"model must be a torch.nn.Module (e.g. from load_model), got {type(model).__name__}")
    _curve_and_schedule(options)
    epochs, batch_size = check_int("epochs", options.epochs), check_int("batch_size", options.batch_size)
    if options.eval_batch_size is not None:  # None: eval_batch_size(device)
        check_int("eval_batch_size", options.eval_batch_size)
    check_int("seed", options.seed, 0, 2 ** 32 - 1)
    check_number("weight_decay", options.weight_decay, low_inclusive=True)
    if options.max_grad_norm is not None:
        check_number("max_grad_norm", options.max_grad_norm)  # None turns clipping off
    if not isinstance(options.cache_prefix, bool):
        check_int("cache_prefix", options.cache_prefix, 0)
    if not isinstance(options.bucket_by_length, bool):
        raise ValueError(f"bucket_by_length={options.bucket_by_length!r}; valid: True or False")
    _check_early_stopping(options, eval_data)
    if options.bucket_by_length and distributed_context()[1] > 1:
        raise ValueError("bucket_by_length=True is not supported under torchrun (several processes): pass False")
    if isinstance(options.warmup, float):
        check_number("warmup", options.warmup, 0, 1, low_inclusive=True, high_inclusive=False)
    else:
        check_int("warmup", options.warmup, 0)
    world_size = distributed_context()[1]
    check_fsdp(options.fsdp, world_size)
    train_steps = epochs * batches_per_epoch(check_data("train_data", model, train_data), batch_size, world_size)
    if eval_data is not None:
        check_data("eval_data", model, eval_data)
    schedule = options.schedule
    if schedule is not None and schedule.total_steps < train_steps:
        raise ValueError(f"the schedule has total_steps={schedule.total_steps}, but this run takes {train_steps} "
                         f"steps ({epochs} epochs of batches of {batch_size}): build it with total_steps="
                         f"{train_steps}, or it would train at rate 0 after its end")
    if schedule is None:
        check_choice("curve", options.curve, CURVES)
        check_rates("lr", options.lr)


def _check_early_stopping(options: _Options, eval_data) -> None:
    """``early_stopping`` is a patience in epochs (at least 1) or None, and needs validation data to watch."""
    if options.early_stopping is None:
        return
    if isinstance(options.early_stopping, bool):
        raise ValueError(f"early_stopping={options.early_stopping!r}; valid: None (off) or a patience in epochs, >= 1")
    check_int("early_stopping", options.early_stopping, 1)
    if eval_data is None:
        raise ValueError("early_stopping needs eval_data: it stops when the validation accuracy stops improving")
    if options.fsdp:
        raise ValueError("early_stopping is not supported with fsdp=True (sharded weights): pass early_stopping=None")


# --- fit: planning -------------------------------------------------------------------------------------------------

def _run_schedule(model: nn.Module, groups: list[LayerGroup], options: _Options, total_steps: int) -> Schedule:
    """The one schedule the loop follows: the unfreezing schedule given, or the current trainable set all along at
    ``lr`` on the learning-rate curve (a schedule with one phase)."""
    names = [g.name for g in groups]
    schedule = options.schedule
    if schedule is not None:
        if schedule.groups != names:
            raise ValueError(f"the schedule is for groups {schedule.groups}, the model has {names}")
        if schedule.change_steps() and _is_compiled(model):
            raise ValueError("fit does not support torch.compile with a schedule that changes the trainable set: the "
                             "compiled graph keeps the old set (pytorch/pytorch#139476). Pass the uncompiled model.")
        return schedule
    warmup = options.warmup
    warmup_steps = int(warmup * total_steps) if isinstance(warmup, float) and warmup < 1 else int(warmup)
    trainable_now = [g.name for g in groups if any(p.requires_grad for p in g.parameters.values())]
    return constant_schedule(names, trainable_now, options.lr, total_steps, options.curve, warmup_steps)


def _start_optimizer(model: nn.Module, schedule: Schedule, groups: list[LayerGroup], options: _Options, device):
    """Set the trainable set for step 0 (a schedule's first phase; a fixed set stays as the caller left it) and
    build the optimizer over it."""
    if options.schedule is not None:
        follow_schedule(model, schedule, 0, None, options.weight_decay, groups)
    else:
        drop_stale_gradients(model)
    return make_optimizer(model, schedule.lrs, options.weight_decay, device)


class _PrefixCache:
    """The frozen prefix's outputs, computed once (:mod:`layerfreeze.core.cache`), and the stand-in that replays them
    while the loop runs (entered as a context)."""

    def __init__(self, model: nn.Module, groups: list[LayerGroup], inputs: tuple, evaluation: tuple | None,
                 options: _Options, device: torch.device, precision: str):
        self.model, self.groups, self.inputs, self.evaluation = model, groups, inputs[:2], evaluation
        self.batch_size = options.eval_batch_size or default_eval_batch_size(device)
        self.device, self.precision = device, precision
        self.prefix, self.train, self.eval, self.stand_in = 0, None, None, None
        self._scope, self._replaced = ExitStack(), None

    def compute(self, prefix: int, history: History) -> None:
        """Compute the first ``prefix`` groups' outputs (for the training and the evaluation data)."""
        start = time.perf_counter()
        self.train, structure = feature_cache.compute_prefix_outputs(
            self.model, self.groups, prefix, self.inputs, self.batch_size, self.device, self.precision)
        self.eval = None if self.evaluation is None else feature_cache.compute_prefix_outputs(
            self.model, self.groups, prefix, self.evaluation[:2], self.batch_size, self.device, self.precision)[0]
        history.cache_seconds += time.perf_counter() - start
        history.cached_groups = [g.name for g in self.groups[:prefix]]
        self.prefix = prefix
        self._replaced = feature_cache.prefix_replaced(self.model, self.groups, prefix, structure)

    def take_over(self, prefix: int, history: History) -> None:
        """Cache a longer prefix, one that a schedule has just frozen for good, while the loop runs."""
        self._scope.close()
        self.compute(prefix, history)
        self.__enter__()

    def __enter__(self) -> "_PrefixCache":
        if self._replaced is not None:
            self.stand_in = self._scope.enter_context(self._replaced)
        return self

    def __exit__(self, *exc) -> None:
        self._scope.close()


def _cache_prefix(model: nn.Module, groups: list[LayerGroup], schedule: Schedule, options: _Options,
                  world_size: int) -> int:
    """How many leading groups to cache: with a schedule, at most those it never unfreezes."""
    if not options.cache_prefix:
        return 0
    never_trained = next((i for i, g in enumerate(schedule.groups) if any(g in gs for _, gs in schedule.phases)),
                         len(groups))
    prefix = feature_cache.requested_prefix(model, groups, options.cache_prefix,
                                            never_trained if options.schedule is not None else None)
    if prefix and world_size > 1:
        raise ValueError("cache_prefix is not supported with several processes yet; train without it under torchrun")
    return prefix


@dataclass
class _Run:
    """What one call of :func:`fit` carries from step to step."""

    model: nn.Module
    options: _Options
    device: torch.device
    precision: str
    rank: int
    world_size: int
    inputs: tuple  # (input_ids, attention_mask, labels), on the device
    lengths: torch.Tensor  # each row's width without its trailing padding, on the CPU
    evaluation: tuple | None
    groups: list[LayerGroup]
    schedule: Schedule
    optimizer: torch.optim.Optimizer
    history: History
    cache: _PrefixCache
    scaler: torch.amp.GradScaler | None = None
    trained: nn.Module | None = None  # the model, or its DistributedDataParallel wrapper
    step: int = 0
    active: set[str] = field(default_factory=set)  # the groups that train now
    clipped: list = field(default_factory=list)  # clip_grad_norm_ skips parameters without a gradient
    change_steps: set[int] = field(default_factory=set)

    @property
    def steps_per_epoch(self) -> int:
        return batches_per_epoch(len(self.inputs[2]), self.options.batch_size, self.world_size)


def _start_run(model: nn.Module, train_data, eval_data, options: _Options) -> _Run:
    """Everything the loop needs, in the order a hand-written loop would set it up."""
    device = torch.device(options.device) if options.device is not None else next(model.parameters()).device
    rank, world_size = distributed_context()
    model.to(device)
    if options.fsdp and not is_sharded(model):
        shard_by_group(model)  # before the groups and the optimizer: sharding replaces the parameters
    precision = resolve_precision(options.precision, device)
    seed_everything(options.seed)
    inputs = tuple(t.to(device) for t in as_tensors(train_data))
    evaluation = tuple(t.to(device) for t in as_tensors(eval_data)) if eval_data is not None else None
    groups = layer_groups(model)
    total_steps = options.epochs * batches_per_epoch(len(inputs[2]), options.batch_size, world_size)
    schedule = _run_schedule(model, groups, options, total_steps)
    optimizer = _start_optimizer(model, schedule, groups, options, device)
    history = History(precision=precision, phases=[(0, schedule.trainable_at(0))])
    history.trainable_params, history.total_params = count_parameters(model)
    cache = _PrefixCache(model, groups, inputs, evaluation, options, device, precision)
    prefix = _cache_prefix(model, groups, schedule, options, world_size)
    if prefix:
        cache.compute(prefix, history)
    return _Run(model, options, device, precision, rank, world_size, inputs, real_lengths(inputs[1]), evaluation,
                groups, schedule, optimizer, history, cache, grad_scaler(precision, device),
                active=set(schedule.trainable_at(0)), clipped=_optimized_parameters(optimizer),
                change_steps=set(schedule.change_steps()))


def _optimized_parameters(optimizer) -> list[nn.Parameter]:
    return [p for g in optimizer.param_groups for p in g["params"]]


# --- fit: the steps of the loop ------------------------------------------------------------------------------------

def _change_trainable_set(run: _Run) -> None:
    """The schedule changes what trains at this step: new groups join the live optimizer, the cache may take over a
    prefix frozen for good, and DDP is rebuilt over the new trainable set."""
    phase = follow_schedule(run.model, run.schedule, run.step, run.optimizer, run.options.weight_decay, run.groups)
    run.history.phases.append((run.step, phase))
    run.active = set(phase)
    run.clipped = _optimized_parameters(run.optimizer)
    if run.cache.prefix and getattr(run.schedule, "freezes_for_good", False) \
            and feature_cache.cacheable_prefix(run.model, run.groups) > run.cache.prefix:
        run.cache.take_over(feature_cache.requested_prefix(run.model, run.groups, True), run.history)
    run.trained = _wrap(run.model, run.device, run.world_size)


def _set_learning_rates(run: _Run) -> None:
    """Each optimizer group's rate at this step: its base rate times the curve, or 0 while its group is frozen."""
    multiplier = run.schedule.multiplier(run.step)
    for group in run.optimizer.param_groups:
        name = group["layer_group"]
        group["lr"] = run.schedule.lrs[name] * multiplier if name in run.active else 0.0


def _optimizer_step(run: _Run, index: torch.Tensor) -> torch.Tensor:
    """Forward, backward (scaled under fp16), clip, step, clear the gradients; returns the detached loss."""
    with autocast(run.precision, run.device):
        out = forward_rows(run.trained, run.inputs, run.lengths, index, run.cache.stand_in, run.cache.train, run.device)
    loss, scaler, optimizer = out.loss, run.scaler, run.optimizer
    if scaler is not None:
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)
    else:
        loss.backward()
    if run.options.max_grad_norm:
        torch.nn.utils.clip_grad_norm_(run.clipped, run.options.max_grad_norm)
    if scaler is not None:
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return loss.detach()


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _epoch_batches(run: _Run, epoch: int):
    """One epoch's batches of example indices: shuffled, or grouped by length with ``bucket_by_length``."""
    options = run.options
    if options.bucket_by_length:
        return length_bucketed_batches(run.lengths, options.batch_size, options.seed + epoch)
    return index_batches(len(run.inputs[2]), options.batch_size, True, options.seed + epoch, run.rank,
                         run.world_size)


def _stop_if_diverged(run: _Run, loss: torch.Tensor) -> None:
    """Stop at the first non-finite loss, on every rank at once (a rank that stopped alone would leave the others
    waiting in their next all-reduce); training on would only spread NaN through the weights."""
    diverged = (~torch.isfinite(loss)).float()
    if run.world_size > 1:
        torch.distributed.all_reduce(diverged, op=torch.distributed.ReduceOp.MAX)
    if diverged.item():
        rate = max(g["lr"] for g in run.optimizer.param_groups)
        raise FloatingPointError(f"training diverged: the loss is {loss.item()} at step {run.step} (learning rate "
                                 f"{rate:.3g}); try a learning rate 10 to 100 times smaller, a longer warmup, or "
                                 "precision='fp32'")


def _train_epoch(run: _Run, epoch: int, on_step_end) -> tuple[torch.Tensor, float]:
    """One pass over the training data; returns the summed loss and the seconds it took."""
    from tqdm.auto import tqdm

    options = run.options
    run.model.train()
    running_loss = torch.zeros((), device=run.device)
    bar = tqdm(total=run.steps_per_epoch, desc=f"epoch {epoch}/{options.epochs}",
               disable=not options.progress or run.rank != 0, leave=False)
    _synchronize(run.device)
    start = time.perf_counter()
    for index in _epoch_batches(run, epoch):
        if run.step in run.change_steps:
            _change_trainable_set(run)
        _set_learning_rates(run)
        loss = _optimizer_step(run, index)
        running_loss += loss.float()
        run.step += 1
        _stop_if_diverged(run, loss)
        if run.schedule.observe(run.step, run.model, run.groups):  # a schedule that decides as it goes
            run.change_steps.add(run.step)
        if on_step_end is not None:
            on_step_end(run.step, loss)
        bar.update()
        if options.progress and run.rank == 0 and run.step % 25 == 1:
            bar.set_postfix(loss=f"{loss.item():.3f}")
    _synchronize(run.device)
    seconds = time.perf_counter() - start
    bar.close()
    return running_loss, seconds


def _record_epoch(run: _Run, epoch: int, running_loss: torch.Tensor, seconds: float, on_epoch_end) -> None:
    """The epoch's row in the history: training loss and time, the rate, then the evaluation and the caller's extras."""
    history, steps = run.history, run.steps_per_epoch
    history.steps += steps
    history.examples += len(run.inputs[2])
    history.train_seconds += seconds
    row = {"epoch": epoch, "train_loss": running_loss.item() / steps, "train_seconds": seconds,
           "lr": max(g["lr"] for g in run.optimizer.param_groups), "trainable_groups": len(run.active)}
    if run.evaluation is not None:
        start = time.perf_counter()
        scores = evaluate(run.model, run.evaluation, run.options.eval_batch_size, run.device, run.precision,
                          run.cache.stand_in, run.cache.eval)
        history.eval_seconds += time.perf_counter() - start
        row.update(eval_loss=scores["loss"], eval_accuracy=scores["accuracy"])
        if "perplexity" in scores:  # a causal LM: accuracy is next-token accuracy
            row["eval_perplexity"] = scores["perplexity"]
    if on_epoch_end is not None:
        row.update(on_epoch_end(epoch) or {})
    history.epochs.append(row)


class _EarlyStopping:
    """Watches the validation accuracy after each epoch, keeps a copy of the best epoch's weights, and says when
    ``patience`` epochs in a row have not beaten it; at the end the model gets the best epoch's weights back."""

    def __init__(self, model: nn.Module, patience: int | None, epochs: int):
        self.model, self.patience, self.epochs = model, patience, epochs
        self.best, self.best_epoch, self.best_state, self.waited = None, None, None, 0

    def should_stop(self, history: History) -> bool:
        if self.patience is None:
            return False
        row = history.epochs[-1]
        if self.best is None or row["eval_accuracy"] > self.best:
            self.best, self.best_epoch, self.waited = row["eval_accuracy"], row["epoch"], 0
            self.best_state = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
            return False
        self.waited += 1
        return self.waited >= self.patience

    def finish(self, history: History) -> None:
        """Record where and why training stopped; with early stopping, restore the best epoch's weights."""
        history.stopped_epoch = len(history.epochs)
        if self.patience is None:
            history.stop_reason = f"trained all {self.epochs} epochs (no early stopping)"
            return
        history.best_epoch = self.best_epoch
        if history.stopped_epoch < self.epochs:
            history.stop_reason = (f"early stopping: validation accuracy did not beat epoch {self.best_epoch}'s "
                                   f"{self.best:.4f} for {self.patience} epoch(s); stopped after epoch "
                                   f"{history.stopped_epoch} of at most {self.epochs}")
        else:
            history.stop_reason = (f"reached the maximum of {self.epochs} epochs; best validation accuracy "
                                   f"{self.best:.4f} at epoch {self.best_epoch}")
        if self.best_epoch != history.stopped_epoch:
            self.model.load_state_dict(self.best_state)
            history.stop_reason += f"; weights restored from epoch {self.best_epoch}"


# --- fit -----------------------------------------------------------------------------------------------------------

def fit(model: nn.Module, train_data, eval_data=None, *, epochs: int = 3, lr: float | dict[str, float] = 5e-5,
        batch_size: int = 32, weight_decay: float = 0.01, warmup: float | int = 0.1, curve: str = "linear",
        schedule: Schedule | None = None, max_grad_norm: float | None = 1.0, precision: str = "auto",
        seed: int = 0, device: torch.device | str | None = None, cache_prefix: bool | int = False,
        progress: bool = True, eval_batch_size: int | None = None, on_epoch_end=None, on_step_end=None,
        fsdp: bool = False, bucket_by_length: bool = False, early_stopping: int | None = None) -> History:
    """Fine-tune the model's trainable parameters on ``train_data``; evaluate on ``eval_data`` after each epoch.

    Data is ``(input_ids, attention_mask, labels)``, e.g. ``layerfreeze.encode(split, tokenizer)``. ``lr`` is one
    rate, or one per layer group as in :func:`~layerfreeze.optim.parameter_groups` (``{"head": 1e-3, "default":
    1e-4}``, see :func:`~layerfreeze.schedules.head_and_body_lrs`). Without a ``schedule`` the current trainable set
    trains all along, its rate following ``curve`` (``"linear"``, ``"cosine"``, ``"constant"``, ``"stlr"``,
    ``"one-cycle"``) after ``warmup``, a fraction of all steps (float < 1) or a number of steps. A ``schedule``
    (:class:`~layerfreeze.schedules.Schedule`) decides what trains and at what rate at every step, with its own
    curve (``lr``, ``warmup`` and ``curve`` are then not used); one with ``release_frozen_state`` (LISA) drops the
    optimizer state of groups that stop training, and one that decides as it goes
    (:class:`~layerfreeze.plans.AdaptiveFreezing`) is asked after every step through its ``observe``; the cache then
    takes over a prefix it freezes for good. (A curve name given as ``schedule``, as before the two were apart, is
    still read as the curve.) ``cache_prefix=True`` computes the frozen prefix's output once
    (:mod:`layerfreeze.core.cache`), ``cache_prefix=k`` caches exactly the first ``k`` groups; either refuses, with the
    reason, where caching would change the result. ``on_epoch_end(epoch)`` runs after each epoch's evaluation; a
    dict it returns joins that epoch's row in the history. ``on_step_end(step, loss)`` runs after every optimizer
    step with the loss as a tensor (reading it with ``.item()`` waits for the device). Under ``torchrun``, the model
    trains with DistributedDataParallel, or with ``fsdp=True`` sharded by FSDP2 (:func:`shard_by_group`).
    ``bucket_by_length=True`` batches examples of similar length together
    (:func:`~layerfreeze.base.data.length_bucketed_batches`): each batch is cut after its widest row, so less padding
    is computed (an epoch of 480 task A examples at 32 tokens took 0.66x and 0.71x the CPU time of shuffled batches),
    at the cost of batches that are less random. ``early_stopping=patience`` (off by default) trains to a plateau:
    ``epochs`` is then the stated maximum, training stops once the validation accuracy has not improved for
    ``patience`` epochs, and the model ends with the best epoch's weights; the History records ``stopped_epoch``,
    ``best_epoch`` and ``stop_reason``. (The learning-rate curve still spans all ``epochs``.)

    >>> from layerfreeze import tiny_model, freeze_to
    >>> import torch
    >>> model = tiny_model("bert")
    >>> data = (torch.randint(5, 99, (16, 6)), torch.ones(16, 6, dtype=torch.long), torch.randint(0, 2, (16,)))
    >>> _ = freeze_to(model, -2, eval_frozen=True)
    >>> history = fit(model, data, data, epochs=2, batch_size=8, lr=1e-3, cache_prefix=True, progress=False)
    >>> history.steps, history.cached_groups
    (4, ['embeddings', 'block.0', 'block.1', 'block.2'])
    """
    options = _Options(epochs, lr, batch_size, weight_decay, warmup, curve, schedule, max_grad_norm, precision, seed,
                       device, cache_prefix, progress, eval_batch_size, fsdp,
                       bucket_by_length, early_stopping)
    _check_fit_arguments(model, train_data, eval_data, options)
    run = _start_run(model, train_data, eval_data, options)
    stopper = _EarlyStopping(model, early_stopping, epochs)
    with run.cache, PeakMemory(run.device) as peak:
        run.trained = _wrap(model, run.device, run.world_size)
        for epoch in range(1, options.epochs + 1):
            running_loss, seconds = _train_epoch(run, epoch, on_step_end)
            _record_epoch(run, epoch, running_loss, seconds, on_epoch_end)
            if stopper.should_stop(run.history):
                break
        stopper.finish(run.history)
    run.history.peak_memory_bytes, run.history.memory_kind = peak.peak_bytes, peak.kind
    return run.history
