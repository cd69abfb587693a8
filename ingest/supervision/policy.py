"""Where every retry decision is made.

The unit of retry is the failed *request*: ``RetryPolicy.decide_request`` is asked (through the
media's supervisor) when one request of a report — create, poll, page, download, stream —
fails, and that request alone is sent again; the report job, the pages already read and the
cursor are kept. ``RetryPolicy.decide`` is the report-level decision, taken only when the
platform says the job itself failed or expired (``JobFailed``): then the report starts again
as a new job. Both look the error up in ``DECISION_TABLE`` (first matching class wins; the table
ends with an explicit default: anything not listed fails, it is never retried silently), and
both wait the server's hint when it gives one (``Throttled.retry_after`` from Retry-After /
Google ``retryDelay`` / Meta ``estimated_time_to_regain_access``), else exponential backoff with
full jitter. Budgets, each named in the reason when spent (``RetrySettings``):

=====================  =========================================================
``request_attempts``   attempts of one request
``malformed_attempts`` reads of a cut or unparseable 200 body (then DataError, body kept)
``retry_budget``       request retries per report, all requests together
``max_attempts``       attempts of the whole report (new jobs)
=====================  =========================================================

A run deadline stops retrying in time for the morning.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from ingest.config import RetrySettings
from ingest.errors import (
    AuthError,
    BadRequest,
    DataError,
    FatalError,
    IngestError,
    JobFailed,
    Malformed,
    StageError,
    Throttled,
    Timeout,
    Transient,
)

Action = Literal["retry", "fail"]

#: (error class, action, reason). Order matters: first isinstance match wins.
DECISION_TABLE: tuple[tuple[type[BaseException], Action, str], ...] = (
    (Throttled, "retry", "throttled by the platform"),
    (Transient, "retry", "transient failure (5xx, outage, dropped connection)"),
    (Timeout, "retry", "request timed out"),
    (Malformed, "retry", "cut or unparseable body: read again (bounded), every body kept"),
    (JobFailed, "retry", "the platform's report job failed or expired: a new job"),
    (AuthError, "fail", "authentication/permission failure: retrying cannot help"),
    (BadRequest, "fail", "request rejected as invalid: retrying cannot help"),
    (DataError, "fail", "malformed or drifted payload: raw body kept, report failed"),
    (StageError, "fail", "stage-2 step failed"),
    (FatalError, "fail", "fatal error"),
    (IngestError, "fail", "unclassified error of ours: not retried"),
    (BaseException, "fail", "unknown exception: not retried (default)"),
)


def backoff_delay(attempt: int, settings: RetrySettings, rng: random.Random | None = None) -> float:
    """Full-jitter exponential backoff: uniform(0, min(max, min_s * multiplier**(attempt-1))).

    ``attempt`` is the number of the attempt that just failed (1-based). Full jitter spreads
    retries of many reports so they do not hit the API in waves (AWS architecture blog,
    "Exponential Backoff And Jitter"); the floor keeps a minimum pause after a failure.
    """
    uniform = rng.uniform if rng is not None else random.uniform
    cap = min(settings.backoff_max_s, settings.backoff_min_s * settings.multiplier ** max(0, attempt - 1))
    return max(settings.backoff_min_s, uniform(0, cap)) if cap > 0 else 0.0


@dataclass(frozen=True, slots=True)
class Decision:
    action: Action
    delay_s: float
    reason: str

    @property
    def retry(self) -> bool:
        return self.action == "retry"


class RetryPolicy:
    """Decides retry-or-fail and how long to wait, for one media's settings."""

    def __init__(
        self,
        settings: RetrySettings,
        *,
        deadline: float | None = None,
        rng: random.Random | None = None,
        clock: Callable[[], float] | None = None,
    ) -> None:
        self.settings = settings
        self.deadline = deadline  # absolute clock() time after which nothing is retried
        self.rng = rng or random.Random()
        self.clock = clock or time.monotonic

    def classify(self, error: BaseException) -> tuple[Action, str]:
        for cls, action, reason in DECISION_TABLE:
            if isinstance(error, cls):
                return action, reason
        raise AssertionError("DECISION_TABLE ends with BaseException")  # pragma: no cover

    def decide(self, error: BaseException, attempt: int) -> Decision:
        """Report level: ``attempt`` is the 1-based number of the report attempt that just failed."""
        action, reason = self.classify(error)
        if action == "fail":
            return Decision("fail", 0.0, reason)
        if attempt >= self.settings.max_attempts:
            return Decision("fail", 0.0, f"{reason}; gave up after {attempt} attempts of the report (max_attempts)")
        return self._wait(error, attempt, reason)

    def decide_request(self, error: BaseException, attempt: int, retries_so_far: int, cut_reads: int = 0) -> Decision:
        """Request level: ``attempt`` is the 1-based attempt of this one request that just failed,
        ``retries_so_far`` the request retries the report has already used, ``cut_reads`` how many
        of this request's answers were cut or unparseable (``Malformed``)."""
        action, reason = self.classify(error)
        if action == "fail":
            return Decision("fail", 0.0, reason)
        if isinstance(error, JobFailed):  # not a request problem: the report starts again (decide)
            return Decision("fail", 0.0, reason)
        s = self.settings
        if isinstance(error, Malformed) and max(cut_reads, 1) >= s.malformed_attempts:
            return Decision("fail", 0.0,
                            f"{reason}; body cut or unparseable in {max(cut_reads, 1)} reads (malformed_attempts)")
        if attempt >= s.request_attempts:
            return Decision("fail", 0.0,
                            f"{reason}; gave up after {attempt} attempts of this request (request_attempts)")
        if retries_so_far >= s.retry_budget:
            return Decision("fail", 0.0,
                            f"{reason}; the report's {s.retry_budget} request retries are spent (retry_budget)")
        return self._wait(error, attempt, reason)

    def _wait(self, error: BaseException, attempt: int, reason: str) -> Decision:
        hint = getattr(error, "retry_after", None)
        if hint is not None and hint > 0:
            if hint > self.settings.max_hint_s:
                return Decision("fail", 0.0, f"{reason}; server asks to wait {hint:.0f}s > max_hint_s")
            delay, why = float(hint), f"{reason}; waiting the server's hint {hint:.1f}s"
        else:
            delay = backoff_delay(attempt, self.settings, self.rng)
            why = f"{reason}; backoff {delay:.2f}s (attempt {attempt})"
        if self.deadline is not None and self.clock() + delay > self.deadline:
            return Decision("fail", 0.0, f"{reason}; run deadline reached, not retrying")
        return Decision("retry", delay, why)
