"""The units of work and what comes back: small, picklable values that cross Ray boundaries."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, timedelta
from typing import Literal

from aggregations.totals import Totals  # one checksum type from the API to the RDB

@dataclass(frozen=True, slots=True, order=True)
class ReportKey:
    """One report request: an account's ``span`` days from ``day`` (a refetch window is one
    report with daily rows, not one request per day). The ledger keeps each day on its own."""

    media: str
    account: str
    day: date
    span: int = 1

    @property
    def last(self) -> date:
        return self.day + timedelta(days=self.span - 1)

    def days(self) -> list[date]:
        return [self.day + timedelta(days=i) for i in range(self.span)]

    def day_keys(self) -> list[ReportKey]:
        return [ReportKey(self.media, self.account, d) for d in self.days()]

    def __str__(self) -> str:
        when = self.day.isoformat() if self.span == 1 else f"{self.day.isoformat()}..{self.last.isoformat()}"
        return f"{self.media}/{self.account}/{when}"


@dataclass(frozen=True, slots=True)
class DayResult:
    """One day of a fetched report, landed as its own CSV (its own partition in BigQuery)."""

    day: date
    totals: Totals
    #: sha256 of the day's CSV (rows sorted): equal digest = nothing to republish
    digest: str
    csv_path: str


@dataclass(frozen=True, slots=True)
class ReportResult:
    """A fetched report, already written to GCS (one CSV per day, one raw JSON per report)."""

    key: ReportKey
    totals: Totals
    bytes: int
    requests: int
    paths: tuple[str, ...]
    elapsed_s: float
    days: tuple[DayResult, ...] = ()


EventKind = Literal[
    "done", "failed", "retry", "request_retry", "restart", "breaker_open", "breaker_closed", "escalated"
]


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
