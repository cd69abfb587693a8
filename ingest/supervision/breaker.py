"""Circuit breaker per media: stop sending when the platform is down or throttling hard.

It opens only on media-wide evidence: outages or throttles seen by at least N *distinct*
accounts within ``window_s`` (app-scoped throttles each count as one more), never on one
account's bad streak — that account's own requests just wait their backoff, and an account
throttle pauses that account (supervisor).

closed --(N distinct accounts failing in the window)--> open --(open_s passed)--> half_open
half_open: exactly one probe request is let through; success closes, failure re-opens.
Other media have their own breaker, so one platform's outage never slows the others.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from typing import Literal

State = Literal["closed", "open", "half_open"]


class CircuitBreaker:
    def __init__(self, threshold: int, open_s: float, clock: Callable[[], float] = time.monotonic,
                 window_s: float = 60.0) -> None:
        self.threshold = threshold
        self.open_s = open_s
        self.window_s = window_s
        self.clock = clock
        self._evidence: deque[tuple[float, str]] = deque()
        self._app_seq = 0
        self.state: State = "closed"
        self.failures = 0
        self.opened_at = 0.0
        self.opened_count = 0
        self._probe_out = False

    def allow(self) -> bool:
        """May a request be sent now? In half_open only one probe at a time."""
        if self.state == "open" and self.clock() - self.opened_at >= self.open_s:
            self.state = "half_open"
            self._probe_out = False
        if self.state == "closed":
            return True
        if self.state == "half_open" and not self._probe_out:
            self._probe_out = True
            return True
        return False

    def wait_s(self) -> float:
        if self.state == "open":
            return max(0.0, self.open_s - (self.clock() - self.opened_at))
        return 0.05 if self.state == "half_open" else 0.0

    def record_success(self) -> None:
        self.failures = 0
        self._evidence.clear()
        self.state = "closed"
        self._probe_out = False

    def record_failure(self, scope: str = "app") -> bool:
        """Count an outage or throttle seen by ``scope`` (an account id, or "app" for an
        app-wide signal); return True when this call opened the breaker."""
        self.failures += 1
        now = self.clock()
        if scope == "app":
            self._app_seq += 1
            scope = f"app#{self._app_seq}"
        self._evidence.append((now, scope))
        while self._evidence and now - self._evidence[0][0] > self.window_s:
            self._evidence.popleft()
        if self.state == "half_open" or (self.state == "closed" and len(self.evidence()) >= self.threshold):
            self.state = "open"
            self.opened_at = now
            self.opened_count += 1
            self._probe_out = False
            self._evidence.clear()
            return True
        return False

    def evidence(self) -> list[str]:
        """The distinct accounts (and app-wide signals) that failed within the window."""
        return sorted({scope for _, scope in self._evidence})

    def cancel_probe(self) -> None:
        """The probe never reached the API (its fetcher died): let another request probe."""
        if self.state == "half_open":
            self._probe_out = False

    def record_neutral(self) -> None:
        """A non-outage outcome (e.g. a fatal 4xx): the API is up; release a probe slot."""
        if self.state == "half_open":
            self.record_success()
