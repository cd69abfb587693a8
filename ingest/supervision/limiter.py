"""The media's quota budget: a token bucket every request waits on, async-job polls included.

One ``RateLimiter`` lives in the media's supervisor actor; fetchers (on any node) ask it for
a permit before each request, so the rate holds for the whole media, not per process. The
same goes for ``JobSlots``: the async report jobs (Meta async insights, Yahoo reports) a
media may have open at once, each held by the supervisor around its report's fetch.
Usage headers near the limit slow it down *before* the platform throttles us; a throttle
pauses it until the server's hint has passed.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter, deque
from collections.abc import AsyncIterator, Callable, Hashable
from typing import NamedTuple


class Permit(NamedTuple):
    """One request's place in the media's schedule, as the supervisor hands it to a fetcher."""

    #: ``time.time()`` to send at; negative: the account is paused, ask again in ``-send_at`` s
    send_at: float
    #: whether the write must start within ``late_send_s`` of ``send_at`` (``RateLimiter.binding``)
    deadline: bool = True


class RateLimiter:
    """At most ``burst`` permits at once, then ``rate`` permits/s: a token bucket written as
    GCRA (virtual scheduling), so every permit gets its own send time and a pause moves the
    whole schedule: after a pause at most ``burst`` permits go out together, never a backlog.
    """

    #: reported usage above which the rate follows the capacity it implies; the share of that
    #: capacity we aim for; the floor of any slowdown; the window our own send rate is measured on
    SLOW_FROM = 0.8
    TARGET = 0.95
    MIN_FACTOR = 0.1
    WINDOW_S = 2.0

    def __init__(self, rate: float, burst: int, clock: Callable[[], float] = time.monotonic,
                 window_s: float = 1.0, jitter_s: float = 0.0, late_s: float = 0.0) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError("rate must be > 0 and burst >= 1")
        self.base_rate = rate
        self.rate = rate
        self.burst = burst
        self.clock = clock
        # Platforms count requests by *arrival* in a window: sends spaced exactly at the rate
        # arrive bunched by the network's jitter. So any ``window_limit`` consecutive sends span
        # at least window + 2 × jitter: then no window of the platform sees more than its quota,
        # even with the configured rate equal to it (costs ≈ 2 × jitter per window of throughput).
        # A sender may also use its permit up to ``late_s`` after its send time (a busy process;
        # later than that it takes a new permit, see QuotaLink.gate), so that is added too.
        self.window_s = window_s
        self.late_s = late_s
        self.guard_s = 2 * jitter_s + late_s
        self.window_limit = max(1, int(rate * window_s + 1e-9))
        self._recent: deque[float] = deque(maxlen=self.window_limit)
        self._tat = clock()  # theoretical arrival time of the next permit at the current rate
        self._paused_until = 0.0
        self.granted = 0
        self.paused_s = 0.0
        self._sends: deque[float] = deque()  # scheduled send times, for our measured rate

    def reserve(self) -> float:
        """Take a permit now; return how long the caller must wait before using it."""
        now = self.clock()
        start = max(now, self._paused_until)
        interval = 1.0 / self.rate
        tat = max(self._tat, start)
        send_at = max(start, tat - (self.burst - 1) * interval)
        if len(self._recent) == self.window_limit:  # the window guard (see __init__)
            send_at = max(send_at, self._recent[0] + self.window_s + self.guard_s)
            tat = max(tat, send_at)
        self._recent.append(send_at)
        self._tat = tat + interval
        self.granted += 1
        self._sends.append(send_at)
        while self._sends and self._sends[0] < now - self.WINDOW_S:
            self._sends.popleft()
        return send_at - now

    def binding(self, wait: float) -> bool:
        """Whether the rate binds the permit just reserved (``wait``: what ``reserve`` returned):
        it queued behind others for longer than the late allowance, or its window holds at least
        half the window's limit, or it is one of the night's first window (cold processes and
        new connections make the first writes the latest: every self-caused violation the bench
        saw without this came within a second of the first request). Only there can a late
        write bunch arrivals over the quota; far below it, pacing alone is enough."""
        if wait > self.late_s or len(self._recent) < self.window_limit:
            return True
        half = max(1, self.window_limit // 2)  # the window is full from here on: its half-th latest
        return self._recent[-half] > self._recent[-1] - self.window_s

    def observe_usage(self, utilization: float) -> None:
        """Follow the platform's own usage report: slow down *before* it throttles.

        Usage ``u`` while we send at ``r`` permits/s implies a capacity of ``r / u``; above
        SLOW_FROM the rate becomes TARGET × that capacity (never above the configured rate).
        Alone on the budget at our configured rate this is a fixed point (no slowdown); when
        someone else spends the same budget, ``u`` rises and we yield in proportion.
        ``u`` is the busiest of the platform's windows the fetchers saw (the highest report since
        their last permit call), so ``r`` is our busiest window too: our average rate against
        a peak usage read ~1 request per window of jitter as someone else's and settled ~5 %
        below the window guard's pace (Meta at 10.9 of 12/s in the faults bench).
        """
        if utilization <= self.SLOW_FROM:
            self.rate = self.base_rate
            return
        capacity = self._peak_rate(self.clock()) / utilization
        self.rate = max(self.base_rate * self.MIN_FACTOR, min(self.base_rate, self.TARGET * capacity))

    def _peak_rate(self, now: float) -> float:
        """Our most permits scheduled in any ``window_s`` among the last WINDOW_S, per second."""
        recent = [t for t in self._sends if now - self.WINDOW_S <= t <= now]
        if len(recent) < 2:
            return self.rate
        peak, first = 0, 0
        for i, t in enumerate(recent):
            while recent[first] <= t - self.window_s:
                first += 1
            peak = max(peak, i - first + 1)
        return peak / self.window_s

    def pause(self, seconds: float) -> None:
        """Hold every permit until ``seconds`` from now (the platform asked us to wait)."""
        now = self.clock()  # read once: a second read would count the time between the two as not paused
        until = now + seconds
        if until > self._paused_until:
            self.paused_s += until - max(self._paused_until, now)
            self._paused_until = until


class JobSlots:
    """At most ``n`` async report jobs in flight per media (a platform-side quota).

    Held by the supervisor around the whole fetch of a report that is a platform job
    (``MediaSupervisor._handle``), so a fetcher that dies cannot keep one; a slot is owned by
    its report, and a second release of it is a no-op.
    """

    def __init__(self, n: int) -> None:
        if n < 1:
            raise ValueError("n must be >= 1")
        self.n = n
        self._sem = asyncio.Semaphore(n)
        self._held: Counter[Hashable] = Counter()
        self.peak = 0

    @property
    def in_use(self) -> int:
        return sum(self._held.values())

    async def acquire(self, owner: Hashable) -> None:
        await self._sem.acquire()
        self._held[owner] += 1
        self.peak = max(self.peak, self.in_use)

    def release(self, owner: Hashable) -> bool:
        """Give back one slot of ``owner``; False if it held none (already taken back)."""
        if self._held[owner] <= 0:
            self._held.pop(owner, None)
            return False
        self._held[owner] -= 1
        if not self._held[owner]:
            del self._held[owner]
        self._sem.release()
        return True

    @contextlib.asynccontextmanager
    async def slot(self, owner: Hashable) -> AsyncIterator[None]:
        await self.acquire(owner)
        try:
            yield
        finally:
            self.release(owner)


def poll_interval(polls_so_far: int, min_s: float, max_s: float, growth: float = 1.6) -> float:
    """Adaptive poll interval: start fast, back off geometrically while the job runs."""
    return min(max_s, min_s * growth ** max(0, polls_so_far))
