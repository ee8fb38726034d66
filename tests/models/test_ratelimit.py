"""Rate budgets: header parsing and the token buckets on a fake clock (the server-side checks are
in test_openai_backend.py)."""

import asyncio

from datamix.models.ratelimit import AdaptiveLimit, RateBudget, parse_reset


def test_parse_reset():
    assert parse_reset("1s") == 1.0 and parse_reset("6m0s") == 360.0 and parse_reset("20ms") == 0.02
    assert parse_reset("1h2m3.5s") == 3723.5 and parse_reset("0.5") == 0.5
    assert parse_reset(None) is None and parse_reset("soon") is None and parse_reset("5x") is None


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def test_buckets_spread_a_minutes_budget_over_the_minute(monkeypatch):
    clock = Clock()

    async def fake_sleep(s):
        clock.now += s

    monkeypatch.setattr(asyncio, "sleep", fake_sleep)
    budget = RateBudget(rpm=120, tpm=6000, clock=clock)  # 2 requests and 100 tokens a second

    async def go():
        for _ in range(10):
            await budget.acquire(10)

    asyncio.run(go())
    # 2 at once (one second's worth), then one every 0.5 s: the 10th at 4 s
    assert abs(clock.now - 4.0) < 1e-6
    budget.settle(estimated=50, used=20)  # the unused estimate goes back
    assert budget.tokens.level > 0


def test_server_counters_hold_requests_until_the_reset(monkeypatch):
    clock = Clock()

    async def fake_sleep(s):
        clock.now += s

    monkeypatch.setattr(asyncio, "sleep", fake_sleep)
    budget = RateBudget(clock=clock)

    async def go():
        t1 = await budget.acquire(1)
        await budget.acquire(1)
        # the first request's reply: 2 left, and one more has been sent since: 1 may still go
        budget.observe({"x-ratelimit-remaining-requests": "2", "x-ratelimit-reset-requests": "3s"}, t1)
        await budget.acquire(1)
        assert clock.now == 0.0
        await budget.acquire(1)  # none left: waits for the reset
        assert clock.now == 3.0

    asyncio.run(go())


def test_adaptive_limit_halves_and_recovers():
    limit = AdaptiveLimit(8)
    limit.throttled()
    limit.throttled()
    assert limit.limit == 2.0 and limit.lowest == 2.0
    for _ in range(100):
        limit.succeeded()
    assert limit.limit == 8.0
