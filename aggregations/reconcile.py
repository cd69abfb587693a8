"""Reconciliation: the same partition counted at every hop must agree exactly.

Per (media, date): rows fetched (reported by the driver) == rows in the partition's GCS CSVs
== rows in ``raw_{media}`` for that date; impressions/clicks/spend/conversions agree from the
fetch through to ``mart_daily_campaign``. Any difference fails the partition with the numbers
in the message, so an operator sees *where* rows were lost or doubled.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
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


def split_landed(listed: Mapping[str, str],
                 landed: Mapping[str, tuple[str, Totals]] | None = None) -> tuple[Totals, list[str]]:
    """The rows of the ``listed`` objects (name → MD5) known without reading them, and the
    objects that must be read.

    An object whose MD5, computed by GCS from the bytes it holds, equals the one the ledger
    recorded for the bytes a fetcher landed there (``landed``: name → (MD5, their totals)) holds
    exactly those rows: it is counted from the ledger. Any other object — landed before MD5s were
    recorded, rewritten by a failed re-fetch, changed or put there by hand — must be read and
    parsed. The CSV's own rows are still counted independently at the next hop, by BigQuery's load.
    """
    landed = landed or {}
    known, unread = Totals(), []
    for name, md5 in listed.items():
        hit = landed.get(name)
        if md5 and hit is not None and hit[0] == md5:
            known = known + hit[1]
        else:
            unread.append(name)
    return known, unread


def read_totals(store: ReportStore, name: str) -> Totals:
    """The rows of one CSV object, downloaded and parsed."""
    return Totals.from_csv(store.get(name), source=f"gs://{store.bucket_name}/{name}")


#: GCS listings and downloads in flight at once: each is a round trip (tens of ms on GCS), a
#: night with a 30-day refetch window lists ~90 partitions, and after an upgrade — or whenever
#: MD5s do not match — every object of them is downloaded
GCS_THREADS = 8


@dataclass(frozen=True, slots=True)
class PartitionCsvs:
    """A partition's CSV objects (name order) and the sum of their rows; ``read``: how many were
    downloaded to count them."""

    names: list[str]
    totals: Totals
    read: int


def count_partitions(store: ReportStore, parts: Iterable[tuple[str, date]],
                     landed: Mapping[str, tuple[str, Totals]] | None = None,
                     threads: int = GCS_THREADS) -> dict[tuple[str, date], PartitionCsvs | Exception]:
    """Each partition's CSVs and rows (``split_landed``), or what failed for it: every listing
    first, then every download, ``threads`` round trips at a time."""
    out: dict[tuple[str, date], PartitionCsvs | Exception] = {}
    with ThreadPoolExecutor(threads, thread_name_prefix="gcs-count") as pool:
        listings = {p: pool.submit(partition_csvs, store, *p) for p in parts}
        unread: list[tuple[tuple[str, date], str]] = []
        for p, listing in listings.items():
            try:
                listed = listing.result()
            except Exception as exc:  # noqa: BLE001 - the partition fails with it, the others go on
                out[p] = exc
                continue
            totals, names = split_landed(listed, landed)
            out[p] = PartitionCsvs(list(listed), totals, 0)
            unread.extend((p, name) for name in names)
        for p, read in [(p, pool.submit(read_totals, store, name)) for p, name in unread]:
            try:
                got = read.result()
            except Exception as exc:  # noqa: BLE001
                if not isinstance(out[p], Exception):  # the first unreadable object names the failure
                    out[p] = exc
                continue
            if isinstance(so_far := out[p], PartitionCsvs):
                out[p] = PartitionCsvs(so_far.names, so_far.totals + got, so_far.read + 1)
    return out


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
