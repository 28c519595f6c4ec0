"""The frozen-prefix feature cache.

When the embeddings and the lowest blocks are frozen and held in eval mode, their output is the same every epoch.
:func:`~layerfreeze.fit` (``cache_prefix=True``) then computes that output once, swaps the cached groups for
stand-ins that hand the stored tensors on, and trains only the rest; the model is restored afterwards. The cache
refuses, with the reason, where it would change the result: dropout active in the prefix, a trainable parameter
inside it, or embeddings made of several modules (GPT-2's ``wte`` + ``wpe``).
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
from torch import nn

from .freezing import frozen_in_eval
from .data import index_batches
from .layers import LayerGroup, layer_groups, replace_module
from .precision import autocast


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


def requested_prefix(model: nn.Module, groups: list[LayerGroup], cache_prefix: bool | int,
                     never_trained: int | None = None) -> int:
    """How many groups to cache: all fully frozen leading groups for ``True`` (at most ``never_trained``, the
    leading groups a schedule never unfreezes), or exactly ``cache_prefix``."""
    if cache_prefix is False:
        return 0
    if cache_prefix is True:
        prefix = cacheable_prefix(model, groups)
        if never_trained is not None:
            prefix = min(prefix, never_trained)
        if prefix == 0 and never_trained == 0:
            raise ValueError("cache_prefix=True, but the schedule trains the embeddings at some step: no prefix stays "
                             "frozen for the whole run, so there is nothing to cache.")
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


def compute_prefix_outputs(model: nn.Module, groups: list[LayerGroup], prefix: int, inputs: tuple[torch.Tensor, ...],
                           batch_size: int, device: torch.device, precision: str) -> tuple[torch.Tensor, bool]:
    """The output of the first ``prefix`` groups for every example, computed once in eval mode.

    Kept on the device when it fits (:func:`cache_device`, decided from the first batch), else in CPU memory.
    Also returns whether the last cached group returns a tuple, the structure its stand-ins must copy.
    """
    (module,) = list(groups[prefix - 1].modules.values())
    captured = {}

    def capture(_, __, output):
        captured["value"], captured["tuple"] = (output[0] if isinstance(output, tuple) else output,
                                                isinstance(output, tuple))
        raise _StopForward

    was_training = model.training
    model.eval()
    handle = module.register_forward_hook(capture)
    chunks, store = [], None
    try:
        with torch.no_grad(), autocast(precision, device):
            for index in index_batches(len(inputs[0]), batch_size):
                try:
                    model(input_ids=inputs[0][index].to(device), attention_mask=inputs[1][index].to(device))
                except _StopForward:
                    pass
                value = captured["value"]
                if store is None:
                    store = cache_device(device, value.element_size() * value[0].numel() * len(inputs[0]))
                chunks.append(value.to(store))
    finally:
        handle.remove()
        model.train(was_training)
    return torch.cat(chunks), captured["tuple"]


def cache_device(device: torch.device, nbytes: int) -> torch.device:
    """Keep the cache on the GPU when it takes under half the free memory; otherwise spill it to CPU memory."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        if nbytes < free / 2:
            return device
    return torch.device("cpu")


@contextmanager
def prefix_replaced(model: nn.Module, groups: list[LayerGroup], prefix: int, returns_tuple: bool):
    """Swap the cached groups for stand-ins; yields the embeddings stand-in, whose ``value`` to set per batch."""
    stand_in = _CachedOutput()
    swapped = {}
    (embeddings_name,) = groups[0].modules
    swapped[embeddings_name] = replace_module(model, embeddings_name, stand_in)
    for group in groups[1:prefix]:
        for name in group.modules:
            swapped[name] = replace_module(model, name, _PassThrough(returns_tuple))
    try:
        yield stand_in
    finally:
        for name, module in swapped.items():
            replace_module(model, name, module)
