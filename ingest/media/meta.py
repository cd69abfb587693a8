"""Meta Marketing API insights: one campaign-level report per (ad account, day or range).

A range is one report: ``time_range`` {since, until} with ``time_increment=1`` returns one row
per campaign and day (``date_start`` = ``date_stop`` = that day), so the nightly refetch of
the 28-day attribution window costs one report per account, not 28.

Flows (option ``mode``):
- ``sync`` (default): ``GET /{v}/act_{id}/insights`` with cursor paging. Only
  ``paging.next`` means another page; ``paging.cursors.after`` is on every page, so it is
  *used* for the next request but never *tested* for more. We build the next URL ourselves
  from the cursor rather than following ``next`` verbatim: a URL from a response must not
  receive our Authorization header.
- ``async``: ``POST /{v}/act_{id}/insights`` → ``report_run_id``; ``GET /{v}/{id}`` until
  ``async_status`` is ``Job Completed`` (and 100 %); ``GET /{v}/{id}/insights`` (paged).

Conversions = the sum of ``actions[].value`` whose ``action_type`` equals the option
``conversion_action_type`` (default ``offsite_conversion.fb_pixel_purchase``); a campaign
without that action has 0. Spend is ``spend`` (a string in account currency units).

Sources: developers.facebook.com/docs/marketing-api/insights (+ /best-practices),
/docs/marketing-api/error-reference, /docs/marketing-api/insights/error-codes,
/docs/marketing-api/overview/rate-limiting, /docs/graph-api/overview/rate-limiting;
facebook-python-business-sdk ``facebookads/utils/fberrcodes.py``. See docs/connectors.md.
"""

from __future__ import annotations

import json
from datetime import date
from decimal import Decimal
from typing import Any, ClassVar

import httpx

from ingest.config import ACCOUNT_RE
from ingest.errors import (
    JobFailed,
    AuthError,
    BadRequest,
    ConfigError,
    DataError,
    IngestError,
    Throttled,
    Transient,
)
from ingest.media.base import (
    Connector,
    ConnectorSettings,
    HttpSession,
    Row,
    Usage,
    parse_decimal,
    parse_int,
    parse_json,
)
from ingest.media.versions import ApiVersion

#: app (4), user (17), page (32), ad account (613) and business-use-case (80000–80014) limits
THROTTLE_CODES = frozenset({4, 17, 32, 613} | set(range(80000, 80015)))
#: of those, the limits of one ad account (rate-limiting docs): pause that account only; 4 and 32 are app/page-wide
ACCOUNT_THROTTLE_CODES = frozenset({17, 613} | set(range(80000, 80015)))
#: invalid/expired session or token
AUTH_CODES = frozenset({102, 190, 463, 467})
#: permission errors (10, 200–299): the token cannot read this account; retrying cannot help
PERMISSION_CODES = frozenset({10} | set(range(200, 300)))
#: code 2 is "temporary", except these insights subcodes that describe the request itself
CODE2_FATAL_SUBCODES = frozenset({1504041, 1504042})
#: (code, subcode) pairs the insights error-code table says to retry
TRANSIENT_PAIRS = frozenset({(1, 99), (100, 1504018), (-2, 2490547)})

FIELDS = "account_id,campaign_id,campaign_name,impressions,clicks,spend,actions,account_currency"
RUNNING = frozenset({"Job Not Started", "Job Started", "Job Running"})
FAILED = frozenset({"Job Failed", "Job Skipped"})
MAX_PAGES = 10_000


_META_SOURCE = (
    "Meta Marketing API changelog, versions (developers.facebook.com/docs/marketing-api/marketing-api-changelog)"
)
#: Marketing API versions; its sunset dates come earlier than the Graph API's for the same number
VERSIONS = (
    ApiVersion("v21.0", None, date(2025, 9, 9), _META_SOURCE, supported=False),
    ApiVersion("v22.0", None, date(2026, 2, 19), _META_SOURCE, supported=False),
    ApiVersion("v23.0", None, date(2026, 6, 9), _META_SOURCE, supported=False),
    ApiVersion("v24.0", None, date(2026, 11, 10), _META_SOURCE, supported=False),
    ApiVersion("v25.0", None, date(2027, 2, 23), _META_SOURCE),
    ApiVersion("v26.0", date(2026, 7, 29), None, _META_SOURCE),
    ApiVersion("v27.0", date(2026, 11, 4), None, _META_SOURCE),
)
DEFAULT_VERSION = "v27.0"

def check_id(value: Any, what: str) -> str:
    """An id from a response must look like one: it reaches GCS paths and SQL."""
    if not isinstance(value, str) or not ACCOUNT_RE.fullmatch(value):
        raise DataError(f"{what} {str(value)[:80]!r} is not a valid id")
    return value


def _json_header(headers: httpx.Headers, name: str) -> Any:
    raw = headers.get(name)
    if not raw:
        return None
    try:
        return json.loads(raw)
    except ValueError:
        return None  # a malformed usage header must not fail a report


def parse_usage(headers: httpx.Headers) -> Usage | None:
    """Highest utilization across the usage headers; regain estimate in seconds."""
    util: float | None = None
    regain: float | None = None

    def seen(pct: Any) -> None:
        nonlocal util
        if isinstance(pct, (int, float)) and not isinstance(pct, bool):
            util = max(util or 0.0, float(pct) / 100)

    buc = _json_header(headers, "x-business-use-case-usage")
    if isinstance(buc, dict):
        for entries in buc.values():
            for entry in entries if isinstance(entries, list) else []:
                if not isinstance(entry, dict):
                    continue
                for key in ("call_count", "total_cputime", "total_time"):
                    seen(entry.get(key))
                eta = entry.get("estimated_time_to_regain_access")
                if isinstance(eta, (int, float)) and eta > 0:
                    regain = max(regain or 0.0, float(eta) * 60)  # documented in minutes
    app = _json_header(headers, "x-app-usage")
    if isinstance(app, dict):
        for key in ("call_count", "total_cputime", "total_time"):
            seen(app.get(key))
    # Insights-specific: {"app_id_util_pct", "acc_id_util_pct", "ads_api_access_tier"} (rate-limiting docs)
    insights = _json_header(headers, "x-fb-ads-insights-throttle")
    if isinstance(insights, dict):
        seen(insights.get("app_id_util_pct"))
        seen(insights.get("acc_id_util_pct"))
    acct = _json_header(headers, "x-ad-account-usage")
    if isinstance(acct, dict):
        seen(acct.get("acc_id_util_pct"))
        reset = acct.get("reset_time_duration")
        if util is not None and util >= 1 and isinstance(reset, (int, float)) and reset > 0:
            regain = max(regain or 0.0, float(reset))
    if util is None and regain is None:
        return None
    return Usage(utilization=min(util or 0.0, 1.0), regain_after_s=regain)


def _retry_after(headers: httpx.Headers) -> float | None:
    usage = parse_usage(headers)
    if usage is not None and usage.regain_after_s:
        return usage.regain_after_s
    raw = headers.get("retry-after")
    try:
        return float(raw) if raw else None
    except ValueError:
        return None


def classify(response: httpx.Response) -> IngestError | None:
    """Map a Graph error (or a non-2xx status) to our taxonomy; None means success."""
    status = response.status_code
    err: dict[str, Any] = {}
    try:
        body = json.loads(response.content)
        if isinstance(body, dict) and isinstance(body.get("error"), dict):
            err = body["error"]
    except ValueError:
        pass
    if not err and status < 400:
        return None
    code = err.get("code")
    sub = err.get("error_subcode")
    tag = f"{code}/{sub}" if sub is not None else (str(code) if code is not None else None)
    kw: dict[str, Any] = {"status": status, "body": response.content, "code": tag}
    msg = str(err.get("message") or f"HTTP {status}")
    if code in THROTTLE_CODES:
        scope = "account" if code in ACCOUNT_THROTTLE_CODES else "app"
        return Throttled(f"throttled ({scope}): {msg}", retry_after=_retry_after(response.headers), scope=scope, **kw)
    if code in AUTH_CODES:
        return AuthError(f"access token rejected: {msg}", **kw)
    if code in PERMISSION_CODES:
        return AuthError(f"permission denied: {msg}", **kw)
    if code == 2 and sub in CODE2_FATAL_SUBCODES:
        return BadRequest(msg, **kw)
    if code in (1, 2) or (code, sub) in TRANSIENT_PAIRS or err.get("is_transient") is True:
        return Transient(msg, **kw)
    if status == 429:
        return Throttled(f"throttled: {msg}", retry_after=_retry_after(response.headers), **kw)
    if status >= 500:
        return Transient(msg, **kw)
    if status in (401, 403) and code is None:
        return AuthError(msg, **kw)
    return BadRequest(msg, **kw)


def _body(response: httpx.Response) -> dict[str, Any]:
    body = parse_json(response)  # a cut body: Malformed, read again
    if not isinstance(body, dict):
        raise DataError("expected a JSON object", status=response.status_code, body=response.content)
    return body


class MetaConnector(Connector):
    name: ClassVar[str] = "meta"
    credential_names: ClassVar[tuple[str, ...]] = ("access_token",)
    platform = "Meta Marketing API"
    versions = VERSIONS
    default_version = DEFAULT_VERSION
    option_names = frozenset({"mode", "page_limit", "conversion_action_type", "max_polls"})

    def __init__(self, settings: ConnectorSettings) -> None:
        super().__init__(settings)
        opts = settings.options
        self.mode = opts.get("mode", "sync")
        self.page_limit = opts.get("page_limit", 500)
        self.conversion_action_type = opts.get("conversion_action_type", "offsite_conversion.fb_pixel_purchase")
        self.max_polls = opts.get("max_polls", 60)
        if self.mode not in ("sync", "async"):
            raise ConfigError(f"meta option mode must be 'sync' or 'async', not {self.mode!r}")
        for key, value in (("page_limit", self.page_limit), ("max_polls", self.max_polls)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"meta option {key} must be a positive integer, not {value!r}")
        if not isinstance(self.conversion_action_type, str) or not self.conversion_action_type:
            raise ConfigError("meta option conversion_action_type must be a non-empty string")

    def minimum_requests(self) -> int:
        return 3 if self.mode == "async" else 1  # async: create + one poll + one result page

    # -- plumbing -------------------------------------------------------------------------------
    def _url(self, *parts: str) -> str:
        return "/".join([self.settings.base_url.rstrip("/"), self.settings.api_version, *parts])

    def _headers(self) -> dict[str, str]:
        # the token goes in a header: recorded URLs (HttpSession.pages) never carry it
        return self.settings.bearer_header()

    async def _call(self, http: HttpSession, what: str, method: str, url: str, **kw: Any) -> dict[str, Any]:
        """One request as one retriable step: a failure re-sends this request only."""
        return await http.step(what, lambda: self._send(http, method, url, **kw))

    async def _send(self, http: HttpSession, method: str, url: str, **kw: Any) -> dict[str, Any]:
        response = await http.request(method, url, headers=self._headers(), **kw)
        usage = parse_usage(response.headers)
        if usage is not None:
            http.report_usage(usage)
        error = classify(response)
        if error is not None:
            raise error
        return _body(response)

    async def account_timezone(self, http: HttpSession, account: str) -> str | None:
        """The ad account's ``timezone_name``: insights days are that zone's days."""
        body = await self._call(http, "account", "GET", self._url(f"act_{self._act(account)}"),
                                params={"fields": "timezone_name"})
        tz = body.get("timezone_name")
        return tz if isinstance(tz, str) and tz else None

    @staticmethod
    def _act(account: str) -> str:
        digits = account.removeprefix("act_")
        if not digits.isdigit():
            raise BadRequest(f"Meta ad account id must be digits (optionally act_-prefixed), not {account!r}")
        return digits

    def _params(self, day: date, last: date | None = None) -> dict[str, str]:
        until = last or day
        return {
            "level": "campaign",
            "fields": FIELDS,
            "time_range": json.dumps({"since": day.isoformat(), "until": until.isoformat()}, separators=(",", ":")),
            "time_increment": "1",
            "limit": str(self.page_limit),
        }

    # -- the report --------------------------------------------------------------------------------
    #: numbers for a day keep moving for up to 28 days (the default and maximum of Airbyte's
    #: ``insights_lookback_window``; Meta's 28-day click attribution window)
    late_window_days = 28

    async def fetch(self, http: HttpSession, account: str, day: date, last: date | None = None) -> list[Row]:
        last = last or day
        try:
            act = self._act(account)
            if self.mode == "async":
                raw = await self._fetch_async(http, act, day, last)
            else:
                raw = await self._pages(http, self._url(f"act_{act}", "insights"), self._params(day, last))
            return [self._row(item, account, act, day, last) for item in raw]
        except IngestError as exc:
            raise exc.with_report(self.media, account, day.isoformat()) from None

    async def _pages(self, http: HttpSession, url: str, params: dict[str, str]) -> list[Any]:
        rows: list[Any] = []
        after: str | None = None
        seen: set[str] = set()
        for page in range(1, MAX_PAGES + 1):
            body = await self._call(http, f"page {page}", "GET", url,
                                    params={**params, **({"after": after} if after else {})})
            data = body.get("data")
            if not isinstance(data, list):
                raise DataError("insights response has no 'data' list", body=json.dumps(body))
            rows.extend(data)
            paging: dict[str, Any] = body["paging"] if isinstance(body.get("paging"), dict) else {}
            if not paging.get("next"):
                return rows
            cursors = paging.get("cursors")
            after = cursors.get("after") if isinstance(cursors, dict) else None
            if not isinstance(after, str) or not after or after in seen:
                raise DataError("paging.next is set but paging.cursors.after is missing or repeats",
                                body=json.dumps(body))
            seen.add(after)
        raise DataError(f"more than {MAX_PAGES} pages")

    @classmethod
    def uses_report_jobs(cls, options: dict[str, Any]) -> bool:
        return options.get("mode", "sync") == "async"  # async insights: a report run per report

    async def _fetch_async(self, http: HttpSession, act: str, day: date, last: date | None = None) -> list[Any]:
        created = await self._call(http, "create", "POST", self._url(f"act_{act}", "insights"),
                                   data=self._params(day, last))
        run_id = created.get("report_run_id")
        if isinstance(run_id, int) and not isinstance(run_id, bool):
            run_id = str(run_id)
        if not isinstance(run_id, str) or not run_id.isdigit():
            raise DataError(f"report_run_id {str(run_id)[:40]!r} is not a numeric id", body=json.dumps(created))
        for polls in range(self.max_polls):
            await http.poll_wait(polls)
            job = await self._call(http, f"poll {polls + 1}", "GET", self._url(run_id))
            status = job.get("async_status")
            pct = job.get("async_percent_completion", 100)
            if status == "Job Completed" and pct == 100:
                return await self._pages(http, self._url(run_id, "insights"), {"limit": str(self.page_limit)})
            if status in FAILED:
                # "Report Failed. Try again later." (insights error table: -2/2490547); a new run is a fresh job
                raise JobFailed(f"async report run {run_id} ended with {status!r}", body=json.dumps(job),
                                code=str(status))
            if status not in RUNNING and status != "Job Completed":
                raise DataError(f"unknown async_status {str(status)[:40]!r}", body=json.dumps(job))
        raise JobFailed(f"async report run {run_id} not complete after {self.max_polls} polls", code="poll_limit")

    def _row(self, item: Any, account: str, act: str, day: date, last: date | None = None) -> Row:
        if not isinstance(item, dict):
            raise DataError(f"insights row is {type(item).__name__}, expected an object")
        required = ("campaign_id", "campaign_name", "impressions", "clicks", "spend", "account_currency", "date_start")
        missing = [k for k in required if k not in item]
        if missing:
            raise DataError(f"insights row lacks {', '.join(missing)} (schema drift?); keys: {sorted(item)}",
                            body=json.dumps(item))
        if "account_id" in item and str(item["account_id"]) != act:
            raise DataError(f"row of account {str(item['account_id'])[:40]!r} in a report for {act!r}")
        last = last or day
        start = item["date_start"]
        try:
            row_day = date.fromisoformat(start) if isinstance(start, str) else None
        except ValueError:
            row_day = None
        if row_day is None or item.get("date_stop", start) != start or not day <= row_day <= last:
            span = str(day) if last == day else f"{day}..{last}"
            raise DataError(f"row for {str(start)[:20]!r}..{str(item.get('date_stop'))[:20]!r} in a report for {span}")
        currency = item["account_currency"]
        if not (isinstance(currency, str) and len(currency) == 3 and currency.isalpha() and currency.isupper()):
            raise DataError(f"account_currency {str(currency)[:20]!r} is not an ISO 4217 code")
        name = item["campaign_name"]
        if not isinstance(name, str):
            raise DataError("campaign_name is not a string")
        return Row(
            date=row_day,
            media=self.media,
            account_id=account,
            campaign_id=check_id(item["campaign_id"], "campaign id"),
            campaign_name=name,
            impressions=parse_int(item["impressions"], "impressions"),
            clicks=parse_int(item["clicks"], "clicks"),
            spend=parse_decimal(item["spend"], "spend"),
            conversions=self._conversions(item.get("actions")),
            currency=currency,
        )

    def _conversions(self, actions: Any) -> Decimal:
        if actions is None:
            return Decimal(0)
        if not isinstance(actions, list):
            raise DataError("actions is not a list")
        total = Decimal(0)
        for action in actions:
            if isinstance(action, dict) and action.get("action_type") == self.conversion_action_type:
                total += parse_decimal(action.get("value"), "actions.value")
        return total
