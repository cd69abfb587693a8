"""Each connector against its simulator: truth without faults, only our errors with faults.

No Ray, no emulators: each simulator runs in a background thread (``run_simulator``) and the
connector talks to it through a real ``httpx.AsyncClient`` and ``HttpSession``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from datetime import date
from pathlib import Path
from typing import Any

import httpx
import pytest

from ingest.errors import (
    AuthError,
    BadRequest,
    DataError,
    IngestError,
    RetriableError,
    Throttled,
    Transient,
)
from ingest.media.base import ConnectorSettings, HttpSession, Row, Secret, Usage
from ingest.media.registry import connector_class
from sandbox.simulators import SimulatorHandle, run_simulator
from sandbox.truth import (
    DENIED_ACCOUNT,
    DRIFT_ACCOUNT,
    EMPTY_ACCOUNT,
    FAILING_ACCOUNT,
    HOSTILE_ACCOUNT,
    SLOW_ACCOUNT,
    truth_rows,
)

VERSIONS = {"meta": "v27.0", "google_ads": "v26", "yahoo_ads": "v20"}
DAY = date(2026, 3, 14)
#: (id, media, connector options): Meta runs in both flows
FLOWS = [
    ("meta-sync", "meta", {"page_limit": 2}),
    ("meta-async", "meta", {"mode": "async", "page_limit": 3}),
    ("google_ads", "google_ads", {}),
    ("yahoo_ads", "yahoo_ads", {}),
]
ACCOUNTS = {"meta": "act_1234567", "google_ads": "123-456-7890", "yahoo_ads": "1002003"}


def connector(media: str, base_url: str, options: dict[str, Any], token: str = "tok-123"):
    cls = connector_class(media)
    settings = ConnectorSettings(
        media=media,
        base_url=base_url,
        api_version=VERSIONS[media],
        secrets={name: Secret(token) for name in cls.credential_names},
        options=options,
    )
    return cls(settings)


async def fetch(conn: Any, account: str, day: date = DAY, timeout: float = 5.0,
                usage: list[Usage] | None = None) -> tuple[list[Row], HttpSession]:
    async def poll_wait(n: int) -> None:
        await asyncio.sleep(0)

    async with httpx.AsyncClient(timeout=timeout) as client:
        http = HttpSession(client, poll_wait=poll_wait, on_usage=(usage.append if usage is not None else None))
        return await conn.fetch(http, account, day), http


def as_truth(rows: list[Row]) -> list[tuple[Any, ...]]:
    return [(r.campaign_id, r.campaign_name, r.impressions, r.clicks, r.spend, r.conversions, r.currency) for r in rows]


def expected(media: str, account: str, day: date = DAY, seed: int = 7) -> list[tuple[Any, ...]]:
    return [
        (t["campaign_id"], t["campaign_name"], t["impressions"], t["clicks"], t["spend"], t["conversions"],
         t["currency"])
        for t in truth_rows(media, account, day, seed)
    ]


@pytest.fixture(params=FLOWS, ids=[f[0] for f in FLOWS])
def flow(request: pytest.FixtureRequest) -> Iterator[tuple[str, dict[str, Any], SimulatorHandle]]:
    _, media, options = request.param
    with run_simulator(media, seed=7, page_size=2, account_rps=0, app_rps=0) as sim:
        yield media, options, sim


def test_faults_off_equals_truth(flow: tuple[str, dict[str, Any], SimulatorHandle]) -> None:
    media, options, sim = flow
    conn = connector(media, sim.base_url, options)
    for account in (ACCOUNTS[media], "77", EMPTY_ACCOUNT, SLOW_ACCOUNT):
        for day in (DAY, date(2026, 3, 15)):
            rows, http = asyncio.run(fetch(conn, account, day))
            assert as_truth(rows) == expected(media, account, day)
            assert all(r.account_id == account and r.date == day and r.media == media for r in rows)
            assert http.requests >= conn.minimum_requests()
    stats = sim.stats()
    assert stats["served_reports"] == 8 and stats["violations"] == 0 and stats["faults_total"] == 0
    # the control API serves the same truth
    truth = sim.truth(ACCOUNTS[media], DAY)
    assert [t["campaign_id"] for t in truth] == [e[0] for e in expected(media, ACCOUNTS[media])]


def test_some_campaigns_have_zero_metrics() -> None:
    zero = [t for m in VERSIONS for a in range(40) for t in truth_rows(m, str(1000 + a), DAY, 7)
            if t["impressions"] == 0]
    assert zero and all(t["spend"] == 0 and t["clicks"] == 0 for t in zero)


@pytest.mark.parametrize(
    ("account", "token", "error"),
    [
        (HOSTILE_ACCOUNT, "s3cr3t-value", DataError),
        (DRIFT_ACCOUNT, "s3cr3t-value", DataError),
        (DENIED_ACCOUNT, "s3cr3t-value", AuthError),
        (FAILING_ACCOUNT, "s3cr3t-value", RetriableError),  # Google: 500s; async jobs: JobFailed
        ("1234", "revoked", AuthError),
    ],
)
def test_reserved_accounts_and_revoked_token(
    flow: tuple[str, dict[str, Any], SimulatorHandle], account: str, token: str, error: type[IngestError]
) -> None:
    media, options, sim = flow
    if account == FAILING_ACCOUNT and media == "meta" and options.get("mode") != "async":
        pytest.skip("Meta sync has no job to fail")
    with pytest.raises(error) as info:
        asyncio.run(fetch(connector(media, sim.base_url, options, token=token), account))
    assert info.value.media == media and info.value.account == account and info.value.date == DAY.isoformat()
    assert "s3cr3t" not in str(info.value) and "s3cr3t" not in (info.value.body or "")


def test_down_switch_is_transient_and_reversible(flow: tuple[str, dict[str, Any], SimulatorHandle]) -> None:
    media, options, sim = flow
    conn = connector(media, sim.base_url, options)
    sim.configure(down=True)
    with pytest.raises(Transient):
        asyncio.run(fetch(conn, ACCOUNTS[media]))
    sim.configure(down=False)
    rows, _ = asyncio.run(fetch(conn, ACCOUNTS[media]))
    assert as_truth(rows) == expected(media, ACCOUNTS[media])
    assert sim.stats()["down_rejections"] == 1


ALL_FAULTS = {k: 1.0 for k in ("throttle", "server_error", "timeout", "drop", "truncated", "job_failed", "auth",
                               "drift")}


def test_faults_raise_only_our_errors_and_never_corrupt_truth(
        flow: tuple[str, dict[str, Any], SimulatorHandle]) -> None:
    media, options, sim = flow
    sim.configure(fault_rate=0.5, faults=ALL_FAULTS, hang_s=0.3)
    conn = connector(media, sim.base_url, options)
    outcomes: dict[str, int] = {}
    for i in range(30):
        account = str(5000 + i % 5)
        try:
            rows, _ = asyncio.run(fetch(conn, account, timeout=0.15))
        except IngestError as exc:  # anything else fails the test
            outcomes[exc.kind] = outcomes.get(exc.kind, 0) + 1
            assert exc.media == media and exc.account == account
        else:
            assert as_truth(rows) == expected(media, account)
            outcomes["ok"] = outcomes.get("ok", 0) + 1
    stats = sim.stats()
    assert stats["faults_total"] >= 10, stats
    assert len(outcomes) >= 3, outcomes
    # after faults, retrying with retriable-only faults always converges on the truth
    sim.configure(fault_rate=0.3, faults={"truncated": 0, "auth": 0, "drift": 0})
    for i in range(5):
        account = str(5000 + i)
        for _attempt in range(40):
            try:
                rows, _ = asyncio.run(fetch(conn, account, timeout=0.15))
                break
            except RetriableError:
                continue
        else:
            pytest.fail("never succeeded")
        assert as_truth(rows) == expected(media, account)


@pytest.mark.parametrize("media", list(VERSIONS))
def test_quota_violation_is_counted_and_throttled(media: str) -> None:
    with run_simulator(media, seed=7, account_rps=2, app_rps=0) as sim:
        conn = connector(media, sim.base_url, {})

        async def burst() -> list[Any]:
            return await asyncio.gather(*(fetch(conn, "4242") for _ in range(6)), return_exceptions=True)

        results = asyncio.run(burst())
        throttled = [r for r in results if isinstance(r, Throttled)]
        assert throttled, results
        assert all(isinstance(r, (tuple, IngestError)) for r in results)
        stats = sim.stats()
        assert stats["violations"] >= len(throttled)
        assert stats["violations_by_scope"].get("account", 0) >= 1
        if media == "google_ads":  # retryDelay from quotaErrorDetails
            assert all(t.retry_after and 0 < t.retry_after <= 1 for t in throttled)


def test_meta_usage_headers_reach_the_sink() -> None:
    with run_simulator("meta", seed=7, account_rps=10, app_rps=100) as sim:
        usage: list[Usage] = []
        asyncio.run(fetch(connector("meta", sim.base_url, {}), "1234", usage=usage))
        assert usage and 0 < usage[-1].utilization <= 1


def test_meta_throttle_hint_minutes_to_seconds() -> None:
    with run_simulator("meta", seed=7, account_rps=1, app_rps=0, regain_minutes=2) as sim:
        conn = connector("meta", sim.base_url, {})

        async def two() -> list[Any]:
            return await asyncio.gather(fetch(conn, "99"), fetch(conn, "99"), return_exceptions=True)

        throttled = [r for r in asyncio.run(two()) if isinstance(r, Throttled)]
        assert throttled and throttled[0].retry_after == 120.0 and throttled[0].code == "80000/2446079"


#: a version each platform has retired → what the real API answers (official fixtures' bodies)
EXPIRED = [("meta", "v21.0", BadRequest, "2635"),
           ("google_ads", "v22", BadRequest, "INVALID_ARGUMENT,requestError:UNSUPPORTED_VERSION"),
           ("yahoo_ads", "v16", BadRequest, "0004")]


@pytest.mark.parametrize(("media", "version", "error", "code"), EXPIRED, ids=[e[0] for e in EXPIRED])
def test_expired_api_version_is_refused_as_the_platform_does(media: str, version: str, error: type, code: str) -> None:
    with run_simulator(media, seed=7, fault_rate=0.0, latency_ms=0) as sim:
        conn = connector(media, sim.base_url, {})
        conn.settings = dataclasses.replace(conn.settings, api_version=version)
        with pytest.raises(error) as info:
            asyncio.run(fetch(conn, ACCOUNTS[media]))
        assert info.value.code == code


OFFICIAL = Path(__file__).resolve().parents[1] / "fixtures" / "official"


def test_simulators_emit_the_official_fixture_shapes() -> None:
    """Sims follow the fixtures: same top-level keys, header names, summary row form."""
    with run_simulator("yahoo_ads", seed=7, fault_rate=0.0, latency_ms=0) as sim:
        for lang, fixture in (("JA", "campaign_report_ja.csv"), ("EN", "campaign_report_en.csv")):
            base = f"{sim.base_url}/v20/ReportDefinitionService"
            headers = {"Authorization": "Bearer t", "x-z-base-account-id": "1002003"}
            op = {"reportName": "x", "reportType": "CAMPAIGN", "reportDateRangeType": "CUSTOM_DATE",
                  "dateRange": {"startDate": "20260314", "endDate": "20260314"},
                  "fields": ["DAY", "CAMPAIGN_ID", "CAMPAIGN_NAME", "IMPS", "CLICKS", "COST", "CONVERSIONS"]}
            if lang == "EN":
                op["reportLanguage"] = "EN"
            added = httpx.post(f"{base}/add", json={"accountId": 1002003, "operand": [op]}, headers=headers).json()
            official = json.loads((OFFICIAL / "yahoo_ads" / "add_response.json").read_text())
            assert set(added) == set(official)
            job = added["rval"]["values"][0]["reportDefinition"]["reportJobId"]
            for _ in range(10):
                got = httpx.post(f"{base}/get", json={"accountId": 1002003, "reportJobIds": [job]},
                                 headers=headers).json()
                if got["rval"]["values"][0]["reportDefinition"]["reportJobStatus"] == "COMPLETED":
                    break
            text = httpx.post(f"{base}/download", json={"accountId": 1002003, "reportJobId": job}, headers=headers).text
            lines = text.splitlines()
            want = (OFFICIAL / "yahoo_ads" / fixture).read_text(encoding="utf-8").splitlines()
            assert lines[0] == want[0]  # official display names in the asked language (JA by default)
            assert lines[-1].startswith(",,,") and want[-1].startswith(",,,")  # summary row: no label
    with run_simulator("google_ads", seed=7, fault_rate=0.0, latency_ms=0) as sim:
        body = httpx.post(f"{sim.base_url}/v26/customers/1234567890/googleAds:searchStream",
                          json={"query": "SELECT customer.id, customer.currency_code, campaign.id, campaign.name, "
                                         "metrics.impressions, metrics.clicks, metrics.cost_micros, "
                                         "metrics.conversions, segments.date FROM campaign "
                                         "WHERE segments.date = '2026-03-14'"},
                          headers={"Authorization": "Bearer t", "developer-token": "d"}).json()
        official = json.loads((OFFICIAL / "google_ads" / "search_stream.json").read_text())
        assert isinstance(body, list) and set(body[0]) <= set(official[-1])
        assert body[0]["fieldMask"] == official[0]["fieldMask"]
    with run_simulator("meta", seed=7, fault_rate=0.0, latency_ms=0) as sim:
        body = httpx.get(f"{sim.base_url}/v27.0/act_1234567/insights",
                         params={"level": "campaign", "fields": "account_id,campaign_id,campaign_name,impressions,"
                                 "clicks,spend,actions,account_currency",
                                 "time_range": '{"since":"2026-03-14","until":"2026-03-14"}', "time_increment": "1",
                                 "limit": "1"}, headers={"Authorization": "Bearer t"}).json()
        official = json.loads((OFFICIAL / "meta" / "insights_page1.json").read_text())
        assert set(body) == set(official) and set(body["paging"]) == set(official["paging"])
        assert set(body["data"][0]) <= set(official["data"][0])
        assert all(isinstance(body["data"][0][k], str) for k in ("impressions", "clicks", "spend"))

def test_control_api_config_and_reset() -> None:
    with run_simulator("yahoo_ads", seed=3) as sim:
        cfg = sim.configure(latency_ms=1, faults={"drift": 2})
        assert cfg["latency_ms"] == 1 and cfg["faults"]["drift"] == 2 and cfg["faults"]["throttle"] == 1
        with pytest.raises(httpx.HTTPStatusError):
            sim.configure(no_such_knob=1)
        asyncio.run(fetch(connector("yahoo_ads", sim.base_url, {}), "1"))
        assert sim.stats()["requests"] >= 3
        sim.reset()
        assert sim.stats()["requests"] == 0


def test_cli_runs_several_simulators_until_sigterm() -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "sandbox.simulators", "--port", "meta=0", "--port", "google_ads=0",
         "--port", "yahoo_ads=0", "--seed", "7", "--fault-rate", "0.02", "--latency-ms", "1"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        line = proc.stdout.readline() if proc.stdout else ""
        assert line.startswith("simulators ready "), (line, proc.stderr.read() if proc.poll() is not None else "")
        urls = json.loads(line.removeprefix("simulators ready "))
        assert set(urls) == {"meta", "google_ads", "yahoo_ads"}
        for url in urls.values():
            stats = httpx.get(url + "/_sim/stats", timeout=5).json()
            assert stats["requests"] == 0
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0


@pytest.mark.parametrize("kind", ["truncated", "server_error", "throttle"])
def test_each_fault_kind_at_its_own_rate_on_every_request_type(kind: str) -> None:
    """``fault_rates`` injects a kind on create, poll and page alike (a 200 cut short included)."""
    with run_simulator("meta", seed=7, page_size=2, account_rps=0, app_rps=0) as sim:
        base = f"{sim.base_url}/{VERSIONS['meta']}"
        headers = {"Authorization": "Bearer tok-123"}
        with httpx.Client(timeout=5, headers=headers) as client:
            params = {"level": "campaign",
                      "time_range": json.dumps({"since": DAY.isoformat(), "until": DAY.isoformat()}),
                      "time_increment": "1", "fields": "campaign_id,campaign_name,impressions"}
            created = client.post(f"{base}/act_1234567/insights", data=params).json()
            sim.configure(fault_rates={kind: 1.0})
            answers = [client.post(f"{base}/act_1234567/insights", data=params),                     # create
                       client.get(f"{base}/{created['report_run_id']}"),                               # poll
                       client.get(f"{base}/act_1234567/insights", params={**params, "limit": "2"})]    # page
        faults = sim.stats()["faults"]
    for answer in answers:
        if kind == "truncated":
            assert answer.status_code == 200
            with pytest.raises(ValueError):
                json.loads(answer.content)
        else:
            assert answer.status_code >= 400
    assert faults == {kind: 3}


def test_a_long_report_survives_faults_on_every_page() -> None:
    """The Meta simulator, async: a 28-day refetch report with 1-row pages (dozens of pages), 10 %
    of each recoverable fault kind on every request (create, poll, each page). Retrying the
    request — through the supervisor's policy — keeps the report run and the pages already read,
    and the rows equal the truth for every day."""
    from datetime import timedelta

    from ingest.config import MediaSettings
    from ingest.supervision.fetcher import QuotaLink
    from ingest.supervision.supervisor import MediaSupervisor
    from ingest.tasks import ReportKey

    async def _never(_: int) -> Any:
        raise AssertionError("no fetchers here")

    settings = MediaSettings.model_validate({
        "connector": "meta", "base_url": "http://127.0.0.1:1", "accounts": [{"id": "1234567", "advertiser": "a"}],
        "quota": {"requests_per_second": 1000, "burst": 100, "poll_min_s": 0.001, "poll_max_s": 0.001},
        "retry": {"backoff_min_s": 0.001, "backoff_max_s": 0.01, "request_attempts": 8, "retry_budget": 200}})
    sup = MediaSupervisor("meta", settings, _never)
    rates = {k: 0.1 for k in ("throttle", "server_error", "timeout", "drop", "truncated", "job_failed")}
    first, last = DAY - timedelta(days=27), DAY
    with run_simulator("meta", seed=7, page_size=1, account_rps=0, app_rps=0, hang_s=0.5, job_polls=1,
                       fault_rates=rates, regain_minutes=0) as sim:
        conn = connector("meta", sim.base_url, {"mode": "async", "page_limit": 1, "max_polls": 50})
        link = QuotaLink(sup.permits, None, sup.request_failed)
        key = ReportKey("meta", "act_1234567", first, 28)

        async def go() -> tuple[list[Row], HttpSession]:
            async with httpx.AsyncClient(timeout=0.3) as client:
                http = HttpSession(client, gate=lambda: link.gate("act_1234567"), retry=link.retry_hook(key))
                for _ in range(5):  # a job_failed fault fails the report run itself: only then a new one
                    try:
                        return await conn.fetch(http, "act_1234567", first, last), http
                    except Exception as exc:  # noqa: BLE001
                        if getattr(exc, "kind", "") != "job_failed":
                            raise
                raise AssertionError("report run failed 5 times")

        rows, http = asyncio.run(go())
        stats = sim.sim.stats()
    pages = sum(1 for p in http.pages if p.url.split("?")[0].endswith("/insights") and p.method == "GET")
    assert pages >= 25, stats["by_endpoint"]  # far more than 5 pages in this one report
    assert sum(stats["faults"].values()) >= 10  # faults landed on it, pages included
    for day in (first + timedelta(days=i) for i in range(28)):
        got = sorted(as_truth([r for r in rows if r.date == day]))
        assert got == sorted(expected("meta", "act_1234567", day)), day
