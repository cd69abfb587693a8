"""Reports between a supervisor and one fetcher process, several per Ray call.

One actor call per report cost both sides a Ray call: ≈0.5 ms of CPU in the supervisor and
≈0.6 ms in the fetcher measured alone, and under load the supervisor's whole per-report cost
(the scale runs' profile: the fetch call was most of the supervisors' CPU). Here one call — an
*exchange* — carries every report handed to the fetcher since the last call and brings back
every outcome that finished meanwhile:

- ``SupervisorWindow`` (supervisor side) keeps one call waiting at the fetcher while reports
  are out. Reports handed out while it waits go in a new call, which releases the waiting one;
  when a call comes back with outcomes, the next one leaves a moment later (``GATHER_S``), so
  the reports the freed slots hand out at once travel with it.
- ``FetcherDesk`` (fetcher side) runs each report as a task and answers a waiting call as soon
  as an outcome is ready — or, while the media's quota schedule is backed up, 0.2 s later with
  whatever finished meanwhile (``QuotaLink.linger_s``: the freed slots would wait for the
  quota anyway).

Where several reports finish within a call's round trip (a CPU-bound night) one call carries
them all; where they finish one at a time at the quota's pace, the linger gathers them. The
plain logic is here; ``actors.py`` puts Ray around it (a lost process → ``WorkerDied`` for
every report it held).
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Awaitable, Callable

from ingest.errors import IngestError
from ingest.tasks import ReportKey, ReportResult

#: (ticket, report, the supervisor's attempt number: the fetcher's log lines carry it)
Work = tuple[int, ReportKey, int | None]
#: (ticket, the report's result or the error it failed with)
Outcome = tuple[int, ReportResult | IngestError]

Exchange = Callable[[list[Work]], Awaitable[list[Outcome]]]


class SupervisorWindow:
    """Hands reports to one fetcher process through exchange calls (module docstring)."""

    #: how long a call waits for the other reports handed out at the same moment
    GATHER_S = 0.001

    def __init__(self, exchange: Exchange) -> None:
        self._exchange = exchange
        self._tickets = itertools.count()
        self._futures: dict[int, asyncio.Future[ReportResult | IngestError]] = {}
        self._outbox: list[Work] = []
        self._sending: asyncio.Task[None] | None = None
        self._in_flight = 0
        self.calls = 0

    async def fetch(self, key: ReportKey, attempt: int | None = None) -> ReportResult:
        """The report's result; its error raised; an exchange call's own failure (the process
        is gone) raised as is, for the caller to translate."""
        ticket = next(self._tickets)
        future: asyncio.Future[ReportResult | IngestError] = asyncio.get_running_loop().create_future()
        self._futures[ticket] = future
        self._outbox.append((ticket, key, attempt))
        self._send_soon()
        try:
            outcome = await future
        finally:
            self._futures.pop(ticket, None)
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome

    def _send_soon(self) -> None:
        if self._sending is None:
            self._sending = asyncio.create_task(self._send())

    async def _send(self) -> None:
        await asyncio.sleep(self.GATHER_S)
        self._sending = None
        work, self._outbox = self._outbox, []
        if not work and (self._in_flight or not self._out()):
            return  # a call already waits for the reports out there, or none is
        self._in_flight += 1
        self.calls += 1
        try:
            outcomes = await self._exchange(work)
        except BaseException as exc:  # noqa: BLE001 - the call is lost: so is every report it could answer
            self._in_flight -= 1
            for future in list(self._futures.values()):
                if not future.done():
                    future.set_exception(exc)
            if isinstance(exc, asyncio.CancelledError):
                raise
            return
        self._in_flight -= 1
        for ticket, outcome in outcomes:
            waiting = self._futures.get(ticket)
            if waiting is not None and not waiting.done():  # gone: its slot was cancelled meanwhile
                waiting.set_result(outcome)
        if self._in_flight == 0 and self._out():
            self._send_soon()  # reports are still out: a call must wait for them

    def _out(self) -> bool:
        """Whether a report handed out still waits for its outcome (answered ones leave
        ``_futures`` only when their caller resumes)."""
        return any(not f.done() for f in self._futures.values())


class FetcherDesk:
    """Runs the reports of exchange calls as tasks; answers a waiting call when one finishes."""

    def __init__(self, run: Callable[[ReportKey, int | None], Awaitable[ReportResult]],
                 linger_s: Callable[[], float] = lambda: 0.0) -> None:
        self._run = run
        self._linger_s = linger_s
        self._ready: list[Outcome] = []
        self._waiter: asyncio.Future[None] | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def exchange(self, work: list[Work]) -> list[Outcome]:
        for ticket, key, attempt in work:
            task = asyncio.create_task(self._one(ticket, key, attempt))
            self._tasks.add(task)  # held until done: the loop keeps only weak references
            task.add_done_callback(self._tasks.discard)
        self._wake()  # a call already waiting answers now (with what is ready); this one waits
        if not self._ready:
            self._waiter = asyncio.get_running_loop().create_future()
            await self._waiter
            if self._ready and (linger := self._linger_s()):
                await asyncio.sleep(linger)  # woken by an outcome: let others join it (``QuotaLink.linger_s``)
        ready, self._ready = self._ready, []
        return ready

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    async def _one(self, ticket: int, key: ReportKey, attempt: int | None) -> None:
        try:
            outcome: ReportResult | IngestError = await self._run(key, attempt)
        except IngestError as exc:
            outcome = exc
        except Exception as exc:  # noqa: BLE001 - our bug fails this report, never the others
            outcome = IngestError(f"fetcher raised {type(exc).__name__}: {exc}")
        self._ready.append((ticket, outcome))
        self._wake()
