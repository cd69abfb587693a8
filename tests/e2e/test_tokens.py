"""Access tokens that expire during a night (Google Ads and Yahoo refresh-token credentials).

The simulators' OAuth endpoints issue tokens that really die after ``token_lifetime_s``; the
night must refresh them and lose nothing. With ``token_reported_lifetime_s`` longer than the
real lifetime the platform revokes tokens early: the API answers 401 and the pipeline must
refresh once and carry on. A refused refresh fails that media's reports as AuthError, once,
naming the reason and not the secrets.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import date
from typing import Any

import pytest

from ingest.config import PipelineConfig
from ingest.job import EXIT_PARTIAL, EXIT_SUCCESS, NightlyJob, RunRequest
from ingest.ledger import Ledger
from sandbox.checks import expected_totals, mart_totals
from sandbox.oauth_sim import REVOKED_REFRESH_TOKEN
from tests.e2e.test_chaos import sim_stats, sims  # noqa: F401 - the fixture

pytestmark = pytest.mark.stack

DAY = date(2026, 11, 16)
OAUTH = ("google_ads", "yahoo_ads")


def accounts(media: str, n: int) -> list[dict[str, str]]:
    base = {"meta": 100400000, "google_ads": 1234600000, "yahoo_ads": 2200000}[media]
    return [{"id": str(base + i), "advertiser": "sakura_foods"} for i in range(n)]


def config(stack: Any, make_config: Callable[..., PipelineConfig], url: str) -> PipelineConfig:
    # slow enough (latency, a modest quota) that the night outlives several token lifetimes
    # Google needs one request per report, Yahoo about four: 24 and 8 reports make ≈8–11 s each
    over = {m: {"accounts": accounts(m, 24 if m == "google_ads" else 8),
                "quota": {"requests_per_second": 3, "burst": 1}}
            for m in OAUTH}
    return make_config(stack, url, media=over)


@pytest.mark.parametrize("revoked_early", [False, True], ids=["expire-on-schedule", "revoked-early-401"])
def test_tokens_expiring_mid_run_lose_nothing(stack: Any, sims: Callable[..., None],  # noqa: F811
                                              make_config: Callable[..., PipelineConfig], sqlite_url: str,
                                              revoked_early: bool) -> None:
    # on schedule: 1 s tokens, announced honestly; revoked early: 3 s tokens announced as an hour, so
    # only 401s tell the pipeline (a token refreshed by another request may die before a retry sends it: one more)
    if revoked_early:
        sims(OAUTH, latency_ms=60, token_lifetime_s=3.0, token_reported_lifetime_s=3600.0)
    else:
        sims(OAUTH, latency_ms=60, token_lifetime_s=1.0)
    cfg = config(stack, make_config, sqlite_url)
    cfg = cfg.model_copy(update={"media": {m: cfg.media[m] for m in OAUTH}})
    report = NightlyJob(cfg).execute(RunRequest("run", [DAY], list(OAUTH)))
    assert report.outcome == "success" and report.exit_code == EXIT_SUCCESS, report.failures
    assert mart_totals(sqlite_url, DAY) == expected_totals(cfg, DAY)
    stats = sim_stats(stack)
    for media in OAUTH:
        assert stats[media]["tokens_issued"] >= 2, stats[media]  # refreshed during the night
        assert report.media[media].retries == 0  # a token problem never costs a report attempt
        if revoked_early:
            assert stats[media]["expired_token_rejections"] >= 1  # the 401 path was taken, and survived
        else:  # refreshed ahead of expiry: a 401 only when a token dies in transit (1 s lifetimes here)
            assert stats[media]["expired_token_rejections"] <= stats[media]["requests"] // 10, stats[media]
    # every report done on its first attempt
    rows = Ledger(NightlyJob(cfg).engine).task_rows(dates=[DAY])
    assert {r["status"] for r in rows} == {"done"} and {r["attempts"] for r in rows} == {1}


def test_a_refused_refresh_fails_that_media_once_with_its_reason(stack: Any, sims: Callable[..., None],  # noqa: F811
                                                                 make_config: Callable[..., PipelineConfig],
                                                                 sqlite_url: str,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    sims(OAUTH)
    monkeypatch.setenv("YAHOO_ADS_REFRESH_TOKEN", REVOKED_REFRESH_TOKEN)
    cfg = config(stack, make_config, sqlite_url)
    report = NightlyJob(cfg).execute(RunRequest("run", [DAY], cfg.media_names()))
    assert report.exit_code == EXIT_PARTIAL
    yahoo = [f for f in report.failures if f["media"] == "yahoo_ads"]
    assert len(yahoo) == 8 and report.media["yahoo_ads"].failed == 8 and report.media["google_ads"].failed == 0
    assert report.media["google_ads"].done == 24
    for failure in yahoo:
        assert failure["error_kind"] == "auth" and failure["attempts"] == 1
        assert "token refresh refused" in failure["error_message"] and "invalid_grant" in failure["error_message"]
        assert REVOKED_REFRESH_TOKEN not in failure["error_message"]
    stats = sim_stats(stack)
    assert stats["yahoo_ads"]["refresh_refused"] == 1  # asked once for the whole media, not per report
