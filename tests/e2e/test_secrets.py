"""The whole pipeline with known, unique credential values, the simulators injecting retriable
faults (so error paths run: retries, error messages, raw exchanges of failed attempts), and a
webhook that answers HTTP 500:

- the run still succeeds (a failing webhook is only logged), and the webhook got the message;
- no credential value appears in any log line (the driver's stdout/stderr and every Ray worker
  log file of the session), any ledger or mart row, any GCS object, or any page of the UI;
- worker log lines of a report's work carry run_id, media, account, date and attempt.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Callable
from datetime import date
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from aiohttp.test_utils import TestClient, TestServer

from ingest.config import PipelineConfig
from ingest.job import EXIT_SUCCESS, NightlyJob, RunRequest
from ingest.logging import configure_logging
from ingest.ui.app import create_app
from ingest.ui.queries import LedgerReader, read_only_engine
from sandbox.cli import SANDBOX_CREDENTIALS
from sandbox.oauth_sim import ISSUED_PREFIX
from tests.webhook import Receiver

DAY = date(2026, 11, 19)
TOKEN_VARS = tuple(SANDBOX_CREDENTIALS)  # static tokens and the OAuth refresh triples
# HTTP 500s only (retriable, no server hints to wait out), few enough that every report succeeds
FAULTS = {"fault_rate": 0.15, "faults": {"throttle": 0.0, "server_error": 1.0, "timeout": 0.0, "drop": 0.0,
                                         "job_failed": 0.0, "truncated": 0.0, "auth": 0.0, "drift": 0.0}}
FAST = {"retry": {"max_attempts": 12, "request_attempts": 12, "backoff_min_s": 0.01, "backoff_max_s": 0.1},
        "breaker": {"failure_threshold": 50, "open_s": 0.2}}


def _sim(stack: Any, media: str, method: str, path: str, body: Any = None) -> Any:
    with httpx.Client(timeout=10) as client:
        resp = client.request(method, f"{stack.spec.sim_url(media)}{path}", json=body)
        resp.raise_for_status()
        return resp.json()


def sim_stats_issued(stack: Any, media: str) -> int:
    return int(_sim(stack, media, "GET", "/_sim/stats")["tokens_issued"])


def _ray_log_files() -> list[Path]:
    try:
        import ray

        node = ray._private.worker._global_node  # noqa: SLF001 - the only way to the session's log dir
        return sorted(p for p in Path(node.get_session_dir_path(), "logs").rglob("*") if p.is_file())
    except Exception:  # noqa: BLE001 - not reachable (e.g. a remote cluster): the driver's output still counts
        return []


def _pages(url: str, run_id: str, cells: list[tuple[str, str, str]]) -> str:
    async def go() -> str:
        out = []
        async with TestClient(TestServer(create_app(LedgerReader(read_only_engine(url))))) as client:
            paths = ["/", f"/runs/{run_id}"]
            for media, account, day in cells:
                paths += [f"/runs/{run_id}/cells/{media}/{day}", f"/runs/{run_id}/cells/{media}/{day}/{account}"]
            for path in paths:
                resp = await client.get(path)
                assert resp.status == 200, path
                out.append(await resp.text())
        return "\n".join(out)

    return asyncio.run(go())


@pytest.mark.stack
def test_secrets_stay_out_and_failing_webhook_never_fails_the_run(
        stack, make_config: Callable[..., PipelineConfig], sqlite_url: str, monkeypatch: pytest.MonkeyPatch,
        capfd: pytest.CaptureFixture[str]) -> None:  # type: ignore[no-untyped-def]
    secrets = {var: f"{var.lower()}-{uuid.uuid4().hex}" for var in TOKEN_VARS}
    for var, value in secrets.items():
        monkeypatch.setenv(var, value)
    configure_logging()
    cfg = make_config(stack, sqlite_url, notify={"ui_base_url": "http://127.0.0.1:8080", "timeout_s": 2,
                                               "max_attempts": 2, "backoff_min_s": 0.1},
                      media={m: FAST for m in stack.spec.sim_ports})
    saved = {m: _sim(stack, m, "GET", "/_sim/config") for m in cfg.media}
    logs_before = {p: p.stat().st_size for p in _ray_log_files()}
    with Receiver(status=500) as rx:
        monkeypatch.setenv("INGEST_WEBHOOK_URL", rx.url)
        try:
            for m in cfg.media:
                _sim(stack, m, "POST", "/_sim/config", FAULTS)
            job = NightlyJob(cfg)
            report = job.execute(RunRequest("run", [DAY], cfg.media_names()))
        finally:
            for m, conf in saved.items():
                _sim(stack, m, "POST", "/_sim/config", {k: conf[k] for k in ("fault_rate", "faults") if k in conf})
    captured = capfd.readouterr()

    # the webhook failed (HTTP 500) and the run succeeded anyway
    assert report.outcome == "success" and report.exit_code == EXIT_SUCCESS, report.failures
    assert ("run_finished", False) in job.notifier.sent
    finished = [p["json"] for p in rx.posts if "circuit breaker" not in p["json"]["text"]]
    # posted again after each 500 (bounded), always the same message
    assert finished and all(f == finished[0] for f in finished)
    assert "SUCCESS" in finished[0]["text"] and report.run_id in finished[0]["text"]
    assert any('"notify_failed"' in line and "HTTP 500" in line for line in captured.err.splitlines())
    retries = sum(m.retries for m in report.media.values())  # > 0 but for bad luck (~1%): error paths ran

    # the webhook path is a credential too, and so is every access token the OAuth endpoints issued
    values = list(secrets.values()) + [rx.url.split("/", 3)[-1], ISSUED_PREFIX]
    assert all(sim_stats_issued(stack, m) >= 1 for m in ("google_ads", "yahoo_ads"))

    def clean(where: str, text: str) -> None:
        for v in values:
            assert v not in text, f"a credential leaked into {where}"

    # every log line: the driver's, and every Ray worker's log file of this session
    clean("the driver's output", captured.out + captured.err)
    worker_lines = []
    for path in _ray_log_files():
        data = path.read_bytes()
        clean(f"Ray log {path.name}", data.decode("utf-8", "replace"))
        if path.name.startswith("worker-") and path.suffix in (".err", ".out"):
            fresh = data[logs_before.get(path, 0):].decode("utf-8", "replace")
            worker_lines += [json.loads(x) for x in fresh.splitlines() if x.startswith("{") and report.run_id in x]
    work = [x for x in worker_lines if x.get("message") == "retry_decision"]
    print(f"retries={retries}, worker log lines of this run={len(worker_lines)}, retry_decision lines={len(work)}")
    if _ray_log_files() and retries:
        assert work, "no retry_decision line found in the Ray worker logs"
        for line in work:
            assert line["run_id"] == report.run_id and line["media"] in cfg.media and line["date"] == DAY.isoformat()
            assert line["account"] and isinstance(line["attempt"], int) and line["severity"] == "INFO"

    # every ledger and mart row
    engine = sa.create_engine(sqlite_url)
    with engine.connect() as conn:
        names = sa.inspect(conn).get_table_names()
        dump = "\n".join(repr(conn.execute(sa.text(f'SELECT * FROM "{t}"')).all()) for t in names)
    engine.dispose()
    assert "ingest_task_events" in names and report.run_id in dump
    clean("the ledger", dump)

    # every GCS object (the fake-gcs-server filesystem backend: objects are files)
    objects = [p for p in (stack.spec.gcs_root / cfg.gcs.bucket).rglob("*") if p.is_file()]
    assert any("/raw/" in str(p) for p in objects)
    for path in objects:
        clean(f"gs://{cfg.gcs.bucket}/{path.name}", path.read_bytes().decode("utf-8", "replace"))

    # every page of the UI for this run
    with sa.create_engine(sqlite_url).connect() as conn:
        cells = [(m, a, str(d)) for m, a, d in conn.execute(sa.text(
            "SELECT media, account_id, date FROM ingest_report_tasks WHERE run_id = :r"), {"r": report.run_id})]
    html = _pages(sqlite_url, report.run_id, cells)
    assert report.run_id in html
    clean("the UI", html)
