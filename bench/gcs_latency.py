"""Stage 2's first step (``count_partitions``) at a real GCS round trip, one request at a time
vs ``GCS_THREADS`` at a time.

fake-gcs-server answers on loopback in well under a millisecond, where GCS takes tens of
milliseconds per listing or download, so the bench puts ``DelayProxy`` between the client and
the emulator: every request waits ``delay_s`` before it is passed on (one round trip's worth).
Two cases over the same objects: every MD5 known (a normal night: listings only) and none
known (the first night after migration 0005, or objects changed behind the ledger's back:
every object downloaded).
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import date, timedelta
from typing import Any
from urllib.parse import urlsplit

from aggregations.reconcile import GCS_THREADS, count_partitions
from aggregations.totals import Totals
from ingest.clients import gcs_client
from ingest.config import PipelineConfig
from ingest.media.base import Row, rows_to_csv
from ingest.storage import ReportPaths, ReportStore, gcs_md5


class DelayProxy:
    """A TCP proxy on 127.0.0.1 that holds each chunk a client sends for ``delay_s``."""

    def __init__(self, upstream: str, delay_s: float) -> None:
        url = urlsplit(upstream)
        self.upstream = (url.hostname or "127.0.0.1", url.port or 80)
        self.delay_s = delay_s
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        threading.Thread(target=self._run, daemon=True, name="delay-proxy").start()
        self._ready.wait(10)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        server = self._loop.run_until_complete(asyncio.start_server(self._serve, "127.0.0.1", self.port))
        self._ready.set()
        try:
            self._loop.run_forever()
        finally:
            server.close()

    async def _serve(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        up_r, up_w = await asyncio.open_connection(*self.upstream)

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter, delay: float) -> None:
            try:
                while chunk := await src.read(65536):
                    if delay:
                        await asyncio.sleep(delay)
                    dst.write(chunk)
                    await dst.drain()
            except (ConnectionError, asyncio.IncompleteReadError):
                pass
            finally:
                dst.close()

        await asyncio.gather(pipe(client_r, up_w, self.delay_s), pipe(up_r, client_w, 0.0))

    def close(self) -> None:
        async def cancel_all() -> None:
            for task in asyncio.all_tasks() - {asyncio.current_task()}:
                task.cancel()

        self._loop.set_exception_handler(lambda _loop, _context: None)  # connections cut on purpose
        asyncio.run_coroutine_threadsafe(cancel_all(), self._loop).result(5)
        self._loop.call_soon_threadsafe(self._loop.stop)


def run_gcs_latency(cfg: PipelineConfig, partitions: int = 30, objects: int = 50,
                    delay_s: float = 0.02) -> dict[str, Any]:
    """Seconds of ``count_partitions`` over ``partitions`` × ``objects`` CSVs, at 1 and
    ``GCS_THREADS`` requests at a time, with every MD5 known and with none known."""
    direct = ReportStore(gcs_client(cfg.gcs, cfg.project), cfg.gcs.bucket)
    direct.ensure_bucket()
    first = date(2026, 10, 1)
    parts = [("meta", first + timedelta(days=i)) for i in range(partitions)]
    landed: dict[str, tuple[str, Totals]] = {}

    def put(item: tuple[tuple[str, date], int]) -> None:
        (media, day), i = item
        rows = [Row(day, media, str(i), "c1", "Campaign", 100 + i, 3, 1, 0, "JPY")]
        name, body = ReportPaths(cfg.gcs.bucket, media, str(i), day).day_csv(day), rows_to_csv(rows)
        direct.put(name, body, "text/csv")
        landed[name] = (gcs_md5(body), Totals.from_rows(rows))

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(put, [(p, i) for p in parts for i in range(objects)]))

    proxy = DelayProxy(cfg.gcs.endpoint or "", delay_s)
    try:
        slow = ReportStore(gcs_client(cfg.gcs.model_copy(update={"endpoint": proxy.url}), cfg.project),
                           cfg.gcs.bucket)
        out: dict[str, Any] = {"partitions": partitions, "objects": partitions * objects, "delay_ms": delay_s * 1000,
                               "threads": GCS_THREADS}
        for case, known in (("md5_known", landed), ("none_known", {})):
            for threads in (1, GCS_THREADS):
                started = time.perf_counter()
                got = count_partitions(slow, parts, known, threads=threads)
                took = time.perf_counter() - started
                if any(isinstance(v, Exception) for v in got.values()):
                    raise RuntimeError(f"count_partitions failed: {got}")
                out[f"{case}_{threads}_s"] = round(took, 2)
        return out
    finally:
        proxy.close()

