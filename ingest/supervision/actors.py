"""The Ray shells around the supervision logic. Thin on purpose: logic lives in plain classes.

Every actor declares its resources and gets a name in the run's namespace
(``supervisor:<media>``, ``fetcher:<media>:<n>``), so the Ray dashboard shows who is who;
where they run and how many fetchers a media gets is decided in ``placement.py``.
"""

from __future__ import annotations

import os
import time
from collections.abc import Awaitable, Callable
from typing import Any

import ray
import structlog

from ingest.config import GcsSettings, MediaSettings
from ingest.errors import IngestError
from ingest.logging import configure_logging
from ingest.media.base import Secret
from ingest.media.client_shards import ClientShards
from ingest.media.registry import connector_class
from ingest.media.tokens import AccessToken, token_cache_for
from ingest.storage import ReportStore
from ingest.supervision.exchange import FetcherDesk, Outcome, SupervisorWindow, Work
from ingest.supervision.fetcher import QuotaLink, ReportFetcher, SupervisorGone, build_connector
from ingest.supervision.limiter import Permit
from ingest.supervision.metrics import PipelineMetrics
from ingest.supervision.placement import Placement
from ingest.supervision.supervisor import EVENT_LINGER_S, FetcherHandle, MediaSupervisor, WorkerDied
from ingest.tasks import Event, ReportKey, ReportResult

log = structlog.get_logger("ingest.supervisor")


@ray.remote
class FetcherActor:
    """One process fetching many reports of one media concurrently (async)."""

    def __init__(self, media: str, settings: MediaSettings, secrets: dict[str, Secret], gcs: GcsSettings,
                 project: str, supervisor: Any, log_context: dict[str, Any]) -> None:
        configure_logging()
        # bound per report in _fetch(): async methods run on the actor's event-loop thread, which
        # would not see a binding made here
        self._log_context = {**log_context, "media": media}
        self.supervisor = supervisor
        # the media's budget lives in the supervisor: every request and async job asks it first
        refresh = "refresh_token" in secrets  # the supervisor holds the media's token cache
        self.quota = QuotaLink(_to_supervisor(supervisor.permits),
                               _to_supervisor(supervisor.access_token) if refresh else None,
                               _to_supervisor(supervisor.request_failed), late_s=settings.quota.late_send_s)
        from ingest.clients import gcs_client  # here, not at the top: supervisors never write (ingest.storage)

        clients = ClientShards.for_concurrency(settings.concurrency, settings.timeout_s)
        store = ReportStore(gcs_client(gcs, project), gcs.bucket)
        self.core = ReportFetcher(media, settings, build_connector(media, settings, secrets), store, clients)
        self.desk = FetcherDesk(self._fetch, linger_s=self.quota.linger_s)

    async def ready(self) -> tuple[int, str]:
        return os.getpid(), ray.get_runtime_context().get_node_id()

    async def exchange(self, work: list[Work]) -> list[Outcome]:
        """Start ``work``; return the outcomes finished since the last call (ingest.supervision.exchange)."""
        return await self.desk.exchange(work)

    async def _fetch(self, key: ReportKey, attempt: int | None) -> ReportResult:
        with structlog.contextvars.bound_contextvars(**self._log_context, account=key.account, date=key.day.isoformat(),
                                                     attempt=attempt):
            return await self.core.fetch(key, self.quota)


class RayFetcher(FetcherHandle):
    """Adapts a FetcherActor to the supervisor's FetcherHandle; a dead process → WorkerDied.
    Reports travel several per call (``SupervisorWindow``, ingest.supervision.exchange).

    Any Ray error other than the fetcher's own exception (``RayTaskError``) is the machinery
    losing the process or its answer — actor died or unreachable, worker crashed, node died,
    result object lost — never a verdict on the report: it is fetched again, and the process
    replaced (a report failed as "unclassified" for a killed worker would be a lie)."""

    def __init__(self, actor: Any, pid: int, node_id: str = "") -> None:
        self.pid = pid
        self.node_id = node_id
        self.window = SupervisorWindow(actor.exchange.remote)  # several reports per call

    async def fetch(self, key: ReportKey) -> ReportResult:
        try:
            # the supervisor's slot bound this report's attempt (log context): the fetcher logs it too
            return await self.window.fetch(key, structlog.contextvars.get_contextvars().get("attempt"))
        except ray.exceptions.RayTaskError as exc:  # the exchange call itself raised (a report's own error
            cause = exc.cause                       # comes back as its outcome, raised by the window)
            if isinstance(cause, IngestError):
                raise cause from None
            raise IngestError(f"fetcher raised {type(cause).__name__}: {cause}") from None
        except ray.exceptions.RayError as exc:  # RayActorError, WorkerCrashedError, ObjectLostError, NodeDiedError…
            raise WorkerDied(f"pid {self.pid} on node …{self.node_id[-8:]}: {type(exc).__name__}") from None


def _to_supervisor(method: Any) -> Callable[..., Awaitable[Any]]:
    """A supervisor actor method as a plain async callable: its death (the driver or the head
    node went away) arrives as ``SupervisorGone``, which the fetcher does not count as a failure."""

    async def call(*args: Any) -> Any:
        try:
            return await method.remote(*args)
        except ray.exceptions.RayActorError as exc:
            raise SupervisorGone(type(exc).__name__) from None

    return call


@ray.remote
class SupervisorActor:
    """The media's supervisor process: streams events to the driver, hands out quota permits
    (request rate and async-job slots) to every fetcher of the media, wherever it runs."""

    def __init__(self, media: str, settings: MediaSettings, secrets: dict[str, Secret], gcs: GcsSettings,
                 project: str, deadline_epoch: float | None, log_context: dict[str, Any], placement: Placement) -> None:
        configure_logging()  # context is bound in run(): see FetcherActor
        self.media = media
        self.settings = settings
        self.placement = placement
        self._args = (media, settings, secrets, gcs, project)
        self._log_context = log_context
        self.fetchers: dict[int, RayFetcher] = {}
        self._incarnations: dict[int, int] = {}
        self._replaced_calls = 0  # exchange calls of fetchers since replaced (for fetch_exchanges)
        deadline = None if deadline_epoch is None else time.monotonic() + (deadline_epoch - time.time())
        connector = connector_class(settings.connector)
        tokens = token_cache_for(media, settings.token_url or connector.token_url, connector.token_style, secrets)
        self.core = MediaSupervisor(media, settings, self._spawn, deadline=deadline, tokens=tokens)
        self.metrics = PipelineMetrics(media)

    async def _spawn(self, index: int) -> FetcherHandle:
        me = ray.get_runtime_context().current_actor
        incarnation = self._incarnations.get(index, -1) + 1
        self._incarnations[index] = incarnation
        actor = FetcherActor.options(  # type: ignore[attr-defined]  # added by @ray.remote
            **self.placement.fetcher(self.media, index, incarnation),
            max_concurrency=self.settings.concurrency + 2,
            max_restarts=0,  # restarts are ours: with backoff and an intensity limit
        ).remote(*self._args, me, self._log_context)
        pid, node_id = await actor.ready.remote()
        handle = RayFetcher(actor, pid, node_id)
        if (replaced := self.fetchers.get(index)) is not None:
            self._replaced_calls += replaced.window.calls
        self.fetchers[index] = handle
        return handle

    async def run(self, keys: list[ReportKey], first_attempt: dict[ReportKey, int] | None = None):  # type: ignore[no-untyped-def]
        """Streams lists of events (each burst in one object: see ``MediaSupervisor.run_batches``)."""
        # bound here, not only in __init__: async methods run on another thread's context; the
        # supervisor's slot tasks are created inside core.run and inherit this binding
        structlog.contextvars.bind_contextvars(**self._log_context, media=self.media)  # no reset across yields
        async for batch in self.core.run_batches(keys, first_attempt, linger_s=EVENT_LINGER_S):
            for event in batch:
                self.metrics.observe(event)
            yield batch
        # the Ray calls that carried the reports (several per call: ingest.supervision.exchange)
        log.info("fetch_exchanges", media=self.media, reports=len(keys),
                 calls=self._replaced_calls + sum(h.window.calls for h in self.fetchers.values()))

    async def permits(self, utilization: float | None, accounts: list[str | None]) -> list[Permit]:
        return await self.core.permits(utilization, accounts)

    async def request_failed(self, key: ReportKey, error: IngestError, attempt: int, what: str,
                             cut_reads: int = 0) -> tuple[bool, float, str]:
        # a call from a fetcher runs outside run()'s context: bind the run and report for its log lines
        with structlog.contextvars.bound_contextvars(**self._log_context, media=self.media, account=key.account,
                                                     date=key.day.isoformat(), attempt=attempt):
            return await self.core.request_failed(key, error, attempt, what, cut_reads)

    async def access_token(self, rejected: str | None = None) -> AccessToken | IngestError:
        with structlog.contextvars.bound_contextvars(**self._log_context, media=self.media):
            return await self.core.access_token(rejected)

    async def status(self) -> dict[str, Any]:
        return self.core.status()

    async def fetcher_pids(self) -> list[int]:
        return [h.pid for h in self.fetchers.values()]

    async def fetcher_nodes(self) -> dict[int, str]:
        """Fetcher index → Ray node id it runs on (the rehearsal kills a node by this)."""
        return {i: h.node_id for i, h in self.fetchers.items()}

    async def pid(self) -> int:
        return os.getpid()


def start_supervisor(media: str, settings: MediaSettings, secrets: dict[str, Secret], gcs: GcsSettings, project: str,
                     deadline_epoch: float | None, log_context: dict[str, Any], placement: Placement,
                     generation: int = 0) -> Any:
    return SupervisorActor.options(  # type: ignore[attr-defined]  # added by @ray.remote
        **placement.supervisor(media, generation), max_concurrency=1000, max_restarts=0,
    ).remote(media, settings, secrets, gcs, project, deadline_epoch, log_context, placement)


__all__ = ["FetcherActor", "SupervisorActor", "RayFetcher", "start_supervisor", "Event"]
