"""Small statistics for the alignment benchmarks: proportion and mean intervals, best-of-n weights and KL.

(The gold win rate and its interval live in ``components.decide.eval_stats``, shared with the evaluation stage.)

Pure functions on plain lists (no models), each unit-tested against hand values.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

Z95 = 1.959963984540054
"""The standard normal's 97.5 % quantile (two-sided 95 % intervals)."""


@dataclass(frozen=True)
class Estimate:
    """A mean with its two-sided 95 % interval and the number of units it came from."""

    value: float
    low: float
    high: float
    n: int

    def as_dict(self, digits: int = 4) -> dict[str, float | int]:
        return {
            "value": round(self.value, digits),
            "low": round(self.low, digits),
            "high": round(self.high, digits),
            "n": self.n,
        }


def wilson_interval(successes: float, n: int, z: float = Z95) -> Estimate:
    """A proportion ``successes / n`` with its Wilson score interval (Wilson 1927).

    Unlike the normal approximation it stays inside [0, 1] and is sensible at 0 or n successes.
    """
    if n <= 0:
        raise ValueError("wilson_interval needs n >= 1")
    if not 0 <= successes <= n:
        raise ValueError(f"successes must be in [0, {n}], got {successes}")
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return Estimate(p, max(0.0, centre - half), min(1.0, centre + half), n)


def mean_interval(values: Sequence[float], z: float = Z95) -> Estimate:
    """Mean of ``values`` with a normal-approximation interval from their sample standard deviation."""
    n = len(values)
    if n == 0:
        raise ValueError("mean_interval needs at least one value")
    mean = sum(values) / n
    if n == 1:
        return Estimate(mean, mean, mean, 1)
    var = sum((v - mean) ** 2 for v in values) / (n - 1)
    half = z * math.sqrt(var / n)
    return Estimate(mean, mean - half, mean + half, n)


def best_of_n_weights(n: int, total: int) -> list[float]:
    """Probability that the j-th lowest of ``total`` samples (j = 0 .. total-1) is the highest of a
    uniformly random subset of ``n`` of them: C(j, n-1) / C(total, n).

    Weighting samples sorted by the selecting score with these gives an unbiased estimate of best-of-n
    from ``total`` >= n samples (the estimator of Nakano et al. 2021, WebGPT, appendix), with far less
    noise than drawing subsets. Ties in the selecting score should be broken before sorting.
    """
    if not 1 <= n <= total:
        raise ValueError(f"need 1 <= n <= total, got n={n}, total={total}")
    denom = math.comb(total, n)
    return [math.comb(j, n - 1) / denom for j in range(total)]


def best_of_n_kl(n: int) -> float:
    """The analytic KL of best-of-n sampling to the sampling policy: log n - (n - 1) / n nats
    (Stiennon et al. 2020; exact when the selecting score has no ties)."""
    if n < 1:
        raise ValueError("n must be >= 1")
    return math.log(n) - (n - 1) / n
