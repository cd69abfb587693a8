"""Logs: Cloud Logging JSON shape, context bound on every line of a report's work, and
credentials redacted everywhere (messages, nested values, exceptions, stdlib records)."""

from __future__ import annotations

import asyncio
import json
import logging
from datetime import date

import pytest
import structlog

from ingest.config import MediaSettings
from ingest.errors import AuthError, IngestError, Transient, redact, register_secret, truncate
from ingest.logging import configure_logging, scrub
from ingest.media.base import Secret
from ingest.supervision.supervisor import MediaSupervisor
from ingest.tasks import ReportKey, ReportResult, Totals

DAY = date(2026, 11, 20)


@pytest.fixture(autouse=True)
def _logging() -> None:
    configure_logging()
    structlog.contextvars.clear_contextvars()
    yield
    structlog.contextvars.clear_contextvars()


def lines(err: str) -> list[dict]:
    return [json.loads(x) for x in err.splitlines() if x.startswith("{")]


def test_cloud_logging_shape_and_context(capsys: pytest.CaptureFixture[str]) -> None:
    structlog.contextvars.bind_contextvars(run_id="run-1")
    log = structlog.get_logger("t")
    log.info("hello", rows=3)
    log.warning("careful")
    log.error("bad")
    out = lines(capsys.readouterr().err)
    assert [o["severity"] for o in out] == ["INFO", "WARNING", "ERROR"]
    for o in out:
        assert o["run_id"] == "run-1" and o["timestamp"].endswith("Z") and "event" not in o
    assert out[0]["message"] == "hello" and out[0]["rows"] == 3


@pytest.mark.parametrize(
    "text, secret",
    [
        ("GET /v21.0/act_1/insights?access_token=EAABsecret1&limit=25", "EAABsecret1"),
        ("headers={'Authorization': 'Bearer ya29.secret2'}", "ya29.secret2"),
        ("Authorization: Basic dXNlcjpwYXNzd29yZA==", "dXNlcjpwYXNzd29yZA=="),
        ('{"developer-token": "devsecret3"}', "devsecret3"),
        ("postgresql://ingest:pgsecret4@db:5432/x", "pgsecret4"),
        ("https://ui/?token=uisecret5", "uisecret5"),
        ("refresh_token=rtsecret6&x=1", "rtsecret6"),
    ],
)
def test_redact_patterns(text: str, secret: str) -> None:
    assert secret not in redact(text)
    assert "***" in redact(text)


def test_known_secret_values_are_scrubbed_even_without_a_pattern() -> None:
    Secret("plain-value-nobody-would-match-42")  # a Secret registers its value on construction (and unpickling)
    assert redact("vendor echoed plain-value-nobody-would-match-42 in a body") == "vendor echoed *** in a body"
    register_secret("abc")  # too short to register safely: would scrub ordinary words
    assert redact("abc") == "abc"
    err = IngestError("failed with plain-value-nobody-would-match-42", body=b"echo plain-value-nobody-would-match-42")
    assert "plain-value" not in str(err) and "plain-value" not in (err.body or "")
    assert "plain-value" not in (truncate("x plain-value-nobody-would-match-42") or "")


def test_every_value_of_a_line_is_redacted(capsys: pytest.CaptureFixture[str]) -> None:
    log = structlog.get_logger("t")
    log.info("calling /x?access_token=tok-in-message", headers={"Authorization": "Bearer tok-in-dict"},
             urls=["/y?access_token=tok-in-list"], error=AuthError("Authorization: Bearer tok-in-exc-object"))
    try:
        raise RuntimeError("boom access_token=tok-in-traceback")
    except RuntimeError:
        log.exception("failed")
    logging.getLogger("urllib3.connectionpool").warning("library says Bearer tok-in-stdlib")
    err = capsys.readouterr().err
    assert "tok-in" not in err
    out = lines(err)
    assert out[1]["severity"] == "ERROR" and "RuntimeError" in out[1]["exception"]
    assert out[2]["logger"] == "urllib3.connectionpool" and out[2]["severity"] == "WARNING"


def test_scrub_handles_any_value() -> None:
    assert scrub({"a": ("Bearer x1234", 3, None)}) == {"a": ["Bearer ***", 3, None]}
    assert scrub(Secret("another-secret-value")) == "Secret(***)"


def _settings() -> MediaSettings:
    return MediaSettings.model_validate({
        "connector": "meta", "base_url": "http://127.0.0.1:1", "api_version": "v21.0",
        "accounts": [{"id": "1", "advertiser": "a"}], "fetchers": 1, "concurrency": 2,
        "retry": {"max_attempts": 3, "backoff_min_s": 0.001, "backoff_max_s": 0.01},
        "quota": {"requests_per_second": 1000, "burst": 100},
    })


class _LoggingFetcher:
    """Logs from inside the fetch (as connector/fetcher code does) and fails the first attempt."""

    def __init__(self) -> None:
        self.calls = 0

    async def fetch(self, key: ReportKey) -> ReportResult:
        self.calls += 1
        structlog.get_logger("fake.fetcher").info("fetching", report=str(key))
        if self.calls == 1:
            raise Transient("connection reset ?access_token=must-not-leak")
        return ReportResult(key, Totals(rows=1), 10, 1, (), 0.0)


def test_report_context_bound_on_every_line_of_the_work(capsys: pytest.CaptureFixture[str]) -> None:
    """The supervisor binds account, date and attempt around each attempt (the actor binds run_id
    and media); every line logged during that work — its own and the fetcher's — carries them."""
    fetcher = _LoggingFetcher()

    async def spawn(_i: int) -> _LoggingFetcher:
        return fetcher

    async def go() -> list:
        structlog.contextvars.bind_contextvars(run_id="run-ctx", media="meta")  # what SupervisorActor.run binds
        sup = MediaSupervisor("meta", _settings(), spawn)
        return [e async for e in sup.run([ReportKey("meta", "1", DAY)])]

    events = asyncio.run(asyncio.wait_for(go(), 10))
    assert [e.kind for e in events] == ["retry", "done"]
    out = [o for o in lines(capsys.readouterr().err) if o["message"] in ("fetching", "retry_decision")]
    assert [o["message"] for o in out] == ["fetching", "retry_decision", "fetching"]
    assert [o["attempt"] for o in out] == [1, 1, 2]
    for o in out:
        assert (o["run_id"], o["media"], o["account"], o["date"]) == ("run-ctx", "meta", "1", "2026-11-20"), o
    assert "must-not-leak" not in json.dumps(out)
