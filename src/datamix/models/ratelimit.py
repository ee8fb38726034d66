"""Rate budgets and adaptive concurrency for API backends.

A provider limits requests and tokens per minute. Bouncing off those limits costs a
429, a Retry-After wait and a retry per request; staying just under them costs
nothing. Three things keep a run under them:

- `rpm` / `tpm` declared on the model: token buckets refilled continuously (a
  minute's budget spread over the minute, at most one second's worth in a burst,
  because providers enforce limits over windows much shorter than a minute);
- the server's own counters, `x-ratelimit-remaining-requests` / `-tokens` and
  `x-ratelimit-reset-requests` / `-tokens` (OpenAI, vLLM behind a gateway, ...):
  when what remains is no more than what was sent since the request that
  reported it, new requests wait for the reset;
- concurrency that adapts (additive increase, multiplicative decrease): a 429
  halves the number of requests in flight, every success raises it by
  1/limit, never above `max_concurrency`.
"""

from __future__ import annotations

import asyncio
import re
import time

_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|h|m|s)")
_UNIT_S = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_reset(value: str | None) -> float | None:
    """Seconds from an x-ratelimit-reset-* header: "1s", "6m0s", "20ms", "1h2m3.5s" or a bare number."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    parts = _DURATION.findall(value)
    if not parts or "".join(n + u for n, u in parts) != value.replace(" ", ""):
        return None
    return sum(float(n) * _UNIT_S[u] for n, u in parts)


def _int_header(headers, name: str) -> int | None:
    value = headers.get(name)
    try:
        return int(float(value)) if value is not None else None
    except ValueError:
        return None


class _Bucket:
    """A token bucket: `rate` per second, at most `capacity` saved up. The level may go below
    zero (one request larger than the burst still goes, and the next ones wait for it)."""

    def __init__(self, per_minute: int, clock):
        self.rate = per_minute / 60.0
        self.capacity = max(1.0, self.rate)
        self.level = self.capacity
        self.clock = clock
        self.stamp = clock()

    def _refill(self) -> None:
        now = self.clock()
        self.level = min(self.capacity, self.level + (now - self.stamp) * self.rate)
        self.stamp = now

    def wait_s(self, amount: float) -> float:
        """Seconds until `amount` may be taken (0 now)."""
        self._refill()
        need = min(amount, self.capacity)
        return 0.0 if self.level >= need else (need - self.level) / self.rate

    def take(self, amount: float) -> None:
        self.level -= amount

    def give_back(self, amount: float) -> None:
        self._refill()
        self.level = min(self.capacity, self.level + amount)


class RateBudget:
    """Requests and tokens per minute for one model, declared and learnt from the server's headers."""

    def __init__(self, rpm: int | None = None, tpm: int | None = None, clock=time.monotonic):
        self.clock = clock
        self.requests = _Bucket(rpm, clock) if rpm else None
        self.tokens = _Bucket(tpm, clock) if tpm else None
        self.blocked_until = 0.0  # from the server's counters: nothing new goes before this
        self.waited_s = 0.0  # total time requests waited for the budget (for logs and tests)
        self.sent = 0  # requests let through so far
        # from the server's request counter: how many more may go before `reset_at` (None: no word)
        self.allowance: int | None = None
        self.reset_at = 0.0

    async def acquire(self, tokens: int) -> int:
        """Wait until one request of about `tokens` tokens fits, then count it. Returns its ticket
        (for `observe`)."""
        while True:
            now = self.clock()
            if self.allowance is not None and now >= self.reset_at:
                self.allowance = None  # a new window: the next reply says how much is left
            wait = self.blocked_until - now
            if self.allowance is not None and self.allowance <= 0:
                wait = max(wait, self.reset_at - now)
            if self.requests is not None:
                wait = max(wait, self.requests.wait_s(1))
            if self.tokens is not None:
                wait = max(wait, self.tokens.wait_s(tokens))
            if wait <= 0:
                if self.requests is not None:
                    self.requests.take(1)
                if self.tokens is not None:
                    self.tokens.take(tokens)
                self.sent += 1
                if self.allowance is not None:
                    self.allowance -= 1
                return self.sent
            self.waited_s += wait
            await asyncio.sleep(wait)

    def settle(self, estimated: int, used: int | None) -> None:
        """A request's estimate was `estimated` tokens and the server counted `used`: return the rest."""
        if self.tokens is not None and used is not None and used < estimated:
            self.tokens.give_back(estimated - used)

    def observe(self, headers, ticket: int) -> None:
        """Follow the server's counters in the reply to request `ticket`: when what remains would be
        used up by the requests sent after it (the server may not have counted them yet), hold new
        ones until the window resets."""
        if headers is None:
            return
        now = self.clock()
        remaining = _int_header(headers, "x-ratelimit-remaining-requests")
        reset = parse_reset(headers.get("x-ratelimit-reset-requests"))
        if remaining is not None and reset is not None:
            left = remaining - (self.sent - ticket)
            if self.allowance is None or now >= self.reset_at:
                self.allowance, self.reset_at = left, now + reset
            else:
                self.allowance, self.reset_at = min(self.allowance, left), max(self.reset_at, now + reset)
        # tokens: a request's size is only estimated, so hold new ones only when none are left
        remaining = _int_header(headers, "x-ratelimit-remaining-tokens")
        reset = parse_reset(headers.get("x-ratelimit-reset-tokens"))
        if remaining is not None and reset is not None and remaining <= 0:
            self.blocked_until = max(self.blocked_until, now + reset)


class AdaptiveLimit:
    """At most `limit` requests in flight; the limit halves on a 429 and creeps back up on success.

    Waiters queue in order and a release wakes only as many as may go (a condition variable
    woke every waiter on every release: quadratic with thousands of queued requests).
    Create and use it on one event loop."""

    def __init__(self, maximum: int):
        import collections

        self.maximum = maximum
        self.limit = float(maximum)
        self.in_flight = 0
        self.lowest = float(maximum)  # for logs and tests
        self._waiters: collections.deque = collections.deque()

    def _room(self) -> int:
        return max(1, int(self.limit)) - self.in_flight

    async def __aenter__(self):
        if self._room() > 0 and not self._waiters:
            self.in_flight += 1
            return self
        fut = asyncio.get_running_loop().create_future()
        self._waiters.append(fut)
        try:
            await fut  # the releaser counted us in
        except asyncio.CancelledError:
            if not fut.cancelled():
                self._release()  # woken and cancelled at once: hand the slot on
            elif fut in self._waiters:
                self._waiters.remove(fut)
            raise
        return self

    async def __aexit__(self, *exc):
        self._release()

    def _release(self) -> None:
        self.in_flight -= 1
        while self._waiters and self._room() > 0:
            fut = self._waiters.popleft()
            if not fut.done():
                self.in_flight += 1
                fut.set_result(None)

    def succeeded(self) -> None:
        self.limit = min(float(self.maximum), self.limit + 1.0 / max(self.limit, 1.0))

    def throttled(self) -> None:
        self.limit = max(1.0, self.limit / 2.0)
        self.lowest = min(self.lowest, self.limit)
