"""Strategies: what trains over a run, in one value, and the one step that sets a model up for it.

Each word has one meaning across the course (notebooks, layer picker, command line):

* a **preset** names a fixed trainable set by its shape: ``head``, ``top`` k blocks (+ head), ``bottom`` k blocks
  (+ head), ``all`` or ``bitfit`` (biases + head);
* a **plan** (:class:`~layerfreeze.core.plans.Plan`) lists a fixed trainable set explicitly, with its reason;
* a **schedule** (:class:`~layerfreeze.core.schedules.Schedule`) says what trains at each step of a run. A strategy
  holds the recipe for one, :class:`Gradual` (ULMFiT), :class:`Lisa` or :class:`Adaptive`, which
  :meth:`Strategy.prepare` builds for the run's length;
* an **adapter** adds parameters to train beside a frozen body: :class:`Lora` or :class:`Expansion` (LLaMA Pro).

A :class:`Strategy` holds a preset (the default, ``all``), or one of a plan, a schedule or an adapter, and its
learning rates. :meth:`Strategy.prepare` is the one way in: it returns the model to train (a LoRA model wraps the one
given; block expansion grows it) and the schedule :func:`~layerfreeze.core.training.fit` follows (None where the
trainable set is fixed).

>>> from layerfreeze import tiny_model
>>> model, schedule = Strategy("top-2", "top", k=2).prepare(tiny_model("bert", num_layers=4), total_steps=10)
>>> [g.name for g in layer_groups(model) if g.trainable], schedule
(['block.2', 'block.3', 'head'], None)
>>> _, schedule = Strategy("ULMFiT", schedule=Gradual()).prepare(tiny_model("bert", num_layers=2), 12)
>>> schedule.trainable_at(0), schedule.change_steps()
(['head'], [1, 2, 3])
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from .adapters import add_lora
from .evaluation import is_causal_lm
from .freezing import FreezeReport, bitfit, freeze_to, train_only
from .layers import layer_groups, num_blocks
from .plans import Plan, adaptive_freezing, apply_plan, expand_blocks, lisa
from .schedules import Schedule, gradual_unfreezing, head_and_body_lrs

PRESETS = ("head", "top", "bottom", "all", "bitfit")


# --- schedules: what trains when ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Gradual:
    """ULMFiT's gradual unfreezing: the head first, then one more group downwards every ``every`` steps. By default
    ``every`` is chosen so that everything trains by half-way through the run."""

    every: int | None = None

    def build(self, names: list[str], total_steps: int, rates) -> Schedule:
        return gradual_unfreezing(names, self.every or max(1, total_steps // (2 * len(names))), total_steps, rates)


@dataclass(frozen=True)
class Lisa:
    """LISA (Pan et al. 2024): every ``every`` steps, ``gamma`` blocks drawn at random train with the embeddings and
    the head (:func:`~layerfreeze.core.plans.lisa`)."""

    gamma: int = 2
    every: int = 20
    seed: int = 0

    def build(self, names: list[str], total_steps: int, rates) -> Schedule:
        return lisa(names, self.gamma, self.every, total_steps, rates, seed=self.seed)


@dataclass(frozen=True)
class Adaptive:
    """Adaptive freezing (AutoFreeze-style): blocks freeze bottom-up once their update norm stops changing
    (:func:`~layerfreeze.core.plans.adaptive_freezing`). The embeddings stay frozen from the start, so the feature
    cache can take over the frozen prefix as it grows."""

    interval: int = 10
    window: int = 3
    threshold: float = 0.05

    def build(self, names: list[str], total_steps: int, rates) -> Schedule:
        return adaptive_freezing(names, total_steps, rates, interval=self.interval, window=self.window,
                                 threshold=self.threshold, trainable=names[1:])


# --- adapters: new parameters beside a frozen body ------------------------------------------------------------------

@dataclass(frozen=True)
class Lora:
    """Low-rank adapters of ``rank`` on every projection inside the blocks (alpha = 2 x rank), with the head."""

    rank: int = 8


@dataclass(frozen=True)
class Expansion:
    """Block expansion (LLaMA Pro): a new block that computes the identity after every ``every`` original blocks;
    only the new blocks and the head train."""

    every: int


SCHEDULES = (Gradual, Lisa, Adaptive)
ADAPTERS = (Lora, Expansion)


def _check_part(strategy: str, argument: str, value, kinds: tuple) -> None:
    if value is not None and not isinstance(value, kinds):
        valid = ", ".join(f"lf.{kind.__name__}(...)" for kind in kinds)
        raise ValueError(f"strategy {strategy!r}: {argument} must be one of {valid} or None; got {value!r}")


@dataclass
class Strategy:
    """What trains (a ``preset`` with its block count ``k``, or a ``plan``, a ``schedule`` or an ``adapter``), how
    fast (``lr`` for the body, ``head_lr`` for the new head, which needs a larger step), and from what (pretrained,
    or random weights if ``from_scratch``).

    >>> Strategy("LoRA", adapter=Lora(rank=8)).learning_rates
    {'head': 0.001, 'default': 0.0001}
    >>> Strategy("odd", adapter="lora")
    Traceback (most recent call last):
    ValueError: strategy 'odd': adapter must be one of lf.Lora(...), lf.Expansion(...) or None; got 'lora'
    """

    name: str
    preset: str = "all"
    k: int | None = None
    lr: float = 1e-4
    head_lr: float | None = 1e-3
    from_scratch: bool = False
    plan: Plan | None = None
    schedule: Gradual | Lisa | Adaptive | None = None
    adapter: Lora | Expansion | None = None

    def __post_init__(self):
        if self.preset not in PRESETS:
            raise ValueError(f"strategy {self.name!r}: unknown preset {self.preset!r}; valid: {', '.join(PRESETS)}")
        _check_part(self.name, "plan", self.plan, (Plan,))
        _check_part(self.name, "schedule", self.schedule, SCHEDULES)
        _check_part(self.name, "adapter", self.adapter, ADAPTERS)
        chosen = [part for part in ("plan", "schedule", "adapter") if getattr(self, part) is not None]
        if len(chosen) > 1:
            raise ValueError(f"strategy {self.name!r} sets {' and '.join(chosen)}: give one of plan, schedule or "
                             "adapter (or none, for a preset)")
        if chosen and (self.preset != "all" or self.k is not None):
            raise ValueError(f"strategy {self.name!r}: preset and k apply only without a {chosen[0]}")

    @property
    def learning_rates(self) -> float | dict[str, float]:
        """What :func:`~layerfreeze.core.training.fit` takes as ``lr``."""
        return head_and_body_lrs(self.lr, self.head_lr)

    @property
    def fixed(self) -> bool:
        """Whether one trainable set holds for the whole run (a preset, a plan or an adapter; not a schedule)."""
        return self.schedule is None

    def describe(self) -> dict:
        """The strategy as plain data, for a results row: each part as its type and settings."""
        part = lambda value: None if value is None else {"kind": type(value).__name__, **vars(value)}  # noqa: E731
        return {"name": self.name, "preset": self.preset, "k": self.k, "lr": self.lr, "head_lr": self.head_lr,
                "from_scratch": self.from_scratch, "plan": None if self.plan is None else self.plan.name,
                "schedule": part(self.schedule), "adapter": part(self.adapter)}

    def apply(self, model: nn.Module, eval_frozen: bool = True) -> FreezeReport:
        """Set a fixed trainable set (the preset, or the plan) on ``model``; frozen groups stay in eval mode unless
        ``eval_frozen=False``. A schedule or an adapter needs the run's length or new parameters: use
        :meth:`prepare`."""
        if self.plan is not None:
            return apply_plan(model, self.plan, eval_frozen=eval_frozen)
        if self.schedule is not None or self.adapter is not None:
            raise ValueError(f"strategy {self.name!r} trains with a schedule or an adapter, which "
                             "strategy.prepare(model, total_steps) sets up")
        return apply_preset(model, self.preset, self.k, eval_frozen=eval_frozen)

    def expand(self, model: nn.Module) -> list[str]:
        """For block expansion, grow ``model`` (once) and return the new groups' names; otherwise do nothing."""
        new = [g.name for g in layer_groups(model) if any(".expansion_gate." in n for n in g.parameters)]
        if isinstance(self.adapter, Expansion) and not new:
            new = expand_blocks(model, self.adapter.every)
        return new

    def prepare(self, model: nn.Module, total_steps: int) -> tuple[nn.Module, Schedule | None]:
        """Set ``model`` up for this strategy; returns the model to train and the schedule ``fit`` follows (None
        for a fixed trainable set). A schedule decides what trains from step 0."""
        names = [g.name for g in layer_groups(model)]
        if self.schedule is not None:
            schedule = self.schedule.build(names, total_steps, self.learning_rates)
            train_only(model, *schedule.trainable_at(0), eval_frozen=True)
            return model, schedule
        if isinstance(self.adapter, Lora):
            return add_lora(model, self.adapter.rank), None
        if isinstance(self.adapter, Expansion):
            head = () if is_causal_lm(model) else ("head",)  # LLaMA Pro trains only the new blocks of an LM
            train_only(model, *self.expand(model), *head, eval_frozen=True)
            return model, None
        self.apply(model)
        return model, None


def apply_preset(model: nn.Module, preset: str, k: int | None = None, eval_frozen: bool = True,
                 untie: bool = False) -> FreezeReport:
    """Set the trainable set by preset: ``head`` only, ``top`` k blocks + head, ``bottom`` k blocks + head,
    ``all``, or ``bitfit`` (biases + head). Frozen groups stay in eval mode unless ``eval_frozen=False``.
    ``untie=True`` gives a head tied to the input embedding a copy of its own (see
    :func:`~layerfreeze.core.freezing.freeze`)."""
    groups = layer_groups(model)
    blocks = num_blocks(model)
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; valid presets: {', '.join(PRESETS)}")
    if preset in ("top", "bottom"):
        if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= blocks:
            raise ValueError(f"preset {preset!r} needs k, the number of blocks, from 1 to {blocks}; got {k!r}")
    elif k is not None:
        raise ValueError(f"preset {preset!r} takes no k (only 'top' and 'bottom' do)")
    if preset == "head":
        return freeze_to(model, -1, groups, eval_frozen=eval_frozen, untie=untie)
    if preset == "top":
        return freeze_to(model, -(k + 1), groups, eval_frozen=eval_frozen, untie=untie)
    if preset == "bottom":
        return train_only(model, slice(1, 1 + k), "head", groups=groups, eval_frozen=eval_frozen, untie=untie)
    if preset == "all":
        return freeze_to(model, 0, groups, eval_frozen=eval_frozen, untie=untie)
    return bitfit(model, groups=groups, untie=untie)
