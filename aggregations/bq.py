"""BigQuery side of stage 2: raw tables, idempotent partition loads, the aggregation queries.

Idempotency per (media, date), and why it looks like this:

- One load job per media table per run, over every changed date's CSVs, never per account
  or per date: real BigQuery allows 1,500 load jobs per table per day, failed ones included,
  and a nightly refetch window touches up to 30 dates.
- The load goes into a staging table with WRITE_TRUNCATE, then ONE script
  ``BEGIN; DELETE those dates; INSERT FROM staging; COMMIT`` swaps their rows atomically.
  A partition decorator (``raw_meta$20260131`` + WRITE_TRUNCATE) would be simpler on real
  BigQuery, but bqemulator rejects decorators and truncates whole tables, and we need one
  mechanism that runs on both. Re-running a partition therefore replaces it, never appends.
- Job ids are deterministic: ``ingest_{kind}_{key}_{run}_{attempt}``. A new attempt (the job
  itself failed) gets a new id; a re-submission of the *same* attempt after a lost response
  reuses the id, real BigQuery answers 409 Conflict, and we resume the existing job with
  ``get_job`` instead of running it twice (bqemulator never 409s; tests use a fake transport).

google.api_core exceptions become ``ingest.errors`` in ``translate`` — the only place.
"""

from __future__ import annotations

import hashlib
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any

import requests
import structlog
from google.api_core import exceptions as gexc
from google.auth import exceptions as auth_exc
from google.cloud import bigquery

from aggregations.queries import ACCOUNTS_TABLE, RAW_COLUMNS, raw_table, render, table_ref
from ingest.config import RetrySettings, check_account, check_name
from ingest.errors import IngestError, RetriableError, StageError, Throttled, Transient

log = structlog.get_logger("aggregations.bq")

RAW_SCHEMA = [
    bigquery.SchemaField("date", "DATE", mode="REQUIRED"),
    bigquery.SchemaField("media", "STRING", mode="REQUIRED"),
    bigquery.SchemaField("account_id", "STRING", mode="REQUIRED"),
    bigquery.SchemaField("campaign_id", "STRING", mode="REQUIRED"),
    bigquery.SchemaField("campaign_name", "STRING", mode="NULLABLE"),
    bigquery.SchemaField("impressions", "INT64", mode="REQUIRED"),
    bigquery.SchemaField("clicks", "INT64", mode="REQUIRED"),
    bigquery.SchemaField("spend", "NUMERIC", mode="REQUIRED"),
    bigquery.SchemaField("conversions", "NUMERIC", mode="REQUIRED"),
    bigquery.SchemaField("currency", "STRING", mode="REQUIRED"),
]
assert tuple(f.name for f in RAW_SCHEMA) == RAW_COLUMNS

STAGING_TTL = timedelta(days=1)  # a crashed run's staging table cleans itself up
_JOB_ID_UNSAFE = re.compile(r"[^A-Za-z0-9_-]")

# -- error translation (the one place that knows google.api_core) -----------------------------

_TRANSIENT_TYPES: tuple[type[BaseException], ...] = (
    gexc.ServerError,  # 500/502/503/504 and job errors backendError/internalError
    gexc.TooManyRequests,
    gexc.ServiceUnavailable,
    gexc.RetryError,
    gexc.DeadlineExceeded,
    ConnectionError,
    TimeoutError,
    requests.exceptions.ConnectionError,
    requests.exceptions.Timeout,
    auth_exc.TransportError,
)
_THROTTLE_REASONS = {"rateLimitExceeded", "jobRateLimitExceeded"}
_TRANSIENT_REASONS = {"backendError", "internalError"}


def _reasons(exc: BaseException) -> set[str]:
    errors = getattr(exc, "errors", None) or []
    return {e.get("reason", "") for e in errors if isinstance(e, dict)}


def translate(exc: BaseException, what: str) -> IngestError:
    """Map a BigQuery client exception to our taxonomy: retry what can heal, fail the rest."""
    if isinstance(exc, IngestError):
        return exc
    message = f"{what}: {type(exc).__name__}: {exc}"
    status = getattr(exc, "code", None)
    status = status if isinstance(status, int) else None
    reasons = _reasons(exc)
    if reasons & _THROTTLE_REASONS or isinstance(exc, gexc.TooManyRequests):
        return Throttled(message, status=status)
    if isinstance(exc, _TRANSIENT_TYPES) or reasons & _TRANSIENT_REASONS:
        return Transient(message, status=status)
    # BadRequest (invalid CSV, SQL error), NotFound, Forbidden (incl. quotaExceeded: a daily
    # quota does not heal within a run), Conflict outside job insertion, anything else.
    return StageError(message, status=status)


def _api(what: str, fn: Callable[[], Any]) -> Any:
    try:
        return fn()
    except IngestError:
        raise
    except Exception as exc:  # noqa: BLE001 - translated, not swallowed
        raise translate(exc, what) from None


def safe_job_part(value: str, limit: int = 200) -> str:
    """Job ids allow [A-Za-z0-9_-] only; other characters of a run id become ``_``."""
    return _JOB_ID_UNSAFE.sub("_", value)[:limit] or "_"


# -- the runner ---------------------------------------------------------------------------------


@dataclass
class JobCounts:
    """BigQuery jobs issued (every attempt counts, as it does against the real quotas)."""

    load: int = 0
    query: int = 0
    resumed: int = 0

    @property
    def total(self) -> int:
        return self.load + self.query


def accounts_digest(mapping: dict[tuple[str, str], str]) -> str:
    """What ``advertiser_accounts`` holds, as a short string kept in the table's description."""
    text = "\n".join(f"{m}\t{a}\t{adv}" for (m, a), adv in sorted(mapping.items()))
    return "ingest accounts v1 sha256:" + hashlib.sha256(text.encode()).hexdigest()


@dataclass
class BigQueryStage:
    client: bigquery.Client
    project: str
    dataset: str
    run_id: str
    location: str | None = None
    retry: RetrySettings = field(
        default_factory=lambda: RetrySettings(max_attempts=4, backoff_min_s=1, backoff_max_s=30)
    )
    sleep: Callable[[float], None] = time.sleep
    job_timeout_s: float = 600.0
    jobs: JobCounts = field(default_factory=JobCounts)

    def __post_init__(self) -> None:
        check_name(self.dataset, "dataset")
        self._run = safe_job_part(self.run_id)

    # -- naming ---------------------------------------------------------------------------
    def ref(self, table: str) -> str:
        """``project.dataset.table`` (no backquotes) for client API calls."""
        table_ref(self.project, self.dataset, table)  # validates every part
        return f"{self.project}.{self.dataset}.{table}"

    @staticmethod
    def staging_table(media: str, day: date, last: date | None = None) -> str:
        span = f"{day:%Y%m%d}" if last is None or last == day else f"{day:%Y%m%d}_{last:%Y%m%d}"
        return f"_stage_{check_name(media, 'media')}_{span}"

    def job_id(self, kind: str, key: str, attempt: int) -> str:
        return f"ingest_{kind}_{key}_{self._run}_{attempt}"

    # -- DDL --------------------------------------------------------------------------------
    def ensure_dataset(self) -> None:
        ds = bigquery.Dataset(f"{self.project}.{self.dataset}")
        if self.location:
            ds.location = self.location
        _api(f"create dataset {self.dataset}", lambda: self.client.create_dataset(ds, exists_ok=True))

    def ensure_raw_table(self, media: str) -> None:
        """Explicit schema (never autodetect), partitioned by date, clustered for the queries."""
        table = bigquery.Table(self.ref(raw_table(media)), schema=RAW_SCHEMA)
        table.time_partitioning = bigquery.TimePartitioning(type_=bigquery.TimePartitioningType.DAY, field="date")
        table.clustering_fields = ["account_id", "campaign_id"]
        _api(f"create table {raw_table(media)}", lambda: self.client.create_table(table, exists_ok=True))

    def refresh_accounts(self, mapping: dict[tuple[str, str], str]) -> bool:
        """Replace ``advertiser_accounts`` with the config's account → advertiser mapping, when
        it changed; returns whether it did.

        One DDL statement (CREATE OR REPLACE ... AS SELECT FROM UNNEST) is atomic, is not
        subject to the per-table DML concurrency limit, and runs on bqemulator. The values are
        literals, which is safe only because each passed a strict pattern (no quotes possible).
        The table's description holds the mapping's digest: a night whose accounts did not
        change reads it (one API call) and runs no job. (The statement is what made stage 2's
        setup slow in the nightly: bqemulator takes ~20 s to parse 1,000 literals.)
        """
        if not mapping:
            raise StageError("no accounts configured: cannot build advertiser_accounts")
        digest = accounts_digest(mapping)
        ref = self.ref(ACCOUNTS_TABLE)
        try:
            current = self.client.get_table(ref).description
        except gexc.NotFound:
            current = None
        except Exception as exc:  # noqa: BLE001 - unknown: refresh anyway (the statement says what is wrong)
            log.warning("accounts_digest_unreadable", reason=f"{type(exc).__name__}: {exc}"[:200])
            current = None
        if current == digest:
            return False
        structs = ",\n  ".join(
            f"STRUCT('{check_name(m, 'media')}' AS media, '{check_account(a)}' AS account_id, "
            f"'{check_name(adv, 'advertiser')}' AS advertiser)"
            for (m, a), adv in sorted(mapping.items())
        )
        sql = (
            f"CREATE OR REPLACE TABLE {table_ref(self.project, self.dataset, ACCOUNTS_TABLE)} AS\n"
            f"SELECT * FROM UNNEST([\n  {structs}\n])"
        )
        self._run_query("accounts", "refresh", sql)
        table = _api(f"read table {ACCOUNTS_TABLE}", lambda: self.client.get_table(ref))
        table.description = digest
        _api(f"label table {ACCOUNTS_TABLE}", lambda: self.client.update_table(table, ["description"]))
        return True

    # -- jobs -------------------------------------------------------------------------------
    def _submit(self, job_id: str, what: str, submit: Callable[[str], Any]) -> Any:
        """Create job ``job_id``; after a lost response the same id is re-sent and a 409 means
        the first request did create it: resume that job instead of failing or duplicating."""
        for attempt in range(1, self.retry.max_attempts + 1):
            try:
                return submit(job_id)
            except gexc.Conflict:
                self.jobs.resumed += 1
                return _api(f"{what}: get job {job_id}", lambda: self.client.get_job(job_id, location=self.location))
            except Exception as exc:  # noqa: BLE001
                err = translate(exc, f"{what}: submit {job_id}")
                if not isinstance(err, RetriableError) or attempt == self.retry.max_attempts:
                    raise err from None
                self.sleep(_delay(attempt, self.retry))
        raise AssertionError("unreachable")

    def run_job(self, kind: str, key: str, what: str, submit: Callable[[str], Any], counter: str) -> Any:
        """Run one logical job to completion; a failed job is retried under a new attempt id."""
        for attempt in range(1, self.retry.max_attempts + 1):
            job_id = self.job_id(kind, key, attempt)
            setattr(self.jobs, counter, getattr(self.jobs, counter) + 1)
            try:
                job = self._submit(job_id, what, submit)
                job.result(timeout=self.job_timeout_s)
                return job
            except Exception as exc:  # noqa: BLE001
                err = translate(exc, f"{what} (job {job_id})")
                if not isinstance(err, RetriableError) or attempt == self.retry.max_attempts:
                    raise err from None
                self.sleep(_delay(attempt, self.retry))
        raise AssertionError("unreachable")

    def _run_query(self, kind: str, key: str, sql: str, params: list[Any] | None = None) -> Any:
        config = bigquery.QueryJobConfig(query_parameters=params or [])

        def submit(job_id: str) -> Any:
            # job_retry=None: retries are ours (new attempt id), never the library's same-id retry
            return self.client.query(sql, job_config=config, job_id=job_id, location=self.location, job_retry=None)

        return self.run_job(kind, key, f"query {kind} {key}", submit, "query")

    # -- load -------------------------------------------------------------------------------
    def load_partition(self, media: str, day: date, uri: str | list[str]) -> int:
        """One (media, date): see ``load_partitions``."""
        return self.load_partitions(media, [day], uri)

    def load_partitions(self, media: str, days: list[date], uri: str | list[str]) -> int:
        """Load a media's dates from their CSVs in ONE load job and swap them into ``raw_{media}``.

        A night that refetches a 30-day window still costs one load job per media table (real
        BigQuery allows 1,500 per table per day, failed ones included), and one script
        replaces exactly those dates. Returns the rows the load job read. Dates and media are
        rendered as literals because bqemulator rejects query parameters inside
        multi-statement scripts; they come from ``datetime.date`` values and a checked name.
        """
        days = sorted(set(days))
        if not days or any(not isinstance(d, date) or isinstance(d, datetime) for d in days):
            raise TypeError("days must be datetime.date values")
        first, last = days[0], days[-1]
        key = f"{check_name(media, 'media')}_{first:%Y%m%d}" + (f"_{last:%Y%m%d}_{len(days)}" if len(days) > 1 else "")
        stage = self.staging_table(media, first, last)
        config = bigquery.LoadJobConfig(
            source_format=bigquery.SourceFormat.CSV,
            skip_leading_rows=1,  # the header row; bqemulator reads it itself, real BQ needs this
            schema=RAW_SCHEMA,
            write_disposition=bigquery.WriteDisposition.WRITE_TRUNCATE,
            create_disposition=bigquery.CreateDisposition.CREATE_IF_NEEDED,
            allow_quoted_newlines=True,
        )

        def submit(job_id: str) -> Any:
            return self.client.load_table_from_uri(
                uri, self.ref(stage), job_id=job_id, job_config=config, location=self.location
            )

        what = f"{first}" if len(days) == 1 else f"{len(days)} dates {first}..{last}"
        job = self.run_job("load", key, f"load {media} {what}", submit, "load")
        self._expire(stage)
        rows = int(job.output_rows or 0)
        raw = table_ref(self.project, self.dataset, raw_table(media))
        staged = table_ref(self.project, self.dataset, stage)
        cols = ", ".join(RAW_COLUMNS)
        if len(days) == 1:
            dates = f"date = DATE '{first.isoformat()}'"
        else:
            dates = "date IN (" + ", ".join(f"DATE '{d.isoformat()}'" for d in days) + ")"
        script = (
            "BEGIN TRANSACTION;\n"
            f"DELETE FROM {raw} WHERE {dates};\n"
            # rows of another date/media in these files are not inserted; the reconciliation
            # then reports the row-count mismatch instead of corrupting a day
            f"INSERT INTO {raw} ({cols})\nSELECT {cols} FROM {staged}\n"
            f"WHERE {dates} AND media = '{media}';\n"
            "COMMIT TRANSACTION;"
        )
        self._run_query("merge", key, script)
        _api(f"drop {stage}", lambda: self.client.delete_table(self.ref(stage), not_found_ok=True))
        return rows

    def _expire(self, table_name: str) -> None:
        """Best effort: real BigQuery drops a forgotten staging table after a day."""
        try:
            table = self.client.get_table(self.ref(table_name))
            table.expires = datetime.now(UTC) + STAGING_TTL
            self.client.update_table(table, ["expires"])
        except Exception:  # noqa: BLE001 - an expiry is a nicety; the drop below is the rule
            pass

    # -- aggregation queries ----------------------------------------------------------------
    def query(self, name: str, day: date, media: list[str], last: date | None = None) -> list[dict[str, Any]]:
        """Run ``sql/{name}.sql`` for ``day`` (through ``last`` where the query takes a range);
        rows as dicts (NUMERIC → Decimal)."""
        from aggregations.queries import DAYS, QUERIES

        sql = render(name, self.project, self.dataset, media)
        if QUERIES[name].raw_filter == DAYS:
            last = last or day
            params = [
                bigquery.ScalarQueryParameter("first", "DATE", day),
                bigquery.ScalarQueryParameter("last", "DATE", last),
            ]
            key = f"{day:%Y%m%d}" + (f"_{last:%Y%m%d}" if last != day else "")
        else:
            params = [bigquery.ScalarQueryParameter("date", "DATE", day)]
            key = f"{day:%Y%m%d}"
        job = self._run_query(f"q_{name}", key, sql, params)
        return [
            dict(row.items()) for row in _api(f"fetch {name}", lambda: list(job.result(timeout=self.job_timeout_s)))
        ]


def _delay(attempt: int, settings: RetrySettings) -> float:
    """The one backoff of the project (supervision's full-jitter exponential)."""
    from ingest.supervision.policy import backoff_delay

    return backoff_delay(attempt, settings)
