"""Google Ads API REST simulator: ``customers/{cid}/googleAds:searchStream``.

Wire format follows developers.google.com/google-ads/api/rest (SearchGoogleAdsStreamResponse,
GoogleAdsFailure, QuotaErrorDetails): the body is a JSON *array* of batches
``{results, fieldMask, requestId}``; proto3 JSON mapping makes int64 metrics strings, doubles
numbers, and *omits* fields at their default value (a campaign with no clicks has no
``metrics.clicks``). Errors are ``google.rpc.Status`` objects; searchStream wraps them in an
array too.
"""

from __future__ import annotations

import re
import secrets
from datetime import date, timedelta
from typing import Any

from aiohttp import web

from sandbox.simcore import Ctx, SimulatedError, Simulator, json_response
from sandbox.truth import FAILING_ACCOUNT, account_timezone

#: GAQL field → (resource, JSON key)
FIELDS = {
    "customer.id": ("customer", "id"),
    "customer.currency_code": ("customer", "currencyCode"),
    "campaign.id": ("campaign", "id"),
    "campaign.name": ("campaign", "name"),
    "metrics.impressions": ("metrics", "impressions"),
    "metrics.clicks": ("metrics", "clicks"),
    "metrics.cost_micros": ("metrics", "costMicros"),
    "metrics.conversions": ("metrics", "conversions"),
    "segments.date": ("segments", "date"),
}
_SELECT = re.compile(r"^\s*SELECT\s+(?P<fields>.+?)\s+FROM\s+(?P<resource>\w+)\s*(?P<rest>.*)$",
                     re.IGNORECASE | re.DOTALL)
_CUSTOMER_TZ = re.compile(r"^\s*SELECT\s+customer\.time_zone\s+FROM\s+customer\s*$", re.IGNORECASE)
#: major versions that answer; any other gets 400 INVALID_ARGUMENT with
#: requestError UNSUPPORTED_VERSION (tests/fixtures/official/google_ads/error_unsupported_version.json)
LIVE_VERSIONS = ("v23", "v24", "v25", "v26")
_DATE = re.compile(r"segments\.date\s*=\s*'(\d{4}-\d{2}-\d{2})'", re.IGNORECASE)
#: a custom range (developers.google.com/google-ads/api/docs/query/date-ranges)
_BETWEEN = re.compile(r"segments\.date\s+BETWEEN\s+'(\d{4}-\d{2}-\d{2})'\s+AND\s+'(\d{4}-\d{2}-\d{2})'",
                      re.IGNORECASE)


def _status(code: int, status: str, message: str, errors: list[dict[str, Any]] | None = None,
            version: str = "v21", headers: dict[str, str] | None = None) -> web.Response:
    err: dict[str, Any] = {"code": code, "message": message, "status": status}
    if errors:
        err["details"] = [
            {
                "@type": f"type.googleapis.com/google.ads.googleads.{version}.errors.GoogleAdsFailure",
                "errors": errors,
                "requestId": secrets.token_urlsafe(16),
            }
        ]
    # searchStream answers with a JSON array, errors included
    return json_response([{"error": err}], status=code, headers=headers)


def _duration(seconds: float) -> str:
    return f"{int(seconds)}s" if seconds == int(seconds) else f"{seconds:.3f}s"


class GoogleAdsSimulator(Simulator):
    media = "google_ads"

    def routes(self) -> list[web.RouteDef]:
        return [web.post("/{ver}/customers/{cid}/googleAds:searchStream", self.search_stream)]

    @staticmethod
    def _version(request: web.Request) -> str:
        return request.match_info.get("ver", "v21")

    def auth_error(self, request: web.Request, missing: bool) -> web.Response:
        code = "OAUTH_TOKEN_HEADER_INVALID" if missing else "OAUTH_TOKEN_INVALID"
        return _status(
            401,
            "UNAUTHENTICATED",
            "Request is missing required authentication credential. Expected OAuth 2 access token, "
            "login cookie or other valid authentication credential.",
            [{"errorCode": {"authenticationError": code}, "message": "Oauth token is invalid."}],
            self._version(request),
        )

    def denied_error(self, request: web.Request, account: str) -> web.Response:
        return _status(
            403,
            "PERMISSION_DENIED",
            "The caller does not have permission",
            [{"errorCode": {"authorizationError": "USER_PERMISSION_DENIED"},
              "message": "User doesn't have permission to access customer."}],
            self._version(request),
        )

    def throttle_error(self, request: web.Request, scope: str, account: str, wait_s: float) -> web.Response:
        delay = max(1, int(wait_s + 0.999))
        rate_scope, rate_name = ("DEVELOPER", "Requests per developer token") if scope == "app" else (
            "ACCOUNT", "Requests per account")
        return _status(
            429,
            "RESOURCE_EXHAUSTED",
            "Resource has been exhausted (e.g. check quota).",
            [
                {
                    "errorCode": {"quotaError": "RESOURCE_TEMPORARILY_EXHAUSTED" if scope == "account"
                                  else "RESOURCE_EXHAUSTED"},
                    "message": f"Too many requests. Retry in {delay} seconds.",
                    "details": {"quotaErrorDetails": {"rateScope": rate_scope, "rateName": rate_name,
                                                      "retryDelay": _duration(delay)}},
                }
            ],
            self._version(request),
        )

    def server_error(self, request: web.Request, down: bool = False) -> web.Response:
        if down or self.rng.random() < 0.5:
            return _status(503, "UNAVAILABLE", "The service is currently unavailable.")
        return _status(
            500,
            "INTERNAL",
            "Internal error encountered.",
            [{"errorCode": {"internalError": "INTERNAL_ERROR"}, "message": "An internal error has occurred."}],
            self._version(request),
        )

    def token(self, request: web.Request) -> str | None:
        if not request.headers.get("developer-token", "").strip():
            return None
        return super().token(request)

    async def search_stream(self, request: web.Request) -> web.StreamResponse:
        version = self._version(request)
        if version not in LIVE_VERSIONS:
            return _status(400, "INVALID_ARGUMENT", "Request contains an invalid argument.",
                           [{"errorCode": {"requestError": "UNSUPPORTED_VERSION"},
                             "message": f"Version {version} is deprecated. Requests to this version will be blocked."}],
                           version)
        cid = request.match_info["cid"]
        try:
            body = await request.json()
        except ValueError:
            body = None

        async def handle(ctx: Ctx) -> web.Response:
            version = self._version(request)
            if not cid.isdigit():
                raise SimulatedError(_status(400, "INVALID_ARGUMENT", "Request contains an invalid argument.",
                                             [{"errorCode": {"requestError": "INVALID_CUSTOMER_ID"},
                                               "message": "Invalid customer ID '" + cid + "'."}], version))
            login = request.headers.get("login-customer-id")
            if login is not None and not login.isdigit():
                raise SimulatedError(_status(400, "INVALID_ARGUMENT", "Request contains an invalid argument.",
                                             [{"errorCode": {"requestError": "INVALID_LOGIN_CUSTOMER_ID"},
                                               "message": "login-customer-id must be digits."}], version))
            if cid == FAILING_ACCOUNT:
                raise SimulatedError(self.server_error(request))
            query = body.get("query") if isinstance(body, dict) else None
            if isinstance(query, str) and _CUSTOMER_TZ.match(query):
                return json_response([{"results": [{"customer": {"resourceName": f"customers/{cid}",
                                                                 "timeZone": account_timezone("google_ads", cid)}}],
                                       "fieldMask": "customer.timeZone", "requestId": f"sim-{self.job_seq}"}])
            fields, first, last = self._parse(query, version)
            return self._stream(cid, fields, first, last, ctx.drift)

        return await self.serve(request, "searchStream", cid, handle, data=True)

    def _parse(self, query: Any, version: str) -> tuple[list[str], date, date]:
        def bad(code: str, msg: str) -> SimulatedError:
            return SimulatedError(_status(400, "INVALID_ARGUMENT", "Request contains an invalid argument.",
                                          [{"errorCode": {"queryError": code}, "message": msg}], version))

        if not isinstance(query, str):
            raise bad("UNEXPECTED_END_OF_QUERY", "Missing query.")
        m = _SELECT.match(query)
        if not m:
            raise bad("UNEXPECTED_INPUT", "Error in query: unexpected input.")
        fields = [f.strip() for f in m.group("fields").split(",")]
        for f in fields:
            if f not in FIELDS:
                raise bad("UNRECOGNIZED_FIELD", f"Unrecognized field in the query: '{f}'.")
        if m.group("resource").lower() != "campaign":
            raise bad("INVALID_RESOURCE", "This simulator serves FROM campaign only.")
        d = _BETWEEN.search(m.group("rest")) or _DATE.search(m.group("rest"))
        if not d:
            raise bad("EXPECTED_FILTERS_ON_DATE_RANGE", "Filter on segments.date = 'YYYY-MM-DD' is required.")
        try:
            first = date.fromisoformat(d.group(1))
            last = date.fromisoformat(d.group(2)) if d.re is _BETWEEN else first
        except ValueError:
            raise bad("INVALID_VALUE_WITH_DURING_OPERATOR", "Invalid date.") from None
        if last < first:
            raise bad("INVALID_VALUE_WITH_BETWEEN_OPERATOR", "Invalid date range.")
        return fields, first, last

    def _stream(self, cid: str, fields: list[str], first: date, last: date, drift: bool) -> web.Response:
        results = []
        pairs = [(first + timedelta(days=i), t) for i in range((last - first).days + 1)
                 for t in self.truth(cid, first + timedelta(days=i))]
        for day, t in pairs:
            cost_micros = int(t["spend"] * 1_000_000)
            conv = t["conversions"]
            values: dict[str, Any] = {
                "customer.id": cid,
                "customer.currency_code": t["currency"],
                "campaign.id": t["campaign_id"],
                "campaign.name": t["campaign_name"],
                "metrics.impressions": str(t["impressions"]) if t["impressions"] else None,
                "metrics.clicks": str(t["clicks"]) if t["clicks"] else None,
                "metrics.cost_micros": str(cost_micros) if cost_micros else None,
                "metrics.conversions": ((int(conv) if conv == conv.to_integral_value() else float(conv))
                                        if conv else None),
                "segments.date": day.isoformat(),
            }
            row: dict[str, Any] = {}
            for f in fields:
                resource, key = FIELDS[f]
                obj = row.setdefault(resource, {})
                if resource == "campaign" and "resourceName" not in obj:
                    obj["resourceName"] = f"customers/{cid}/campaigns/{t['campaign_id']}"
                if resource == "customer" and "resourceName" not in obj:
                    obj["resourceName"] = f"customers/{cid}"
                if values[f] is not None:  # proto3 JSON omits default values
                    if drift and key == "costMicros":
                        key = "cost_micros"
                    obj[key] = values[f]
            results.append(row)
        mask = ",".join(
            f"{FIELDS[f][0]}.{FIELDS[f][1]}" for f in fields
        )
        size = max(1, self.config.page_size)
        batches = [
            {"results": results[i: i + size], "fieldMask": mask, "requestId": secrets.token_urlsafe(16)}
            for i in range(0, len(results), size)
        ] or [{"fieldMask": mask, "requestId": secrets.token_urlsafe(16)}]
        # "query_resource_consumption for non-Summary responses is returned in the final batch"
        batches[-1]["queryResourceConsumption"] = str(len(results) + 1)
        if not drift:
            self.stats_["served_reports"] += 1
        return json_response(batches)
