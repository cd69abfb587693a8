"""The units of work and what comes back: small, picklable values that cross Ray boundaries."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date
from typing import Literal

from aggregations.totals import Totals  # one checksum type from the API to the RDB

#: Every state a report task can be in; changed in one place (ingest.ledger.Ledger._apply).
TaskStatus = Literal["pending", "running", "retrying", "done", "failed"]


@dataclass(frozen=True, slots=True, order=True)
class ReportKey:
    media: str
    account: str
    day: date

    def __str__(self) -> str:
        return f"{self.media}/{self.account}/{self.day.isoformat()}"


@dataclass(frozen=True, slots=True)
class ReportResult:
    """A fetched report, already written to GCS."""

    key: ReportKey
    totals: Totals
    bytes: int
    requests: int
    paths: tuple[str, ...]
    elapsed_s: float


EventKind = Literal["done", "failed", "retry", "request_retry", "restart", "breaker_open", "breaker_closed", "escalated"]


@dataclass(frozen=True, slots=True)
class Event:
    """What a supervisor streams to the driver as it happens (the driver writes the ledger)."""

    kind: EventKind
    media: str
    key: ReportKey | None = None
    attempt: int = 0
    result: ReportResult | None = None
    error_kind: str | None = None
    message: str | None = None
    delay_s: float = 0.0
    extra: dict[str, object] = field(default_factory=dict)
