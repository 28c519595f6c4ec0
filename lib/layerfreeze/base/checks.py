"""Argument checks at the library's boundary: each names the argument, the value it got and what is valid.

Used by :func:`~layerfreeze.fit`, the schedules, :func:`~layerfreeze.encode`, :func:`~layerfreeze.load_task` and
:func:`~layerfreeze.load_model` before they load or compute anything. Imports nothing heavy.

>>> check_int("epochs", 3)
3
>>> check_int("epochs", 0)
Traceback (most recent call last):
ValueError: epochs must be a whole number of at least 1, got 0
>>> check_number("lr", float("nan"))
Traceback (most recent call last):
ValueError: lr must be a finite number above 0, got nan
"""

from __future__ import annotations

import math
import numbers


def check_int(name: str, value, minimum: int = 1, maximum: int | None = None) -> int:
    """``value`` as an int when it is a whole number (not a bool) in ``[minimum, maximum]``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum or \
            (maximum is not None and value > maximum):
        valid = f"from {minimum} to {maximum}" if maximum is not None else f"of at least {minimum}"
        raise ValueError(f"{name} must be a whole number {valid}, got {value!r}")
    return int(value)


def check_number(name: str, value, low: float = 0.0, high: float = math.inf, *, low_inclusive: bool = False,
                 high_inclusive: bool = True) -> float:
    """``value`` as a float when it is a finite real number between ``low`` and ``high`` (bounds as flagged)."""
    real = isinstance(value, numbers.Real) and not isinstance(value, bool)
    number = float(value) if real else math.nan
    above = number >= low if low_inclusive else number > low
    below = number <= high if high_inclusive else number < high
    if not (real and math.isfinite(number) and above and below):
        raise ValueError(f"{name} must be {_number_range(low, high, low_inclusive, high_inclusive)}, got {value!r}")
    return number


def _number_range(low: float, high: float, low_inclusive: bool, high_inclusive: bool) -> str:
    lower = f"{'at least' if low_inclusive else 'above'} {low:g}"
    if math.isinf(high):
        return f"a finite number {'of ' if low_inclusive else ''}{lower}"
    return f"a number {lower} and {'at most' if high_inclusive else 'below'} {high:g}"


def check_rates(name: str, rates) -> None:
    """A learning rate, or a dict of them by layer group (``"default"`` included): each finite and above 0."""
    if isinstance(rates, dict):
        if not rates:
            raise ValueError(f"{name} is an empty dict: give one rate, or rates by layer group (and 'default')")
        for group, rate in rates.items():
            check_number(f"{name}[{group!r}]", rate)
    else:
        check_number(name, rates)


def check_choice(name: str, value, valid) -> None:
    """``value`` must be one of ``valid``."""
    if not isinstance(value, str) or value not in valid:
        raise ValueError(f"unknown {name} {value!r}; valid: {', '.join(valid)}")
