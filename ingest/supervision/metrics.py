"""What a dashboard or an alert rule reads: Ray's metrics API, recorded by each media's supervisor.

Ray exports application metrics on every node's metrics endpoint (scraped by Prometheus; the
Ray dashboard's Grafana shows them) with a ``ray_`` prefix, counters with ``_total``:

    ray_ingest_reports_total{media, outcome="done"|"failed", error_class}
    ray_ingest_retries_total{media, scope="request"|"report", error_class}
    ray_ingest_throttle_pauses_total{media, scope="account"|"app"|"unknown"}
    ray_ingest_breaker_open{media}                 1 while the media's breaker is open
    ray_ingest_bytes_landed_total{media}           raw JSON + CSV written to GCS

``PipelineMetrics.observe`` maps the supervisor's event stream onto them; it is plain code
(the metric classes are injected), so the mapping is tested without Ray.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ingest.tasks import Event

MetricFactory = Callable[..., Any]


class PipelineMetrics:
    def __init__(self, media: str, counter: MetricFactory | None = None, gauge: MetricFactory | None = None) -> None:
        if counter is None or gauge is None:
            from ray.util.metrics import Counter, Gauge

            counter, gauge = counter or Counter, gauge or Gauge
        self.media = media
        self.reports = counter("ingest_reports", description="reports finished, by outcome and error class",
                               tag_keys=("media", "outcome", "error_class"))
        self.retries = counter("ingest_retries", description="requests (scope=request) or reports (scope=report) "
                               "sent again", tag_keys=("media", "scope", "error_class"))
        self.throttles = counter("ingest_throttle_pauses", description="throttles that paused an account or the media",
                                 tag_keys=("media", "scope"))
        self.breaker = gauge("ingest_breaker_open", description="1 while the media's circuit breaker is open",
                             tag_keys=("media",))
        self.bytes = counter("ingest_bytes_landed", description="bytes written to GCS (raw JSON + CSV)",
                             tag_keys=("media",))
        self.breaker.set(0, tags={"media": media})

    def observe(self, event: Event) -> None:
        m = self.media
        kind = event.kind
        if kind in ("done", "failed"):
            self.reports.inc(1, tags={"media": m, "outcome": kind, "error_class": event.error_kind or "none"})
            if kind == "done" and event.result is not None and event.result.bytes:
                self.bytes.inc(event.result.bytes, tags={"media": m})
        elif kind in ("retry", "request_retry"):
            scope = "request" if kind == "request_retry" else "report"
            self.retries.inc(1, tags={"media": m, "scope": scope, "error_class": event.error_kind or "unknown"})
            if event.error_kind == "throttled":
                self.throttles.inc(1, tags={"media": m, "scope": str(event.extra.get("scope") or "unknown")})
        elif kind == "breaker_open":
            self.breaker.set(1, tags={"media": m})
        elif kind == "breaker_closed":
            self.breaker.set(0, tags={"media": m})
