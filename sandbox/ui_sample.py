"""A synthetic ledger for the page's tests, screenshots and speed checks: nightly runs over
``nights`` dates × media × accounts, mostly done, some retried, a few failed (with realistic
error kinds and messages), stage-2 results, and one ``rerun`` of the last night's failures.

``python -m sandbox.ui_sample sqlite:///tmp/ledger.db --nights 30 --accounts 1112`` writes
~100,000 report tasks. Never used by the pipeline itself.
"""

from __future__ import annotations

import argparse
import json
import random
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy import Engine

from ingest.ledger import Ledger, report_tasks, runs, stage_steps, task_events

MEDIA = ("meta", "google_ads", "yahoo_ads")
ERRORS = {
    "meta": ("throttled", "throttled: (#80000) There have been too many calls from this ad-account. "
                          "GET /v21.0/act_{acct}/insights?access_token=EAAB-not-a-real-token&level=campaign "
                          "(HTTP 400) code=80000"),
    "google_ads": ("auth", "auth: Request had invalid authentication credentials (Authorization: Bearer ya29.not-real) "
                           "(HTTP 401) code=UNAUTHENTICATED"),
    "yahoo_ads": ("data", "data: report CSV truncated after 212 of 400 rows"),
}


@dataclass
class Seeded:
    runs: list[str] = field(default_factory=list)
    tasks: int = 0
    events: int = 0
    failed: list[tuple[str, str, date]] = field(default_factory=list)
    last_run: str = ""
    days: list[date] = field(default_factory=list)


def seed(engine: Engine, *, nights: int = 3, accounts: int = 4, media: tuple[str, ...] = MEDIA,
         end: date = date(2026, 11, 20), fail_rate: float = 0.02, retry_rate: float = 0.06, seed_value: int = 7,
         batch: int = 5000) -> Seeded:
    """Write the synthetic ledger (after migrating). Deterministic for a given ``seed_value``."""
    Ledger(engine).migrate()
    rng = random.Random(seed_value)
    out = Seeded()
    days = [end - timedelta(days=i) for i in range(nights - 1, -1, -1)]
    out.days = days
    acct_ids = {m: [f"{(i + 1) * 7919 + j * 13:010d}"[-10:] for j in range(accounts)] for i, m in enumerate(media)}
    tasks: list[dict[str, Any]] = []
    events: list[dict[str, Any]] = []
    stages: list[dict[str, Any]] = []
    run_rows: list[dict[str, Any]] = []
    for n, day in enumerate(days):
        run_id = f"run-{(day + timedelta(days=1)).strftime('%Y%m%d')}T010000-{n:06x}"
        start = datetime.combine(day + timedelta(days=1), time(1, 0), tzinfo=UTC)
        counts: dict[str, dict[str, int]] = {}
        worst = "success"
        for mi, m in enumerate(media):
            c = {"planned": 0, "skipped": 0, "done": 0, "failed": 0, "retries": 0, "restarts": 0, "rows": 0,
                 "requests": 0}
            speed = 0.4 + 0.3 * mi + rng.random() * 0.2
            bad_night = (n % 9 == 4 and m == media[0]) or (n == len(days) - 1 and m == media[-1])
            for j, acct in enumerate(acct_ids[m]):
                c["planned"] += 1
                t0 = start + timedelta(seconds=j * speed / max(1, accounts / 50))
                dur = 0.3 + rng.random() * 2.5
                failed = rng.random() < (fail_rate * (8 if bad_night else 1))
                retries = 1 + (rng.random() < 0.3) if (failed or rng.random() < retry_rate) else 0
                attempts = (retries + 1) if not failed else 6
                fin = t0 + timedelta(seconds=dur * attempts)
                at = fin
                for a in range(1, attempts):
                    kind, msg = ERRORS[m]
                    events.append({"run_id": run_id, "media": m, "account_id": acct, "date": day, "kind": "retry",
                                   "attempt": a, "error_kind": kind, "message": msg.format(acct=acct) + " → backoff",
                                   "at": t0 + timedelta(seconds=dur * a)})
                row = {"media": m, "account_id": acct, "date": day, "run_id": run_id, "attempts": attempts,
                       "started_at": t0, "finished_at": fin, "requests": attempts + 1}
                if failed:
                    kind, msg = ERRORS[m]
                    row.update(status="failed", error_kind=kind,
                               error_message=msg.format(acct=acct) + " → retries exhausted",
                               duration_s=None, rows=None, bytes=None, gcs_paths=None, impressions=None, clicks=None,
                               spend=None, conversions=None)
                    c["failed"] += 1
                    out.failed.append((m, acct, day))
                    events.append({"run_id": run_id, "media": m, "account_id": acct, "date": day, "kind": "failed",
                                   "attempt": attempts, "error_kind": kind, "message": row["error_message"], "at": at})
                else:
                    nrows = 5 + (j % 20)
                    row.update(status="done", error_kind=None, error_message=None, duration_s=dur, rows=nrows,
                               bytes=nrows * 180, impressions=nrows * 1000, clicks=nrows * 31, spend=nrows * 12.5,
                               conversions=nrows * 0.7,
                               gcs_paths=json.dumps([f"gs://ad-ingest/raw/{m}/dt={day}/{acct}.json",
                                                     f"gs://ad-ingest/raw/{m}/dt={day}/{acct}.csv"]))
                    c["done"] += 1
                    c["rows"] += nrows
                    events.append({"run_id": run_id, "media": m, "account_id": acct, "date": day, "kind": "done",
                                   "attempt": attempts, "error_kind": None, "message": None, "at": at})
                c["retries"] += attempts - 1 if not failed else attempts - 1
                c["requests"] += attempts + 1
                tasks.append(row)
            if bad_night and n % 9 == 4:
                events.append({"run_id": run_id, "media": m, "account_id": acct_ids[m][0], "date": day,
                               "kind": "breaker_open", "attempt": 2, "error_kind": "throttled",
                               "message": "throttled: too many calls (cycle 1)",
                               "at": start + timedelta(seconds=30)})
            counts[m] = c
            ok = c["failed"] == 0
            stage_failed = m == media[-1] and n == len(days) - 2
            stages.append({"media": m, "date": day, "run_id": run_id,
                           "status": "failed" if stage_failed else "published",
                           "loaded_rows": None if stage_failed else c["rows"],
                           "message": ("reconcile: mart clicks 1021 != fetched 1052" if stage_failed else
                                       f"reconciled: {c['rows']} rows; impressions, clicks, spend, conversions equal"),
                           "updated_at": start + timedelta(minutes=20)})
            if not ok or stage_failed:
                worst = "partial"
        finished = max(t["finished_at"] for t in tasks[-len(media) * accounts:]) + timedelta(minutes=2)
        run_rows.append({"run_id": run_id, "kind": "run", "date_from": day, "date_to": day, "media": ",".join(media),
                         "started_by": "ingest@ray-head pid 4242", "started_at": start, "finished_at": finished,
                         "outcome": worst, "counts": json.dumps(counts)})
        out.runs.append(run_id)
    out.last_run = out.runs[-1]
    with engine.begin() as conn:
        conn.execute(runs.insert(), run_rows)
        for i in range(0, len(tasks), batch):
            conn.execute(report_tasks.insert(), tasks[i:i + batch])
        for i in range(0, len(events), batch):
            conn.execute(task_events.insert(), events[i:i + batch])
        conn.execute(stage_steps.insert(), stages)
    out.tasks, out.events = len(tasks), len(events)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("url", help="SQLAlchemy URL of an empty ledger database")
    p.add_argument("--nights", type=int, default=30)
    p.add_argument("--accounts", type=int, default=1112, help="accounts per media")
    args = p.parse_args()
    s = seed(sa.create_engine(args.url), nights=args.nights, accounts=args.accounts)
    print(f"seeded {s.tasks} report tasks, {s.events} events, {len(s.runs)} runs; last run {s.last_run}")


if __name__ == "__main__":
    main()
