"""The retry decision table, backoff bounds with jitter, hint precedence, the deadline."""

from __future__ import annotations

import random

import pytest

from ingest.config import RetrySettings
from ingest.errors import AuthError, BadRequest, DataError, IngestError, StageError, Throttled, Timeout, Transient
from ingest.supervision.policy import DECISION_TABLE, RetryPolicy, backoff_delay

SETTINGS = RetrySettings(max_attempts=5, backoff_min_s=0.5, backoff_max_s=8.0, multiplier=2.0, max_hint_s=120)


@pytest.mark.parametrize(
    ("error", "action"),
    [
        (Throttled("slow down"), "retry"),
        (Transient("503"), "retry"),
        (Timeout("read timeout"), "retry"),
        (AuthError("token expired"), "fail"),
        (BadRequest("bad field"), "fail"),
        (DataError("truncated"), "fail"),
        (StageError("load failed"), "fail"),
        (IngestError("ours, unclassified"), "fail"),
        (KeyError("a bug"), "fail"),  # the explicit default: unknown → never retried
    ],
)
def test_decision_table(error: BaseException, action: str) -> None:
    assert RetryPolicy(SETTINGS).decide(error, attempt=1).action == action


def test_table_ends_with_explicit_default() -> None:
    assert DECISION_TABLE[-1][0] is BaseException and DECISION_TABLE[-1][1] == "fail"


@pytest.mark.parametrize("attempt", [1, 2, 3, 4, 5, 6, 10])
def test_backoff_bounds_with_full_jitter(attempt: int) -> None:
    rng = random.Random(attempt)
    cap = min(SETTINGS.backoff_max_s, SETTINGS.backoff_min_s * 2 ** (attempt - 1))
    delays = [backoff_delay(attempt, SETTINGS, rng) for _ in range(2000)]
    assert all(SETTINGS.backoff_min_s <= d <= max(cap, SETTINGS.backoff_min_s) for d in delays)
    if cap >= 4:  # jitter really spreads the delays over the window
        assert max(delays) - min(delays) > cap / 2


def test_server_hint_wins_over_backoff() -> None:
    d = RetryPolicy(SETTINGS, rng=random.Random(1)).decide(Throttled("x", retry_after=42.0), attempt=1)
    assert d.retry and d.delay_s == 42.0 and "hint" in d.reason


def test_hint_longer_than_allowed_fails() -> None:
    d = RetryPolicy(SETTINGS).decide(Throttled("x", retry_after=3600.0), attempt=1)
    assert not d.retry and "max_hint_s" in d.reason


def test_gives_up_after_max_attempts() -> None:
    p = RetryPolicy(SETTINGS)
    assert p.decide(Transient("x"), attempt=4).retry
    d = p.decide(Transient("x"), attempt=5)
    assert not d.retry and "gave up after 5 attempts" in d.reason


def test_deadline_stops_retrying() -> None:
    now = [1000.0]
    p = RetryPolicy(SETTINGS, deadline=1010.0, clock=lambda: now[0])
    assert p.decide(Throttled("x", retry_after=5), attempt=1).retry
    d = p.decide(Throttled("x", retry_after=15), attempt=1)
    assert not d.retry and "deadline" in d.reason
