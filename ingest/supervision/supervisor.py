"""One supervisor per media: owns its work queue, retries, quota, breaker and fetchers.

``MediaSupervisor`` is the plain logic, testable without Ray: it hands reports to a small
pool of fetchers, asks ``RetryPolicy`` what to do with each failure, pauses on throttles,
stops sending while the breaker is open, replaces dead fetchers within an Erlang-style
restart intensity, and streams ``Event``s as they happen. ``SupervisorActor`` (bottom) is
the thin Ray shell; the driver consumes its event stream and writes the ledger.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import random
import time
from collections import Counter, deque
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Protocol

import structlog

from ingest.config import MediaSettings, RestartSettings
from ingest.errors import AuthError, IngestError, JobFailed, Malformed, RetriableError, Throttled
from ingest.media.registry import connector_class
from ingest.media.tokens import AccessToken, TokenCache
from ingest.supervision.breaker import CircuitBreaker
from ingest.supervision.limiter import JobSlots, Permit, RateLimiter
from ingest.supervision.placement import fetchers_for
from ingest.supervision.policy import RetryPolicy
from ingest.tasks import Event, ReportKey, ReportResult

log = structlog.get_logger("ingest.supervisor")

#: how long a supervisor lets events gather before it streams them to the driver (see
#: ``run_batches``). Each streamed object costs both sides a Ray item and the driver a wake-up and
#: a ledger transaction; gathering for 0.25 s measured, scale ¼ back to back: driver CPU 8.0 → 2.4
#: s, supervisors 13.5 → 11.0 s (0.05 s: 3.9 / 11.2 s). The ledger and the UI see a result at most
#: this much later; a media's last event is never held (nothing is pending then).
EVENT_LINGER_S = 0.25


class WorkerDied(Exception):
    """The fetcher process died while it held a report (killed, OOM, node lost)."""


class FetcherHandle(Protocol):
    async def fetch(self, key: ReportKey) -> ReportResult:
        """Fetch and land one report; raise an IngestError, or WorkerDied if the process is gone."""


Spawn = Callable[[int], Awaitable[FetcherHandle]]


class RestartIntensity:
    """At most ``max_restarts`` within ``period_s``; one more means escalate (Erlang/OTP)."""

    def __init__(self, settings: RestartSettings, clock: Callable[[], float] = time.monotonic) -> None:
        self.settings = settings
        self.clock = clock
        self._times: deque[float] = deque()
        self.total = 0

    def allow(self) -> bool:
        now = self.clock()
        while self._times and now - self._times[0] > self.settings.period_s:
            self._times.popleft()
        if len(self._times) >= self.settings.max_restarts:
            return False
        self._times.append(now)
        self.total += 1
        return True

    def backoff(self) -> float:
        n = len(self._times)
        return min(self.settings.backoff_max_s, self.settings.backoff_min_s * 2 ** max(0, n - 1))


class MediaSupervisor:
    def __init__(
        self,
        media: str,
        settings: MediaSettings,
        spawn: Spawn,
        *,
        deadline: float | None = None,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
        tokens: TokenCache | None = None,
    ) -> None:
        self.media = media
        self.tokens = tokens
        self.settings = settings
        self.spawn = spawn
        self.clock = clock
        self.policy = RetryPolicy(settings.retry, deadline=deadline, rng=rng, clock=clock)
        q = settings.quota
        self.limiter = RateLimiter(q.requests_per_second, q.burst, clock=clock, window_s=q.window_s,
                                   jitter_s=q.arrival_jitter_s, late_s=q.late_send_s)
        self.jobs = JobSlots(settings.quota.max_concurrent_jobs)
        #: each report is a platform job (Yahoo, Meta async): a slot is held around its fetch
        self.report_jobs = connector_class(settings.connector).uses_report_jobs(dict(settings.options))
        self.breaker = CircuitBreaker(settings.breaker.failure_threshold, settings.breaker.open_s, clock=clock,
                                      window_s=settings.breaker.window_s)
        self.restarts = RestartIntensity(settings.restarts, clock=clock)
        self.fetchers: list[FetcherHandle] = []
        self.given_up: str | None = None
        self._events: asyncio.Queue[Event] = asyncio.Queue()
        self._queue: asyncio.PriorityQueue[tuple[float, int, ReportKey, int]] = asyncio.PriorityQueue()
        self._seq = itertools.count()
        self._pending = 0
        self._open_cycles = 0
        self._restart_locks: dict[int, asyncio.Lock] = {}
        self._finished: set[ReportKey] = set()
        self._throttle_run = 0  # app-scoped throttles since the last success
        self._account_pause: dict[str, float] = {}  # account → clock() until which it sends nothing
        self._attempt_of: dict[ReportKey, int] = {}  # the report attempt a fetcher is working on
        self._request_retries: Counter[ReportKey] = Counter()
        self.counts = {"done": 0, "failed": 0, "retries": 0, "request_retries": 0, "restarts": 0, "throttled": 0,
                       "permit_calls": 0, "permits": 0,  # these two: the fetchers' calls to us
                       "event_batches": 0}  # objects streamed to the driver

    # -- quota: every request of every fetcher of this media comes through here ----------
    async def permits(self, utilization: float | None, accounts: list[str | None]) -> list[Permit]:
        """Reserve one request of the media's budget per entry (a fetcher's requests waiting at
        the same moment: one call, not one each); return each one's send time (``time.time()``).

        The caller sleeps until then itself: the reservation travels to the fetcher ahead of
        its slot, so the Ray call's own delivery delay (tens of ms on a busy node) cannot
        bunch requests together and overrun the platform's window. An account paused by an
        account-scoped throttle gets ``-seconds`` left instead: it asks again then and gets a
        slot of the schedule like any request (its requests never go out together when the
        pause ends); the other accounts do not wait.

        A permit carries a deadline for its write (``QuotaLink.gate``) only where the rate binds
        it (``RateLimiter.binding``: it queued, or its window holds half the quota): lateness can
        bunch arrivals over the quota only there, and refusing a late write costs a connection,
        which a CPU-bound night far below its quota would pay for nothing.
        """
        if utilization is not None:
            self.limiter.observe_usage(utilization)
        self.counts["permit_calls"] += 1
        self.counts["permits"] += len(accounts)
        out = []
        for account in accounts:
            paused = self._account_pause.get(account, 0.0) - self.clock() if account is not None else 0.0
            if paused > 0:
                out.append(Permit(-paused))
                continue
            wait = self.limiter.reserve()
            out.append(Permit(time.time() + wait, self.limiter.binding(wait)))
        return out

    async def request_failed(self, key: ReportKey, error: IngestError, attempt: int, what: str,
                             cut_reads: int = 0) -> tuple[bool, float, str]:
        """One request of ``key`` failed retriably: the policy decides whether *that request* is
        sent again, and after how long. Throttles pause their scope, outages feed the breaker.
        Returns (retry, delay_s, reason); the reason names the budget when one is spent."""
        error.with_report(key.media, key.account, key.day.isoformat())
        self._note_failure(key, error)
        decision = self.policy.decide_request(error, attempt, self._request_retries[key], cut_reads)
        report_attempt = self._attempt_of.get(key, 1)
        log.info("retry_decision", media=self.media, report=str(key), scope="request", request=what, attempt=attempt,
                 error=error.kind, action=decision.action, delay_s=round(decision.delay_s, 3), reason=decision.reason)
        if decision.retry and not self.given_up:
            self._request_retries[key] += 1
            self.counts["request_retries"] += 1
            delay = max(decision.delay_s, self.breaker.wait_s() if self.breaker.state == "open" else 0.0)
            self._emit(Event("request_retry", self.media, key, report_attempt, error_kind=error.kind,
                             message=f"{what} (attempt {attempt}): {error} → {decision.reason}", delay_s=delay,
                             extra={"scope": getattr(error, "scope", None)}))
            return True, delay, decision.reason
        return False, 0.0, self.given_up or decision.reason

    async def access_token(self, rejected: str | None = None) -> AccessToken | IngestError:
        """The media's access token for any of its fetchers (refresh-token credentials only).

        A refusal comes back as the error object, not raised: it travels to the fetcher as data
        and fails that report as an AuthError, without a retry storm on the token endpoint.
        """
        if self.tokens is None:
            return AuthError(f"{self.media} has no refresh-token credentials")
        try:
            return await self.tokens.get(rejected)
        except IngestError as exc:
            if isinstance(exc, AuthError):
                log.error("token_refresh_refused", media=self.media, reason=exc.message)
            return exc

    # -- the run --------------------------------------------------------------------------
    async def run(
        self, keys: list[ReportKey], first_attempt: dict[ReportKey, int] | None = None
    ) -> AsyncIterator[Event]:
        """Fetch every key; yield events until each key is done or failed."""
        async for batch in self.run_batches(keys, first_attempt):
            for event in batch:
                yield event

    async def run_batches(self, keys: list[ReportKey], first_attempt: dict[ReportKey, int] | None = None,
                          max_batch: int = 500, linger_s: float = 0.0) -> AsyncIterator[list[Event]]:
        """As :meth:`run`, each yield carrying every event that happened since the last one (in
        order): across Ray each yield is one object, so a busy night costs one per burst of
        reports rather than one per event. With ``linger_s`` (the actor passes
        ``EVENT_LINGER_S``) a yield waits that long after its first event for company while
        reports are still pending; without it each event goes as it happens."""
        first_attempt = first_attempt or {}
        self._pending = len(keys)
        if not keys:
            return
        for key in keys:
            self._put(key, first_attempt.get(key, 1), 0.0)
        n = fetchers_for(len(keys), self.settings)
        log.info("fetchers_planned", media=self.media, fetchers=n, reports=len(keys))
        # started together: on a cluster each may wait for the autoscaler to add its node
        self.fetchers = list(await asyncio.gather(*(self.spawn(i) for i in range(n))))
        self._restart_locks = {i: asyncio.Lock() for i in range(n)}
        slots = [asyncio.create_task(self._slot(i % n)) for i in range(n * self.settings.concurrency)]
        try:
            while self._pending > 0 or not self._events.empty():
                batch = [await self._events.get()]
                if linger_s > 0 and self._pending > 0:
                    await asyncio.sleep(linger_s)
                while len(batch) < max_batch and not self._events.empty():
                    batch.append(self._events.get_nowait())
                self.counts["event_batches"] += 1
                yield batch
        finally:
            for task in slots:
                task.cancel()
            await asyncio.gather(*slots, return_exceptions=True)
            # the media's totals, with the calls its fetchers made to this process (each a Ray
            # call: what a report costs the supervisor beyond its one fetch call)
            log.info("supervisor_finished", media=self.media, reports=len(keys), **self.counts)

    def _put(self, key: ReportKey, attempt: int, delay: float) -> None:
        self._queue.put_nowait((self.clock() + delay, next(self._seq), key, attempt))

    def _emit(self, event: Event) -> None:
        if event.kind in ("done", "failed"):
            if event.key in self._finished:  # defensive: one terminal event per report, ever
                log.error("duplicate_terminal_event", media=self.media, report=str(event.key), kind=event.kind)
                return
            self._finished.add(event.key)  # type: ignore[arg-type]
            self._attempt_of.pop(event.key, None)  # type: ignore[arg-type]  # per-report state ends with it
            self._request_retries.pop(event.key, None)  # type: ignore[arg-type]
            self._pending -= 1
            self.counts[event.kind] += 1
        self._events.put_nowait(event)

    async def _slot(self, index: int) -> None:
        while True:
            ready_at, _, key, attempt = await self._queue.get()
            if key in self._finished:
                continue
            try:
                # every log line of this report's attempt, here and in the fetcher process, carries these
                with structlog.contextvars.bound_contextvars(
                    account=key.account, date=key.day.isoformat(), attempt=attempt
                ):
                    await self._handle(index, key, attempt, ready_at)
            except asyncio.CancelledError:
                raise
            except BaseException as exc:  # noqa: BLE001 - our own bug must fail one report, never hang the run
                log.error("supervisor_bug", media=self.media, report=str(key), error=repr(exc))
                self._emit(Event("failed", self.media, key, attempt, error_kind="internal",
                                 message=f"internal error: {exc!r}"))

    async def _handle(self, index: int, key: ReportKey, attempt: int, ready_at: float) -> None:
        wait = ready_at - self.clock()
        if wait > 0:
            await asyncio.sleep(wait)
        if not await self._wait_for_breaker(key, attempt):
            return
        handle = self.fetchers[index]
        self._attempt_of[key] = attempt
        try:
            # a report that is a platform job holds one of the media's job slots from before its
            # first request until its fetch returns, however it ends (a dead fetcher included):
            # here, not in the fetcher, so it costs no Ray call and nothing is left to take back
            async with self.jobs.slot(key) if self.report_jobs else contextlib.nullcontext():
                result = await handle.fetch(key)
        except WorkerDied as exc:
            self.breaker.cancel_probe()  # a crash says nothing about the API
            self._put(key.without_landed(), attempt, 0.0)  # not an API attempt: fetched once more
            log.warning("report_requeued", media=self.media, report=str(key), reason=f"worker lost: {exc}")
            await self._replace(index, handle, key, str(exc))
            return
        except IngestError as err:
            self._on_error(key, attempt, err)
            return
        except Exception as exc:  # noqa: BLE001 - a bug must fail the report, not the run
            self._on_error(key, attempt, IngestError(f"{type(exc).__name__}: {exc}"))
            return
        if self.breaker.state != "closed":
            self._emit(Event("breaker_closed", self.media, key, attempt))
        self.breaker.record_success()
        self._throttle_run = 0
        self._open_cycles = 0
        self._emit(Event("done", self.media, key, attempt, result=result))

    async def _wait_for_breaker(self, key: ReportKey, attempt: int) -> bool:
        """Hold the report while the breaker is open; fail it if the media was given up."""
        while True:
            if self.given_up:
                self._emit(Event("failed", self.media, key, attempt - 1, error_kind="unavailable",
                                 message=self.given_up))
                return False
            if self.breaker.allow():
                return True
            await asyncio.sleep(max(0.05, self.breaker.wait_s()))

    def _throttle_pause(self, err: Throttled, account: str) -> None:
        """Pause what the throttle covers, as the platform scoped it.

        Account scope (Meta 17/613/80000–80014, Google ``rateScope: ACCOUNT``): that account
        sends nothing until the hint has passed; the other accounts go on. App scope (Meta 4,
        Google ``DEVELOPER``, Yahoo): one throttle delays only its own request (the policy waits
        the hint), since platforms also answer 429 at random; ``pause_after_throttles`` of them
        with no success between mean the media's budget itself is spent, and then every
        request of the media waits the hint (or the minimum backoff when there is none).
        """
        wait = min(err.retry_after or self.settings.retry.backoff_min_s, self.settings.retry.max_hint_s)
        if err.scope == "account":
            self._account_pause[account] = max(self._account_pause.get(account, 0.0), self.clock() + wait)
            log.warning("account_paused", media=self.media, account=account, scope="account", seconds=round(wait, 2),
                        reason=err.message[:200])
            return
        self._throttle_run += 1
        if self._throttle_run >= self.settings.quota.pause_after_throttles:
            self.limiter.pause(wait)
            log.warning("media_paused", media=self.media, scope="app", seconds=round(wait, 2),
                        throttles_in_a_row=self._throttle_run, reason=err.message[:200])

    def _note_failure(self, key: ReportKey, err: IngestError) -> None:
        """What a retriable failure tells about the media: throttles pause their scope, and
        outages (not cut bodies or failed jobs, which say nothing about availability) are
        evidence for the breaker, which opens only when many accounts see them."""
        if isinstance(err, Throttled):
            self.counts["throttled"] += 1
            self._throttle_pause(err, key.account)
        if isinstance(err, Malformed | JobFailed):
            return
        scope = "app" if isinstance(err, Throttled) and err.scope == "app" else key.account
        if self.breaker.record_failure(scope):
            self._open_cycles += 1
            log.warning("breaker_open", media=self.media, cycle=self._open_cycles, scope="media",
                        accounts=self.breaker.evidence(), reason=str(err))
            self._emit(Event("breaker_open", self.media, key, self._attempt_of.get(key, 1), error_kind=err.kind,
                             message=str(err), extra={"cycle": self._open_cycles}))
            if self._open_cycles > self.settings.breaker.max_open_cycles:
                self.given_up = (f"circuit breaker opened {self._open_cycles} times without a success: "
                                 f"{self.media} API unavailable; last error: {err}")

    def _on_error(self, key: ReportKey, attempt: int, err: IngestError) -> None:
        err.with_report(key.media, key.account, key.day.isoformat())
        spent = getattr(err, "final_reason", None)
        if spent:  # a request's budget was spent: its failures were counted and decided one by one
            self._emit(Event("failed", self.media, key, attempt, error_kind=err.kind, message=f"{err} → {spent}"))
            return
        if isinstance(err, RetriableError):
            self._note_failure(key, err)
        else:
            self.breaker.record_neutral()
        decision = self.policy.decide(err, attempt)
        log.info("retry_decision", media=self.media, report=str(key), attempt=attempt, error=err.kind,
                 action=decision.action, delay_s=round(decision.delay_s, 3), reason=decision.reason)
        if decision.retry and not self.given_up:
            self.counts["retries"] += 1
            self._emit(Event("retry", self.media, key, attempt, error_kind=err.kind,
                             message=f"{err} → {decision.reason}", delay_s=decision.delay_s))
            self._put(key.without_landed(), attempt + 1, decision.delay_s)
        else:
            reason = self.given_up or decision.reason
            self._emit(Event("failed", self.media, key, attempt, error_kind=err.kind, message=f"{err} → {reason}"))

    async def _replace(self, index: int, dead: FetcherHandle, key: ReportKey, why: str) -> None:
        async with self._restart_locks[index]:
            if self.fetchers[index] is not dead or self.given_up:
                return  # another slot already replaced it, or the media was given up
            while True:  # a replacement that dies while starting counts as one more restart
                if not self.restarts.allow():
                    self.given_up = (f"fetcher processes of {self.media} crashed more than "
                                     f"{self.settings.restarts.max_restarts} times in "
                                     f"{self.settings.restarts.period_s:.0f}s")
                    log.error("escalated", media=self.media, reason=self.given_up)
                    self._emit(Event("escalated", self.media, key, message=self.given_up))
                    return
                delay = self.restarts.backoff()
                self.counts["restarts"] += 1
                log.warning("fetcher_restart", media=self.media, index=index, delay_s=delay, reason=why)
                self._emit(Event("restart", self.media, key,
                                 message=f"fetcher {index} died ({why}); restarting in {delay:.1f}s",
                                 delay_s=delay, extra={"fetcher": index}))
                await asyncio.sleep(delay)
                try:
                    self.fetchers[index] = await self.spawn(index)
                    return
                except Exception as exc:  # noqa: BLE001 - e.g. killed before it was ready
                    why = f"its replacement failed to start: {type(exc).__name__}: {exc}"

    def status(self) -> dict[str, Any]:
        return {
            "media": self.media,
            "pending": self._pending,
            "breaker": self.breaker.state,
            "rate": self.limiter.rate,
            "jobs_in_use": self.jobs.in_use,
            "given_up": self.given_up,
            **self.counts,
        }
