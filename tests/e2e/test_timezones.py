"""Each account's yesterday, in its own time zone (the nightly `run` without --date).

At 2026-11-30 20:00 UTC it is already 12-01 05:00 in Tokyo but still 11-30 12:00 in Los Angeles:
a Tokyo account's yesterday is 11-30, a Pacific account's 11-29. Zones come from the config
(pinned), the ledger (remembered), the connector (Yahoo: always Tokyo) or one API lookup.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, date, datetime
from typing import Any

import pytest

from ingest.config import PipelineConfig
from ingest.job import EXIT_SUCCESS, NightlyJob, RunRequest
from ingest.ledger import Ledger
from sandbox.truth import PACIFIC_ACCOUNT
from tests.e2e.test_chaos import sim_stats, sims  # noqa: F401 - the fixture

pytestmark = pytest.mark.stack

AS_OF = datetime(2026, 11, 30, 20, 0, tzinfo=UTC)
TOKYO_DAY, PACIFIC_DAY, LONDON_DAY = date(2026, 11, 30), date(2026, 11, 29), date(2026, 11, 29)


def test_yesterday_is_per_account_time_zone(stack: Any, sims: Callable[..., None],  # noqa: F811
                                            make_config: Callable[..., PipelineConfig], sqlite_url: str) -> None:
    sims()
    cfg = make_config(stack, sqlite_url, media={
        "meta": {"accounts": [{"id": "100500001", "advertiser": "sakura_foods"},
                              {"id": PACIFIC_ACCOUNT, "advertiser": "kaze_travel"},
                              {"id": "100500002", "advertiser": "midori_bank", "timezone": "Europe/London"}]},
        "google_ads": {"accounts": [{"id": "1234700001", "advertiser": "sakura_foods"},
                                    {"id": PACIFIC_ACCOUNT, "advertiser": "kaze_travel"}]},
        "yahoo_ads": {"accounts": [{"id": "2300001", "advertiser": "sakura_foods"}]},
    })
    req = RunRequest("run", [], cfg.media_names(), yesterday_per_account=True, as_of=AS_OF)
    report = NightlyJob(cfg).execute(req)
    assert report.exit_code == EXIT_SUCCESS, report.failures
    assert req.account_days == {
        ("meta", "100500001"): TOKYO_DAY, ("meta", PACIFIC_ACCOUNT): PACIFIC_DAY, ("meta", "100500002"): LONDON_DAY,
        ("google_ads", "1234700001"): TOKYO_DAY, ("google_ads", PACIFIC_ACCOUNT): PACIFIC_DAY,
        ("yahoo_ads", "2300001"): TOKYO_DAY,
    }
    ledger = Ledger(NightlyJob(cfg).engine)
    done = {(r["media"], r["account_id"], r["date"]) for r in ledger.task_rows(dates=[TOKYO_DAY, PACIFIC_DAY])
            if r["status"] == "done"}
    assert done == {(m, a, d) for (m, a), d in req.account_days.items()}
    # looked up once from the APIs (Meta, Google; not the pinned London one, not Yahoo) and remembered
    assert ledger.timezones() == {("meta", "100500001"): "Asia/Tokyo", ("meta", PACIFIC_ACCOUNT): "America/Los_Angeles",
                                  ("google_ads", "1234700001"): "Asia/Tokyo",
                                  ("google_ads", PACIFIC_ACCOUNT): "America/Los_Angeles"}
    asked = {m: sim_stats(stack)[m]["by_endpoint"].get(e, 0)
             for m, e in (("meta", "account"), ("google_ads", "searchStream"))}
    NightlyJob(cfg).execute(RunRequest("run", [], cfg.media_names(), yesterday_per_account=True, as_of=AS_OF))
    stats = sim_stats(stack)
    assert stats["meta"]["by_endpoint"].get("account", 0) == asked["meta"] == 2  # no second lookup
    assert stats["google_ads"]["by_endpoint"]["searchStream"] == asked["google_ads"]  # resumed: nothing re-fetched
