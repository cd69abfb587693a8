"""A fetcher process's HTTP clients: several small connection pools instead of one large one.

httpcore (1.0.9, under httpx) re-examines every connection of a pool — a ``poll()`` on each
idle socket to see whether the server closed it — and every queued request on each request
and each response (encode/httpx#3215; the linear rewrite, encode/httpcore#1035, is unreleased).
Its CPU per request therefore grows with the pool. Measured on loopback, one pool serving 96
requests in flight costs 2.6 ms of CPU per request, twelve pools of 8 cost 0.7 ms (16 in
flight: 1.0 → 0.8 ms). A fetcher process keeps ``concurrency`` reports in flight and a report
sends one request at a time, so ``ClientShards`` gives each report, for the length of its
fetch, the least busy of ``ceil(concurrency / SHARD)`` clients: no pool ever holds more than
``SHARD`` reports, and none waits for a connection while another pool has one free.

The clients share one TLS context: each ``httpx.AsyncClient`` would otherwise load the CA
bundle into its own (≈25 ms of CPU each; a fetcher of concurrency 64 built eight).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager

import httpx


class ClientShards:
    #: reports per client: small enough that the pool's scans stay cheap, large enough that
    #: keep-alive connections are reused
    SHARD = 8

    def __init__(self, clients: list[httpx.AsyncClient]) -> None:
        self.clients = clients
        self._busy = [0] * len(clients)

    @classmethod
    def for_concurrency(cls, concurrency: int, timeout_s: float) -> ClientShards:
        n = max(1, math.ceil(concurrency / cls.SHARD))
        per = math.ceil(concurrency / n)  # least-busy leasing never puts more on one client
        limits = httpx.Limits(max_connections=per * 2, max_keepalive_connections=per)
        tls = httpx.create_ssl_context()  # what each client would build for itself (trust_env: SSL_CERT_FILE…)
        return cls([httpx.AsyncClient(timeout=timeout_s, limits=limits, verify=tls) for _ in range(n)])

    @contextmanager
    def lease(self) -> Iterator[httpx.AsyncClient]:
        """The least busy client, counted busy until the block ends (one report's fetch)."""
        i = min(range(len(self._busy)), key=self._busy.__getitem__)
        self._busy[i] += 1
        try:
            yield self.clients[i]
        finally:
            self._busy[i] -= 1

    def busy(self) -> list[int]:
        return list(self._busy)
