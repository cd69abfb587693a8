"""Notifications: the Slack-compatible message, a real local webhook receiver, and failing
webhooks (HTTP 500, connection refused, timeout) that are logged and never raise."""

from __future__ import annotations

import json
import time
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from ingest.config import NotifySettings, load_config
from ingest.job import NightlyJob, RunReport
from ingest.outcomes import MediaCounts, RunCounts, RunOutcome
from ingest.logging import configure_logging
from ingest.notify import Notifier, WebhookRejected, run_message
from sandbox.stack import free_port
from ingest.tasks import Event, ReportKey
from tests.webhook import Receiver

REPO = Path(__file__).resolve().parents[2]
DAY = date(2026, 11, 20)


def report(outcome: str = "partial") -> RunReport:
    r = RunReport("run-20261121T010000-abc123", RunOutcome(outcome), 3 if outcome == "partial" else 0, RunCounts({
        "meta": MediaCounts(planned=4, done=3, failed=1, retries=5, rows=70, requests=12),
        "google_ads": MediaCounts(planned=3, done=3, rows=45, requests=3),
    }))
    if outcome == "partial":
        r.failures = [{"media": "meta", "account_id": "100200300", "date": DAY, "attempts": 6,
                       "error_kind": "throttled",
                       "error_message": "throttled: too many calls GET /x?access_token=EAAB-leak <script> "
                                        "→ retries exhausted"}]
    return r


def run_row() -> dict[str, Any]:
    start = datetime(2026, 11, 21, 1, 0, tzinfo=UTC)
    return {"started_at": start, "finished_at": start + timedelta(seconds=754)}


def settings(**over: Any) -> NotifySettings:
    return NotifySettings.model_validate({"ui_base_url": "http://ops.example:8080", "timeout_s": 1.0, **over})


def test_run_message_is_posted_to_the_webhook() -> None:
    with Receiver() as rx:
        n = Notifier(settings(), {"INGEST_WEBHOOK_URL": rx.url})
        assert n.run_finished(report(), run_row(), kind="run", dates=("2026-11-20", "2026-11-20")) is True
    assert len(rx.posts) == 1 and rx.posts[0]["ctype"] == "application/json"
    msg = rx.posts[0]["json"]
    text, blocks = msg["text"], msg["blocks"]
    assert "PARTIAL" in text and "6/7 reports ok, 1 failed" in text and "12m34s" in text
    assert "<http://ops.example:8080/runs/run-20261121T010000-abc123|open>" in text
    flat = json.dumps(blocks)
    assert blocks[0]["type"] == "header"
    assert "*meta*: 3 done" in flat and "1 failed" in flat and "*google_ads*: 3 done" in flat
    assert "meta/100200300/2026-11-20" in flat and "after 6 attempts" in flat
    assert "EAAB-leak" not in json.dumps(msg) and "&lt;script&gt;" in flat  # redacted and escaped
    assert n.sent == [("run_finished", True)]


def test_success_is_notified_too() -> None:
    msg = run_message(run_id="r1", kind="run", outcome="success", exit_code=0, dates=("2026-11-20", "2026-11-20"),
                      counts=RunCounts({"meta": MediaCounts(planned=4, done=4)}), failures=[], stage2_failed=[],
                      duration_s=42.0, link=None)
    assert msg["text"].startswith(":white_check_mark: ingest run 2026-11-20: SUCCESS — 4/4 reports ok, 0 failed")
    assert "Failed reports" not in json.dumps(msg["blocks"])


@pytest.mark.parametrize("case", ["http_500", "refused", "timeout"])
def test_failing_webhook_is_logged_and_never_raises(case: str, capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging()

    def notify(url: str) -> bool:
        started = time.monotonic()
        ok = Notifier(settings(timeout_s=0.5, max_attempts=3, backoff_min_s=0.05, retry_within_s=1.0),
                      {"INGEST_WEBHOOK_URL": url}).run_finished(report(), run_row(), kind="run", dates=("a", "a"))
        assert time.monotonic() - started < 3.5  # bounded: 3 posts of ≤ 0.5 s, retries start within 1 s
        return ok

    if case == "refused":
        ok = notify(f"http://127.0.0.1:{free_port()}/services/T/B/webhook-path-secret")  # nothing listens there
    else:
        with Receiver(status=500 if case == "http_500" else 200, delay_s=1.5 if case == "timeout" else 0.0) as rx:
            ok = notify(rx.url)
            assert 2 <= len(rx.posts) <= 3  # a transient failure is posted again, a bounded number of times
    assert ok is False
    err = capsys.readouterr().err
    retried = [json.loads(x) for x in err.splitlines() if '"notify_retry"' in x]
    assert retried and "webhook-path-secret" not in json.dumps(retried)
    failed = [json.loads(x) for x in err.splitlines() if '"notify_failed"' in x]
    assert len(failed) == 1 and failed[0]["severity"] == "WARNING" and failed[0]["attempts"] >= 2
    assert failed[0]["webhook_host"].startswith("127.0.0.1:")
    assert {"http_500": "HTTP 500", "refused": "ConnectError", "timeout": "Timeout"}[case] in failed[0]["reason"]
    assert "webhook-path-secret" not in err  # the webhook URL is a credential: only its host is logged


def test_no_url_means_off() -> None:
    n = Notifier(settings(), {})
    assert not n.enabled and n.run_finished(report(), run_row(), kind="run", dates=("a", "a")) is False


def test_breaker_open_event_notifies_from_the_driver(tmp_path: Path) -> None:
    """NightlyJob._record (the driver's single event sink) posts once per breaker cycle, in the background."""
    cfg = load_config(REPO / "config" / "local.yaml",
                      {"database": {"url": f"sqlite:///{tmp_path / 'l.db'}", "url_env": None},
                       "notify": {"ui_base_url": "http://ops:8080"}})
    with Receiver() as rx:
        job = NightlyJob(cfg, environ={"INGEST_WEBHOOK_URL": rx.url})
        job.ledger.migrate()
        key = ReportKey("meta", "100200300", DAY)
        ev = Event("breaker_open", "meta", key, 3, error_kind="throttled", message="throttled: (#80000) too many calls",
                   extra={"cycle": 1})
        summary = MediaCounts()
        job._record("run-x", ev, summary, {key}, {})
        job._record("run-x", ev, summary, {key}, {})  # same cycle again: no second message
        job.notifier.wait(5)
    assert len(rx.posts) == 1
    msg = rx.posts[0]["json"]
    assert "meta circuit breaker OPEN (cycle 1) in run run-x" in msg["text"]
    assert "<http://ops:8080/runs/run-x|open>" in msg["text"] and "100200300" in msg["text"]
    assert [e["kind"] for e in job.ledger.events("run-x")] == ["breaker_open", "breaker_open"]


def test_a_webhook_that_recovers_gets_the_message_and_a_4xx_is_not_retried() -> None:
    calls: list[str] = []

    def flaky(url: str, payload: dict[str, Any], timeout_s: float) -> None:
        calls.append(url)
        if len(calls) < 3:
            raise WebhookRejected(503, "busy")

    n = Notifier(settings(backoff_min_s=0.01), {"INGEST_WEBHOOK_URL": "http://hook.test/services/x"}, post=flaky)
    assert n.send("run_finished", {"text": "x"}) is True and len(calls) == 3 and n.sent == [("run_finished", True)]

    calls.clear()

    def gone(url: str, payload: dict[str, Any], timeout_s: float) -> None:
        calls.append(url)
        raise WebhookRejected(404, "no_service")

    n = Notifier(settings(backoff_min_s=0.01), {"INGEST_WEBHOOK_URL": "http://hook.test/services/x"}, post=gone)
    assert n.send("run_finished", {"text": "x"}) is False and len(calls) == 1  # a wrong URL does not heal
