"""Token buckets per rater: a burst, then one request per 60/per_minute seconds, waits rounded up."""

from __future__ import annotations

import pytest

from serving.ratelimit import RateLimiter, retry_after


def test_a_bucket_gives_its_burst_then_refills_at_the_rate():
    now = [0.0]
    limiter = RateLimiter(per_minute=12, burst=3, clock=lambda: now[0])  # 0.2 requests a second
    assert [limiter.take("a") for _ in range(3)] == [0.0, 0.0, 0.0]
    assert limiter.take("a") == pytest.approx(5.0)  # empty: 1 / 0.2 s until one request is back
    now[0] = 2.5  # half a request refilled
    assert limiter.take("a") == pytest.approx(2.5)
    now[0] = 5.0
    assert limiter.take("a") == 0.0 and limiter.take("b") == 0.0  # keys do not share a bucket
    now[0] = 1000.0  # a long pause refills to the burst, never beyond
    assert [limiter.take("a") == 0.0 for _ in range(4)] == [True, True, True, False]


def test_zero_switches_limiting_off_and_bad_settings_are_refused():
    limiter = RateLimiter(per_minute=0, burst=1)
    assert all(limiter.take("a") == 0.0 for _ in range(100))
    with pytest.raises(ValueError, match="burst"):
        RateLimiter(per_minute=10, burst=0)
    assert (retry_after(0.01), retry_after(2.0), retry_after(2.1)) == ("1", "2", "3")


def test_the_simulated_users_wait_out_a_429():
    import httpx

    from components.demo_task.traffic import _post

    answers = iter([429, 429, 200])
    seen = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.url.path)
        status = next(answers)
        return httpx.Response(status, headers={"retry-after": "0"}, json={"accepted": status == 200})

    with httpx.Client(transport=httpx.MockTransport(handler), base_url="http://svc") as client:
        assert _post(client, "/feedback", {"id": "x", "rating": 3}).json() == {"accepted": True}
    assert seen == ["/feedback"] * 3
