"""Win rate (ties half) with its bootstrap interval, degenerate replies, the over-optimisation flag: hand values."""

import numpy as np
import pytest

from components.decide.eval_stats import (
    distinct_ngram_fraction,
    is_degenerate,
    overoptimised,
    pairwise_outcomes,
    win_rate_interval,
)


def test_pairwise_outcomes_win_loss_tie():
    cand = np.array([[0.9, 0.5], [0.2, 0.7]])
    champ = np.array([[0.1, 0.5], [0.3, 0.7]])
    assert pairwise_outcomes(cand, champ).tolist() == [[1.0, 0.5], [0.0, 0.5]]
    with pytest.raises(ValueError, match="shapes differ"):
        pairwise_outcomes(cand, champ[:1])


def test_win_rate_counts_ties_half_and_matches_a_plain_mean():
    outcomes = np.array([[1.0, 0.5], [0.0, 0.5], [1.0, 1.0]])  # (P=3, K=2)
    rate, low, high = win_rate_interval(outcomes, resamples=500, seed=0)
    assert rate == pytest.approx((1 + 0.5 + 0 + 0.5 + 1 + 1) / 6)
    assert 0.0 <= low <= rate <= high <= 1.0


def test_interval_degenerates_when_every_comparison_is_won_and_shrinks_with_more_prompts():
    assert win_rate_interval(np.ones((10, 2)), resamples=200) == (1.0, 1.0, 1.0)
    rng = np.random.default_rng(0)
    small = rng.integers(0, 2, size=(20, 2)).astype(float)
    large = rng.integers(0, 2, size=(500, 2)).astype(float)
    _, lo_s, hi_s = win_rate_interval(small, resamples=1000)
    _, lo_l, hi_l = win_rate_interval(large, resamples=1000)
    assert hi_l - lo_l < (hi_s - lo_s) / 2  # ~1/sqrt(P): 25x the prompts, a fifth of the width
    # a 95 % interval of 500 fair coin-flip prompts is about +-1.96 * sqrt(0.25/2/500) ~ +-0.031 around 0.5
    assert hi_l - lo_l == pytest.approx(2 * 1.96 * np.sqrt(0.125 / 500), rel=0.25)


def test_bootstrap_is_seeded():
    outcomes = np.random.default_rng(1).integers(0, 2, size=(30, 3)).astype(float)
    assert win_rate_interval(outcomes, seed=7) == win_rate_interval(outcomes, seed=7)


def test_degenerate_replies_are_empty_or_repetitive():
    assert is_degenerate("") and is_degenerate("   ")
    assert is_degenerate("sorry sorry sorry sorry sorry sorry sorry")
    assert distinct_ngram_fraction("a b c a b c a b c") == pytest.approx(3 / 7)
    assert not is_degenerate("Thanks for reaching out, I will check your order status now.")
    assert not is_degenerate("Yes.")  # short but fine


def test_overoptimisation_needs_reward_up_and_gold_down():
    assert overoptimised(0.5, -0.1)
    assert not overoptimised(0.5, 0.1)
    assert not overoptimised(-0.5, -0.1)
    assert not overoptimised(0.5, -0.01, tolerance=0.02)
