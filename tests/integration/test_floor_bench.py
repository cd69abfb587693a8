"""The bench's floor helper (bench/floor.py) fetches real reports in-process and counts them
right; the numbers themselves are for `make bench`."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from bench.floor import report_floor
from ingest.clients import gcs_client
from sandbox.stack import LocalStack


def test_report_floor_lands_each_report_and_counts_its_requests(
        stack: LocalStack, make_config: Callable[..., Any], sqlite_url: str) -> None:
    cfg = make_config(stack, sqlite_url)
    google = report_floor(cfg, "google_ads", reports=6, concurrency=2)
    assert google["requests_per_report"] == 1.0  # one searchStream
    yahoo = report_floor(cfg, "yahoo_ads", reports=6, concurrency=2)
    assert yahoo["requests_per_report"] >= 3.0  # add the job, poll until done (once or more), download
    assert google["cpu_ms_per_report"] > 0 and yahoo["cpu_ms_per_report"] > 0
    names = [b.name for b in gcs_client(cfg.gcs, cfg.project).list_blobs(cfg.gcs.bucket)]
    assert any(n.startswith("raw/google_ads/") for n in names) and any(n.endswith(".csv") for n in names)
