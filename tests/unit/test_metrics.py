"""The supervisor's events become the metrics a dashboard and an alert rule read."""

from __future__ import annotations

from collections import Counter as Tally
from datetime import date
from decimal import Decimal

from ingest.supervision.metrics import PipelineMetrics
from ingest.tasks import Event, ReportKey, ReportResult, Totals

KEY = ReportKey("meta", "1", date(2026, 11, 20))


class Recorder:
    values: Tally[tuple[str, tuple[tuple[str, str], ...]]] = Tally()
    last: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}

    def __init__(self, name: str, description: str = "", tag_keys: tuple[str, ...] = ()) -> None:
        self.name, self.tag_keys = name, tag_keys

    def _key(self, tags: dict[str, str]) -> tuple[str, tuple[tuple[str, str], ...]]:
        assert set(tags) == set(self.tag_keys), (self.name, tags)  # every tag given, no others
        return self.name, tuple(sorted(tags.items()))

    def inc(self, value: float = 1, tags: dict[str, str] | None = None) -> None:
        Recorder.values[self._key(tags or {})] += value

    def set(self, value: float, tags: dict[str, str] | None = None) -> None:
        Recorder.last[self._key(tags or {})] = value


def test_events_map_to_metrics() -> None:
    Recorder.values.clear()
    Recorder.last.clear()
    m = PipelineMetrics("meta", counter=Recorder, gauge=Recorder)
    result = ReportResult(KEY, Totals(1, 1, 1, Decimal(1), Decimal(0)), 2048, 3, (), 0.1)
    for event in (
        Event("request_retry", "meta", KEY, 1, error_kind="throttled", extra={"scope": "account"}),
        Event("request_retry", "meta", KEY, 1, error_kind="transient"),
        Event("breaker_open", "meta", KEY, 1, error_kind="transient"),
        Event("done", "meta", KEY, 1, result=result),
        Event("failed", "meta", KEY, 2, error_kind="auth"),
    ):
        m.observe(event)
    v: Tally[tuple[str, str]] = Tally()
    for (name, tags), n in Recorder.values.items():
        v[(name, dict(tags).get("outcome") or dict(tags).get("scope") or "")] += n
    assert v[("ingest_reports", "done")] == 1 and v[("ingest_reports", "failed")] == 1
    assert v[("ingest_retries", "request")] == 2 and v[("ingest_throttle_pauses", "account")] == 1
    assert v[("ingest_bytes_landed", "")] == 2048
    assert Recorder.last[("ingest_breaker_open", (("media", "meta"),))] == 1
    m.observe(Event("breaker_closed", "meta", KEY, 1))
    assert Recorder.last[("ingest_breaker_open", (("media", "meta"),))] == 0


def test_real_ray_metrics_accept_the_tags() -> None:
    """The real classes validate names and tag keys when created and recorded (no cluster needed
    to construct them; recording before ray.init is a no-op)."""
    m = PipelineMetrics("google_ads")
    m.observe(Event("failed", "google_ads", KEY, 1, error_kind="data"))
    assert m.reports.info["name"] == "ingest_reports"  # type: ignore[index]
