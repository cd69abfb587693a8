"""What every media connector shares: the row schema, the HTTP seam and the protocol.

A connector is a small, mostly declarative class. It turns (account, date) into requests,
follows paging, normalizes rows, and *classifies* failures into ``ingest.errors``. It never
sleeps on errors, never retries and never loops on failure: that is the supervisor's job.
The only wait it may ask for is ``HttpSession.poll_wait`` between polls of an async report
job, and that wait is decided by supervision, not by the connector.
"""

from __future__ import annotations

import asyncio
import csv
import io
import json
import time
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import date
from decimal import Decimal
from typing import Any, ClassVar, TypeVar
from urllib.parse import urlsplit

import httpx

from ingest.errors import DataError, IngestError, Malformed, RetriableError, Timeout, Transient, redact, register_secret
from ingest.media.versions import ApiVersion

CSV_COLUMNS = (
    "date",
    "media",
    "account_id",
    "campaign_id",
    "campaign_name",
    "impressions",
    "clicks",
    "spend",
    "conversions",
    "currency",
)


@dataclass(frozen=True, slots=True)
class Row:
    """One campaign's metrics for one day, in the common schema (spend in account currency)."""

    date: date
    media: str
    account_id: str
    campaign_id: str
    campaign_name: str
    impressions: int
    clicks: int
    spend: Decimal
    conversions: Decimal
    currency: str

    def as_csv(self) -> list[str]:
        return [
            self.date.isoformat(),
            self.media,
            self.account_id,
            self.campaign_id,
            self.campaign_name,
            str(self.impressions),
            str(self.clicks),
            format(self.spend, "f"),
            format(self.conversions, "f"),
            self.currency,
        ]


def rows_to_csv(rows: list[Row]) -> bytes:
    """CSV with a header row (bqemulator reads the header; BigQuery skips it by option)."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for row in rows:
        writer.writerow(row.as_csv())
    return buf.getvalue().encode("utf-8")


class Secret:
    """A credential value that never shows in repr/str/logs."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value
        register_secret(value)  # also on unpickling in a Ray worker: redact() scrubs the exact value there too

    def get(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret(***)"

    __str__ = __repr__

    def __reduce__(self) -> tuple[Any, ...]:
        return (Secret, (self._value,))


@dataclass(frozen=True, slots=True)
class Usage:
    """How close the platform says we are to its limits.

    ``utilization`` is the highest reported usage in 0..1 (e.g. Meta's ``call_count`` 85 → 0.85);
    ``regain_after_s`` is the platform's own estimate of when a throttle lifts.
    """

    utilization: float = 0.0
    regain_after_s: float | None = None


@dataclass(slots=True)
class RawPage:
    """One HTTP exchange kept for audit in GCS: method, path (no secrets), status, body."""

    method: str
    url: str
    status: int
    body: str
    elapsed_ms: float

    def as_json(self) -> dict[str, Any]:
        body: Any
        try:
            body = json.loads(self.body)
        except ValueError:
            body = self.body  # keep malformed bodies verbatim: they are the evidence
        return {"method": self.method, "url": self.url, "status": self.status,
                "elapsed_ms": round(self.elapsed_ms, 1), "body": body}


#: awaited before every request; supervision plugs its rate limiter in here. Returns the latest
#: ``time.time()`` at which the request may still go out (None: any time); past it, the
#: session asks the gate again rather than send late and bunched with later permits
Gate = Callable[[], Awaitable[float | None]]
#: awaited between polls of an async report job; supervision decides the interval
PollWait = Callable[[int], Awaitable[None]]
#: called with the usage a response reported
UsageSink = Callable[[Usage], None]
#: the media's current access token; given the token a 401 rejected, a fresh one
BearerSource = Callable[[str | None], Awaitable[str]]
#: asked after one request failed retriably: (error, attempt of that request, which request, cut
#: bodies read so far for it) → seconds to wait before sending it again; raises the final error
#: when a budget is spent. Supervision plugs its retry policy in here: connectors never decide.
RequestRetry = Callable[[IngestError, int, str, int], Awaitable[float]]

T = TypeVar("T")


async def _no_gate() -> float | None:
    return None


def _safe_url(url: httpx.URL) -> str:
    parts = urlsplit(str(url))
    return redact(parts.path + (f"?{parts.query}" if parts.query else ""))


class _LateWrite(Exception):
    """Raised inside httpcore just before a request's first byte, when its permit has expired."""


def _write_deadline(latest: float) -> Callable[[str, Any], Awaitable[None]]:
    """An httpcore ``trace`` hook that refuses to write the request after ``latest``.

    The session checks its permit before handing the request to httpx, but the pool, a new
    connection and a busy event loop can still delay the write by tens of milliseconds, and a
    late write arrives bunched with later permits (the platform counts arrivals). Checked at the
    last moment before the first byte; raising there closes that connection, sends nothing.
    """

    async def trace(event: str, info: Any) -> None:
        if event.endswith("send_request_headers.started") and time.time() > latest:
            raise _LateWrite()

    return trace


class HttpSession:
    """The one network seam of a fetch: every request of one report goes through here.

    It (1) waits on the media's gate before each request, async-job polls included, so the
    quota budget sees everything (async-job slots are held by the supervisor around the whole
    fetch: ``Connector.uses_report_jobs``);
    (2) records every exchange for the raw GCS object, even when the report then fails;
    (3) translates transport failures into our taxonomy, the only place that knows httpx
    exceptions.
    """

    #: permits given up in a row for being late before a request goes out anyway (a process so
    #: busy that every permit is late must still make progress)
    MAX_LATE_PERMITS = 3
    #: fresh tokens one request may ask for after 401s (a bound, so bad credentials never loop)
    MAX_TOKEN_REFRESHES = 2

    def __init__(
        self,
        client: httpx.AsyncClient,
        *,
        gate: Gate | None = None,
        poll_wait: PollWait | None = None,
        on_usage: UsageSink | None = None,
        bearer: BearerSource | None = None,
        retry: RequestRetry | None = None,
    ) -> None:
        self.client = client
        self._bearer = bearer
        self._retry = retry
        self.request_retries = 0
        self._gate = gate or _no_gate
        self._poll_wait = poll_wait
        self._on_usage = on_usage
        self.pages: list[RawPage] = []
        self.requests = 0
        self.late_permits = 0

    async def request(
        self,
        method: str,
        url: str,
        *,
        params: Mapping[str, Any] | None = None,
        json_body: Any = None,
        data: Mapping[str, Any] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> httpx.Response:
        response, token = await self._send(method, url, params, json_body, data, headers, None)
        rejected: set[str] = set()
        while token is not None and response.status_code == 401 and token not in rejected \
                and len(rejected) < self.MAX_TOKEN_REFRESHES:
            # expired or revoked early: a fresh token, one more try. The token on the retry may itself
            # be one another request refreshed seconds ago and the platform revoked since, so a 401
            # for a token not yet rejected earns one more; a 401 for the same token (or a third)
            # is the connector's AuthError
            rejected.add(token)
            response, token = await self._send(method, url, params, json_body, data, headers, token)
        return response

    async def _send(self, method: str, url: str, params: Mapping[str, Any] | None, json_body: Any,
                    data: Mapping[str, Any] | None, headers: Mapping[str, str] | None,
                    rejected: str | None) -> tuple[httpx.Response, str | None]:
        token = None
        for late in range(self.MAX_LATE_PERMITS + 1):
            latest = await self._gate()
            if self._bearer is not None:  # refresh-token credentials: asked after the gate, so never stale on send
                token = await self._bearer(rejected)
                headers = {**(headers or {}), "Authorization": f"Bearer {token}"}
            last_chance = late == self.MAX_LATE_PERMITS
            if latest is not None and time.time() > latest and not last_chance:
                self.late_permits += 1  # its slot passed while this process was busy: take a new one
                continue
            self.requests += 1
            started = time.perf_counter()
            try:
                guard = {} if latest is None or last_chance else {"trace": _write_deadline(latest)}
                response = await self.client.request(method, url, params=params, json=json_body, data=data,
                                                     headers=headers, extensions=guard)
                body = await response.aread()
            except _LateWrite:
                self.requests -= 1  # nothing was written: the platform never saw it
                self.late_permits += 1  # a new permit
                continue
            except httpx.TimeoutException as exc:
                raise Timeout(f"{method} {_safe_url(httpx.URL(url))} timed out ({type(exc).__name__})") from None
            except (httpx.TransportError, httpx.DecodingError) as exc:
                raise Transient(f"{method} {_safe_url(httpx.URL(url))} failed: {type(exc).__name__}") from None
            break
        elapsed = (time.perf_counter() - started) * 1000
        self.pages.append(
            RawPage(method, _safe_url(response.request.url), response.status_code,
                    body.decode("utf-8", "replace"), elapsed)
        )
        return response, token

    async def step(self, what: str, send: Callable[[], Awaitable[T]]) -> T:
        """One request of a report — create, poll, page, download, stream — sent and classified
        by ``send``. A retriable failure sends *this request* again, after the wait the
        supervisor's policy gives; what earlier steps got (the report job id, pages read, the
        cursor) stays with the connector. Without a retry hook (plain unit tests), the error
        goes up as before."""
        attempt, cut = 1, 0
        while True:
            try:
                return await send()
            except RetriableError as err:
                if self._retry is None:
                    raise
                cut += isinstance(err, Malformed)
                delay = await self._retry(err, attempt, what, cut)  # raises when a budget is spent
                self.request_retries += 1
                attempt += 1
                if delay > 0:
                    await asyncio.sleep(delay)

    def report_usage(self, usage: Usage) -> None:
        if self._on_usage is not None:
            self._on_usage(usage)

    async def poll_wait(self, polls_so_far: int) -> None:
        """Wait before the next poll of an async job (interval grows with ``polls_so_far``)."""
        if self._poll_wait is not None:
            await self._poll_wait(polls_so_far)

    def raw_document(self) -> dict[str, Any]:
        return {"requests": self.requests, "pages": [p.as_json() for p in self.pages]}


def parse_json(response: httpx.Response) -> Any:
    """Decode a JSON body or raise Malformed (cut or unparseable: read again), keeping the body."""
    try:
        return json.loads(response.content)
    except ValueError as exc:
        raise Malformed(f"malformed JSON body: {exc}", status=response.status_code, body=response.content) from None


def parse_decimal(value: Any, field_name: str) -> Decimal:
    """Exact decimal from a string or JSON number; anything else is schema drift."""
    if isinstance(value, bool) or value is None:
        raise DataError(f"field {field_name!r} is {value!r}, expected a number")
    try:
        dec = Decimal(str(value))
    except ArithmeticError:
        raise DataError(f"field {field_name!r} is {value!r}, expected a number") from None
    if not dec.is_finite():  # Decimal("NaN") / Decimal("Infinity") parse, but are not metrics
        raise DataError(f"field {field_name!r} is {value!r}, expected a finite number")
    return dec


def parse_int(value: Any, field_name: str) -> int:
    dec = parse_decimal(value, field_name)
    if dec != dec.to_integral_value():
        raise DataError(f"field {field_name!r} is {value!r}, expected an integer")
    return int(dec)


@dataclass(slots=True)
class ConnectorSettings:
    """What a connector is given: its media name, API endpoint/version, options and secrets."""

    media: str
    base_url: str
    api_version: str
    secrets: dict[str, Secret] = field(default_factory=dict)
    options: dict[str, Any] = field(default_factory=dict)

    def bearer_header(self) -> dict[str, str]:
        """``Authorization`` for a static access token; with refresh-token credentials the
        HttpSession sets it per request from the media's token cache."""
        if "access_token" in self.secrets or "refresh_token" not in self.secrets:
            return {"Authorization": f"Bearer {self.secret('access_token')}"}
        return {}

    def secret(self, name: str) -> str:
        try:
            return self.secrets[name].get()
        except KeyError:
            from ingest.errors import AuthError

            raise AuthError(f"credential {name!r} is not configured for media {self.media!r}") from None


class Connector(ABC):
    """One ad platform's API. Subclasses declare ``name`` and implement ``fetch``."""

    #: registry key used by ``connector:`` in the config
    name: ClassVar[str]
    #: the platform's name in messages ("Meta Marketing API")
    platform: ClassVar[str] = ""
    #: the credentials (logical names) this connector needs
    credential_names: ClassVar[tuple[str, ...]] = ()
    #: API versions with release/sunset dates and sources (see ingest/media/versions.py)
    versions: ClassVar[tuple[ApiVersion, ...]] = ()
    #: the version used when the config does not pin one
    default_version: ClassVar[str] = ""
    #: keys allowed in the media's ``options`` (values are checked by ``__init__``)
    option_names: ClassVar[frozenset[str]] = frozenset()
    #: OAuth endpoint where refresh-token credentials buy access tokens; None = static tokens only
    token_url: ClassVar[str | None] = None
    #: how the token endpoint takes its parameters: "form" (POST body) or "query" (GET)
    token_style: ClassVar[str] = "form"

    def __init__(self, settings: ConnectorSettings) -> None:
        self.settings = settings

    @property
    def media(self) -> str:
        return self.settings.media

    #: days the platform keeps restating a date's numbers (late conversions): the nightly
    #: refetches this many days before yesterday unless the media's ``lookback_days`` says otherwise
    late_window_days: ClassVar[int] = 0

    @abstractmethod
    async def fetch(self, http: HttpSession, account: str, day: date, last: date | None = None) -> list[Row]:
        """Fetch one account's report for ``day`` (through ``last``, daily rows: one report covers a
        refetch window); raise only ``ingest.errors`` subclasses."""

    def minimum_requests(self) -> int:
        """Fewest requests one report needs with this connector's flow (for the benchmark)."""
        return 1

    @classmethod
    def uses_report_jobs(cls, options: dict[str, Any]) -> bool:
        """Whether each report is an async job on the platform (create → poll → download), which
        counts against the platform's open-jobs limit: the supervisor then holds one of the
        media's ``max_concurrent_jobs`` slots around the report's fetch (no Ray call of its own)."""
        return False

    #: the zone of every account when the platform has only one (Yahoo! JAPAN: Asia/Tokyo)
    fixed_timezone: ClassVar[str | None] = None

    async def account_timezone(self, http: HttpSession, account: str) -> str | None:
        """The account's IANA time zone, whose local dates the reports are in; None = unknown."""
        return self.fixed_timezone


def ensure_classified(exc: BaseException, media: str, account: str, day: date) -> IngestError:
    """Last line of defence: an unexpected exception from a connector becomes a DataError."""
    if isinstance(exc, IngestError):
        return exc.with_report(media, account, day.isoformat())
    return DataError(f"unclassified {type(exc).__name__}: {exc}", media=media, account=account, date=day.isoformat())
