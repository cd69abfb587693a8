"""Retry the request, not the report (issue 14), through the real connectors, HttpSession,
QuotaLink and MediaSupervisor (its policy decides every retry), without Ray:

- a poll fault does not create a second report run; a page fault re-reads that page only;
- a Yahoo poll/download fault keeps its reportJobId;
- a truncated body is read again, every body kept; then the report fails as DataError;
- an account-scoped throttle pauses that account only; the breaker needs many accounts.
"""

from __future__ import annotations

import asyncio
import time
from datetime import date
from typing import Any

import httpx
import pytest
from connector_template import DAY, Script, make, respond

from ingest.config import MediaSettings
from ingest.errors import DataError, Throttled, Transient
from ingest.media.base import HttpSession, Row
from ingest.media.google_ads import GoogleAdsConnector
from ingest.media.meta import MetaConnector
from ingest.media.yahoo_ads import YahooAdsConnector
from ingest.supervision.fetcher import QuotaLink
from ingest.supervision.supervisor import MediaSupervisor
from ingest.tasks import ReportKey


def settings(connector: str, **retry: Any) -> MediaSettings:
    return MediaSettings.model_validate({
        "connector": connector, "base_url": "http://127.0.0.1:1", "api_version": "v1",
        "accounts": [{"id": str(i), "advertiser": "a"} for i in range(1, 8)],
        "quota": {"requests_per_second": 1000, "burst": 100, "poll_min_s": 0.001, "poll_max_s": 0.001},
        "retry": {"backoff_min_s": 0.001, "backoff_max_s": 0.002, **retry},
        "breaker": {"failure_threshold": 3, "open_s": 60},
    })


async def _never(_: int) -> Any:
    raise AssertionError("no fetchers are spawned here")


def supervisor(connector: str, **retry: Any) -> MediaSupervisor:
    return MediaSupervisor(connector, settings(connector, **retry), _never)


def fetch(sup: MediaSupervisor, conn: Any, script: Script, account: str,
          day: date = DAY) -> tuple[list[Row], HttpSession]:
    """What ReportFetcher does for one report, with the supervisor's methods called directly."""
    link = QuotaLink(sup.permits, None, sup.request_failed)
    key = ReportKey(conn.media, account, day)

    async def go() -> tuple[list[Row], HttpSession]:
        async with httpx.AsyncClient(transport=httpx.MockTransport(script)) as client:
            session = HttpSession(client, gate=lambda: link.gate(account), retry=link.retry_hook(key))
            try:
                return await conn.fetch(session, account, day), session
            except Exception as exc:
                exc.session = session  # type: ignore[attr-defined]
                raise

    return asyncio.run(go())


def insights_row(cid: str) -> dict[str, Any]:
    return {"account_id": "1234", "campaign_id": cid, "campaign_name": f"c{cid}", "impressions": "10", "clicks": "1",
            "spend": "1.5", "account_currency": "JPY", "date_start": DAY.isoformat(), "date_stop": DAY.isoformat(),
            "actions": []}


def insights_page(cid: str, after: str, more: bool) -> dict[str, Any]:
    paging: dict[str, Any] = {"cursors": {"before": "b", "after": after}}
    if more:
        paging["next"] = f"https://graph.facebook.com/v1/6001/insights?after={after}"
    return {"data": [insights_row(cid)], "paging": paging}


def meta_error(status: int, code: int, subcode: int | None = None, message: str = "x") -> httpx.Response:
    err: dict[str, Any] = {"message": message, "type": "OAuthException", "code": code, "fbtrace_id": "t"}
    if subcode is not None:
        err["error_subcode"] = subcode
    return respond(status, {"error": err})


def test_meta_poll_and_page_faults_retry_only_that_request() -> None:
    sup = supervisor("meta")
    script = Script([
        respond(body={"report_run_id": "6001"}),                                      # create
        respond(502, raw="<html>bad gateway</html>"),                                 # poll 1: 502
        respond(body={"id": "6001", "async_status": "Job Completed", "async_percent_completion": 100}),
        respond(body=insights_page("1", "c1", True)),                                 # page 1
        respond(body=insights_page("2", "c2", True)),                                 # page 2
        respond(500, {"error": {"message": "Service temporarily unavailable", "code": 2, "is_transient": True}}),
        respond(raw='{"data": [{"account_id": "1234", "campa'),                       # page 3 cut short
        respond(body=insights_page("3", "c3", False)),                                # page 3 again
    ])
    rows, session = fetch(sup, make(MetaConnector, {"mode": "async", "page_limit": 1}), script, "1234")
    assert [r.campaign_id for r in rows] == ["1", "2", "3"]
    methods = [(r.method, r.url.path, r.url.params.get("after")) for r in script.requests]
    assert [m for m in methods if m[0] == "POST"] == [("POST", "/v1/act_1234/insights", None)]  # one report run, ever
    pages = [m[2] for m in methods if m[1].endswith("/6001/insights")]
    assert pages == [None, "c1", "c2", "c2", "c2"]  # page 3 (after c2) read three times; pages 1 and 2 once
    assert session.request_retries == 3 and sup.counts["request_retries"] == 3 and sup.counts["retries"] == 0
    assert len(session.pages) == len(script.requests)  # every exchange kept for the raw object, cut body included
    assert '"campa' in session.pages[6].body


def test_yahoo_poll_and_download_faults_keep_the_report_job() -> None:
    from test_yahoo_ads import ACCOUNT, EN, HEADER, definition

    sup = supervisor("yahoo_ads")
    script = Script([
        respond(body=definition()),                                                   # add → reportJobId
        respond(500, {"errors": [{"code": "0002", "message": "Internal error."}], "rid": "r", "rval": None}),
        respond(body=definition("COMPLETED")),                                        # poll again
        respond(raw=HEADER + "2026-03-14,1,a,1,1,1,0\n2026-03-14,2,b,1,"),           # download cut
        respond(raw=HEADER + "2026-03-14,1,a,1,1,1,0\n2026-03-14,2,b,1,1,1,0\n"),    # download again
    ])
    rows, _ = fetch(sup, make(YahooAdsConnector, EN), script, ACCOUNT)
    assert [r.campaign_id for r in rows] == ["1", "2"]
    ops = [r.url.path.rsplit("/", 1)[-1] for r in script.requests]
    assert ops == ["add", "get", "get", "download", "download"]  # one add: the same reportJobId throughout
    assert sup.counts["request_retries"] == 2


def test_a_body_that_stays_cut_fails_as_data_error_with_every_body_kept() -> None:
    sup = supervisor("google_ads", malformed_attempts=3)
    script = Script([respond(raw='[{"results": [{"campaign": ') for _ in range(3)])
    with pytest.raises(DataError) as info:
        fetch(sup, make(GoogleAdsConnector), script, "1234567890")
    err = info.value
    assert "malformed_attempts" in err.final_reason and "stream" in err.message  # type: ignore[attr-defined]
    assert len(err.session.pages) == 3 and all('"campaign": ' in p.body for p in err.session.pages)  # type: ignore[attr-defined]
    assert err.body is not None and b'"results"' in (err.body if isinstance(err.body, bytes) else err.body.encode())


def test_request_budget_spent_names_the_budget() -> None:
    sup = supervisor("google_ads", request_attempts=3)
    script = Script([respond(503, {"error": {"code": 503, "message": "down", "status": "UNAVAILABLE"}})
                     for _ in range(3)])
    with pytest.raises(Transient) as info:
        fetch(sup, make(GoogleAdsConnector), script, "1234567890")
    assert "request_attempts" in info.value.final_reason  # type: ignore[attr-defined]
    assert len(script.requests) == 3


def test_an_account_throttle_pauses_that_account_only() -> None:
    sup = supervisor("meta")
    key = ReportKey("meta", "111", DAY)
    throttle = Throttled("(#80000) too many calls from this ad-account", retry_after=0.5, scope="account")

    async def go() -> tuple[float, float, tuple[bool, float, str]]:
        decision = await sup.request_failed(key, throttle, 1, "page 1")
        started = time.monotonic()

        gate = QuotaLink(sup.permits).gate  # what a fetcher waits on

        async def granted(account: str) -> float:
            await gate(account)  # returns at the permit's send time
            return time.monotonic() - started

        paused, other = await asyncio.gather(granted("111"), granted("222"))
        return paused, other, decision

    paused, other, (retry, delay, _) = asyncio.run(go())
    assert retry and delay == pytest.approx(0.5)
    assert paused >= 0.45 and other < 0.2  # the throttled account waits its hint; the others go on
    assert sup.limiter.paused_s == 0  # the media was not paused


def test_app_throttles_in_a_row_pause_the_media() -> None:
    sup = supervisor("meta")

    async def go() -> None:
        for i in range(sup.settings.quota.pause_after_throttles):
            await sup.request_failed(ReportKey("meta", str(i), DAY), Throttled("(#4) app limit", retry_after=20), 1,
                                     "page 1")

    asyncio.run(go())
    assert sup.limiter.paused_s == pytest.approx(20)


def test_the_breaker_opens_on_many_accounts_never_on_one_accounts_streak() -> None:
    sup = supervisor("google_ads", request_attempts=50, retry_budget=100)
    down = Transient("UNAVAILABLE")

    async def go(accounts: list[str]) -> None:
        for n, account in enumerate(accounts, start=1):
            await sup.request_failed(ReportKey("google_ads", account, DAY), down, n, "stream")

    asyncio.run(go(["1"] * 20))
    assert sup.breaker.state == "closed"  # one account's bad streak: only its own requests back off
    asyncio.run(go(["2", "3"]))
    assert sup.breaker.state == "open" and sup.breaker.opened_count == 1  # three distinct accounts: media-wide


@pytest.mark.parametrize(("code", "scope"), [(80000, "account"), (17, "account"), (613, "account"), (4, "app"),
                                             (32, "app")])
def test_meta_throttles_carry_their_documented_scope(code: int, scope: str) -> None:
    from ingest.media.meta import classify

    err = classify(meta_error(400, code))
    assert isinstance(err, Throttled) and err.scope == scope


@pytest.mark.parametrize(("rate_scope", "scope"), [("ACCOUNT", "account"), ("DEVELOPER", "app")])
def test_google_rate_scope_decides_what_pauses(rate_scope: str, scope: str) -> None:
    from ingest.media.google_ads import classify_error

    err = {"code": 429, "status": "RESOURCE_EXHAUSTED", "message": "Too many requests.", "details": [{
        "@type": "type.googleapis.com/google.ads.googleads.v26.errors.GoogleAdsFailure",
        "errors": [{"errorCode": {"quotaError": "RESOURCE_EXHAUSTED"}, "message": "Too many requests.",
                    "details": {"quotaErrorDetails": {"rateScope": rate_scope, "rateName": "Requests",
                                                      "retryDelay": "12s"}}}]}]}
    out = classify_error(429, err, httpx.Headers(), b"{}")
    assert isinstance(out, Throttled) and out.scope == scope and out.retry_after == 12


def test_the_cut_body_budget_counts_cut_reads_not_other_failures() -> None:
    """Two 503s then one cut body: one cut read of two allowed, so the request is read again."""
    sup = supervisor("google_ads", malformed_attempts=2)
    unavailable = {"error": {"code": 503, "message": "down", "status": "UNAVAILABLE"}}
    batch = [{"results": [], "fieldMask": "campaign.id", "requestId": "r1"}]
    script = Script([respond(503, unavailable), respond(503, unavailable), respond(raw='[{"results": ['),
                     respond(body=batch)])
    rows, session = fetch(sup, make(GoogleAdsConnector), script, "1234567890")
    assert rows == [] and session.request_retries == 3 and len(script.requests) == 4
