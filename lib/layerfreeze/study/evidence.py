"""How the course states a finding: an interval, a verdict, whether training had finished, and a fair learning rate.

* :func:`correct_per_example`: which test examples a model gets right, the raw material of every interval;
* :func:`difference_interval`: a bootstrap interval for a difference of accuracies, over test examples and, where
  there are several, over seeds;
* :func:`verdict`: *holds*, *does not hold* or *within noise*, from an interval and the claim's threshold;
* :func:`finding`: a verdict that also says *untestable here* when the run cannot decide the claim (a curve still
  rising beyond its noise, or both sides at the task's ceiling), with the measured number that says so;
* :func:`still_improving` and :func:`curve_shape`: whether a validation curve was still rising when training stopped;
* :func:`choose_learning_rate`: each method's rate from the same small grid, chosen on its own validation data.

>>> import numpy as np
>>> a, b = np.r_[np.ones(90), np.zeros(10)], np.r_[np.ones(60), np.zeros(40)]
>>> interval = difference_interval(a, b)
>>> verdict(interval), interval.low > 0.15
('holds', True)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
from torch import nn

from ..base.data import as_tensors
from ..core.evaluation import score_examples

UNTESTABLE = "untestable here"  # a ceiling reached, or a curve still rising: the run cannot decide the claim
VERDICTS = ("holds", "does not hold", "within noise", UNTESTABLE)
# What an interval covers: which test examples were drawn (one run), run-to-run variation (one accuracy per seed),
# or both at once (per-example scores of several seeds, resampled together).
TEST_SAMPLE, ACROSS_SEEDS, SEEDS_AND_TEST_SAMPLE = "test sample", "across seeds", "over seeds and test sample"


# --- which examples a model gets right -----------------------------------------------------------------------------

def correct_per_example(model: nn.Module, data, batch_size: int | None = None) -> np.ndarray:
    """A 0/1 array, one entry per example of ``data`` (``(input_ids, attention_mask, labels)``): 1 where the model's
    prediction is right, in full precision. Its mean is :func:`~layerfreeze.evaluate`'s accuracy (the same loop,
    :func:`~layerfreeze.core.evaluation.score_examples`; ``evaluate`` may run in bf16 on a GPU)."""
    if len(as_tensors(data)[2]) == 0:
        return np.zeros(0)
    return score_examples(model, data, batch_size, precision="fp32")[0].numpy().astype(float)


# --- intervals -----------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Interval:
    """An estimate with a bootstrap interval (``level``, two-sided), in the units of the data (accuracy fractions)."""

    estimate: float
    low: float
    high: float
    level: float = 0.95
    kind: str = TEST_SAMPLE  # what the interval resamples: TEST_SAMPLE, ACROSS_SEEDS or SEEDS_AND_TEST_SAMPLE
    seeds: int = 1

    def points(self) -> str:
        """In accuracy points: ``+3.2 points (95% CI +1.0 to +5.4)``; an interval across seeds says so and over
        how many (``95% CI across 5 seeds``)."""
        over = "" if self.kind == TEST_SAMPLE else f" {self.kind.replace('seeds', f'{self.seeds} seeds', 1)}"
        return (f"{self.estimate * 100:+.1f} points ({self.level:.0%} CI{over} {self.low * 100:+.1f} to "
                f"{self.high * 100:+.1f})")


def _as_runs(values) -> np.ndarray:
    runs = np.asarray(values, dtype=float)
    if runs.ndim == 1:
        runs = runs[None, :]
    if runs.ndim != 2 or runs.shape[1] == 0:
        raise ValueError(f"values must be [examples] or [seeds, examples] with at least one example; got shape "
                         f"{np.shape(values)}")
    return runs


def difference_interval(a, b=None, *, level: float = 0.95, resamples: int = 2000, seed: int = 0) -> Interval:
    """Bootstrap interval for ``mean(a) - mean(b)``, paired: the same test examples (and seeds) on both sides.

    ``a`` and ``b`` are per-example scores (0/1 correctness, or per-example forgetting), shaped ``[examples]`` or
    ``[seeds, examples]``; with several seeds both seeds and examples are resampled. Without ``b``, the interval is
    for ``mean(a)`` itself.

    >>> difference_interval([1, 1, 0, 1], [1, 1, 0, 1]).points()
    '+0.0 points (95% CI +0.0 to +0.0)'
    >>> difference_interval([[1, 0]], [[1, 1, 0]])
    Traceback (most recent call last):
    ValueError: a and b must have the same shape, [seeds, examples]; got (1, 2) and (1, 3)
    """
    if not 0 < level < 1:
        raise ValueError(f"level must be between 0 and 1; got {level!r}")
    runs_a = _as_runs(a)
    runs_b = np.zeros_like(runs_a) if b is None else _as_runs(b)
    if runs_a.shape != runs_b.shape:
        raise ValueError(f"a and b must have the same shape, [seeds, examples]; got {runs_a.shape} and {runs_b.shape}")
    paired = runs_a - runs_b
    n_seeds, n_examples = paired.shape
    generator = np.random.default_rng(seed)
    seeds = generator.integers(0, n_seeds, (resamples, n_seeds)) if n_seeds > 1 else np.zeros((resamples, 1), int)
    examples = generator.integers(0, n_examples, (resamples, n_examples))
    means = np.array([paired[seeds[r]][:, examples[r]].mean() for r in range(resamples)])
    tail = (1 - level) / 2
    low, high = np.quantile(means, [tail, 1 - tail])
    kind = TEST_SAMPLE if n_seeds == 1 else SEEDS_AND_TEST_SAMPLE
    return Interval(float(paired.mean()), float(low), float(high), level, kind, n_seeds)


def seed_interval(a: Sequence[float], b: Sequence[float] | None = None, *, level: float = 0.95) -> Interval:
    """Interval across seeds for ``mean(a - b)``: ``a`` and ``b`` hold one accuracy per seed (paired: seed i of
    both sides shares its data order and initialisation), the interval Student's t over the seeds. It covers
    run-to-run variation, not the test sample; :func:`difference_interval` covers the test sample.

    >>> interval = seed_interval([0.90, 0.92, 0.91], [0.85, 0.86, 0.86])
    >>> interval.kind, interval.seeds, round(interval.estimate, 3), interval.low > 0
    ('across seeds', 3, 0.053, True)
    >>> seed_interval([0.9])
    Traceback (most recent call last):
    ValueError: a needs at least 2 seeds for an interval across seeds; got 1
    """
    from scipy import stats

    if not 0 < level < 1:
        raise ValueError(f"level must be between 0 and 1; got {level!r}")
    a = np.asarray(a, dtype=float)
    b = np.zeros_like(a) if b is None else np.asarray(b, dtype=float)
    if a.ndim != 1 or a.shape != b.shape:
        raise ValueError(f"a and b must hold one value per seed, the same number each; got {np.shape(a)} and "
                         f"{np.shape(b)}")
    if len(a) < 2:
        raise ValueError(f"a needs at least 2 seeds for an interval across seeds; got {len(a)}")
    paired = a - b
    half = stats.t.ppf(0.5 + level / 2, len(paired) - 1) * paired.std(ddof=1) / len(paired) ** 0.5
    mean = float(paired.mean())
    return Interval(mean, mean - float(half), mean + float(half), level, ACROSS_SEEDS, len(paired))


def effect_size(a: Sequence[float], b: Sequence[float]) -> str:
    """The size of a difference of accuracies beside its verdict: in points, and standardised. Cohen's h for two
    accuracies (one seed each); Cohen's d of the paired per-seed differences for several seeds.

    >>> effect_size([0.9], [0.8]), effect_size([0.90, 0.92, 0.91], [0.85, 0.86, 0.86])
    ("+10.0 points, Cohen's h 0.28", "+5.3 points, Cohen's d 9.24 over 3 seeds")
    """
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if a.shape != b.shape or a.ndim != 1 or len(a) == 0:
        raise ValueError(f"a and b must hold one accuracy per seed, the same number each; got {a.shape} and {b.shape}")
    points = f"{(a - b).mean() * 100:+.1f} points"
    if len(a) == 1:
        h = 2 * np.arcsin(np.sqrt(a[0])) - 2 * np.arcsin(np.sqrt(b[0]))
        return f"{points}, Cohen's h {h:.2f}"
    spread = (a - b).std(ddof=1)
    d = (a - b).mean() / spread if spread > 0 else float("inf") * np.sign((a - b).mean())
    return f"{points}, Cohen's d {d:.2f} over {len(a)} seeds"


def verdict(interval: Interval, threshold: float = 0.0) -> str:
    """A claim that the difference exceeds ``threshold``: *holds* when the whole interval lies above it, *does not
    hold* when the whole interval lies below it, *within noise* when the interval straddles it.

    >>> [verdict(Interval(0.05, low, high)) for low, high in ((0.02, 0.08), (-0.08, -0.02), (-0.02, 0.04))]
    ['holds', 'does not hold', 'within noise']
    """
    if interval.low > threshold:
        return "holds"
    if interval.high < threshold:
        return "does not hold"
    return "within noise"


def direction(interval: Interval) -> str:
    """Which way a difference went: *higher* or *lower* when the whole interval lies on one side of zero, else
    *within noise*.

    >>> [direction(Interval(0.0, low, high)) for low, high in ((0.01, 0.03), (-0.03, -0.01), (-0.01, 0.02))]
    ['higher', 'lower', 'within noise']
    """
    return {"holds": "higher", "does not hold": "lower", "within noise": "within noise"}[verdict(interval)]


# --- did training finish? ------------------------------------------------------------------------------------------

def still_improving(curve: Sequence[float], tolerance: float = 0.005) -> bool:
    """True when the last epoch beat every earlier one by more than ``tolerance``: the run stopped while rising.

    >>> still_improving([0.60, 0.85, 0.94]), still_improving([0.605, 0.855, 0.945, 0.945]), still_improving([0.7])
    (True, False, True)
    """
    curve = [float(v) for v in curve]
    if not curve:
        raise ValueError("curve is empty: pass the validation metric after each epoch")
    return len(curve) == 1 or curve[-1] > max(curve[:-1]) + tolerance


def curve_shape(curve: Sequence[float], tolerance: float = 0.005, noise: float = 0.0) -> str:
    """One of ``"still rising"`` (as :func:`still_improving` says, with ``tolerance``), ``"fell back"`` (the best
    epoch came earlier and the last one is below it by more than ``tolerance`` and more than ``noise``, the
    validation set's sampling noise) or ``"plateau"``.

    >>> [curve_shape(c) for c in ([0.6, 0.8, 0.9], [0.6, 0.9, 0.9], [0.6, 0.95, 0.9])]
    ['still rising', 'plateau', 'fell back']
    >>> curve_shape([0.6, 0.95, 0.9], noise=0.08)  # a drop within the noise is not a fall
    'plateau'
    """
    if still_improving(curve, tolerance):
        return "still rising"
    return "fell back" if max(curve) - curve[-1] > max(tolerance, noise) else "plateau"


def describe_curves(curves: dict[str, Sequence[float]], tolerance: float = 0.005) -> str:
    """A sentence on which runs were still rising when they stopped, for a notebook's prose.

    Names that hold commas themselves ("block.5, head") are listed with semicolons, so that each reads whole.

    >>> describe_curves({"a": [0.5, 0.9], "b": [0.9, 0.9]})
    'Still rising at the last epoch (more epochs would likely help): a. Flat or past their best: b.'
    >>> describe_curves({"head": [0.6, 0.6], "block.5, head": [0.6, 0.6]})
    'Flat or past their best: head; block.5, head.'
    """
    rising = [name for name, curve in curves.items() if still_improving(curve, tolerance)]
    settled = [name for name in curves if name not in rising]
    separator = "; " if any("," in name for name in curves) else ", "
    parts = []
    if rising:
        parts.append(f"Still rising at the last epoch (more epochs would likely help): {separator.join(rising)}.")
    if settled:
        parts.append(f"Flat or past their best: {separator.join(settled)}.")
    return " ".join(parts)


def combine_verdicts(words: Sequence[str]) -> str:
    """One verdict for a claim made of several comparisons (each must hold): *does not hold* if any does not,
    *holds* if all do, *within noise* otherwise.

    >>> [combine_verdicts(words) for words in (["holds", "within noise"], ["holds", "holds"], ["does not hold"])]
    ['within noise', 'holds', 'does not hold']
    """
    if "does not hold" in words:
        return "does not hold"
    if UNTESTABLE in words:
        return UNTESTABLE
    return "holds" if all(word == "holds" for word in words) else "within noise"


def likely_reason(word: str, curves: dict[str, Sequence[float]], otherwise: str, tolerance: float = 0.005,
                  gap: float | None = None) -> str:
    """After a verdict that is not *holds*: the likely reason. A measured one comes first, with its number (a run
    whose last epoch still gained more than ``tolerance``, and, where the ``gap`` to explain is given, at least as
    much as that gap: a rise of 1 point cannot explain 27); anything else is the notebook's ``otherwise``, worded
    as the hypothesis it is.

    >>> likely_reason("within noise", {"top 3": [0.7, 0.8]}, "the test set is small")
    'likely reason: top 3 still rising (+10.0 points in its last epoch)'
    >>> likely_reason("does not hold", {"top 3": [0.79, 0.8]}, "the rate is too low", gap=-0.27)
    'hypothesis: the rate is too low (top 3 still rose +1.0 points in its last epoch, too little to explain 27.0)'
    >>> likely_reason("within noise", {"top 3": [0.8, 0.8]}, "the test set is small")
    'hypothesis: the test set is small'
    >>> likely_reason("holds", {}, "anything")
    ''
    """
    if word not in VERDICTS:
        raise ValueError(f"word must be one of {VERDICTS}; got {word!r}")
    if word == "holds":
        return ""
    rising = {name: last_gain(curve) for name, curve in curves.items() if still_improving(curve, tolerance)}
    enough = {name: rise for name, rise in rising.items() if gap is None or rise >= abs(gap)}
    if enough:
        return "likely reason: " + ", ".join(f"{name} still rising ({rise * 100:+.1f} points in its last epoch)"
                                             for name, rise in enough.items())
    if rising:
        return f"hypothesis: {otherwise} (" + ", ".join(
            f"{name} still rose {rise * 100:+.1f} points in its last epoch" for name, rise in rising.items()
        ) + f", too little to explain {abs(gap) * 100:.1f})"
    return f"hypothesis: {otherwise}"


def last_gain(curve: Sequence[float]) -> float:
    """How much the last epoch beat the best earlier one (the whole value for a one-epoch curve).

    >>> round(last_gain([0.6, 0.8, 0.83]), 3), round(last_gain([0.9, 0.8]), 3)
    (0.03, -0.1)
    """
    curve = [float(v) for v in curve]
    return curve[-1] - (max(curve[:-1]) if len(curve) > 1 else 0.0)


def accuracy_noise(accuracy: float, examples: int) -> float:
    """Two standard errors of the difference between two accuracies near ``accuracy``, each measured on
    ``examples`` examples: what a change must exceed before it is more than sampling noise.

    >>> round(accuracy_noise(0.8, 200), 3)
    0.08
    """
    if examples < 1:
        raise ValueError(f"examples must be at least 1; got {examples!r}")
    return 2 * (2 * accuracy * (1 - accuracy) / examples) ** 0.5


def unconverged(curves: dict[str, Sequence[float]], examples: int) -> dict[str, tuple[float, float]]:
    """The runs whose last epoch gained more than the validation noise: ``{name: (gain, noise)}``.

    >>> unconverged({"a": [0.60, 0.80], "b": [0.80, 0.81]}, examples=500)
    {'a': (0.2..., 0.05...)}
    """
    found = {}
    for name, curve in curves.items():
        gain, noise = last_gain(curve), accuracy_noise(float(curve[-1]), examples)
        if gain > noise:
            found[name] = (gain, noise)
    return found


def at_ceiling(accuracies: dict[str, float], ceiling: float, examples: int) -> bool:
    """Whether every accuracy lies within the noise of the task's ``ceiling`` (the best a model can score, e.g.
    1 minus the label noise): no difference between them can show.

    >>> at_ceiling({"full": 0.955, "LoRA": 0.95}, ceiling=0.96, examples=500), at_ceiling({"a": 0.8}, 0.96, 500)
    (True, False)
    """
    return all(ceiling - value <= accuracy_noise(ceiling, examples) for value in accuracies.values())


@dataclass
class Finding:
    """One claim a notebook tested, as every part of the course reads it: the notebook's table, ``save_metrics``'s
    JSON, the results page and the takeaways (which look findings up by ``key``, never by their wording).

    ``key`` is a short stable name (``"full_beats_head_only"``); ``claim`` the sentence a learner reads; ``verdict``
    one of :data:`VERDICTS`; ``difference`` the effect with its interval, in words; ``estimate``, ``low``, ``high``
    and ``threshold`` the numbers behind the verdict (None where the finding is not an interval); ``reason`` the
    likely reason where it does not hold.

    >>> row = Finding("a_beats_b", "a beats b", "holds", "+5.0 points", 0.05, 0.02, 0.08).record()
    >>> Finding.from_record(row).key, row["finding"], row["verdict"]
    ('a_beats_b', 'a beats b', 'holds')
    """

    key: str
    claim: str
    verdict: str
    difference: str = ""
    estimate: float | None = None
    low: float | None = None
    high: float | None = None
    threshold: float = 0.0
    reason: str = ""
    interval_kind: str = TEST_SAMPLE
    seeds: int = 1
    effect: str = ""

    def __post_init__(self):
        if self.verdict not in VERDICTS:
            raise ValueError(f"finding {self.key!r}: verdict must be one of {', '.join(VERDICTS)}; "
                             f"got {self.verdict!r}")

    def record(self) -> dict:
        """The finding as a results row (the column names the notebooks' tables show)."""
        return {"key": self.key, "finding": self.claim, "difference (95% CI)": self.difference, "verdict": self.verdict,
                "likely reason": self.reason, "estimate": self.estimate, "low": self.low, "high": self.high,
                "threshold": self.threshold, "interval over": self.interval_kind, "seeds": self.seeds,
                "effect size": self.effect}

    @classmethod
    def from_record(cls, row: dict) -> "Finding":
        """A finding from a results row; rows written before findings had keys get their claim as key."""
        claim = row.get("finding", row.get("ULMFiT finding", ""))  # 03's results before 2026-11-27
        return cls(row.get("key") or claim, claim, row.get("verdict", "within noise"),
                   row.get("difference (95% CI)", ""), row.get("estimate"), row.get("low"), row.get("high"),
                   row.get("threshold", 0.0) or 0.0, row.get("likely reason", ""),
                   row.get("interval over", TEST_SAMPLE), row.get("seeds", 1) or 1, row.get("effect size", ""))


def finding(key: str, claim: str, interval: Interval, curves: dict[str, Sequence[float]], otherwise: str,
            threshold: float = 0.0, *, examples: int | None = None, ceiling: float | None = None,
            accuracies: dict[str, float] | None = None, min_seeds: int | None = None, effect: str = "") -> Finding:
    """A claim that a difference exceeds ``threshold``, tested on ``interval`` (a threshold claim against its
    threshold, never against zero).

    A verdict becomes *untestable here* when the run cannot decide it, with the number that says so: fewer seeds
    behind ``interval`` than the ``min_seeds`` the claim needs (a claim about a method, not one run; checked first,
    whatever the verdict), a run of ``curves`` whose last epoch gained more than the noise of ``examples``
    validation examples (:func:`unconverged`), or ``accuracies`` all within noise of the task's ``ceiling``
    (:func:`at_ceiling`). The rule is the same whichever way the interval points: a run that cannot decide a claim
    cannot confirm it either. ``curves``, ``accuracies`` and ``ceiling`` are those of the quantity the claim is
    about (a claim about forgetting task A passes A's curves, not B's ceiling). Otherwise the reason is
    :func:`likely_reason`'s (measured, else ``otherwise`` as a hypothesis). ``effect`` (:func:`effect_size`) is
    printed beside the verdict.

    >>> finding("a_beats_b", "a beats b", Interval(0.05, 0.02, 0.08), {}, "the test set is small").verdict
    'holds'
    >>> found = finding("a_beats_b", "a beats b", Interval(0.01, -0.02, 0.04), {"a": [0.6, 0.8]}, "small", examples=500)
    >>> found.verdict, found.reason
    ('untestable here', 'not converged: a gained +20.0 points in its last epoch, more than the noise of 5.1')
    >>> finding("a_beats_b", "a beats b", Interval(0.05, 0.02, 0.08), {}, "small", min_seeds=3).reason
    'too few seeds: 1 seed behind this interval, the claim needs at least 3 (its estimate +5.0 points)'
    """
    word = verdict(interval, threshold)
    difference = interval.points() + (f", against the claim's {threshold * 100:+.0f}" if threshold else "")
    reason = likely_reason(word, curves, otherwise, gap=interval.estimate - threshold)
    rising = unconverged(curves, examples) if examples else {}
    if min_seeds is not None and interval.seeds < min_seeds:
        word, reason = UNTESTABLE, (f"too few seeds: {interval.seeds} seed{'s' if interval.seeds > 1 else ''} behind "
                                    f"this interval, the claim needs at least {min_seeds} (its estimate "
                                    f"{interval.estimate * 100:+.1f} points)")
    elif rising:
        word, reason = UNTESTABLE, "not converged: " + ", ".join(
            f"{name} gained {gain * 100:+.1f} points in its last epoch, more than the noise of {noise * 100:.1f}"
            for name, (gain, noise) in rising.items())
    elif ceiling is not None and accuracies and examples and at_ceiling(accuracies, ceiling, examples):
        word, reason = UNTESTABLE, (f"ceiling: {', '.join(f'{n} {a:.1%}' for n, a in accuracies.items())} all within "
                                    f"the noise ({accuracy_noise(ceiling, examples):.1%}) of the best possible "
                                    f"{ceiling:.1%}")
    return Finding(key, claim, word, difference, interval.estimate, interval.low, interval.high, threshold, reason,
                   interval.kind, interval.seeds, effect)


# --- a fair learning rate ------------------------------------------------------------------------------------------

def grid_edge(rate, grid: Sequence, what: str = "rate", accuracy: float | None = None) -> str:
    """Where a chosen rate (or another setting, named by ``what``) sits in its grid: ``""`` inside it, else which
    edge, in words; a choice on an edge says the grid did not bracket the best value, unless its validation
    ``accuracy`` is already 100%, which no other value can beat.

    >>> grid_edge(3e-4, [1e-4, 3e-4, 1e-3]), grid_edge(1e-4, [1e-4, 3e-4, 1e-3])
    ('', 'on the lower edge of its grid (1e-04 of 1e-04 to 1e-03): a lower rate may score higher')
    >>> grid_edge(1e-4, [1e-4, 3e-4, 1e-3], accuracy=1.0)
    'on the lower edge of its grid (1e-04 of 1e-04 to 1e-03), at 100% on validation: no rate can score higher'
    """
    if len(grid) < 2 or rate not in (min(grid), max(grid)):
        return ""
    side, other = ("lower", "lower") if rate == min(grid) else ("upper", "higher")
    where = f"on the {side} edge of its grid ({_rate(rate)} of {_rate(min(grid))} to {_rate(max(grid))})"
    if accuracy is not None and accuracy >= 1:
        return f"{where}, at 100% on validation: no {what} can score higher"
    return f"{where}: a {other} {what} may score higher"


def _rate(rate) -> str:
    return ", ".join(f"{r:.0e}" for r in rate) if isinstance(rate, (tuple, list)) else f"{rate:.0e}"


def choose_learning_rate(run: Callable[[float], dict], grid: Sequence[float], score: str = "best_accuracy",
                         start: Sequence[float] | None = None):
    """Run ``run(rate)`` for rates of ``grid`` and keep the one whose result scores highest on ``score`` (a key of
    the result: validation accuracy of the method's own task, never the test set). Ties go to the rate tried first.

    Without ``start`` every rate runs. With ``start`` (some rates of ``grid``, which must then be ascending) it is a
    line search, which brackets its choice for fewer runs: it runs the start rates, then, while the best so far sits
    at an end of the rates tried, runs the grid's next rate beyond that end. It stops once the best has a tried
    neighbour on each side that scores no higher (bracketed), or at the grid's end. It assumes the score rises, then
    falls, with the rate. A choice on an edge of the grid is printed (:func:`grid_edge`): the grid did not bracket it.

    Returns ``(rate, result, scores)``, ``scores`` mapping each rate tried to its validation score.

    >>> choose_learning_rate(lambda lr: {"best_accuracy": 1 - abs(lr - 3e-4)}, [1e-4, 3e-4, 1e-3])[0]
    0.0003
    >>> peak = lambda lr: {"best_accuracy": -abs(lr - 1e-3)}
    >>> rate, _, scores = choose_learning_rate(peak, [1e-5, 1e-4, 3e-4, 1e-3, 3e-3, 1e-2], start=[1e-4, 3e-4])
    >>> rate, sorted(scores)  # 1e-5 and 1e-2 never ran
    (0.001, [0.0001, 0.0003, 0.001, 0.003])
    """
    grid = list(grid)
    if not grid:
        raise ValueError("grid must hold at least one learning rate")
    if start is not None:
        _check_start(grid, list(start))
    scores, results = {}, {}

    def best_rate():
        return max(scores, key=lambda rate: scores[rate])  # the first tried wins a tie

    for rate in grid if start is None else start:
        results[rate] = run(rate)
        scores[rate] = float(results[rate][score])
    while start is not None:
        best = grid.index(best_rate())
        step = _step_beyond(best, [grid.index(rate) for rate in scores], len(grid))
        if not step:
            break
        rate = grid[best + step]
        results[rate] = run(rate)
        scores[rate] = float(results[rate][score])
    chosen = best_rate()
    edge = grid_edge(chosen, grid, accuracy=scores[chosen])
    if edge:
        print(f"note: the chosen rate {_rate(chosen)} is {edge}")
    return chosen, results[chosen], scores


def _step_beyond(best: int, tried: list[int], size: int) -> int:
    """Where a line search goes next, by grid index: -1 or +1 when the best sits at that end of the tried rates and
    the grid goes on there, 0 once the best is bracketed (or the grid ends)."""
    if best == min(tried) and best > 0:
        return -1
    if best == max(tried) and best < size - 1:
        return 1
    return 0


def _check_start(grid: list, start: list) -> None:
    if not start or any(rate not in grid for rate in start):
        raise ValueError(f"start must hold rates of the grid {grid}; got {start}")
    if grid != sorted(grid):
        raise ValueError(f"a search (start given) needs the grid in ascending order; got {grid}")


def rate_fixed_across_seeds(run: Callable[[float, int], dict], grid: Sequence[float], seeds: Sequence[int],
                            score: str = "best_accuracy", min_grid: int = 4, start: Sequence[float] | None = None):
    """One method's protocol: its learning rate chosen once, on validation data with the first seed
    (:func:`choose_learning_rate`, which prints a choice on the grid's edge), then fixed for every other seed, so that
    seeds vary the run and never the rate. ``run(rate, seed)`` trains one run and returns its result; ``grid`` must
    hold at least ``min_grid`` rates (a grid that can bracket its choice); ``start`` makes the choice a line search
    from those rates (:func:`choose_learning_rate`).

    Returns ``(rate, results, scores)``: ``results`` one per seed, in the order of ``seeds``; ``scores`` the first
    seed's validation score per rate; ``edge`` (:func:`grid_edge`) is in ``results[0]["rate_edge"]``.

    >>> calls = []
    >>> def run(rate, seed):
    ...     calls.append((rate, seed))
    ...     return {"best_accuracy": 1 - abs(rate - 3e-4) - seed / 100}
    >>> rate, results, _ = rate_fixed_across_seeds(run, [1e-4, 3e-4, 1e-3, 3e-3], seeds=[0, 1, 2])
    >>> rate, [seed for r, seed in calls if r == rate], len(calls)
    (0.0003, [0, 1, 2], 6)
    """
    grid, seeds = list(grid), list(seeds)
    if len(grid) < min_grid:
        raise ValueError(f"grid must hold at least {min_grid} learning rates, to bracket the one it chooses; got "
                         f"{len(grid)}: {grid}")
    if not seeds:
        raise ValueError("seeds must hold at least one seed (the first chooses the rate)")
    rate, first, scores = choose_learning_rate(lambda lr: run(lr, seeds[0]), grid, score, start)
    first["rate_edge"] = grid_edge(rate, grid, accuracy=scores[rate])
    return rate, [first] + [run(rate, seed) for seed in seeds[1:]], scores
