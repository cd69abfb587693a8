"""A permit expires between the session's check and httpcore's first byte: nothing is written,
a new permit is taken (ingest.media.base._write_deadline), over a real loopback HTTP server."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest

from ingest.media import base
from ingest.media.base import HttpSession


class _Handler(BaseHTTPRequestHandler):
    seen: list[str] = []

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        _Handler.seen.append(self.path)
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"{}")

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def server() -> Iterator[str]:
    _Handler.seen = []
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


class SteppingClock:
    """time.time() for the session: each reading 10 ms after the last (a busy process)."""

    def __init__(self) -> None:
        self.now = 1_000.0

    def time(self) -> float:
        self.now += 0.010
        return self.now

    def perf_counter(self) -> float:
        return self.now


def test_a_permit_that_expires_before_the_first_byte_sends_nothing_and_takes_a_new_one(
        server: str, monkeypatch: pytest.MonkeyPatch) -> None:
    clock = SteppingClock()
    monkeypatch.setattr(base, "time", clock)
    permits: list[float] = []

    async def gate() -> float:
        # each permit may be used until 15 ms from now: the session's own check (10 ms later)
        # passes, httpcore's check just before the headers (10 ms after that) does not
        permits.append(clock.now + 0.015)
        return permits[-1]

    async def go() -> HttpSession:
        async with httpx.AsyncClient() as client:
            session = HttpSession(client, gate=gate)
            response = await session.request("GET", f"{server}/report")
            assert response.status_code == 200
            return session

    session = asyncio.run(go())
    # every permit but the last expired on the way to the socket; the last is sent regardless
    # (a process so busy that every permit is late must still make progress)
    assert session.late_permits == HttpSession.MAX_LATE_PERMITS == len(permits) - 1
    assert _Handler.seen == ["/report"] and session.requests == 1  # written once, counted once


def test_the_hook_refuses_only_the_first_byte_after_the_deadline() -> None:
    async def go() -> list[str]:
        hook = base._write_deadline(latest=0.0)  # long past
        out = []
        for event in ("connection.connect_tcp.started", "http11.send_request_headers.started",
                      "http2.send_request_headers.started"):
            try:
                await hook(event, {})
                out.append("ok")
            except base._LateWrite:
                out.append("refused")
        return out

    assert asyncio.run(go()) == ["ok", "refused", "refused"]
