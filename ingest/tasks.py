"""The units of work and what comes back: small, picklable values that cross Ray boundaries."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date
from decimal import Decimal
from typing import Literal

from ingest.media.base import Row

#: Every state a report task can be in; changed in one place (ingest.ledger.Ledger.apply).
TaskStatus = Literal["pending", "running", "retrying", "done", "failed"]
TERMINAL: frozenset[str] = frozenset({"done", "failed"})


@dataclass(frozen=True, slots=True, order=True)
class ReportKey:
    media: str
    account: str
    day: date

    def __str__(self) -> str:
        return f"{self.media}/{self.account}/{self.day.isoformat()}"


@dataclass(frozen=True, slots=True)
class Totals:
    """Row count and metric sums of one report: what reconciliation compares downstream."""

    rows: int = 0
    impressions: int = 0
    clicks: int = 0
    spend: Decimal = Decimal(0)
    conversions: Decimal = Decimal(0)

    @classmethod
    def of(cls, rows: list[Row]) -> "Totals":
        return cls(
            rows=len(rows),
            impressions=sum(r.impressions for r in rows),
            clicks=sum(r.clicks for r in rows),
            spend=sum((r.spend for r in rows), Decimal(0)),
            conversions=sum((r.conversions for r in rows), Decimal(0)),
        )

    def __add__(self, other: "Totals") -> "Totals":
        return Totals(
            self.rows + other.rows,
            self.impressions + other.impressions,
            self.clicks + other.clicks,
            self.spend + other.spend,
            self.conversions + other.conversions,
        )


@dataclass(frozen=True, slots=True)
class ReportResult:
    """A fetched report, already written to GCS."""

    key: ReportKey
    totals: Totals
    bytes: int
    requests: int
    paths: tuple[str, ...]
    elapsed_s: float


EventKind = Literal["done", "failed", "retry", "restart", "breaker_open", "breaker_closed", "escalated"]


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
