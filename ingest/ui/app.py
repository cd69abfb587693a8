"""``python -m ingest ui``: the read-only run-history page (aiohttp, server-rendered HTML).

Routes (GET only; the page changes nothing — it has no form that writes, and its database
connections are read-only):

    /                                         runs, newest first (?date= ?media= ?outcome= ?page=) + 30-night chart
    /runs/{run_id}                            the run's grid: media × date, coloured by state
    /runs/{run_id}/cells/{media}/{date}       one cell: its accounts, failed first, paged (?status= ?page=)
    /runs/{run_id}/cells/{media}/{date}/{account}   one report: error, timings, GCS paths, history
    /healthz                                  "ok" (no token needed, no data)

Access: bound to loopback (127.0.0.1, localhost, ::1) the page is open to local users. Bound
anywhere else it needs an access token from ``$INGEST_UI_TOKEN`` (``ui.token_env``): the CLI
refuses to start without one (exit 2). When a token is set it is required on every page, as
``Authorization: Bearer <token>``, or ``?token=<token>`` once (answered with an HttpOnly
cookie and a redirect to the same page without the token), or that cookie.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import ipaddress
import re
import time
from collections.abc import Awaitable, Callable
from datetime import date
from typing import Any
from urllib.parse import urlencode

import sqlalchemy as sa
import structlog
from aiohttp import web

from ingest.config import ACCOUNT_RE, NAME_RE
from ingest.errors import redact
from ingest.ui import render
from ingest.ui.queries import STATE_ORDER, LedgerReader

log = structlog.get_logger("ingest.ui")

COOKIE = "ingest_ui_token"
READER: web.AppKey[LedgerReader] = web.AppKey("reader", LedgerReader)
SETTINGS: web.AppKey[dict[str, Any]] = web.AppKey("settings", dict)
RUN_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$")


def is_loopback(host: str) -> bool:
    if host in ("localhost", "127.0.0.1", "::1"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _cookie_value(token: str) -> str:
    """The cookie holds a digest of the token, never the token itself."""
    return hmac.new(token.encode(), b"ingest-ui-cookie-v1", hashlib.sha256).hexdigest()


def _safe_path(request: web.Request) -> str:
    q = [(k, "***" if "token" in k.lower() else v) for k, v in request.query.items()]
    return redact(request.path + ("?" + urlencode(q) if q else ""))


@web.middleware
async def _access_log(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    started = time.perf_counter()
    status = 500
    try:
        response = await handler(request)
        status = response.status
        return response
    except web.HTTPException as exc:
        status = exc.status
        raise
    finally:
        log.info("ui_request", method=request.method, path=_safe_path(request), status=status,
                 ms=round((time.perf_counter() - started) * 1000, 1))


def _auth_middleware(token: str | None) -> Any:
    @web.middleware
    async def auth(
        request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        if token is None or request.path == "/healthz":
            return await handler(request)
        given = request.query.get("token")
        if given is not None:
            if hmac.compare_digest(given.encode(), token.encode()):
                # trade the token in the address bar for a cookie, then drop it from the URL
                rest = [(k, v) for k, v in request.query.items() if k != "token"]
                location = request.path + ("?" + urlencode(rest) if rest else "")
                resp = web.HTTPSeeOther(location)
                resp.set_cookie(COOKIE, _cookie_value(token), httponly=True, samesite="Strict", path="/",
                                secure=request.secure)
                raise resp
            return _denied()
        header = request.headers.get("Authorization", "")
        if header.lower().startswith("bearer ") and hmac.compare_digest(header[7:].strip().encode(), token.encode()):
            return await handler(request)
        cookie = request.cookies.get(COOKIE)
        if cookie and hmac.compare_digest(cookie.encode(), _cookie_value(token).encode()):
            return await handler(request)
        return _denied()

    return auth


def _denied() -> web.Response:
    return web.Response(status=401, content_type="text/html", headers={"WWW-Authenticate": 'Bearer realm="ingest"'},
                        text=render.message_page("access token required",
                                                 "Open this page with ?token=<the access token>, or send "
                                                 "'Authorization: Bearer <token>'. The token is in the environment "
                                                 "variable the operator set (INGEST_UI_TOKEN by default)."))


@web.middleware
async def _headers_and_errors(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    try:
        response = await handler(request)
    except web.HTTPException:
        raise
    except (sa.exc.OperationalError, sa.exc.ProgrammingError) as exc:
        log.warning("ui_db_error", path=_safe_path(request), error=f"{type(exc).__name__}: {str(exc).splitlines()[0]}")
        response = web.Response(status=503, content_type="text/html", text=render.message_page(
            "ledger not readable", f"{type(exc).__name__}: {str(exc).splitlines()[0][:300]}",
            "Has the pipeline run against this database yet? Any `python -m ingest run` creates the ledger tables."))
    response.headers.setdefault("Cache-Control", "no-store")
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Referrer-Policy"] = "no-referrer"
    response.headers["X-Frame-Options"] = "DENY"
    response.headers["Content-Security-Policy"] = (
        "default-src 'none'; style-src 'unsafe-inline'; img-src 'self' data:; "
        "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    )
    return response


def _html(text: str, status: int = 200) -> web.Response:
    return web.Response(text=text, status=status, content_type="text/html", charset="utf-8")


def _not_found(what: str) -> web.Response:
    return _html(render.message_page("not found", what), 404)


def _int(value: str | None, default: int, lo: int = 1, hi: int = 100_000) -> int:
    try:
        return max(lo, min(hi, int(value))) if value else default
    except ValueError:
        return default


def _day(value: str | None) -> date | None:
    if not value:
        return None
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise web.HTTPBadRequest(text=f"not a date (YYYY-MM-DD): {value[:20]!r}") from None


async def _db(fn: Callable[..., Any], *args: Any, **kw: Any) -> Any:
    """SQLAlchemy is synchronous: run each query batch off the event loop."""
    return await asyncio.to_thread(fn, *args, **kw)


# -- handlers -------------------------------------------------------------------------------------
async def runs_list(request: web.Request) -> web.Response:
    reader, settings = request.app[READER], request.app[SETTINGS]
    q = request.query
    day = _day(q.get("date"))
    media = q.get("media") or None
    if media and not NAME_RE.fullmatch(media):
        raise web.HTTPBadRequest(text="bad media name")
    outcome = q.get("outcome") or None
    if outcome and outcome not in ("success", "partial", "failed", "aborted", "running"):
        raise web.HTTPBadRequest(text="bad outcome")
    page_no = _int(q.get("page"), 1)
    size = settings["page_size"]

    def load() -> tuple[Any, ...]:
        rows, total = reader.runs(page=page_no, page_size=size, day=day, media=media, outcome=outcome)
        names = reader.media_names()
        nights = reader.nights(30)
        return rows, total, names, nights, reader.current_failed(rows)

    rows, total, names, nights, current = await _db(load)
    filters = {"date": day.isoformat() if day else None, "media": media, "outcome": outcome}
    svg = render.chart(nights, names)
    return _html(render.runs_page(rows, total, page_no=page_no, page_size=size, filters=filters, media_names=names,
                                  chart_svg=svg, current=current))


def _run_id(request: web.Request) -> str:
    run_id = request.match_info["run_id"]
    if not RUN_ID_RE.fullmatch(run_id):
        raise web.HTTPNotFound(text="no such run")
    return run_id


async def run_grid(request: web.Request) -> web.Response:
    reader, settings = request.app[READER], request.app[SETTINGS]
    run_id = _run_id(request)

    def load() -> tuple[Any, ...]:
        run = reader.run(run_id)
        if run is None:
            return None, None, None, None
        return run, reader.grid(run), reader.run_events(run_id), reader.media_events(run_id)

    run, cells, events, media_events = await _db(load)
    if run is None:
        return _not_found(f"no run {run_id}")
    return _html(render.run_page(run, cells, events, media_events, cmd_suffix=settings["cmd_suffix"]))


def _cell_args(request: web.Request) -> tuple[str, str, date]:
    run_id = _run_id(request)
    media = request.match_info["media"]
    if not NAME_RE.fullmatch(media):
        raise web.HTTPNotFound(text="no such media")
    day = _day(request.match_info["day"])
    assert day is not None
    return run_id, media, day


async def cell_detail(request: web.Request) -> web.Response:
    reader, settings = request.app[READER], request.app[SETTINGS]
    run_id, media, day = _cell_args(request)
    status = request.query.get("status") or None
    if status and status not in STATE_ORDER:
        raise web.HTTPBadRequest(text="bad status")
    page_no = _int(request.query.get("page"), 1)
    size = settings["page_size"]

    def load() -> tuple[Any, ...]:
        run = reader.run(run_id)
        if run is None:
            return None, None, None, None
        rows, total, stage = reader.cell(run_id, media, day, page=page_no, page_size=size, status=status)
        return run, rows, total, stage

    run, rows, total, stage = await _db(load)
    if run is None:
        return _not_found(f"no run {run_id}")
    return _html(render.cell_page(run, media, day, rows, total, stage, page_no=page_no, page_size=size, status=status,
                                  cmd_suffix=settings["cmd_suffix"]))


async def task_detail(request: web.Request) -> web.Response:
    reader, settings = request.app[READER], request.app[SETTINGS]
    run_id, media, day = _cell_args(request)
    account = request.match_info["account"]
    if not ACCOUNT_RE.fullmatch(account):
        raise web.HTTPNotFound(text="no such account")

    def load() -> tuple[Any, ...]:
        run = reader.run(run_id)
        task, history = reader.task(media, day, account)
        return run, task, history, reader.stage(media, day)

    run, task, history, stage = await _db(load)
    if run is None or task is None:
        return _not_found(f"no report {media}/{account}/{day} (run {run_id})")
    return _html(render.task_page(run, task, history, stage, cmd_suffix=settings["cmd_suffix"]))


async def healthz(_request: web.Request) -> web.Response:
    return web.Response(text="ok")


def create_app(reader: LedgerReader, *, token: str | None = None, page_size: int = 50, cmd_suffix: str = "",
               timezone: str = "UTC") -> web.Application:
    render.set_display_timezone(timezone)
    app = web.Application(middlewares=[_access_log, _headers_and_errors, _auth_middleware(token)])
    app[READER] = reader
    app[SETTINGS] = {"page_size": page_size, "cmd_suffix": cmd_suffix}
    app.router.add_get("/", runs_list)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/runs/{run_id}", run_grid)
    app.router.add_get("/runs/{run_id}/cells/{media}/{day}", cell_detail)
    app.router.add_get("/runs/{run_id}/cells/{media}/{day}/{account}", task_detail)
    return app
