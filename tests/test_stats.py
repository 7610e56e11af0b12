"""Intervals: the bootstrap over units, and paired differences between rows scored on the same units."""

import math

import numpy as np

from seal.core.stats import bootstrap_ci, paired_difference


def test_paired_difference_of_a_shift_is_exact_and_narrower_than_unpaired():
    rng = np.random.default_rng(0)
    hard = {f"p{i}": float(v) for i, v in enumerate(rng.uniform(0.0, 0.5, 30))}  # units vary a lot
    shifted = {k: v + 0.03 for k, v in hard.items()}
    mean, low, high = paired_difference(shifted, hard, 500, 0)
    assert math.isclose(mean, 0.03) and math.isclose(low, 0.03) and math.isclose(high, 0.03)
    noisy = {k: v + 0.03 + float(rng.normal(0, 0.01)) for k, v in hard.items()}
    mean, low, high = paired_difference(noisy, hard, 2000, 0)
    a, b = bootstrap_ci(list(noisy.values()), 2000, 0), bootstrap_ci(list(hard.values()), 2000, 0)
    assert low < mean < high and high - low < 0.02 and a[0] < b[1]  # unpaired intervals overlap, paired do not
    assert paired_difference(hard, hard, 100, 0) == (0.0, 0.0, 0.0)


def test_paired_difference_uses_only_the_shared_units():
    assert paired_difference({"a": 1.0}, {"b": 0.0}, 100, 0) is None
    mean, low, high = paired_difference({"a": 1.0, "b": 5.0}, {"a": 0.5}, 100, 0)
    assert mean == 0.5 and math.isnan(low) and math.isnan(high)  # one shared unit: no interval
