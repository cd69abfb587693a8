"""The operator's tools end to end, through the CLI, on the real clients (Ray, fake-gcs-server,
bqemulator, the API simulators, SQLite):

- ``rerun --media M --date D`` changes exactly that partition in GCS, BigQuery and the RDB;
- ``rerun --failed`` re-fetches exactly the failed reports (ledger events, simulator counts);
- a driver killed with SIGKILL mid-run: a second run of the same date is refused while the
  dead run's lock is fresh (exit 5, naming it), then takes the stale lock over, fetches only
  what was not done, and nothing is duplicated anywhere;
- ``status --json`` before and after.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import date
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
import yaml
from google.api_core.client_options import ClientOptions
from google.auth.credentials import AnonymousCredentials
from google.cloud import bigquery, storage

from ingest.cli import main
from ingest.config import PipelineConfig
from ingest.job import EXIT_LOCKED, EXIT_PARTIAL, EXIT_SUCCESS
from ingest.ledger import Ledger
from sandbox.oauth_sim import REVOKED_REFRESH_TOKEN
from sandbox.truth import DENIED_ACCOUNT
from tests.e2e.test_nightly import expected_totals, mart_totals

pytestmark = pytest.mark.stack

D1, D2 = date(2026, 11, 10), date(2026, 11, 11)


def write_config(cfg: PipelineConfig, path: Path) -> str:
    path.write_text(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))
    return str(path)


def cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def gcs_objects(cfg: PipelineConfig) -> dict[str, tuple[int, str]]:
    """name → (generation, md5): a rewrite shows as a new generation even with equal bytes."""
    client = storage.Client(project=cfg.project, credentials=AnonymousCredentials())
    return {b.name: (int(b.generation), b.md5_hash) for b in client.list_blobs(cfg.gcs.bucket)}


def bq(cfg: PipelineConfig) -> bigquery.Client:
    return bigquery.Client(project=cfg.bigquery.project, credentials=AnonymousCredentials(),
                           client_options=ClientOptions(api_endpoint=cfg.bigquery.endpoint))


def bq_rows(cfg: PipelineConfig) -> dict[str, list[tuple[Any, ...]]]:
    client = bq(cfg)
    out = {}
    for m in cfg.media:
        table = f"`{cfg.bigquery.project}.{cfg.bigquery.dataset}.raw_{m}`"
        out[m] = sorted(tuple(str(v) for v in r.values()) for r in client.query(f"SELECT * FROM {table}").result())
    return out


def rdb_rows(url: str) -> dict[str, list[tuple[str, ...]]]:
    engine = sa.create_engine(url)
    out = {}
    with engine.connect() as conn:
        for table in ("mart_daily_campaign", "mart_daily_advertiser", "mart_mtd_advertiser_media"):
            out[table] = sorted(tuple(str(v) for v in r) for r in conn.execute(sa.text(f"SELECT * FROM {table}")))
    engine.dispose()
    return out


def sim_requests(stack: Any) -> dict[str, int]:
    return {m: httpx.get(f"{stack.spec.sim_url(m)}/_sim/stats").json()["requests"] for m in stack.spec.sim_ports}


def report_count(cfg: PipelineConfig, days: int = 1) -> int:
    return days * sum(len(s.accounts) for s in cfg.media.values())


# -- re-run one media for one date ------------------------------------------------------------


def test_rerun_one_media_one_date_changes_only_that_partition(stack, make_config: Callable[..., PipelineConfig],  # type: ignore[no-untyped-def]
                                                             sqlite_url: str, tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    cfg = make_config(stack, sqlite_url)
    path = write_config(cfg, tmp_path / "ops.yaml")
    code, out, _ = cli(capsys, "--config", path, "backfill", "--from", str(D1), "--to", str(D2), "--json")
    assert code == EXIT_SUCCESS, out
    summary = json.loads(out)
    assert sorted(summary["partitions"]) == sorted(f"{m}/{d}" for m in cfg.media for d in (D1, D2))
    # one range report per account covers both days (its exchanges under window/, a CSV per day)
    assert sum(m["done"] for m in summary["media"].values()) == report_count(cfg, 1)
    assert {n for n in gcs_objects(cfg) if n.endswith(".json")} == \
        {f"raw/{m}/window/{D1}_{D2}/{a}.json" for m in cfg.media for a in cfg.media[m].account_ids()}
    # started again it resumes: every day is done, so nothing is fetched
    requests = sim_requests(stack)
    code, out, _ = cli(capsys, "--config", path, "backfill", "--from", str(D1), "--to", str(D2), "--json")
    assert code == EXIT_SUCCESS, out
    again = json.loads(out)["media"]
    assert sum(m["skipped"] for m in again.values()) == report_count(cfg, 2) and sim_requests(stack) == requests

    # mark rows that must survive (other media on D1, meta on D2) and rows that must be restored (meta D1)
    client = bq(cfg)
    ds = f"`{cfg.bigquery.project}.{cfg.bigquery.dataset}"
    for media, day in (("google_ads", D1), ("meta", D2), ("meta", D1)):
        client.query(f"UPDATE {ds}.raw_{media}` SET campaign_name = 'MARK' WHERE date = DATE '{day}'").result()
    engine = sa.create_engine(sqlite_url)
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE mart_daily_campaign SET campaign_name = 'MARK' WHERE (media, date) IN "
                             "(('yahoo_ads', :d1), ('meta', :d2), ('meta', :d1))"), {"d1": str(D1), "d2": str(D2)})
    engine.dispose()
    objects, raw, rdb = gcs_objects(cfg), bq_rows(cfg), rdb_rows(sqlite_url)
    ledger = Ledger(sa.create_engine(sqlite_url))
    tasks_before = {(t["media"], t["account_id"], t["date"]): t["run_id"] for t in ledger.task_rows()}
    requests = sim_requests(stack)

    code, out, _ = cli(capsys, "--config", path, "rerun", "--media", "meta", "--date", str(D1), "--json")
    assert code == EXIT_SUCCESS, out
    rerun = json.loads(out)
    assert list(rerun["media"]) == ["meta"] and rerun["media"]["meta"]["done"] == len(cfg.media["meta"].accounts)
    assert list(rerun["partitions"]) == [f"meta/{D1}"] and rerun["partitions"][f"meta/{D1}"]["status"] == "published"
    after = sim_requests(stack)
    assert after["google_ads"] == requests["google_ads"] and after["yahoo_ads"] == requests["yahoo_ads"]
    assert after["meta"] > requests["meta"]

    # GCS: only meta/D1 objects were rewritten (new generation; same rows — the .json also records timings)
    now_objects = gcs_objects(cfg)
    prefix = f"raw/meta/dt={D1}/"
    # new: the rerun's own exchanges (one day); the backfill's range exchanges stay as its record
    assert now_objects.keys() - objects.keys() == {f"{prefix}{a}.json" for a in cfg.media["meta"].account_ids()}
    assert objects.keys() <= now_objects.keys()
    changed = {n for n in objects if now_objects[n][0] != objects[n][0]}
    assert changed == {n for n in objects if n.startswith(prefix)} and changed
    assert all(now_objects[n][1] == objects[n][1] for n in objects if n.endswith(".csv"))
    # BigQuery: meta D1 reloaded (the marks are gone), every other partition untouched (marks kept)
    raw_after = bq_rows(cfg)
    assert raw_after["google_ads"] == raw["google_ads"] and raw_after["yahoo_ads"] == raw["yahoo_ads"]
    meta_d1 = [r for r in raw_after["meta"] if r[0] == str(D1)]
    assert meta_d1 and all("MARK" not in r for r in meta_d1)
    assert [r for r in raw_after["meta"] if r[0] == str(D2)] == [r for r in raw["meta"] if r[0] == str(D2)]
    assert all("MARK" in r for r in raw_after["meta"] if r[0] == str(D2))
    assert len(raw_after["meta"]) == len(raw["meta"])
    # RDB: meta D1 republished from truth (marks gone); other media and dates untouched (marks kept)
    rdb_after = rdb_rows(sqlite_url)
    campaign_before, campaign_after = rdb["mart_daily_campaign"], rdb_after["mart_daily_campaign"]
    assert len(campaign_after) == len(campaign_before)
    assert [r for r in campaign_after if not (r[0] == str(D1) and r[1] == "meta")] == \
        [r for r in campaign_before if not (r[0] == str(D1) and r[1] == "meta")]
    assert all("MARK" not in r for r in campaign_after if r[0] == str(D1) and r[1] == "meta")
    assert sum("MARK" in r for r in campaign_after) == \
        sum(1 for r in campaign_before if "MARK" in r and not (r[0] == str(D1) and r[1] == "meta"))
    assert rdb_after["mart_daily_advertiser"] == rdb["mart_daily_advertiser"]  # same numbers (D1 recomputed)
    assert mart_totals(sqlite_url, D1) == expected_totals(cfg, D1)
    # ledger: only meta D1's tasks belong to the rerun
    tasks_after = {(t["media"], t["account_id"], t["date"]): t["run_id"] for t in ledger.task_rows()}
    assert {k for k in tasks_after if tasks_after[k] != tasks_before[k]} == \
        {("meta", a, D1) for a in cfg.media["meta"].account_ids()}
    assert {tasks_after[("meta", a, D1)] for a in cfg.media["meta"].account_ids()} == {rerun["run_id"]}
    ledger.engine.dispose()


# -- rerun --failed ---------------------------------------------------------------------------------


def test_rerun_failed_touches_only_failed_reports(stack, make_config: Callable[..., PipelineConfig], sqlite_url: str,  # type: ignore[no-untyped-def]
                                                  tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    meta_accounts = [{"id": "100200300", "advertiser": "sakura_foods"},
                     {"id": "100200301", "advertiser": "sakura_foods"},
                     {"id": DENIED_ACCOUNT, "advertiser": "kaze_travel"}]  # the token can never read this one
    cfg = make_config(stack, sqlite_url, media={"meta": {"accounts": meta_accounts},
                                                "yahoo_ads": {"retry": {"max_attempts": 2, "backoff_min_s": 0.05}}})
    path = write_config(cfg, tmp_path / "ops.yaml")
    monkeypatch.setenv("YAHOO_ADS_REFRESH_TOKEN", REVOKED_REFRESH_TOKEN)  # revoked: every yahoo report fails
    code, out, _ = cli(capsys, "--config", path, "run", "--date", str(D1), "--json")
    first = json.loads(out)
    assert code == EXIT_PARTIAL and first["outcome"] == "partial"
    assert {(f["media"], f["account_id"], f["error_kind"]) for f in first["failures"]} == \
        {("meta", DENIED_ACCOUNT, "auth")} | {("yahoo_ads", a, "auth") for a in cfg.media["yahoo_ads"].account_ids()}

    n = {m: len(s.accounts) for m, s in cfg.media.items()}
    failed = 1 + n["yahoo_ads"]
    code, out, _ = cli(capsys, "--config", path, "status", "--date", str(D1), "--json")
    status = json.loads(out)
    assert code == EXIT_PARTIAL and status["failed"] == failed
    assert status["totals"] == {"reports": sum(n.values()), "done": sum(n.values()) - failed, "failed": failed,
                                "open": 0}
    cells = {c["media"]: c for c in status["cells"]}
    assert (cells["meta"]["done"], cells["meta"]["failed"], cells["meta"]["errors"][0]["account_id"]) == \
        (2, 1, DENIED_ACCOUNT)
    assert (cells["google_ads"]["done"], cells["google_ads"]["failed"]) == (n["google_ads"], 0)
    assert (cells["yahoo_ads"]["done"], cells["yahoo_ads"]["failed"]) == (0, n["yahoo_ads"])
    assert {e["error_kind"] for e in cells["yahoo_ads"]["errors"]} == {"auth"}
    assert cells["meta"]["stage2"]["status"] == "published" and cells["yahoo_ads"]["stage2"] is None
    assert ([(r["run_id"], r["outcome"]) for r in status["runs"]] == [(first["run_id"], "partial")]
            and status["locks"] == [])

    objects = gcs_objects(cfg)
    requests = sim_requests(stack)
    monkeypatch.setenv("YAHOO_ADS_REFRESH_TOKEN", "sandbox-refresh-token")  # the operator renews the grant
    code, out, _ = cli(capsys, "--config", path, "rerun", "--failed", "--date", str(D1), "--json")
    again = json.loads(out)
    assert code == EXIT_PARTIAL  # the denied account still fails: still partial, and says so
    assert set(again["media"]) == {"meta", "yahoo_ads"}  # google_ads had nothing to redo
    assert (again["media"]["meta"]["planned"], again["media"]["meta"]["failed"]) == (1, 1)
    assert (again["media"]["yahoo_ads"]["planned"], again["media"]["yahoo_ads"]["done"]) == \
        (n["yahoo_ads"], n["yahoo_ads"])
    assert list(again["partitions"]) == [f"yahoo_ads/{D1}"]  # only the partition that changed is reloaded
    # exactly the failed reports were fetched: ledger events and the simulators agree
    ledger = Ledger(sa.create_engine(sqlite_url))
    touched = {(e["media"], e["account_id"]) for e in ledger.events(again["run_id"]) if e["account_id"]}
    assert touched == {("meta", DENIED_ACCOUNT)} | {("yahoo_ads", a) for a in cfg.media["yahoo_ads"].account_ids()}
    after = sim_requests(stack)
    assert after["google_ads"] == requests["google_ads"]
    assert after["meta"] - requests["meta"] == 1  # the denied account's one request (an auth error is not retried)
    assert after["yahoo_ads"] > requests["yahoo_ads"]
    now_objects = gcs_objects(cfg)
    assert {n for n in objects if now_objects.get(n, (0,))[0] != objects[n][0]} <= {
        f"failed/meta/dt={D1}/{DENIED_ACCOUNT}.json"}  # only the denied account's failure record is rewritten
    assert {n for n in now_objects if n not in objects} == {f"raw/yahoo_ads/dt={D1}/{a}.{ext}"
                                                           for a in cfg.media["yahoo_ads"].account_ids()
                                                           for ext in ("json", "csv")}
    untouched = [t for t in ledger.task_rows(dates=[D1]) if (t["media"], t["account_id"]) not in touched]
    assert len(untouched) == 2 + n["google_ads"] and {t["run_id"] for t in untouched} == {first["run_id"]}

    code, out, _ = cli(capsys, "--config", path, "status", "--date", str(D1), "--json")
    status = json.loads(out)
    assert code == EXIT_PARTIAL and status["failed"] == 1 and status["totals"]["done"] == sum(n.values()) - 1
    assert [r["run_id"] for r in status["runs"]] == [again["run_id"], first["run_id"]]
    yahoo = {m: e for m, e in expected_totals(cfg, D1).items()}["yahoo_ads"]
    assert mart_totals(sqlite_url, D1)["yahoo_ads"] == yahoo
    ledger.engine.dispose()


# -- a driver killed mid-run --------------------------------------------------------------------


def _session_pids(sid: int) -> list[int]:
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()
        if fields[0] != "Z" and int(fields[3]) == sid:
            pids.append(int(entry))
    return pids


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")[:200]
    except OSError:
        return "?"


def kill_session(sid: int, timeout: float = 10.0) -> list[str]:
    """SIGKILL whatever is left of a process session we started; return what was left."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and any("Agent" not in _cmdline(p) for p in _session_pids(sid)):
        time.sleep(0.2)
    pids = _session_pids(sid)
    left = [f"{pid} {_cmdline(pid)}" for pid in pids]
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass
    return left


@pytest.fixture
def slow_simulators(stack: Any) -> Iterator[None]:
    """Every simulated API answers in ~150 ms (restored afterwards: the stack is shared)."""
    before = {m: httpx.get(f"{stack.spec.sim_url(m)}/_sim/config").json()["latency_ms"] for m in stack.spec.sim_ports}
    for m in before:
        httpx.post(f"{stack.spec.sim_url(m)}/_sim/config", json={"latency_ms": 150}).raise_for_status()
    yield
    for m, v in before.items():
        httpx.post(f"{stack.spec.sim_url(m)}/_sim/config", json={"latency_ms": v}).raise_for_status()


def test_killed_driver_resumes_without_duplicates(stack, make_config: Callable[..., PipelineConfig], sqlite_url: str,  # type: ignore[no-untyped-def]
                                                  tmp_path: Path, slow_simulators: None,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    accounts = {
        "meta": [f"1002003{i:02d}" for i in range(10, 15)],
        "google_ads": [f"12345678{i:02d}" for i in range(10, 15)],
        "yahoo_ads": [f"20001{i:02d}" for i in range(10, 13)],
    }
    media = {m: {"concurrency": 1, "accounts": [{"id": a, "advertiser": "sakura_foods"} for a in ids]}
             for m, ids in accounts.items()}
    cfg = make_config(stack, sqlite_url, lock_stale_s=3, media=media)
    path = write_config(cfg, tmp_path / "ops.yaml")
    total = report_count(cfg)
    ray_tmp = Path(f"/tmp/rk{os.getpid()}")  # the driver's own Ray, kept apart from the test's (short: socket paths)
    env = {**os.environ, "RAY_TMPDIR": str(ray_tmp)}
    env.pop("RAY_ADDRESS", None)
    log = open(tmp_path / "driver.log", "wb")  # noqa: SIM115
    driver = subprocess.Popen([sys.executable, "-m", "ingest", "--config", path, "run", "--date", str(D1)],
                              stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    ledger = Ledger(sa.create_engine(sqlite_url))
    try:
        deadline = time.monotonic() + 60
        done: set[tuple[str, str]] = set()
        while time.monotonic() < deadline and driver.poll() is None:
            try:
                done = {(t["media"], t["account_id"]) for t in ledger.task_rows(dates=[D1]) if t["status"] == "done"}
            except sa.exc.OperationalError:  # the ledger tables are not created yet
                pass
            if len(done) >= 3:
                break
            time.sleep(0.05)
        assert driver.poll() is None and 3 <= len(done) < total, \
            (len(done), (tmp_path / "driver.log").read_text()[-3000:])

        # while it runs, a second run of the same date is refused, naming the run that holds it
        holder = ledger.locks([D1])[0]["run_id"]
        code, _, err = cli(capsys, "--config", path, "run", "--date", str(D1))
        assert code == EXIT_LOCKED
        assert f"held by run {holder}" in err and "--take-over" in err

        driver.send_signal(signal.SIGKILL)
        driver.wait(10)
    finally:
        if driver.poll() is None:
            driver.kill()
        leaked = kill_session(driver.pid)
        log.close()
        shutil.rmtree(ray_tmp, ignore_errors=True)
    # ray.init's GCS, raylet and workers (our actors) share the driver's fate (kernel fate-sharing);
    # its dashboard/runtime-env agents notice later and exit by themselves — we don't wait for that
    assert [p for p in leaked if "Agent" not in p] == [], leaked

    state = {(t["media"], t["account_id"]): t["status"] for t in ledger.task_rows(dates=[D1])}
    done_before = {k for k, s in state.items() if s == "done"}
    assert len(state) == total and len(done_before) < total
    assert ledger.run(holder)["outcome"] == "running"  # nobody closed it: its driver died

    time.sleep(cfg.lock_stale_s)  # the dead run's lock goes stale (or: --take-over)
    code, out, _ = cli(capsys, "--config", path, "run", "--date", str(D1), "--json")
    resumed = json.loads(out)
    assert code == EXIT_SUCCESS and resumed["outcome"] == "success"
    assert sum(m["skipped"] for m in resumed["media"].values()) == len(done_before)
    assert sum(m["done"] for m in resumed["media"].values()) == total - len(done_before)
    assert ledger.run(holder)["outcome"] == "aborted"  # marked when its stale lock was taken over
    # each report was recorded done exactly once across both runs: nothing fetched twice
    done_events = Counter((e["media"], e["account_id"]) for run in (holder, resumed["run_id"])
                          for e in ledger.events(run) if e["kind"] == "done")
    assert set(done_events) == set(state) and set(done_events.values()) == {1}
    assert {(e["media"], e["account_id"]) for e in ledger.events(resumed["run_id"]) if e["kind"] == "done"} == \
        set(state) - done_before

    # no duplicates anywhere: one object pair per report, BigQuery and the RDB equal the truth
    objects = gcs_objects(cfg)
    assert sorted(objects) == sorted(f"raw/{m}/dt={D1}/{a}.{ext}"
                                     for m, ids in accounts.items() for a in ids for ext in ("csv", "json"))
    expected = expected_totals(cfg, D1)
    assert {m: len(rows) for m, rows in bq_rows(cfg).items()} == {m: e["rows"] for m, e in expected.items()}
    assert mart_totals(sqlite_url, D1) == expected
    assert len(rdb_rows(sqlite_url)["mart_daily_campaign"]) == sum(e["rows"] for e in expected.values())
    code, out, _ = cli(capsys, "--config", path, "status", "--date", str(D1), "--json")
    status = json.loads(out)
    assert code == EXIT_SUCCESS and status["totals"] == {"reports": total, "done": total, "failed": 0, "open": 0}
    runs = [(r["run_id"], r["outcome"], r["counts"]) for r in status["runs"]]
    assert runs[0][:2] == (resumed["run_id"], "success") and runs[-1][:2] == (holder, "aborted")
    assert len(runs) == 3 and runs[1][1] == "aborted" and f"held by run {holder}" in runs[1][2]["refused"]
    assert all(c["stage2"]["status"] == "published" for c in status["cells"]) and status["locks"] == []
    ledger.engine.dispose()
