"""Evaluation statistics against hand-computed values."""

import itertools
import math

import pytest

from components.decide.stats import (
    best_of_n_kl,
    best_of_n_weights,
    mean_interval,
    wilson_interval,
)


def test_wilson_interval_matches_hand_values():
    est = wilson_interval(75, 100)
    # p = .75, z = 1.96: centre = (.75 + 1.9208/100) / 1.038415 = .74074
    # half = 1.96 * sqrt(.001875 + .0000960) / 1.038415 = .08380
    assert est.value == 0.75 and est.n == 100
    assert est.low == pytest.approx(0.6569, abs=1e-4) and est.high == pytest.approx(0.8245, abs=1e-4)
    zero = wilson_interval(0, 10)
    assert zero.low == 0.0 and 0.25 < zero.high < 0.32  # stays inside [0, 1], unlike p +- z*se
    with pytest.raises(ValueError):
        wilson_interval(3, 0)
    with pytest.raises(ValueError):
        wilson_interval(11, 10)


def test_mean_interval_uses_the_sample_standard_deviation():
    est = mean_interval([1.0, 2.0, 3.0, 4.0])
    half = 1.959963984540054 * math.sqrt((5 / 3) / 4)
    assert est.value == 2.5 and est.low == pytest.approx(2.5 - half) and est.high == pytest.approx(2.5 + half)
    assert mean_interval([7.0]).low == 7.0


def test_best_of_n_weights_equal_the_brute_force_over_all_subsets():
    total, n = 6, 3
    counts = [0] * total
    subsets = list(itertools.combinations(range(total), n))
    for s in subsets:
        counts[max(s)] += 1
    assert best_of_n_weights(n, total) == pytest.approx([c / len(subsets) for c in counts])
    assert sum(best_of_n_weights(4, 16)) == pytest.approx(1.0)
    assert best_of_n_weights(1, 4) == pytest.approx([0.25] * 4)  # n = 1: every sample equally
    assert best_of_n_weights(4, 4) == [0.0, 0.0, 0.0, 1.0]  # n = total: the top sample
    with pytest.raises(ValueError):
        best_of_n_weights(5, 4)


def test_best_of_n_kl_hand_values():
    assert best_of_n_kl(1) == 0.0
    assert best_of_n_kl(2) == pytest.approx(math.log(2) - 0.5)
    assert best_of_n_kl(16) == pytest.approx(2.7726 - 0.9375, abs=1e-4)
