"""The evaluation's statistics: pairwise win rate with a bootstrap interval, degenerate replies, over-optimisation.

Letters: P held-out prompts, K samples per prompt.
"""

from __future__ import annotations

import numpy as np


def pairwise_outcomes(candidate: np.ndarray, champion: np.ndarray, tie_tol: float = 1e-9) -> np.ndarray:
    """Per prompt and sample, 1 when the candidate's gold score is higher, 0 when lower, 0.5 for a tie.

    Both arrays have shape (P, K): sample k of prompt p of each model was drawn with the same seed.
    """
    candidate, champion = np.asarray(candidate, dtype=float), np.asarray(champion, dtype=float)
    if candidate.shape != champion.shape:
        raise ValueError(f"shapes differ: candidate {candidate.shape}, champion {champion.shape}")
    diff = candidate - champion  # shape: (P, K)
    return np.where(np.abs(diff) <= tie_tol, 0.5, (diff > 0).astype(float))  # shape: (P, K)


def win_rate_interval(
    outcomes: np.ndarray, *, confidence: float = 0.95, resamples: int = 2000, seed: int = 0
) -> tuple[float, float, float]:
    """Win rate (ties half) and its percentile-bootstrap interval, resampling *prompts* with replacement.

    The K samples of one prompt are not independent, so prompts are the resampled unit (cluster bootstrap;
    Efron & Tibshirani 1993, ch. 13, percentile interval). Returns ``(rate, low, high)``.
    """
    outcomes = np.asarray(outcomes, dtype=float)
    if outcomes.ndim == 1:
        outcomes = outcomes[:, None]
    if outcomes.size == 0:
        raise ValueError("no outcomes to compute a win rate from")
    per_prompt = outcomes.mean(axis=1)  # shape: (P,)
    rate = float(per_prompt.mean())
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(per_prompt), size=(resamples, len(per_prompt)))  # shape: (resamples, P)
    means = per_prompt[idx].mean(axis=1)  # shape: (resamples,)
    alpha = (1.0 - confidence) / 2.0
    low, high = np.quantile(means, [alpha, 1.0 - alpha])
    return rate, float(low), float(high)


def distinct_ngram_fraction(text: str, n: int = 3) -> float:
    """Distinct word n-grams / all word n-grams of ``text`` (1.0 when it has fewer than n words)."""
    words = text.lower().split()
    grams = [tuple(words[i : i + n]) for i in range(len(words) - n + 1)]
    return len(set(grams)) / len(grams) if grams else 1.0


def is_degenerate(text: str, *, n: int = 3, min_distinct: float = 0.5) -> bool:
    """Empty (nothing but whitespace) or repetitive: under ``min_distinct`` of its word n-grams are distinct."""
    return not text.strip() or distinct_ngram_fraction(text, n) < min_distinct


def overoptimised(reward_delta: float, gold_delta: float, tolerance: float = 0.0) -> bool:
    """The reward model's score rose while the gold score fell by more than ``tolerance`` (Gao et al. 2023)."""
    return reward_delta > 0.0 and gold_delta < -tolerance
