"""Schedules as plain data: which layer groups train at every step, and at what learning rate.

* **Discriminative learning rates** (ULMFiT): one rate per layer group. :func:`discriminative_lrs` divides by a
  factor (2.6 in ULMFiT) for each group further down; :func:`spread_lrs` spreads rates geometrically between two
  values (fastai's ``slice(lo, hi)``); :func:`layerwise_decay` is timm's layer-wise LR decay.
* **Gradual unfreezing** (ULMFiT): start with the head and unfreeze one more group from the top every ``every``
  steps; **chain-thaw** (Felbo et al. 2017): the head, then each group alone from the bottom up, then everything.
* **LR curves**: warm-up + linear or cosine decay, constant, slanted triangular (ULMFiT: ``cut_frac=0.1``,
  ``ratio=32``) and one-cycle.

A :class:`Schedule` can be printed, tabulated (:meth:`Schedule.table`) and plotted before any training, and
:func:`~layerfreeze.fit` follows it.

>>> s = gradual_unfreezing(["embeddings", "block.0", "block.1", "head"], every=10, total_steps=50,
...                        lrs=discriminative_lrs(["embeddings", "block.0", "block.1", "head"], 1e-3))
>>> s.trainable_at(0), s.trainable_at(25)
(['head'], ['block.0', 'block.1', 'head'])
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from ..base.checks import check_choice, check_int, check_number, check_rates

CURVES = ("linear", "cosine", "constant", "stlr", "one-cycle")


def lr_multiplier(step: int, total_steps: int, warmup_steps: int = 0, curve: str = "linear", *,
                  cut_frac: float = 0.1, ratio: float = 32.0) -> float:
    """The factor on a group's base learning rate at ``step`` (0-based) of ``total_steps``.

    ``linear`` / ``cosine``: linear warm-up over ``warmup_steps``, then decay to 0. ``constant``: warm-up, then 1.
    ``stlr``: ULMFiT's slanted triangular rate, rising for ``cut_frac`` of the steps, then falling, from
    ``1/ratio`` to 1 and back. ``one-cycle``: cosine rise over the first 30% from 1/25, cosine fall to ~0.

    >>> [round(lr_multiplier(s, 10, 2), 2) for s in (0, 1, 2, 6, 9)]
    [0.5, 1.0, 1.0, 0.5, 0.12]
    >>> round(lr_multiplier(10, 100, curve="stlr"), 3), round(lr_multiplier(0, 100, curve="stlr"), 3)
    (1.0, 0.031)
    """
    check_choice("schedule", curve, CURVES)
    check_int("step", step, 0)
    check_int("total_steps", total_steps)
    check_int("warmup_steps", warmup_steps, 0)
    if curve == "stlr":
        check_number("cut_frac", cut_frac, 0, 1, high_inclusive=False)
        check_number("ratio", ratio, 1, low_inclusive=True)  # Howard & Ruder 2018, eq. 3
        cut = max(1, math.floor(total_steps * cut_frac))
        p = step / cut if step < cut else 1 - (step - cut) / max(1, cut * (1 / cut_frac - 1))
        return (1 + max(p, 0.0) * (ratio - 1)) / ratio
    if curve == "one-cycle":
        peak = max(1, int(0.3 * total_steps))
        if step < peak:
            return 1 / 25 + (1 - 1 / 25) * 0.5 * (1 - math.cos(math.pi * step / peak))
        progress = (step - peak) / max(1, total_steps - peak)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    if curve == "constant":
        return 1.0
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    if curve == "linear":
        return max(0.0, 1.0 - progress)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


# --- discriminative learning rates ---------------------------------------------------------------------------------

def discriminative_lrs(groups: list[str], top_lr: float, factor: float = 2.6) -> dict[str, float]:
    """ULMFiT: the top group gets ``top_lr``; each group below gets the rate above it divided by ``factor``.

    >>> {k: round(v, 6) for k, v in discriminative_lrs(["embeddings", "block.0", "head"], 1e-3).items()}
    {'embeddings': 0.000148, 'block.0': 0.000385, 'head': 0.001}
    """
    _check_names(groups)
    check_number("top_lr", top_lr)
    check_number("factor", factor)
    n = len(groups)
    try:
        rates = {name: top_lr / factor ** (n - 1 - i) for i, name in enumerate(groups)}
    except (OverflowError, ZeroDivisionError):
        rates = {}
    if not rates or not all(0 < rate < math.inf for rate in rates.values()):
        raise ValueError(f"top_lr={top_lr} and factor={factor} give rates beyond floating point over {n} groups: "
                         "use a factor nearer 1 (ULMFiT: 2.6)")
    return rates


def spread_lrs(groups: list[str], low: float, high: float) -> dict[str, float]:
    """fastai's ``slice(low, high)``: rates spread geometrically from ``low`` (bottom group) to ``high`` (top).

    >>> spread_lrs(["embeddings", "block.0", "head"], 1e-5, 1e-3)["block.0"]
    0.0001
    """
    _check_names(groups)
    check_number("low", low)
    check_number("high", high)
    if not 0 < low <= high:
        raise ValueError(f"need 0 < low <= high, got low={low}, high={high}")
    n = len(groups)
    if n == 1:
        return {groups[0]: high}
    return {name: round(low * (high / low) ** (i / (n - 1)), 15) for i, name in enumerate(groups)}


def layerwise_decay(groups: list[str], top_lr: float, decay: float = 0.75) -> dict[str, float]:
    """timm's layer-wise LR decay: the group ``d`` places below the top gets ``top_lr * decay ** d``."""
    _check_names(groups)
    check_number("top_lr", top_lr)
    check_number("decay", decay, 0, 1)
    return discriminative_lrs(groups, top_lr, 1 / decay)


def _check_names(groups: list[str]) -> None:
    if isinstance(groups, str) or not groups or not all(isinstance(g, str) for g in groups) or \
            len(set(groups)) != len(groups):
        raise ValueError(f"groups must be distinct layer group names, bottom to top, e.g. [g.name for g in "
                         f"layer_groups(model)]; got {groups!r}")


# --- schedules -------------------------------------------------------------------------------------------------

@dataclass
class Schedule:
    """Which groups train from which step on (``phases``), each group's base rate (``lrs``), and the LR curve.

    ``phases`` is a list of ``(first step, groups that train)``, sorted by step, the first at step 0. At every step
    a group's rate is ``lrs[group] * lr_multiplier(step, total_steps, warmup_steps, curve)``, or 0 if it is frozen.
    """

    groups: list[str]
    phases: list[tuple[int, tuple[str, ...]]]
    lrs: dict[str, float]
    total_steps: int
    curve: str = "linear"
    warmup_steps: int = 0
    name: str = "schedule"
    curve_options: dict = field(default_factory=dict)
    release_frozen_state: bool = False  # drop the optimizer state of groups that stop training (LISA)

    def __post_init__(self) -> None:
        _check_names(self.groups)
        check_int("total_steps", self.total_steps)
        check_int("warmup_steps", self.warmup_steps, 0)
        if self.lrs:  # with none, the check below names the groups that lack one
            check_rates("lrs", self.lrs)
        if not self.phases or self.phases[0][0] != 0:
            raise ValueError("a schedule's first phase must start at step 0")
        if [s for s, _ in self.phases] != sorted(s for s, _ in self.phases):
            raise ValueError("phases must be sorted by their first step")
        unknown = {g for _, gs in self.phases for g in gs} - set(self.groups)
        if unknown:
            raise ValueError(f"phases name unknown groups {sorted(unknown)}; valid: {', '.join(self.groups)}")
        missing = {g for _, gs in self.phases for g in gs} - set(self.lrs)
        if missing:
            raise ValueError(f"no learning rate for trainable group(s) {sorted(missing)}: name them, or add a "
                             "'default'")
        if self.curve not in CURVES:
            raise ValueError(f"unknown schedule {self.curve!r}; valid: {', '.join(CURVES)}")

    def trainable_at(self, step: int) -> list[str]:
        """The groups that train at ``step``, bottom to top."""
        current = self.phases[0][1]
        for start, groups in self.phases:
            if start > step:
                break
            current = groups
        return [g for g in self.groups if g in current]

    def change_steps(self) -> list[int]:
        """The steps at which the trainable set changes (after step 0)."""
        return [start for start, _ in self.phases[1:]]

    def observe(self, step: int, model, groups) -> bool:
        """Called by :func:`~layerfreeze.fit` after optimizer step ``step``; a plan that decides from training
        itself (:class:`~layerfreeze.plans.AdaptiveFreezing`) adds a phase and returns True. Fixed plans: False."""
        return False

    def multiplier(self, step: int) -> float:
        """The curve's factor at ``step``, common to all groups."""
        return lr_multiplier(step, self.total_steps, self.warmup_steps, self.curve, **self.curve_options)

    def lr_at(self, step: int, group: str) -> float:
        """``group``'s learning rate at ``step`` (0 while it is frozen)."""
        return self.lrs[group] * self.multiplier(step) if group in self.trainable_at(step) else 0.0

    def table(self, every: int = 1) -> pd.DataFrame:
        """Steps x groups: each group's learning rate (0 while frozen)."""
        import pandas as pd

        steps = range(0, self.total_steps, every)
        return pd.DataFrame([{g: self.lr_at(s, g) for g in self.groups} for s in steps], index=pd.Index(steps,
                                                                                                        name="step"))

    def __repr__(self) -> str:
        lines = [f"{self.name}: {self.total_steps} steps, {self.curve} curve"
                 + (f" with {self.warmup_steps} warm-up steps" if self.warmup_steps else "")]
        for start, groups in self.phases:
            lines.append(f"  from step {start:>5}: train {', '.join(g for g in self.groups if g in groups)}")
        lines.append("  base rates: " + ", ".join(f"{g} {self.lrs[g]:.2e}" for g in self.groups if g in self.lrs))
        return "\n".join(lines)


def resolve_rates(groups: list[str], lrs: float | dict[str, float]) -> dict[str, float]:
    """One rate per group from a single rate or a dict with an optional ``"default"``.

    >>> resolve_rates(["block.0", "head"], {"head": 1e-3, "default": 1e-4})
    {'block.0': 0.0001, 'head': 0.001}
    """
    check_rates("lrs", lrs)
    if not isinstance(lrs, dict):
        return {g: lrs for g in groups}
    unknown = set(lrs) - set(groups) - {"default"}
    if unknown:
        raise ValueError(f"learning rates name unknown groups {sorted(unknown)}; valid: {', '.join(groups)}, default")
    return {g: lrs[g] if g in lrs else lrs["default"] for g in groups if g in lrs or "default" in lrs}


def head_and_body_lrs(lr: float, head_lr: float | None) -> float | dict[str, float]:
    """The rates for a model with a new task head, which needs a larger step than the pretrained body:
    ``{"head": head_lr, "default": lr}``, or ``lr`` alone when ``head_lr`` is None.

    >>> head_and_body_lrs(1e-4, 1e-3), head_and_body_lrs(1e-4, None)
    ({'head': 0.001, 'default': 0.0001}, 0.0001)
    """
    return lr if head_lr is None else {"head": head_lr, "default": lr}


def constant_schedule(groups: list[str], trainable: list[str], lrs: float | dict[str, float], total_steps: int,
                      curve: str = "linear", warmup_steps: int = 0, name: str = "fixed") -> Schedule:
    """The same trainable set all along (plain fine-tuning, possibly with discriminative rates)."""
    rates = resolve_rates(groups, lrs)
    return Schedule(list(groups), [(0, tuple(trainable))], rates, total_steps, curve, warmup_steps, name)


def gradual_unfreezing(groups: list[str], every: int, total_steps: int, lrs: float | dict[str, float],
                       curve: str = "linear", warmup_steps: int = 0, start: int = 1) -> Schedule:
    """ULMFiT's gradual unfreezing: the top ``start`` groups train first, one more from the top every ``every``
    steps, until all do."""
    _check_steps(groups, every, total_steps)
    check_int("start", start, 1, len(groups))
    rates = resolve_rates(groups, lrs)
    phases = [(i * every, tuple(groups[len(groups) - start - i:])) for i in range(len(groups) - start + 1)]
    phases = [(s, g) for s, g in phases if s < total_steps] or phases[:1]
    return Schedule(list(groups), phases, rates, total_steps, curve, warmup_steps, "gradual unfreezing")


def chain_thaw(groups: list[str], every: int, total_steps: int, lrs: float | dict[str, float],
               curve: str = "constant") -> Schedule:
    """Chain-thaw (Felbo et al. 2017): the head alone, then each other group alone from the bottom up, then all."""
    _check_steps(groups, every, total_steps)
    rates = resolve_rates(groups, lrs)
    order = [(groups[-1],)] + [(g,) for g in groups[:-1]] + [tuple(groups)]
    phases = [(i * every, g) for i, g in enumerate(order) if i * every < total_steps]
    return Schedule(list(groups), phases, rates, total_steps, curve, 0, "chain-thaw")


def _check_steps(groups: list[str], every: int, total_steps: int) -> None:
    _check_names(groups)
    check_int("every", every)
    check_int("total_steps", total_steps)
