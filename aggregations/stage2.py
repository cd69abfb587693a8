"""Stage 2 orchestration: GCS CSVs → BigQuery raw tables → aggregation SQL → RDB mart → checks.

``run_stage2`` is what the driver calls after the fetches of a run. It never raises for a
partition's failure: each (media, date) ends ``published``, ``skipped`` (no CSV at all: the
previous data is left untouched) or ``failed`` (with the reason, numbers included), so the
driver can record it in the ledger and an operator can re-run exactly that partition.

Scope of each write, so a re-run of one media never touches another media's rows:
- raw_{media} in BigQuery: that media's date (DELETE + INSERT in one script).
- mart_daily_campaign: the (date, media) pairs loaded now.
- mart_daily_advertiser: the dates loaded now (recomputed over all media from BigQuery).
- mart_mtd_advertiser_media: the as-of dates loaded now, plus the later as-of dates of the
  same month that are already published (their month-to-date includes the re-loaded day).

BigQuery jobs per run: 1 (advertiser mapping) + 2·M (one load + one merge per media table with
changed dates, whatever their number) + 3 (daily campaign, daily advertiser, raw totals over
the changed dates) + A (MTD as-of dates), plus retries. No Ray here: this is plain code the driver may run anywhere.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from typing import Any, Literal

import sqlalchemy as sa
import structlog
from google.cloud import bigquery

from aggregations.bq import BigQueryStage, translate
from aggregations.mart import create_mart, mart_daily_advertiser, mart_daily_campaign, mart_mtd_advertiser_media
from aggregations.publish import Publisher, StagedHook
from aggregations.reconcile import bq_totals, csv_totals, mart_totals, partition_csvs, reconcile
from aggregations.totals import Totals
from ingest.clients import bq_client, gcs_client, rdb_engine
from ingest.config import PipelineConfig, RetrySettings, check_name
from ingest.errors import ConfigError, IngestError
from ingest.storage import ReportStore, partition_prefix

log = structlog.get_logger("aggregations.stage2")

PartitionStatus = Literal["published", "skipped", "failed"]
Partition = tuple[str, date]


@dataclass
class PartitionResult:
    media: str
    date: date
    #: starts "failed" (error None = still in progress) so a partition no step finished is never "published"
    status: PartitionStatus = "failed"
    csv_objects: int = 0
    rows_loaded: int = 0
    #: reconciliation numbers when published; why, when skipped
    detail: str = ""
    #: why it failed (step and numbers); None otherwise
    error: str | None = None

    def fail(self, message: str) -> None:
        """Mark failed; the first failure is the one reported (later ones are consequences)."""
        self.status = "failed"
        if self.error is None:
            self.error = message


@dataclass
class Stage2Result:
    run_id: str
    partitions: dict[Partition, PartitionResult]
    #: mart table name → rows written this run
    published_rows: dict[str, int] = field(default_factory=dict)
    bq_load_jobs: int = 0
    bq_query_jobs: int = 0
    #: step → seconds (setup, load, aggregate, publish, reconcile)
    durations_s: dict[str, float] = field(default_factory=dict)

    @property
    def bq_jobs(self) -> int:
        return self.bq_load_jobs + self.bq_query_jobs

    @property
    def ok(self) -> bool:
        return all(p.status != "failed" for p in self.partitions.values())

    def by_status(self, status: PartitionStatus) -> list[PartitionResult]:
        return [p for p in self.partitions.values() if p.status == status]


def _month_end(d: date) -> date:
    nxt = (d.replace(day=28) + timedelta(days=4)).replace(day=1)
    return nxt - timedelta(days=1)


def _as_date(v: Any) -> Any:
    return v.date() if isinstance(v, datetime) else v


def _clean(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """bqemulator returns some DATE expressions as TIMESTAMP; the marts want dates."""
    return [{k: _as_date(v) for k, v in r.items()} for r in rows]


def _published_mtd_dates(engine: sa.Engine, days: set[date]) -> set[date]:
    """As-of dates already in the mart that a re-load of ``days`` makes stale."""
    t = mart_mtd_advertiser_media
    out: set[date] = set()
    by_month: dict[tuple[int, int], date] = {}
    for d in days:
        key = (d.year, d.month)
        by_month[key] = min(d, by_month.get(key, d))
    with engine.connect() as conn:
        for first in by_month.values():
            stmt = sa.select(t.c.as_of_date).distinct().where(t.c.as_of_date > first, t.c.as_of_date <= _month_end(first))
            out.update(conn.execute(stmt).scalars())
    return out


def run_stage2(
    cfg: PipelineConfig,
    partitions: list[tuple[str, date]],
    run_id: str,
    fetched: dict[tuple[str, date], Totals],
    *,
    bq: bigquery.Client | None = None,
    engine: sa.Engine | None = None,
    store: ReportStore | None = None,
    retry: RetrySettings | None = None,
    on_staged: StagedHook | None = None,
) -> Stage2Result:
    """Load, aggregate, publish and reconcile ``partitions``; see the module docstring.

    ``fetched`` holds the totals of the rows the fetchers wrote for each partition (a missing
    entry skips only the fetch→GCS comparison). ``retry`` governs BigQuery job retries and
    publish retries after a lost RDB connection; ``on_staged`` is a test seam (see publish).
    """
    parts = sorted(set(partitions))
    for media, day in parts:
        check_name(media, "media")
        if media not in cfg.media:
            raise ConfigError(f"media {media!r} is not configured (known: {', '.join(cfg.media)})")
        if not isinstance(day, date) or isinstance(day, datetime):
            raise ConfigError(f"partition date {day!r} must be a datetime.date")
    if not parts:
        return Stage2Result(run_id=run_id, partitions={})

    own_bq = bq is None
    bq = bq or bq_client(cfg.bigquery)
    try:
        return _run(cfg, parts, run_id, fetched, bq, engine, store, retry, on_staged)
    finally:
        if own_bq:
            bq.close()


def _run(
    cfg: PipelineConfig,
    parts: list[Partition],
    run_id: str,
    fetched: dict[Partition, Totals],
    bq: bigquery.Client,
    engine: sa.Engine | None,
    store: ReportStore | None,
    retry: RetrySettings | None,
    on_staged: StagedHook | None,
) -> Stage2Result:
    results = {p: PartitionResult(p[0], p[1]) for p in parts}
    out = Stage2Result(run_id=run_id, partitions=results)
    engine = engine or rdb_engine(cfg.database_url())
    store = store or ReportStore(gcs_client(cfg.gcs, cfg.project), cfg.gcs.bucket)
    stage = BigQueryStage(bq, cfg.bigquery.project, cfg.bigquery.dataset, run_id, location=cfg.bigquery.location)
    publisher = Publisher(engine, on_staged=on_staged)
    if retry is not None:
        stage.retry = retry
        publisher.retry = retry
    media_all = cfg.media_names()
    bound = log.bind(run_id=run_id)

    @contextmanager
    def step(name: str) -> Iterator[None]:
        started = time.perf_counter()
        try:
            yield
        finally:
            out.durations_s[name] = out.durations_s.get(name, 0.0) + time.perf_counter() - started
            out.bq_load_jobs, out.bq_query_jobs = stage.jobs.load, stage.jobs.query

    def fail(which: list[Partition], message: str) -> None:
        for p in which:
            results[p].fail(message)
        bound.warning("stage2.failed", partitions=[f"{m}/{d}" for m, d in which], error=message)

    # 1. What is there to load? A partition without any CSV keeps its previous data.
    csv_tot: dict[Partition, Totals] = {}
    csv_names: dict[Partition, list[str]] = {}
    with step("list"):
        for p in parts:
            media, day = p
            try:
                names = partition_csvs(store, media, day)
                if not names:
                    results[p].status = "skipped"
                    results[p].detail = f"no CSV under gs://{cfg.gcs.bucket}/{partition_prefix(media, day)}: previous data kept"
                    continue
                results[p].csv_objects = len(names)
                csv_tot[p] = csv_totals(store, names)
                csv_names[p] = names
            except Exception as exc:  # noqa: BLE001
                fail([p], f"read CSVs: {translate(exc, 'gcs')}")
    to_load = [p for p in parts if p in csv_tot]
    if not to_load:
        return out

    # 2. BigQuery tables and the account → advertiser mapping, refreshed from config.
    with step("setup"):
        try:
            stage.ensure_dataset()
            for m in media_all:
                stage.ensure_raw_table(m)
            stage.refresh_accounts(cfg.advertiser_of())
            create_mart(engine)
        except IngestError as exc:
            fail(to_load, f"setup: {exc}")
            return out
        except sa.exc.SQLAlchemyError as exc:
            fail(to_load, f"setup: create mart tables: {type(exc).__name__}: {exc}")
            return out

    # 3. One load + one swap script per media table, over all of its changed dates.
    loaded: list[Partition] = []
    with step("load"):
        by_media: dict[str, list[Partition]] = defaultdict(list)
        for p in to_load:
            by_media[p[0]].append(p)
        for media, mine in sorted(by_media.items()):
            try:
                # exactly the objects reconciled above; a list rather than `*.csv` wildcards
                # because bqemulator (DuckDB COPY) sniffs the CSV dialect of a wildcard from its
                # first file only, so a later file with a quoted name ("Search ""Generic"", 1")
                # then fails to parse; a list is read per file
                uris = [f"gs://{cfg.gcs.bucket}/{name}" for p in mine for name in csv_names[p]]
                stage.load_partitions(media, [d for _, d in mine], uris)
                for p in mine:
                    results[p].rows_loaded = csv_tot[p].rows
                loaded += mine
            except IngestError as exc:
                fail(mine, f"load: {exc}")

    # 4. Aggregation queries per loaded date.
    days: dict[date, list[str]] = defaultdict(list)
    for media, day in loaded:
        days[day].append(media)
    campaign_rows: list[dict[str, Any]] = []
    advertiser_rows: list[dict[str, Any]] = []
    raw_tot: dict[date, dict[str, Totals]] = {}
    mtd_rows: list[dict[str, Any]] = []
    with step("aggregate"):
        if days:
            # one query each over the night's changed dates (a refetch window: up to 30), rows
            # kept only for the (date, media) pairs loaded now
            first, last = min(days), max(days)
            try:
                dc = _clean(stage.query("daily_campaign", first, media_all, last))
                da = _clean(stage.query("daily_advertiser", first, media_all, last))
                totals_by_day = bq_totals(stage.query("raw_totals", first, media_all, last))
            except IngestError as exc:
                fail(loaded, f"aggregate {first}..{last}: {exc}")
            else:
                raw_tot = {d: totals_by_day.get(d, {}) for d in days}
                campaign_rows += [r for r in dc if r["date"] in days and r["media"] in days[r["date"]]]
                advertiser_rows += [r for r in da if r["date"] in days]
        good_days = set(raw_tot)
        try:
            as_of = good_days | _published_mtd_dates(engine, good_days)
        except sa.exc.SQLAlchemyError as exc:
            as_of = set()
            fail([p for p in loaded if p[1] in good_days], f"read published MTD dates: {type(exc).__name__}: {exc}")
        mtd_done: set[date] = set()
        for a in sorted(as_of):
            try:
                mtd_rows += _clean(stage.query("mtd_advertiser_media", a, media_all))
                mtd_done.add(a)
            except IngestError as exc:
                fail([p for p in loaded if (p[1].year, p[1].month) == (a.year, a.month) and p[1] <= a], f"aggregate MTD {a}: {exc}")

    # 5. Publish: one transaction per mart table, exactly the affected keys.
    pairs = {(day, m) for m, day in loaded if day in good_days and results[(m, day)].error is None}
    ok_days = {d for d, _ in pairs}
    with step("publish"):
        jobs: list[tuple[sa.Table, list[dict[str, Any]], tuple[str, ...], set[tuple[Any, ...]], list[Partition]]] = [
            (mart_daily_campaign, [r for r in campaign_rows if (r["date"], r["media"]) in pairs], ("date", "media"),
             pairs, [(m, d) for d, m in pairs]),
            (mart_daily_advertiser, [r for r in advertiser_rows if r["date"] in ok_days], ("date",),
             {(d,) for d in ok_days}, [p for p in loaded if p[1] in ok_days]),
            (mart_mtd_advertiser_media, [r for r in mtd_rows if r["as_of_date"] in mtd_done], ("as_of_date",),
             {(a,) for a in mtd_done}, [p for p in loaded if p[1] in ok_days]),
        ]
        for table, rows, key_cols, keys, owners in jobs:
            try:
                out.published_rows[table.name] = publisher.replace(table, rows, key_cols, keys)
            except IngestError as exc:
                out.published_rows[table.name] = 0
                fail(owners, f"publish {table.name}: {exc}")

    # 6. Reconcile every partition that got this far.
    with step("reconcile"):
        candidates = [p for p in loaded if results[p].error is None]
        try:
            marts = mart_totals(engine, candidates)
        except sa.exc.SQLAlchemyError as exc:
            fail(candidates, f"reconcile: read mart: {type(exc).__name__}: {exc}")
            candidates = []
        for p in candidates:
            media, day = p
            rec = reconcile(fetched.get(p), csv_tot[p], raw_tot.get(day, {}).get(media, Totals()), marts[p])
            if rec.ok:
                results[p].status, results[p].detail = "published", rec.detail
            else:
                results[p].detail = rec.detail
                fail([p], rec.detail)
    for r in results.values():
        if r.status == "failed" and r.error is None:  # defensive: every path above sets one
            r.error = "not processed"
    bound.info(
        "stage2.done",
        published=len(out.by_status("published")),
        skipped=len(out.by_status("skipped")),
        failed=len(out.by_status("failed")),
        bq_jobs=out.bq_jobs,
        rows=out.published_rows,
        durations_s={k: round(v, 3) for k, v in out.durations_s.items()},
    )
    return out
