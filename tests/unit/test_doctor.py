"""``ingest doctor`` and ``run --dry-run``: what they find, that they exit non-zero on a failure,
and that neither calls an API nor writes anything."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import sqlalchemy as sa

from ingest.cli import main
from ingest.config import load_config
from ingest.doctor import plan_backfill, plan_night, run_checks
from ingest.job import EXIT_PARTIAL, EXIT_SUCCESS
from ingest.ledger import Ledger
from sandbox.stack import free_port

LOCAL = Path(__file__).resolve().parents[2] / "config" / "local.yaml"


@pytest.fixture
def db(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    monkeypatch.setenv("DATABASE_URL", url)
    return url


def test_doctor_names_what_is_wrong_and_exits_3(db: str, capsys: pytest.CaptureFixture[str],
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    dead = f"http://127.0.0.1:{free_port()}"  # nothing listens: every endpoint and emulator is unreachable
    monkeypatch.delenv("YAHOO_ADS_REFRESH_TOKEN", raising=False)
    cfg = load_config(LOCAL, {"media": {m: {"base_url": dead} for m in ("meta", "google_ads", "yahoo_ads")},
                              "gcs": {"endpoint": dead}, "bigquery": {"endpoint": dead}})
    checks = {c.name: c for c in run_checks(cfg, {"META_ACCESS_TOKEN": "x"})}
    assert checks["config"].status == "PASS"
    assert checks["meta: api version"].status == "PASS" and "v27.0" in checks["meta: api version"].detail
    assert checks["meta: endpoint"].status == "FAIL" and "unreachable" in checks["meta: endpoint"].detail
    assert (checks["yahoo_ads: credentials"].status == "FAIL"
            and "$YAHOO_ADS_REFRESH_TOKEN" in checks["yahoo_ads: credentials"].detail)
    assert checks["gcs bucket"].status == "FAIL" and checks["bigquery dataset"].status == "FAIL"
    # the ledger exists but is empty: a warning naming the command, not a migration
    assert checks["database"].status == "WARN" and "ingest migrate" in checks["database"].detail
    assert sa.inspect(sa.create_engine(db)).get_table_names() == []

    code = main(["--config", str(LOCAL), "doctor", "--json"])
    assert code == EXIT_PARTIAL
    doc = json.loads(capsys.readouterr().out)
    assert {d["check"] for d in doc} >= {"config", "database", "gcs bucket", "meta: endpoint"}


def test_dry_run_plans_the_night_without_calling_anything(db: str, capsys: pytest.CaptureFixture[str]) -> None:
    Ledger(sa.create_engine(db)).migrate()
    cfg = load_config(LOCAL)
    from datetime import date

    plans, dates = plan_night(cfg, day=date(2026, 11, 20), lookback=True)
    by = {p.media: p for p in plans}
    # local profile: 3 days of refetch window, one range report per account beside the date's own
    assert by["meta"].reports == 2 * by["meta"].accounts and by["meta"].ranges == by["meta"].accounts
    assert by["yahoo_ads"].requests == 3 * by["yahoo_ads"].reports  # add, poll, download
    assert dates[0] == date(2026, 11, 17) and dates[-1] == date(2026, 11, 20)
    assert main(["--config", str(LOCAL), "run", "--date", "2026-11-20", "--dry-run"]) == EXIT_SUCCESS
    out = capsys.readouterr().out
    assert "dry run: nothing fetched" in out and "expected fetch time" in out
    with sa.create_engine(db).connect() as conn:
        assert conn.execute(sa.text("SELECT COUNT(*) FROM ingest_runs")).scalar() == 0  # nothing opened


def test_backfill_dry_run_plans_ranges_of_the_days_not_done(db: str, capsys: pytest.CaptureFixture[str]) -> None:
    from datetime import date, timedelta
    from decimal import Decimal

    from ingest.tasks import Event, ReportKey, ReportResult, Totals

    ledger = Ledger(sa.create_engine(db))
    ledger.migrate()
    cfg = load_config(LOCAL)
    dates = [date(2026, 11, 10) + timedelta(days=i) for i in range(10)]
    plans, touched = plan_backfill(cfg, dates, cfg.media_names(), force=False)
    by = {p.media: p for p in plans}
    assert touched == dates
    # one range report per account for the 10 days; Yahoo's flow is add, poll, download
    assert all(p.reports == p.ranges == p.accounts and p.dates == 10 for p in plans)
    assert by["yahoo_ads"].requests == 3 * by["yahoo_ads"].reports
    # a day already done splits its account's range around it; --force fetches it again
    account = cfg.media["meta"].account_ids()[0]
    done = ReportKey("meta", account, date(2026, 11, 15))
    run = ledger.open_run("backfill", [done.day], ["meta"])
    ledger.plan(run, [done])
    ledger.apply(run, Event("done", "meta", done, 1, result=ReportResult(
        done, Totals(1, 1, 1, Decimal("1"), Decimal("0")), 10, 1, ("raw.json",), 0.1)))
    meta = {p.media: p for p in plan_backfill(cfg, dates, ["meta"], force=False)[0]}["meta"]
    assert (meta.reports, meta.ranges) == (by["meta"].accounts + 1, by["meta"].accounts + 1)
    assert {p.media: p for p in plan_backfill(cfg, dates, ["meta"], force=True)[0]}["meta"].reports == \
        by["meta"].accounts
    assert main(["--config", str(LOCAL), "backfill", "--from", "2026-11-10", "--to", "2026-11-19", "--dry-run"]) \
        == EXIT_SUCCESS
    out = capsys.readouterr().out
    assert "dry run: nothing fetched" in out and "2026-11-10..2026-11-19 (10)" in out
    with sa.create_engine(db).connect() as conn:  # nothing opened beside the run this test wrote itself
        assert conn.execute(sa.text("SELECT COUNT(*) FROM ingest_runs")).scalar() == 1
