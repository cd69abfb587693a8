"""The whole nightly pipeline on the real clients: Ray (local), fake-gcs-server, bqemulator,
the API simulators, and the RDB — once on SQLite, once on PostgreSQL.

The RDB's summary totals must equal what the simulators served for the date (their ground
truth), and running the same date again must leave exactly the same rows everywhere.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import date
from typing import Any

import pytest
import sqlalchemy as sa
from google.api_core.client_options import ClientOptions
from google.auth.credentials import AnonymousCredentials
from google.cloud import bigquery, storage

from ingest.config import PipelineConfig
from ingest.job import EXIT_SUCCESS, NightlyJob, RunRequest
from sandbox.checks import expected_totals, mart_totals

DAY = date(2026, 11, 20)


def snapshot(cfg: PipelineConfig, url: str) -> dict[str, Any]:
    """Everything a duplicate would show up in: GCS objects, BigQuery rows, RDB rows."""
    gcs = storage.Client(project=cfg.project, credentials=AnonymousCredentials())
    objects = sorted(b.name for b in gcs.list_blobs(cfg.gcs.bucket))
    bq = bigquery.Client(project=cfg.bigquery.project, credentials=AnonymousCredentials(),
                         client_options=ClientOptions(api_endpoint=cfg.bigquery.endpoint))
    bq_rows = {m: list(bq.query(f"SELECT COUNT(*) FROM `{cfg.bigquery.project}.{cfg.bigquery.dataset}.raw_{m}`")
                       .result())[0][0]
               for m in cfg.media}
    engine = sa.create_engine(url.replace("postgresql://", "postgresql+psycopg://"))
    tables = {}
    with engine.connect() as conn:
        for table in ("mart_daily_campaign", "mart_daily_advertiser", "mart_mtd_advertiser_media"):
            rows = conn.execute(sa.text(f"SELECT * FROM {table}")).all()
            tables[table] = sorted(tuple(str(v) for v in r) for r in rows)
    engine.dispose()
    return {"objects": objects, "bq_rows": bq_rows, "tables": tables}


def run_and_check(cfg: PipelineConfig, url: str) -> None:
    media = cfg.media_names()
    report = NightlyJob(cfg).execute(RunRequest("run", [DAY], media))
    assert report.outcome == "success", report.failures
    assert report.exit_code == EXIT_SUCCESS

    expected = expected_totals(cfg, DAY)
    assert mart_totals(url, DAY) == expected

    first = snapshot(cfg, url)
    n_reports = sum(len(s.accounts) for s in cfg.media.values())
    assert len([o for o in first["objects"] if o.startswith("raw/")]) == 2 * n_reports  # .json + .csv each
    assert first["bq_rows"] == {m: expected[m]["rows"] for m in media}
    assert len(first["tables"]["mart_daily_campaign"]) == sum(e["rows"] for e in expected.values())

    # the same date again, re-fetching everything: nothing duplicates anywhere
    again = NightlyJob(cfg).execute(RunRequest("run", [DAY], media, force=True))
    assert again.outcome == "success" and sum(m.done for m in again.media.values()) == n_reports
    assert snapshot(cfg, url) == first
    # and a plain re-run (resume semantics) fetches nothing and changes nothing
    resumed = NightlyJob(cfg).execute(RunRequest("run", [DAY], media))
    assert (sum(m.done for m in resumed.media.values()) == 0
            and sum(m.skipped for m in resumed.media.values()) == n_reports)
    assert snapshot(cfg, url) == first


@pytest.mark.stack
def test_nightly_pipeline_sqlite(stack, make_config: Callable[..., PipelineConfig], sqlite_url: str) -> None:  # type: ignore[no-untyped-def]
    cfg = make_config(stack, sqlite_url)
    run_and_check(cfg, sqlite_url)


@pytest.mark.stack
@pytest.mark.postgres
def test_nightly_pipeline_postgres(stack, make_config: Callable[..., PipelineConfig], pg_url: str) -> None:  # type: ignore[no-untyped-def]
    cfg = make_config(stack, pg_url)
    run_and_check(cfg, pg_url)
