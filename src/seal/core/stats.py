"""Intervals for results whose units (passages, tasks) are few and whose items within a unit correlate."""

from __future__ import annotations

import math

import numpy as np


def mean(values) -> float | None:
    """The mean of the values that are not None (None when there are none)."""
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else None


def bootstrap_ci(per_unit: list[float], n: int, seed: int) -> tuple[float, float]:
    """95% percentile interval of the mean, resampling whole units (a passage's questions, or a task's
    self-edits, are not independent of each other)."""
    values = np.asarray(per_unit, dtype=float)
    if len(values) < 2:
        return (math.nan, math.nan)
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, len(values), size=(n, len(values)))].mean(axis=1)
    return float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


def paired_difference(rows: dict[str, float], reference: dict[str, float], n: int,
                      seed: int) -> tuple[float, float, float] | None:
    """Mean of (row - reference) over the units both have (e.g. passages), with a 95% percentile
    interval from resampling those units: both rows are scored on the same units, so how hard a unit
    is cancels out, and the interval measures how the rows differ rather than how the units vary.
    None when the rows share no unit."""
    common = sorted(set(rows) & set(reference))
    if not common:
        return None
    d = np.asarray([rows[k] - reference[k] for k in common], dtype=float)
    if len(d) < 2:
        return float(d.mean()), math.nan, math.nan
    rng = np.random.default_rng(seed)
    means = d[rng.integers(0, len(d), size=(n, len(d)))].mean(axis=1)
    return float(d.mean()), float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))
