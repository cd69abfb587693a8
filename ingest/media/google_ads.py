"""Google Ads API (REST): one ``googleAds:searchStream`` GAQL query per (customer, day or range).

A range is ``segments.date BETWEEN 'first' AND 'last'`` (one row per campaign and day, one
stream: developers.google.com/google-ads/api/docs/query/date-ranges), so the nightly refetch
of the conversion window costs one request per customer.

The response is a JSON *array* of batches ``{results, fieldMask, requestId}`` (one HTTP
response, no paging). proto3 JSON mapping shapes the values: int64 (``impressions``,
``clicks``, ``costMicros``, ids) are strings, doubles (``conversions``) numbers, and fields
at their default value are *omitted* — so a missing metric is 0, while an *unknown* key is
schema drift (the ``fieldMask`` says exactly what was selected). Numbers are parsed straight
to ``Decimal`` (never through float); spend = ``costMicros`` / 1,000,000 exactly.

Sources: developers.google.com/google-ads/api/reference/rpc/vNN/SearchGoogleAdsStreamResponse,
/QuotaErrorDetails, /InternalErrorEnum.InternalError, google.rpc.Status/Code/RetryInfo
(googleapis). See docs/connectors.md.
"""

from __future__ import annotations

import json
import re
from datetime import date
from decimal import Decimal
from typing import Any, ClassVar

import httpx

from ingest.config import ACCOUNT_RE
from ingest.errors import AuthError, BadRequest, ConfigError, DataError, IngestError, Malformed, Throttled, Transient
from ingest.media.base import Connector, ConnectorSettings, HttpSession, Row, parse_decimal, parse_int
from ingest.media.versions import ApiVersion

QUERY = (
    "SELECT customer.id, customer.currency_code, campaign.id, campaign.name, "
    "metrics.impressions, metrics.clicks, metrics.cost_micros, metrics.conversions, segments.date "
    "FROM campaign WHERE {where}"
)
#: the JSON keys each selected resource may carry (resourceName is always returned)
EXPECTED = {
    "customer": {"resourceName", "id", "currencyCode"},
    "campaign": {"resourceName", "id", "name"},
    "metrics": {"impressions", "clicks", "costMicros", "conversions"},
    "segments": {"date"},
}
MICROS = Decimal(1_000_000)
RETRYABLE_STATUSES = frozenset({"INTERNAL", "UNAVAILABLE", "DEADLINE_EXCEEDED", "ABORTED"})
AUTH_STATUSES = frozenset({"UNAUTHENTICATED", "PERMISSION_DENIED"})
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)s\s*$")


_GOOGLE_SOURCE = (
    "Google Ads API sunset dates and release notes (developers.google.com/google-ads/api/docs/sunset-dates)"
)
#: A major version always serves its latest minor. v23/v24 still work until about February 2027
#: but are not supported here: the parser and fixtures follow v25/v26.
VERSIONS = (
    ApiVersion("v19", None, date(2026, 2, 11), _GOOGLE_SOURCE, supported=False),
    ApiVersion("v20", None, date(2026, 6, 10), _GOOGLE_SOURCE, supported=False),
    ApiVersion("v21", None, date(2026, 8, 5), _GOOGLE_SOURCE, supported=False),
    ApiVersion("v22", None, date(2026, 10, 7), _GOOGLE_SOURCE, supported=False),
    ApiVersion("v23", None, None, _GOOGLE_SOURCE + "; sunset announced for about February 2027", supported=False),
    ApiVersion("v24", None, None, _GOOGLE_SOURCE, supported=False),
    ApiVersion("v25", None, None, _GOOGLE_SOURCE),
    ApiVersion("v26", date(2026, 10, 14), None, _GOOGLE_SOURCE),
)
DEFAULT_VERSION = "v26"

def check_id(value: Any, what: str) -> str:
    """An id from a response must look like one: it reaches GCS paths and SQL."""
    if not isinstance(value, str) or not ACCOUNT_RE.fullmatch(value):
        raise DataError(f"{what} {str(value)[:80]!r} is not a valid id")
    return value


def _duration_s(value: Any) -> float | None:
    """google.protobuf.Duration JSON ("2s", "1.500s") → seconds."""
    m = _DURATION.match(value) if isinstance(value, str) else None
    return float(m.group(1)) if m else None


def _loads(content: bytes) -> Any:
    return json.loads(content, parse_float=Decimal)


def _error_codes(err: dict[str, Any]) -> tuple[list[str], float | None, str]:
    """GoogleAdsFailure error codes ("quotaError:RESOURCE_EXHAUSTED"), the retry delay if any, and
    the quota's scope: ``rateScope`` ACCOUNT → "account" (back off that customer), else "app"
    (DEVELOPER: the whole developer token)."""
    codes: list[str] = []
    delay: float | None = None
    scope = "app"
    for detail in err.get("details") or []:
        if not isinstance(detail, dict):
            continue
        if str(detail.get("@type", "")).endswith("google.rpc.RetryInfo"):
            delay = _duration_s(detail.get("retryDelay")) or delay
        for e in detail.get("errors") or []:
            if not isinstance(e, dict):
                continue
            for category, value in (e.get("errorCode") or {}).items():
                codes.append(f"{category}:{value}")
            quota = (e.get("details") or {}).get("quotaErrorDetails") or {}
            if isinstance(quota, dict):
                delay = _duration_s(quota.get("retryDelay")) or delay
                if quota.get("rateScope") == "ACCOUNT":
                    scope = "account"
    return codes, delay, scope


def classify_error(status: int, err: dict[str, Any], headers: httpx.Headers, raw: bytes) -> IngestError:
    """Map a google.rpc.Status (HTTP status + ``status`` + GoogleAdsFailure) to our taxonomy."""
    rpc = str(err.get("status") or "")
    codes, delay, scope = _error_codes(err)
    if delay is None:
        try:
            delay = float(headers["retry-after"]) if headers.get("retry-after") else None
        except ValueError:
            delay = None
    tag = ",".join([x for x in [rpc] + codes[:3] if x]) or None
    kw: dict[str, Any] = {"status": status, "body": raw, "code": tag}
    msg = str(err.get("message") or f"HTTP {status}")
    if rpc == "RESOURCE_EXHAUSTED" or status == 429 or any(c.startswith("quotaError:") for c in codes):
        return Throttled(f"quota ({scope}): {msg}", retry_after=delay, scope=scope, **kw)
    if rpc in RETRYABLE_STATUSES or status >= 500 or "internalError:TRANSIENT_ERROR" in codes:
        return Transient(msg, **kw)
    if rpc in AUTH_STATUSES or status in (401, 403):
        return AuthError(msg, **kw)
    return BadRequest(msg, **kw)


class GoogleAdsConnector(Connector):
    name: ClassVar[str] = "google_ads"
    credential_names: ClassVar[tuple[str, ...]] = ("access_token", "developer_token")
    platform = "Google Ads API"
    versions = VERSIONS
    default_version = DEFAULT_VERSION
    option_names = frozenset({"login_customer_id"})
    token_url = "https://oauth2.googleapis.com/token"
    token_style = "form"

    def __init__(self, settings: ConnectorSettings) -> None:
        super().__init__(settings)
        login = settings.options.get("login_customer_id")
        if login is not None:
            login = str(login).replace("-", "")
            if not login.isdigit():
                raise ConfigError(f"google_ads option login_customer_id must be digits, not {login!r}")
        self.login_customer_id: str | None = login

    def _headers(self) -> dict[str, str]:
        headers = {
            **self.settings.bearer_header(),
            "developer-token": self.settings.secret("developer_token"),
        }
        if self.login_customer_id:
            headers["login-customer-id"] = self.login_customer_id
        return headers

    #: conversions are booked to the click date within the conversion window: 30 days by default
    #: (up to 90) — support.google.com/google-ads/answer/3123169
    late_window_days = 30

    async def fetch(self, http: HttpSession, account: str, day: date, last: date | None = None) -> list[Row]:
        last = last or day
        try:
            cid = account.replace("-", "")
            if not cid.isdigit():
                raise BadRequest(f"Google Ads customer id must be digits (dashes allowed), not {account!r}")
            url = (f"{self.settings.base_url.rstrip('/')}/{self.settings.api_version}"
                   f"/customers/{cid}/googleAds:searchStream")
            where = (f"segments.date = '{day.isoformat()}'" if last == day
                     else f"segments.date BETWEEN '{day.isoformat()}' AND '{last.isoformat()}'")
            body = {"query": QUERY.format(where=where)}

            async def stream() -> list[Row]:  # one retriable step: the request and the parse of its body
                response = await http.request("POST", url, json_body=body, headers=self._headers())
                return self._parse(response, account, cid, day, last)

            return await http.step("stream", stream)
        except IngestError as exc:
            raise exc.with_report(self.media, account, day.isoformat()) from None

    async def account_timezone(self, http: HttpSession, account: str) -> str | None:
        """``customer.time_zone`` (IANA): the zone ``segments.date`` is counted in."""
        cid = account.replace("-", "")
        url = f"{self.settings.base_url.rstrip('/')}/{self.settings.api_version}/customers/{cid}/googleAds:searchStream"
        async def ask() -> list[dict[str, Any]]:
            response = await http.request("POST", url, json_body={"query": "SELECT customer.time_zone FROM customer"},
                                          headers=self._headers())
            return self._batches(response)

        for batch in await http.step("customer", ask):
            for result in batch.get("results") or []:
                tz = (result.get("customer") or {}).get("timeZone") if isinstance(result, dict) else None
                if isinstance(tz, str) and tz:
                    return tz
        return None

    def _parse(
        self, response: httpx.Response, account: str, cid: str, day: date, last: date | None = None
    ) -> list[Row]:
        rows: list[Row] = []
        for batch in self._batches(response):
            for result in batch.get("results") or []:
                rows.append(self._row(result, account, cid, day, last or day))
        return rows

    def _batches(self, response: httpx.Response) -> list[dict[str, Any]]:
        """The searchStream array of batches, or the classified error it carries."""
        raw = response.content
        try:
            body = _loads(raw)
        except ValueError as exc:
            if response.status_code >= 400:
                return self._raise_status(response, {})
            raise Malformed(f"malformed JSON body: {exc}", status=response.status_code, body=raw) from None
        # errors come as a Status object, or (searchStream) as an element of the array
        items = body if isinstance(body, list) else [body]
        for item in items:
            if isinstance(item, dict) and isinstance(item.get("error"), dict):
                raise classify_error(response.status_code, item["error"], response.headers, raw)
        if response.status_code >= 400:
            return self._raise_status(response, {})
        if not isinstance(body, list):
            raise DataError("searchStream response is not a JSON array of batches", status=response.status_code,
                            body=raw)
        for batch in body:
            if not isinstance(batch, dict):
                raise DataError("searchStream batch is not an object", body=raw)
        return body

    @staticmethod
    def _raise_status(response: httpx.Response, err: dict[str, Any]) -> list[dict[str, Any]]:
        raise classify_error(response.status_code, err, response.headers, response.content)

    def _row(self, result: Any, account: str, cid: str, day: date, last: date) -> Row:
        if not isinstance(result, dict):
            raise DataError("searchStream result is not an object")
        for resource, value in result.items():
            allowed = EXPECTED.get(resource)
            if allowed is None or not isinstance(value, dict):
                raise DataError(f"unexpected resource {resource!r} in result (schema drift?)")
            extra = sorted(set(value) - allowed)
            if extra:
                raise DataError(f"unexpected field(s) {resource}.{', '.join(extra)} (schema drift?)")
        customer = result.get("customer", {})
        campaign = result.get("campaign", {})
        metrics = result.get("metrics", {})
        segments = result.get("segments", {})
        for obj, key in ((customer, "id"), (customer, "currencyCode"), (campaign, "id"), (campaign, "name"),
                         (segments, "date")):
            if key not in obj:
                raise DataError(f"result lacks {key!r} (schema drift?)")
        if customer["id"] != cid:
            raise DataError(f"row of customer {str(customer['id'])[:40]!r} in a report for {cid!r}")
        try:
            row_day = date.fromisoformat(segments["date"]) if isinstance(segments["date"], str) else None
        except ValueError:
            row_day = None
        if row_day is None or not day <= row_day <= last:
            span = str(day) if last == day else f"{day}..{last}"
            raise DataError(f"row for {str(segments['date'])[:20]!r} in a report for {span}")
        currency = customer["currencyCode"]
        if not (isinstance(currency, str) and len(currency) == 3 and currency.isalpha() and currency.isupper()):
            raise DataError(f"currencyCode {str(currency)[:20]!r} is not an ISO 4217 code")
        if not isinstance(campaign["name"], str):
            raise DataError("campaign.name is not a string")
        cost_micros = parse_int(metrics.get("costMicros", "0"), "metrics.costMicros")
        return Row(
            date=row_day,
            media=self.media,
            account_id=account,
            campaign_id=check_id(campaign["id"], "campaign id"),
            campaign_name=campaign["name"],
            impressions=parse_int(metrics.get("impressions", "0"), "metrics.impressions"),
            clicks=parse_int(metrics.get("clicks", "0"), "metrics.clicks"),
            spend=Decimal(cost_micros) / MICROS,
            conversions=parse_decimal(metrics.get("conversions", 0), "metrics.conversions"),
            currency=currency,
        )
