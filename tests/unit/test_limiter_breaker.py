"""Token bucket never exceeds its rate over a window; usage slows it; breaker transitions."""

from __future__ import annotations

import random

import pytest

from ingest.supervision.breaker import CircuitBreaker
from ingest.supervision.limiter import RateLimiter, poll_interval


class FakeClock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


@pytest.mark.parametrize(("rate", "burst"), [(5.0, 1), (10.0, 5), (50.0, 10)])
def test_limiter_never_exceeds_rate_over_any_window(rate: float, burst: int) -> None:
    clock = FakeClock()
    lim = RateLimiter(rate, burst, clock=clock)
    sends = []
    for _ in range(int(rate * 10)):  # callers arrive all at once; each uses its permit when told
        wait = lim.reserve()
        sends.append(clock.t + wait)
    sends.sort()
    window = 1.0
    for i, start in enumerate(sends):
        in_window = sum(1 for s in sends[i:] if s < start + window)
        assert in_window <= rate * window + burst


def test_alone_on_the_budget_the_platforms_usage_report_does_not_slow_us() -> None:
    """Meta reports usage as the share of its window the arrivals fill, and the fetchers pass on
    the highest report since their last permit call. Alone on the budget, paced by the window
    guard, that peak is ~100 %: the limiter must read it as our own peak, not someone else's."""
    rate, jitter, latency = 12.0, 0.015, 0.05
    clock = FakeClock()
    lim = RateLimiter(rate, 1, clock=clock, jitter_s=jitter, late_s=0.02)
    rng = random.Random(7)
    arrivals: list[float] = []
    peak = 0.0
    for n in range(1, 12 * 60):
        clock.t += lim.reserve()  # a saturated queue: the next request asks as this one goes
        arrived = clock.t + latency + rng.uniform(-jitter, jitter)
        arrivals.append(arrived)
        in_window = sum(1 for a in arrivals[-30:] if arrived - 1.0 < a <= arrived)
        peak = max(peak, round(100 * min(1.0, in_window / rate)) / 100)  # as the simulator reports it
        if n % 4 == 0:  # one permit call per few requests carries the highest usage seen since
            lim.observe_usage(peak)
            peak = 0.0
    sent = (len(arrivals) - 1) / (arrivals[-1] - arrivals[0])
    guard_pace = rate / (1.0 + lim.guard_s)  # window_limit sends per window + guard
    assert sent >= 0.98 * guard_pace, (sent, guard_pace, lim.rate)


def test_usage_near_limit_slows_down_and_recovers() -> None:
    clock = FakeClock()
    lim = RateLimiter(10.0, 1, clock=clock)
    for _ in range(20):  # we send at 10/s for 2 s
        clock.t += lim.reserve() + 0.0
    lim.observe_usage(0.5)
    assert lim.rate == 10.0
    lim.observe_usage(0.95)  # alone on the budget at our own rate: a fixed point, no slowdown
    assert lim.rate == pytest.approx(10.0)
    lim.observe_usage(2.0)  # someone else spends as much as we do: capacity 5/s → 95 % of it
    assert lim.rate == pytest.approx(4.75, rel=0.06)
    lim.observe_usage(100.0)
    assert lim.rate == pytest.approx(1.0)  # floor: MIN_FACTOR
    lim.observe_usage(0.1)
    assert lim.rate == 10.0


def test_pause_holds_permits() -> None:
    clock = FakeClock()
    lim = RateLimiter(100.0, 10, clock=clock)
    lim.pause(30)
    assert lim.reserve() == pytest.approx(30)


def test_poll_interval_grows_and_caps() -> None:
    seq = [poll_interval(n, 0.5, 10) for n in range(12)]
    assert seq[0] == 0.5 and seq == sorted(seq) and seq[-1] == 10


def test_breaker_transitions() -> None:
    clock = FakeClock()
    b = CircuitBreaker(threshold=3, open_s=10, clock=clock)
    assert b.allow()
    assert not b.record_failure() and not b.record_failure()
    assert b.record_failure() and b.state == "open"
    assert not b.allow()
    clock.t = 9.9
    assert not b.allow()
    clock.t = 10.0
    assert b.allow() and b.state == "half_open"
    assert not b.allow()  # exactly one probe
    assert b.record_failure() and b.state == "open"  # probe failed: open again
    clock.t = 20.0
    assert b.allow()
    b.record_success()
    assert b.state == "closed" and b.allow() and b.allow()


def test_breaker_success_resets_consecutive_count() -> None:
    b = CircuitBreaker(threshold=2, open_s=1, clock=FakeClock())
    b.record_failure()
    b.record_success()
    assert not b.record_failure() and b.state == "closed"
