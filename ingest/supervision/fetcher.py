"""Fetch one report and land it in GCS.

``ReportFetcher`` is the plain logic (testable without Ray): run the connector through an
``HttpSession``, check the rows belong to the report asked for, write raw JSON then CSV to
their deterministic paths. On failure it keeps the raw exchanges under ``failed/`` and
re-raises the classified error; it never retries — the supervisor decides that.
``FetcherActor`` is the thin Ray shell: one process, many reports in flight (async).
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Awaitable, Callable
from datetime import date
from typing import Any

import httpx
import structlog

from ingest.config import MediaSettings
from ingest.errors import ConfigError, DataError, IngestError, Malformed
from ingest.media.base import (ConnectorSettings, Connector, HttpSession, RequestRetry, Row, Secret, Usage,
                               ensure_classified, rows_to_csv)
from ingest.media.client_shards import ClientShards
from ingest.media.registry import connector_class
from ingest.media.tokens import AccessToken
from ingest.storage import ReportPaths, ReportStore, gcs_md5
from ingest.supervision.limiter import Permit, poll_interval
from ingest.tasks import DayResult, ReportKey, ReportResult, Totals

log = structlog.get_logger("ingest.fetcher")


class SupervisorGone(Exception):
    """The media's supervisor (the quota, the retry policy) no longer answers: its driver or node
    died. Not a failure of the report — nobody is waiting for it, and the report is fetched again
    by the next run — so it is neither classified nor kept under ``failed/``."""


def build_connector(media: str, settings: MediaSettings, secrets: dict[str, Secret]) -> Connector:
    cls = connector_class(settings.connector)
    version = settings.api_version or cls.default_version  # resolved at load; the default only for hand-built settings
    return cls(ConnectorSettings(media, settings.base_url, version, dict(secrets), dict(settings.options)))


def resolve_secrets(media: str, settings: MediaSettings, environ: dict[str, str]) -> dict[str, Secret]:
    """Read the media's credentials from the environment; a missing one is a config error."""
    out: dict[str, Secret] = {}
    for name, var in settings.credentials.items():
        value = environ.get(var)
        if not value:
            raise ConfigError(f"media.{media}.credentials.{name}: environment variable {var} is not set")
        out[name] = Secret(value)
    return out


class QuotaLink:
    """A fetcher process's line to its media's budget, which lives in the supervisor.

    A permit before every request: the requests of this process that wait at the same moment
    ask in one call (``permits(utilization, accounts)``; one call in flight, the next carries
    everything that arrived meanwhile), so a busy fetcher costs the supervisor one Ray call per
    burst, not one per request. The highest usage the platform reported since the last call
    rides along, so usage near the limit slows the whole media. (Async-job slots are not asked
    for here: the supervisor holds one around the fetch of a report that is a platform job.)
    The callables return awaitables: ``ObjectRef``s of the supervisor actor's methods in
    production, the plain ``MediaSupervisor`` methods in tests.

    Where the rate binds, requests arrive at the quota's pace, so each call would carry one. When
    the media's schedule is backed up — the last permit this process got lies ``LINGER_FROM_S``
    or more ahead — the next call waits up to ``LINGER_S`` to gather what arrives meanwhile: the
    slots it gets lie behind that backlog anyway (a GCRA schedule never moves earlier), so the
    wait costs no throughput and no send moves; the supervisor answers one call for several.
    """

    #: how far ahead the last permit must lie before a call waits for company, and the wait
    #: (well below the former, so the wait always ends inside the backlog)
    LINGER_FROM_S = 1.0
    LINGER_S = 0.2

    def __init__(
        self,
        permits: Callable[[float | None, list[str | None]], Awaitable[list[Permit]]],
        access_token: Callable[[str | None], Awaitable[AccessToken | IngestError]] | None = None,
        request_failed: (
            Callable[[ReportKey, IngestError, int, str, int], Awaitable[tuple[bool, float, str]]] | None
        ) = None,
        late_s: float = 0.02,
    ) -> None:
        self._permits = permits
        self._waiting: list[tuple[str | None, asyncio.Future[Permit]]] = []
        self._asking: asyncio.Task[None] | None = None
        self._late_s = late_s
        self._request_failed = request_failed
        self._access_token = access_token
        self._token: AccessToken | None = None
        self._utilization: float | None = None
        self._last_send_at = 0.0  # the latest slot handed to this process (time.time())

    @property
    def has_tokens(self) -> bool:
        return self._access_token is not None

    async def bearer(self, rejected: str | None = None) -> str:
        """The media's access token, kept in this process until it nears expiry (or a 401)."""
        token = self._token
        if token is not None and rejected is None and token.fresh(time.time()):
            return token.value.get()
        assert self._access_token is not None
        got = await self._access_token(rejected)
        if isinstance(got, IngestError):
            raise got
        self._token = got
        return got.value.get()

    async def gate(self, account: str | None = None) -> float | None:
        """Wait for this request's slot of the media's schedule; return the latest time it may
        still be sent (its slot + ``late_send_s``): a send later than that would arrive bunched
        with the next permits and overrun the platform's window. None when the permit carries no
        deadline (its window is far below the quota: ``MediaSupervisor.permits``)."""
        while (permit := await self._permit(account)).send_at < 0:
            await asyncio.sleep(-permit.send_at)  # the account is paused (its throttle's hint): ask again then
        delay = permit.send_at - time.time()
        if delay > 0:
            await asyncio.sleep(delay)
        return permit.send_at + self._late_s if permit.deadline else None

    async def _permit(self, account: str | None) -> Permit:
        waiter: asyncio.Future[Permit] = asyncio.get_running_loop().create_future()
        self._waiting.append((account, waiter))
        if self._asking is None or self._asking.done():
            self._asking = asyncio.create_task(self._ask())
        return await waiter

    async def _ask(self) -> None:
        """Send what waits, one call at a time, until nothing does."""
        while self._waiting:
            batch: list[tuple[str | None, asyncio.Future[Permit]]] = []
            try:
                if linger := self.linger_s():  # backed up: wait for company (class docstring)
                    await asyncio.sleep(linger)
                batch, self._waiting = self._waiting, []
                utilization, self._utilization = self._utilization, None
                got = await self._permits(utilization, [account for account, _ in batch])
            except asyncio.CancelledError:
                for _, waiter in batch + self._waiting:
                    waiter.cancel()
                raise
            except Exception as exc:  # e.g. SupervisorGone: every waiter of the call gets it
                for _, waiter in batch:
                    if not waiter.done():
                        waiter.set_exception(exc)
                continue
            for (_, waiter), permit in zip(batch, got, strict=True):
                if not waiter.done():  # its request was cancelled meanwhile: the slot goes unused
                    waiter.set_result(permit)
                self._last_send_at = max(self._last_send_at, permit.send_at)

    def linger_s(self) -> float:
        """How long a call to the supervisor may wait for company now: ``LINGER_S`` while the
        media's schedule is backed up (the class docstring), else 0. The answers of a fetch
        exchange wait the same (ingest.supervision.exchange): a report slot freed 0.2 s later
        starts its next report no later, since that report's first request waits for a slot
        further ahead than that."""
        return self.LINGER_S if self._last_send_at - time.time() >= self.LINGER_FROM_S else 0.0

    def on_usage(self, usage: Usage) -> None:
        self._utilization = max(self._utilization or 0.0, usage.utilization)

    def retry_hook(self, key: ReportKey) -> RequestRetry | None:
        """What a report's HttpSession asks when one of its requests failed retriably: the
        supervisor's policy answers; a spent budget comes back as the final error, with the
        policy's reason (a cut body that never came whole becomes a DataError, body kept)."""
        if self._request_failed is None:
            return None
        ask = self._request_failed

        async def hook(error: IngestError, attempt: int, what: str, cut_reads: int) -> float:
            retry, delay, reason = await ask(key, error, attempt, what, cut_reads)
            if retry:
                return delay
            final = error
            if isinstance(error, Malformed):
                final = DataError(f"{what}: {error.message}", status=error.status, body=error.body)
            final.final_reason = reason  # type: ignore[attr-defined]  # read by the supervisor: fail, do not retry
            raise final

        return hook


class ReportFetcher:
    def __init__(
        self, media: str, settings: MediaSettings, connector: Connector, store: ReportStore,
        clients: ClientShards | httpx.AsyncClient,
    ) -> None:
        self.media = media
        self.settings = settings
        self.connector = connector
        self.store = store
        self.clients = clients if isinstance(clients, ClientShards) else ClientShards([clients])

    async def fetch(
        self,
        key: ReportKey,
        quota: QuotaLink | None = None,
    ) -> ReportResult:
        polls = self.settings.quota

        async def poll_wait(n: int) -> None:  # adaptive: starts fast, grows while the job runs
            await asyncio.sleep(poll_interval(n, polls.poll_min_s, polls.poll_max_s))

        paths = ReportPaths(self.store.bucket_name, key.media, key.account, key.day, key.last)
        started = time.perf_counter()
        failure: IngestError | None = None
        with self.clients.lease() as client:  # only while requests are sent, not while objects land
            if quota is None:
                session = HttpSession(client, poll_wait=poll_wait)
            else:
                session = HttpSession(client, gate=lambda: quota.gate(key.account), poll_wait=poll_wait,
                                      on_usage=quota.on_usage,
                                      bearer=quota.bearer if quota.has_tokens else None, retry=quota.retry_hook(key))
            try:
                rows = await self.connector.fetch(session, key.account, key.day, key.last)
                self._check_rows(key, rows)
            except (asyncio.CancelledError, SupervisorGone):
                raise
            except BaseException as exc:  # noqa: BLE001 - every failure is classified and its raw kept
                failure = ensure_classified(exc, key.media, key.account, key.day)
        if failure is not None:
            doc = {**session.raw_document(),
                   "error": {"kind": failure.kind, "message": failure.message, "status": failure.status}}
            try:
                await asyncio.to_thread(self.store.put_json, paths.failed_json, doc)
            except IngestError as store_exc:
                log.warning("failed_raw_not_kept", report=str(key), error=str(store_exc))
            raise failure from None
        # CSVs last: the BigQuery load reads *.csv, so a report is visible only once complete.
        # One per day (a range report is split here), rows in campaign order so that equal
        # content gives equal bytes: the digest tells the ledger whether the day changed, and a
        # day whose object already holds these bytes (``key.landed``) is not written again.
        by_day: dict[date, list[Row]] = {d: [] for d in key.days()}
        for row in rows:
            by_day[row.date].append(row)
        days, csvs = [], []
        for day, day_rows in by_day.items():
            day_rows.sort(key=lambda r: r.campaign_id)
            body = rows_to_csv(day_rows)
            name, digest = paths.day_csv(day), hashlib.sha256(body).hexdigest()
            if digest != key.landed_digest(day):
                csvs.append((name, body))
            days.append(DayResult(day, Totals.from_rows(day_rows), digest, paths.uri(name), gcs_md5(body)))
        # every object of the report in one hop to a thread (each hop costs a wake-up of the loop)
        written = await asyncio.to_thread(self._land, paths.raw_json, session.raw_document(), csvs)
        return ReportResult(
            key=key,
            totals=Totals.from_rows(rows),
            bytes=written,
            requests=session.requests,
            paths=(paths.uri(paths.raw_json), *(d.csv_path for d in days)),
            elapsed_s=time.perf_counter() - started,
            days=tuple(days),
        )

    def _land(self, raw_name: str, raw: dict[str, Any], csvs: list[tuple[str, bytes]]) -> int:
        """Raw exchanges first, then the CSVs in order; the bytes written."""
        written = self.store.put_json(raw_name, raw)
        for name, body in csvs:
            written += self.store.put(name, body, "text/csv")
        return written

    def _check_rows(self, key: ReportKey, rows: list[Row]) -> None:
        """A report must hold only its own (media, account, dates) and each campaign once a day."""
        seen: set[tuple[date, str]] = set()
        for row in rows:
            if (row.media, row.account_id) != (key.media, key.account) or not key.day <= row.date <= key.last:
                raise DataError(f"row for {row.media}/{row.account_id}/{row.date} in report {key}")
            if (row.date, row.campaign_id) in seen:
                raise DataError(f"campaign {row.campaign_id!r} appears twice on {row.date} in report {key}")
            seen.add((row.date, row.campaign_id))
