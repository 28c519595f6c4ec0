"""A lean training loop: :func:`fit` and :func:`evaluate`.

``fit`` does what a careful hand-written loop does and nothing more per step: AdamW (fused on CUDA and CPU) over the
trainable parameters only, one parameter group per layer group (discriminative rates), warm-up then a decaying
learning rate, mixed precision on CUDA (bf16 where the card supports it, else fp16 with a GradScaler), gradient
clipping, ``zero_grad(set_to_none=True)``, one evaluation per epoch, and a :class:`History` of what happened.

It also follows a :class:`~layerfreeze.schedules.Schedule` (gradual unfreezing, chain-thaw): when groups unfreeze,
their parameters join the live optimizer as new parameter groups with their own rate, and the parameters already
training keep their optimizer state (as Lightning's ``BaseFinetuning`` does). Under ``torchrun`` it trains with
DistributedDataParallel and re-wraps the model whenever the trainable set changes, because DDP registers the
parameters that need gradients when it is built. The frozen-prefix cache lives in :mod:`layerfreeze.cache`.
"""

from __future__ import annotations

import math
import os
import threading
import time
from contextlib import ExitStack, nullcontext
from dataclasses import dataclass, field
import pandas as pd
import torch
from torch import nn

from . import cache as feature_cache
from .checks import check_choice, check_int, check_number, check_rates
from .course import seed_everything
from .data import index_batches
from .freezing import count_parameters, train_only
from .layers import LayerGroup, layer_groups
from .precision import autocast, grad_scaler, resolve_precision
from .schedules import CURVES, Schedule, constant_schedule, resolve_rates

# --- data --------------------------------------------------------------------------------------------------------

def _tensors(data) -> tuple[torch.Tensor, ...]:
    """``(input_ids, attention_mask, labels)`` from a TensorDataset or a tuple of tensors."""
    tensors = data.tensors if isinstance(data, torch.utils.data.TensorDataset) else tuple(data)
    if len(tensors) != 3 or len({len(t) for t in tensors}) != 1:
        raise ValueError("fit expects (input_ids, attention_mask, labels) of one length, e.g. from "
                         "layerfreeze.encode(split, tokenizer)")
    return tensors


def _drop_stale_gradients(model: nn.Module) -> None:
    """A frozen parameter must have no ``.grad``: a stale one would let AdamW's weight decay move it."""
    for param in model.parameters():
        if not param.requires_grad:
            param.grad = None


# --- optimizer -----------------------------------------------------------------------------------------------------

def parameter_groups(model: nn.Module, lr: float | dict[str, float], weight_decay: float = 0.01,
                     groups: list[LayerGroup] | None = None, trainable_only: bool = True) -> list[dict]:
    """Optimizer parameter groups: one per layer group (and per decay / no-decay), each with its learning rate.

    ``lr`` is one rate for everything, or ``{group name: rate}`` with an optional ``"default"`` for the groups it
    does not name (discriminative learning rates). Biases and norm weights (1-D tensors) get no weight decay. A
    tensor shared by two groups joins the first. Each dict carries ``"layer_group"`` so that groups can be found
    again, e.g. to change their rate.

    >>> from layerfreeze import tiny_model, freeze_to
    >>> model = tiny_model("bert", num_layers=2)
    >>> _ = freeze_to(model, -2)
    >>> [(g["layer_group"], g["lr"]) for g in parameter_groups(model, {"head": 1e-3, "default": 1e-4})][::2]
    [('block.1', 0.0001), ('head', 0.001)]
    """
    groups = groups if groups is not None else layer_groups(model)
    rates = resolve_rates([g.name for g in groups], lr)
    seen: set[int] = set()
    result = []
    for group in groups:
        params = [p for p in group.parameters.values()
                  if id(p) not in seen and (p.requires_grad or not trainable_only)]
        seen.update(id(p) for p in params)
        if not params:
            continue
        if group.name not in rates:
            raise ValueError(f"no learning rate for trainable group {group.name!r}: name it, or add a 'default'")
        for decay, members in ((weight_decay, [p for p in params if p.ndim >= 2]),
                               (0.0, [p for p in params if p.ndim < 2])):
            if members:
                result.append({"params": members, "lr": rates[group.name], "weight_decay": decay,
                               "layer_group": group.name})
    return result


def make_optimizer(model: nn.Module, lr: float | dict[str, float], weight_decay: float = 0.01,
                   device: torch.device | None = None):
    """AdamW over the trainable parameters only, one parameter group per layer group (see
    :func:`parameter_groups`), no weight decay on biases and norm weights; fused where the kernel exists."""
    if not any(p.requires_grad for p in model.parameters()):
        raise ValueError("the model has no trainable parameter: unfreeze something first, e.g. "
                         "layerfreeze.freeze_to(model, -1) to train the head")
    device = device or next(model.parameters()).device
    groups = parameter_groups(model, lr, weight_decay)
    for group in groups:
        group["base_lr"] = group["lr"]
    return torch.optim.AdamW(groups, lr=groups[0]["lr"], fused=fused_available(device))


def fused_available(device: torch.device) -> bool:
    """Whether AdamW's fused kernel runs here: CUDA, and the CPU since torch 2.4 (several times faster there too)."""
    major, minor = (int(x) for x in torch.__version__.split(".")[:2])
    return device.type == "cuda" or (device.type == "cpu" and (major, minor) >= (2, 4))


# --- memory --------------------------------------------------------------------------------------------------------

class PeakMemory:
    """Peak memory a block adds to what was there at its start: on CUDA, PyTorch's peak allocated bytes less those
    allocated at the start; on the CPU, the process's resident set size sampled every few milliseconds by a
    thread, less the RSS at the start. Weights loaded before the block are therefore not counted, which makes the
    figure comparable with :attr:`MemoryEstimate.training_overhead <layerfreeze.MemoryEstimate.training_overhead>`."""

    def __init__(self, device: torch.device, interval: float = 0.005):
        self.device, self.interval = device, interval
        self.peak_bytes = 0
        self.kind = "cuda allocated above start" if device.type == "cuda" else "cpu rss above start"
        self._stop = threading.Event()

    @staticmethod
    def rss_bytes() -> int:
        try:
            with open("/proc/self/statm") as f:
                return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        except OSError:  # not Linux: the lifetime peak is the best available
            import resource
            return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

    def _sample(self, start: int) -> None:
        while not self._stop.wait(self.interval):
            self.peak_bytes = max(self.peak_bytes, self.rss_bytes() - start)

    def __enter__(self) -> "PeakMemory":
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self._start = torch.cuda.memory_allocated(self.device)
        else:
            self._thread = threading.Thread(target=self._sample, args=(self.rss_bytes(),), daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.peak_bytes = torch.cuda.max_memory_allocated(self.device) - self._start
        else:
            self._stop.set()
            self._thread.join()


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
                "peak_memory_mib": None if self.peak_memory_bytes is None else self.peak_memory_bytes / 2 ** 20,
                "memory_kind": self.memory_kind, "precision": self.precision, "cached_groups": self.cached_groups,
                "trainable_params": self.trainable_params, "total_params": self.total_params,
                "phases": self.phases, "epochs": self.epochs}

    def __repr__(self) -> str:
        last = self.epochs[-1] if self.epochs else {}
        accuracy = last.get("eval_accuracy")
        return (f"History({len(self.epochs)} epochs, {self.steps} steps, {self.step_seconds * 1000:.1f} ms/step, "
                f"{self.examples_per_second:.0f} examples/s"
                + (f", eval accuracy {accuracy:.3f}" if accuracy is not None else "") + ")")


# --- distributed ---------------------------------------------------------------------------------------------------

def distributed_context() -> tuple[int, int]:
    """``(rank, world_size)``; joins the process group when launched by ``torchrun`` / ``accelerate launch``."""
    import torch.distributed as dist

    if not dist.is_available():
        return 0, 1
    if not dist.is_initialized() and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    if not dist.is_initialized():
        return 0, 1
    return dist.get_rank(), dist.get_world_size()


def _wrap(model: nn.Module, device: torch.device, world_size: int) -> nn.Module:
    """DistributedDataParallel over the parameters that train *now* (rebuilt after every change of that set)."""
    if world_size == 1:
        return model
    from torch.nn.parallel import DistributedDataParallel
    return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)


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


# --- fit and evaluate ----------------------------------------------------------------------------------------------

def _forward(model, input_ids, attention_mask, labels, stand_in, cached, index, device):
    if stand_in is None:
        return model(input_ids=input_ids, attention_mask=attention_mask, labels=labels)
    stand_in.value = cached[index.to(cached.device)].to(device, non_blocking=True)
    try:
        return model(input_ids=input_ids, attention_mask=attention_mask, labels=labels)
    finally:
        stand_in.value = None  # a model that shares the blocks runs them for real in between


def evaluate(model: nn.Module, data, batch_size: int = 256, device: torch.device | None = None,
             precision: str = "auto", _stand_in=None, _cached=None) -> dict:
    """Loss and accuracy of a classification model on ``data`` (``(input_ids, attention_mask, labels)``).

    >>> from layerfreeze import tiny_model
    >>> import torch
    >>> data = (torch.randint(5, 99, (8, 6)), torch.ones(8, 6, dtype=torch.long), torch.zeros(8, dtype=torch.long))
    >>> sorted(evaluate(tiny_model("bert"), data))
    ['accuracy', 'loss']
    """
    device = device or next(model.parameters()).device
    precision = resolve_precision(precision, device)
    input_ids, attention_mask, labels = (t.to(device) for t in _tensors(data))
    was_training = model.training
    model.eval()
    total_loss = torch.zeros((), device=device)
    correct = torch.zeros((), device=device, dtype=torch.long)
    with torch.no_grad(), autocast(precision, device):
        for index in index_batches(len(labels), batch_size):
            index = index.to(device)
            out = _forward(model, input_ids[index], attention_mask[index], labels[index], _stand_in, _cached, index,
                           device)
            total_loss += out.loss.float() * len(index)
            correct += (out.logits.argmax(-1) == labels[index]).sum()
    model.train(was_training)
    return {"loss": total_loss.item() / len(labels), "accuracy": correct.item() / len(labels)}


def follow_schedule(model: nn.Module, schedule: Schedule, step: int, optimizer=None, weight_decay: float = 0.01,
                    groups: list[LayerGroup] | None = None) -> list[str]:
    """Set the trainable set for ``step``. Newly trainable groups join ``optimizer`` as new parameter groups with
    their own rate; parameters it already holds keep their state; frozen ones lose any stale gradient.

    >>> from layerfreeze import tiny_model, gradual_unfreezing, layer_groups, make_optimizer
    >>> model = tiny_model("bert", num_layers=2)
    >>> names = [g.name for g in layer_groups(model)]
    >>> schedule = gradual_unfreezing(names, every=5, total_steps=20, lrs=1e-3)
    >>> follow_schedule(model, schedule, 0)
    ['head']
    >>> optimizer = make_optimizer(model, schedule.lrs)
    >>> follow_schedule(model, schedule, 5, optimizer), [g["layer_group"] for g in optimizer.param_groups]
    (['block.1', 'head'], ['head', 'head', 'block.1', 'block.1'])
    """
    groups = groups if groups is not None else layer_groups(model)
    trainable = schedule.trainable_at(step)
    train_only(model, *trainable, groups=groups)
    _drop_stale_gradients(model)
    if optimizer is not None and schedule.release_frozen_state:
        _release_frozen(optimizer, trainable)
    if optimizer is not None:
        held = {id(p) for g in optimizer.param_groups for p in g["params"]}
        for group in parameter_groups(model, schedule.lrs, weight_decay, groups):
            group["params"] = [p for p in group["params"] if id(p) not in held]
            if group["params"]:
                group["base_lr"] = group["lr"]
                optimizer.add_param_group(group)
    return trainable


def batches_per_epoch(examples: int, batch_size: int, world_size: int = 1) -> int:
    """Optimizer steps in one epoch: each process takes its share of the examples, rounded up, in batches."""
    return math.ceil(math.ceil(examples / world_size) / batch_size)


def _check_fit_arguments(model, train_data, eval_data, epochs, lr, batch_size, weight_decay, warmup, schedule,
                         max_grad_norm, seed, cache_prefix, eval_batch_size) -> None:
    """:func:`fit`'s arguments, checked before anything moves or trains (each error names the argument)."""
    if not isinstance(model, nn.Module):
        raise ValueError(f"model must be a torch.nn.Module (e.g. from load_model), got {type(model).__name__}")
    epochs, batch_size = check_int("epochs", epochs), check_int("batch_size", batch_size)
    check_int("eval_batch_size", eval_batch_size)
    check_int("seed", seed, 0, 2 ** 32 - 1)
    check_number("weight_decay", weight_decay, low_inclusive=True)
    if max_grad_norm is not None:
        check_number("max_grad_norm", max_grad_norm)  # None turns clipping off
    if not isinstance(cache_prefix, bool):
        check_int("cache_prefix", cache_prefix, 0)
    if isinstance(warmup, float):
        check_number("warmup", warmup, 0, 1, low_inclusive=True, high_inclusive=False)
    else:
        check_int("warmup", warmup, 0)
    train_steps = epochs * batches_per_epoch(_check_data("train_data", model, train_data), batch_size,
                                            distributed_context()[1])
    if eval_data is not None:
        _check_data("eval_data", model, eval_data)
    if isinstance(schedule, Schedule):
        if schedule.total_steps < train_steps:
            raise ValueError(f"the schedule has total_steps={schedule.total_steps}, but this run takes {train_steps} "
                             f"steps ({epochs} epochs of batches of {batch_size}): build it with total_steps="
                             f"{train_steps}, or it would train at rate 0 after its end")
    else:
        check_choice("schedule", schedule, CURVES)
        check_rates("lr", lr)


def _check_data(name: str, model: nn.Module, data) -> int:
    """The data fit takes: not empty, token ids in the model's vocabulary, sequences within its positions, labels
    within its classes. Returns the number of examples."""
    try:
        input_ids, attention_mask, labels = _tensors(data)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be (input_ids, attention_mask, labels) of one length, e.g. from "
                         f"layerfreeze.encode(split, tokenizer); got {type(data).__name__}") from None
    if len(labels) == 0:
        raise ValueError(f"{name} is empty: there is nothing to train or evaluate on")
    vocabulary = model.get_input_embeddings().num_embeddings if hasattr(model, "get_input_embeddings") else None
    if vocabulary is not None and (input_ids.min() < 0 or input_ids.max() >= vocabulary):
        raise ValueError(f"{name} has token ids from {int(input_ids.min())} to {int(input_ids.max())}, but the model's "
                         f"vocabulary has ids 0 to {vocabulary - 1}: encode with the model's own tokenizer")
    positions = _max_positions(model)
    if positions is not None and input_ids.shape[-1] > positions:
        raise ValueError(f"{name} has sequences of {input_ids.shape[-1]} tokens, but the model takes at most "
                         f"{positions}: encode with max_length={positions} or less")
    classes = getattr(getattr(model, "config", None), "num_labels", None)
    if labels.ndim == 1 and classes and (labels.min() < 0 or labels.max() >= classes):
        raise ValueError(f"{name} has labels from {int(labels.min())} to {int(labels.max())}, but the model has "
                         f"{classes} classes (labels 0 to {classes - 1}): load it with num_labels=num_labels(task)")
    return len(labels)


def _max_positions(model: nn.Module) -> int | None:
    """The longest sequence a model with learned absolute positions takes (RoBERTa's first positions are reserved
    for padding); ``None`` for rotary or relative positions."""
    for name, module in model.named_modules():
        if isinstance(module, nn.Embedding) and name.rsplit(".", 1)[-1] in ("position_embeddings", "wpe"):
            return module.num_embeddings - (module.padding_idx + 1 if module.padding_idx is not None else 0)
    return None


def _release_frozen(optimizer, trainable: list[str]) -> None:
    """Remove the parameter groups of layer groups that no longer train, and their state (moments), from the
    optimizer: memory then holds state for the active groups only, as LISA needs."""
    for group in [g for g in optimizer.param_groups if g["layer_group"] not in trainable]:
        for param in group["params"]:
            optimizer.state.pop(param, None)
    optimizer.param_groups[:] = [g for g in optimizer.param_groups if g["layer_group"] in trainable]


def _start_cache(model, groups, prefix, inputs, evaluation, batch_size, device, precision, history):
    """Compute the first ``prefix`` groups' outputs once; returns them and the context that swaps in stand-ins."""
    start = time.perf_counter()
    cached, structure = feature_cache.compute_prefix_outputs(model, groups, prefix, inputs, batch_size, device,
                                                                 precision)
    cached_eval = None if evaluation is None else feature_cache.compute_prefix_outputs(
        model, groups, prefix, evaluation[:2], batch_size, device, precision)[0]
    history.cache_seconds += time.perf_counter() - start
    history.cached_groups = [g.name for g in groups[:prefix]]
    return cached, cached_eval, feature_cache.prefix_replaced(model, groups, prefix, structure)


def fit(model: nn.Module, train_data, eval_data=None, *, epochs: int = 3, lr: float | dict[str, float] = 5e-5,
        batch_size: int = 32, weight_decay: float = 0.01, warmup: float | int = 0.1,
        schedule: str | Schedule = "linear", max_grad_norm: float | None = 1.0, precision: str = "auto",
        seed: int = 0, device: torch.device | str | None = None, cache_prefix: bool | int = False,
        progress: bool = True, eval_batch_size: int = 256, on_epoch_end=None, on_step_end=None) -> History:
    """Fine-tune the model's trainable parameters on ``train_data``; evaluate on ``eval_data`` after each epoch.

    Data is ``(input_ids, attention_mask, labels)``, e.g. ``layerfreeze.encode(split, tokenizer)``. ``lr`` is one
    rate, or one per layer group as in :func:`parameter_groups` (``{"head": 1e-3, "default": 1e-4}``).
    ``schedule`` is a learning-rate curve (``"linear"``, ``"cosine"``, ``"constant"``, ``"stlr"``,
    ``"one-cycle"``) for the current trainable set, with ``warmup`` a fraction of all steps (float < 1) or a
    number of steps; or a :class:`~layerfreeze.schedules.Schedule`, which then decides what trains and at what
    rate at every step (``lr`` and ``warmup`` are ignored); a schedule with ``release_frozen_state`` (LISA) drops
    the optimizer state of groups that stop training, and one that decides as it goes
    (:class:`~layerfreeze.plans.AdaptiveFreezing`) is asked after every step through its ``observe``; the cache
    then takes over a prefix it freezes for good. ``cache_prefix=True`` computes the frozen prefix's
    output once (:mod:`layerfreeze.cache`), ``cache_prefix=k`` caches exactly the first ``k`` groups; either
    refuses, with the reason, where caching would change the result. ``on_epoch_end(epoch)`` runs after each
    epoch's evaluation; a dict it returns joins that epoch's row in the history. ``on_step_end(step, loss)`` runs
    after every optimizer step with the loss as a tensor (reading it with ``.item()`` waits for the device).

    >>> from layerfreeze import tiny_model, freeze_to
    >>> import torch
    >>> model = tiny_model("bert")
    >>> data = (torch.randint(5, 99, (16, 6)), torch.ones(16, 6, dtype=torch.long), torch.randint(0, 2, (16,)))
    >>> _ = freeze_to(model, -2, eval_frozen=True)
    >>> history = fit(model, data, data, epochs=2, batch_size=8, lr=1e-3, cache_prefix=True, progress=False)
    >>> history.steps, history.cached_groups
    (4, ['embeddings', 'block.0', 'block.1', 'block.2'])
    """
    from tqdm.auto import tqdm

    _check_fit_arguments(model, train_data, eval_data, epochs, lr, batch_size, weight_decay, warmup, schedule,
                         max_grad_norm, seed, cache_prefix, eval_batch_size)
    device = torch.device(device) if device is not None else next(model.parameters()).device
    rank, world_size = distributed_context()
    model.to(device)
    precision = resolve_precision(precision, device)
    seed_everything(seed)
    input_ids, attention_mask, labels = (t.to(device) for t in _tensors(train_data))
    evaluation = tuple(t.to(device) for t in _tensors(eval_data)) if eval_data is not None else None
    steps_per_epoch = batches_per_epoch(len(labels), batch_size, world_size)
    total_steps = epochs * steps_per_epoch

    groups = layer_groups(model)
    if isinstance(schedule, str):
        warmup_steps = int(warmup * total_steps) if isinstance(warmup, float) and warmup < 1 else int(warmup)
        trainable_now = [g.name for g in groups if any(p.requires_grad for p in g.parameters.values())]
        plan = constant_schedule([g.name for g in groups], trainable_now, lr, total_steps, schedule, warmup_steps)
        follows_schedule = False
    else:
        plan, follows_schedule = schedule, True
        if plan.groups != [g.name for g in groups]:
            raise ValueError(f"the schedule is for groups {plan.groups}, the model has {[g.name for g in groups]}")
    if follows_schedule and plan.change_steps() and _is_compiled(model):
        raise ValueError("fit does not support torch.compile with a schedule that changes the trainable set: the "
                         "compiled graph keeps the old set (pytorch/pytorch#139476). Pass the uncompiled model.")
    if follows_schedule:
        follow_schedule(model, plan, 0, None, weight_decay, groups)
    else:
        _drop_stale_gradients(model)
    optimizer = make_optimizer(model, lr if not follows_schedule else plan.lrs, weight_decay, device)
    scaler = grad_scaler(precision, device)
    history = History(precision=precision, phases=[(0, plan.trainable_at(0))])
    history.trainable_params, history.total_params = count_parameters(model)

    never_trained = next((i for i, g in enumerate(plan.groups) if any(g in gs for _, gs in plan.phases)),
                         len(groups))
    prefix = feature_cache.requested_prefix(model, groups, cache_prefix,
                                            never_trained if follows_schedule else None) if cache_prefix else 0
    if prefix and world_size > 1:
        raise ValueError("cache_prefix is not supported with several processes yet; train without it under torchrun")
    cached = cached_eval = None
    context = nullcontext(None)
    if prefix:
        cached, cached_eval, context = _start_cache(model, groups, prefix, (input_ids, attention_mask), evaluation,
                                                    eval_batch_size, device, precision, history)

    change_steps = set(plan.change_steps())
    step = 0
    active = set(plan.trainable_at(0))
    clipped = [p for g in optimizer.param_groups for p in g["params"]]  # clip_grad_norm_ skips missing grads
    with ExitStack() as cache_scope, PeakMemory(device) as peak:
        stand_in = cache_scope.enter_context(context)
        trained = _wrap(model, device, world_size)
        for epoch in range(1, epochs + 1):
            model.train()
            running_loss = torch.zeros((), device=device)
            bar = tqdm(total=steps_per_epoch, desc=f"epoch {epoch}/{epochs}", disable=not progress or rank != 0,
                       leave=False)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            start = time.perf_counter()
            for index in index_batches(len(labels), batch_size, True, seed + epoch, rank, world_size):
                if step in change_steps:
                    phase = follow_schedule(model, plan, step, optimizer, weight_decay, groups)
                    history.phases.append((step, phase))
                    active = set(phase)
                    clipped = [p for g in optimizer.param_groups for p in g["params"]]
                    if prefix and getattr(plan, "freezes_for_good", False) \
                            and feature_cache.cacheable_prefix(model, groups) > prefix:
                        cache_scope.close()  # the cache takes over the newly frozen prefix
                        prefix = feature_cache.requested_prefix(model, groups, True)
                        cached, cached_eval, context = _start_cache(model, groups, prefix, (input_ids, attention_mask),
                                                                    evaluation, eval_batch_size, device, precision,
                                                                    history)
                        stand_in = cache_scope.enter_context(context)
                    trained = _wrap(model, device, world_size)
                multiplier = plan.multiplier(step)
                for group in optimizer.param_groups:
                    name = group["layer_group"]
                    group["lr"] = plan.lrs[name] * multiplier if name in active else 0.0
                index = index.to(device)
                with autocast(precision, device):
                    out = _forward(trained, input_ids[index], attention_mask[index], labels[index], stand_in, cached,
                                   index, device)
                loss = out.loss
                if scaler is not None:
                    scaler.scale(loss).backward()
                    scaler.unscale_(optimizer)
                else:
                    loss.backward()
                if max_grad_norm:
                    torch.nn.utils.clip_grad_norm_(clipped, max_grad_norm)
                if scaler is not None:
                    scaler.step(optimizer)
                    scaler.update()
                else:
                    optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                running_loss += loss.detach().float()
                step += 1
                if plan.observe(step, model, groups):
                    change_steps.add(step)
                if on_step_end is not None:
                    on_step_end(step, loss.detach())
                bar.update()
                if progress and rank == 0 and step % 25 == 1:
                    bar.set_postfix(loss=f"{loss.item():.3f}")
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            epoch_seconds = time.perf_counter() - start
            bar.close()
            history.steps += steps_per_epoch
            history.examples += len(labels)
            history.train_seconds += epoch_seconds
            row = {"epoch": epoch, "train_loss": running_loss.item() / steps_per_epoch, "train_seconds": epoch_seconds,
                   "lr": max(g["lr"] for g in optimizer.param_groups),
                   "trainable_groups": len(active)}
            if evaluation is not None:
                start = time.perf_counter()
                scores = evaluate(model, evaluation, eval_batch_size, device, precision, stand_in, cached_eval)
                history.eval_seconds += time.perf_counter() - start
                row.update(eval_loss=scores["loss"], eval_accuracy=scores["accuracy"])
            if on_epoch_end is not None:
                row.update(on_epoch_end(epoch) or {})
            history.epochs.append(row)
    history.peak_memory_bytes, history.memory_kind = peak.peak_bytes, peak.kind
    return history
