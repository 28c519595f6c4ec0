"""Step times that survive a busy machine, and the ideal step time they are measured against.

A shared machine slows a run down in bursts. Timing configuration A, then configuration B, lets a burst land on one
of them and turns noise into a "result". The timer here instead

* records the time of every step (:class:`StepTimer`: the gaps between marks; on CUDA, events read after one
  synchronisation) and drops the warm-up steps (:func:`steady_step_seconds`, the median of the rest);
* runs the configurations interleaved, A, B, A, B ... (:func:`interleave`), so that a burst hits both members of a
  pair, and reports each ratio as the median of the per-pair ratios with a confidence interval for that median
  (:class:`Spread`: order statistics, no assumption about the noise's distribution);
* adds pairs until every interval is narrow (``tolerance``) or a time cap is reached, and marks a ratio whose
  interval stays wide as *noisy*: it is reported, and kept out of verdicts.

A ratio of two positive times is positive, and one taken within a pair cannot be pushed below 1 by a burst that hit
only one run, which subtracting two separately timed runs could (a "speed-up" of -0.86 once).

The ideal: :func:`profile_groups` measures once how long each layer group's forward and backward pass take on this
machine, and the step cost model (:func:`layerfreeze.core.costs.step_seconds`) adds up what a step with the current
trainable set must run. A measured time divided by that ideal says how close the code comes to what the arithmetic
allows.
"""

from __future__ import annotations

import copy
import math
import statistics
import time
from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import nn

from ..base.data import real_lengths
from ..core.costs import GroupCosts
from ..core.evaluation import is_causal_lm
from ..core.layers import LayerGroup, layer_groups
from ..base.runtime import autocast, resolve_precision

TOLERANCE = 0.10  # a ratio whose interval is wider than this, relative to its median, is noisy
CONFIDENCE = 0.90  # what a Spread's interval covers from 5 samples on (with fewer, its full range covers less)

# --- per-step times ------------------------------------------------------------------------------------------------


class StepTimer:
    """Call :meth:`mark` at the end of every step; :meth:`seconds` gives the time of each step after the first
    (the gaps between consecutive marks). On CUDA each mark records an event on the current stream, so the steps
    run without a synchronisation, and one synchronisation happens when the times are read. Elsewhere ``clock``
    is read: wall time by default; ``time.process_time`` counts only this process's CPU time, which other jobs
    on the machine barely change (with one torch thread, so that no thread spins waiting for another).

    >>> ticks = iter([0.0, 1.0, 1.5, 2.5])
    >>> timer = StepTimer(clock=lambda: next(ticks))
    >>> for _ in range(4):
    ...     timer.mark()
    >>> timer.seconds()
    [1.0, 0.5, 1.0]
    """

    def __init__(self, device: torch.device | str | None = None, clock: Callable[[], float] = time.perf_counter):
        self.cuda = device is not None and torch.device(device).type == "cuda"
        self.clock = clock
        self.marks: list = []

    def mark(self) -> None:
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            self.marks.append(event)
        else:
            self.marks.append(self.clock())

    def seconds(self) -> list[float]:
        if self.cuda:
            torch.cuda.synchronize()
            return [a.elapsed_time(b) / 1000 for a, b in zip(self.marks, self.marks[1:])]
        return [b - a for a, b in zip(self.marks, self.marks[1:])]


def steady_step_seconds(step_seconds: list[float], warmup: int = 1) -> float:
    """The median step time after dropping the first ``warmup`` steps (kernels loading, allocator warming up).

    >>> steady_step_seconds([9.0, 1.0, 1.2, 0.9, 5.0], warmup=1)
    1.1
    """
    if len(step_seconds) <= warmup:
        raise ValueError(f"need more than warmup={warmup} step times to measure a steady step; "
                         f"got {len(step_seconds)}: run more steps")
    return statistics.median(step_seconds[warmup:])


# --- ratios with their range ---------------------------------------------------------------------------------------


def _interval_rank(count: int) -> int:
    """The largest ``k`` for which the ``k``-th smallest and ``k``-th largest of ``count`` samples enclose their
    median with probability at least :data:`CONFIDENCE`, whatever the distribution: the median falls outside when
    fewer than ``k`` samples lie on one side of it, a binomial(``count``, 1/2) tail. ``1`` (the full range) when no
    ``k`` reaches the confidence.

    >>> [_interval_rank(n) for n in (3, 5, 8, 12, 20)]
    [1, 1, 2, 3, 6]
    """
    k = 1
    while k + 1 <= (count + 1) // 2 and _coverage(count, k + 1) >= CONFIDENCE:
        k += 1
    return k


def _coverage(count: int, k: int) -> float:
    return 1 - 2 * sum(math.comb(count, i) for i in range(k)) / 2 ** count


@dataclass(frozen=True)
class Spread:
    """A median over ``count`` samples with a confidence interval for it (``low``, ``high``): order statistics
    that enclose the median with probability :attr:`coverage`, at least 90% from 5 samples on. With fewer samples
    the interval is their full range, which covers less (75% with 3); two runs agree when their intervals overlap.

    >>> s = Spread.of([1.9, 2.0, 2.1, 2.0, 3.0])
    >>> s.median, s.low, s.high, round(s.width, 3), round(s.coverage, 3)
    (2.0, 1.9, 3.0, 0.55, 0.938)
    """

    median: float
    low: float
    high: float
    count: int

    @classmethod
    def of(cls, values: list[float]) -> "Spread":
        if not values:
            raise ValueError("Spread.of needs at least one value")
        if len(values) == 1:
            return cls(values[0], values[0], values[0], 1)
        ordered, k = sorted(values), _interval_rank(len(values))
        return cls(statistics.median(ordered), ordered[k - 1], ordered[-k], len(values))

    @property
    def width(self) -> float:
        """The interval's width relative to the median."""
        return (self.high - self.low) / abs(self.median) if self.median else float("inf")

    @property
    def coverage(self) -> float:
        """How likely the interval is to enclose the true median (1 for a single sample, which has no spread)."""
        return _coverage(self.count, _interval_rank(self.count)) if self.count > 1 else 1.0

    def overlaps(self, other: "Spread") -> bool:
        """Whether the two intervals share a value: the two measurements agree within their uncertainty."""
        return self.low <= other.high and other.low <= self.high

    def __format__(self, spec: str) -> str:
        spec = spec or ".2f"
        return f"{self.median:{spec}} [{self.low:{spec}}-{self.high:{spec}}]"


@dataclass
class Interleaved:
    """What :func:`interleave` measured: each configuration's steady step time per round, and the ratios asked for
    (median of the per-round ratios, with their range), each marked noisy when its range stayed wider than the
    tolerance."""

    step_seconds: dict[str, list[float]]
    ratios: dict[tuple[str, str], Spread]
    noisy: dict[tuple[str, str], bool]
    rounds: int
    seconds: float
    extras: dict[str, list] = field(default_factory=dict)

    def step(self, name: str) -> Spread:
        return Spread.of(self.step_seconds[name])


def interleave(runs: dict[str, Callable[[], list[float]]], ratios: list[tuple[str, str]], *, warmup: int = 1,
               min_rounds: int = 3, max_rounds: int = 30, max_seconds: float = 60.0, tolerance: float = TOLERANCE,
               clock: Callable[[], float] = time.perf_counter) -> Interleaved:
    """Time configurations in rounds, each round running every configuration once in turn (A, B, A, B ...).

    Each of ``runs`` runs one configuration from scratch and returns its per-step times (e.g. a
    :class:`StepTimer`'s); the steady step time of that run is their median after ``warmup`` steps. For each
    ``(a, b)`` in ``ratios`` the ratio ``a / b`` is taken within each round. Rounds continue from ``min_rounds``
    until every ratio's interval (:class:`Spread`) is within ``tolerance`` of its median, or ``max_rounds`` or
    ``max_seconds`` is reached; a ratio still wider than that is marked noisy.

    >>> clock = [0.0]
    >>> def run(seconds):  # a fake configuration: 4 steps of ``seconds`` each, on a fake clock
    ...     def steps():
    ...         clock[0] += 4 * seconds
    ...         return [seconds] * 4
    ...     return steps
    >>> result = interleave({"a": run(0.3), "b": run(0.1)}, [("a", "b")], clock=lambda: clock[0])
    >>> round(result.ratios["a", "b"].median, 6), result.noisy["a", "b"], result.rounds
    (3.0, False, 3)
    """
    unknown = {name for pair in ratios for name in pair} - set(runs)
    if unknown:
        raise ValueError(f"ratios name configurations that are not in runs: {sorted(unknown)}; runs: {list(runs)}")
    start = clock()
    step_seconds: dict[str, list[float]] = {name: [] for name in runs}
    rounds = 0
    while True:
        for name, run in runs.items():
            step_seconds[name].append(steady_step_seconds(run(), warmup))
        rounds += 1
        spreads = {(a, b): Spread.of([x / y for x, y in zip(step_seconds[a], step_seconds[b])]) for a, b in ratios}
        narrow = all(s.width <= tolerance for s in spreads.values())
        if rounds >= max_rounds or (rounds >= min_rounds and (narrow or clock() - start >= max_seconds)):
            break
    return Interleaved(step_seconds, spreads, {pair: s.width > tolerance for pair, s in spreads.items()}, rounds,
                       clock() - start)


# --- the ideal: per-group costs ------------------------------------------------------------------------------------


def _boundary_hooks(groups: list[LayerGroup], timer: StepTimer) -> list:
    """Marks at the end of the embeddings and of every block (forward), and when the gradient reaches each of those
    outputs (backward). The hidden state entering ``block.0`` is the embeddings' output, whatever its modules."""
    blocks = [next(iter(g.modules.values())) for g in groups if g.kind == "block"]

    def on_gradient(grad):
        timer.mark()

    def watch(tensor):
        timer.mark()
        if tensor.requires_grad:
            tensor.register_hook(on_gradient)

    def before_first(module, args, kwargs):
        watch(args[0] if args else kwargs["hidden_states"])

    def after_block(module, args, output):
        watch(output[0] if isinstance(output, tuple) else output)

    handles = [blocks[0].register_forward_pre_hook(before_first, with_kwargs=True)]
    return handles + [block.register_forward_hook(after_block) for block in blocks]


def _profile_pass(model: nn.Module, batch: tuple, steps: int, warmup: int, device, precision: str, clock,
                  optimizer=None) -> list[list[float]]:
    """Per-step gaps between marks: forward (embeddings, blocks, head), then backward (head, blocks from the top,
    embeddings), then the optimizer if one is given."""
    groups = layer_groups(model)
    per_step = []
    for step in range(warmup + steps):
        timer = StepTimer(device, clock)
        handles = _boundary_hooks(groups, timer)
        try:
            timer.mark()
            with autocast(precision, device):
                loss = model(input_ids=batch[0], attention_mask=batch[1], labels=batch[2]).loss
            timer.mark()
            if loss.requires_grad:
                loss.backward()
                timer.mark()
        finally:
            for handle in handles:
                handle.remove()
        if optimizer is not None and loss.requires_grad:
            torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], 1.0)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            timer.mark()
        else:
            model.zero_grad(set_to_none=True)
        if step >= warmup:
            per_step.append(timer.seconds())
    return [statistics.median(column) for column in zip(*per_step)]


def profile_groups(model: nn.Module, batch: tuple[torch.Tensor, ...], steps: int = 5, warmup: int = 2,
                   precision: str = "auto", clock: Callable[[], float] = time.perf_counter) -> GroupCosts:
    """Measure each group's forward and backward time once, on a copy of ``model`` and one training ``batch``
    (``(input_ids, attention_mask, labels)``, without the padding columns after its widest row, as ``fit`` trains):
    once with everything trainable, once with only the embeddings
    trainable (so every block above passes input gradients only), once with nothing trainable (a frozen prefix's
    forward, which records no graph). Medians over ``steps`` after ``warmup``; precision
    as :func:`~layerfreeze.fit` resolves it (bf16 or fp16 autocast on CUDA, fp32 on the CPU); ``clock`` as
    :class:`StepTimer`'s (on the CPU, ``time.process_time`` counts this process's CPU time only).

    >>> from layerfreeze import tiny_model
    >>> data = (torch.randint(5, 99, (4, 6)), torch.ones(4, 6, dtype=torch.long), torch.zeros(4, dtype=torch.long))
    >>> costs = profile_groups(tiny_model("bert", num_layers=2), data, steps=1, warmup=0)
    >>> list(costs.forward), costs.optimizer > 0
    (['embeddings', 'block.0', 'block.1', 'head'], True)
    """
    model = copy.deepcopy(model)
    device = next(model.parameters()).device
    precision = resolve_precision(precision, device)
    width = int(real_lengths(batch[1]).max())
    batch = tuple((t[:, :width] if t.ndim == 2 else t).to(device) for t in batch)  # a causal LM's labels too
    model.train()
    names = [g.name for g in layer_groups(model)]
    blocks = names[1:-1]
    model.requires_grad_(True)
    try:  # the fused kernel, as fit's; torch < 2.4 has none on the CPU
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-9, fused=True)
    except RuntimeError:
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-9)
    full = _profile_pass(model, batch, steps, warmup, device, precision, clock, optimizer)
    # marks: start | after embeddings, after each block | end of forward | backward start | gradient at each block's
    # output (top first) and at the embeddings' output | end of backward | after the optimizer
    n = len(blocks)
    forward = dict(zip(names, full[: n + 2]))
    backward = dict(zip(names, full[n + 2: 2 * n + 4][::-1]))
    model.requires_grad_(False)
    for param in layer_groups(model)[0].parameters.values():
        param.requires_grad_(True)
    passing = _profile_pass(model, batch, steps, warmup, device, precision, clock)
    backward_input = dict(zip(names, passing[n + 2: 2 * n + 4][::-1]))
    model.requires_grad_(False)
    frozen = dict(zip(names, _profile_pass(model, batch, steps, warmup, device, precision, clock)))
    return GroupCosts(forward, backward, backward_input, full[-1], sum(p.numel() for p in model.parameters()),
                      frozen)


# --- throughput: tokens per second and the fraction of the device's peak -------------------------------------------

# bf16 dense tensor-core peaks from NVIDIA's datasheets (TFLOP/s, without sparsity), matched against the name torch
# reports, most specific first. These are datasheet numbers, never measured here. T4 has no bf16: its fp16 peak.
DATASHEET_PEAK_TFLOPS = (
    ("H100 PCIe", 756, "bf16"), ("H100 NVL", 835, "bf16"), ("H100", 989, "bf16"),
    ("H200 NVL", 835, "bf16"), ("H200", 989, "bf16"), ("A100", 312, "bf16"), ("L40S", 362, "bf16"),
    ("L4", 121, "bf16"), ("A10", 125, "bf16"), ("T4", 65, "fp16"),
)


def _matmul_weights(group: LayerGroup) -> tuple[int, int]:
    """Weights of ``group`` that multiply activations (linear layers; embedding tables are looked up, not
    multiplied): ``(total, trainable)``."""
    seen, total, trainable = set(), 0, 0
    for module in group.modules.values():
        for sub in module.modules():
            weight = getattr(sub, "weight", None)
            if id(sub) in seen or weight is None or weight.ndim != 2 or isinstance(sub, nn.Embedding):
                continue
            seen.add(id(sub))
            total += weight.numel()
            trainable += weight.numel() if weight.requires_grad else 0
    return total, trainable


def step_flops(model: nn.Module, batch_size: int, seq_len: int, cache_prefix: bool = False) -> float:
    """The matrix arithmetic of one training step with ``model``'s current trainable set, in FLOPs: 2 per weight
    and token forward through every group that runs (a classifier's head per sequence: it reads one token; a causal LM's head per token), and backward 4
    per weight of a trainable group (input and weight gradients), 2 for a frozen group above the lowest trainable
    one (input gradients only) and for the lowest trainable group (weight gradients only). Embedding tables and
    attention's own products (about ``4 * seq_len / (24 * width)`` of a block, 1.4% for MiniLM at 32 tokens) are
    left out, as in the usual 6 x parameters x tokens count. A block of ``W`` weights, all trainable, at
    ``B x T`` tokens costs ``6 * W * B * T``:

    >>> from layerfreeze.base.models import tiny_model
    >>> model = tiny_model("bert", num_layers=2)
    >>> head = step_flops(model, 1, 1) - 2 * 6 * _matmul_weights(layer_groups(model)[1])[0]
    >>> step_flops(model, 4, 8) == 4 * 8 * 2 * 6 * _matmul_weights(layer_groups(model)[1])[0] + 4 * head
    True
    """
    groups = layer_groups(model)
    trains = [any(p.requires_grad for p in g.parameters.values()) for g in groups]
    if not any(trains):
        raise ValueError("the model has no trainable parameter: no training step to count")
    lowest = trains.index(True)
    causal, flops = is_causal_lm(model), 0.0
    for i, group in enumerate(groups):
        if cache_prefix and i < lowest:
            continue
        weights, _ = _matmul_weights(group)
        per_weight = 2 if i < lowest else 4 if i == lowest and i > 0 else 6 if trains[i] else 4
        per_token = group.kind != "head" or causal  # a classifier's head reads one token; an LM's head every one
        flops += per_weight * weights * (batch_size * seq_len if per_token else batch_size)
    return flops


def matmul_flops_per_second(size: int = 2048, repeats: int = 3, device: torch.device | str = "cpu",
                            clock: Callable[[], float] = time.process_time) -> float:
    """The best FLOP/s of ``repeats`` fp32 ``size x size`` matrix products on ``device``, timed by ``clock``
    (this process's CPU time by default, which other jobs barely change): the practical peak of a CPU with
    torch's current thread count, which a training step can at best approach.

    >>> matmul_flops_per_second(size=64, repeats=2) > 0
    True
    """
    if size < 1 or repeats < 1:
        raise ValueError(f"size={size!r} and repeats={repeats!r} must be positive integers")
    a, b = torch.randn(size, size, device=device), torch.randn(size, size, device=device)
    torch.mm(a, b)  # the first product loads the kernels
    best = float("inf")
    for _ in range(repeats):
        start = clock()
        torch.mm(a, b)
        best = min(best, clock() - start)
    return 2 * size ** 3 / max(best, 1e-9)


def device_peak(device: torch.device | str, clock: Callable[[], float] = time.process_time) -> tuple[float | None, str]:
    """``(FLOP/s, where the number comes from)`` for the fraction of peak: on CUDA the datasheet's dense peak of a
    known card (:data:`DATASHEET_PEAK_TFLOPS`; ``None`` for another card), on the CPU a large matrix product
    measured here (:func:`matmul_flops_per_second`)."""
    device = torch.device(device)
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        for key, tflops, precision in DATASHEET_PEAK_TFLOPS:
            if key in name:
                return tflops * 1e12, f"datasheet {precision} dense peak of the {key}: {tflops} TFLOP/s"
        return None, f"no datasheet peak for {name}"
    flops = matmul_flops_per_second(clock=clock)
    return flops, (f"measured: the best of 3 fp32 2048 x 2048 matrix products on this CPU with "
                   f"{torch.get_num_threads()} thread(s), {flops / 1e9:.1f} GFLOP/s")
