"""Meta insights connector: error table, cursor paging, async job flow, normalization, usage."""

from __future__ import annotations

import json
from datetime import date
from decimal import Decimal
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import httpx
import pytest
from connector_template import DAY, TOKEN, Script, assert_no_secret, make, respond, run

from ingest.errors import (
    AuthError,
    BadRequest,
    ConfigError,
    DataError,
    JobFailed,
    Malformed,
    Throttled,
    Transient,
)
from ingest.media.base import Usage
from ingest.media.meta import MetaConnector, parse_usage


def graph_error(code: int, subcode: int | None = None, transient: bool | None = None,
                message: str = "msg") -> dict[str, Any]:
    err: dict[str, Any] = {"message": message, "type": "OAuthException", "code": code, "fbtrace_id": "AbC"}
    if subcode is not None:
        err["error_subcode"] = subcode
    if transient is not None:
        err["is_transient"] = transient
    return {"error": err}


def buc(eta_minutes: int, call_count: int = 100) -> dict[str, str]:
    return {"x-business-use-case-usage": json.dumps({"1234": [{"type": "ads_insights", "call_count": call_count,
            "total_cputime": 20, "total_time": 30, "estimated_time_to_regain_access": eta_minutes}]})}


ERRORS = [  # (id, status, body, headers, error, retry_after, code)
    ("buc-80000-hint-minutes", 400, graph_error(80000, 2446079, True), buc(5), Throttled, 300.0, "80000/2446079"),
    ("buc-80004-no-hint", 400, graph_error(80004, 2446079), buc(0), Throttled, None, "80004/2446079"),
    ("buc-80014-upper-bound", 400, graph_error(80014), {}, Throttled, None, "80014"),
    ("80015-not-a-throttle", 400, graph_error(80015), {}, BadRequest, None, "80015"),
    ("app-limit-4-at-403", 403, graph_error(4, 1504022), {}, Throttled, None, "4/1504022"),
    ("user-limit-17", 400, graph_error(17, 2446079), {}, Throttled, None, "17/2446079"),
    ("page-limit-32", 400, graph_error(32), {}, Throttled, None, "32"),
    ("account-limit-613-at-429", 429, graph_error(613, 1487742), {}, Throttled, None, "613/1487742"),
    ("retry-after-header", 429, None, {"Retry-After": "7"}, Throttled, 7.0, None),
    ("temporary-2-at-500", 500, graph_error(2, transient=True), {}, Transient, None, "2"),
    ("unknown-1-99", 400, graph_error(1, 99), {}, Transient, None, "1/99"),
    ("is-transient-flag", 400, graph_error(100, 33, transient=True), {}, Transient, None, "100/33"),
    ("insights-timeout-100-1504018", 400, graph_error(100, 1504018), {}, Transient, None, "100/1504018"),
    ("async-report-failed", 400, graph_error(-2, 2490547), {}, Transient, None, "-2/2490547"),
    ("invalid-breakdowns-2-1504041", 400, graph_error(2, 1504041), {}, BadRequest, None, "2/1504041"),
    ("expired-token-190", 400, graph_error(190, 463), {}, AuthError, None, "190/463"),
    ("permission-200", 403, graph_error(200), {}, AuthError, None, "200"),
    ("permission-10", 400, graph_error(10), {}, AuthError, None, "10"),
    ("invalid-parameter-100", 400, graph_error(100), {}, BadRequest, None, "100"),
    ("bad-gateway-html", 502, None, {}, Transient, None, None),
    ("not-found-no-code", 404, None, {}, BadRequest, None, None),
]


@pytest.mark.parametrize(("status", "body", "headers", "error", "retry_after", "code"),
                         [e[1:] for e in ERRORS], ids=[e[0] for e in ERRORS])
def test_error_table(status: int, body: Any, headers: dict[str, str], error: type, retry_after: float | None,
                     code: str | None) -> None:
    raw = "<html>Bad Gateway</html>" if body is None else None
    with pytest.raises(error) as info:
        run(make(MetaConnector), Script([respond(status, body, headers, raw=raw)]), "act_1234")
    exc = info.value
    assert type(exc) is error
    assert getattr(exc, "retry_after", None) == retry_after
    assert exc.code == code and exc.status == status
    assert (exc.media, exc.account, exc.date) == ("meta", "act_1234", DAY.isoformat())


def test_truncated_json_is_malformed_and_read_again() -> None:
    with pytest.raises(Malformed):
        run(make(MetaConnector), Script([respond(raw='{"data":[{"campaign_id":"1"')]), "1234")


def row(cid: str = "23850001", **over: Any) -> dict[str, Any]:
    base = {
        "account_id": "1234",
        "campaign_id": cid,
        "campaign_name": "Brand, \"JP\"",
        "impressions": "1000",
        "clicks": "25",
        "spend": "123.45",
        "actions": [
            {"action_type": "link_click", "value": "25"},
            {"action_type": "offsite_conversion.fb_pixel_purchase", "value": "3"},
            {"action_type": "omni_purchase", "value": "4"},
        ],
        "account_currency": "USD",
        "date_start": DAY.isoformat(),
        "date_stop": DAY.isoformat(),
    }
    base.update(over)
    return {k: v for k, v in base.items() if v is not None}


def page(rows: list[dict[str, Any]], after: str, more: bool) -> dict[str, Any]:
    paging: dict[str, Any] = {"cursors": {"before": "B", "after": after}}
    if more:
        paging["next"] = f"https://graph.facebook.com/v21.0/act_1234/insights?after={after}"
    return {"data": rows, "paging": paging}


def test_sync_request_shape_and_paging_to_the_last_page() -> None:
    script = Script([
        respond(body=page([row("1"), row("2")], "c1", more=True)),
        respond(body=page([row("3"), row("4")], "c2", more=True)),
        respond(body=page([row("5")], "c3", more=False)),  # cursors.after still present: not "more"
    ])
    conn = make(MetaConnector, {"page_limit": 2}, base_url="https://graph.facebook.com", api_version="v21.0")
    out = run(conn, script, "act_1234")
    assert [r.campaign_id for r in out.rows] == ["1", "2", "3", "4", "5"]
    first, second, third = script.requests
    assert first.url.path == "/v21.0/act_1234/insights" and first.method == "GET"
    q = parse_qs(first.url.query.decode())
    assert q["level"] == ["campaign"] and q["time_increment"] == ["1"] and q["limit"] == ["2"]
    assert json.loads(q["time_range"][0]) == {"since": DAY.isoformat(), "until": DAY.isoformat()}
    assert set(q["fields"][0].split(",")) >= {"campaign_id", "campaign_name", "impressions", "clicks", "spend",
                                              "actions", "account_currency"}
    assert "after" not in q
    assert parse_qs(second.url.query.decode())["after"] == ["c1"]
    assert parse_qs(third.url.query.decode())["after"] == ["c2"]
    assert first.headers["Authorization"] == f"Bearer {TOKEN}"
    assert_no_secret(out.session, script.requests)
    assert len(out.session.pages) == 3


def test_next_without_cursor_is_data_error() -> None:
    body = {"data": [row()], "paging": {"next": "https://graph.facebook.com/x"}}
    with pytest.raises(DataError):
        run(make(MetaConnector), Script([respond(body=body)]), "1234")


def test_empty_report() -> None:
    assert run(make(MetaConnector), Script([respond(body={"data": []})]), "1234").rows == []


def test_normalization_is_exact() -> None:
    body = {"data": [row(spend="0.10", impressions="0", clicks="0", actions=None),
                     row("77", spend="1234567.891", actions=[{"action_type": "offsite_conversion.fb_pixel_purchase",
                                                               "value": "1.5"},
                                                              {"action_type": "offsite_conversion.fb_pixel_purchase",
                                                               "value": "2"}])]}
    out = run(make(MetaConnector), Script([respond(body=body)]), "act_1234")
    a, b = out.rows
    assert (a.impressions, a.clicks, a.spend, a.conversions) == (0, 0, Decimal("0.10"), Decimal(0))
    assert b.spend == Decimal("1234567.891") and b.conversions == Decimal("3.5")
    assert a.currency == "USD" and a.account_id == "act_1234" and a.campaign_name == 'Brand, "JP"'


def test_conversion_action_type_option() -> None:
    out = run(make(MetaConnector, {"conversion_action_type": "omni_purchase"}),
              Script([respond(body={"data": [row()]})]), "1234")
    assert out.rows[0].conversions == Decimal(4)


@pytest.mark.parametrize(
    "bad",
    [
        {"campaign_id": "../../etc/passwd"},
        {"campaign_id": "1; DROP TABLE x"},
        {"campaign_id": 12345},
        {"spend": None, "amount_spent": "1.00"},  # renamed field
        {"impressions": "12.5"},
        {"spend": "NaN"},
        {"account_id": "9999"},
        {"date_start": "2026-03-13"},
        {"account_currency": "usd"},
    ],
    ids=["path-id", "sql-id", "int-id", "renamed-spend", "fractional-impressions", "nan-spend", "other-account",
         "other-date", "bad-currency"],
)
def test_drift_and_hostile_values_are_data_errors(bad: dict[str, Any]) -> None:
    with pytest.raises(DataError):
        run(make(MetaConnector), Script([respond(body={"data": [row(**bad)]})]), "1234")


def test_async_flow_polls_until_completed() -> None:
    script = Script([
        respond(body={"report_run_id": "6001"}),
        respond(body={"id": "6001", "async_status": "Job Not Started", "async_percent_completion": 0}),
        respond(body={"id": "6001", "async_status": "Job Running", "async_percent_completion": 50}),
        respond(body={"id": "6001", "async_status": "Job Completed", "async_percent_completion": 90}),
        respond(body={"id": "6001", "async_status": "Job Completed", "async_percent_completion": 100}),
        respond(body=page([row("1")], "c1", more=True)),
        respond(body=page([row("2")], "c2", more=False)),
    ])
    conn = make(MetaConnector, {"mode": "async"}, base_url="https://graph.facebook.com", api_version="v21.0")
    out = run(conn, script, "1234")
    assert [r.campaign_id for r in out.rows] == ["1", "2"]
    assert out.polls == [0, 1, 2, 3]
    create = script.requests[0]
    assert create.method == "POST" and create.url.path == "/v21.0/act_1234/insights"
    form = parse_qs(create.content.decode())
    assert form["level"] == ["campaign"] and "time_range" in form
    assert script.requests[1].url.path == "/v21.0/6001"
    assert script.requests[5].url.path == "/v21.0/6001/insights"
    assert conn.minimum_requests() == 3
    assert_no_secret(out.session, script.requests)


@pytest.mark.parametrize(("status_body", "error"), [
    ({"async_status": "Job Failed", "async_percent_completion": 0}, JobFailed),
    ({"async_status": "Job Skipped"}, JobFailed),
    ({"async_status": "Job Exploded"}, DataError),
])
def test_async_terminal_states(status_body: dict[str, Any], error: type) -> None:
    script = Script([respond(body={"report_run_id": "6001"}), respond(body={"id": "6001", **status_body})])
    with pytest.raises(error):
        run(make(MetaConnector, {"mode": "async"}), script, "1234")


def test_async_poll_limit_and_hostile_run_id() -> None:
    running = [respond(body={"async_status": "Job Running", "async_percent_completion": 10}) for _ in range(3)]
    with pytest.raises(JobFailed, match="not complete after 3 polls"):
        run(make(MetaConnector, {"mode": "async", "max_polls": 3}),
            Script([respond(body={"report_run_id": "1"}), *running]), "1")
    with pytest.raises(DataError):
        run(make(MetaConnector, {"mode": "async"}), Script([respond(body={"report_run_id": "../me"})]), "1")


def test_usage_headers_are_parsed_and_reported() -> None:
    headers = {
        **buc(3, call_count=40),
        "x-app-usage": json.dumps({"call_count": 85, "total_cputime": 10, "total_time": 12}),
        "x-ad-account-usage": json.dumps({"acc_id_util_pct": 9.5, "reset_time_duration": 0,
                                          "ads_api_access_tier": "standard_access"}),
    }
    assert parse_usage(httpx.Headers(headers)) == Usage(utilization=0.85, regain_after_s=180.0)
    assert parse_usage(httpx.Headers({"x-app-usage": "not json"})) is None
    assert parse_usage(httpx.Headers({})) is None
    full = {"x-ad-account-usage": json.dumps({"acc_id_util_pct": 100, "reset_time_duration": 42})}
    assert parse_usage(httpx.Headers(full)) == Usage(utilization=1.0, regain_after_s=42.0)
    out = run(make(MetaConnector), Script([respond(body={"data": [row()]}, headers=headers)]), "1234")
    assert out.usage == [Usage(utilization=0.85, regain_after_s=180.0)]


@pytest.mark.parametrize("options", [{"mode": "batch"}, {"page_limit": 0}, {"max_polls": "3"}])
def test_bad_options_are_config_errors(options: dict[str, Any]) -> None:
    with pytest.raises(ConfigError):
        make(MetaConnector, options)


def test_non_numeric_account_is_bad_request() -> None:
    with pytest.raises(BadRequest):
        run(make(MetaConnector), Script([]), "act_abc")


# -- official fixtures (tests/fixtures/official/meta, sources in its README) --------------------------------
FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "official" / "meta"
FIXTURE_DAY = date(2025, 3, 14)
FIXTURE_ACCOUNT = "act_123456789012345"
FIXTURE_ROWS = [
    ("120200000000000001", "Spring Sale", 361324, 4211, Decimal("5339.5"), Decimal(57), "USD"),
    ("120200000000000002", "Brand — 認知", 9708, 120, Decimal("88.01"), Decimal(0), "USD"),
    ("120200000000000003", "Retargeting", 18841, 305, Decimal("412.7"), Decimal(5), "USD"),
]


def fixture(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


def as_tuples(rows: list[Any]) -> list[tuple[Any, ...]]:
    return [(r.campaign_id, r.campaign_name, r.impressions, r.clicks, r.spend, r.conversions, r.currency) for r in rows]


def test_official_insights_pages_parse_to_rows() -> None:
    script = Script([respond(raw=fixture("insights_page1.json")), respond(raw=fixture("insights_page2.json"))])
    conn = make(MetaConnector, {"page_limit": 2}, base_url="https://graph.facebook.com", api_version="v27.0")
    out = run(conn, script, FIXTURE_ACCOUNT, FIXTURE_DAY)
    assert as_tuples(out.rows) == FIXTURE_ROWS and {r.date for r in out.rows} == {FIXTURE_DAY}
    # page 1 has paging.next → page 2 asked with its cursors.after; page 2 has cursors but no next → stop
    assert len(script.requests) == 2 and script.requests[1].url.params["after"] == "MQZDZD"


def test_official_async_flow_parses_to_rows() -> None:
    script = Script([
        respond(raw=fixture("async_create.json")),
        respond(raw=fixture("report_run_not_started.json")),
        respond(raw=fixture("report_run_running.json")),
        respond(raw=fixture("report_run_completed.json")),
        respond(raw=fixture("insights_page1.json")),
        respond(raw=fixture("insights_page2.json")),
    ])
    conn = make(MetaConnector, {"mode": "async"}, base_url="https://graph.facebook.com", api_version="v27.0")
    out = run(conn, script, FIXTURE_ACCOUNT, FIXTURE_DAY)
    assert as_tuples(out.rows) == FIXTURE_ROWS
    assert script.requests[1].url.path == "/v27.0/6120000000000001"
    assert script.requests[4].url.path == "/v27.0/6120000000000001/insights"


@pytest.mark.parametrize("name", ["report_run_failed.json", "report_run_skipped.json"])
def test_official_failed_report_runs_start_a_new_job(name: str) -> None:
    script = Script([respond(raw=fixture("async_create.json")), respond(raw=fixture(name))])
    with pytest.raises(JobFailed):
        run(make(MetaConnector, {"mode": "async"}), script, FIXTURE_ACCOUNT, FIXTURE_DAY)


@pytest.mark.parametrize(("name", "error", "code"), [
    ("error_throttle_80000.json", Throttled, "80000/2446079"),
    ("error_throttle_17.json", Throttled, "17"),
    ("error_auth_190.json", AuthError, "190/460"),
    ("error_version_2635.json", BadRequest, "2635"),
])
def test_official_error_fixtures_classify(name: str, error: type, code: str) -> None:
    with pytest.raises(error) as info:
        run(make(MetaConnector), Script([respond(400, raw=fixture(name))]), FIXTURE_ACCOUNT, FIXTURE_DAY)
    assert type(info.value) is error and info.value.code == code


@pytest.mark.parametrize(("header", "expected"), [
    ({"app_id_util_pct": 92.5, "acc_id_util_pct": 10.0, "ads_api_access_tier": "standard_access"}, 0.925),
    ({"app_id_util_pct": 3.0, "acc_id_util_pct": 71.0, "ads_api_access_tier": "development_access"}, 0.71),
])
def test_insights_throttle_header_feeds_the_usage(header: dict[str, object], expected: float) -> None:
    """x-fb-ads-insights-throttle (Marketing API rate-limiting docs): the higher of app and account use."""
    import json as _json

    usage = parse_usage(httpx.Headers({"x-fb-ads-insights-throttle": _json.dumps(header)}))
    assert usage is not None and usage.utilization == pytest.approx(expected)
