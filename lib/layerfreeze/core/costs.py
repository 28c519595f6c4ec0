"""What a training step costs, by layer group: one model, used wherever a step's time is predicted.

A step runs forward through every group (less a cached frozen prefix, and without recording a graph below the lowest
trainable group), backward through every group from the lowest trainable one up (weight and input gradients where a
group trains, input gradients only where it is frozen, and weight gradients only for the lowest trainable group,
whose input needs no gradient), and the optimizer over the trainable share of the parameters.

The per-group costs come from a measurement (:func:`layerfreeze.study.timing.profile_groups` times each group on
the machine) or from a rule of thumb (:func:`unit_costs`: every block costs one forward unit, its backward two,
embeddings and head nothing). :func:`step_seconds` adds them up; :func:`relative_step_time` is the rule of thumb's
answer as a fraction of full fine-tuning.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from .freezing import frozen_prefix
from .layers import LayerGroup, layer_groups


@dataclass
class GroupCosts:
    """Seconds per step of each layer group (by name): ``forward`` when a backward pass will follow (the graph is
    recorded); ``forward_frozen`` below the lowest trainable group, where none will; ``backward`` when the group
    trains (input and weight gradients); ``backward_input`` when it is frozen but gradients pass through it to a
    lower trainable group; and ``optimizer`` seconds (clipping, AdamW, zeroing) for all ``total_params``
    parameters."""

    forward: dict[str, float]
    backward: dict[str, float]
    backward_input: dict[str, float]
    optimizer: float
    total_params: int
    forward_frozen: dict[str, float] | None = None  # None: taken as ``forward``

    def table(self):
        import pandas as pd

        return pd.DataFrame({"forward": self.forward, "forward_frozen": self.forward_frozen or self.forward,
                             "backward": self.backward, "backward_input": self.backward_input}) * 1000  # ms


def unit_costs(groups: list[LayerGroup]) -> GroupCosts:
    """The rule of thumb: each block one forward unit, two for its backward, one for its input gradient alone;
    embeddings, head and optimizer free. Blocks are taken as equal, which they are in one model."""
    unit = {g.name: 1.0 if g.kind == "block" else 0.0 for g in groups}
    return GroupCosts(unit, {n: 2 * c for n, c in unit.items()}, dict(unit), 0.0, 1)


def step_seconds(model: nn.Module, costs: GroupCosts, cache_prefix: bool = False,
                 groups: list[LayerGroup] | None = None) -> float:
    """The time a step with ``model``'s current trainable set must take, from per-group ``costs`` (the module's
    docstring gives the rule). Training the top 2 of 6 equal blocks, a block's backward twice its forward and half
    of that for the input gradient (which the lowest trainable block skips), costs 6 + 3 forward-units uncached and
    2 + 3 cached, 1.8x apart:

    >>> from layerfreeze import tiny_model, freeze_to
    >>> model = tiny_model("bert", num_layers=6)
    >>> _ = freeze_to(model, -3)
    >>> costs = unit_costs(layer_groups(model))
    >>> step_seconds(model, costs), step_seconds(model, costs, cache_prefix=True)
    (9.0, 5.0)
    """
    groups = groups if groups is not None else layer_groups(model)
    lowest = frozen_prefix(groups)
    if lowest == len(groups):
        raise ValueError("the model has no trainable parameter: no training step to time")
    below = costs.forward_frozen or costs.forward
    skipped = lowest if cache_prefix else 0
    seconds = sum((below if i < lowest else costs.forward)[g.name] for i, g in enumerate(groups) if i >= skipped)
    for i, group in enumerate(groups[lowest:], start=lowest):
        if i == lowest and i > 0:  # its input needs no gradient: the weight gradients only
            seconds += max(costs.backward[group.name] - costs.backward_input[group.name], 0.0)
        else:
            trains = any(p.requires_grad for p in group.parameters.values())
            seconds += (costs.backward if trains else costs.backward_input)[group.name]
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return seconds + costs.optimizer * trainable / max(costs.total_params, 1)


def ideal_cache_speedup(model: nn.Module, costs: GroupCosts) -> float:
    """How much faster the frozen-prefix cache can make a step of ``model``'s current trainable set, by
    :func:`step_seconds` (1.0 where nothing is frozen at the bottom)."""
    return step_seconds(model, costs) / step_seconds(model, costs, cache_prefix=True)


def relative_step_time(model: nn.Module, cache_prefix: bool = False, groups: list[LayerGroup] | None = None) -> float:
    """Expected time of one training step with the current trainable set, relative to full fine-tuning (1.0), by
    :func:`step_seconds` with :func:`unit_costs`. Full fine-tuning of ``n`` blocks costs ``3n`` units.
    ``benchmarks/`` measures the real ratios.

    >>> from layerfreeze import tiny_model, freeze_to
    >>> model = tiny_model("bert", num_layers=6)
    >>> _ = freeze_to(model, -1)
    >>> round(relative_step_time(model), 2), round(relative_step_time(model, cache_prefix=True), 2)
    (0.33, 0.0)
    """
    groups = groups if groups is not None else layer_groups(model)
    if frozen_prefix(groups) == len(groups):
        return 0.0
    blocks = sum(g.kind == "block" for g in groups)
    return step_seconds(model, unit_costs(groups), cache_prefix, groups) / (3 * blocks)
