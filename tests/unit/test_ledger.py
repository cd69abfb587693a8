"""The ledger on SQLite and PostgreSQL without Ray: migrations, partition locks (refuse, stale
take-over, --take-over, all or none), what ``rerun --failed`` picks, and ``status --json``."""

from __future__ import annotations

import json
from datetime import date, timedelta
from decimal import Decimal
from typing import Any

import pytest
import sqlalchemy as sa

from ingest.config import load_config
from ingest.job import RunRequest, plan_keys
from ingest.ledger import Ledger, LockedError, locks, runs
from ingest.outcomes import MediaCounts, RunCounts, RunOutcome
from ingest.status import print_status, summarize
from ingest.tasks import Event, ReportKey, ReportResult, Totals

D1, D2 = date(2026, 11, 19), date(2026, 11, 20)


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def url(request: pytest.FixtureRequest) -> str:
    return request.getfixturevalue("sqlite_url" if request.param == "sqlite" else "pg_url")


@pytest.fixture
def ledger(url: str) -> Any:
    engine = sa.create_engine(url)
    led = Ledger(engine)
    led.migrate()
    yield led
    engine.dispose()


def test_migrations_are_idempotent_and_create_every_table(ledger: Ledger) -> None:
    ledger.migrate()  # every CLI start does this
    names = set(sa.inspect(ledger.engine).get_table_names())
    assert {"ingest_runs", "ingest_report_tasks", "ingest_task_events", "ingest_stage_steps", "ingest_locks",
            "ingest_alembic_version"} <= names


def test_locks_refuse_a_live_holder_and_name_it(ledger: Ledger) -> None:
    a = ledger.open_run("run", [D1], ["meta", "google_ads"])
    assert ledger.acquire(a, [("meta", D1), ("google_ads", D1)], stale_after_s=60) == []
    b = ledger.open_run("rerun", [D1], ["meta"])
    with pytest.raises(LockedError) as err:
        ledger.acquire(b, [("yahoo_ads", D1), ("meta", D1)], stale_after_s=60)
    assert f"meta {D1} is held by run {a}" in err.value.message and "--take-over" in err.value.message
    assert err.value.holders == [a]
    # all or none: the free partition (yahoo_ads) was not taken by the refused run
    assert {(r["media"], r["run_id"]) for r in ledger.locks()} == {("meta", a), ("google_ads", a)}
    ledger.release(a)
    assert ledger.acquire(b, [("meta", D1)], stale_after_s=60) == []
    assert ledger.locks([D1])[0]["run_id"] == b


def test_a_stale_lock_is_taken_over_and_its_run_marked_aborted(ledger: Ledger) -> None:
    dead = ledger.open_run("run", [D1], ["meta"])
    ledger.acquire(dead, [("meta", D1)], stale_after_s=60)
    with ledger.engine.begin() as conn:  # its driver was SIGKILLed two minutes ago
        conn.execute(locks.update().values(heartbeat_at=_ago(120)))
    new = ledger.open_run("run", [D1], ["meta"])
    assert ledger.acquire(new, [("meta", D1)], stale_after_s=60) == [dead]
    assert ledger.run(dead)["outcome"] == "aborted" and ledger.run(dead)["finished_at"] is not None
    # a heartbeat keeps a lock fresh; --take-over takes even a fresh one
    ledger.heartbeat(new)
    third = ledger.open_run("rerun", [D1], ["meta"])
    with pytest.raises(LockedError):
        ledger.acquire(third, [("meta", D1)], stale_after_s=60)
    assert ledger.acquire(third, [("meta", D1)], stale_after_s=60, take_over=True) == [new]


def _ago(seconds: float) -> Any:
    from ingest.ledger import now

    return now() - timedelta(seconds=seconds)


def _result(key: ReportKey, rows: int, spend: str = "1.5") -> ReportResult:
    return ReportResult(key, Totals(rows, 100 * rows, 10 * rows, Decimal(spend), Decimal("0.5")), 1234, 2,
                        (f"raw/{key.media}/dt={key.day}/{key.account}.csv",), 0.25)


def _record(ledger: Ledger, run_id: str, outcomes: dict[ReportKey, str]) -> None:
    ledger.plan(run_id, list(outcomes))
    for media in {k.media for k in outcomes}:
        ledger.mark_running(run_id, media)
    for key, outcome in outcomes.items():
        if outcome == "done":
            ledger.apply(run_id, Event("done", key.media, key, 1, result=_result(key, 4)))
        elif outcome == "failed":
            ledger.apply(run_id, Event("retry", key.media, key, 1, error_kind="transient", message="HTTP 503"))
            ledger.apply(run_id, Event("failed", key.media, key, 2, error_kind="auth",
                                       message="token revoked (code 190)"))
        # "running": the driver died before the report finished


def test_one_batch_of_events_lands_in_order_as_one_by_one_would(ledger: Ledger) -> None:
    """The driver writes what arrived together in one transaction, with one statement per run of
    same-shaped updates: a report's retry is still written before its outcome, a range
    report's failure reaches each of its days, and every event is in the history, in order."""
    from ingest.tasks import DayResult

    run = ledger.open_run("run", [D1, D2], ["meta"])
    a, b, window = ReportKey("meta", "1", D2), ReportKey("meta", "2", D2), ReportKey("meta", "3", D1, span=2)
    ledger.plan(run, [a, b, window])
    days = tuple(
        DayResult(d, Totals(2, 1, 1, Decimal("1"), Decimal("0")), f"h{d.day}", f"gs://b/{d}.csv") for d in (D1, D2)
    )
    ledger.apply_many(run, [
        Event("retry", "meta", a, 1, error_kind="transient", message="HTTP 503"),
        Event("retry", "meta", window, 1, error_kind="throttled", message="429"),
        Event("done", "meta", a, 2, result=_result(a, 4)),
        Event("failed", "meta", b, 1, error_kind="auth", message="token revoked"),
        Event("done", "meta", window, 2, result=ReportResult(window, Totals(4, 2, 2, Decimal("2"), Decimal("0")), 9, 3,
                                                             ("raw.json",), 0.5, days)),
        Event("restart", "meta", message="fetcher 0 replaced"),
    ])
    rows = {(r["account_id"], r["date"]): r for r in ledger.task_rows(dates=[D1, D2])}
    assert {k: (r["status"], r["attempts"], r["error_kind"]) for k, r in rows.items()} == {
        ("1", D2): ("done", 2, None), ("2", D2): ("failed", 1, "auth"), ("3", D1): ("done", 2, None),
        ("3", D2): ("done", 2, None)}
    assert (rows[("3", D1)]["content_hash"], rows[("3", D1)]["rows"], rows[("3", D1)]["revisions"]) == ("h19", 2, 1)
    # the range report's 3 requests, 9 bytes and 0.5 s are spread over its days, not counted on each
    assert [(rows[("3", d)]["requests"], rows[("3", d)]["bytes"], rows[("3", d)]["duration_s"]) for d in (D1, D2)] \
        == [(2, 5, 0.25), (1, 4, 0.25)]
    assert [e["kind"] for e in ledger.events(run)] == ["retry", "retry", "done", "failed", "done", "restart"]
    assert sorted(p[1] for p in ledger.pending_partitions(["meta"], [D1, D2])) == [D1, D2]


def test_keys_carry_the_digests_of_done_days_only(ledger: Ledger) -> None:
    """What the fetcher may leave in place: a day recorded *done* with a digest. A failed day
    (its fetch may have rewritten part of its objects) and a day never fetched carry none."""
    from ingest.tasks import DayResult

    run = ledger.open_run("run", [D1, D2], ["meta"])
    window, failed = ReportKey("meta", "3", D1, span=2), ReportKey("meta", "4", D1, span=2)
    ledger.plan(run, [window, failed])
    days = tuple(DayResult(d, Totals(1, 1, 1, Decimal("1"), Decimal("0")), f"h{d.day}", f"gs://b/{d}.csv")
                 for d in (D1, D2))
    ledger.apply_many(run, [
        Event("done", "meta", key, 1, result=ReportResult(key, Totals(2, 2, 2, Decimal("2"), Decimal("0")), 9, 1,
                                                          ("raw.json",), 0.5, days))
        for key in (window, failed)])
    assert [k.landed for k in ledger.with_landed([window, failed])] == [("h19", "h20"), ("h19", "h20")]
    # the next night's fetch of "4" wrote part of its objects, then failed: its digests no longer hold
    run2 = ledger.open_run("run", [D2], ["meta"])
    ledger.plan(run2, [failed])
    ledger.apply_many(run2, [Event("failed", "meta", failed, 1, error_kind="transient", message="GCS write failed")])
    new = ReportKey("meta", "3", D1, span=3)  # tonight's window reaches one day further
    got = ledger.with_landed([new, failed, ReportKey("meta", "5", D2)])
    assert got == [new, failed, ReportKey("meta", "5", D2)]  # same reports: the digests are not their identity
    assert [k.landed for k in got] == [("h19", "h20", None), (), ()]
    assert got[0].landed_digest(D2) == "h20" and got[0].landed_digest(D2 + timedelta(days=1)) is None
    assert got[0].without_landed().landed == () and got[0].without_landed() == new


def test_unfinished_is_what_rerun_failed_redoes(ledger: Ledger) -> None:
    run = ledger.open_run("backfill", [D1, D2], ["meta", "google_ads"])
    _record(ledger, run, {
        ReportKey("meta", "1", D1): "done", ReportKey("meta", "2", D1): "failed",
        ReportKey("google_ads", "3", D1): "done", ReportKey("google_ads", "3", D2): "running",
    })
    ledger.record_stage(run, "meta", D1, "published", 4, "ok")
    ledger.record_stage(run, "google_ads", D1, "failed", None, "load failed")
    keys, parts = ledger.unfinished(["meta", "google_ads"])
    assert keys == {ReportKey("meta", "2", D1), ReportKey("google_ads", "3", D2)}
    assert parts == {("google_ads", D1)}
    assert ledger.unfinished(["meta"], D2) == (set(), set())
    assert ledger.unfinished(["google_ads"], D2) == ({ReportKey("google_ads", "3", D2)}, set())
    # plan_keys restricted to those keys: never a done report, never one that was never planned
    cfg = load_config(None)
    req = RunRequest("rerun", [D1], ["meta"], only=frozenset({ReportKey("meta", "100200301", D1)}))
    assert plan_keys(cfg, req) == [ReportKey("meta", "100200301", D1)]


def test_status_json_counts_states_attempts_errors_and_stage2(ledger: Ledger, url: str,
                                                             capsys: pytest.CaptureFixture[str],
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    first = ledger.open_run("run", [D1], ["meta", "google_ads"])
    ledger.acquire(first, [("meta", D1)], stale_after_s=600)
    _record(ledger, first, {ReportKey("meta", "1", D1): "done", ReportKey("meta", "2", D1): "failed",
                            ReportKey("google_ads", "3", D1): "done", ReportKey("google_ads", "4", D1): "running"})
    ledger.record_stage(first, "meta", D1, "published", 4, "reconciled: 4 rows")
    ledger.close_run(first, RunOutcome.PARTIAL, RunCounts({"meta": MediaCounts(done=1, failed=1)}))
    doc = summarize(ledger, day=D1)
    json.dumps(doc)  # serializable as is
    assert doc["date"] == "2026-11-19" and doc["run"] is None
    assert [r["run_id"] for r in doc["runs"]] == [first]
    assert doc["runs"][0]["outcome"] == "partial"
    zeros = dict.fromkeys(("planned", "skipped", "retries", "restarts", "rows", "requests"), 0)
    assert doc["runs"][0]["counts"] == {"meta": {**zeros, "done": 1, "failed": 1}}
    assert doc["runs"][0]["seconds"] is not None and "pid" in doc["runs"][0]["started_by"]
    assert [(lk["media"], lk["run_id"]) for lk in doc["locks"]] == [("meta", first)] and doc["locks"][0]["age_s"] >= 0
    cells = {c["media"]: c for c in doc["cells"]}
    meta, google = cells["meta"], cells["google_ads"]
    assert {k: meta[k] for k in ("date", "reports", "done", "failed", "running", "pending", "retrying", "attempts",
                                 "max_attempts", "rows")} == \
        {"date": "2026-11-19", "reports": 2, "done": 1, "failed": 1, "running": 0, "pending": 0, "retrying": 0,
         "attempts": 3, "max_attempts": 2, "rows": 4}
    assert meta["fetch_seconds"] == 0.25
    assert meta["errors"] == [{"account_id": "2", "error_kind": "auth", "message": "token revoked (code 190)",
                               "attempts": 2}]
    assert meta["stage2"] == {"status": "published", "loaded_rows": 4, "message": "reconciled: 4 rows"}
    assert (google["done"], google["running"], google["failed"]) == (1, 1, 0)
    # a report done since the partition's last stage 2: it waits for (re)loading
    assert google["stage2"] == {"status": "pending", "loaded_rows": None, "message": "new reports fetched"}
    assert doc["totals"] == {"reports": 4, "done": 2, "failed": 1, "open": 1}
    assert doc["failed"] == 1
    by_run = summarize(ledger, run_id=first)
    assert by_run["run"]["run_id"] == first and by_run["date"] is None
    assert by_run["events"] == {"done": 2, "retry": 1, "failed": 1}

    # the CLI entry point: --json prints exactly that document; exit 3 while anything is failed
    cfg = load_config(None, {"database": {"url": url, "url_env": None}})
    assert print_status(cfg, day=D1, run_id=None, as_json=True) == 3
    printed = json.loads(capsys.readouterr().out)
    assert printed["cells"] == json.loads(json.dumps(doc["cells"])) and printed["failed"] == 1
    assert print_status(cfg, day=D1, run_id=None, as_json=False) == 3
    text = capsys.readouterr().out
    assert "FAILED 2 after 2 attempts: auth: token revoked" in text and f"LOCKED meta {D1} by run {first}" in text
    assert "rerun --failed --date 2026-11-19" in text

    # fixed: the failed report done by a later run; a failed stage 2 still counts as failed
    fix = ledger.open_run("rerun", [D1], ["meta"])
    _record(ledger, fix, {ReportKey("meta", "2", D1): "done", ReportKey("google_ads", "4", D1): "done"})
    assert print_status(cfg, day=D1, run_id=None, as_json=True) == 0
    assert json.loads(capsys.readouterr().out)["totals"] == {"reports": 4, "done": 4, "failed": 0, "open": 0}
    ledger.record_stage(fix, "google_ads", D1, "failed", None, "reconciliation: rows 8 != 7")
    assert print_status(cfg, day=D1, run_id=None, as_json=False) == 3
    assert "STAGE 2 FAILED: reconciliation: rows 8 != 7" in capsys.readouterr().out
    with ledger.engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(runs)).scalar() == 2


def test_fetched_gives_each_landed_csv_its_md5_and_totals(ledger: Ledger) -> None:
    """What stage 2 needs not read back: each day a good fetch landed, by object name, with the MD5
    of its bytes; a later failed re-fetch keeps the earlier MD5 and totals (the object is then read
    if it was rewritten), a day landed without an MD5 (before migration 0005) is only summed."""
    from ingest.tasks import DayResult

    run = ledger.open_run("run", [D1], ["meta"])
    a, b, old = ReportKey("meta", "1", D1), ReportKey("meta", "2", D1), ReportKey("meta", "3", D1)
    ledger.plan(run, [a, b, old])
    t1, t2 = Totals(2, 10, 1, Decimal("1.5"), Decimal("0")), Totals(1, 5, 0, Decimal("0"), Decimal("1"))

    def done(key: ReportKey, t: Totals, md5: str) -> Event:
        day = DayResult(D1, t, f"h{key.account}", f"gs://b/raw/meta/dt={D1}/{key.account}.csv", md5)
        return Event("done", "meta", key, 1, result=ReportResult(key, t, 9, 1, ("raw.json",), 0.1, (day,)))

    ledger.apply_many(run, [done(a, t1, "md5-a=="), done(b, t2, "md5-b=="), done(old, t2, "")])
    run2 = ledger.open_run("run", [D1], ["meta"])
    ledger.plan(run2, [b])
    ledger.apply_many(run2, [Event("failed", "meta", b, 1, error_kind="transient", message="HTTP 503")])

    got = ledger.fetched([("meta", D1), ("google_ads", D1)])
    assert got.totals == {("meta", D1): t1 + t2 + t2}
    assert got.csvs == {f"raw/meta/dt={D1}/1.csv": ("md5-a==", t1), f"raw/meta/dt={D1}/2.csv": ("md5-b==", t2)}
    assert ledger.fetched([]) == ({}, {})


def test_a_ledger_of_an_earlier_version_upgrades_and_its_days_are_summed_without_md5(url: str) -> None:
    """Migration 0005 on a ledger with landed days: they keep their sums and get no MD5, so
    stage 2 reads their objects back (``Ledger.fetched`` lists no CSV for them)."""
    from alembic import command
    from alembic.config import Config

    from ingest.ledger import MIGRATIONS, report_tasks

    engine = sa.create_engine(url)
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "0004")
        conn.execute(sa.text(
            "INSERT INTO ingest_report_tasks (media, account_id, date, run_id, status, attempts, rows, impressions,"
            " clicks, spend, conversions, content_hash, revisions) VALUES ('meta', '1', :d, 'old', 'done', 1, 2, 10,"
            " 1, 1.5, 0, 'sha', 1)"), {"d": D1})
    ledger = Ledger(engine)
    assert ledger.schema_behind() is not None
    ledger.migrate()
    assert ledger.schema_behind() is None
    with engine.connect() as conn:
        assert conn.execute(sa.select(report_tasks.c.csv_md5, report_tasks.c.content_hash)).all() == [(None, "sha")]
    got = ledger.fetched([("meta", D1)])
    assert got.totals == {("meta", D1): Totals(2, 10, 1, Decimal("1.5"), Decimal("0"))} and got.csvs == {}
    engine.dispose()
