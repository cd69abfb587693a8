"""Reports between a supervisor and a fetcher, several per call (ingest.supervision.exchange),
wired directly: the window's exchange call is the desk's method, as Ray would deliver it."""

from __future__ import annotations

import asyncio
from datetime import date, timedelta

import pytest

from ingest.errors import IngestError, Transient
from ingest.supervision.exchange import FetcherDesk, Outcome, SupervisorWindow, Work
from ingest.tasks import ReportKey, ReportResult, Totals


def _key(i: int) -> ReportKey:
    return ReportKey("google_ads", "1234567890", date(2026, 11, 1) + timedelta(days=i))


def _result(key: ReportKey) -> ReportResult:
    return ReportResult(key=key, totals=Totals(), bytes=0, requests=1, paths=(), elapsed_s=0.0)


class _Wire:
    """Counts the calls and what each carried."""

    def __init__(self, desk: FetcherDesk) -> None:
        self.desk = desk
        self.calls: list[tuple[int, int]] = []  # (reports handed over, outcomes brought back)
        self.started = 0

    async def exchange(self, work: list[Work]) -> list[Outcome]:
        self.started += 1
        out = await self.desk.exchange(work)
        self.calls.append((len(work), len(out)))
        return out


def test_reports_that_finish_together_travel_together() -> None:
    async def run(key: ReportKey, attempt: int | None) -> ReportResult:
        await asyncio.sleep(0.01)
        return _result(key)

    async def go() -> tuple[list[ReportResult], _Wire]:
        wire = _Wire(FetcherDesk(run))
        window = SupervisorWindow(wire.exchange)
        results = await asyncio.gather(*(window.fetch(_key(i), 1) for i in range(50)))
        return results, wire

    results, wire = asyncio.run(go())
    assert [r.key for r in results] == [_key(i) for i in range(50)]
    assert sum(n for n, _ in wire.calls) == 50 and sum(n for _, n in wire.calls) == 50
    assert len(wire.calls) <= 3, wire.calls  # one call out with all 50, one back (plus a release at most)


def test_while_the_quota_is_backed_up_an_answer_waits_for_company() -> None:
    async def run(key: ReportKey, attempt: int | None) -> ReportResult:
        await asyncio.sleep(0.01 * (key.day.day - 1))  # one finishes every 10 ms
        return _result(key)

    async def go(linger: float) -> list[tuple[int, int]]:
        wire = _Wire(FetcherDesk(run, linger_s=lambda: linger))
        window = SupervisorWindow(wire.exchange)
        await asyncio.gather(*(window.fetch(_key(i)) for i in range(1, 5)))
        return wire.calls

    assert [back for _, back in asyncio.run(go(0.1)) if back] == [4]  # one answer carries all four
    assert len([back for _, back in asyncio.run(go(0.0)) if back]) >= 3  # without: one by one


def test_no_call_is_left_waiting_once_every_report_is_answered() -> None:
    async def run(key: ReportKey, attempt: int | None) -> ReportResult:
        await asyncio.sleep(0.005 * key.day.day)
        return _result(key)

    async def go() -> _Wire:
        wire = _Wire(FetcherDesk(run))
        window = SupervisorWindow(wire.exchange)
        await asyncio.gather(*(window.fetch(_key(i)) for i in range(6)))
        await asyncio.sleep(0.05)
        return wire

    wire = asyncio.run(go())
    assert wire.started == len(wire.calls), "a call still waits at the fetcher with nothing out"


def test_a_report_handed_out_while_a_call_waits_starts_at_once() -> None:
    slow_may_finish = asyncio.Event()
    finished: list[str] = []

    async def run(key: ReportKey, attempt: int | None) -> ReportResult:
        if key == _key(0):
            await slow_may_finish.wait()
        finished.append(str(key.day))
        return _result(key)

    async def go() -> None:
        window = SupervisorWindow(FetcherDesk(run).exchange)
        slow = asyncio.create_task(window.fetch(_key(0)))
        await asyncio.sleep(0.05)  # the first call now waits at the fetcher for an outcome
        fast = await asyncio.wait_for(window.fetch(_key(1)), timeout=2)  # not held behind it
        assert fast.key == _key(1) and not slow.done()
        slow_may_finish.set()
        assert (await asyncio.wait_for(slow, timeout=2)).key == _key(0)

    asyncio.run(go())
    assert finished == ["2026-11-02", "2026-11-01"]


def test_a_reports_error_is_raised_as_itself_and_a_bug_fails_only_its_report() -> None:
    async def run(key: ReportKey, attempt: int | None) -> ReportResult:
        if key == _key(1):
            raise Transient("HTTP 503", status=503)
        if key == _key(2):
            raise KeyError("campaign")
        return _result(key)

    async def go() -> list[ReportResult | BaseException]:
        window = SupervisorWindow(FetcherDesk(run).exchange)
        return await asyncio.gather(*(window.fetch(_key(i)) for i in range(3)), return_exceptions=True)

    ok, transient, bug = asyncio.run(go())
    assert isinstance(ok, ReportResult)
    assert isinstance(transient, Transient) and transient.status == 503
    assert type(bug) is IngestError and "KeyError" in str(bug)


def test_a_lost_call_fails_every_report_out_with_its_error() -> None:
    class Lost(Exception):
        pass

    async def exchange(work: list[Work]) -> list[Outcome]:
        await asyncio.sleep(0.02)
        raise Lost("the process died")

    async def go() -> list[ReportResult | BaseException]:
        window = SupervisorWindow(exchange)
        return await asyncio.gather(*(window.fetch(_key(i)) for i in range(4)), return_exceptions=True)

    assert all(isinstance(e, Lost) for e in asyncio.run(go()))


def test_an_outcome_whose_report_was_abandoned_is_dropped() -> None:
    release = asyncio.Event()

    async def run(key: ReportKey, attempt: int | None) -> ReportResult:
        await release.wait()
        return _result(key)

    async def go() -> ReportResult:
        window = SupervisorWindow(FetcherDesk(run).exchange)
        abandoned = asyncio.create_task(window.fetch(_key(0)))
        kept = asyncio.create_task(window.fetch(_key(1)))
        await asyncio.sleep(0.02)
        abandoned.cancel()
        with pytest.raises(asyncio.CancelledError):
            await abandoned
        release.set()
        return await asyncio.wait_for(kept, timeout=2)

    assert asyncio.run(go()).key == _key(1)
