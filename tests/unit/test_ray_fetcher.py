"""How a fetch's Ray failure reaches the supervisor: the fetcher's own error as itself, the
machinery losing the process or its answer as ``WorkerDied`` (the report is fetched again)."""

from __future__ import annotations

import asyncio
from datetime import date
from typing import Any

import pytest
import ray.exceptions as rex

from ingest.errors import IngestError, Transient
from ingest.supervision.actors import RayFetcher
from ingest.supervision.supervisor import WorkerDied
from ingest.tasks import ReportKey

KEY = ReportKey("yahoo_ads", "2100008", date(2026, 11, 18))


class _Method:
    def __init__(self, error: BaseException) -> None:
        self.error = error

    def remote(self, *_: Any) -> Any:
        async def fail() -> Any:
            raise self.error

        return fail()


class _Actor:
    def __init__(self, error: BaseException) -> None:
        self.exchange = _Method(error)


def _fetch(error: BaseException) -> BaseException:
    with pytest.raises(BaseException) as caught:
        asyncio.run(RayFetcher(_Actor(error), pid=4242, node_id="node-abcdef12").fetch(KEY))
    return caught.value


@pytest.mark.parametrize("error", [
    rex.ActorDiedError(),
    rex.ActorUnavailableError("unreachable", None),
    rex.WorkerCrashedError(),
    rex.NodeDiedError("node gone"),
    rex.OwnerDiedError("00" * 28, "", ""),
    rex.OutOfMemoryError("killed by the memory monitor"),
], ids=lambda e: type(e).__name__)
def test_a_lost_process_or_answer_is_worker_died(error: BaseException) -> None:
    lost = _fetch(error)
    assert isinstance(lost, WorkerDied), repr(lost)
    assert "pid 4242" in str(lost) and type(error).__name__ in str(lost)


def test_the_fetchers_own_error_comes_through_as_itself() -> None:
    got = _fetch(rex.RayTaskError("fetch", "traceback", Transient("GCS write failed")))
    assert isinstance(got, Transient) and "GCS write failed" in str(got)


def test_an_unexpected_exception_in_the_fetcher_is_an_unclassified_error() -> None:
    got = _fetch(rex.RayTaskError("fetch", "traceback", KeyError("x")))
    assert type(got) is IngestError and "KeyError" in str(got)
