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
    #: the digest of each day's CSV as the ledger recorded it *done* when the run was planned
    #: (None: not done, or unknown); not part of the identity. The fetcher leaves a day's object
    #: alone when its new CSV has that digest: a refetch window rewrites only what changed.
    landed: tuple[str | None, ...] = field(default=(), compare=False, hash=False, repr=False)

    @property
    def last(self) -> date:
        return self.day + timedelta(days=self.span - 1)

    def days(self) -> list[date]:
        return [self.day + timedelta(days=i) for i in range(self.span)]

    def day_keys(self) -> list[ReportKey]:
        return [ReportKey(self.media, self.account, d) for d in self.days()]

    def landed_digest(self, day: date) -> str | None:
        """What the ledger had for ``day`` when the run was planned (see ``landed``)."""
        i = (day - self.day).days
        return self.landed[i] if len(self.landed) == self.span and 0 <= i < self.span else None

    def without_landed(self) -> ReportKey:
        """The same report, every object written again: an attempt after one that may have
        written part of it (a retry, a lost worker) cannot trust what was landed before."""
        return ReportKey(self.media, self.account, self.day, self.span) if self.landed else self

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
    #: MD5 of the same bytes, base64, as GCS lists the object (``md5Hash``): lets stage 2 count
    #: the object from these totals instead of reading it back; "" = unknown
    md5: str = ""


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
