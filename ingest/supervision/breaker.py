"""Circuit breaker per media: stop sending when the platform is down or throttling hard.

closed --(N consecutive throttles/outages)--> open --(open_s passed)--> half_open
half_open: exactly one probe request is let through; success closes, failure re-opens.
Other media have their own breaker, so one platform's outage never slows the others.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Literal

State = Literal["closed", "open", "half_open"]


class CircuitBreaker:
    def __init__(self, threshold: int, open_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.threshold = threshold
        self.open_s = open_s
        self.clock = clock
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
        self.state = "closed"
        self._probe_out = False

    def record_failure(self) -> bool:
        """Count a throttle/outage; return True when this call opened the breaker."""
        self.failures += 1
        if self.state == "half_open" or (self.state == "closed" and self.failures >= self.threshold):
            self.state = "open"
            self.opened_at = self.clock()
            self.opened_count += 1
            self._probe_out = False
            return True
        return False

    def cancel_probe(self) -> None:
        """The probe never reached the API (its fetcher died): let another request probe."""
        if self.state == "half_open":
            self._probe_out = False

    def record_neutral(self) -> None:
        """A non-outage outcome (e.g. a fatal 4xx): the API is up; release a probe slot."""
        if self.state == "half_open":
            self.record_success()
