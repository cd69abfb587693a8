"""Reports to fetchers in chunks (ingest.supervision.dispatch) without Ray: both ends of the wire
in one process, and the supervisor above them."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import date

from ingest.errors import IngestError, Transient
from ingest.supervision.dispatch import ChunkedDispatch, Outcome, Work, as_finished
from ingest.supervision.supervisor import MediaSupervisor, WorkerDied
from ingest.tasks import ReportKey, ReportResult, Totals
from tests.unit.test_supervisor import settings

DAY = date(2026, 11, 21)


def key(n: int) -> ReportKey:
    return ReportKey("meta", str(n), DAY)


class Process:
    """A fetcher process's side: a chunk's reports fetched concurrently, results streamed back.
    ``fail`` scripts errors per account; ``die_after`` results ends every stream (a killed process)."""

    def __init__(self, fail: dict[str, list[BaseException]] | None = None, die_after: int | None = None,
                 staggered: bool = True) -> None:
        self.fail = fail or {}
        self.staggered = staggered
        self.die_after = die_after
        self.chunks: list[list[Work]] = []
        self.results = 0

    async def fetch(self, k: ReportKey, attempt: int | None) -> ReportResult:
        await asyncio.sleep(0.001 * (int(k.account) % 3 if self.staggered else 1))
        todo = self.fail.get(k.account)
        if todo:
            raise todo.pop(0)
        return ReportResult(k, Totals(rows=1), 10, 1, (), 0.0)

    async def send(self, work: list[Work]) -> AsyncIterator[list[tuple[ReportKey, Outcome]]]:
        self.chunks.append(work)
        async for finished in as_finished(work, self.fetch, lambda exc: IngestError(f"bug: {exc!r}")):
            if self.die_after is not None and self.results >= self.die_after:
                raise ConnectionResetError("process gone")
            self.results += len(finished)
            yield finished


def lost(exc: BaseException) -> BaseException:
    return WorkerDied(type(exc).__name__)


def test_reports_handed_over_together_go_in_one_call_and_each_waiter_gets_its_own_result() -> None:
    proc = Process(fail={"3": [Transient("503")], "4": [ValueError("a bug")]})

    async def go() -> list[object]:
        dispatch = ChunkedDispatch(proc.send, lost)
        return await asyncio.gather(*(dispatch.fetch(key(n), 1) for n in range(10)), return_exceptions=True)

    out = asyncio.run(go())
    assert len(proc.chunks) == 1 and [k for k, _ in proc.chunks[0]] == [key(n) for n in range(10)]
    assert [r.key for r in out if isinstance(r, ReportResult)] == [key(n) for n in range(10) if n not in (3, 4)]
    assert isinstance(out[3], Transient)  # an error travels as data: the others still arrive
    assert isinstance(out[4], IngestError) and "bug: ValueError('a bug')" in str(out[4])


def test_a_lost_stream_fails_only_the_reports_still_waiting_on_it() -> None:
    proc = Process(die_after=1)

    async def go() -> list[object]:
        dispatch = ChunkedDispatch(proc.send, lost)
        return await asyncio.gather(*(dispatch.fetch(key(n), 1) for n in range(6)), return_exceptions=True)

    out = asyncio.run(go())
    done = [r for r in out if isinstance(r, ReportResult)]
    died = [r for r in out if isinstance(r, WorkerDied)]
    assert done and died and len(done) + len(died) == 6
    assert all(str(d) == "ConnectionResetError" for d in died)


def test_a_stream_that_ends_without_a_report_fails_that_report() -> None:
    async def short(work: list[Work]) -> AsyncIterator[list[tuple[ReportKey, Outcome]]]:
        yield [(work[0][0], ReportResult(work[0][0], Totals(rows=1), 1, 1, (), 0.0))]

    async def go() -> list[object]:
        dispatch = ChunkedDispatch(short, lost)
        return await asyncio.gather(dispatch.fetch(key(1)), dispatch.fetch(key(2)), return_exceptions=True)

    first, second = asyncio.run(go())
    assert isinstance(first, ReportResult)
    assert isinstance(second, IngestError) and "ended without" in str(second)


def test_the_supervisor_over_chunks_retries_requeues_and_sends_far_fewer_calls_than_reports() -> None:
    procs: list[Process] = []
    fail: dict[str, list[BaseException]] = {"7": [Transient("503")]}  # the API's answer: one 503, whoever asks

    async def spawn(index: int) -> ChunkedDispatch:
        # the first process dies after 5 results; its replacement lives
        proc = Process(fail=fail, die_after=5 if not procs else None, staggered=False)
        procs.append(proc)
        return ChunkedDispatch(proc.send, lost)

    sup = MediaSupervisor("meta", settings(fetchers=1, concurrency=8), spawn)  # type: ignore[arg-type]
    keys = [key(n) for n in range(60)]

    async def go() -> list[object]:
        return [e async for e in sup.run(keys)]

    events = asyncio.run(asyncio.wait_for(go(), 20))
    done = [e.key for e in events if e.kind == "done"]  # type: ignore[attr-defined]
    assert sorted(done, key=lambda k: int(k.account)) == keys  # each exactly once, none lost
    assert [e.kind for e in events].count("retry") == 1 and sup.counts["restarts"] == 1  # type: ignore[attr-defined]
    # reports that finish together free their slots together: the next ones go in one call
    calls = sum(len(p.chunks) for p in procs)
    assert calls <= len(keys) / 4, calls
