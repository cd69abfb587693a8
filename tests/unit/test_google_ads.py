"""Google Ads searchStream connector: google.rpc.Status table, batches, proto3 JSON values."""

from __future__ import annotations

import json
from datetime import date
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from connector_template import DAY, TOKEN, Script, assert_no_secret, make, respond, run

from ingest.errors import (
    AuthError,
    BadRequest,
    ConfigError,
    DataError,
    Malformed,
    Throttled,
    Transient,
)
from ingest.media.google_ads import GoogleAdsConnector

V = "v21"


def status(code: int, name: str, errors: list[dict[str, Any]] | None = None, extra: list[dict[str, Any]] | None = None,
           wrap: bool = False) -> Any:
    err: dict[str, Any] = {"code": code, "message": "msg", "status": name}
    details = list(extra or [])
    if errors:
        details.append({"@type": f"type.googleapis.com/google.ads.googleads.{V}.errors.GoogleAdsFailure",
                        "errors": errors, "requestId": "rq"})
    if details:
        err["details"] = details
    return [{"error": err}] if wrap else {"error": err}


def quota(delay: str | None, code: str = "RESOURCE_EXHAUSTED") -> list[dict[str, Any]]:
    details: dict[str, Any] = {"rateScope": "ACCOUNT", "rateName": "Requests per account"}
    if delay is not None:
        details["retryDelay"] = delay
    return [{"errorCode": {"quotaError": code}, "message": "Too many requests.",
             "details": {"quotaErrorDetails": details}}]


ERRORS = [  # (id, http status, body, headers, error, retry_after, code)
    ("quota-retry-delay", 429, status(429, "RESOURCE_EXHAUSTED", quota("2s")), {}, Throttled, 2.0,
     "RESOURCE_EXHAUSTED,quotaError:RESOURCE_EXHAUSTED"),
    ("quota-in-stream-array", 429, status(429, "RESOURCE_EXHAUSTED", quota("30s"), wrap=True), {}, Throttled, 30.0,
     "RESOURCE_EXHAUSTED,quotaError:RESOURCE_EXHAUSTED"),
    ("quota-fractional-delay", 429,
     status(429, "RESOURCE_EXHAUSTED", quota("1.500s", "RESOURCE_TEMPORARILY_EXHAUSTED")),
     {}, Throttled, 1.5, "RESOURCE_EXHAUSTED,quotaError:RESOURCE_TEMPORARILY_EXHAUSTED"),
    ("rpc-retry-info", 429, status(429, "RESOURCE_EXHAUSTED", extra=[
        {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "4s"}]), {}, Throttled, 4.0,
     "RESOURCE_EXHAUSTED"),
    ("retry-after-header", 429, status(429, "RESOURCE_EXHAUSTED", quota(None)), {"Retry-After": "12"}, Throttled, 12.0,
     "RESOURCE_EXHAUSTED,quotaError:RESOURCE_EXHAUSTED"),
    ("internal", 500, status(500, "INTERNAL", [{"errorCode": {"internalError": "INTERNAL_ERROR"}}]), {}, Transient,
     None, "INTERNAL,internalError:INTERNAL_ERROR"),
    ("unavailable", 503, status(503, "UNAVAILABLE", wrap=True), {}, Transient, None, "UNAVAILABLE"),
    ("deadline", 504, status(504, "DEADLINE_EXCEEDED"), {}, Transient, None, "DEADLINE_EXCEEDED"),
    ("transient-internal-error", 400,
     status(400, "INVALID_ARGUMENT", [{"errorCode": {"internalError": "TRANSIENT_ERROR"}}]),
     {}, Transient, None, "INVALID_ARGUMENT,internalError:TRANSIENT_ERROR"),
    ("invalid-argument", 400, status(400, "INVALID_ARGUMENT", [{"errorCode": {"queryError": "UNRECOGNIZED_FIELD"}}]),
     {}, BadRequest, None, "INVALID_ARGUMENT,queryError:UNRECOGNIZED_FIELD"),
    ("unauthenticated", 401,
     status(401, "UNAUTHENTICATED", [{"errorCode": {"authenticationError": "OAUTH_TOKEN_EXPIRED"}}]),
     {}, AuthError, None, "UNAUTHENTICATED,authenticationError:OAUTH_TOKEN_EXPIRED"),
    ("permission-denied", 403,
     status(403, "PERMISSION_DENIED", [{"errorCode": {"authorizationError": "USER_PERMISSION_DENIED"}}]),
     {}, AuthError, None, "PERMISSION_DENIED,authorizationError:USER_PERMISSION_DENIED"),
    ("not-found", 404, status(404, "NOT_FOUND"), {}, BadRequest, None, "NOT_FOUND"),
    ("gateway-html", 502, None, {}, Transient, None, None),
    ("bare-429", 429, None, {}, Throttled, None, None),
]


@pytest.mark.parametrize(("http_status", "body", "headers", "error", "retry_after", "code"),
                         [e[1:] for e in ERRORS], ids=[e[0] for e in ERRORS])
def test_error_table(http_status: int, body: Any, headers: dict[str, str], error: type, retry_after: float | None,
                     code: str | None) -> None:
    raw = "<html>oops</html>" if body is None else None
    with pytest.raises(error) as info:
        run(make(GoogleAdsConnector), Script([respond(http_status, body, headers, raw=raw)]), "1234567890")
    exc = info.value
    assert type(exc) is error and getattr(exc, "retry_after", None) == retry_after
    assert exc.code == code and exc.status == http_status
    assert (exc.media, exc.account, exc.date) == ("google_ads", "1234567890", DAY.isoformat())


def result(cid: str = "1234567890", camp: str = "111", metrics: dict[str, Any] | None = None,
           **over: Any) -> dict[str, Any]:
    r = {
        "customer": {"resourceName": f"customers/{cid}", "id": cid, "currencyCode": "JPY"},
        "campaign": {"resourceName": f"customers/{cid}/campaigns/{camp}", "id": camp, "name": "Search, JP"},
        "metrics": metrics if metrics is not None else {"impressions": "1000", "clicks": "20", "costMicros": "1234567",
                                                        "conversions": 1.5},
        "segments": {"date": DAY.isoformat()},
    }
    r.update(over)
    return r


MASK = "customer.id,customer.currencyCode,campaign.id,campaign.name,metrics.impressions,metrics.clicks," \
       "metrics.costMicros,metrics.conversions,segments.date"


def stream(*batches: list[dict[str, Any]]) -> str:
    return json.dumps([{"results": b, "fieldMask": MASK, "requestId": f"r{i}"} for i, b in enumerate(batches)])


def test_request_shape_and_batches() -> None:
    script = Script([respond(raw=stream([result(camp="1"), result(camp="2")], [result(camp="3")]))])
    conn = make(GoogleAdsConnector, {"login_customer_id": "999-888-7777"},
                base_url="https://googleads.googleapis.com", api_version=V)
    out = run(conn, script, "123-456-7890")
    assert [r.campaign_id for r in out.rows] == ["1", "2", "3"]
    assert all(r.account_id == "123-456-7890" for r in out.rows)
    (req,) = script.requests
    assert req.method == "POST" and req.url.path == "/v21/customers/1234567890/googleAds:searchStream"
    query = json.loads(req.content)["query"]
    assert f"segments.date = '{DAY.isoformat()}'" in query and "FROM campaign" in query
    for f in ("campaign.id", "campaign.name", "metrics.impressions", "metrics.clicks", "metrics.cost_micros",
              "metrics.conversions", "customer.currency_code", "segments.date"):
        assert f in query
    assert req.headers["Authorization"] == f"Bearer {TOKEN}" and req.headers["developer-token"] == TOKEN
    assert req.headers["login-customer-id"] == "9998887777"
    assert_no_secret(out.session, script.requests)


def test_proto3_json_values_are_exact() -> None:
    body = stream([
        result(camp="1"),
        result(camp="2", metrics={}),  # every metric at its default: omitted
        result(camp="3", metrics={"impressions": "5", "costMicros": "100000", "conversions": 0.1}),
        result(camp="4", metrics={"costMicros": "9007199254740993123", "conversions": 2}),
    ])
    a, b, c, d = run(make(GoogleAdsConnector), Script([respond(raw=body)]), "1234567890").rows
    assert (a.impressions, a.clicks, a.spend, a.conversions, a.currency) == \
        (1000, 20, Decimal("1.234567"), Decimal("1.5"), "JPY")
    assert (b.impressions, b.clicks, b.spend, b.conversions) == (0, 0, Decimal(0), Decimal(0))
    assert c.spend == Decimal("0.1") and str(c.conversions) == "0.1"  # never through float
    assert d.spend == Decimal("9007199254740.993123") and d.conversions == Decimal(2)


@pytest.mark.parametrize("raw", ["[]", json.dumps([{"fieldMask": MASK, "requestId": "x"}])],
                         ids=["empty", "no-results"])
def test_empty_stream(raw: str) -> None:
    assert run(make(GoogleAdsConnector), Script([respond(raw=raw)]), "1234567890").rows == []


def test_error_after_some_batches_in_a_200_stream() -> None:
    raw = json.dumps([{"results": [result()], "fieldMask": MASK}, status(503, "UNAVAILABLE")])
    with pytest.raises(Transient):
        run(make(GoogleAdsConnector), Script([respond(raw=raw)]), "1234567890")


@pytest.mark.parametrize(
    "bad",
    [
        {"metrics": {"costMicrosV2": "1"}},
        {"metrics": {"cost_micros": "1"}},
        {"campaign": {"resourceName": "x", "name": "n"}},
        {"campaign": {"resourceName": "x", "id": "1/../../2", "name": "n"}},
        {"customer": {"resourceName": "x", "id": "1111111111", "currencyCode": "JPY"}},
        {"segments": {"date": "2026-03-13"}},
        {"adGroup": {"id": "1"}},
        {"metrics": {"impressions": "1.5"}},
    ],
    ids=["renamed-metric", "snake-case-metric", "missing-id", "hostile-id", "other-customer", "other-date",
         "unselected-resource", "fractional-int64"],
)
def test_drift_and_hostile_values_are_data_errors(bad: dict[str, Any]) -> None:
    with pytest.raises(DataError):
        run(make(GoogleAdsConnector), Script([respond(raw=stream([result(**bad)]))]), "1234567890")


@pytest.mark.parametrize(("raw", "error"), [('[{"results": [', Malformed), ('{"results": []}', DataError),
                                            ("[1]", DataError)], ids=["truncated", "object", "not-batch"])
def test_bad_200_bodies(raw: str, error: type[Exception]) -> None:
    """A cut body is read again (Malformed, retriable); a whole body of the wrong shape is drift."""
    with pytest.raises(error) as info:
        run(make(GoogleAdsConnector), Script([respond(raw=raw)]), "1234567890")
    assert type(info.value) is error


def test_bad_ids() -> None:
    with pytest.raises(BadRequest):
        run(make(GoogleAdsConnector), Script([]), "12ab")
    with pytest.raises(ConfigError):
        make(GoogleAdsConnector, {"login_customer_id": "abc"})


# -- official fixtures (tests/fixtures/official/google_ads, sources in its README) --------------------------
FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "official" / "google_ads"
FIXTURE_DAY = date(2025, 3, 14)


def fixture(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


def test_official_search_stream_parses_to_rows() -> None:
    conn = make(GoogleAdsConnector, base_url="https://googleads.googleapis.com", api_version="v26")
    script = Script([respond(raw=fixture("search_stream.json"))])
    out = run(conn, script, "123-456-7890", FIXTURE_DAY)
    assert [(r.campaign_id, r.campaign_name, r.impressions, r.clicks, r.spend, r.conversions, r.currency)
            for r in out.rows] == [
        ("111", "Search - Brand", 1520, 87, Decimal("12345.67"), Decimal("3.5"), "JPY"),
        ("222", "検索 - 一般", 930, 41, Decimal("2.5"), Decimal(0), "JPY"),  # conversions omitted = 0
        ("333", "Paused test", 0, 0, Decimal(0), Decimal(0), "JPY"),  # every metric omitted (proto3 defaults)
    ]  # batch-level metricAttributes / queryResourceConsumption are tolerated
    assert script.requests[0].url.path == "/v26/customers/1234567890/googleAds:searchStream"


@pytest.mark.parametrize(("name", "status", "error", "retry_after", "code"), [
    ("error_quota_developer.json", 429, Throttled, 40591.0, "RESOURCE_EXHAUSTED,quotaError:RESOURCE_EXHAUSTED"),
    ("error_quota_account.json", 429, Throttled, 30.0, "RESOURCE_EXHAUSTED,quotaError:RESOURCE_TEMPORARILY_EXHAUSTED"),
    ("error_unauthenticated.json", 401, AuthError, None, "UNAUTHENTICATED,authenticationError:NOT_ADS_USER"),
    ("error_unsupported_version.json", 400, BadRequest, None, "INVALID_ARGUMENT,requestError:UNSUPPORTED_VERSION"),
])
def test_official_error_fixtures_classify(name: str, status: int, error: type, retry_after: float | None,
                                          code: str) -> None:
    with pytest.raises(error) as info:
        run(make(GoogleAdsConnector), Script([respond(status, raw=fixture(name))]), "1234567890", FIXTURE_DAY)
    exc = info.value
    assert type(exc) is error and getattr(exc, "retry_after", None) == retry_after and exc.code == code
