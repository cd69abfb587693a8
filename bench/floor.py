"""The floor under issue 17's CPU goals, measured without our supervision: what a report costs
fetched and landed in one process, and what Ray costs a night before any of our code runs.

Two parts, against the bench's own stack:

- ``report_floor``: ``ReportFetcher.fetch`` in this process, no Ray, no supervisor, quotas off:
  the connector's requests through httpx, the two GCS uploads, parsing and the CSV — library
  work nearly all of it. Nothing of the pipeline can cost less per report than this. Run 8
  reports at a time, where it is cheapest (on this VM one at a time cost ≈40 % more per report,
  64 at a time ≈5 %).
- ``ray_floor``: a driver that starts Ray and as many bare async actors as a night starts (a
  supervisor and a fetcher per media), held idle as long as the nightly's fetch: Ray's start-up
  per worker process (Python + Ray), its idle CPU per second (the core worker wakes every 10 ms
  to check for signals, hard-coded in Ray), and the driver's ``ray.init``.

``bench.run`` sets these against the goals: a night's floor is the Ray part plus the report
part times the night's reports.
"""

from __future__ import annotations

import asyncio
import logging
import os
import resource
import time
from datetime import date, timedelta
from typing import Any

from bench.procs import _cpu_s


def _self_cpu_s() -> float:
    """This process's CPU, every thread (the upload threads too)."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def report_floor(cfg: Any, media: str, reports: int, concurrency: int) -> dict[str, Any]:
    """CPU per report of ``ReportFetcher.fetch`` alone, ``concurrency`` reports at a time."""
    from ingest.clients import gcs_client
    from ingest.media.client_shards import ClientShards
    from ingest.media.tokens import token_cache_for
    from ingest.storage import ReportStore
    from ingest.supervision.fetcher import QuotaLink, ReportFetcher, build_connector, resolve_secrets
    from ingest.supervision.limiter import Permit
    from ingest.tasks import ReportKey

    settings = cfg.media[media]
    store = ReportStore(gcs_client(cfg.gcs, cfg.project), cfg.gcs.bucket)
    store.ensure_bucket()
    accounts = [a.id for a in settings.accounts]
    last = date(2026, 11, 20)
    keys = [ReportKey(media, accounts[i % len(accounts)], last - timedelta(days=i // len(accounts)))
            for i in range(reports)]

    async def run() -> tuple[float, int]:
        clients = ClientShards.for_concurrency(concurrency, settings.timeout_s)
        secrets = resolve_secrets(media, settings, dict(os.environ))
        connector = build_connector(media, settings, secrets)
        fetcher = ReportFetcher(media, settings, connector, store, clients)
        # a permit at once for every request (no quota), the media's OAuth token where it has one
        tokens = token_cache_for(media, settings.token_url or connector.token_url, connector.token_style, secrets)

        async def permits(_: float | None, accounts: list[str | None]) -> list[Permit]:
            return [Permit(0.0, deadline=False)] * len(accounts)

        quota = QuotaLink(permits, tokens.get if tokens else None)
        gate = asyncio.Semaphore(concurrency)

        async def one(key: ReportKey) -> int:  # a failed report raises: the floor is of landed reports
            async with gate:
                return (await fetcher.fetch(key, quota)).requests

        for key in keys[:concurrency]:  # connections, TLS context, first imports: not a report's cost
            await one(key)
        started = _self_cpu_s()
        done = await asyncio.gather(*(one(k) for k in keys))
        return _self_cpu_s() - started, sum(done)

    cpu, requests = asyncio.run(run())
    return {"media": media, "reports": reports, "concurrency": concurrency,
            "requests_per_report": round(requests / reports, 2), "cpu_ms_per_report": round(cpu / reports * 1000, 2)}


#: how long after its first answer an actor's start-up is still counted as start-up, not idle
SETTLE_S = 2.0


def ray_floor(actors: int, hold_s: float) -> dict[str, Any]:
    """Ray alone for a night: start-up CPU per bare actor process, its idle CPU per second, and
    the driver's ``ray.init``; the actors are started together, as the night starts its own."""
    import ray

    before = _self_cpu_s()
    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, logging_level=logging.WARNING, configure_logging=False)
    driver_init = _self_cpu_s() - before

    @ray.remote
    class Bare:
        """An async actor with nothing of ours in it (ours are async too)."""

        async def pid(self) -> int:
            return os.getpid()

    try:
        handles = [Bare.remote() for _ in range(actors)]  # type: ignore[attr-defined]
        pids = ray.get([h.pid.remote() for h in handles])
        time.sleep(SETTLE_S)  # a worker's start-up goes on for a while after its first call
        started = [_cpu_s(pid) for pid in pids]
        time.sleep(hold_s)
        held = [_cpu_s(pid) for pid in pids]
    finally:
        ray.shutdown()
    idle = [(h - s) / hold_s for h, s in zip(held, started, strict=True)]
    return {"actors": actors, "hold_s": hold_s, "driver_init_cpu_s": round(driver_init, 2),
            "startup_cpu_s": round(sum(started) / actors, 3), "idle_cpu_per_s": round(sum(idle) / actors, 4)}
