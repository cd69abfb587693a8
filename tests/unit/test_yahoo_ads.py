"""Yahoo! JAPAN Ads ReportDefinitionService connector: envelope errors, job polling, CSV."""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

import pytest
from connector_template import DAY, TOKEN, Script, assert_no_secret, make, respond, run

from ingest.errors import AuthError, BadRequest, ConfigError, DataError, Throttled, Transient
from ingest.media.yahoo_ads import YahooAdsConnector

ACCOUNT = "1002003"


def env(errors: list[dict[str, Any]] | None = None, rval: Any = None) -> dict[str, Any]:
    return {"errors": errors, "rid": "0865ecc73df3bec4b8cac750efde2668", "rval": rval}


def err(code: str, message: str = "msg") -> dict[str, Any]:
    return {"code": code, "message": message, "details": []}


def definition(status: str = "WAIT", job: int = 2222222222, **over: Any) -> dict[str, Any]:
    d = {"accountId": int(ACCOUNT), "reportJobId": job, "reportJobStatus": status, "reportJobErrorDetail": None,
         "reportName": "x", "reportType": "CAMPAIGN"}
    d.update(over)
    return env(None, {"totalNumEntries": 1, "values": [{"errors": None, "operationSucceeded": True, "reportDefinition": d}]})


def part_error(*errors: dict[str, Any]) -> dict[str, Any]:
    return env(None, {"values": [{"errors": list(errors), "operationSucceeded": False, "reportDefinition": None}]})


ERRORS = [  # (id, status, body, headers, error, retry_after, code)
    ("auth-failed-0111", 401, env([err("0111", "Authentication failed.")]), {}, AuthError, None, "0111"),
    ("no-token-0110", 401, env([err("0110")]), {}, AuthError, None, "0110"),
    ("invalid-scope-0114-at-400", 400, env([err("0114")]), {}, AuthError, None, "0114"),
    ("permission-0098", 403, env([err("0098", "Permission denied.")]), {}, AuthError, None, "0098"),
    ("frequency-limit-0003-at-403", 403, env([err("0003")]), {}, Throttled, None, "0003"),
    ("http-429-retry-after", 429, None, {"Retry-After": "20"}, Throttled, 20.0, None),
    ("internal-0002", 500, env([err("0002")]), {}, Transient, None, "0002"),
    ("out-of-service-0099", 503, env([err("0099", "Out of service.")]), {}, Transient, None, "0099"),
    ("gateway-html", 502, None, {}, Transient, None, None),
    ("invalid-request-0001", 400, env([err("0001", "Invalid Request.")]), {}, BadRequest, None, "0001"),
    ("full-error-at-200", 200, env([err("0001", "Invalid Request.")]), {}, BadRequest, None, "0001"),
    ("full-error-throttle-at-200", 200, env([err("0003")]), {}, Throttled, None, "0003"),
    ("part-error-format", 200, part_error(err("F0001", "Invalid format."), err("RL001")), {}, BadRequest, None, "F0001,RL001"),
    ("part-error-deactivated-account", 200, part_error(err("0113")), {}, AuthError, None, "0113"),
]


@pytest.mark.parametrize(("status", "body", "headers", "error", "retry_after", "code"),
                         [e[1:] for e in ERRORS], ids=[e[0] for e in ERRORS])
def test_error_table_on_add(status: int, body: Any, headers: dict[str, str], error: type, retry_after: float | None,
                            code: str | None) -> None:
    raw = "<html>bad gateway</html>" if body is None else None
    with pytest.raises(error) as info:
        run(make(YahooAdsConnector), Script([respond(status, body, headers, raw=raw)]), ACCOUNT)
    exc = info.value
    assert type(exc) is error and getattr(exc, "retry_after", None) == retry_after
    assert exc.code == code and exc.status == status
    assert (exc.media, exc.account, exc.date) == ("yahoo_ads", ACCOUNT, DAY.isoformat())


CSV = (
    "\ufeffDay,Campaign ID,Campaign Name,Impressions,Clicks,Cost,Conversions\n"
    "2026-03-14,1001,\"Brand, \"\"JP\"\"\",1200,30,4560,2.50\n"
    "2026-03-14,1002,キャンペーン2・春,0,0,0,0\n"
    "Total,,,1200,30,4560,2.50\n"
)


def test_flow_polls_and_parses_csv_exactly() -> None:
    script = Script([
        respond(body=definition("WAIT")),
        respond(body=definition("WAIT")),
        respond(body=definition("IN_PROGRESS")),
        respond(body=definition("COMPLETED")),
        respond(raw=CSV.encode("utf-8"), headers={"Content-Type": "text/csv"}),
    ])
    conn = make(YahooAdsConnector, base_url="https://ads-search.yahooapis.jp/api", api_version="v17")
    out = run(conn, script, ACCOUNT)
    a, b = out.rows
    assert (a.campaign_id, a.campaign_name, a.impressions, a.clicks, a.spend, a.conversions, a.currency) == (
        "1001", 'Brand, "JP"', 1200, 30, Decimal("4560"), Decimal("2.50"), "JPY")
    assert (b.campaign_name, b.impressions, b.spend) == ("キャンペーン2・春", 0, Decimal(0))
    assert out.polls == [0, 1, 2]
    add, get, *_rest, download = script.requests
    assert add.url.path == "/api/v17/ReportDefinitionService/add"
    body = json.loads(add.content)
    assert body["accountId"] == int(ACCOUNT)
    op = body["operand"][0]
    assert op["reportType"] == "CAMPAIGN" and op["reportDateRangeType"] == "CUSTOM_DATE"
    assert op["dateRange"] == {"startDate": "20260314", "endDate": "20260314"}
    assert op["fields"] == ["DAY", "CAMPAIGN_ID", "CAMPAIGN_NAME", "IMPS", "CLICKS", "COST", "CONVERSIONS"]
    assert (op["reportDownloadFormat"], op["reportDownloadEncode"], op["reportLanguage"]) == ("CSV", "UTF8", "EN")
    assert json.loads(get.content) == {"accountId": int(ACCOUNT), "reportJobIds": [2222222222]}
    assert json.loads(download.content) == {"accountId": int(ACCOUNT), "reportJobId": 2222222222}
    assert add.headers["Authorization"] == f"Bearer {TOKEN}" and add.headers["x-z-base-account-id"] == ACCOUNT
    assert_no_secret(out.session, script.requests)


def test_base_account_and_currency_options() -> None:
    script = Script([respond(body=definition()), respond(body=definition("COMPLETED")),
                     respond(raw="Day,Campaign ID,Campaign Name,Impressions,Clicks,Cost,Conversions\n")])
    out = run(make(YahooAdsConnector, {"base_account_id": 5550001, "currency": "USD"}), script, ACCOUNT)
    assert out.rows == [] and script.requests[0].headers["x-z-base-account-id"] == "5550001"


@pytest.mark.parametrize(("final", "error", "match"), [
    (definition("FAILED", reportJobErrorDetail="Internal error."), Transient, "Internal error"),
    (definition("UNKNOWN"), DataError, "unknown reportJobStatus"),
    (definition("COMPLETED", accountId=42), DataError, "account"),
    (part_error(err("V0001", "Invalid value.")), BadRequest, "Invalid value"),
])
def test_job_terminal_states(final: dict[str, Any], error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        run(make(YahooAdsConnector), Script([respond(body=definition()), respond(body=final)]), ACCOUNT)


def test_poll_limit() -> None:
    script = Script([respond(body=definition()), *[respond(body=definition("IN_PROGRESS")) for _ in range(2)]])
    with pytest.raises(Transient, match="not complete after 2 polls"):
        run(make(YahooAdsConnector, {"max_polls": 2}), script, ACCOUNT)


HEADER = "Day,Campaign ID,Campaign Name,Impressions,Clicks,Cost,Conversions\n"


@pytest.mark.parametrize(
    "csv_text",
    [
        "Day,Campaign ID,Campaign Name,Impressions,Clicks,Cost(JPY),Conversions\n2026-03-14,1,a,1,1,1,0\n",
        "Day,Campaign ID,Campaign Name,Impressions,Clicks,Conversions\n2026-03-14,1,a,1,1,0\n",
        HEADER + "2026-03-13,1,a,1,1,1,0\n",
        HEADER + "2026-03-14,\"1/../x\",a,1,1,1,0\n",
        HEADER + "2026-03-14,1,a,1.5,1,1,0\n",
        HEADER + "2026-03-14,1,a,1,1,\"1,200\",0\n",
        HEADER + "2026-03-14,1,a,1,1\n",
        "",
    ],
    ids=["renamed-cost", "missing-cost", "other-day", "hostile-id", "fractional-imps", "thousands-separator",
         "ragged-row", "empty"],
)
def test_csv_drift_and_hostile_values(csv_text: str) -> None:
    script = Script([respond(body=definition()), respond(body=definition("COMPLETED")), respond(raw=csv_text)])
    with pytest.raises(DataError):
        run(make(YahooAdsConnector), script, ACCOUNT)


@pytest.mark.parametrize("day_cell", ["2026/03/14", "20260314"])
def test_day_formats(day_cell: str) -> None:
    script = Script([respond(body=definition()), respond(body=definition("COMPLETED")),
                     respond(raw=HEADER + f"{day_cell},7,a,1,1,100,0\n")])
    assert [r.campaign_id for r in run(make(YahooAdsConnector), script, ACCOUNT).rows] == ["7"]


def test_download_error_envelope_with_200() -> None:
    script = Script([respond(body=definition()), respond(body=definition("COMPLETED")), respond(body=env([err("0002")]))])
    with pytest.raises(Transient):
        run(make(YahooAdsConnector), script, ACCOUNT)


def test_bad_ids_and_options() -> None:
    with pytest.raises(BadRequest):
        run(make(YahooAdsConnector), Script([]), "abc")
    with pytest.raises(DataError):
        run(make(YahooAdsConnector), Script([respond(body=definition(job="1; DROP"))]), ACCOUNT)
    with pytest.raises(ConfigError):
        make(YahooAdsConnector, {"base_account_id": "x-1"})
