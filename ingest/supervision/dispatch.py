"""Reports to a fetcher process in chunks, results back as they finish.

The supervisor's slots each hold one report and await its result (that is where retries,
restarts and the breaker are decided, report by report). Across Ray, one call per report cost
the supervisor most of its CPU: a busy night sends thousands. ``ChunkedDispatch`` keeps the
per-report interface and changes only the wire: every report the slots hand to one fetcher in
the same turn of the event loop goes in one call, whose results stream back in lists (each
list everything that finished since the last), each routed to the slot awaiting it.

A failed report travels as its error, as data, so one report's failure never ends the stream
of the others; a lost stream (the process died) fails every report still waiting on it with
the error ``lost`` makes of it, e.g. ``WorkerDied``.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from ingest.errors import IngestError
from ingest.tasks import ReportKey, ReportResult

#: one report handed to a fetcher: its key and the report attempt (for the fetcher's log lines)
Work = tuple[ReportKey, int | None]
#: a report's outcome as it travels back
Outcome = ReportResult | IngestError
Send = Callable[[list[Work]], AsyncIterator[list[tuple[ReportKey, Outcome]]]]


class ChunkedDispatch:
    """One fetcher's inbound line: ``fetch`` per report, one ``send`` per turn of the loop."""

    def __init__(self, send: Send, lost: Callable[[BaseException], BaseException]) -> None:
        self._send = send
        self._lost = lost
        self._waiting: list[tuple[Work, asyncio.Future[ReportResult]]] = []
        self._flush: asyncio.Handle | None = None
        self._streams: set[asyncio.Task[None]] = set()
        self.calls = 0

    async def fetch(self, key: ReportKey, attempt: int | None = None) -> ReportResult:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[ReportResult] = loop.create_future()
        self._waiting.append(((key, attempt), future))
        if self._flush is None:
            # after the callbacks already queued: every slot a finished list woke joins this chunk
            self._flush = loop.call_soon(self._start)
        return await future

    def _start(self) -> None:
        self._flush = None
        chunk, self._waiting = self._waiting, []
        chunk = [(work, future) for work, future in chunk if not future.done()]  # cancelled meanwhile
        if chunk:
            self.calls += 1
            task = asyncio.create_task(self._stream(chunk))
            self._streams.add(task)
            task.add_done_callback(self._streams.discard)

    async def _stream(self, chunk: list[tuple[Work, asyncio.Future[ReportResult]]]) -> None:
        waiting = {work[0]: future for work, future in chunk}
        try:
            async for finished in self._send([work for work, _ in chunk]):
                for key, outcome in finished:
                    future = waiting.pop(key, None)
                    if future is None or future.done():
                        continue
                    if isinstance(outcome, BaseException):
                        future.set_exception(outcome)
                    else:
                        future.set_result(outcome)
            error: BaseException = IngestError("the fetcher's stream ended without this report's result")
        except asyncio.CancelledError:
            for future in waiting.values():
                future.cancel()
            raise
        except Exception as exc:  # noqa: BLE001 - the process or the call is gone: each waiter hears how
            error = self._lost(exc)
        for future in waiting.values():
            if not future.done():
                future.set_exception(error)

    async def close(self) -> None:
        for task in list(self._streams):
            task.cancel()
        await asyncio.gather(*self._streams, return_exceptions=True)


async def as_finished(work: list[Work], fetch: Callable[[ReportKey, int | None], Awaitable[ReportResult]],
                      classify: Callable[[BaseException], IngestError],
                      ) -> AsyncIterator[list[tuple[ReportKey, Outcome]]]:
    """The fetcher's side: fetch every report of a chunk concurrently; yield what finished since
    the last yield (an error as its classified ``IngestError``), until all have."""
    done: asyncio.Queue[tuple[ReportKey, Outcome]] = asyncio.Queue()

    async def one(key: ReportKey, attempt: int | None) -> None:
        try:
            outcome: Outcome = await fetch(key, attempt)
        except asyncio.CancelledError:
            raise
        except BaseException as exc:  # noqa: BLE001 - travels as data: the stream goes on for the others
            outcome = exc if isinstance(exc, IngestError) else classify(exc)
        done.put_nowait((key, outcome))

    tasks = [asyncio.create_task(one(key, attempt)) for key, attempt in work]
    try:
        left = len(tasks)
        while left:
            finished = [await done.get()]
            while not done.empty():
                finished.append(done.get_nowait())
            left -= len(finished)
            yield finished
    finally:
        for task in tasks:
            task.cancel()
