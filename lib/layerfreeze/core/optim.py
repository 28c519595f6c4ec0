"""The optimizer side of freezing: AdamW over the trainable parameters, one parameter group per layer group, and
the changes an unfreezing :class:`~layerfreeze.schedules.Schedule` makes to a live optimizer.

When groups unfreeze (:func:`follow_schedule`), their parameters join the optimizer as new parameter groups with their
own rate, and the parameters already training keep their optimizer state, as Lightning's ``BaseFinetuning`` does; a
schedule with ``release_frozen_state`` (LISA) drops the state of groups that stop training.
"""

from __future__ import annotations

import torch
from torch import nn

from .freezing import train_only
from .layers import LayerGroup, layer_groups
from .schedules import Schedule, resolve_rates


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


def drop_stale_gradients(model: nn.Module) -> None:
    """A frozen parameter must have no ``.grad``: a stale one would let AdamW's weight decay move it."""
    for param in model.parameters():
        if not param.requires_grad:
            param.grad = None


def follow_schedule(model: nn.Module, schedule: Schedule, step: int, optimizer=None, weight_decay: float = 0.01,
                    groups: list[LayerGroup] | None = None) -> list[str]:
    """Set the trainable set for ``step``. Newly trainable groups join ``optimizer`` as new parameter groups with
    their own rate; parameters it already holds keep their state; frozen ones lose any stale gradient.

    >>> from layerfreeze import tiny_model, gradual_unfreezing, layer_groups

    >>> from layerfreeze.core.optim import make_optimizer
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
    drop_stale_gradients(model)
    if optimizer is not None and schedule.release_frozen_state:
        release_frozen(optimizer, trainable)
    if optimizer is not None:
        held = {id(p) for g in optimizer.param_groups for p in g["params"]}
        for group in parameter_groups(model, schedule.lrs, weight_decay, groups):
            group["params"] = [p for p in group["params"] if id(p) not in held]
            if group["params"]:
                group["base_lr"] = group["lr"]
                optimizer.add_param_group(group)
    return trainable


def release_frozen(optimizer, trainable: list[str]) -> None:
    """Remove the parameter groups of layer groups that no longer train, and their state (moments), from the
    optimizer: memory then holds state for the active groups only, as LISA needs."""
    for group in [g for g in optimizer.param_groups if g["layer_group"] not in trainable]:
        for param in group["params"]:
            optimizer.state.pop(param, None)
    optimizer.param_groups[:] = [g for g in optimizer.param_groups if g["layer_group"] in trainable]
