"""Ground-truth checks shared by the end-to-end tests, the cluster rehearsal and the bench.

The simulators serve numbers derived from ``sandbox.truth``; after a run, the mart must hold
exactly those numbers for the day, whatever faults, retries or lost nodes happened on the way.
"""

from __future__ import annotations

from collections import defaultdict
from datetime import date
from decimal import Decimal
from typing import Any

import sqlalchemy as sa

from aggregations.mart import mart_daily_campaign
from ingest.config import PipelineConfig
from sandbox.truth import truth_rows


def expected_totals(cfg: PipelineConfig, day: date, late_units: int = 0) -> dict[str, dict[str, Any]]:
    """Per media: rows, impressions, clicks, spend, conversions the simulators hold for ``day``
    (with ``late_units`` late conversions restated onto it, as ``late_conversions`` does)."""
    seed = cfg.sandbox.seed if cfg.sandbox else 7
    out: dict[str, dict[str, Any]] = {}
    for media, settings in cfg.media.items():
        t = {"rows": 0, "impressions": 0, "clicks": 0, "spend": Decimal(0), "conversions": Decimal(0)}
        for account in settings.account_ids():
            for row in truth_rows(media, account, day, seed, late_units):
                t["rows"] += 1
                for k in ("impressions", "clicks", "spend", "conversions"):
                    t[k] += row[k]
        out[media] = t
    return out


def mart_totals(url: str, day: date) -> dict[str, dict[str, Any]]:
    """The same sums over ``mart_daily_campaign``, in Python over exact Decimals (SQLite's SUM
    would go through floats)."""
    engine = sa.create_engine(url.replace("postgresql://", "postgresql+psycopg://"))
    t = mart_daily_campaign
    with engine.connect() as conn:
        rows = conn.execute(sa.select(t.c.media, t.c.impressions, t.c.clicks, t.c.spend, t.c.conversions)
                            .where(t.c.date == day)).all()
    engine.dispose()
    out: dict[str, dict[str, Any]] = defaultdict(
        lambda: {"rows": 0, "impressions": 0, "clicks": 0, "spend": Decimal(0), "conversions": Decimal(0)})
    for media, imp, clk, spend, conv in rows:
        o = out[media]
        o["rows"] += 1
        o["impressions"] += imp
        o["clicks"] += clk
        o["spend"] += spend
        o["conversions"] += conv
    return dict(out)


def csv_generations(cfg: PipelineConfig) -> dict[str, int]:
    """Every daily CSV object of the bucket and its GCS generation, which is new each time the
    object is written: comparing two snapshots tells which days a night wrote (none before the
    first night created the bucket)."""
    from google.api_core.exceptions import NotFound

    from ingest.clients import gcs_client

    client = gcs_client(cfg.gcs, cfg.project)
    try:
        return {b.name: int(b.generation) for b in client.list_blobs(cfg.gcs.bucket, prefix="raw/")
                if b.name.endswith(".csv")}
    except NotFound:
        return {}
