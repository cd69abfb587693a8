"""``ingest freshness`` and ``mart_freshness`` from the ledger alone: missing, partial, failed and
stale dates per media and account, exit 3 on any, and never a write to the database."""

from __future__ import annotations

import json
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest
import sqlalchemy as sa

from aggregations.mart import mart_freshness
from ingest.cli import main
from ingest.config import load_config
from ingest.freshness import check_freshness, publish_freshness, run_freshness
from ingest.job import EXIT_PARTIAL, EXIT_SUCCESS, EXIT_USAGE
from ingest.ledger import Ledger
from ingest.tasks import DayResult, Event, ReportKey, ReportResult, Totals
from tests.webhook import Receiver

LOCAL = Path(__file__).resolve().parents[2] / "config" / "local.yaml"
#: 2026-11-30 06:00 in Tokyo: yesterday is 2026-11-29 for every account of the local config
NOW = datetime(2026, 11, 29, 21, 0, tzinfo=UTC)
Y = date(2026, 11, 29)


@pytest.fixture
def db(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    monkeypatch.setenv("DATABASE_URL", url)
    return url


def _cfg():  # type: ignore[no-untyped-def]
    return load_config(LOCAL)  # zones never looked up here: unknown ones fall back to the config's Asia/Tokyo


def _land(ledger: Ledger, day: date, *, skip: tuple[str, str] | None = None, publish: bool = True) -> None:
    cfg = _cfg()
    keys = [ReportKey(m, a, day) for m, s in cfg.media.items() for a in s.account_ids() if (m, a) != skip]
    ledger.plan("r1", keys)
    events = []
    for k in keys:
        t = Totals(1, 10, 1, Decimal(1), Decimal(0))
        result = ReportResult(k, t, 100, 1, ("gs://b/x.json",), 0.1, (DayResult(day, t, f"h-{k}", "gs://b/x.csv"),))
        events.append(Event("done", k.media, k, 1, result=result))
    ledger.apply_many("r1", events)
    if publish:
        for m in cfg.media:
            ledger.record_stage("r1", m, day, "published", 1, "ok")


def test_a_complete_date_exits_0_and_a_missed_night_or_account_exits_3(db: str,
                                                                       capsys: pytest.CaptureFixture[str]) -> None:
    cfg = _cfg()
    ledger = Ledger(sa.create_engine(db))
    ledger.migrate()
    assert run_freshness(cfg, day=Y, days=1, media=None, as_json=False, notify=False, now=NOW) == EXIT_PARTIAL
    assert "missing 2026-11-29" in capsys.readouterr().out  # the night never ran

    _land(ledger, Y)
    assert run_freshness(cfg, day=Y, days=1, media=None, as_json=False, notify=False, now=NOW) == EXIT_SUCCESS
    assert "all 10 accounts complete" in capsys.readouterr().out

    _land(ledger, Y - timedelta(days=1), skip=("meta", "100200301"))  # one account missing the day before
    assert run_freshness(cfg, day=None, days=2, media=None, as_json=True, notify=False, now=NOW) == EXIT_PARTIAL
    doc = json.loads(capsys.readouterr().out)
    bad = [a for a in doc["accounts"] if not a["ok"]]
    assert [(a["media"], a["account_id"], a["missing"]) for a in bad] == [("meta", "100200301", ["2026-11-28"])]
    assert bad[0]["latest_complete_date"] == "2026-11-29"
    # the window: the local profile refetches 3 days, so 2026-11-26 onwards may still change
    assert (bad[0]["may_change_from"], bad[0]["final_through"]) == ("2026-11-26", "2026-11-25")


def test_partial_failed_and_stale_are_told_apart() -> None:
    engine = sa.create_engine("sqlite://")
    ledger = Ledger(engine)
    ledger.migrate()
    cfg = _cfg()
    _land(ledger, Y, publish=False)  # fetched, stage 2 not run yet
    key = ReportKey("meta", "100200300", Y - timedelta(days=1))
    ledger.plan("r2", [key])
    ledger.apply("r2", Event("failed", "meta", key, 3, error_kind="transient", message="HTTP 503"))
    report = check_freshness(cfg, ledger, days=2, now=NOW, media=["meta"])
    states = {(a.account, d): s for a in report.accounts for d, s in a.states.items()}
    assert states[("100200300", Y)] == "partial"
    assert states[("100200300", Y - timedelta(days=1))] == "failed"
    # a landed day whose refetch then failed: the marts hold the older numbers
    _land(ledger, Y - timedelta(days=2))
    k2 = ReportKey("meta", "100200300", Y - timedelta(days=2))
    ledger.plan("r3", [k2])
    ledger.apply("r3", Event("failed", "meta", k2, 3, error_kind="throttled", message="quota"))
    report = check_freshness(cfg, ledger, days=3, now=NOW, media=["meta"])
    states = {(a.account, d): s for a in report.accounts for d, s in a.states.items()}
    assert states[("100200300", Y - timedelta(days=2))] == "stale"
    assert not report.ok
    # the analysts' table gets the same picture, one row per media × account
    assert publish_freshness(engine, report) == 4
    with engine.connect() as conn:
        row = conn.execute(sa.select(mart_freshness).where(mart_freshness.c.account_id == "100200300")).mappings().one()
    assert (row["failed_dates"] == "2026-11-28" and row["stale_dates"] == "2026-11-27"
            and row["partial_dates"] == "2026-11-29")
    assert row["may_change_from"] == date(2026, 11, 26)


def test_notify_posts_what_is_missing(db: str) -> None:
    cfg = _cfg()
    Ledger(sa.create_engine(db)).migrate()
    with Receiver() as hook:
        code = run_freshness(cfg, day=Y, days=1, media=["google_ads"], as_json=False, notify=True, now=NOW,
                             environ={"INGEST_WEBHOOK_URL": hook.url})
        assert code == EXIT_PARTIAL
        text = hook.posts[0]["json"]["text"]
    assert "no data for 2026-11-29: google_ads/1234567890 missing" in text


def test_freshness_is_read_only_and_names_the_migration(db: str, tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--config", str(LOCAL), "freshness", "--date", "2026-11-20"]) == EXIT_USAGE
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "run `python -m ingest migrate`" in err
    assert sa.inspect(sa.create_engine(db)).get_table_names() == []  # nothing written
    assert main(["--config", str(LOCAL), "migrate"]) == EXIT_SUCCESS
    assert main(["--config", str(LOCAL), "freshness", "--date", "2026-11-20"]) == EXIT_PARTIAL
