"""A fetcher's reports spread over small HTTP pools (``ClientShards``: why in its docstring)."""

from __future__ import annotations

import asyncio
from datetime import date, timedelta

import httpx
from connector_template import make
from test_quota import _Store, media_settings

from ingest.media.client_shards import ClientShards
from ingest.media.meta import MetaConnector
from ingest.supervision.fetcher import ReportFetcher
from ingest.tasks import ReportKey


def test_sized_by_the_reports_in_flight() -> None:
    assert len(ClientShards.for_concurrency(1, 5).clients) == 1
    assert len(ClientShards.for_concurrency(8, 5).clients) == 1
    assert len(ClientShards.for_concurrency(16, 5).clients) == 2
    assert len(ClientShards.for_concurrency(96, 5).clients) == 12
    assert len(ClientShards.for_concurrency(20, 5).clients) == 3  # 7 + 7 + 6, never 8 + 8 + 4


def test_the_clients_share_one_tls_context() -> None:
    """Loading the CA bundle is the costly part of a client (once per process, not per pool);
    the shared context is still the verifying default (SSL_CERT_FILE honoured like httpx's)."""
    import ssl

    shards = ClientShards.for_concurrency(64, 5)
    contexts = {id(c._transport._pool._ssl_context) for c in shards.clients}  # type: ignore[attr-defined]
    assert len(shards.clients) == 8 and len(contexts) == 1
    context = shards.clients[0]._transport._pool._ssl_context  # type: ignore[attr-defined]
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname


def test_a_lease_goes_to_the_least_busy_client_and_comes_back() -> None:
    shards = ClientShards([httpx.AsyncClient() for _ in range(3)])
    with shards.lease() as a, shards.lease() as b, shards.lease() as c:
        assert len({id(a), id(b), id(c)}) == 3
        with shards.lease():
            assert sorted(shards.busy()) == [1, 1, 2]
        assert shards.busy() == [1, 1, 1]
    assert shards.busy() == [0, 0, 0]
    try:
        with shards.lease():
            raise RuntimeError("a failed fetch")
    except RuntimeError:
        pass
    assert shards.busy() == [0, 0, 0]


def test_concurrent_reports_of_one_fetcher_use_every_pool_none_beyond_its_share() -> None:
    in_flight: dict[int, int] = {}
    peak: dict[int, int] = {}

    def client(n: int) -> httpx.AsyncClient:
        async def handler(_: httpx.Request) -> httpx.Response:
            in_flight[n] = in_flight.get(n, 0) + 1
            peak[n] = max(peak.get(n, 0), in_flight[n])
            await asyncio.sleep(0.02)
            in_flight[n] -= 1
            return httpx.Response(500, json={})

        return httpx.AsyncClient(transport=httpx.MockTransport(handler))

    async def go() -> None:
        fetcher = ReportFetcher("meta", media_settings("meta"), make(MetaConnector), _Store(),  # type: ignore[arg-type]
                                ClientShards([client(n) for n in range(3)]))
        keys = [ReportKey("meta", "1", date(2026, 11, 1) + timedelta(days=i)) for i in range(9)]
        await asyncio.gather(*(fetcher.fetch(k) for k in keys), return_exceptions=True)

    asyncio.run(go())
    assert peak == {0: 3, 1: 3, 2: 3}
