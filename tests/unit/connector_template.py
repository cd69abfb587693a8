"""Helpers + copy-and-edit template for a connector's unit tests (not collected by pytest).

A new media's tests = copy the TEMPLATE at the bottom into ``tests/unit/test_<media>.py``
and fill three tables:

1. ``ERRORS``: (HTTP status, body, headers) → expected error class, ``retry_after``, ``code``;
   one row per code/status in docs/connectors.md, with real-shaped bodies from the docs;
2. paging / async: a scripted sequence of responses (``Script``) run to the last page/poll;
3. normalization: a real-shaped body → exact ``Row`` values (strings, micros, CSV → Decimal).

Everything goes through ``httpx.MockTransport`` and the real ``HttpSession``: no monkeypatching,
no network, no Ray.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date
from typing import Any

import httpx

from ingest.media.base import Connector, ConnectorSettings, HttpSession, Row, Secret, Usage

TOKEN = "s3cr3t-token-value"
DAY = date(2026, 3, 14)


def make(cls: type[Connector], options: dict[str, Any] | None = None, base_url: str = "https://api.example.test",
         api_version: str = "v1") -> Any:
    """A connector with every credential set to ``TOKEN`` (tests assert it never leaks)."""
    settings = ConnectorSettings(
        media=cls.name,
        base_url=base_url,
        api_version=api_version,
        secrets={name: Secret(TOKEN) for name in cls.credential_names},
        options=options or {},
    )
    return cls(settings)


def respond(status: int = 200, body: Any = None, headers: dict[str, str] | None = None,
            raw: bytes | str | None = None) -> httpx.Response:
    """A response with a JSON body (or ``raw`` bytes/text, e.g. a CSV or truncated JSON)."""
    if raw is not None:
        content = raw.encode() if isinstance(raw, str) else raw
    else:
        content = json.dumps(body).encode() if body is not None else b""
    return httpx.Response(status, content=content, headers=headers)


@dataclass
class Script:
    """Serves ``responses`` in order (a callable entry gets the request) and records requests."""

    responses: list[httpx.Response | Callable[[httpx.Request], httpx.Response]]
    requests: list[httpx.Request] = field(default_factory=list)

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        if not self.responses:
            raise AssertionError(f"unexpected extra request {request.method} {request.url}")
        nxt = self.responses.pop(0)
        return nxt(request) if callable(nxt) else nxt


@dataclass
class Outcome:
    rows: list[Row]
    session: HttpSession
    usage: list[Usage]
    polls: list[int]


def run(conn: Connector, handler: Callable[[httpx.Request], httpx.Response], account: str,
        day: date = DAY) -> Outcome:
    """Run ``conn.fetch`` against ``handler``; raises whatever the connector raises."""
    usage: list[Usage] = []
    polls: list[int] = []

    async def poll_wait(n: int) -> None:
        polls.append(n)

    async def go() -> Outcome:
        async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
            session = HttpSession(client, poll_wait=poll_wait, on_usage=usage.append)
            rows = await conn.fetch(session, account, day)
            return Outcome(rows, session, usage, polls)

    return asyncio.run(go())


def assert_no_secret(session: HttpSession, requests: list[httpx.Request]) -> None:
    """The token travels in headers only: never in a URL, never in the recorded pages."""
    for page in session.pages:
        assert TOKEN not in page.url
    for request in requests:
        assert TOKEN not in str(request.url)


# ------------------------------------------------------------------------------------------
# TEMPLATE — copy below into tests/unit/test_<media>.py and edit the three tables.
# ------------------------------------------------------------------------------------------
#
# import pytest
# from connector_template import DAY, Script, make, respond, run
# from ingest.errors import AuthError, BadRequest, DataError, Throttled, Transient
# from ingest.media.<media> import <Media>Connector
#
# ERRORS = [  # (id, status, body, headers, error class, retry_after, code)
#     ("rate-limit", 429, {...real body from the docs...}, {"Retry-After": "5"}, Throttled, 5.0, "..."),
#     ("server", 503, {...}, {}, Transient, None, "..."),
#     ("token", 401, {...}, {}, AuthError, None, "..."),
#     ("invalid", 400, {...}, {}, BadRequest, None, "..."),
# ]
#
# @pytest.mark.parametrize(("status", "body", "headers", "error", "retry_after", "code"),
#                          [e[1:] for e in ERRORS], ids=[e[0] for e in ERRORS])
# def test_errors(status, body, headers, error, retry_after, code):
#     conn = make(<Media>Connector)
#     with pytest.raises(error) as info:
#         run(conn, Script([respond(status, body, headers)]), "123")
#     assert type(info.value) is error and getattr(info.value, "retry_after", None) == retry_after
#     assert info.value.code == code and info.value.media == "<media>"
#
# def test_paging_to_last_page(): script every page; assert requests and rows in order
# def test_normalization_exact(): a real-shaped body → Row values compared to Decimal("...")
# def test_schema_drift_and_hostile_ids(): renamed field / hostile campaign id → DataError
