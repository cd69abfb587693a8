"""Late data: conversions booked to a past date reach its mart row on the next night, and a
refetched day whose content did not change is neither written to GCS again nor republished.

Real parts throughout (Ray, fake-gcs-server, bqemulator, the simulators, SQLite): night 1
fetches D and its refetch window; the platforms then restate one day of that window (late
conversions); night 2 (D + 1) refetches the window and must change exactly that day.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import date, timedelta
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from aggregations.mart import mart_freshness
from ingest.config import PipelineConfig
from ingest.job import NightlyJob, RunRequest
from ingest.ledger import report_tasks
from sandbox.checks import csv_generations, expected_totals, mart_totals

D = date(2026, 11, 20)
LOOKBACK = 3
MEDIA = ("meta", "google_ads", "yahoo_ads")


def _late(stack: Any, conversions: dict[str, int]) -> None:
    for m in MEDIA:
        httpx.post(f"{stack.spec.sim_url(m)}/_sim/config", json={"late_conversions": conversions}).raise_for_status()


@pytest.mark.stack
def test_late_conversions_reach_their_date_and_unchanged_days_are_not_republished(
        stack, make_config: Callable[..., PipelineConfig], sqlite_url: str) -> None:  # type: ignore[no-untyped-def]
    cfg = make_config(stack, sqlite_url, media={m: {"lookback_days": LOOKBACK} for m in MEDIA})
    accounts = sum(len(cfg.media[m].accounts) for m in MEDIA)
    late_day = D - timedelta(days=1)  # inside both nights' windows
    _late(stack, {})
    try:
        night1 = NightlyJob(cfg).execute(RunRequest("run", [D], list(MEDIA), lookback=True))
        assert night1.outcome == "success", night1.failures
        # one report for D plus one *range* report for the window, per account: not 1 + LOOKBACK
        assert sum(m.done for m in night1.media.values()) == 2 * accounts
        for day in (D - timedelta(days=i) for i in range(LOOKBACK + 1)):
            assert mart_totals(sqlite_url, day) == expected_totals(cfg, day), day
        assert len(night1.stage2.partitions) == len(MEDIA) * (LOOKBACK + 1)
        assert night1.stage2.bq_load_jobs == len(MEDIA)  # one load per media table, whatever the window
        # GCS lists every CSV the fetchers landed with the MD5 they recorded: none is read back
        assert night1.stage2.csv_objects_read == 0

        written1 = csv_generations(cfg)

        _late(stack, {late_day.isoformat(): 5})  # the platforms restate one day
        night2 = NightlyJob(cfg).execute(RunRequest("run", [D + timedelta(days=1)], list(MEDIA), lookback=True))
        assert night2.outcome == "success", night2.failures
        # GCS: the window's unchanged days keep their objects (not written again); the restated
        # day and the new date are written
        written2 = csv_generations(cfg)
        rewritten = {name.split("/")[2] for name in written2 if written1.get(name) != written2[name]}
        assert rewritten == {f"dt={late_day.isoformat()}", f"dt={(D + timedelta(days=1)).isoformat()}"}, rewritten
        assert len([n for n in written2 if f"dt={late_day.isoformat()}/" in n]) == accounts
        before = expected_totals(cfg, late_day)
        after = expected_totals(cfg, late_day, late_units=5)
        assert mart_totals(sqlite_url, late_day) == after
        assert all(after[m]["conversions"] > before[m]["conversions"] for m in MEDIA)
        # republished: the new date and the restated one; the other window days were refetched unchanged
        assert sorted(night2.stage2.partitions) == \
            sorted((m, d) for m in MEDIA for d in (late_day, D + timedelta(days=1)))
        assert night2.stage2.csv_objects_read == 0  # the restated day's new objects carry their new MD5
        for day in (D - timedelta(days=2), D):
            assert mart_totals(sqlite_url, day) == expected_totals(cfg, day)

        engine = sa.create_engine(sqlite_url)
        with engine.connect() as conn:
            rows = conn.execute(sa.select(report_tasks.c.date, report_tasks.c.revisions, report_tasks.c.last_changed_at,
                                          report_tasks.c.last_fetched_at)).all()
        by_day: dict[date, set[int]] = {}
        for day, revisions, changed, fetched in rows:
            by_day.setdefault(day, set()).add(revisions)
            assert fetched is not None and changed is not None and changed <= fetched
        assert by_day[late_day] == {2}  # changed once after it was first landed
        assert by_day[D - timedelta(days=2)] == {1} and by_day[D] == {1}
        # every run leaves analysts the picture of what is final: one mart_freshness row per account
        with engine.connect() as conn:
            fresh = conn.execute(sa.select(mart_freshness.c.media, mart_freshness.c.may_change_from,
                                           mart_freshness.c.final_through)).all()
        engine.dispose()
        assert len(fresh) == accounts
        assert all((may - final).days == 1 for _, may, final in fresh)
    finally:
        _late(stack, {})
