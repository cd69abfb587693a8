"""Notifications: a Slack-compatible incoming-webhook message at the end of *every* run
(success too — silence must never mean "fine": it can mean "never ran") and when a media's
circuit breaker opens.

- The webhook URL comes from an environment variable (``notify.webhook_url_env``, default
  ``INGEST_WEBHOOK_URL``); unset means notifications are off. The URL is itself a credential
  (whoever has it can post), so it is registered with :func:`ingest.errors.register_secret`
  and never logged — only its host is.
- A failing webhook (connection refused, HTTP error, timeout) is logged as ``notify_failed``
  and never fails the run: every public method here swallows its own errors.
- End-of-run messages are sent synchronously (bounded by ``timeout_s``) so they leave before
  the process exits; breaker messages are sent from a background thread so the driver keeps
  consuming events meanwhile, at most one per (media, breaker cycle) and
  ``MAX_BREAKER_MESSAGES`` per media per run.

The payload is ``{"text": ..., "blocks": [...]}``: ``text`` is the plain fallback (also what
Slack shows in notifications), ``blocks`` the Block Kit layout (header, fields, per-media
counts, failed items, a link to the run's page when ``notify.ui_base_url`` is configured).
"""

from __future__ import annotations

import threading
import time
from collections import defaultdict
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import httpx
import structlog

from ingest.config import NotifySettings
from ingest.ui.render import fmt_dur  # one duration format for the page and the messages
from ingest.errors import redact, register_secret
from ingest.outcomes import PartitionStatus, RunCounts, RunOutcome

if TYPE_CHECKING:
    from ingest.job import RunReport

log = structlog.get_logger("ingest.notify")

MAX_BREAKER_MESSAGES = 5
_EMOJI = {"success": ":white_check_mark:", "partial": ":warning:", "failed": ":x:", "aborted": ":x:"}

Post = Callable[[str, dict[str, Any], float], None]


def _esc(text: Any, limit: int = 300) -> str:
    """Slack mrkdwn escaping (&, <, >), credentials redacted, length bounded."""
    s = redact(str(text if text is not None else ""))
    if len(s) > limit:
        s = s[: limit - 1] + "…"
    return s.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _duration(seconds: float | None) -> str:
    return fmt_dur(seconds) or "?"


def _aware(ts: datetime | None) -> datetime | None:
    if ts is None:
        return None
    return ts if ts.tzinfo else ts.replace(tzinfo=UTC)


def run_link(base_url: str | None, run_id: str) -> str | None:
    return f"{base_url.rstrip('/')}/runs/{run_id}" if base_url else None


def run_message(
    *,
    run_id: str,
    kind: str,
    outcome: str,
    exit_code: int | None,
    dates: tuple[str, str],
    counts: RunCounts,
    failures: list[Mapping[str, Any]],
    stage2_failed: list[str],
    duration_s: float | None,
    link: str | None,
    max_failed_items: int = 10,
    error: str | None = None,
) -> dict[str, Any]:
    """The end-of-run message (pure: tests call it directly)."""
    planned, done, failed = counts.planned, counts.ok, counts.failed
    day = dates[0] if dates[0] == dates[1] else f"{dates[0]}..{dates[1]}"
    emoji = _EMOJI.get(outcome, ":grey_question:")
    text = (f"{emoji} ingest {kind} {day}: {outcome.upper()} — {done}/{planned} reports ok, {failed} failed"
            f"{f', {len(stage2_failed)} stage-2 partitions failed' if stage2_failed else ''}"
            f", took {_duration(duration_s)}"
            f" (run {run_id})")
    if error:
        text += f": {_esc(error, 200)}"
    if link:
        text += f" <{link}|open>"
    blocks: list[dict[str, Any]] = [
        {"type": "header", "text": {"type": "plain_text", "text": f"ingest {kind} {day}: {outcome.upper()}"}},
        {"type": "section", "fields": [
            {"type": "mrkdwn", "text": f"*Run*\n`{_esc(run_id)}`"},
            {"type": "mrkdwn",
             "text": f"*Outcome*\n{emoji} {outcome}" + (f" (exit {exit_code})" if exit_code is not None else "")},
            {"type": "mrkdwn", "text": f"*Reports*\n{done}/{planned} ok, {failed} failed"},
            {"type": "mrkdwn", "text": f"*Duration*\n{_duration(duration_s)}"},
        ]},
    ]
    if counts:
        lines = []
        for name, m in counts.items():
            lines.append(f"*{_esc(name)}*: {m.done} done · {m.skipped} skipped · "
                         f"{m.failed} failed · {m.retries} retries · {m.rows} rows")
        blocks.append({"type": "section", "text": {"type": "mrkdwn", "text": "\n".join(lines)}})
    if error:
        blocks.append({"type": "section", "text": {"type": "mrkdwn", "text": f"*Aborted:* {_esc(error, 500)}"}})
    if failures:
        shown = failures[:max_failed_items]
        lines = [f"• `{_esc(f.get('media'))}/{_esc(f.get('account_id'))}/{_esc(f.get('date'))}` after "
                 f"{f.get('attempts', '?')} attempts: {_esc(f.get('error_kind'))}: {_esc(f.get('error_message'), 200)}"
                 for f in shown]
        if len(failures) > len(shown):
            lines.append(f"…and {len(failures) - len(shown)} more")
        blocks.append({"type": "section", "text": {"type": "mrkdwn", "text": "*Failed reports*\n" + "\n".join(lines)}})
    if stage2_failed:
        lines = [f"• {_esc(p, 250)}" for p in stage2_failed[:max_failed_items]]
        blocks.append({"type": "section", "text": {"type": "mrkdwn", "text": "*Stage 2 failed*\n" + "\n".join(lines)}})
    if link:
        blocks.append({"type": "section", "text": {"type": "mrkdwn", "text": f"<{link}|Open run {_esc(run_id)}>"}})
    return {"text": text, "blocks": blocks}


def breaker_message(*, run_id: str, media: str, cycle: Any, error_kind: str | None, reason: str | None,
                    account: str | None, day: str | None, link: str | None) -> dict[str, Any]:
    where = f" (at {_esc(account)}/{_esc(day)})" if account else ""
    text = (f":rotating_light: ingest: {media} circuit breaker OPEN (cycle {cycle}) in run {run_id}{where}: "
            f"{_esc(error_kind)}: {_esc(reason, 200)} — requests held until a probe succeeds")
    if link:
        text += f" <{link}|open>"
    blocks: list[dict[str, Any]] = [
        {"type": "header", "text": {"type": "plain_text", "text": f"{media}: circuit breaker open"}},
        {"type": "section", "text": {"type": "mrkdwn", "text": (
            f"Run `{_esc(run_id)}`, cycle {cycle}{where}\n*{_esc(error_kind)}*: {_esc(reason, 500)}\n"
            "Requests to this media are held until a probe succeeds; the run goes on with the other media.")}},
    ]
    if link:
        blocks.append({"type": "section", "text": {"type": "mrkdwn", "text": f"<{link}|Open run {_esc(run_id)}>"}})
    return {"text": text, "blocks": blocks}


def _http_post(url: str, payload: dict[str, Any], timeout_s: float) -> None:
    with httpx.Client(timeout=timeout_s, follow_redirects=False) as client:
        response = client.post(url, json=payload)
    if response.status_code >= 300:
        raise WebhookRejected(response.status_code, response.text[:200])


class WebhookRejected(Exception):
    def __init__(self, status: int, body: str) -> None:
        super().__init__(f"HTTP {status}: {body}")
        self.status = status
        self.body = body


class Notifier:
    """Posts run and breaker messages; never raises, never blocks a run longer than its timeout."""

    def __init__(self, settings: NotifySettings, environ: Mapping[str, str], *, post: Post | None = None) -> None:
        self.settings = settings
        self.url = (environ.get(settings.webhook_url_env) or "").strip() or None
        if self.url:
            register_secret(self.url)
            path = urlsplit(self.url).path
            if len(path) > 8:
                register_secret(path)  # Slack's secret is the path
        self._post = post or _http_post
        self._threads: list[threading.Thread] = []
        self._breakers: dict[tuple[str, str], set[Any]] = defaultdict(set)
        self._lock = threading.Lock()
        #: what was attempted: (kind, ok) per message, for the run summary and tests
        self.sent: list[tuple[str, bool]] = []

    @property
    def enabled(self) -> bool:
        return self.url is not None

    def _host(self) -> str:
        return urlsplit(self.url or "").netloc.rsplit("@", 1)[-1]

    def send(self, kind: str, payload: dict[str, Any]) -> bool:
        """POST one message; True if the webhook accepted it. A transient failure (connection,
        timeout, 429/5xx) is posted again with the supervision backoff, for at most
        ``max_attempts`` posts started within ``retry_within_s``; a 4xx is final. Failures are
        logged, never raised."""
        if not self.url:
            return False
        from ingest.config import RetrySettings
        from ingest.supervision.policy import backoff_delay

        s = self.settings
        backoff = RetrySettings(backoff_min_s=s.backoff_min_s, backoff_max_s=max(s.backoff_min_s, 8.0))
        started = time.perf_counter()
        for attempt in range(1, s.max_attempts + 1):
            try:
                self._post(self.url, payload, s.timeout_s)
            except Exception as exc:  # noqa: BLE001 - a webhook must never fail the run
                reason = (f"HTTP {exc.status}: {exc.body}" if isinstance(exc, WebhookRejected)
                          else f"{type(exc).__name__}: {exc}")
                transient = not isinstance(exc, WebhookRejected) or exc.status == 429 or exc.status >= 500
                wait = backoff_delay(attempt, backoff)
                if transient and attempt < s.max_attempts and time.perf_counter() - started + wait <= s.retry_within_s:
                    log.info("notify_retry", notification=kind, webhook_host=self._host(), attempt=attempt,
                             delay_s=round(wait, 2), reason=redact(reason)[:300])
                    time.sleep(wait)
                    continue
                log.warning("notify_failed", notification=kind, webhook_host=self._host(), reason=redact(reason)[:300],
                            attempts=attempt, seconds=round(time.perf_counter() - started, 3))
                with self._lock:
                    self.sent.append((kind, False))
                return False
            log.info("notify_sent", notification=kind, webhook_host=self._host(), attempts=attempt,
                     seconds=round(time.perf_counter() - started, 3))
            with self._lock:
                self.sent.append((kind, True))
            return True
        return False

    # -- what the driver calls --------------------------------------------------------------
    def breaker_open(self, run_id: str, event: Any) -> None:
        """A media's breaker opened: notify in the background (at most once per cycle)."""
        if not self.url:
            return
        try:
            cycle = (event.extra or {}).get("cycle", "?")
            seen = self._breakers[(run_id, event.media)]
            if cycle in seen or len(seen) >= MAX_BREAKER_MESSAGES:
                return
            seen.add(cycle)
            key = event.key
            payload = breaker_message(
                run_id=run_id, media=event.media, cycle=cycle, error_kind=event.error_kind, reason=event.message,
                account=key.account if key else None, day=key.day.isoformat() if key else None,
                link=run_link(self.settings.ui_base_url, run_id))
            thread = threading.Thread(target=self.send, args=("breaker_open", payload), daemon=True,
                                      name=f"notify-breaker-{event.media}")
            self._threads.append(thread)
            thread.start()
        except Exception as exc:  # noqa: BLE001
            log.warning("notify_failed", notification="breaker_open", reason=f"{type(exc).__name__}: {exc}")

    def run_finished(self, report: RunReport, run_row: Mapping[str, Any] | None, *, kind: str,
                     dates: tuple[str, str], error: BaseException | None = None) -> bool:
        """End of a run (success, partial, failed or aborted): one message, sent before returning."""
        if not self.url:
            return False
        try:
            self.wait(self.settings.timeout_s)  # breaker messages first, in order
            duration = None
            if run_row and run_row.get("started_at"):
                end = _aware(run_row.get("finished_at")) or datetime.now(UTC)
                duration = (end - _aware(run_row["started_at"])).total_seconds()  # type: ignore[operator]
            stage2_failed = []
            if report.stage2 is not None:
                stage2_failed = [f"{p.media}/{p.date}: {p.error or p.detail}"
                                 for p in report.stage2.by_status(PartitionStatus.FAILED)]
            outcome = RunOutcome.ABORTED if error is not None else report.outcome
            payload = run_message(
                run_id=report.run_id, kind=kind, outcome=outcome,
                exit_code=None if error is not None else report.exit_code, dates=dates,
                counts=report.media,
                failures=[{**f, "date": str(f.get("date"))} for f in report.failures],
                stage2_failed=stage2_failed, duration_s=duration,
                link=run_link(self.settings.ui_base_url, report.run_id),
                max_failed_items=self.settings.max_failed_items,
                error=None if error is None else f"{type(error).__name__}: {error}",
            )
        except Exception as exc:  # noqa: BLE001
            log.warning("notify_failed", notification="run_finished", reason=f"{type(exc).__name__}: {exc}")
            return False
        return self.send("run_finished", payload)

    def wait(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        for thread in list(self._threads):
            thread.join(max(0.0, deadline - time.monotonic()))
        self._threads = [t for t in self._threads if t.is_alive()]
