"""Stage 2 on the real emulators (fake-gcs-server + bqemulator) with SQLite and PostgreSQL.

Hand-written partitions with hand-computed expectations: zero impressions/clicks/conversions
(SAFE_DIVIDE → NULL), two currencies for one advertiser (never summed), and a month boundary
(2026-01-30/31 → 2026-02-01) for the month-to-date table.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import date
from decimal import Decimal as D
from typing import Any

import pytest
import sqlalchemy as sa

from aggregations.bq import BigQueryStage
from aggregations.mart import mart_daily_advertiser, mart_daily_campaign, mart_mtd_advertiser_media
from aggregations.publish import Publisher
from aggregations.reconcile import PartitionCsvs, count_partitions
from aggregations.stage2 import Stage2Result, run_stage2
from aggregations.totals import Totals
from ingest.clients import bq_client, gcs_client, rdb_engine
from ingest.config import PipelineConfig, RetrySettings
from ingest.errors import DataError, StageError
from ingest.media.base import Row, rows_to_csv
from ingest.storage import ReportPaths, ReportStore, gcs_md5

D0, D1, D2 = date(2026, 1, 30), date(2026, 1, 31), date(2026, 2, 1)
FAST = RetrySettings(max_attempts=3, backoff_min_s=0.01, backoff_max_s=0.05)
ALL_MEDIA = ("meta", "google_ads", "yahoo_ads")


def r(day: date, media: str, account: str, cid: str, imps: int, clicks: int, spend: str, conv: str, cur: str,
      name: str | None = None) -> Row:
    return Row(day, media, account, cid, name or f"Campaign {cid}", imps, clicks, D(spend), D(conv), cur)


# (media, account) → rows, per day. Advertisers (config/local.yaml): meta 100200300 and
# google_ads 1234567890 → sakura_foods; meta 100200302 → kaze_travel.
DATA: dict[date, dict[tuple[str, str], list[Row]]] = {
    D0: {("meta", "100200300"): [r(D0, "meta", "100200300", "c1", 1000, 50, "2500.5", "5", "JPY", "Spring, sale")]},
    D1: {
        ("meta", "100200300"): [
            r(D1, "meta", "100200300", "c1", 2000, 100, "4000.25", "4", "JPY", "Spring, sale"),
            r(D1, "meta", "100200300", "c2", 0, 0, "0", "0", "JPY"),
        ],
        ("meta", "100200302"): [r(D1, "meta", "100200302", "k1", 500, 0, "100", "0", "JPY")],
        ("google_ads", "1234567890"): [r(D1, "google_ads", "1234567890", "g1", 300, 30, "12.345678", "1.5", "USD")],
    },
    D2: {("meta", "100200300"): [r(D2, "meta", "100200300", "c1", 10, 1, "7", "0", "JPY", "Spring, sale")]},
}


class Env:
    def __init__(self, cfg: PipelineConfig) -> None:
        self.cfg = cfg
        self.store = ReportStore(gcs_client(cfg.gcs, cfg.project), cfg.gcs.bucket)
        self.store.ensure_bucket()
        self.bq = bq_client(cfg.bigquery)
        self.engine = rdb_engine(cfg.database_url())
        self.fetched: dict[tuple[str, date], Totals] = {}
        self.landed: dict[str, tuple[str, Totals]] = {}
        self.reports: dict[tuple[str, str, date], list[Row]] = {}

    def upload(self, day: date, only: str | None = None,
               data: dict[date, dict[tuple[str, str], list[Row]]] = DATA) -> None:
        """Write CSVs like the fetchers do; ``fetched`` covers every report of the partition
        (the contract with the driver), including reports kept from an earlier fetch."""
        for (media, account), rows in data[day].items():
            if only and media != only:
                continue
            name, body = ReportPaths(self.cfg.gcs.bucket, media, account, day).day_csv(day), rows_to_csv(rows)
            self.store.put(name, body, "text/csv")
            self.landed[name] = (gcs_md5(body), Totals.from_rows(rows))
            self.reports[(media, account, day)] = rows
        self.fetched = {}
        for (media, _account, d), rows in self.reports.items():
            self.fetched[(media, d)] = self.fetched.get((media, d), Totals()) + Totals.from_rows(rows)

    def run(self, parts: list[tuple[str, date]], run_id: str = "run-1", **kw: Any) -> Stage2Result:
        kw.setdefault("retry", FAST)
        kw.setdefault("landed", self.landed)
        return run_stage2(self.cfg, parts, run_id, kw.pop("fetched", self.fetched), bq=self.bq, engine=self.engine,
                          store=self.store, **kw)

    def rows(self, table: sa.Table, *order: str) -> list[dict[str, Any]]:
        with self.engine.connect() as conn:
            result = conn.execute(sa.select(table).order_by(*(table.c[o] for o in order)))
            return [dict(m) for m in result.mappings()]

    def bq_count(self, media: str, day: date | None = None) -> int:
        where = f" WHERE date = DATE '{day.isoformat()}'" if day else ""
        sql = f"SELECT COUNT(*) AS n FROM `{self.cfg.bigquery.project}.{self.cfg.bigquery.dataset}.raw_{media}`{where}"
        return int(list(self.bq.query(sql).result())[0]["n"])


@pytest.fixture(params=["sqlite", "postgres"])
def env(request: pytest.FixtureRequest, emulators: Any, make_config: Callable[..., PipelineConfig]) -> Env:
    url = request.getfixturevalue("sqlite_url" if request.param == "sqlite" else "pg_url")
    return Env(make_config(emulators, url))


def approx(v: float | None) -> Any:
    return None if v is None else pytest.approx(v, rel=1e-12)


def kpis(ctr: float | None, cpc: float | None, cpm: float | None, cpa: float | None,
         cvr: float | None) -> dict[str, Any]:
    return {"ctr": approx(ctr), "cpc": approx(cpc), "cpm": approx(cpm), "cpa": approx(cpa), "cvr": approx(cvr)}


def test_daily_marts_exact_values_and_statuses(env: Env) -> None:
    env.upload(D1)
    res = env.run([(m, D1) for m in ALL_MEDIA])

    st = {m: res.partitions[(m, D1)] for m in ALL_MEDIA}
    assert st["meta"].status == "published", st["meta"].error
    assert st["google_ads"].status == "published", st["google_ads"].error
    assert st["yahoo_ads"].status == "skipped" and "no CSV" in st["yahoo_ads"].detail
    assert (st["meta"].csv_objects, st["meta"].rows_loaded) == (2, 3)
    assert "rows=3 impressions=2500 clicks=100 spend=4100.25 conversions=4" in st["meta"].detail
    # 1 mapping + 2 × (load + merge) + 3 queries for D1 + 1 MTD
    assert (res.bq_load_jobs, res.bq_query_jobs, res.bq_jobs) == (2, 1 + 2 + 3 + 1, 2 + 7)
    assert res.published_rows == {"mart_daily_campaign": 4, "mart_daily_advertiser": 3, "mart_mtd_advertiser_media": 3}
    assert set(res.durations_s) >= {"list", "setup", "load", "aggregate", "publish", "reconcile"}

    campaign = env.rows(mart_daily_campaign, "media", "account_id", "campaign_id")
    base = {"date": D1}
    assert campaign == [
        {**base, "media": "google_ads", "account_id": "1234567890", "campaign_id": "g1", "advertiser": "sakura_foods",
         "campaign_name": "Campaign g1", "currency": "USD", "impressions": 300, "clicks": 30,
         "spend": D("12.345678"), "conversions": D("1.5"),
         **kpis(0.1, 12.345678 / 30, 12.345678 * 1000 / 300, 12.345678 / 1.5, 0.05)},
        {**base, "media": "meta", "account_id": "100200300", "campaign_id": "c1", "advertiser": "sakura_foods",
         "campaign_name": "Spring, sale", "currency": "JPY", "impressions": 2000, "clicks": 100,
         "spend": D("4000.25"), "conversions": D("4"), **kpis(0.05, 40.0025, 2000.125, 1000.0625, 0.04)},
        {**base, "media": "meta", "account_id": "100200300", "campaign_id": "c2", "advertiser": "sakura_foods",
         "campaign_name": "Campaign c2", "currency": "JPY", "impressions": 0, "clicks": 0,
         "spend": D("0"), "conversions": D("0"), **kpis(None, None, None, None, None)},
        {**base, "media": "meta", "account_id": "100200302", "campaign_id": "k1", "advertiser": "kaze_travel",
         "campaign_name": "Campaign k1", "currency": "JPY", "impressions": 500, "clicks": 0,
         "spend": D("100"), "conversions": D("0"), **kpis(0.0, None, 200.0, None, None)},
    ]

    adv = env.rows(mart_daily_advertiser, "advertiser", "currency")
    assert adv == [
        {**base, "advertiser": "kaze_travel", "currency": "JPY", "media_count": 1, "campaign_count": 1,
         "impressions": 500, "clicks": 0, "spend": D("100"), "conversions": D("0"),
         **kpis(0.0, None, 200.0, None, None)},
        {**base, "advertiser": "sakura_foods", "currency": "JPY", "media_count": 1, "campaign_count": 2,
         "impressions": 2000, "clicks": 100, "spend": D("4000.25"), "conversions": D("4"),
         **kpis(0.05, 40.0025, 2000.125, 1000.0625, 0.04)},
        {**base, "advertiser": "sakura_foods", "currency": "USD", "media_count": 1, "campaign_count": 1,
         "impressions": 300, "clicks": 30, "spend": D("12.345678"), "conversions": D("1.5"),
         **kpis(0.1, 12.345678 / 30, 12.345678 * 1000 / 300, 12.345678 / 1.5, 0.05)},
    ]


def test_same_date_twice_is_identical(env: Env) -> None:
    env.upload(D1)
    parts = [(m, D1) for m in ALL_MEDIA]
    first = env.run(parts, run_id="run-1")
    snap = [env.rows(t, *[c.name for c in t.primary_key.columns]) for t in
            (mart_daily_campaign, mart_daily_advertiser, mart_mtd_advertiser_media)]
    counts = (env.bq_count("meta"), env.bq_count("google_ads"), env.bq_count("yahoo_ads"))
    second = env.run(parts, run_id="run-2")
    assert [p.status for p in first.partitions.values()] == [p.status for p in second.partitions.values()]
    assert counts == (3, 1, 0)
    assert (env.bq_count("meta"), env.bq_count("google_ads"), env.bq_count("yahoo_ads")) == counts
    assert [env.rows(t, *[c.name for c in t.primary_key.columns]) for t in
            (mart_daily_campaign, mart_daily_advertiser, mart_mtd_advertiser_media)] == snap
    # the staging tables are gone
    tables = {t.table_id for t in env.bq.list_tables(f"{env.cfg.bigquery.project}.{env.cfg.bigquery.dataset}")}
    assert not {t for t in tables if t.startswith("_stage_")}


def test_rerun_of_one_media_leaves_other_media_untouched(env: Env) -> None:
    env.upload(D1)
    env.run([(m, D1) for m in ALL_MEDIA])
    # mark google's published row: a re-run of meta must not rewrite it
    with env.engine.begin() as conn:
        conn.execute(sa.update(mart_daily_campaign).where(mart_daily_campaign.c.media == "google_ads")
                     .values(campaign_name="SENTINEL"))
    changed = {D1: {("meta", "100200300"): [r(D1, "meta", "100200300", "c1", 4000, 200, "8000.5", "8", "JPY",
                                              "Spring, sale")]}}
    env.upload(D1, data=changed)  # overwrites one account's CSV; 100200302's CSV stays
    res = env.run([("meta", D1)], run_id="run-2")
    assert res.partitions[("meta", D1)].status == "published", res.partitions[("meta", D1)].error

    campaign = {(x["media"], x["campaign_id"]): x for x in env.rows(mart_daily_campaign, "media", "campaign_id")}
    assert campaign[("google_ads", "g1")]["campaign_name"] == "SENTINEL"
    assert set(campaign) == {("google_ads", "g1"), ("meta", "c1"), ("meta", "k1")}
    assert campaign[("meta", "c1")]["spend"] == D("8000.5")
    assert env.bq_count("meta", D1) == 2 and env.bq_count("google_ads", D1) == 1
    adv = {(x["advertiser"], x["currency"]): x for x in env.rows(mart_daily_advertiser, "advertiser")}
    assert adv[("sakura_foods", "JPY")]["spend"] == D("8000.5")
    assert adv[("sakura_foods", "USD")]["spend"] == D("12.345678")  # recomputed from BigQuery, unchanged


def test_month_to_date_across_month_boundary_and_later_as_of_recompute(env: Env) -> None:
    env.upload(D1)
    env.upload(D2)
    res = env.run([(m, d) for d in (D1, D2) for m in ALL_MEDIA])
    assert not res.by_status("failed"), [p.error for p in res.by_status("failed")]
    before = {(x["as_of_date"], x["advertiser"], x["media"], x["currency"]): x
              for x in env.rows(mart_mtd_advertiser_media, "as_of_date")}
    assert before[(D2, "sakura_foods", "meta", "JPY")]["spend"] == D("7")  # February starts afresh
    assert before[(D1, "sakura_foods", "meta", "JPY")]["spend"] == D("4000.25")

    # D0 arrives late (re-run of Jan 30): as-of D1 is already published and must include it now.
    env.upload(D0)
    res = env.run([("meta", D0)], run_id="run-2")
    assert res.partitions[("meta", D0)].status == "published"
    assert res.bq_query_jobs == 1 + 3 + 2  # merge, 3 daily, MTD as of D0 and D1 (same accounts: no mapping statement)
    mtd = {(x["as_of_date"], x["advertiser"], x["media"], x["currency"]): x
           for x in env.rows(mart_mtd_advertiser_media, "as_of_date")}
    assert set(mtd) == {
        (D0, "sakura_foods", "meta", "JPY"),
        (D1, "sakura_foods", "meta", "JPY"), (D1, "kaze_travel", "meta", "JPY"),
        (D1, "sakura_foods", "google_ads", "USD"),
        (D2, "sakura_foods", "meta", "JPY"),
    }
    jan = mtd[(D1, "sakura_foods", "meta", "JPY")]
    assert {k: jan[k] for k in ("days_with_data", "impressions", "clicks", "spend", "conversions")} == {
        "days_with_data": 2, "impressions": 3000, "clicks": 150, "spend": D("6500.75"), "conversions": D("9")}
    assert {k: jan[k] for k in ("ctr", "cpc", "cpm", "cpa", "cvr")} == \
        kpis(0.05, 6500.75 / 150, 6500.75 * 1000 / 3000, 6500.75 / 9, 0.06)
    assert mtd[(D1, "sakura_foods", "google_ads", "USD")]["spend"] == D("12.345678")  # never summed with JPY
    assert mtd[(D1, "kaze_travel", "meta", "JPY")]["days_with_data"] == 1
    feb = mtd[(D2, "sakura_foods", "meta", "JPY")]
    assert feb == before[(D2, "sakura_foods", "meta", "JPY")]
    assert {k: feb[k] for k in ("days_with_data", "spend", "ctr", "cpc", "cpm", "cpa", "cvr")} == {
        "days_with_data": 1, "spend": D("7"), **kpis(0.1, 7.0, 700.0, None, 0.0)}


def test_account_missing_from_config_is_unmapped_not_dropped(env: Env) -> None:
    rows = [r(D1, "meta", "999", "x1", 10, 2, "3.5", "1", "JPY")]
    env.upload(D1, data={D1: {("meta", "999"): rows}})
    res = env.run([("meta", D1)])
    assert res.partitions[("meta", D1)].status == "published"
    assert [x["advertiser"] for x in env.rows(mart_daily_campaign, "campaign_id")] == ["(unmapped)"]
    adv = env.rows(mart_daily_advertiser, "advertiser")
    assert [(x["advertiser"], x["spend"], x["campaign_count"]) for x in adv] == [("(unmapped)", D("3.5"), 1)]


def test_missing_csv_keeps_previous_data(env: Env) -> None:
    env.upload(D1)
    env.run([("meta", D1)])
    for name in env.store.list("raw/meta/dt=2026-01-31/"):
        env.store.delete(name)
    res = env.run([("meta", D1)], run_id="run-2")
    assert res.partitions[("meta", D1)].status == "skipped"
    assert res.bq_jobs == 0
    assert env.bq_count("meta", D1) == 3
    assert len(env.rows(mart_daily_campaign, "campaign_id")) == 3


def test_reconciliation_mismatch_fails_partition_with_numbers(env: Env) -> None:
    env.upload(D1)
    wrong = dict(env.fetched)
    wrong[("meta", D1)] = Totals(rows=4, impressions=2500, clicks=100, spend=D("4100.26"), conversions=D("4"))
    res = env.run([("meta", D1), ("google_ads", D1)], fetched=wrong)
    meta = res.partitions[("meta", D1)]
    assert meta.status == "failed"
    assert meta.error is not None
    assert "rows: fetched=4 gcs=3" in meta.error and "spend: fetched=4100.26 gcs=4100.25" in meta.error
    assert res.partitions[("google_ads", D1)].status == "published"
    assert not res.ok


def test_objects_holding_what_was_landed_are_not_read_back_and_others_are(env: Env) -> None:
    """The GCS count of a partition comes from the ledger for an object whose MD5 (GCS's) is the
    one recorded for the bytes landed there; any other object is downloaded and parsed, so one
    changed behind the ledger's back still fails the partition with the numbers."""
    env.upload(D1, only="meta")
    res = env.run([("meta", D1)])
    assert res.partitions[("meta", D1)].status == "published" and res.csv_objects_read == 0
    unread = res.partitions[("meta", D1)].detail
    res = env.run([("meta", D1)], run_id="run-2", landed={})  # landed before MD5s were recorded
    assert res.partitions[("meta", D1)].status == "published" and res.csv_objects_read == 2
    assert res.partitions[("meta", D1)].detail == unread

    one_row = DATA[D1][("meta", "100200300")][:1]  # an object rewritten by hand: a row gone
    env.store.put(ReportPaths(env.cfg.gcs.bucket, "meta", "100200300", D1).day_csv(D1), rows_to_csv(one_row),
                  "text/csv")
    res = env.run([("meta", D1)], run_id="run-3")
    part = res.partitions[("meta", D1)]
    assert res.csv_objects_read == 1 and part.status == "failed" and part.error is not None
    assert "rows: fetched=3 gcs=2" in part.error


def test_partitions_are_counted_several_at_a_time_and_a_bad_object_fails_only_its_own(env: Env) -> None:
    env.upload(D1)
    env.upload(D2)
    bad = ReportPaths(env.cfg.gcs.bucket, "meta", "100200302", D2).day_csv(D2)
    env.store.put(bad, b"not,a,report\n1,2,3\n", "text/csv")
    parts = [("meta", D1), ("google_ads", D1), ("meta", D2), ("yahoo_ads", D1)]
    meta_d1 = sorted(n for n in env.landed if "/meta/dt=2026-01-31/" in n)
    for threads in (1, 8):
        got = count_partitions(env.store, parts, env.landed, threads=threads)
        assert list(got) == parts
        assert got[("meta", D1)] == PartitionCsvs(meta_d1, env.fetched[("meta", D1)], 0)
        assert got[("google_ads", D1)] == PartitionCsvs([n for n in env.landed if "/google_ads/dt=2026-01-31/" in n],
                                                        env.fetched[("google_ads", D1)], 0)
        assert isinstance(got[("meta", D2)], DataError) and "unexpected CSV header" in str(got[("meta", D2)])
        assert got[("yahoo_ads", D1)] == PartitionCsvs([], Totals(), 0)
        unknown = count_partitions(env.store, [("meta", D1)], {}, threads=threads)[("meta", D1)]
        assert unknown == PartitionCsvs(meta_d1, env.fetched[("meta", D1)], 2)  # nothing known: both read


def test_row_of_another_date_in_partition_is_caught(env: Env) -> None:
    rows = [r(D1, "google_ads", "1234567890", "g1", 300, 30, "12.345678", "1.5", "USD"),
            r(D2, "google_ads", "1234567890", "g9", 1, 1, "1", "0", "USD")]  # wrong day in D1's file
    env.store.put(ReportPaths(env.cfg.gcs.bucket, "google_ads", "1234567890", D1).day_csv(D1), rows_to_csv(rows),
                  "text/csv")
    res = env.run([("google_ads", D1)], fetched={("google_ads", D1): Totals.from_rows(rows)})
    part = res.partitions[("google_ads", D1)]
    assert part.status == "failed" and part.error is not None
    assert "rows: gcs=2 bigquery=1" in part.error
    assert env.bq_count("google_ads", D2) == 0  # not inserted into another day


def test_header_only_csv_publishes_empty_partition(env: Env) -> None:
    env.upload(D1)
    env.run([("google_ads", D1)])
    empty = ReportPaths(env.cfg.gcs.bucket, "google_ads", "1234567890", D1).day_csv(D1)
    env.store.put(empty, rows_to_csv([]), "text/csv")
    res = env.run([("google_ads", D1)], run_id="run-2", fetched={("google_ads", D1): Totals()})
    assert res.partitions[("google_ads", D1)].status == "published", res.partitions[("google_ads", D1)].error
    assert env.bq_count("google_ads", D1) == 0
    assert env.rows(mart_daily_campaign, "campaign_id") == []


# -- PostgreSQL: connection lost in the middle of a publish ------------------------------------


def _kill(conn: sa.Connection, admin_url: str) -> None:
    pid = conn.execute(sa.text("SELECT pg_backend_pid()")).scalar_one()
    admin = sa.create_engine(admin_url)
    try:
        with admin.connect() as other:
            other.execute(sa.text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
    finally:
        admin.dispose()


@pytest.fixture
def pg_env(emulators: Any, make_config: Callable[..., PipelineConfig], pg_url: str) -> Env:
    return Env(make_config(emulators, pg_url))


def test_the_accounts_table_is_rewritten_only_when_the_accounts_change(
    emulators: Any, sqlite_url: str, make_config: Callable[..., PipelineConfig]
) -> None:
    """Stage 2's setup is a migration, not a nightly cost: a night with the same accounts reads
    the table's digest and runs no job; a changed account list rewrites it."""
    env = Env(make_config(emulators, sqlite_url))
    env.upload(D1)
    first = env.run([("meta", D1)])
    again = env.run([("meta", D1)], run_id="run-2")
    assert first.accounts_refreshed and not again.accounts_refreshed
    assert again.bq_query_jobs == first.bq_query_jobs - 1  # the mapping's statement, and only it
    assert "setup_accounts" in again.durations_s
    meta = env.cfg.media["meta"]
    moved = meta.accounts[0].model_copy(update={"advertiser": "moved_advertiser"})
    env.cfg.media["meta"] = meta.model_copy(update={"accounts": [moved, *meta.accounts[1:]]})
    changed = env.run([("meta", D1)], run_id="run-3")
    assert changed.accounts_refreshed and changed.partitions[("meta", D1)].status == "published"


def test_pg_connection_killed_after_copy_before_commit_retries_to_one_copy(pg_env: Env, pg_url: str) -> None:
    env = pg_env
    env.upload(D1)
    env.run([(m, D1) for m in ALL_MEDIA])  # previous data
    before = env.rows(mart_daily_campaign, "media", "campaign_id")
    killed: list[str] = []

    def kill_first_attempt(conn: sa.Connection, table: str, attempt: int) -> None:
        if attempt == 1:
            killed.append(table)
            _kill(conn, pg_url)

    res = env.run([(m, D1) for m in ALL_MEDIA], run_id="run-2", on_staged=kill_first_attempt)
    assert killed == ["mart_daily_campaign", "mart_daily_advertiser", "mart_mtd_advertiser_media"]
    assert res.partitions[("meta", D1)].status == "published", res.partitions[("meta", D1)].error
    assert env.rows(mart_daily_campaign, "media", "campaign_id") == before
    counts = {t.name: len(env.rows(t, *[c.name for c in t.primary_key.columns]))
              for t in (mart_daily_campaign, mart_daily_advertiser, mart_mtd_advertiser_media)}
    assert counts == {"mart_daily_campaign": 4, "mart_daily_advertiser": 3, "mart_mtd_advertiser_media": 3}


def test_pg_publish_that_never_succeeds_leaves_previous_rows(pg_env: Env, pg_url: str) -> None:
    env = pg_env
    env.upload(D1)
    env.run([("meta", D1)])
    before = env.rows(mart_daily_campaign, "campaign_id")
    changed = {D1: {("meta", "100200300"): [r(D1, "meta", "100200300", "c1", 1, 1, "1", "1", "JPY")]}}
    env.upload(D1, data=changed)

    def always_kill(conn: sa.Connection, table: str, attempt: int) -> None:
        _kill(conn, pg_url)

    res = env.run([("meta", D1)], run_id="run-2", on_staged=always_kill)
    part = res.partitions[("meta", D1)]
    assert part.status == "failed" and part.error is not None and "connection lost 3 times" in part.error
    assert env.rows(mart_daily_campaign, "campaign_id") == before


def test_publisher_rejects_rows_outside_replaced_keys(sqlite_url: str) -> None:
    from aggregations.mart import create_mart

    engine = rdb_engine(sqlite_url)
    create_mart(engine)
    pub = Publisher(engine)
    row = {"date": D1, "media": "meta", "account_id": "a", "campaign_id": "c", "advertiser": "x", "currency": "JPY",
           "impressions": 1, "clicks": 1, "spend": D("1"), "conversions": D("0")}
    with pytest.raises(StageError, match="outside the replaced keys"):
        pub.replace(mart_daily_campaign, [row], ("date", "media"), {(D1, "google_ads")})
    assert pub.replace(mart_daily_campaign, [row], ("date", "media"), {(D1, "meta")}) == 1
    assert pub.replace(mart_daily_campaign, [row], ("date", "media"), {(D1, "meta")}) == 1
    with engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(mart_daily_campaign)).scalar_one() == 1


def test_bq_stage_rejects_hostile_names(emulators: Any, make_config: Callable[..., PipelineConfig],
                                        sqlite_url: str) -> None:
    from ingest.errors import ConfigError

    cfg = make_config(emulators, sqlite_url)
    stage = BigQueryStage(bq_client(cfg.bigquery), cfg.bigquery.project, cfg.bigquery.dataset, "r")
    with pytest.raises(ConfigError):
        stage.load_partition("meta`; DROP TABLE x; --", D1, "gs://b/x/*.csv")
    with pytest.raises(ConfigError):
        run_stage2(cfg, [("tiktok", D1)], "r", {})
