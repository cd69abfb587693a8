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
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from typing import Any

import sqlalchemy as sa
import structlog
from google.cloud import bigquery

from aggregations.bq import BigQueryStage, translate
from aggregations.mart import create_mart, mart_daily_advertiser, mart_daily_campaign, mart_mtd_advertiser_media
from aggregations.publish import Publisher, StagedHook
from aggregations.reconcile import bq_totals, count_partitions, mart_totals, reconcile
from aggregations.totals import Totals
from ingest.clients import bq_client, gcs_client, rdb_engine
from ingest.config import PipelineConfig, RetrySettings, check_name
from ingest.errors import ConfigError, IngestError
from ingest.outcomes import PartitionStatus
from ingest.storage import ReportStore, partition_prefix

log = structlog.get_logger("aggregations.stage2")

Partition = tuple[str, date]


@dataclass
class PartitionResult:
    media: str
    date: date
    #: starts "failed" (error None = still in progress) so a partition no step finished is never "published"
    status: PartitionStatus = PartitionStatus.FAILED
    csv_objects: int = 0
    rows_loaded: int = 0
    #: reconciliation numbers when published; why, when skipped
    detail: str = ""
    #: why it failed (step and numbers); None otherwise
    error: str | None = None

    def fail(self, message: str) -> None:
        """Mark failed; the first failure is the one reported (later ones are consequences)."""
        self.status = PartitionStatus.FAILED
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
    #: step → seconds (setup, load, aggregate, publish, reconcile; setup_accounts is part of setup)
    durations_s: dict[str, float] = field(default_factory=dict)
    #: the account → advertiser table was rewritten (the config's accounts changed); else unchanged
    accounts_refreshed: bool = False
    #: CSV objects downloaded to count their rows (the others matched the ledger's MD5: see split_landed)
    csv_objects_read: int = 0

    @property
    def bq_jobs(self) -> int:
        return self.bq_load_jobs + self.bq_query_jobs

    @property
    def ok(self) -> bool:
        return all(p.status != PartitionStatus.FAILED for p in self.partitions.values())

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
            stmt = (
                sa.select(t.c.as_of_date).distinct().where(t.c.as_of_date > first, t.c.as_of_date <= _month_end(first))
            )
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
    landed: Mapping[str, tuple[str, Totals]] | None = None,
) -> Stage2Result:
    """Load, aggregate, publish and reconcile ``partitions``; see the module docstring.

    ``fetched`` holds the totals of the rows the fetchers wrote for each partition (a missing
    entry skips only the fetch→GCS comparison); ``landed`` the MD5 and totals of each CSV object
    they wrote (``Ledger.fetched``): an object GCS lists with that MD5 is not downloaded again.
    ``retry`` governs BigQuery job retries and publish retries after a lost RDB connection;
    ``on_staged`` is a test seam (see publish).
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
        return _run(cfg, parts, run_id, fetched, bq, engine, store, retry, on_staged, landed or {})
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
    landed: Mapping[str, tuple[str, Totals]],
) -> Stage2Result:
    """The six steps in order; each step is a method of ``_Stage2`` and records its time."""
    run = _Stage2(cfg, parts, run_id, bq, engine, store, retry, on_staged)
    to_load = run.list_csvs(landed)
    if not to_load or not run.setup(to_load):
        return run.out
    loaded = run.load(to_load)
    run.aggregate(loaded)
    run.publish(loaded)
    run.reconcile(loaded, fetched)
    return run.finish()


class _Stage2:
    """One stage-2 run's state: what each partition has reached, and the clients. A failure of a
    step fails only the partitions it concerns (``fail``); later steps skip them."""

    def __init__(self, cfg: PipelineConfig, parts: list[Partition], run_id: str, bq: bigquery.Client,
                 engine: sa.Engine | None, store: ReportStore | None, retry: RetrySettings | None,
                 on_staged: StagedHook | None) -> None:
        self.cfg = cfg
        self.parts = parts
        self.results = {p: PartitionResult(p[0], p[1]) for p in parts}
        self.out = Stage2Result(run_id=run_id, partitions=self.results)
        self.engine = engine or rdb_engine(cfg.database_url())
        self.store = store or ReportStore(gcs_client(cfg.gcs, cfg.project), cfg.gcs.bucket)
        self.stage = BigQueryStage(
            bq, cfg.bigquery.project, cfg.bigquery.dataset, run_id, location=cfg.bigquery.location
        )
        self.publisher = Publisher(self.engine, on_staged=on_staged)
        if retry is not None:
            self.stage.retry = retry
            self.publisher.retry = retry
        self.media_all = cfg.media_names()
        self.log = log.bind(run_id=run_id)
        self.csv_tot: dict[Partition, Totals] = {}
        self.csv_names: dict[Partition, list[str]] = {}
        self.raw_tot: dict[date, dict[str, Totals]] = {}
        self.campaign_rows: list[dict[str, Any]] = []
        self.advertiser_rows: list[dict[str, Any]] = []
        self.mtd_rows: list[dict[str, Any]] = []
        self.mtd_done: set[date] = set()

    @contextmanager
    def step(self, name: str) -> Iterator[None]:
        started = time.perf_counter()
        try:
            yield
        finally:
            self.out.durations_s[name] = self.out.durations_s.get(name, 0.0) + time.perf_counter() - started
            self.out.bq_load_jobs, self.out.bq_query_jobs = self.stage.jobs.load, self.stage.jobs.query

    def fail(self, which: list[Partition], message: str) -> None:
        for p in which:
            self.results[p].fail(message)
        self.log.warning("stage2.failed", partitions=[f"{m}/{d}" for m, d in which], error=message)

    def list_csvs(self, landed: Mapping[str, tuple[str, Totals]]) -> list[Partition]:
        """1. What is there to load, and its rows? A partition without any CSV keeps its previous
        data. Objects that still hold what the ledger says was landed are not read back
        (``count_partitions``: listings and downloads several round trips at a time)."""
        with self.step("list"):
            for p, got in count_partitions(self.store, self.parts, landed).items():
                if isinstance(got, Exception):
                    self.fail([p], f"read CSVs: {translate(got, 'gcs')}")
                elif not got.names:
                    self.results[p].status = PartitionStatus.SKIPPED
                    self.results[p].detail = (f"no CSV under gs://{self.cfg.gcs.bucket}/"
                                              f"{partition_prefix(*p)}: previous data kept")
                else:
                    self.results[p].csv_objects = len(got.names)
                    self.csv_tot[p], self.csv_names[p] = got.totals, got.names
                    self.out.csv_objects_read += got.read
        return [p for p in self.parts if p in self.csv_tot]

    def setup(self, to_load: list[Partition]) -> bool:
        """2. BigQuery tables and the account → advertiser mapping, refreshed from config when it
        changed: on a night like the last, a few metadata calls and no job."""
        with self.step("setup"):
            try:
                self.stage.ensure_dataset()
                for m in self.media_all:
                    self.stage.ensure_raw_table(m)
                with self.step("setup_accounts"):  # measured apart: the one part that can be slow
                    self.out.accounts_refreshed = self.stage.refresh_accounts(self.cfg.advertiser_of())
                create_mart(self.engine)
            except IngestError as exc:
                self.fail(to_load, f"setup: {exc}")
                return False
            except sa.exc.SQLAlchemyError as exc:
                self.fail(to_load, f"setup: create mart tables: {type(exc).__name__}: {exc}")
                return False
        return True

    def load(self, to_load: list[Partition]) -> list[Partition]:
        """3. One load + one swap script per media table, over all of its changed dates."""
        loaded: list[Partition] = []
        with self.step("load"):
            by_media: dict[str, list[Partition]] = defaultdict(list)
            for p in to_load:
                by_media[p[0]].append(p)
            for media, mine in sorted(by_media.items()):
                try:
                    # exactly the objects reconciled above; a list rather than `*.csv` wildcards
                    # because bqemulator (DuckDB COPY) sniffs the CSV dialect of a wildcard from its
                    # first file only, so a later file with a quoted name ("Search ""Generic"", 1")
                    # then fails to parse; a list is read per file
                    uris = [f"gs://{self.cfg.gcs.bucket}/{name}" for p in mine for name in self.csv_names[p]]
                    self.stage.load_partitions(media, [d for _, d in mine], uris)
                    for p in mine:
                        self.results[p].rows_loaded = self.csv_tot[p].rows
                    loaded += mine
                except IngestError as exc:
                    self.fail(mine, f"load: {exc}")
        return loaded

    def aggregate(self, loaded: list[Partition]) -> None:
        """4. The daily queries once over the loaded dates; month-to-date per as-of date."""
        days: dict[date, list[str]] = defaultdict(list)
        for media, day in loaded:
            days[day].append(media)
        with self.step("aggregate"):
            if days:
                # one query each over the night's changed dates (a refetch window: up to 30), rows
                # kept only for the (date, media) pairs loaded now
                first, last = min(days), max(days)
                try:
                    dc = _clean(self.stage.query("daily_campaign", first, self.media_all, last))
                    da = _clean(self.stage.query("daily_advertiser", first, self.media_all, last))
                    totals_by_day = bq_totals(self.stage.query("raw_totals", first, self.media_all, last))
                except IngestError as exc:
                    self.fail(loaded, f"aggregate {first}..{last}: {exc}")
                else:
                    self.raw_tot = {d: totals_by_day.get(d, {}) for d in days}
                    self.campaign_rows += [r for r in dc if r["date"] in days and r["media"] in days[r["date"]]]
                    self.advertiser_rows += [r for r in da if r["date"] in days]
            good_days = set(self.raw_tot)
            try:
                as_of = good_days | _published_mtd_dates(self.engine, good_days)
            except sa.exc.SQLAlchemyError as exc:
                as_of = set()
                self.fail(
                    [p for p in loaded if p[1] in good_days], f"read published MTD dates: {type(exc).__name__}: {exc}"
                )
            for a in sorted(as_of):
                try:
                    self.mtd_rows += _clean(self.stage.query("mtd_advertiser_media", a, self.media_all))
                    self.mtd_done.add(a)
                except IngestError as exc:
                    self.fail([p for p in loaded if (p[1].year, p[1].month) == (a.year, a.month) and p[1] <= a],
                              f"aggregate MTD {a}: {exc}")

    def publish(self, loaded: list[Partition]) -> None:
        """5. One transaction per mart table, exactly the affected keys."""
        pairs = {(day, m) for m, day in loaded if day in self.raw_tot and self.results[(m, day)].error is None}
        ok_days = {d for d, _ in pairs}
        with self.step("publish"):
            jobs: list[
                tuple[sa.Table, list[dict[str, Any]], tuple[str, ...], set[tuple[Any, ...]], list[Partition]]
            ] = [
                (mart_daily_campaign, [r for r in self.campaign_rows if (r["date"], r["media"]) in pairs],
                 ("date", "media"), set(pairs), [(m, d) for d, m in pairs]),
                (mart_daily_advertiser, [r for r in self.advertiser_rows if r["date"] in ok_days], ("date",),
                 {(d,) for d in ok_days}, [p for p in loaded if p[1] in ok_days]),
                (mart_mtd_advertiser_media, [r for r in self.mtd_rows if r["as_of_date"] in self.mtd_done],
                 ("as_of_date",), {(a,) for a in self.mtd_done}, [p for p in loaded if p[1] in ok_days]),
            ]
            for table, rows, key_cols, keys, owners in jobs:
                try:
                    self.out.published_rows[table.name] = self.publisher.replace(table, rows, key_cols, keys)
                except IngestError as exc:
                    self.out.published_rows[table.name] = 0
                    self.fail(owners, f"publish {table.name}: {exc}")

    def reconcile(self, loaded: list[Partition], fetched: dict[Partition, Totals]) -> None:
        """6. Every partition that got this far: fetched = CSV = BigQuery = mart."""
        with self.step("reconcile"):
            candidates = [p for p in loaded if self.results[p].error is None]
            try:
                marts = mart_totals(self.engine, candidates)
            except sa.exc.SQLAlchemyError as exc:
                self.fail(candidates, f"reconcile: read mart: {type(exc).__name__}: {exc}")
                candidates = []
            for p in candidates:
                media, day = p
                rec = reconcile(
                    fetched.get(p), self.csv_tot[p], self.raw_tot.get(day, {}).get(media, Totals()), marts[p]
                )
                if rec.ok:
                    self.results[p].status, self.results[p].detail = PartitionStatus.PUBLISHED, rec.detail
                else:
                    self.results[p].detail = rec.detail
                    self.fail([p], rec.detail)

    def finish(self) -> Stage2Result:
        results, out, bound = self.results, self.out, self.log
        for r in results.values():
            if r.status == PartitionStatus.FAILED and r.error is None:  # defensive: every path above sets one
                r.error = "not processed"
        bound.info(
            "stage2.done",
            published=len(out.by_status(PartitionStatus.PUBLISHED)),
            skipped=len(out.by_status(PartitionStatus.SKIPPED)),
            failed=len(out.by_status(PartitionStatus.FAILED)),
            bq_jobs=out.bq_jobs,
            rows=out.published_rows,
            csv_objects_read=out.csv_objects_read,
            durations_s={k: round(v, 3) for k, v in out.durations_s.items()},
        )
        return out
