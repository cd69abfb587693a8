"""The driver: what ``ray job submit -- python -m ingest run`` executes.

1. validate everything that can be validated (config, credentials) — before anything starts;
2. open a run in the ledger and plan report tasks (media × account × date), skipping what
   is already done unless forced (so a killed run resumes where it stopped);
3. start one supervisor actor per media and consume their event streams, writing each
   event to the ledger as it arrives (a dead supervisor is recreated with what is left);
4. stage 2 for the (media, date) partitions that changed;
5. close the run with an outcome whose exit code tells success / partial / failure apart.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from typing import TYPE_CHECKING, Any, Literal

import structlog

from ingest.clients import gcs_client, rdb_engine
from ingest.config import PipelineConfig
from ingest.errors import ConfigError
from ingest.ledger import Ledger, LockedError
from ingest.notify import Notifier
from ingest.outcomes import MediaCounts, PartitionStatus, RunCounts, RunOutcome, TaskStatus
from ingest.media.base import Secret
from ingest.progress import NoProgress, Progress
from ingest.storage import ReportStore
from ingest.supervision.fetcher import resolve_secrets
from ingest.tasks import Event, ReportKey

if TYPE_CHECKING:
    from aggregations.stage2 import Stage2Result

log = structlog.get_logger("ingest.job")

RunKind = Literal["run", "rerun", "backfill", "demo"]

EXIT_SUCCESS = 0
EXIT_USAGE = 2
EXIT_PARTIAL = 3
EXIT_FAILED = 4
#: another live run holds a (media, date) this run needs: refused, nothing started; try later
EXIT_LOCKED = 5
#: a finished run's outcome → the driver's exit code (``aborted`` raises instead)
EXIT_CODES = {RunOutcome.SUCCESS: EXIT_SUCCESS, RunOutcome.PARTIAL: EXIT_PARTIAL, RunOutcome.FAILED: EXIT_FAILED}
#: how many times the driver recreates a media's supervisor that died before giving up on it
SUPERVISOR_RESTARTS = 3


@dataclass
class RunRequest:
    kind: RunKind
    dates: list[date]
    media: list[str]
    accounts: list[str] | None = None
    force: bool = False
    take_over: bool = False
    #: False only for measurements of the fetch phase alone (bench): partitions stay pending
    stage2: bool = True
    #: only these reports (``rerun --failed``); None = every configured account
    only: frozenset[ReportKey] | None = None
    #: the nightly default: each account's own yesterday in its time zone (``dates`` is filled in)
    yesterday_per_account: bool = False
    #: (media, account) → its report date; set with ``yesterday_per_account``
    account_days: dict[tuple[str, str], date] | None = None
    #: "now" for ``yesterday_per_account`` (tests); None = the clock
    as_of: datetime | None = None
    #: also refetch each media's ``lookback_days`` before the (latest) date: the nightly does,
    #: so late conversions reach the marts; rerun and backfill fetch exactly what they name
    lookback: bool = False
    #: fetch each account's consecutive dates still to do as one range report (``backfill``):
    #: one API flow per account and range instead of one per day — the quota, the requests and
    #: the CPU of a 30-day backfill shrink about 30×; the ledger still keeps each day on its own.
    #: ``rerun --failed`` leaves it off: day by day, one bad day cannot fail its neighbours again.
    ranges: bool = False


@dataclass
class RunReport:
    run_id: str
    outcome: RunOutcome
    exit_code: int
    media: RunCounts = field(default_factory=RunCounts)
    stage2: Stage2Result | None = None
    fetch_s: float = 0.0
    #: part of fetch_s spent starting a local Ray (0 when joining a running cluster)
    ray_start_s: float = 0.0
    stage2_s: float = 0.0
    failures: list[dict[str, Any]] = field(default_factory=list)


#: the longest range one refetch report covers (platform limits are far above; a long window
#: is fetched as a few such ranges, never one request per day)
MAX_RANGE_DAYS = 31


def plan_keys(cfg: PipelineConfig, req: RunRequest) -> list[ReportKey]:
    """The night's reports: each account's date(s) first, then — for the nightly — its refetch
    window as ranges of daily rows (Meta ``time_range``, GAQL ``BETWEEN``, Yahoo CUSTOM_DATE)."""
    keys, window = [], []
    for media in req.media:
        settings = cfg.media[media]
        for account in settings.account_ids():
            if req.accounts and account not in req.accounts:
                continue
            days = [req.account_days[(media, account)]] if req.account_days is not None else req.dates
            for day in days:
                key = ReportKey(media, account, day)
                if req.only is None or key in req.only:
                    keys.append(key)
            lookback = settings.lookback_days or 0
            if req.lookback and lookback and req.only is None:
                window += refetch_ranges(media, account, max(days), lookback, set(days))
    return keys + window


def refetch_ranges(media: str, account: str, latest: date, lookback: int, exclude: set[date]) -> list[ReportKey]:
    """``lookback`` days before ``latest`` (minus ``exclude``) as contiguous ranges of at most
    MAX_RANGE_DAYS, oldest first."""
    days = [latest - timedelta(days=i) for i in range(lookback, 0, -1)]
    return _contiguous(media, account, [d for d in days if d not in exclude])


def as_ranges(keys: list[ReportKey]) -> list[ReportKey]:
    """Each account's one-day reports merged into ranges of consecutive days (at most
    MAX_RANGE_DAYS each, a gap starts a new one); range reports are kept as they are."""
    days: dict[tuple[str, str], list[date]] = defaultdict(list)
    out: list[ReportKey] = []
    for key in keys:
        if key.span > 1:
            out.append(key)
        else:
            days[(key.media, key.account)].append(key.day)
    for (media, account), dates in days.items():
        out.extend(_contiguous(media, account, sorted(set(dates))))
    return out


def _contiguous(media: str, account: str, days: list[date]) -> list[ReportKey]:
    """Ascending ``days`` as ranges of consecutive days of at most MAX_RANGE_DAYS."""
    out: list[ReportKey] = []
    for day in days:
        prev = out[-1] if out else None
        if prev is not None and prev.last + timedelta(days=1) == day and prev.span < MAX_RANGE_DAYS:
            out[-1] = ReportKey(media, account, prev.day, prev.span + 1)
        else:
            out.append(ReportKey(media, account, day))
    return out


def to_fetch(req: RunRequest, keys: list[ReportKey], states: dict[ReportKey, dict[str, Any]]
             ) -> tuple[list[ReportKey], list[ReportKey]]:
    """(the reports to fetch, the planned days skipped as done): resume and ``rerun --failed`` both
    mean everything not recorded as done; ``force`` re-fetches; the refetch window is fetched
    every night (that is its point). With ``ranges`` (a backfill) the days left are merged into
    range reports *after* the done ones are left out, so a resumed backfill fetches only its gaps."""
    todo = keys if req.force else [k for k in keys if k.span > 1 or states.get(k, {}).get("status") != TaskStatus.DONE]
    fetched = set(todo)
    skipped = [k for k in keys if k not in fetched]
    return (as_ranges(todo) if req.ranges else todo), skipped


def fetch_order(keys: list[ReportKey] | set[ReportKey]) -> list[ReportKey]:
    """Yesterday's one-day reports before the refetch ranges: the morning's numbers never
    wait behind the window."""
    return sorted(keys, key=lambda k: (k.span > 1, k))


class NightlyJob:
    def __init__(
        self, cfg: PipelineConfig, *, progress: Progress | None = None, environ: dict[str, str] | None = None
    ) -> None:
        self.cfg = cfg
        self.progress = progress or NoProgress()
        self.environ = dict(os.environ if environ is None else environ)
        self.engine = rdb_engine(cfg.database_url())
        self.ledger = Ledger(self.engine)
        self._writer: _LedgerWriter | None = None
        #: a forced run (rerun, --force) republishes what it fetched even when unchanged
        self._republish = False
        self.notifier = Notifier(cfg.notify, self.environ)

    def secrets(self, media: list[str]) -> dict[str, dict[str, Secret]]:
        """Resolve every credential up front: a missing one is a config error (exit 2)."""
        return {m: resolve_secrets(m, self.cfg.media[m], self.environ) for m in media}

    def execute(self, req: RunRequest) -> RunReport:
        unknown = [m for m in req.media if m not in self.cfg.media]
        if unknown:
            raise ConfigError(f"unknown media: {', '.join(unknown)} (configured: {', '.join(self.cfg.media)})")
        secrets = self.secrets(req.media)
        self._republish = req.force
        self.ledger.migrate()
        if req.yesterday_per_account:
            from ingest.timezones import AccountTimezones

            req.account_days = AccountTimezones(self.cfg, self.ledger).yesterday(req.media, secrets, req.as_of)
            req.dates = sorted(set(req.account_days.values()))
        all_keys = plan_keys(self.cfg, req)
        # the dates this run touches: its own, and the refetch window's
        touched = sorted(set(req.dates) | {d for k in all_keys for d in k.days()})
        run_id = self.ledger.open_run(req.kind, req.dates, req.media)
        structlog.contextvars.bind_contextvars(run_id=run_id)
        try:
            taken = self.ledger.acquire(run_id, [(m, d) for m in req.media for d in touched],
                                        stale_after_s=self.cfg.lock_stale_s, take_over=req.take_over)
        except LockedError as exc:
            self.ledger.close_run(run_id, RunOutcome.ABORTED, RunCounts(), refused=exc.message)
            raise
        # Read states only once the locks are ours: a run that just finished has written them.
        todo, skipped = to_fetch(req, all_keys, self.ledger.states(all_keys))
        if not req.force:  # before plan() marks them pending; a forced run rewrites every object
            todo = self.ledger.with_landed(todo)
        if taken:
            log.warning("stale_locks_taken_over", from_runs=taken)
        report = RunReport(run_id, RunOutcome.RUNNING, EXIT_SUCCESS, RunCounts.empty(req.media))
        for key in todo + skipped:  # reports: a range is one, a day already done is one skipped
            report.media[key.media].planned += 1
        for key in skipped:
            report.media[key.media].skipped += 1
        log.info("run_planned", kind=req.kind, dates=[d.isoformat() for d in req.dates],
                 reports=len(todo) + len(skipped), to_fetch=len(todo),
                 ranges=sum(1 for k in todo if k.span > 1), refetch_days=len(touched) - len(req.dates))
        self.ledger.plan(run_id, todo)
        beat = _Heartbeat(self.ledger, run_id, self.cfg.lock_stale_s / 4)
        try:
            store = ReportStore(gcs_client(self.cfg.gcs, self.cfg.project), self.cfg.gcs.bucket)
            store.ensure_bucket()
            started = time.perf_counter()
            if todo:
                self._fetch(run_id, todo, secrets, report)
            report.fetch_s = time.perf_counter() - started
            started = time.perf_counter()
            # every partition that changed since its last good stage 2 — also by a run that died
            if req.stage2:
                report.stage2 = self._stage2(run_id, self.ledger.pending_partitions(req.media, touched), store)
                self._publish_freshness()
            report.stage2_s = time.perf_counter() - started
        except BaseException as exc:
            self.ledger.close_run(run_id, RunOutcome.ABORTED, report.media)
            self._notify_end(req, report, exc)
            raise
        finally:
            beat.stop()
            self.ledger.release(run_id)
            self.progress.close()
        report.outcome, report.exit_code = self._outcome(report)
        report.failures = [
            {k: r[k] for k in ("media", "account_id", "date", "attempts", "error_kind", "error_message")}
            for r in self.ledger.task_rows(dates=touched)
            if r["status"] == TaskStatus.FAILED and r["media"] in req.media
        ]
        self.ledger.close_run(run_id, report.outcome, report.media)
        log.info("run_finished", outcome=report.outcome, exit_code=report.exit_code, **report.media.to_doc())
        self._notify_end(req, report)
        return report

    # -- fetch ------------------------------------------------------------------------------
    def _fetch(
        self, run_id: str, todo: list[ReportKey], secrets: dict[str, dict[str, Secret]], report: RunReport
    ) -> None:
        import ray

        if not ray.is_initialized():
            started = time.perf_counter()
            ray.init(
                address=self.cfg.ray.address,
                num_cpus=self.cfg.ray.num_cpus,
                include_dashboard=False,
                logging_level=logging.WARNING,
                configure_logging=False,
            )
            report.ray_start_s = time.perf_counter() - started
        by_media: dict[str, list[ReportKey]] = defaultdict(list)
        for key in todo:
            by_media[key.media].append(key)
        deadline = time.time() + self.cfg.run_deadline_s

        async def main() -> None:
            self._writer = _LedgerWriter(self.ledger, run_id, republish=self._republish)
            writer = asyncio.create_task(self._writer.run())
            try:
                await asyncio.gather(*(self._drive_media(run_id, m, keys, secrets[m], deadline, report)
                                       for m, keys in by_media.items()))
            finally:
                self._writer.close()
                await writer

        asyncio.run(main())

    async def _drive_media(self, run_id: str, media: str, keys: list[ReportKey], secrets: dict[str, Secret],
                           deadline: float, report: RunReport) -> None:
        import ray

        from ingest.supervision.actors import start_supervisor
        from ingest.supervision.placement import Placement

        placement = Placement.from_settings(self.cfg.ray, run_id)
        summary = report.media[media]
        remaining = set(keys)
        next_attempt: dict[ReportKey, int] = {}
        self.progress.start(media, len(keys))
        self.ledger.mark_running(run_id, media)
        for generation in range(SUPERVISOR_RESTARTS + 1):
            supervisor = start_supervisor(media, self.cfg.media[media], secrets, self.cfg.gcs, self.cfg.project,
                                          deadline, {"run_id": run_id}, placement, generation)
            try:
                # a recreated supervisor rewrites every object: the dead one's fetchers may have
                # written part of a report it never reported (ReportKey.without_landed)
                todo = remaining if generation == 0 else {k.without_landed() for k in remaining}
                stream = supervisor.run.remote(fetch_order(todo), next_attempt)
                async for ref in stream:
                    events: list[Event] = await ref
                    for event in events:
                        self._record(run_id, event, summary, remaining, next_attempt)
                if not remaining:
                    return
                why = "its event stream ended early"
            except (ray.exceptions.RayActorError, ray.exceptions.RayTaskError) as exc:
                # died (process killed, node lost) or failed (e.g. could not start its fetchers):
                # recreate it with what the ledger does not have as done yet
                what = "died" if isinstance(exc, ray.exceptions.RayActorError) else "failed"
                why = f"supervisor {what} ({type(exc).__name__})"
            finally:
                ray.kill(supervisor)  # its fetchers share its fate
            log.error("supervisor_died", media=media, generation=generation, remaining=len(remaining), reason=why)
            self._record(run_id,
                         Event("restart", media, message=f"{why}; recreating with {len(remaining)} reports left"),
                         summary, remaining, next_attempt)
        for key in sorted(remaining):
            event = Event("failed", media, key, next_attempt.get(key, 1) - 1, error_kind="unavailable",
                          message=f"supervisor of {media} died or failed {SUPERVISOR_RESTARTS + 1} times")
            self._record(run_id, event, summary, remaining, next_attempt)

    def _record(self, run_id: str, event: Event, summary: MediaCounts, remaining: set[ReportKey],
                next_attempt: dict[ReportKey, int]) -> None:
        if self._writer is not None:
            self._writer.put(event)
        else:  # outside a fetch (no stream to keep up with): write at once
            self.ledger.apply(run_id, event, republish=self._republish)
        if event.kind == "breaker_open":
            self.notifier.breaker_open(run_id, event)  # background thread; never raises
        if event.kind == "request_retry":
            summary.retries += 1  # one request sent again; the report's attempt stays
        elif event.kind == "retry" and event.key:
            summary.retries += 1
            next_attempt[event.key] = event.attempt + 1
        elif event.kind == "restart":
            summary.restarts += 1
        elif event.kind in ("done", "failed") and event.key and event.key in remaining:
            remaining.discard(event.key)
            self.progress.advance(event.media, event.kind)
            if event.kind == "done" and event.result:
                summary.done += 1
                summary.rows += event.result.totals.rows
                summary.requests += event.result.requests
            else:
                summary.failed += 1

    # -- stage 2 -----------------------------------------------------------------------------
    def _stage2(self, run_id: str, partitions: list[tuple[str, date]], store: ReportStore) -> Stage2Result | None:
        if not partitions:
            return None
        from aggregations.stage2 import run_stage2

        fetched = self.ledger.fetched(partitions)
        result = run_stage2(self.cfg, partitions, run_id, fetched.totals, engine=self.engine, store=store,
                            landed=fetched.csvs)
        for (media, day), part in result.partitions.items():
            self.ledger.record_stage(run_id, media, day, part.status, part.rows_loaded, part.error or part.detail)
        return result

    def _publish_freshness(self) -> None:
        """``mart_freshness`` for analysts: every account's last month, as the ledger now has it."""
        from ingest.freshness import check_freshness, publish_freshness

        days = max([7] + [(s.lookback_days or 0) + 1 for s in self.cfg.media.values()])
        try:
            publish_freshness(self.engine, check_freshness(self.cfg, self.ledger, days=days))
        except Exception as exc:  # noqa: BLE001 - the marts themselves are published; this is their label
            log.warning("freshness_not_published", reason=f"{type(exc).__name__}: {exc}"[:300])

    # -- outcome ------------------------------------------------------------------------------
    def _outcome(self, report: RunReport) -> tuple[RunOutcome, int]:
        stage_failed = 0
        if report.stage2 is not None:
            stage_failed = len(report.stage2.by_status(PartitionStatus.FAILED))
        outcome = report.media.outcome(stage_failed)
        return outcome, EXIT_CODES[outcome]

    def _notify_end(self, req: RunRequest, report: RunReport, error: BaseException | None = None) -> None:
        """Webhook message for every finished run (success too); a failing webhook is only logged."""
        try:
            self.notifier.run_finished(report, self.ledger.run(report.run_id), kind=req.kind, error=error,
                                       dates=(min(req.dates).isoformat(), max(req.dates).isoformat()))
        except Exception as exc:  # noqa: BLE001 - notifications never change a run's outcome
            log.warning("notify_failed", reason=f"{type(exc).__name__}: {exc}")


class _LedgerWriter:
    """The driver's one ledger writer during the fetch: events are queued as they arrive and
    written in order, each burst in one transaction off the event loop, so a night of
    20,000 reports costs a few hundred commits, not 40,000, and never stalls the streams."""

    _CLOSE = object()

    def __init__(self, ledger: Ledger, run_id: str, max_batch: int = 500, republish: bool = False) -> None:
        self.ledger = ledger
        self.run_id = run_id
        self.republish = republish
        self.max_batch = max_batch
        self.queue: asyncio.Queue[Any] = asyncio.Queue()
        self.batches = 0

    def put(self, event: Event) -> None:
        self.queue.put_nowait(event)

    def close(self) -> None:
        self.queue.put_nowait(self._CLOSE)

    async def run(self) -> None:
        closing = False
        while not closing:
            batch = [await self.queue.get()]
            while not self.queue.empty() and len(batch) < self.max_batch:
                batch.append(self.queue.get_nowait())
            if batch[-1] is self._CLOSE:
                closing = True
                batch.pop()
            if batch:
                await asyncio.to_thread(self.ledger.apply_many, self.run_id, batch, republish=self.republish)
                self.batches += 1


class _Heartbeat:
    """Keeps this run's partition locks fresh from a daemon thread while the run is alive."""

    def __init__(self, ledger: Ledger, run_id: str, every_s: float) -> None:
        import threading

        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, args=(ledger, run_id, every_s), daemon=True,
                                        name="lock-heartbeat")
        self._thread.start()

    def _loop(self, ledger: Ledger, run_id: str, every_s: float) -> None:
        while not self._stop.wait(every_s):
            try:
                ledger.heartbeat(run_id)
            except Exception as exc:  # noqa: BLE001 - a missed beat must not kill the run
                log.warning("heartbeat_failed", error=type(exc).__name__)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
