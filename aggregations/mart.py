"""The analysts' RDB schema (SQLAlchemy Core): three pre-aggregated tables.

Money (spend) and conversions are ``NUMERIC(38, 9)`` — BigQuery NUMERIC's precision — so
PostgreSQL holds them exactly. (SQLite, the local profile, stores NUMERIC as REAL: exact to
about 15 significant digits.) KPIs are derived ratios and stored as double precision, NULL
when their divisor is zero. Natural keys are the primary keys: a publish replaces keys, so a
re-run can never duplicate a row.
"""

from __future__ import annotations

import sqlalchemy as sa

metadata = sa.MetaData()

Money = sa.Numeric(38, 9, asdecimal=True)


def _kpis() -> list[sa.Column[float]]:
    return [
        sa.Column("ctr", sa.Float, comment="clicks / impressions"),
        sa.Column("cpc", sa.Float, comment="spend / clicks"),
        sa.Column("cpm", sa.Float, comment="spend * 1000 / impressions"),
        sa.Column("cpa", sa.Float, comment="spend / conversions"),
        sa.Column("cvr", sa.Float, comment="conversions / clicks"),
    ]


def _metrics() -> list[sa.Column[object]]:
    return [
        sa.Column("impressions", sa.BigInteger, nullable=False),
        sa.Column("clicks", sa.BigInteger, nullable=False),
        sa.Column("spend", Money, nullable=False, comment="exact, in `currency`"),
        sa.Column("conversions", Money, nullable=False),
    ]


mart_daily_campaign = sa.Table(
    "mart_daily_campaign",
    metadata,
    sa.Column("date", sa.Date, primary_key=True),
    sa.Column("media", sa.String(63), primary_key=True),
    sa.Column("account_id", sa.String(64), primary_key=True),
    sa.Column("campaign_id", sa.String(128), primary_key=True),
    sa.Column("advertiser", sa.String(63), nullable=False),
    sa.Column("campaign_name", sa.Text),
    sa.Column("currency", sa.String(3), nullable=False),
    *_metrics(),
    *_kpis(),
    sa.Index("ix_mart_daily_campaign_advertiser_date", "advertiser", "date"),
    sa.Index("ix_mart_daily_campaign_media_date", "media", "date"),
    comment="per day × media × account × campaign",
)

mart_daily_advertiser = sa.Table(
    "mart_daily_advertiser",
    metadata,
    sa.Column("date", sa.Date, primary_key=True),
    sa.Column("advertiser", sa.String(63), primary_key=True),
    sa.Column("currency", sa.String(3), primary_key=True),
    sa.Column("media_count", sa.Integer, nullable=False),
    sa.Column("campaign_count", sa.Integer, nullable=False),
    *_metrics(),
    *_kpis(),
    sa.Index("ix_mart_daily_advertiser_advertiser_date", "advertiser", "date"),
    comment="per day × advertiser × currency, all media together (currencies never mixed)",
)

mart_mtd_advertiser_media = sa.Table(
    "mart_mtd_advertiser_media",
    metadata,
    sa.Column("as_of_date", sa.Date, primary_key=True),
    sa.Column("advertiser", sa.String(63), primary_key=True),
    sa.Column("media", sa.String(63), primary_key=True),
    sa.Column("currency", sa.String(3), primary_key=True),
    sa.Column("days_with_data", sa.Integer, nullable=False),
    *_metrics(),
    *_kpis(),
    sa.Index("ix_mart_mtd_advertiser_media_adv_media_date", "advertiser", "media", "as_of_date"),
    comment="month-to-date (1st of the month .. as_of_date) per advertiser × media × currency",
)

#: which numbers are final: rewritten by every nightly run (``ingest.freshness``)
mart_freshness = sa.Table(
    "mart_freshness",
    metadata,
    sa.Column("media", sa.String(63), primary_key=True),
    sa.Column("account_id", sa.String(64), primary_key=True),
    sa.Column("advertiser", sa.String(63), nullable=False),
    sa.Column("timezone", sa.String(64), nullable=False, comment="the account's zone: its dates are local dates"),
    sa.Column("latest_complete_date", sa.Date, comment="the latest date fetched and published"),
    sa.Column("final_through", sa.Date, nullable=False,
              comment="dates up to here are outside the refetch window: the platform no longer restates them"),
    sa.Column("may_change_from", sa.Date, nullable=False,
              comment="dates from here on are refetched nightly: late conversions may still raise them"),
    sa.Column("missing_dates", sa.Text, nullable=False, default="", comment="never fetched (comma-separated)"),
    sa.Column("failed_dates", sa.Text, nullable=False, default="", comment="fetch failed, no data"),
    sa.Column("stale_dates", sa.Text, nullable=False, default="", comment="last refetch failed; older numbers shown"),
    sa.Column("partial_dates", sa.Text, nullable=False, default="", comment="fetched, not yet in the marts"),
    sa.Column("last_fetched_at", sa.DateTime(timezone=True)),
    sa.Column("checked_at", sa.DateTime(timezone=True), nullable=False),
    comment="per media × account: which dates are final, which may still change, which are missing",
)

MART_TABLES = (mart_daily_campaign, mart_daily_advertiser, mart_mtd_advertiser_media, mart_freshness)


def create_mart(engine: sa.Engine) -> None:
    """Create the mart tables and indexes if missing (idempotent; no migrations needed yet)."""
    metadata.create_all(engine, tables=list(MART_TABLES))


def columns(table: sa.Table) -> list[str]:
    return [c.name for c in table.columns]
