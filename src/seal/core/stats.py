"""Intervals for results whose units (passages, tasks) are few and whose items within a unit correlate."""

from __future__ import annotations

import math

import numpy as np


def bootstrap_ci(per_unit: list[float], n: int, seed: int) -> tuple[float, float]:
    """95% percentile interval of the mean, resampling whole units (a passage's questions, or a task's
    self-edits, are not independent of each other)."""
    values = np.asarray(per_unit, dtype=float)
    if len(values) < 2:
        return (math.nan, math.nan)
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, len(values), size=(n, len(values)))].mean(axis=1)
    return float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))
