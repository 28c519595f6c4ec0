"""The frozen-prefix feature cache.

When the embeddings and the lowest blocks are frozen and held in eval mode, their output is the same every epoch.
:func:`~layerfreeze.fit` (``cache_prefix=True``) then computes, once, the input of the first group that trains (its
*entry*: the first of its modules to run), and while training lets the cached blocks hand their input straight on
and feeds the stored tensor to the entry; the model is restored afterwards. The cache refuses, with the reason,
where it would change the result: dropout active in the prefix, a trainable parameter inside it, an entry that
runs several times per forward pass (a shared block), or blocks that pass more than hidden states on (T5's
position bias). Before training it checks itself: the model with the stand-ins must give bit-identical outputs to
the model without them on two examples, or it refuses, naming what went wrong.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
from torch import nn

from .freezing import frozen_in_eval, frozen_prefix
from ..base.data import index_batches
from .layers import LayerGroup, layer_groups
from ..base.runtime import autocast, eval_mode


class _StopForward(Exception):
    pass


class _CachedInput:
    """Holds the cached entry input of the current batch; ``fit`` sets ``value`` for the duration of each of its
    forward passes. While it is ``None`` the blocks run as usual: another model that shares them (task A's, in the
    forgetting protocol) is evaluated through the real blocks, never through the stand-ins."""

    def __init__(self):
        self.value: torch.Tensor | None = None


def _hidden_input(args: tuple, kwargs: dict) -> torch.Tensor:
    return args[0] if args else kwargs["hidden_states"]


def _with_hidden_input(args: tuple, kwargs: dict, value: torch.Tensor) -> tuple[tuple, dict]:
    if args:
        return (value, *args[1:]), kwargs
    return args, {**kwargs, "hidden_states": value}


def _entry(groups: list[LayerGroup], prefix: int) -> tuple[str, nn.Module]:
    """The first module of the first group that is not cached to run in the forward pass."""
    return next(iter(groups[prefix].modules.items()))


def _cached_blocks(groups: list[LayerGroup], prefix: int) -> dict[str, nn.Module]:
    """The block module of every cached block group (its last module; the others run before it)."""
    return dict(list(g.modules.items())[-1] for g in groups[1:prefix])


def cacheable_prefix(model: nn.Module, groups: list[LayerGroup] | None = None) -> int:
    """How many leading groups (embeddings, block.0, ...) are fully frozen and could be cached (0 if none)."""
    groups = groups if groups is not None else layer_groups(model)
    return min(frozen_prefix(groups), len(groups) - 1)  # the head is never cached


def _check_cache(model: nn.Module, groups: list[LayerGroup], prefix: int) -> None:
    if groups[prefix].runs > 1:
        raise ValueError(f"cannot cache the groups below {groups[prefix].name}: it runs {groups[prefix].runs} times "
                         "per forward pass (its layers share weights), so no single input can stand in for it. Train "
                         "without cache_prefix, or freeze it too and cache up to the next group.")
    for group in groups[:prefix]:
        trainable = [n for n, p in group.parameters.items() if p.requires_grad]
        if trainable:
            raise ValueError(f"cannot cache {group.name}: it holds trainable parameters ({', '.join(trainable[:3])}). "
                             "The cache is only correct for a fully frozen prefix.")
    stacks = {g.name.split(".")[0] for g in groups[1:prefix + 1] if g.kind == "block"}
    if "encoder" in stacks and "decoder" in stacks:
        raise ValueError(f"cannot cache past the encoder of {type(model).__name__}: the decoder's blocks read the "
                         "encoder's output, which the cache does not store. Cache within the encoder (e.g. "
                         "cache_prefix=2), or train without cache_prefix.")
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
                           batch_size: int, device: torch.device, precision: str) -> tuple[torch.Tensor, dict]:
    """The entry input of the first group after the first ``prefix`` groups, for every example, computed once in
    eval mode; then a check that the stand-ins reproduce the model's outputs (see the module docstring).

    Kept on the device when it fits (:func:`cache_device`, decided from the first batch), else in CPU memory.
    Also returns the output structure of the cached blocks, which their stand-ins copy.
    """
    chunks, store, structure = [], None, {}
    for index in index_batches(len(inputs[0]), batch_size):
        value, structure = _capture(model, groups, prefix, inputs[0][index].to(device),
                                    inputs[1][index].to(device), precision, device)
        if store is None:
            store = cache_device(device, value.element_size() * value[0].numel() * len(inputs[0]))
        chunks.append(value.to(store))
    _verify(model, groups, prefix, structure, inputs[0][:2].to(device), inputs[1][:2].to(device), precision, device)
    return torch.cat(chunks), structure


def _capture(model: nn.Module, groups: list[LayerGroup], prefix: int, input_ids, attention_mask, precision: str,
             device: torch.device) -> tuple[torch.Tensor, dict]:
    """One batch: the entry's hidden input, and each cached block's output structure (``None``: a bare tensor;
    ``n``: a tuple of ``n`` items, which a stand-in fills with the hidden states and ``n - 1`` Nones)."""
    captured, structure = {}, {}

    def record(name):
        def hook(_, __, output):
            structure[name] = len(output) if isinstance(output, tuple) else None
        return hook

    def stop(_, args, kwargs):
        captured["value"] = _hidden_input(args, kwargs)
        raise _StopForward

    _, entry = _entry(groups, prefix)
    handles = [entry.register_forward_pre_hook(stop, with_kwargs=True)]
    handles += [m.register_forward_hook(record(n)) for n, m in _cached_blocks(groups, prefix).items()]
    with eval_mode(model):
        try:
            with torch.no_grad(), autocast(precision, device):
                model(input_ids=input_ids, attention_mask=attention_mask)
        except _StopForward:
            pass
        finally:
            for handle in handles:
                handle.remove()
    if "value" not in captured:
        raise ValueError(f"cannot cache up to {groups[prefix].name}: its first module never ran in the forward pass")
    return captured["value"], structure


def _verify(model: nn.Module, groups: list[LayerGroup], prefix: int, structure: dict, input_ids, attention_mask,
            precision: str, device: torch.device) -> None:
    """Refuse, with the reason, unless the stand-ins give bit-identical outputs on a few examples."""
    what = f"cannot cache {', '.join(g.name for g in groups[:prefix])} of {type(model).__name__}"
    value, _ = _capture(model, groups, prefix, input_ids, attention_mask, precision, device)
    with eval_mode(model):  # the checks switch modes; the model leaves in the mode it came in
        try:
            for training in (False, True):  # eval: the structure; training: no randomness left in the cached groups
                expected, got = _outputs_with_and_without(model, groups, prefix, structure, value, input_ids,
                                                          attention_mask, precision, device, training)
                if got.shape != expected.shape or not torch.equal(got, expected):
                    raise ValueError(f"{what}: " + (
                        "in training mode their output changes from run to run (dropout outside nn.Dropout modules, "
                        "as in BART's encoder), so a cache would change training." if training else
                        "with the cached blocks standing in, the model's outputs differ from its real outputs: its "
                        "blocks hand on more than hidden states (T5's position bias), so something besides the entry's "
                        "input carries information past the cached groups.")
                        + " Train without cache_prefix, or cache fewer groups.")
        except ValueError:
            raise
        except Exception as error:
            raise ValueError(f"{what}: the model fails with the cached blocks standing in ({type(error).__name__}: "
                             f"{error}). Train without cache_prefix.") from error


def _outputs_with_and_without(model, groups, prefix, structure, value, input_ids, attention_mask, precision, device,
                              training: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """The model's first output on a few examples, as it is and with the stand-ins, from one random state."""
    model.train(training)
    outputs = []
    with torch.no_grad(), autocast(precision, device), \
            torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        for stand_ins in (False, True):
            torch.manual_seed(0)
            if stand_ins:
                with prefix_replaced(model, groups, prefix, structure) as stand_in:
                    stand_in.value = value
                    outputs.append(_first_output(model(input_ids=input_ids, attention_mask=attention_mask)))
            else:
                outputs.append(_first_output(model(input_ids=input_ids, attention_mask=attention_mask)))
    return outputs[0], outputs[1]


def _first_output(output) -> torch.Tensor:
    return output.logits if hasattr(output, "logits") else output[0]


def cache_device(device: torch.device, nbytes: int) -> torch.device:
    """Keep the cache on the GPU when it takes under half the free memory; otherwise spill it to CPU memory."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        if nbytes < free / 2:
            return device
    return torch.device("cpu")


def _pass_through(returns: int | None, stand_in: _CachedInput, original):
    def forward(*args, **kwargs):
        if stand_in.value is None:
            return original(*args, **kwargs)
        hidden = _hidden_input(args, kwargs)
        return hidden if returns is None else (hidden,) + (None,) * (returns - 1)
    return forward


def _feed(stand_in: _CachedInput):
    def hook(_, args, kwargs):
        return None if stand_in.value is None else _with_hidden_input(args, kwargs, stand_in.value)
    return hook


@contextmanager
def prefix_replaced(model: nn.Module, groups: list[LayerGroup], prefix: int, structure: dict):
    """Let the cached blocks hand their input on unchanged and feed the entry the cached tensor; yields the holder
    whose ``value`` to set per batch. The blocks stay in place (only their ``forward`` is swapped), so attributes
    the model reads from them keep working."""
    stand_in = _CachedInput()
    blocks = _cached_blocks(groups, prefix)
    for name, block in blocks.items():
        block.forward = _pass_through(structure.get(name), stand_in, block.forward)
    _, entry = _entry(groups, prefix)
    handle = entry.register_forward_pre_hook(_feed(stand_in), with_kwargs=True)
    try:
        yield stand_in
    finally:
        handle.remove()
        for block in blocks.values():
            block.__dict__.pop("forward", None)
