"""Per-token rate limits: one token bucket per rater token (``serve.rate_limit_per_minute``, ``rate_limit_burst``).

A bucket holds up to ``burst`` requests and refills at ``per_minute / 60`` requests a second (the token-bucket
algorithm of RFC 2697's single-rate meter, one bucket per key). A request that finds its bucket empty is
refused with the seconds until one request's worth has refilled, which the service sends as ``Retry-After``.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable


class RateLimiter:
    """Token buckets by key (a rater's name); ``per_minute`` 0 switches limiting off."""

    def __init__(self, per_minute: float, burst: int, clock: Callable[[], float] = time.monotonic):
        if per_minute < 0 or burst < 1:
            raise ValueError("rate limit: per_minute must be >= 0 (0 = no limit) and burst >= 1")
        self.rate = per_minute / 60.0
        self.burst = float(burst)
        self.clock = clock
        self._lock = threading.Lock()
        self._buckets: dict[str, tuple[float, float]] = {}
        """key -> (requests left, when last refilled)."""

    def take(self, key: str) -> float:
        """Spend one request of ``key``'s bucket: 0.0 when allowed, else the seconds to wait before retrying."""
        if self.rate == 0:
            return 0.0
        now = self.clock()
        with self._lock:
            left, then = self._buckets.get(key, (self.burst, now))
            left = min(self.burst, left + (now - then) * self.rate)
            if left >= 1.0:
                self._buckets[key] = (left - 1.0, now)
                return 0.0
            self._buckets[key] = (left, now)
            return (1.0 - left) / self.rate


def retry_after(wait_s: float) -> str:
    """A ``Retry-After`` value (whole seconds, at least 1) for a wait of ``wait_s`` seconds."""
    return str(max(1, math.ceil(wait_s)))
