"""Freezing plans as practitioners write them today, and the plans that change while training runs.

* :class:`Plan`: a named selection of what trains, with the reason for it, applied by :func:`apply_plan`.
  :mod:`layerfreeze.core.signals` proposes plans from measurements; :func:`factory_plan` writes one the way
  LLaMA-Factory's ``freeze`` fine-tuning does (``freeze_trainable_layers``, ``freeze_trainable_modules``,
  ``freeze_extra_modules``).
* :func:`lisa`: LISA (Pan et al. 2024, LMFlow's ``DynamicLayerActivationCallback``): every ``every`` steps, sample
  ``gamma`` blocks to train; embeddings and head always train; the optimizer state of blocks that stop training is
  released. It is a :class:`~layerfreeze.schedules.Schedule`, drawn in advance from a seed, so it can be printed and
  plotted like any other.
* :class:`AdaptiveFreezing`: freeze blocks bottom-up once a block's update norm (or, with ``rule="gradient"``,
  AutoFreeze's gradient norm) has stopped changing; :func:`~layerfreeze.fit` calls
  :meth:`AdaptiveFreezing.observe` after every step, and with ``cache_prefix=True`` the feature cache takes over
  the newly frozen prefix.
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

from .evaluation import is_causal_lm
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


def apply_plan(model: nn.Module, plan: Plan, eval_frozen: bool = True, untie: bool = False) -> FreezeReport:
    """Make exactly ``plan.selection`` trainable; fully frozen groups stay in eval mode (for the feature cache).
    A plan that trains one name of a tied tensor but not the other (a causal LM's ``lm_head`` without its input
    embedding) raises, unless ``untie=True`` gives each its own copy (see :func:`~layerfreeze.train_only`)."""
    if not plan.selection:
        raise ValueError(f"plan {plan.name!r} selects nothing to train")
    report = train_only(model, *plan.selection, eval_frozen=eval_frozen, untie=untie)
    report.action = f"apply_plan({plan.name!r})"
    return report


def exact_names(names) -> list[re.Pattern]:
    """Selectors for exactly these parameter names (a plain string would be read as a group name)."""
    return [re.compile("^" + re.escape(name) + "$") for name in names]


# --- LLaMA-Factory's freeze fine-tuning ----------------------------------------------------------------------------

def _comma_list(value, argument: str) -> list[str]:
    """LLaMA-Factory's spelling: one comma-separated string (``"mlp,self_attn"``), or here also a list of them."""
    items = [value] if isinstance(value, str) else list(value)
    if not all(isinstance(item, str) for item in items):
        raise ValueError(f"{argument} must be a comma-separated string or a list of strings; got {value!r}")
    return [part.strip() for item in items for part in item.split(",") if part.strip()]


def _block_parameters(group: LayerGroup, module: str) -> list[str]:
    """Names of the block's parameters that one ``trainable_modules`` item picks: ``all``; a module's name inside
    the block, as LLaMA-Factory takes it (``self_attn``, ``mlp``, ``attention``, ``intermediate``, ``ln_1`` ...);
    the aliases ``attention`` and ``mlp`` in every family; or a glob on names inside the block (``*.LayerNorm.*``)."""
    (prefix,) = group.modules
    inside = {name[len(prefix) + 1:]: name for name in group.parameters}
    if module == "all":
        return list(inside.values())
    if any(rel.split(".")[0] == module for rel in inside):
        return [full for rel, full in inside.items() if rel.split(".")[0] == module]
    if module in MODULE_KINDS:
        return [full for rel, full in inside.items() if rel.split(".")[0] in MODULE_KINDS[module]]
    return [full for rel, full in inside.items() if fnmatch.fnmatchcase(rel, module)]


def _outside_modules(model: nn.Module, groups: list[LayerGroup]) -> dict[str, list[str]]:
    """LLaMA-Factory's "non-hidden modules": the last module name of each parameter outside the blocks
    (``embed_tokens``, ``norm``, ``lm_head``, ``wte``, ``ln_f`` ...), with the parameter names it covers."""
    outside: dict[str, list[str]] = {}
    for group in groups:
        if group.kind != "block":
            for name in group.parameters:
                outside.setdefault(name.split(".")[-2] if "." in name else name, []).append(name)
    return outside


def _extra_selectors(model: nn.Module, groups: list[LayerGroup], extras: list[str]) -> list:
    """Each ``extra_modules`` item as a selector: a group, a LLaMA-Factory module name, or a parameter glob."""
    group_names = {g.name for g in groups}
    outside = _outside_modules(model, groups)
    selectors = []
    for extra in extras:
        if extra in group_names or any(ch in extra for ch in "*?["):
            selectors.append(extra)
        elif extra in outside:
            selectors += exact_names(outside[extra])
        else:
            raise ValueError(f"extra_modules: {extra!r} is neither a group ({', '.join(sorted(group_names))}), a "
                             f"module outside the blocks ({', '.join(sorted(outside))}) nor a glob on parameter "
                             "names such as '*LayerNorm*'")
    return selectors


def task_head(groups: list[LayerGroup]) -> list:
    """Selectors for the head group without its norms: the output layer (and BERT's pooler), not a decoder's
    final norm, which LLaMA-Factory trains only when ``extra_modules`` names it. A head with no norm is ``head``."""
    head = groups[-1]
    norms = {id(p) for module in head.modules.values() if "Norm" in type(module).__name__
             for p in module.parameters(recurse=False)}
    if not norms:
        return ["head"]
    return exact_names(name for name, param in head.parameters.items() if id(param) not in norms)


def factory_plan(model: nn.Module, trainable_layers: int, trainable_modules: str | list[str] = "all",
                 extra_modules: str | tuple[str, ...] | list[str] = ()) -> Plan:
    """LLaMA-Factory's ``freeze`` plan. ``trainable_layers``: positive trains the last n blocks, negative the first
    n. ``trainable_modules``: comma-separated, as LLaMA-Factory takes them: ``all``, or module names inside a block
    (``self_attn``, ``mlp`` for Llama; ``attn``, ``mlp`` for GPT-2; ``attention``, ``intermediate``, ``output``
    for BERT), or the aliases ``attention`` and ``mlp`` in every family, or globs on names inside a block.
    ``extra_modules``: comma-separated modules outside the blocks, as LLaMA-Factory names them (``embed_tokens``,
    ``norm``, ``lm_head``), groups (``embeddings``) or parameter globs. The task head's output layer always trains
    (it is new; a causal LM's pretrained head trains only when ``extra_modules`` names it); a decoder's final norm trains only when ``extra_modules`` names it. Unlike LLaMA-Factory, which
    matches names as substrings (its ``norm`` also trains every block's ``input_layernorm``), a module name here
    means exactly that module. Errors name the argument and what is valid.

    >>> from ..base.models import tiny_model
    >>> llama = tiny_model("llama", num_layers=4)
    >>> plan = factory_plan(llama, 2, "mlp,self_attn", "embed_tokens,norm")
    >>> report = apply_plan(llama, plan)
    >>> sorted(n for n, p in llama.named_parameters() if p.requires_grad and ".layers." not in n)
    ['model.embed_tokens.weight', 'model.norm.weight', 'score.weight']
    """
    groups = layer_groups(model)
    blocks = [g for g in groups if g.kind == "block"]
    if isinstance(trainable_layers, bool) or not isinstance(trainable_layers, int) or trainable_layers == 0 \
            or abs(trainable_layers) > len(blocks):
        raise ValueError(f"trainable_layers must be a non-zero int from -{len(blocks)} to {len(blocks)} (positive: "
                         f"the last n blocks, negative: the first n); got {trainable_layers!r}")
    chosen = blocks[-trainable_layers:] if trainable_layers > 0 else blocks[:-trainable_layers]
    modules = _comma_list(trainable_modules, "trainable_modules")
    (prefix,) = blocks[0].modules
    inside = sorted({name[len(prefix) + 1:].split(".")[0] for name in blocks[0].parameters})
    names = []
    for module in modules or [""]:
        found = [n for g in chosen for n in _block_parameters(g, module)]
        if not found:
            raise ValueError(f"trainable_modules: {module!r} matches no parameter inside a block; valid: all, the "
                             f"module names inside a block ({', '.join(inside)}), attention, mlp, or globs on names "
                             f"such as {next(iter(chosen[0].parameters))!r} without its block prefix")
        names += [n for n in found if n not in names]
    extras = _comma_list(extra_modules, "extra_modules")
    spelled = ",".join(modules)
    where = f"{'last' if trainable_layers > 0 else 'first'} {abs(trainable_layers)} block(s)"
    head = [] if is_causal_lm(model) else task_head(groups)  # a causal LM's head is pretrained, not new
    return Plan(f"{where}, {spelled} modules" + "".join(f", {e}" for e in extras) + (", + head" if head else ""),
                exact_names(names) + _extra_selectors(model, groups, extras) + head,
                f"LLaMA-Factory freeze: trainable_layers={trainable_layers}, trainable_modules={spelled}"
                + (f", extra_modules={','.join(extras)}" if extras else ""))


# --- LISA ----------------------------------------------------------------------------------------------------------

def lisa(groups: list[str], gamma: int, every: int, total_steps: int, lrs: float | dict[str, float],
         curve: str = "linear", warmup_steps: int = 0, seed: int = 0) -> Schedule:
    """LISA: every ``every`` steps, ``gamma`` blocks drawn at random (without replacement, from ``seed``) train
    with the embeddings and the head; the other blocks are frozen and their optimizer state is released.
    A block drawn again for the next phase keeps training with its Adam state; only a block that sat out a phase
    starts fresh. LMFlow's callback only switches ``requires_grad``, so what a redrawn block's state does there
    depends on how its trainer builds the optimizer; a trainer that rebuilds it at each switch starts every drawn
    block fresh.

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


ADAPTIVE_RULES = ("update", "gradient")


@dataclass(repr=False)
class AdaptiveFreezing(Schedule):
    """Freeze bottom-up: every ``interval`` steps, measure each training group's activity over the interval; when
    the lowest training group's measure has changed by less than ``threshold`` (relative) over ``window``
    measurements, it freezes for good. The head and the top ``keep_trainable`` non-head groups never freeze.
    Build it with :func:`adaptive_freezing`.

    ``rule`` picks the measure:

    * ``update`` (default): the norm of the group's weight change over the interval, divided by the summed
      learning-rate multiplier (so that the LR curve does not count as a change). Keeps one copy of the training
      groups' weights. Under Adam the update barely follows the gradient's size: a gradient halved every
      interval read as a 17% change in the planted test (tests/test_signals_planted.py), so at threshold 0.3
      it froze.
    * ``gradient``: AutoFreeze's (Liu et al. 2021) measure, the group's gradient norm summed over the interval's
      steps; the halved gradient reads as a 50% change and does not freeze at 0.3. The gradients are read by hooks
      as each backward pass accumulates them (so before clipping and, under fp16, still loss-scaled); the first
      interval, whose first step ran before the hooks, is not measured. One process only: each process's local
      gradients would differ. AutoFreeze freezes a layer whose change falls below a percentile of all layers'
      changes; here, as in the update rule, below a fixed ``threshold``.

    FreezeOut (Brock et al. 2017), which freezes each layer at a time fixed in advance with its learning rate
    annealed to zero, is not implemented."""

    interval: int = 10
    window: int = 3
    threshold: float = 0.05
    keep_trainable: int = 1
    rule: str = "update"
    norms: dict = field(default_factory=dict)  # group -> normalised update (or gradient) norms, one per measurement
    frozen_at: list = field(default_factory=list)  # (step, group)
    freezes_for_good = True  # the feature cache may take over what it freezes
    _previous: dict = field(default_factory=dict)
    _hooks: list = field(default_factory=list)
    _watching_from: int | None = None  # the first step whose gradients the hooks saw
    _step_squares: dict = field(default_factory=dict)  # group -> squared gradient norm of the running step
    _interval_sums: dict = field(default_factory=dict)  # group -> gradient norms summed over the interval

    def observe(self, step: int, model: nn.Module, groups: list[LayerGroup]) -> bool:
        """Measure after optimizer step ``step``; returns whether a group froze (from ``step`` on)."""
        if self.rule == "gradient":
            self._close_gradient_step(step, groups)
        if step % self.interval:
            return False
        training = [g for g in groups if g.name in self.trainable_at(step - 1) and g.kind != "head"]
        if self.rule == "gradient":
            self._record_gradient_norms(step, training)
        else:
            self._record_update_norms(step, training)
        if len(training) <= self.keep_trainable:
            return False
        lowest = training[0].name
        if not plateaued(self.norms.get(lowest, []), self.window, self.threshold):
            return False
        self._previous.pop(lowest, None)
        self.phases.append((step, tuple(g for g in self.trainable_at(step - 1) if g != lowest)))
        self.frozen_at.append((step, lowest))
        return True

    def _record_update_norms(self, step: int, training: list[LayerGroup]) -> None:
        lr_sum = sum(self.multiplier(s) for s in range(step - self.interval, step)) or 1.0
        for group in training:
            now = torch.cat([p.detach().float().reshape(-1) for p in group.parameters.values()])
            if group.name in self._previous:
                self.norms.setdefault(group.name, []).append(float((now - self._previous[group.name]).norm()) / lr_sum)
            self._previous[group.name] = now

    def _close_gradient_step(self, step: int, groups: list[LayerGroup]) -> None:
        """Add the finished step's gradient norm to each group's interval sum; attach the hooks on first call."""
        if self._watching_from is None:
            if torch.distributed.is_available() and torch.distributed.is_initialized() \
                    and torch.distributed.get_world_size() > 1:
                raise ValueError("adaptive freezing with rule='gradient' reads each process's local gradients, "
                                 "which differ between processes; use rule='update' for distributed training")
            self._watch_gradients(groups)
            self._watching_from = step + 1
            return
        for name, squares in self._step_squares.items():
            self._interval_sums[name] = self._interval_sums.get(name, 0.0) + squares.sqrt()
        self._step_squares.clear()

    def _watch_gradients(self, groups: list[LayerGroup]) -> None:
        def hook(param, name):
            grad = param.grad.detach().float().pow(2).sum()
            self._step_squares[name] = self._step_squares.get(name, 0.0) + grad
        for group in groups:
            if group.kind != "head":
                self._hooks += [p.register_post_accumulate_grad_hook(lambda p, n=group.name: hook(p, n))
                                for p in group.parameters.values() if p.requires_grad]  # a frozen one takes none

    def _record_gradient_norms(self, step: int, training: list[LayerGroup]) -> None:
        if step - self.interval + 1 >= self._watching_from:  # a whole interval seen
            for group in training:
                self.norms.setdefault(group.name, []).append(float(self._interval_sums.get(group.name, 0.0)))
        self._interval_sums.clear()

    def release_hooks(self) -> None:
        """Remove the gradient hooks of ``rule='gradient'`` from the model's parameters."""
        for handle in self._hooks:
            handle.remove()
        self._hooks.clear()


def adaptive_freezing(groups: list[str], total_steps: int, lrs: float | dict[str, float], *, interval: int = 10,
                      window: int = 3, threshold: float = 0.05, keep_trainable: int = 1, rule: str = "update",
                      curve: str = "linear", warmup_steps: int = 0,
                      trainable: list[str] | None = None) -> AdaptiveFreezing:
    """An :class:`AdaptiveFreezing` plan that starts with ``trainable`` (all groups by default); ``rule`` is
    ``update`` (the weights' update norm) or ``gradient`` (AutoFreeze's gradient norm).

    >>> plan = adaptive_freezing(["embeddings", "block.0", "head"], 100, 1e-4, interval=5)
    >>> plan.trainable_at(0), plan.change_steps()
    (['embeddings', 'block.0', 'head'], [])
    """
    for name, value, low in (("interval", interval, 1), ("window", window, 1), ("keep_trainable", keep_trainable, 0)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ValueError(f"{name} must be an int >= {low}; got {value!r}")
    if not threshold > 0:
        raise ValueError(f"threshold, the relative change below which a block freezes, must be > 0; got {threshold!r}")
    if rule not in ADAPTIVE_RULES:
        raise ValueError(f"rule must be one of {', '.join(ADAPTIVE_RULES)} (what adaptive freezing measures); "
                         f"got {rule!r}")
    phase = tuple(trainable) if trainable is not None else tuple(groups)
    return AdaptiveFreezing(list(groups), [(0, phase)], resolve_rates(groups, lrs), total_steps, curve,
                            warmup_steps, f"adaptive freezing ({rule} norm, every {interval} steps, window {window}, "
                            f"threshold {threshold:g})", release_frozen_state=True, interval=interval, window=window,
                            threshold=threshold, keep_trainable=keep_trainable, rule=rule)


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
