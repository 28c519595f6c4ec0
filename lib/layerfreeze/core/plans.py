"""Freezing plans as practitioners write them today, and the plans that change while training runs.

* :class:`Plan`: a named selection of what trains, with the reason for it, applied by :func:`apply_plan`.
  :mod:`layerfreeze.core.signals` proposes plans from measurements; :func:`factory_plan` writes one the way
  LLaMA-Factory's ``freeze`` fine-tuning does (``freeze_trainable_layers``, ``freeze_trainable_modules``,
  ``freeze_extra_modules``).
* :func:`lisa`: LISA (Pan et al. 2024, LMFlow's ``DynamicLayerActivationCallback``): every ``every`` steps, sample
  ``gamma`` blocks to train; embeddings and head always train; the optimizer state of blocks that stop training is
  released. It is a :class:`~layerfreeze.schedules.Schedule`, drawn in advance from a seed, so it can be printed and
  plotted like any other.
* :class:`AdaptiveFreezing`: AutoFreeze / FreezeOut-style: freeze blocks bottom-up once a block's update norm has
  stopped changing; :func:`~layerfreeze.fit` calls :meth:`AdaptiveFreezing.observe` after every step, and with
  ``cache_prefix=True`` the feature cache takes over the newly frozen prefix.
* :func:`expand_blocks`: block expansion (LLaMA Pro, Wu et al. 2024): insert copies of blocks that compute the
  identity at initialisation, freeze the original model, train only the copies (and the head).

>>> from layerfreeze import tiny_model
>>> model = tiny_model("bert", num_layers=4)
>>> plan = factory_plan(model, trainable_layers=-1, trainable_modules="mlp")
>>> plan
Plan('first 1 block(s), mlp modules, + head': 7 selectors)
>>> apply_plan(model, plan).group_states["block.0"]
'partly trainable'
"""

from __future__ import annotations

import copy
import fnmatch
import random
import re
from dataclasses import dataclass, field

import torch
from torch import nn

from .freezing import FreezeReport, train_only
from .layers import LayerGroup, find_blocks_path, layer_groups
from .schedules import Schedule, resolve_rates

# The first name inside a block of each family's attention and MLP sub-modules (BERT/RoBERTa, DistilBERT, GPT-2,
# Llama): "mlp" covers BERT's intermediate and output, which together are its feed-forward network.
MODULE_KINDS = {"attention": ("attention", "attn", "self_attn"), "mlp": ("mlp", "intermediate", "output", "ffn")}


@dataclass
class Plan:
    """What trains: ``selection`` holds anything :func:`~layerfreeze.select_parameters` accepts (group names,
    globs, compiled regexes); ``reason`` says why, in words."""

    name: str
    selection: list = field(default_factory=list)
    reason: str = ""

    def __repr__(self) -> str:
        return f"Plan({self.name!r}: {len(self.selection)} selectors)"


def apply_plan(model: nn.Module, plan: Plan, eval_frozen: bool = True) -> FreezeReport:
    """Make exactly ``plan.selection`` trainable; fully frozen groups stay in eval mode (for the feature cache)."""
    if not plan.selection:
        raise ValueError(f"plan {plan.name!r} selects nothing to train")
    report = train_only(model, *plan.selection, eval_frozen=eval_frozen)
    report.action = f"apply_plan({plan.name!r})"
    return report


def exact_names(names) -> list[re.Pattern]:
    """Selectors for exactly these parameter names (a plain string would be read as a group name)."""
    return [re.compile("^" + re.escape(name) + "$") for name in names]


# --- LLaMA-Factory's freeze fine-tuning ----------------------------------------------------------------------------

def _block_parameters(group: LayerGroup, trainable_modules: str) -> list[str]:
    """Names of the block's parameters that ``trainable_modules`` picks: all, attention, mlp, or globs
    (comma-separated) on names inside the block, such as ``"attention.*,*.LayerNorm.*"``."""
    (prefix,) = group.modules
    inside = {name[len(prefix) + 1:]: name for name in group.parameters}
    if trainable_modules == "all":
        return list(inside.values())
    if trainable_modules in MODULE_KINDS:
        return [full for rel, full in inside.items() if rel.split(".")[0] in MODULE_KINDS[trainable_modules]]
    globs = [g.strip() for g in trainable_modules.split(",") if g.strip()]
    return [full for rel, full in inside.items() if any(fnmatch.fnmatchcase(rel, g) for g in globs)]


def factory_plan(model: nn.Module, trainable_layers: int, trainable_modules: str = "all",
                 extra_modules: tuple[str, ...] | list[str] = ()) -> Plan:
    """LLaMA-Factory's ``freeze`` plan. ``trainable_layers``: positive trains the last n blocks, negative the first
    n. ``trainable_modules``: ``all``, ``attention``, ``mlp``, or comma-separated globs on parameter names inside a
    block. ``extra_modules``: more groups (``embeddings``) or parameter globs. The task head always trains: it is
    new. Errors name the argument and what is valid.

    >>> from layerfreeze import tiny_model
    >>> factory_plan(tiny_model("bert", num_layers=4), 2).selection[-1]
    'head'
    """
    groups = layer_groups(model)
    blocks = [g for g in groups if g.kind == "block"]
    if isinstance(trainable_layers, bool) or not isinstance(trainable_layers, int) or trainable_layers == 0 \
            or abs(trainable_layers) > len(blocks):
        raise ValueError(f"trainable_layers must be a non-zero int from -{len(blocks)} to {len(blocks)} (positive: "
                         f"the last n blocks, negative: the first n); got {trainable_layers!r}")
    chosen = blocks[-trainable_layers:] if trainable_layers > 0 else blocks[:-trainable_layers]
    names = [n for g in chosen for n in _block_parameters(g, trainable_modules)]
    if not names:
        raise ValueError(f"trainable_modules={trainable_modules!r} matches no parameter inside a block; valid: all, "
                         f"attention, mlp, or globs on names such as {next(iter(chosen[0].parameters))!r} without "
                         f"its block prefix")
    group_names = {g.name for g in groups}
    extras = list(extra_modules)
    for extra in extras:
        if extra not in group_names and not any(ch in extra for ch in "*?["):
            raise ValueError(f"extra_modules: {extra!r} is neither a group ({', '.join(sorted(group_names))}) nor "
                             "a glob on parameter names such as '*LayerNorm*'")
    where = f"{'last' if trainable_layers > 0 else 'first'} {abs(trainable_layers)} block(s)"
    return Plan(f"{where}, {trainable_modules} modules" + "".join(f", {e}" for e in extras) + ", + head",
                exact_names(names) + extras + ["head"],
                f"LLaMA-Factory freeze: trainable_layers={trainable_layers}, trainable_modules={trainable_modules}")


# --- LISA ----------------------------------------------------------------------------------------------------------

def lisa(groups: list[str], gamma: int, every: int, total_steps: int, lrs: float | dict[str, float],
         curve: str = "linear", warmup_steps: int = 0, seed: int = 0) -> Schedule:
    """LISA: every ``every`` steps, ``gamma`` blocks drawn at random (without replacement, from ``seed``) train
    with the embeddings and the head; the other blocks are frozen and their optimizer state is released.

    >>> names = ["embeddings", "block.0", "block.1", "block.2", "head"]
    >>> s = lisa(names, gamma=1, every=5, total_steps=15, lrs=1e-4)
    >>> [len(groups) for _, groups in s.phases], s.release_frozen_state
    ([3, 3, 3], True)
    """
    blocks = [g for g in groups if g.startswith("block.")]
    if isinstance(gamma, bool) or not isinstance(gamma, int) or not 1 <= gamma <= len(blocks):
        raise ValueError(f"gamma, the number of blocks LISA trains at once, must be from 1 to {len(blocks)}; "
                         f"got {gamma!r}")
    if isinstance(every, bool) or not isinstance(every, int) or every < 1:
        raise ValueError(f"every, the steps between LISA's draws, must be an int >= 1; got {every!r}")
    draw = random.Random(seed)
    phases = []
    for start in range(0, max(total_steps, 1), every):
        active = set(draw.sample(blocks, gamma))
        phases.append((start, tuple(g for g in groups if g in active or not g.startswith("block."))))
    return Schedule(list(groups), phases, resolve_rates(groups, lrs), total_steps, curve, warmup_steps,
                    f"LISA (gamma={gamma}, every {every} steps)", release_frozen_state=True)


# --- adaptive freezing -----------------------------------------------------------------------------------------------

def plateaued(norms: list[float], window: int, threshold: float) -> bool:
    """Whether the last value differs from the one ``window`` measurements earlier by less than ``threshold``
    (relative).

    >>> plateaued([4.0, 2.0, 1.0, 0.95, 0.93], window=2, threshold=0.1)
    True
    >>> plateaued([4.0, 2.0, 1.0], window=2, threshold=0.1)
    False
    """
    if len(norms) <= window:
        return False
    before, now = norms[-1 - window], norms[-1]
    return abs(now - before) <= threshold * abs(before)


@dataclass(repr=False)
class AdaptiveFreezing(Schedule):
    """Freeze bottom-up: every ``interval`` steps, measure each training group's update norm over the interval
    (divided by the summed learning-rate multiplier, so that the LR curve does not count as a change); when the
    lowest training group's norm has changed by less than ``threshold`` (relative) over ``window`` measurements, it
    freezes for good. The head and the top ``keep_trainable`` non-head groups never freeze. Keeps one copy of the
    training groups' weights. Build it with :func:`adaptive_freezing`."""

    interval: int = 10
    window: int = 3
    threshold: float = 0.05
    keep_trainable: int = 1
    norms: dict = field(default_factory=dict)  # group -> normalised update norms, one per measurement
    frozen_at: list = field(default_factory=list)  # (step, group)
    freezes_for_good = True  # the feature cache may take over what it freezes
    _previous: dict = field(default_factory=dict)

    def observe(self, step: int, model: nn.Module, groups: list[LayerGroup]) -> bool:
        """Measure after optimizer step ``step``; returns whether a group froze (from ``step`` on)."""
        if step % self.interval:
            return False
        training = [g for g in groups if g.name in self.trainable_at(step - 1) and g.kind != "head"]
        lr_sum = sum(self.multiplier(s) for s in range(step - self.interval, step)) or 1.0
        for group in training:
            now = torch.cat([p.detach().float().reshape(-1) for p in group.parameters.values()])
            if group.name in self._previous:
                self.norms.setdefault(group.name, []).append(float((now - self._previous[group.name]).norm()) / lr_sum)
            self._previous[group.name] = now
        if len(training) <= self.keep_trainable:
            return False
        lowest = training[0].name
        if not plateaued(self.norms.get(lowest, []), self.window, self.threshold):
            return False
        del self._previous[lowest]
        self.phases.append((step, tuple(g for g in self.trainable_at(step - 1) if g != lowest)))
        self.frozen_at.append((step, lowest))
        return True


def adaptive_freezing(groups: list[str], total_steps: int, lrs: float | dict[str, float], *, interval: int = 10,
                      window: int = 3, threshold: float = 0.05, keep_trainable: int = 1, curve: str = "linear",
                      warmup_steps: int = 0, trainable: list[str] | None = None) -> AdaptiveFreezing:
    """An :class:`AdaptiveFreezing` plan that starts with ``trainable`` (all groups by default).

    >>> plan = adaptive_freezing(["embeddings", "block.0", "head"], 100, 1e-4, interval=5)
    >>> plan.trainable_at(0), plan.change_steps()
    (['embeddings', 'block.0', 'head'], [])
    """
    for name, value, low in (("interval", interval, 1), ("window", window, 1), ("keep_trainable", keep_trainable, 0)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ValueError(f"{name} must be an int >= {low}; got {value!r}")
    if not threshold > 0:
        raise ValueError(f"threshold, the relative change below which a block freezes, must be > 0; got {threshold!r}")
    phase = tuple(trainable) if trainable is not None else tuple(groups)
    return AdaptiveFreezing(list(groups), [(0, phase)], resolve_rates(groups, lrs), total_steps, curve,
                            warmup_steps, f"adaptive freezing (every {interval} steps, window {window}, "
                            f"threshold {threshold:g})", release_frozen_state=True, interval=interval, window=window,
                            threshold=threshold, keep_trainable=keep_trainable)


# --- block expansion -------------------------------------------------------------------------------------------------

def _gate_residual(block: nn.Module, args, kwargs, output):
    """A copied block's output: ``x + G(block(x) - x)``, with ``G`` a zero-initialised linear map: the identity
    until ``G`` trains."""
    hidden = args[0] if args else kwargs["hidden_states"]
    new = output[0] if isinstance(output, tuple) else output
    mixed = hidden + block.expansion_gate(new - hidden)
    return (mixed, *output[1:]) if isinstance(output, tuple) else mixed


def expand_blocks(model: nn.Module, every: int) -> list[str]:
    """Block expansion (LLaMA Pro): after every ``every`` original blocks, insert a copy of the block before it
    that computes the identity at initialisation; returns the names of the new groups (``block.i``) in the
    expanded model. Apply ``train_only(model, *new, "head")`` to train only them.

    LLaMA Pro zero-initialises the copy's output projections, which gives the identity only in a pre-norm block
    (Llama); in a post-norm block (BERT) the final LayerNorm still acts. So each copy instead ends in its own
    zero-initialised projection ``expansion_gate`` (hidden x hidden, no bias) on its residual branch and outputs
    ``x + G(block(x) - x)``: the identity in every family, and, like LLaMA Pro's zeroed projections, a matrix that
    starts to learn at the first step (a scalar gate would learn one number at the rate of one weight).

    >>> from layerfreeze import tiny_model
    >>> model = tiny_model("bert", num_layers=4)
    >>> expand_blocks(model, every=2), len(layer_groups(model))
    (['block.2', 'block.5'], 8)
    """
    path = find_blocks_path(model)
    blocks = model.get_submodule(path)
    if isinstance(every, bool) or not isinstance(every, int) or not 1 <= every <= len(blocks):
        raise ValueError(f"every must be an int from 1 to {len(blocks)} (the model's blocks); got {every!r}")
    expanded, new = [], []
    for i, block in enumerate(blocks):
        expanded.append(block)
        if (i + 1) % every == 0:
            twin = copy.deepcopy(block)
            weight = next(block.parameters())
            twin.expansion_gate = nn.Linear(model.config.hidden_size, model.config.hidden_size, bias=False)
            nn.init.zeros_(twin.expansion_gate.weight)
            twin.expansion_gate.to(weight.device, weight.dtype)
            twin.register_forward_hook(_gate_residual, with_kwargs=True)
            new.append(len(expanded))
            expanded.append(twin)
    for index, block in enumerate(expanded):
        for module in block.modules():  # decoders number their layers for the KV cache
            if hasattr(module, "layer_idx"):
                module.layer_idx = index
    parent_name, _, child = path.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, nn.ModuleList(expanded))
    model.config.num_hidden_layers = len(expanded)
    return [f"block.{i}" for i in new]
