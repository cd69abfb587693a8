"""Yahoo! JAPAN Ads ReportDefinitionService connector: envelope errors, job polling, CSV."""

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
    JobFailed,
    Malformed,
    Throttled,
    Transient,
)
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
    return env(None, {"totalNumEntries": 1,
                      "values": [{"errors": None, "operationSucceeded": True, "reportDefinition": d}]})


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
    ("part-error-format", 200, part_error(err("F0001", "Invalid format."), err("RL001")), {}, BadRequest, None,
     "F0001,RL001"),
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
    "\ufeffDay,CampaignID,Campaign name,Impressions,Clicks,Cost,Conversions\n"
    "2026-03-14,1001,\"Brand, \"\"JP\"\"\",1200,30,4560,2.50\n"
    "2026-03-14,1002,キャンペーン2・春,0,0,0,0\n"
    ",,,1200,30,4560,2.50\n"
)


def test_flow_polls_and_parses_csv_exactly() -> None:
    script = Script([
        respond(body=definition("WAIT")),
        respond(body=definition("WAIT")),
        respond(body=definition("IN_PROGRESS")),
        respond(body=definition("COMPLETED")),
        respond(raw=CSV.encode("utf-8"), headers={"Content-Type": "text/csv"}),
    ])
    conn = make(YahooAdsConnector, {"report_language": "EN"}, base_url="https://ads-search.yahooapis.jp/api",
                api_version="v20")
    out = run(conn, script, ACCOUNT)
    a, b = out.rows
    assert (a.campaign_id, a.campaign_name, a.impressions, a.clicks, a.spend, a.conversions, a.currency) == (
        "1001", 'Brand, "JP"', 1200, 30, Decimal(4560), Decimal("2.50"), "JPY")
    assert (b.campaign_name, b.impressions, b.spend) == ("キャンペーン2・春", 0, Decimal(0))
    assert out.polls == [0, 1, 2]
    add, get, *_rest, download = script.requests
    assert add.url.path == "/api/v20/ReportDefinitionService/add"
    body = json.loads(add.content)
    assert body["accountId"] == int(ACCOUNT)
    op = body["operand"][0]
    assert op["reportType"] == "CAMPAIGN" and op["reportDateRangeType"] == "CUSTOM_DATE"
    assert op["dateRange"] == {"startDate": "20260314", "endDate": "20260314"}
    assert op["fields"] == ["DAY", "CAMPAIGN_ID", "CAMPAIGN_NAME", "IMPS", "CLICKS", "COST", "CONVERSIONS"]
    assert (op["reportDownloadFormat"], op["reportDownloadEncode"], op["reportLanguage"]) == ("CSV", "UTF8", "EN")
    # only fields of the v20 ReportDefinition (reportIncludeZeroImpressions was removed in v6)
    assert set(op) == {"reportName", "reportType", "fields", "reportDateRangeType", "dateRange", "reportDownloadFormat",
                       "reportDownloadEncode", "reportLanguage", "reportCompressType", "reportIncludeDeleted",
                       "reportSkipReportSummary", "reportDecimalPartDisplayType"}
    assert (op["reportSkipReportSummary"], op["reportDecimalPartDisplayType"]) == ("TRUE", "FULL_DISPLAY")
    assert json.loads(get.content) == {"accountId": int(ACCOUNT), "reportJobIds": [2222222222]}
    assert json.loads(download.content) == {"accountId": int(ACCOUNT), "reportJobId": 2222222222}
    assert add.headers["Authorization"] == f"Bearer {TOKEN}" and add.headers["x-z-base-account-id"] == ACCOUNT
    assert_no_secret(out.session, script.requests)


def test_base_account_and_currency_options() -> None:
    script = Script([respond(body=definition()), respond(body=definition("COMPLETED")),
                     respond(raw="日,キャンペーンID,キャンペーン名,インプレッション数,クリック数,コスト,コンバージョン数\n")])
    out = run(make(YahooAdsConnector, {"base_account_id": 5550001, "currency": "USD"}), script, ACCOUNT)
    assert out.rows == [] and script.requests[0].headers["x-z-base-account-id"] == "5550001"


@pytest.mark.parametrize(("final", "error", "match"), [
    (definition("FAILED", reportJobErrorDetail="Internal error."), JobFailed, "Internal error"),
    (definition("UNKNOWN"), DataError, "unknown reportJobStatus"),
    (definition("COMPLETED", accountId=42), DataError, "account"),
    (part_error(err("V0001", "Invalid value.")), BadRequest, "Invalid value"),
])
def test_job_terminal_states(final: dict[str, Any], error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        run(make(YahooAdsConnector), Script([respond(body=definition()), respond(body=final)]), ACCOUNT)


def test_poll_limit() -> None:
    script = Script([respond(body=definition()), *[respond(body=definition("IN_PROGRESS")) for _ in range(2)]])
    with pytest.raises(JobFailed, match="not complete after 2 polls"):
        run(make(YahooAdsConnector, {"max_polls": 2}), script, ACCOUNT)


HEADER = "Day,CampaignID,Campaign name,Impressions,Clicks,Cost,Conversions\n"
EN = {"report_language": "EN"}


def test_a_csv_cut_in_its_header_line_is_malformed_not_drift() -> None:
    script = Script([respond(body=definition()), respond(body=definition("COMPLETED")), respond(raw=HEADER[:30])])
    with pytest.raises(Malformed, match="header"):
        run(make(YahooAdsConnector, EN), script, ACCOUNT)


@pytest.mark.parametrize("cut", ["2026-03-14,2,b,1,", "2026-03-14,2,b,1,1,1,", "2026-03-14,2,b,1,1,1,0.5e"])
def test_a_csv_cut_in_its_last_line_is_malformed_not_drift(cut: str) -> None:
    script = Script([respond(body=definition()), respond(body=definition("COMPLETED")),
                     respond(raw=HEADER + "2026-03-14,1,a,1,1,1,0\n" + cut)])
    with pytest.raises(Malformed, match="cut"):
        run(make(YahooAdsConnector, EN), script, ACCOUNT)


@pytest.mark.parametrize(
    "csv_text",
    [
        "Day,CampaignID,Campaign name,Impressions,Clicks,Cost(JPY),Conversions\n2026-03-14,1,a,1,1,1,0\n",
        "Day,CampaignID,Campaign name,Impressions,Clicks,Conversions\n2026-03-14,1,a,1,1,0\n",
        "Day,Campaign ID,Campaign Name,Impressions,Clicks,Cost,Conversions\n2026-03-14,1,a,1,1,1,0\n",
        HEADER + "2026-03-13,1,a,1,1,1,0\n",
        HEADER + "2026-03-14,\"1/../x\",a,1,1,1,0\n",
        HEADER + "2026-03-14,1,a,1.5,1,1,0\n",
        HEADER + "2026-03-14,1,a,1,1,\"1,200\",0\n",
        HEADER + "2026-03-14,1,a,1,1\n2026-03-14,2,b,1,1,1,0\n",
        "",
    ],
    ids=["renamed-cost", "missing-cost", "pre-v20-names", "other-day", "hostile-id", "fractional-imps",
         "thousands-separator", "ragged-row", "empty"],
)
def test_csv_drift_and_hostile_values(csv_text: str) -> None:
    script = Script([respond(body=definition()), respond(body=definition("COMPLETED")), respond(raw=csv_text)])
    with pytest.raises(DataError):
        run(make(YahooAdsConnector, EN), script, ACCOUNT)


@pytest.mark.parametrize("day_cell", ["2026/03/14", "20260314"])
def test_day_formats(day_cell: str) -> None:
    script = Script([respond(body=definition()), respond(body=definition("COMPLETED")),
                     respond(raw=HEADER + f"{day_cell},7,a,1,1,100,0\n")])
    assert [r.campaign_id for r in run(make(YahooAdsConnector, EN), script, ACCOUNT).rows] == ["7"]


def test_download_error_envelope_with_200() -> None:
    script = Script([respond(body=definition()), respond(body=definition("COMPLETED")),
                     respond(body=env([err("0002")]))])
    with pytest.raises(Transient):
        run(make(YahooAdsConnector), script, ACCOUNT)


def test_bad_ids_and_options() -> None:
    with pytest.raises(BadRequest):
        run(make(YahooAdsConnector), Script([]), "abc")
    with pytest.raises(DataError):
        run(make(YahooAdsConnector), Script([respond(body=definition(job="1; DROP"))]), ACCOUNT)
    with pytest.raises(ConfigError):
        make(YahooAdsConnector, {"base_account_id": "x-1"})
    with pytest.raises(ConfigError):
        make(YahooAdsConnector, {"report_language": "en"})


# -- official fixtures (tests/fixtures/official/yahoo_ads, sources in its README) ---------------------------
FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "official" / "yahoo_ads"
FIXTURE_DAY = date(2025, 3, 14)
FIXTURE_ACCOUNT = "11111111"


def fixture(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


def fixture_flow(csv_name: str, options: dict[str, Any] | None = None) -> Any:
    script = Script([
        respond(raw=fixture("add_response.json")),
        respond(raw=fixture("get_in_progress.json")),
        respond(raw=fixture("get_completed.json")),
        respond(raw=fixture(csv_name), headers={"Content-Type": "text/csv"}),
    ])
    out = run(make(YahooAdsConnector, options), script, FIXTURE_ACCOUNT, FIXTURE_DAY)
    return out, script


@pytest.mark.parametrize(("csv_name", "options"), [
    ("campaign_report_ja.csv", None),
    ("campaign_report_ja_skip_summary.csv", None),
    ("campaign_report_ja.csv", {"report_language": "JA"}),
    ("campaign_report_en.csv", {"report_language": "EN"}),
], ids=["ja-default-with-summary", "ja-skip-summary", "ja-explicit", "en"])
def test_official_report_fixtures_parse_to_rows(csv_name: str, options: dict[str, Any] | None) -> None:
    out, script = fixture_flow(csv_name, options)
    assert [(r.campaign_id, r.campaign_name, r.impressions, r.clicks, r.spend, r.conversions, r.currency, r.date)
            for r in out.rows] == [
        ("111", "Search - Brand", 1520, 87, Decimal(12346), Decimal("3.5"), "JPY", FIXTURE_DAY),
        ("222", "検索 - 一般", 930, 41, Decimal(3), Decimal(0), "JPY", FIXTURE_DAY),
    ]  # the documented summary row (totals, empty attribute columns) is not a row
    op = json.loads(script.requests[0].content)["operand"][0]
    assert op["reportLanguage"] == (options or {}).get("report_language", "JA")


@pytest.mark.parametrize(("csv_name", "options"), [
    ("campaign_report_en.csv", None),
    ("campaign_report_ja.csv", {"report_language": "EN"}),
], ids=["en-body-ja-asked", "ja-body-en-asked"])
def test_official_report_in_other_language_is_drift(csv_name: str, options: dict[str, Any] | None) -> None:
    with pytest.raises(DataError, match="lacks column"):
        fixture_flow(csv_name, options)


@pytest.mark.parametrize(("name", "status", "error", "code"), [
    ("error_auth_0111.json", 401, AuthError, "0111"),
    ("error_frequency_0003.json", 403, Throttled, "0003"),
    ("error_full_0001.json", 200, BadRequest, "0001"),
    ("error_part_add.json", 200, BadRequest, "F0001,RL001"),
    ("error_url_not_found_0004.json", 404, BadRequest, "0004"),
])
def test_official_error_fixtures_classify(name: str, status: int, error: type, code: str) -> None:
    with pytest.raises(error) as info:
        run(make(YahooAdsConnector), Script([respond(status, raw=fixture(name))]), FIXTURE_ACCOUNT, FIXTURE_DAY)
    assert type(info.value) is error and info.value.code == code


def test_official_failed_job_fixture_starts_a_new_job() -> None:
    script = Script([respond(raw=fixture("add_response.json")), respond(raw=fixture("get_failed.json"))])
    with pytest.raises(JobFailed, match="FAILED"):
        run(make(YahooAdsConnector), script, FIXTURE_ACCOUNT, FIXTURE_DAY)
