"""Partition totals: the numbers reconciliation compares at every hop (API → GCS → BigQuery → RDB).

Money and conversions are summed as exact ``Decimal``; a partition's spend may mix currencies
(accounts of one media can bill in different currencies) which is fine for a *checksum*: the
same rows are summed at every hop, so the sums must agree exactly.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any, Protocol

from ingest.errors import DataError
from aggregations.queries import RAW_COLUMNS as CSV_COLUMNS  # the landed CSV's columns = the raw table's


class RowLike(Protocol):
    """What a row needs to be summed (``ingest.media.base.Row`` is one): stage 2 does not
    depend on the connectors."""

    @property
    def impressions(self) -> int: ...
    @property
    def clicks(self) -> int: ...
    @property
    def spend(self) -> Decimal: ...
    @property
    def conversions(self) -> Decimal: ...

ZERO = Decimal(0)


@dataclass(frozen=True, slots=True)
class Totals:
    """Row count and metric sums of one (media, date) partition."""

    rows: int = 0
    impressions: int = 0
    clicks: int = 0
    spend: Decimal = ZERO
    conversions: Decimal = ZERO

    def __add__(self, other: Totals) -> Totals:
        return Totals(
            self.rows + other.rows,
            self.impressions + other.impressions,
            self.clicks + other.clicks,
            self.spend + other.spend,
            self.conversions + other.conversions,
        )

    @classmethod
    def from_rows(cls, rows: Iterable[RowLike]) -> Totals:
        """What the driver passes as ``fetched``: the totals of the rows a connector returned."""
        total = cls()
        for r in rows:
            total = total + cls(1, r.impressions, r.clicks, r.spend, r.conversions)
        return total

    @classmethod
    def from_csv(cls, data: bytes, *, source: str = "csv") -> Totals:
        """Totals of one normalized CSV object (header row + rows, see ``rows_to_csv``)."""
        reader = csv.reader(io.StringIO(data.decode("utf-8")))
        header = next(reader, None)
        if header is None:
            return cls()
        if tuple(header) != CSV_COLUMNS:
            raise DataError(f"{source}: unexpected CSV header {header!r}")
        idx = {name: i for i, name in enumerate(CSV_COLUMNS)}
        rows = imps = clicks = 0
        spend = conv = ZERO
        for line_no, rec in enumerate(reader, start=2):
            if not rec:
                continue
            try:
                imps += int(rec[idx["impressions"]])
                clicks += int(rec[idx["clicks"]])
                spend += Decimal(rec[idx["spend"]])
                conv += Decimal(rec[idx["conversions"]])
            except (ValueError, IndexError, InvalidOperation):
                raise DataError(f"{source}: line {line_no} is malformed: {rec!r}") from None
            rows += 1
        return cls(rows, imps, clicks, spend, conv)

    def metrics(self) -> tuple[int, int, Decimal, Decimal]:
        return (self.impressions, self.clicks, self.spend, self.conversions)

    def describe(self) -> str:
        return (
            f"rows={self.rows} impressions={self.impressions} clicks={self.clicks} "
            f"spend={_fmt(self.spend)} conversions={_fmt(self.conversions)}"
        )

    def as_dict(self) -> dict[str, Any]:
        return {"rows": self.rows, "impressions": self.impressions, "clicks": self.clicks,
                "spend": _fmt(self.spend), "conversions": _fmt(self.conversions)}


def _fmt(d: Decimal) -> str:
    """Normalized text of a decimal (``123.450000000`` → ``123.45``), never exponent notation."""
    if d == 0:
        return "0"
    text = format(d.normalize(), "f")
    return text


def differences(left_name: str, left: Totals, right_name: str, right: Totals, *, rows: bool = True) -> list[str]:
    """Human-readable mismatches between two totals (empty when they agree exactly)."""
    fields = (("rows",) if rows else ()) + ("impressions", "clicks", "spend", "conversions")
    out = []
    for f in fields:
        a, b = getattr(left, f), getattr(right, f)
        if a != b:
            sa, sb = (_fmt(a), _fmt(b)) if isinstance(a, Decimal) else (str(a), str(b))
            out.append(f"{f}: {left_name}={sa} {right_name}={sb}")
    return out
