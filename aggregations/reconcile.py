"""Reconciliation: the same partition counted at every hop must agree exactly.

Per (media, date): rows fetched (reported by the driver) == rows in the partition's GCS CSVs
== rows in ``raw_{media}`` for that date; impressions/clicks/spend/conversions agree from the
fetch through to ``mart_daily_campaign``. Any difference fails the partition with the numbers
in the message, so an operator sees *where* rows were lost or doubled.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal
from typing import Any

import sqlalchemy as sa

from aggregations.mart import mart_daily_campaign
from aggregations.totals import Totals, differences
from ingest.storage import ReportStore, partition_prefix


def partition_csvs(store: ReportStore, media: str, day: date) -> dict[str, str]:
    """The partition's CSV objects, name → MD5 as GCS lists it, in name order (one listing)."""
    listed = store.list_md5(partition_prefix(media, day))
    return {n: listed[n] for n in sorted(listed) if n.endswith(".csv")}


def csv_totals(store: ReportStore, listed: Mapping[str, str],
               landed: Mapping[str, tuple[str, Totals]] | None = None) -> tuple[Totals, int]:
    """Sum of the rows of the ``listed`` objects (name → MD5); how many had to be read.

    An object whose MD5, computed by GCS from the bytes it holds, equals the one the ledger
    recorded for the bytes a fetcher landed there (``landed``: name → (MD5, their totals)) holds
    exactly those rows: it is counted from the ledger. Any other object — landed before MD5s were
    recorded, rewritten by a failed re-fetch, changed or put there by hand — is read and parsed.
    The CSV's own rows are still counted independently at the next hop, by BigQuery's load.
    """
    landed = landed or {}
    total, read = Totals(), 0
    for name, md5 in listed.items():
        known = landed.get(name)
        if md5 and known is not None and known[0] == md5:
            total = total + known[1]
            continue
        total = total + Totals.from_csv(store.get(name), source=f"gs://{store.bucket_name}/{name}")
        read += 1
    return total, read


def bq_totals(rows: Iterable[dict[str, Any]]) -> dict[date, dict[str, Totals]]:
    """``raw_totals.sql`` result rows → per date, per-media totals."""
    out: dict[date, dict[str, Totals]] = {}
    for r in rows:
        day = r["date"].date() if isinstance(r["date"], datetime) else r["date"]
        out.setdefault(day, {})[r["media"]] = Totals(
            int(r["row_count"]), int(r["impressions"] or 0), int(r["clicks"] or 0),
            Decimal(r["spend"] or 0), Decimal(r["conversions"] or 0),
        )
    return out


def mart_totals(engine: sa.Engine, pairs: Iterable[tuple[str, date]]) -> dict[tuple[str, date], Totals]:
    """Read ``mart_daily_campaign`` back and sum per (media, date) in Python with Decimal, so the
    check is exact on SQLite too (it would sum NUMERIC as floating point)."""
    wanted = set(pairs)
    out = {p: Totals() for p in wanted}
    if not wanted:
        return out
    t = mart_daily_campaign
    cond = sa.tuple_(t.c.media, t.c.date).in_(sorted(wanted))
    stmt = sa.select(t.c.media, t.c.date, t.c.impressions, t.c.clicks, t.c.spend, t.c.conversions).where(cond)
    with engine.connect() as conn:
        for media, day, imps, clicks, spend, conv in conn.execute(stmt):
            key = (media, day)
            out[key] = out[key] + Totals(1, int(imps), int(clicks), Decimal(spend), Decimal(conv))
    return out


@dataclass(frozen=True, slots=True)
class Reconciliation:
    ok: bool
    detail: str


def reconcile(fetched: Totals | None, csv: Totals, bq: Totals, mart: Totals) -> Reconciliation:
    problems: list[str] = []
    if fetched is not None:
        problems += differences("fetched", fetched, "gcs", csv)
    problems += differences("gcs", csv, "bigquery", bq)
    problems += differences("bigquery", bq, "mart", mart, rows=False)
    counts = (
        f"fetched={fetched.rows if fetched is not None else 'n/a'} gcs={csv.rows} bigquery={bq.rows} "
        f"mart_campaign_rows={mart.rows}"
    )
    if problems:
        return Reconciliation(False, "reconciliation mismatch: " + "; ".join(problems) + f" ({counts})")
    note = "" if fetched is not None else " (no fetched totals given: fetch→gcs not checked)"
    return Reconciliation(True, f"ok: {csv.describe()}{note}")
