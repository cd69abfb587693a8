"""The media's quota budget: a token bucket every request waits on, async-job polls included.

One ``RateLimiter`` lives in the media's supervisor actor; fetchers (on any node) ask it for
a permit before each request, so the rate holds for the whole media, not per process.
Usage headers near the limit slow it down *before* the platform throttles us; a throttle
pauses it until the server's hint has passed.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable


class RateLimiter:
    """Token bucket: ``rate`` permits/s on average, at most ``burst`` at once."""

    #: utilization above which we start slowing down, and the floor of the slowdown
    SLOW_FROM = 0.75
    MIN_FACTOR = 0.1

    def __init__(self, rate: float, burst: int, clock: Callable[[], float] = time.monotonic) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError("rate must be > 0 and burst >= 1")
        self.base_rate = rate
        self.rate = rate
        self.burst = burst
        self.clock = clock
        self._tokens = float(burst)
        self._last = clock()
        self._paused_until = 0.0
        self._lock = asyncio.Lock()
        self.granted = 0

    def _refill(self, now: float) -> None:
        self._tokens = min(self.burst, self._tokens + (now - self._last) * self.rate)
        self._last = now

    def reserve(self) -> float:
        """Take a permit now; return how long the caller must wait before using it."""
        now = self.clock()
        self._refill(now)
        self._tokens -= 1.0
        self.granted += 1
        wait = 0.0 if self._tokens >= 0 else -self._tokens / self.rate
        return max(wait, self._paused_until - now)

    async def acquire(self) -> None:
        async with self._lock:  # serialize reservations so waits queue in order
            wait = self.reserve()
        if wait > 0:
            await asyncio.sleep(wait)

    def observe_usage(self, utilization: float) -> None:
        """Scale the rate down linearly from SLOW_FROM to 100% reported usage."""
        if utilization <= self.SLOW_FROM:
            factor = 1.0
        else:
            factor = max(self.MIN_FACTOR, 1.0 - (utilization - self.SLOW_FROM) / (1.0 - self.SLOW_FROM))
        now = self.clock()
        self._refill(now)
        self.rate = self.base_rate * factor

    def pause(self, seconds: float) -> None:
        """Hold every permit until ``seconds`` from now (the platform asked us to wait)."""
        self._paused_until = max(self._paused_until, self.clock() + seconds)


class JobSlots:
    """At most ``n`` async report jobs in flight per media (a platform-side quota)."""

    def __init__(self, n: int) -> None:
        self._sem = asyncio.Semaphore(n)

    async def __aenter__(self) -> None:
        await self._sem.acquire()

    async def __aexit__(self, *exc: object) -> None:
        self._sem.release()


def poll_interval(polls_so_far: int, min_s: float, max_s: float, growth: float = 1.6) -> float:
    """Adaptive poll interval: start fast, back off geometrically while the job runs."""
    return min(max_s, min_s * growth ** max(0, polls_so_far))
