"""Numeric settings checked where they are given, with one line naming the setting and its range.

Why: a value out of range (a negative learning rate, a dropout of 2, a batch size of 0) used
to be accepted and fail much later, after the data was loaded, or never (a run that diverges
and saves its checkpoint). Every head, the data module and the export loader check their
numbers at construction with `check_number`, so a bad one stops the run before any work; the
commands print the message as one line and exit with status 2.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from numbers import Integral, Real
from typing import Any


def check_number(
    value: Any,
    name: str,
    low: float | None = None,
    high: float | None = None,
    *,
    low_open: bool = False,
    high_open: bool = False,
    integer: bool = False,
    optional: bool = False,
) -> None:
    """Raise ValueError unless `value` is a finite number in the range (None too if `optional`).

    `low` / `high` are inclusive bounds unless `low_open` / `high_open`; `integer` asks for an
    int (a bool is never a number here).
    """
    if value is None and optional:
        return
    kind = Integral if integer else Real
    ok = isinstance(value, kind) and not isinstance(value, bool) and math.isfinite(value)
    if ok and low is not None:
        ok = value > low if low_open else value >= low
    if ok and high is not None:
        ok = value < high if high_open else value <= high
    if not ok:
        raise ValueError(
            f"{name} must be {describe_range(low, high, low_open, high_open, integer)}"
            f"{' or null' if optional else ''}, got {value!r}"
        )


def check_numbers(values: Any, name: str, low: float | None = None, **bounds: Any) -> None:
    """`check_number` for every item of a non-empty list (`name[i]` in the message)."""
    if isinstance(values, (str, bytes)) or not isinstance(values, Iterable):
        raise ValueError(f"{name} must be a list of numbers, got {values!r}")
    values = list(values)
    if not values:
        raise ValueError(f"{name} must not be empty")
    for i, value in enumerate(values):
        check_number(value, f"{name}[{i}]", low, **bounds)


def describe_range(
    low: float | None, high: float | None, low_open: bool, high_open: bool, integer: bool
) -> str:
    """ "an int >= 1", "a number in [0, 1)", "a number > 0": the words of a range."""
    kind = "an int" if integer else "a number"
    if low is not None and high is not None:
        return f"{kind} in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
    if low is not None:
        return f"{kind} {'>' if low_open else '>='} {low:g}"
    if high is not None:
        return f"{kind} {'<' if high_open else '<='} {high:g}"
    return f"a finite {'int' if integer else 'number'}"
