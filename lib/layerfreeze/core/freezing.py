"""Freezing and unfreezing layer groups, with a report of what changed.

A *selection* names what to act on. Each item may be:

* an ``int`` group index, negative from the top (``-1`` is the head);
* a ``slice`` of groups (``slice(1, 3)`` is ``block.0`` and ``block.1``);
* a group name (``"embeddings"``, ``"block.2"``, ``"head"``);
* a glob on parameter names (``"*.bias"``, ``"*LayerNorm*"``), recognised by ``*``, ``?`` or ``[``;
* a compiled regex (``re.compile(r"attention\\.self")``), searched in parameter names;
* a :class:`~layerfreeze.layers.LayerGroup`.

Bad input raises ``ValueError`` naming what is valid, and so does a call that would leave nothing to train.

>>> from layerfreeze import tiny_model
>>> model = tiny_model("bert", num_layers=4)
>>> freeze_to(model, -2)      # like fastai: train the last two groups (block.3 and head)
freeze_to(-2): 53 tensors froze (embeddings, block.0, block.1, block.2). Trainable: 13,826 of 1,032,866 ...
"""

from __future__ import annotations

import contextlib
import fnmatch
import hashlib
import re
import warnings
from dataclasses import dataclass, field
from typing import Iterator, Union

import torch
from torch import nn

from .layers import LayerGroup, group_of_parameter, layer_groups, shared_parameters, tied_weights
from ..base.runtime import full_tensor

Selector = Union[int, slice, str, "re.Pattern[str]", LayerGroup]
NORM_CLASS_HINTS = ("Norm",)  # LayerNorm, RMSNorm, LlamaRMSNorm, GroupNorm, BatchNorm1d ...


@dataclass
class FreezeReport:
    """What one freezing call changed. Its ``repr`` is a one-line summary, shown when a notebook cell ends with
    the call; ``froze``/``unfroze`` list parameter names, ``ties`` the tied tensors the selection touched (one
    tensor under names in several groups, e.g. ``transformer.wte.weight = lm_head.weight``), ``notes`` anything
    else the caller should know."""

    action: str
    froze: list[str] = field(default_factory=list)
    unfroze: list[str] = field(default_factory=list)
    group_states: dict[str, str] = field(default_factory=dict)
    trainable_params: int = 0
    total_params: int = 0
    notes: list[str] = field(default_factory=list)
    ties: list[str] = field(default_factory=list)
    _group_by_name: dict[str, str] = field(default_factory=dict, repr=False)

    @property
    def changed(self) -> list[str]:
        return self.froze + self.unfroze

    @property
    def percent_trainable(self) -> float:
        return 100.0 * self.trainable_params / max(self.total_params, 1)

    def __repr__(self) -> str:
        parts = []
        if self.froze:
            parts.append(f"{len(self.froze)} tensors froze ({', '.join(self._changed_groups(self.froze))})")
        if self.unfroze:
            parts.append(f"{len(self.unfroze)} tensors unfroze ({', '.join(self._changed_groups(self.unfroze))})")
        head = f"{self.action}: " + ("; ".join(parts) if parts else "nothing changed")
        tail = (f". Trainable: {self.trainable_params:,} of {self.total_params:,} parameters "
                f"({self.percent_trainable:.1f}%).")
        notes = "".join(f"\n  note: {n}" for n in self.notes) + "".join(f"\n  tie: {t}" for t in self.ties)
        return head + tail + notes

    def _changed_groups(self, names: list[str]) -> list[str]:
        return list(dict.fromkeys(self._group_by_name.get(n, "?") for n in names))



def _is_glob(text: str) -> bool:
    return any(ch in text for ch in "*?[")


def _all_named_parameters(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    return list(model.named_parameters(remove_duplicate=False))


def select_parameters(model: nn.Module, *selection: Selector,
                      groups: list[LayerGroup] | None = None) -> dict[str, nn.Parameter]:
    """Resolve a selection (see the module docstring) to ``{name: parameter}``. No selection means everything.

    >>> from layerfreeze import tiny_model
    >>> model = tiny_model("bert", num_layers=2)
    >>> sorted(select_parameters(model, "block.1", "*classifier.bias"))[:2]
    ['bert.encoder.layer.1.attention.output.LayerNorm.bias', 'bert.encoder.layer.1.attention.output.LayerNorm.weight']
    """
    groups = groups if groups is not None else layer_groups(model)
    if not selection:
        return {n: p for g in groups for n, p in g.parameters.items()}
    names = [g.name for g in groups]
    valid = (f"{len(groups)} groups: {', '.join(names)} (indices {-len(groups)}..{len(groups) - 1}), a slice, "
             "a glob on parameter names such as '*.bias', or a compiled regex")
    chosen: dict[str, nn.Parameter] = {}
    for item in selection:
        if isinstance(item, bool):
            raise ValueError(f"cannot select with {item!r}; select by {valid}")
        if isinstance(item, int):
            if not -len(groups) <= item < len(groups):
                raise ValueError(f"group index {item} is out of range; the model has {valid}")
            chosen.update(groups[item].parameters)
        elif isinstance(item, slice):
            picked = groups[item]
            if not picked:
                raise ValueError(f"slice {item.start}:{item.stop}:{item.step} selects no group; the model has {valid}")
            for group in picked:
                chosen.update(group.parameters)
        elif isinstance(item, LayerGroup):
            chosen.update(item.parameters)
        elif isinstance(item, re.Pattern):
            hits = {n: p for n, p in _all_named_parameters(model) if item.search(n)}
            if not hits:
                raise ValueError(f"regex {item.pattern!r} matches no parameter name; names look like "
                                 f"{_all_named_parameters(model)[0][0]!r}. Select by {valid}")
            chosen.update(hits)
        elif isinstance(item, str) and _is_glob(item):
            hits = {n: p for n, p in _all_named_parameters(model) if fnmatch.fnmatchcase(n, item)}
            if not hits:
                raise ValueError(f"glob {item!r} matches no parameter name; names look like "
                                 f"{_all_named_parameters(model)[0][0]!r}. Select by {valid}")
            chosen.update(hits)
        elif isinstance(item, str):
            if item not in names:
                raise ValueError(f"unknown layer group {item!r}; the model has {valid}")
            chosen.update(groups[names.index(item)].parameters)
        else:
            raise ValueError(f"cannot select with {type(item).__name__} {item!r}; select by {valid}")
    return chosen


def _norm_parameter_ids(model: nn.Module) -> set[int]:
    return {id(p) for m in model.modules() if any(h in type(m).__name__ for h in NORM_CLASS_HINTS)
            for p in m.parameters(recurse=False)}


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """``(trainable, total)`` parameter counts, each shared tensor counted once."""
    params = list(model.parameters())  # named_parameters/parameters already skip tied duplicates
    return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)


# --- tied weights ---------------------------------------------------------------------------------------------------

def _untie(model: nn.Module, tie: dict[str, str]) -> list[str]:
    """Give every group of ``tie`` but the first a copy of its own; returns the names that got copies."""
    params = dict(model.named_parameters(remove_duplicate=False))
    first_group = next(iter(tie.values()))
    copies: dict[str, nn.Parameter] = {}
    for name, group in tie.items():
        if group == first_group:
            continue
        original = params[name]
        if group not in copies:
            copies[group] = nn.Parameter(original.detach().clone(), requires_grad=original.requires_grad)
        owner, _, attribute = name.rpartition(".")
        setattr(model.get_submodule(owner), attribute, copies[group])
    for config in {id(c): c for c in (getattr(model, "config", None), _text_config(model)) if c is not None}.values():
        if hasattr(config, "tie_word_embeddings"):
            config.tie_word_embeddings = False  # so that saving and reloading does not tie them again
    return [n for n, g in tie.items() if g != first_group]


def _text_config(model: nn.Module):
    config = getattr(model, "config", None)
    return config.get_text_config() if hasattr(config, "get_text_config") else None


def _describe_tie(tie: dict[str, str]) -> str:
    return " = ".join(f"{name} ({group})" for name, group in tie.items())


def _settle_ties(model: nn.Module, action: str, groups: list[LayerGroup], intent: dict[str, bool],
                 untie: bool) -> tuple[list[LayerGroup], list[str]]:
    """Check the tied tensors that ``intent`` (parameter name -> requires_grad wanted) touches.

    A tie whose names would want different states is an error naming the ways out, or, with ``untie=True``, gets
    a copy per group. Returns the groups (rebuilt after untying) and a description of each tie touched.
    """
    touched, conflicts = [], []
    params = dict(model.named_parameters(remove_duplicate=False))
    for tie in tied_weights(model, groups):
        if not any(name in intent for name in tie):
            continue
        wants = {name: intent.get(name, params[name].requires_grad) for name in tie}
        touched.append(tie)
        if len(set(wants.values())) > 1:
            conflicts.append((tie, wants))
    if conflicts and not untie:
        tie, wants = conflicts[0]
        training = [f"{n} ({tie[n]})" for n, w in wants.items() if w]
        frozen_names = [f"{n} ({tie[n]})" for n, w in wants.items() if not w]
        raise ValueError(
            f"{action} would train {', '.join(training)} but freeze {', '.join(frozen_names)}, and they are one tied "
            "tensor: training one trains the other. Ways out: pass untie=True to give each group a copy of its own "
            "(the model's outputs do not change; the copies then train apart), select both groups, or build the "
            "model with tie_word_embeddings=False.")
    descriptions = []
    for tie, wants in conflicts:
        copied = _untie(model, tie)
        descriptions.append(f"{_describe_tie(tie)}: untied, {', '.join(copied)} got a copy of its own")
    conflicted = [id(t) for t, _ in conflicts]
    for tie in touched:
        if id(tie) not in conflicted:
            state = "trains" if intent.get(next(n for n in tie if n in intent)) else "is frozen"
            descriptions.append(f"{_describe_tie(tie)}: one tensor, it {state} under every name")
    return (layer_groups(model) if conflicts else groups), descriptions


def _set_trainable(model: nn.Module, action: str, wanted: dict[int, bool], groups: list[LayerGroup],
                   allow_nothing_trainable: bool, eval_frozen: bool | None) -> FreezeReport:
    """Apply ``wanted`` (id(parameter) -> requires_grad) after checking it leaves something to train."""
    canonical = list(model.named_parameters())
    final = {id(p): wanted.get(id(p), p.requires_grad) for _, p in canonical}
    if not allow_nothing_trainable and not any(final.values()):
        raise ValueError(f"{action} would leave nothing to train: all {len(canonical)} parameter tensors would be "
                         "frozen. Keep at least one group trainable, e.g. the head (-1), or pass "
                         "allow_nothing_trainable=True to use the model as a fixed feature extractor.")
    owner = group_of_parameter(groups)
    report = FreezeReport(action)
    twins = {}
    for names in shared_parameters(model):
        for name in names:
            twins[name] = [n for n in names if n != name]
    for name, param in canonical:
        new = final[id(param)]
        if new != param.requires_grad:
            (report.unfroze if new else report.froze).append(name)
            param.requires_grad_(new)
            if name in twins:
                state = "trains" if new else "is frozen"
                report.notes.append(f"{name} is shared with {', '.join(twins[name])}: the one tensor {state} "
                                    "under every name")
    report._group_by_name = {n: owner.get(id(p), "?") for n, p in canonical}
    for group in groups:
        state = group.trainable
        report.group_states[group.name] = "empty" if not group.parameters else (
            "trainable" if state else "frozen" if state is False else "partly trainable")
    report.trainable_params, report.total_params = count_parameters(model)
    if eval_frozen or (eval_frozen is None and getattr(model, "_layerfreeze_eval_hooks", None) is not None):
        _sync_eval_hooks(model, groups)
        report.notes.append("fully frozen groups stay in eval mode (dropout off, norm statistics fixed): "
                            + (", ".join(model._layerfreeze_eval_hooks) or "none"))
    elif eval_frozen is False and getattr(model, "_layerfreeze_eval_hooks", None) is not None:
        release_eval_mode(model)
    return report


def _apply(model: nn.Module, action: str, selection: tuple, groups: list[LayerGroup] | None, intent_of,
           untie: bool, eval_frozen: bool | None, allow_nothing_trainable: bool = False) -> FreezeReport:
    """Resolve the selection, settle the ties it touches, then set the flags. ``intent_of(selected)`` gives
    ``{parameter name: requires_grad}`` for the names the call decides."""
    groups = groups if groups is not None else layer_groups(model)
    intent = intent_of(select_parameters(model, *selection, groups=groups))
    groups, ties = _settle_ties(model, action, groups, intent, untie)
    if untie and ties:  # untying made new tensors: resolve again
        intent = intent_of(select_parameters(model, *selection, groups=groups))
    params = dict(model.named_parameters(remove_duplicate=False))
    wanted = {id(params[name]): flag for name, flag in intent.items()}
    report = _set_trainable(model, action, wanted, groups, allow_nothing_trainable, eval_frozen)
    report.ties = ties
    return report


def _label(function: str, selection: tuple) -> str:
    return f"{function}({', '.join(map(_describe, selection))})"


def freeze(model: nn.Module, *selection: Selector, groups: list[LayerGroup] | None = None,
           keep_norm_trainable: bool = False, eval_frozen: bool | None = None,
           allow_nothing_trainable: bool = False, untie: bool = False) -> FreezeReport:
    """Freeze the selected parameters (all, with no selection); everything else keeps its state.

    ``keep_norm_trainable=True`` leaves norm layers (LayerNorm, RMSNorm, BatchNorm ...) trainable.
    ``eval_frozen=True`` keeps fully frozen groups in eval mode even after ``model.train()``.
    A selection that would freeze one name of a tied tensor but not the other raises ``ValueError``;
    ``untie=True`` gives each group its own copy instead (as in every function here).

    >>> from layerfreeze import tiny_model
    >>> freeze(tiny_model("bert"), "embeddings", 1).froze[:1]
    ['bert.embeddings.word_embeddings.weight']
    """
    norms = _norm_parameter_ids(model) if keep_norm_trainable else set()
    return _apply(model, _label("freeze", selection), selection, groups,
                  lambda selected: {n: False for n, p in selected.items() if id(p) not in norms},
                  untie, eval_frozen, allow_nothing_trainable)


def unfreeze(model: nn.Module, *selection: Selector, groups: list[LayerGroup] | None = None,
             eval_frozen: bool | None = None, untie: bool = False) -> FreezeReport:
    """Make the selected parameters trainable (all, with no selection); everything else keeps its state.

    >>> from layerfreeze import tiny_model
    >>> model = tiny_model("bert")
    >>> _ = freeze(model, slice(0, -1))
    >>> unfreeze(model, "block.3").group_states["block.3"]
    'trainable'
    """
    return _apply(model, _label("unfreeze", selection), selection, groups,
                  lambda selected: dict.fromkeys(selected, True), untie, eval_frozen)


def _only(model: nn.Module, keep_norm_trainable: bool):
    """The intent of ``train_only``: the selection (and norms, if kept) train, every other name freezes."""
    norms = _norm_parameter_ids(model) if keep_norm_trainable else set()
    return lambda selected: {n: n in selected or id(p) in norms
                             for n, p in model.named_parameters(remove_duplicate=False)}


def train_only(model: nn.Module, *selection: Selector, groups: list[LayerGroup] | None = None,
               keep_norm_trainable: bool = False, eval_frozen: bool | None = None,
               untie: bool = False) -> FreezeReport:
    """Make exactly the selection trainable and freeze everything else.

    >>> from layerfreeze import tiny_model
    >>> train_only(tiny_model("bert"), "head").group_states["head"]
    'trainable'

    On a causal LM whose ``lm_head`` is tied to the input embedding, training the head alone would train the
    embedding too; it raises unless ``untie=True``:

    >>> lm = tiny_model("gpt2", task="causal-lm")
    >>> train_only(lm, "head", untie=True).ties
    ['transformer.wte.weight (embeddings) = lm_head.weight (head): untied, lm_head.weight got a copy of its own']
    """
    if not selection:
        raise ValueError("train_only needs a selection, e.g. train_only(model, 'head') or train_only(model, -2, -1)")
    return _apply(model, _label("train_only", selection), selection, groups, _only(model, keep_norm_trainable),
                  untie, eval_frozen)


def freeze_to(model: nn.Module, n: int, groups: list[LayerGroup] | None = None,
              keep_norm_trainable: bool = False, eval_frozen: bool | None = None, untie: bool = False) -> FreezeReport:
    """fastai's ``freeze_to``: freeze groups ``[:n]`` and train groups ``[n:]``. ``n`` may be negative.

    ``freeze_to(model, -1)`` trains the head only, ``freeze_to(model, -3)`` the top two blocks and the head,
    ``freeze_to(model, 0)`` everything.
    """
    groups = groups if groups is not None else layer_groups(model)
    if isinstance(n, bool) or not isinstance(n, int) or not -len(groups) <= n < len(groups):
        raise ValueError(f"freeze_to needs an int n with {-len(groups)} <= n < {len(groups)} so that something "
                         f"trains; the model has {len(groups)} groups: {', '.join(g.name for g in groups)}. Got {n!r}.")
    return _apply(model, f"freeze_to({n})", (slice(n, None),), groups, _only(model, keep_norm_trainable), untie,
                  eval_frozen)


def bitfit(model: nn.Module, train_head: bool = True, groups: list[LayerGroup] | None = None,
           untie: bool = False) -> FreezeReport:
    """BitFit (Ben Zaken et al. 2022): train only the bias terms, plus the task head by default.

    >>> from layerfreeze import tiny_model
    >>> report = bitfit(tiny_model("bert"))
    >>> report.percent_trainable < 10
    True
    """
    selection: tuple = ("*bias",) + (("head",) if train_head else ())
    return _apply(model, f"bitfit(train_head={train_head})", selection, groups, _only(model, False), untie, None)


def frozen_prefix(groups: list[LayerGroup]) -> int:
    """How many groups at the bottom have nothing trainable: the index of the lowest trainable group, or
    ``len(groups)`` when nothing trains. Below it no gradient is needed, so no activation is kept, no backward
    runs, and the output never changes (what the feature cache stores).

    >>> from layerfreeze import tiny_model, freeze_to, layer_groups
    >>> model = tiny_model("bert", num_layers=4)
    >>> _ = freeze_to(model, -2)
    >>> frozen_prefix(layer_groups(model))
    4
    """
    return next((i for i, g in enumerate(groups) if any(p.requires_grad for p in g.parameters.values())), len(groups))


def trainable_state(model: nn.Module) -> dict[str, bool]:
    """``{parameter name: requires_grad}``, to restore later with :func:`restore_trainable`."""
    return {name: p.requires_grad for name, p in model.named_parameters()}


def restore_trainable(model: nn.Module, state: dict[str, bool]) -> None:
    """Put back the flags saved by :func:`trainable_state`."""
    params = dict(model.named_parameters())
    unknown = set(state) - set(params)
    if unknown:
        raise ValueError(f"saved state names parameters this model lacks: {sorted(unknown)[:5]}")
    for name, flag in state.items():
        params[name].requires_grad_(flag)


@contextlib.contextmanager
def frozen(model: nn.Module, *selection: Selector, **options) -> Iterator[FreezeReport]:
    """Freeze a selection inside a ``with`` block and restore every flag afterwards.

    >>> from layerfreeze import tiny_model
    >>> model = tiny_model("bert")
    >>> with frozen(model, "embeddings") as report:
    ...     model.bert.embeddings.word_embeddings.weight.requires_grad
    False
    >>> model.bert.embeddings.word_embeddings.weight.requires_grad
    True
    """
    state = trainable_state(model)
    try:
        yield freeze(model, *selection, **options)
    finally:
        restore_trainable(model, state)


def _describe(item: Selector) -> str:
    if isinstance(item, slice):
        return f"{'' if item.start is None else item.start}:{'' if item.stop is None else item.stop}"
    if isinstance(item, re.Pattern):
        return f"re{item.pattern!r}"
    if isinstance(item, LayerGroup):
        return item.name
    return repr(item) if isinstance(item, str) else str(item)


# --- keeping frozen groups in eval mode ----------------------------------------------------------------------------

def _stay_in_eval(module: nn.Module, args) -> None:
    if module.training:
        module.eval()


def _sync_eval_hooks(model: nn.Module, groups: list[LayerGroup]) -> None:
    """Hold every fully frozen group in eval mode; let groups that train again follow ``model.train()``."""
    hooks: dict[str, list] = getattr(model, "_layerfreeze_eval_hooks", None) or {}
    for group in groups:
        fully_frozen = bool(group.parameters) and group.trainable is False
        if fully_frozen and group.name not in hooks:
            hooks[group.name] = [m.register_forward_pre_hook(_stay_in_eval) for m in group.modules.values()]
            for module in group.modules.values():
                module.eval()
        elif not fully_frozen and group.name in hooks:
            for handle in hooks.pop(group.name):
                handle.remove()
            for module in group.modules.values():
                module.train(model.training)
    model._layerfreeze_eval_hooks = hooks


def release_eval_mode(model: nn.Module) -> None:
    """Undo ``eval_frozen=True``: frozen groups follow ``model.train()`` / ``model.eval()`` again."""
    for handles in (getattr(model, "_layerfreeze_eval_hooks", None) or {}).values():
        for handle in handles:
            handle.remove()
    model._layerfreeze_eval_hooks = None
    model.train(model.training)


def frozen_in_eval(model: nn.Module) -> list[str]:
    """Names of the groups that ``eval_frozen=True`` currently holds in eval mode."""
    return list(getattr(model, "_layerfreeze_eval_hooks", None) or {})


# --- fingerprints --------------------------------------------------------------------------------------------------

def fingerprint(model: nn.Module) -> dict[str, str]:
    """A content hash of every parameter, ``{name: hex digest}``; equal digests mean bit-identical tensors.

    >>> from layerfreeze import tiny_model
    >>> model = tiny_model("bert")
    >>> fingerprint(model) == fingerprint(model)
    True
    """
    digests = {}
    for name, param in model.named_parameters():  # a parameter sharded by FSDP2 is gathered whole, on every rank
        raw = full_tensor(param.detach()).to("cpu").contiguous().reshape(-1).view(torch.uint8)
        digests[name] = hashlib.blake2b(raw.numpy().tobytes(), digest_size=16).hexdigest()
    return digests


def changed_parameters(before: dict[str, str], after: dict[str, str]) -> list[str]:
    """Names whose fingerprint differs between two :func:`fingerprint` results."""
    return [name for name, digest in after.items() if before.get(name) != digest]


def assert_frozen_unchanged(model: nn.Module, before: dict[str, str]) -> int:
    """Check that every currently frozen parameter is bit-identical to its fingerprint in ``before``.

    Returns how many frozen tensors were checked; raises ``AssertionError`` naming any that moved.
    """
    now = fingerprint(model)
    frozen_names = [n for n, p in model.named_parameters() if not p.requires_grad]
    missing = [n for n in frozen_names if n not in before]
    if missing:
        raise ValueError(f"before holds no fingerprint for {len(missing)} frozen parameters (e.g. {missing[0]}): pass "
                         "fingerprint(model) of this model, taken before training")
    moved = [n for n in frozen_names if before.get(n) != now[n]]
    if moved:
        raise AssertionError(f"{len(moved)} frozen parameters changed: {', '.join(moved[:5])}"
                             f"{' ...' if len(moved) > 5 else ''}")
    if not frozen_names:
        warnings.warn("assert_frozen_unchanged: the model has no frozen parameter, so nothing was checked")
    return len(frozen_names)
