"""A lean training loop: :func:`fit` and :func:`evaluate`, with an optional frozen-prefix feature cache.

``fit`` does what a careful hand-written loop does and nothing more per step: AdamW (fused on CUDA) over the
trainable parameters only, warm-up then a linear or cosine schedule, mixed precision on CUDA (bf16 where the card
supports it, else fp16 with a GradScaler), gradient clipping, ``zero_grad(set_to_none=True)``, one evaluation per
epoch, and a :class:`History` of what happened.

The **frozen-prefix cache** (``cache_prefix=True``): when the embeddings and the lowest blocks are frozen and in eval
mode, their output is the same every epoch, so ``fit`` computes it once and trains only the rest. Results match the
uncached run up to float rounding (``tests/test_training.py`` checks 1e-5 on the loss on CPU, fp32).
"""

from __future__ import annotations

import math
import os
import threading
import time
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from typing import Iterator

import pandas as pd
import torch
from torch import nn

from .course import seed_everything
from .freezing import count_parameters, frozen_in_eval
from .layers import LayerGroup, layer_groups

SCHEDULES = ("linear", "cosine", "constant")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")


# --- data --------------------------------------------------------------------------------------------------------

def _tensors(data) -> tuple[torch.Tensor, ...]:
    """``(input_ids, attention_mask, labels)`` from a TensorDataset or a tuple of tensors."""
    tensors = data.tensors if isinstance(data, torch.utils.data.TensorDataset) else tuple(data)
    if len(tensors) != 3 or len({len(t) for t in tensors}) != 1:
        raise ValueError("fit expects (input_ids, attention_mask, labels) of one length, e.g. from "
                         "layerfreeze.encode(split, tokenizer)")
    return tensors


def _batches(n: int, batch_size: int, shuffle: bool, seed: int) -> Iterator[torch.Tensor]:
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed)) if shuffle else torch.arange(n)
    for start in range(0, n, batch_size):
        yield order[start:start + batch_size]


# --- schedules and precision ---------------------------------------------------------------------------------------

def lr_multiplier(step: int, total_steps: int, warmup_steps: int = 0, schedule: str = "linear") -> float:
    """The factor on the base learning rate at ``step``: linear warm-up, then linear or cosine decay to 0.

    >>> [round(lr_multiplier(s, 10, 2), 2) for s in (0, 1, 2, 6, 9)]
    [0.5, 1.0, 1.0, 0.5, 0.12]
    """
    if schedule not in SCHEDULES:
        raise ValueError(f"unknown schedule {schedule!r}; valid: {', '.join(SCHEDULES)}")
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule == "constant":
        return 1.0
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    if schedule == "linear":
        return max(0.0, 1.0 - progress)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def resolve_precision(precision: str, device: torch.device) -> str:
    """``auto`` is bf16 on a CUDA card that supports it, fp16 on older cards (Colab's T4), fp32 on the CPU."""
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; valid: {', '.join(PRECISIONS)}")
    if device.type != "cuda":
        if precision in ("bf16", "fp16"):
            raise ValueError(f"precision={precision!r} is for CUDA; on {device.type} use 'fp32' or 'auto'")
        return "fp32"
    if precision == "auto":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return precision


def _autocast(precision: str, device: torch.device):
    if precision == "fp32":
        return nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16 if precision == "bf16" else torch.float16)


def make_optimizer(model: nn.Module, lr: float, weight_decay: float = 0.01, device: torch.device | None = None):
    """AdamW over the trainable parameters only, with no weight decay on biases and norm weights (1-D tensors);
    fused on CUDA."""
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if not trainable:
        raise ValueError("the model has no trainable parameter: unfreeze something first, e.g. "
                         "layerfreeze.freeze_to(model, -1) to train the head")
    groups = [{"params": [p for _, p in trainable if p.ndim >= 2], "weight_decay": weight_decay},
              {"params": [p for _, p in trainable if p.ndim < 2], "weight_decay": 0.0}]
    groups = [g for g in groups if g["params"]]
    device = device or next(model.parameters()).device
    return torch.optim.AdamW(groups, lr=lr, fused=device.type == "cuda")


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
                "epochs": self.epochs}

    def __repr__(self) -> str:
        last = self.epochs[-1] if self.epochs else {}
        accuracy = last.get("eval_accuracy")
        return (f"History({len(self.epochs)} epochs, {self.steps} steps, {self.step_seconds * 1000:.1f} ms/step, "
                f"{self.examples_per_second:.0f} examples/s"
                + (f", eval accuracy {accuracy:.3f}" if accuracy is not None else "") + ")")


# --- the frozen-prefix cache ---------------------------------------------------------------------------------------

class _StopForward(Exception):
    pass


class _CachedOutput(nn.Module):
    """Stands in for the embeddings: returns the cached output of the frozen prefix for the current batch."""

    def __init__(self):
        super().__init__()
        self.value: torch.Tensor | None = None

    def forward(self, *args, **kwargs):
        return self.value


class _PassThrough(nn.Module):
    """Stands in for a cached block: returns its hidden-state input unchanged, in the block's output structure."""

    def __init__(self, returns_tuple: bool):
        super().__init__()
        self.returns_tuple = returns_tuple

    def forward(self, hidden_states, *args, **kwargs):
        return (hidden_states,) if self.returns_tuple else hidden_states


def cacheable_prefix(model: nn.Module, groups: list[LayerGroup] | None = None) -> int:
    """How many leading groups (embeddings, block.0, ...) are fully frozen and could be cached (0 if none)."""
    groups = groups if groups is not None else layer_groups(model)
    count = 0
    for group in groups[:-1]:  # the head is never cached
        if group.trainable is not False:
            break
        count += 1
    return count


def _check_cache(model: nn.Module, groups: list[LayerGroup], prefix: int) -> None:
    embeddings = groups[0]
    if len(embeddings.modules) != 1:
        raise ValueError(f"the feature cache needs the embeddings to be one module; {type(model).__name__} has "
                         f"{', '.join(embeddings.modules)}. Train without cache_prefix.")
    for group in groups[:prefix]:
        trainable = [n for n, p in group.parameters.items() if p.requires_grad]
        if trainable:
            raise ValueError(f"cannot cache {group.name}: it holds trainable parameters ({', '.join(trainable[:3])}). "
                             "The cache is only correct for a fully frozen prefix.")
    held_in_eval = set(frozen_in_eval(model))
    for group in groups[:prefix]:
        active = [name for module_name, module in group.modules.items()
                  for name, m in module.named_modules(prefix=module_name)
                  if isinstance(m, nn.Dropout) and m.p > 0]
        if active and group.name not in held_in_eval:
            raise ValueError(f"cannot cache {group.name}: its dropout ({active[0]}, ...) is active in training, so its "
                             "output changes every epoch. Freeze with eval_frozen=True (e.g. "
                             "freeze_to(model, -3, eval_frozen=True)) to keep the frozen prefix in eval mode.")


def _requested_prefix(model: nn.Module, groups: list[LayerGroup], cache_prefix: bool | int) -> int:
    """How many groups to cache: all fully frozen leading groups for ``True``, or exactly ``cache_prefix``."""
    if cache_prefix is False:
        return 0
    if cache_prefix is True:
        prefix = cacheable_prefix(model, groups)
        if prefix == 0:
            raise ValueError("cache_prefix=True, but the embeddings are trainable: there is no frozen prefix to "
                             "cache. Freeze the bottom groups first, e.g. freeze_to(model, -3, eval_frozen=True).")
    else:
        prefix = cache_prefix
        if isinstance(prefix, bool) or not isinstance(prefix, int) or not 1 <= prefix < len(groups):
            raise ValueError(f"cache_prefix must be True, False or a group count from 1 to {len(groups) - 1} "
                             f"(the groups are {', '.join(g.name for g in groups)}); got {cache_prefix!r}")
    _check_cache(model, groups, prefix)
    return prefix


def _set_module(model: nn.Module, name: str, module: nn.Module) -> nn.Module:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    old = parent[int(child)] if child.isdigit() else getattr(parent, child)
    if child.isdigit():
        parent[int(child)] = module
    else:
        setattr(parent, child, module)
    return old


def compute_prefix_outputs(model: nn.Module, groups: list[LayerGroup], prefix: int, inputs: tuple[torch.Tensor, ...],
                           batch_size: int, device: torch.device, precision: str,
                           store_device: torch.device | None = None) -> torch.Tensor:
    """The output of the first ``prefix`` groups for every example, computed once in eval mode."""
    last = groups[prefix - 1]
    (module,) = list(last.modules.values())
    captured = {}

    def capture(_, __, output):
        captured["value"] = output[0] if isinstance(output, tuple) else output
        raise _StopForward

    was_training = model.training
    model.eval()
    handle = module.register_forward_hook(capture)
    chunks = []
    try:
        with torch.no_grad(), _autocast(precision, device):
            for index in _batches(len(inputs[0]), batch_size, shuffle=False, seed=0):
                try:
                    model(input_ids=inputs[0][index].to(device), attention_mask=inputs[1][index].to(device))
                except _StopForward:
                    pass
                chunks.append(captured["value"].to(store_device or device))
    finally:
        handle.remove()
        model.train(was_training)
    return torch.cat(chunks)


def _cache_device(device: torch.device, nbytes: int) -> torch.device:
    """Keep the cache on the GPU when it takes under half the free memory; otherwise spill it to CPU memory."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        if nbytes < free / 2:
            return device
    return torch.device("cpu")


@contextmanager
def _prefix_replaced(model: nn.Module, groups: list[LayerGroup], prefix: int, returns_tuple: bool):
    """Swap the cached groups for stand-ins; yields the embeddings stand-in, whose ``value`` to set per batch."""
    stand_in = _CachedOutput()
    swapped = {}
    (embeddings_name,) = groups[0].modules
    swapped[embeddings_name] = _set_module(model, embeddings_name, stand_in)
    for group in groups[1:prefix]:
        for name in group.modules:
            swapped[name] = _set_module(model, name, _PassThrough(returns_tuple))
    try:
        yield stand_in
    finally:
        for name, module in swapped.items():
            _set_module(model, name, module)


def _block_returns_tuple(model: nn.Module, groups: list[LayerGroup], inputs, device) -> bool:
    blocks = [g for g in groups if g.kind == "block"]
    (block,) = blocks[0].modules.values()
    seen = {}

    def record(_, __, output):
        seen["tuple"] = isinstance(output, tuple)
        raise _StopForward

    handle = block.register_forward_hook(record)
    try:
        with torch.no_grad():
            model(input_ids=inputs[0][:1].to(device), attention_mask=inputs[1][:1].to(device))
    except _StopForward:
        pass
    finally:
        handle.remove()
    return seen["tuple"]


# --- fit and evaluate ----------------------------------------------------------------------------------------------

def _forward(model, input_ids, attention_mask, labels, stand_in, cached, index, device):
    if stand_in is not None:
        stand_in.value = cached[index.to(cached.device)].to(device, non_blocking=True)
    return model(input_ids=input_ids, attention_mask=attention_mask, labels=labels)


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
    with torch.no_grad(), _autocast(precision, device):
        for index in _batches(len(labels), batch_size, shuffle=False, seed=0):
            index = index.to(device)
            out = _forward(model, input_ids[index], attention_mask[index], labels[index], _stand_in, _cached, index,
                           device)
            total_loss += out.loss.float() * len(index)
            correct += (out.logits.argmax(-1) == labels[index]).sum()
    model.train(was_training)
    return {"loss": total_loss.item() / len(labels), "accuracy": correct.item() / len(labels)}


def fit(model: nn.Module, train_data, eval_data=None, *, epochs: int = 3, lr: float = 5e-5, batch_size: int = 32,
        weight_decay: float = 0.01, warmup: float | int = 0.1, schedule: str = "linear",
        max_grad_norm: float | None = 1.0, precision: str = "auto", seed: int = 0,
        device: torch.device | str | None = None, cache_prefix: bool | int = False, progress: bool = True,
        eval_batch_size: int = 256) -> History:
    """Fine-tune the model's trainable parameters on ``train_data``; evaluate on ``eval_data`` after each epoch.

    Data is ``(input_ids, attention_mask, labels)``, e.g. ``layerfreeze.encode(split, tokenizer)``. ``warmup`` is a
    fraction of all steps (float < 1) or a number of steps. ``cache_prefix=True`` computes the frozen prefix's output
    once (see the module docstring), ``cache_prefix=k`` caches exactly the first ``k`` groups; either refuses, with
    the reason, where caching would change the result.

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

    device = torch.device(device) if device is not None else next(model.parameters()).device
    model.to(device)
    precision = resolve_precision(precision, device)
    seed_everything(seed)
    input_ids, attention_mask, labels = (t.to(device) for t in _tensors(train_data))
    evaluation = tuple(t.to(device) for t in _tensors(eval_data)) if eval_data is not None else None
    steps_per_epoch = math.ceil(len(labels) / batch_size)
    total_steps = epochs * steps_per_epoch
    warmup_steps = int(warmup * total_steps) if isinstance(warmup, float) and warmup < 1 else int(warmup)

    optimizer = make_optimizer(model, lr, weight_decay, device)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_multiplier(step, total_steps, warmup_steps, schedule))
    scaler = torch.amp.GradScaler("cuda") if precision == "fp16" else None
    trainable = [p for group in optimizer.param_groups for p in group["params"]]
    history = History(precision=precision)
    history.trainable_params, history.total_params = count_parameters(model)

    groups = layer_groups(model)
    prefix = _requested_prefix(model, groups, cache_prefix)
    cached = cached_eval = None
    context = nullcontext(None)
    if prefix:
        start = time.perf_counter()
        returns_tuple = _block_returns_tuple(model, groups, (input_ids, attention_mask), device)
        sample = compute_prefix_outputs(model, groups, prefix, (input_ids[:1], attention_mask[:1]), 1, device,
                                        precision)
        store = _cache_device(device, sample.element_size() * sample[0].numel() * len(labels))
        cached = compute_prefix_outputs(model, groups, prefix, (input_ids, attention_mask), eval_batch_size, device,
                                        precision, store)
        if evaluation is not None:
            cached_eval = compute_prefix_outputs(model, groups, prefix, evaluation[:2], eval_batch_size, device,
                                                 precision, store)
        history.cache_seconds = time.perf_counter() - start
        history.cached_groups = [g.name for g in groups[:prefix]]
        context = _prefix_replaced(model, groups, prefix, returns_tuple)

    with context as stand_in, PeakMemory(device) as peak:
        for epoch in range(1, epochs + 1):
            model.train()
            running_loss = torch.zeros((), device=device)
            bar = tqdm(total=steps_per_epoch, desc=f"epoch {epoch}/{epochs}", disable=not progress, leave=False)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            start = time.perf_counter()
            for step, index in enumerate(_batches(len(labels), batch_size, shuffle=True, seed=seed + epoch)):
                index = index.to(device)
                with _autocast(precision, device):
                    out = _forward(model, input_ids[index], attention_mask[index], labels[index], stand_in, cached,
                                   index, device)
                loss = out.loss
                if scaler is not None:
                    scaler.scale(loss).backward()
                    scaler.unscale_(optimizer)
                else:
                    loss.backward()
                if max_grad_norm:
                    torch.nn.utils.clip_grad_norm_(trainable, max_grad_norm)
                if scaler is not None:
                    scaler.step(optimizer)
                    scaler.update()
                else:
                    optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                scheduler.step()
                running_loss += loss.detach().float()
                bar.update()
                if progress and step % 25 == 0:
                    bar.set_postfix(loss=f"{loss.item():.3f}")
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            epoch_seconds = time.perf_counter() - start
            bar.close()
            history.steps += steps_per_epoch
            history.examples += len(labels)
            history.train_seconds += epoch_seconds
            row = {"epoch": epoch, "train_loss": running_loss.item() / steps_per_epoch, "train_seconds": epoch_seconds,
                   "lr": scheduler.get_last_lr()[0]}
            if evaluation is not None:
                start = time.perf_counter()
                scores = evaluate(model, evaluation, eval_batch_size, device, precision, stand_in, cached_eval)
                history.eval_seconds += time.perf_counter() - start
                row.update(eval_loss=scores["loss"], eval_accuracy=scores["accuracy"])
            history.epochs.append(row)
    history.peak_memory_bytes, history.memory_kind = peak.peak_bytes, peak.kind
    return history
