"""Intervals for results whose units (passages, tasks) are few and whose items within a unit correlate."""

from __future__ import annotations

import math

import numpy as np


def mean(values) -> float | None:
    """The mean of the values that are not None (None when there are none)."""
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else None


# The 97.5% quantile of Student's t with 1..19 degrees of freedom (df = units - 1).
T_975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228,
         2.201, 2.179, 2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093)
T_BELOW = 20  # units: below this many, intervals are Student's t; from it on, the bootstrap's


def interval(values: np.ndarray, n: int, seed: int) -> tuple[float, float]:
    """A 95% interval of the mean of per-unit values. Below T_BELOW units: mean +- t * sd / sqrt(units),
    since the percentile bootstrap over a handful of units covers far less than 95% (about 81% at 4 units,
    88% at 11; tests/core/test_stats.py measures both); from T_BELOW units on: the percentile bootstrap over
    `n` resamples of whole units, which needs no normality of the unit means. NaN below two units."""
    units = len(values)
    if units < 2:
        return (math.nan, math.nan)
    if units < T_BELOW:
        half = T_975[units - 2] * float(values.std(ddof=1)) / math.sqrt(units)
        centre = float(values.mean())
        return centre - half, centre + half
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, units, size=(n, units))].mean(axis=1)
    return float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


def interval_note(units: int, word: str) -> str:
    """What a table's 95% intervals are, for its notes."""
    how = "Student's t" if units < T_BELOW else "the bootstrap over them"
    return f"95% intervals: over the {units} {word} ({how}; t below {T_BELOW} units)"


def bootstrap_ci(per_unit: list[float], n: int, seed: int) -> tuple[float, float]:
    """95% interval of the mean, over whole units (a passage's questions, or a task's self-edits, are not
    independent of each other): see `interval`."""
    return interval(np.asarray(per_unit, dtype=float), n, seed)


def paired_difference(rows: dict[str, float], reference: dict[str, float], n: int,
                      seed: int) -> tuple[float, float, float] | None:
    """Mean of (row - reference) over the units both have (e.g. passages), with its 95% interval over
    those units (`interval`): both rows are scored on the same units, so how hard a unit is cancels out,
    and the interval measures how the rows differ rather than how the units vary. None when the rows
    share no unit."""
    common = sorted(set(rows) & set(reference))
    if not common:
        return None
    d = np.asarray([rows[k] - reference[k] for k in common], dtype=float)
    low, high = interval(d, n, seed)
    return float(d.mean()), low, high
