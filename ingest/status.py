"""``ingest status``: what ran and what failed, at a glance, from the ledger alone.

``summarize`` builds the document ``status --json`` prints (its shape is tested):

    {"date": "2026-11-20" | null,          # the date asked for (null with --run)
     "run": {...} | null,                  # with --run: that run's row (outcome, counts, who)
     "runs": [{run_id, kind, outcome, date_from, date_to, media, started_by, started_at,
               finished_at, seconds}],     # with --date: runs covering that date, newest first
     "locks": [{media, date, run_id, holder, heartbeat_at, age_s}],   # runs holding it now
     "events": {"retry": 3, "done": 7},    # with --run: that run's events by kind
     "cells": [{media, date, reports, done, failed, retrying, running, pending, attempts,
                max_attempts, fetch_seconds, rows, errors: [{account_id, error_kind, message,
                attempts}], stage2: {status, loaded_rows, message} | null}],
     "totals": {reports, done, failed, open},
     "failed": 3}                          # failed reports + failed stage-2 partitions

Exit code: 3 when ``failed`` > 0 or nothing at all is recorded for the date (a missed night), else 0.
"""

from __future__ import annotations

import json
from collections import defaultdict
from datetime import UTC, date, datetime
from typing import Any

from ingest.clients import rdb_engine
from ingest.config import PipelineConfig
from ingest.errors import ConfigError
from ingest.job import EXIT_PARTIAL, EXIT_SUCCESS
from ingest.outcomes import TASK_OPEN, TASK_STATE_ORDER, PartitionStatus, TaskStatus
from ingest.ledger import Ledger



def _iso(v: Any) -> Any:
    return v.isoformat() if hasattr(v, "isoformat") else v


def _aware(v: datetime) -> datetime:
    return v if v.tzinfo else v.replace(tzinfo=UTC)


def _run_doc(r: dict[str, Any]) -> dict[str, Any]:
    doc = {k: _iso(v) for k, v in r.items() if k != "counts"}
    doc["counts"] = json.loads(r["counts"] or "{}")  # as stored: per media counts (RunCounts), or why it was refused
    doc["seconds"] = (
        round((_aware(r["finished_at"]) - _aware(r["started_at"])).total_seconds(), 1) if r["finished_at"] else None
    )
    return doc


def summarize(ledger: Ledger, *, day: date | None = None, run_id: str | None = None) -> dict[str, Any]:
    tasks = ledger.task_rows(run_id=run_id) if run_id else ledger.task_rows(dates=[day] if day else None)
    cells: dict[tuple[str, date], dict[str, Any]] = {}
    for t in tasks:
        cell = cells.setdefault((t["media"], t["date"]), {
            "media": t["media"], "date": t["date"].isoformat(), "reports": 0, **{str(s): 0 for s in TASK_STATE_ORDER},
            "attempts": 0, "max_attempts": 0, "fetch_seconds": 0.0, "rows": 0, "errors": []})
        cell["reports"] += 1
        cell[t["status"]] = cell.get(t["status"], 0) + 1
        cell["attempts"] += t["attempts"] or 0
        cell["max_attempts"] = max(cell["max_attempts"], t["attempts"] or 0)
        cell["fetch_seconds"] = round(cell["fetch_seconds"] + (t["duration_s"] or 0.0), 3)
        cell["rows"] += t["rows"] or 0
        if t["status"] == TaskStatus.FAILED:
            cell["errors"].append({"account_id": t["account_id"], "error_kind": t["error_kind"],
                                   "message": t["error_message"], "attempts": t["attempts"]})
    dates = {d for _, d in cells} | ({day} if day and not run_id else set())
    stages = {(s["media"], s["date"]): s for s in ledger.stage_rows(dates)} if dates else {}
    for (media, d), cell in cells.items():
        st = stages.get((media, d))
        cell["stage2"] = (
            {"status": st["status"], "loaded_rows": st["loaded_rows"], "message": st["message"]} if st else None
        )
    run = ledger.run(run_id) if run_id else None
    events: dict[str, int] = defaultdict(int)
    if run_id:
        for e in ledger.events(run_id):
            events[e["kind"]] += 1
    now = datetime.now(UTC)
    locks = [{**{k: _iso(v) for k, v in lk.items()},
              "age_s": round((now - _aware(lk["heartbeat_at"])).total_seconds(), 1)}
             for lk in ledger.locks(dates)] if dates else []
    failed = sum(c["failed"] for c in cells.values()) + sum(
        1 for c in cells.values() if c["stage2"] and c["stage2"]["status"] == PartitionStatus.FAILED)
    return {
        "date": day.isoformat() if day and not run_id else None,
        "run": _run_doc(run) if run else None,
        "runs": [_run_doc(r) for r in ledger.runs_for(day)] if day and not run_id else [],
        "locks": locks,
        "events": dict(events),
        "cells": [cells[k] for k in sorted(cells)],
        "totals": {"reports": sum(c["reports"] for c in cells.values()), "done": sum(c["done"] for c in cells.values()),
                   "failed": sum(c["failed"] for c in cells.values()),
                   "open": sum(c[s] for c in cells.values() for s in TASK_OPEN)},
        "failed": failed,
    }


def print_status(cfg: PipelineConfig, *, day: date | None, run_id: str | None, as_json: bool) -> int:
    ledger = Ledger(rdb_engine(cfg.database_url()))
    behind = ledger.schema_behind()  # read-only: it says so instead of writing schema
    if behind:
        raise ConfigError(behind)
    doc = summarize(ledger, day=day, run_id=run_id)
    code = EXIT_PARTIAL if doc["failed"] else EXIT_SUCCESS
    if as_json:
        print(json.dumps(doc, indent=2, default=str))
        return code
    if run_id and not doc["run"]:
        print(f"no run {run_id} in the ledger")
        return code
    if doc["run"]:
        r = doc["run"]
        took = f", took {r['seconds']:.0f}s" if r["seconds"] is not None else ""
        print(f"run {r['run_id']} ({r['kind']} {r['date_from']}..{r['date_to']}, {r['media']}): "
              f"{r['outcome'].upper()}  "
              f"started {r['started_at'][:19]} by {r['started_by']}{took}")
        if doc["events"]:
            print("  events: " + ", ".join(f"{k} {v}" for k, v in sorted(doc["events"].items())))
    for r in doc["runs"][:5]:
        took = f"{r['seconds']:>6.0f}s" if r["seconds"] is not None else "      -"
        print(f"run {r['run_id']:<32} {r['kind']:<8} {r['outcome']:<8} {r['started_at'][:19]} {took}  "
              f"{r['started_by']}")
    for lk in doc["locks"]:
        print(f"LOCKED {lk['media']} {lk['date']} by run {lk['run_id']} "
              f"({lk['holder']}, heartbeat {lk['age_s']:.0f}s ago)")
    if not doc["cells"]:
        if doc["date"] and not run_id:
            # a night that never ran is a problem, not a quiet zero
            print(f"nothing recorded for {doc['date']}: no run fetched this date (a missed night?) "
                  f"→ python -m ingest run --date {doc['date']}; python -m ingest freshness shows every gap")
            return EXIT_PARTIAL
        print("no reports recorded")
        return code
    if doc["runs"] or doc["locks"]:
        print()
    print(f"{'media':<12} {'date':<10} {'reports':>7} {'done':>5} {'failed':>6} {'open':>5} {'attempts':>8} "
          f"{'fetch s':>8} {'rows':>6}  stage 2")
    for c in doc["cells"]:
        open_ = sum(c[s] for s in TASK_OPEN)
        st = c["stage2"]["status"] if c["stage2"] else "-"
        if c["stage2"] and c["stage2"]["loaded_rows"] is not None:
            st += f" ({c['stage2']['loaded_rows']} rows)"
        print(f"{c['media']:<12} {c['date']:<10} {c['reports']:>7} {c['done']:>5} {c['failed']:>6} {open_:>5} "
              f"{c['attempts']:>8} {c['fetch_seconds']:>8.1f} {c['rows']:>6}  {st}")
        for e in c["errors"][:5]:
            msg = e["message"] or ""
            if e["error_kind"] and not msg.startswith(f"{e['error_kind']}:"):
                msg = f"{e['error_kind']}: {msg}"
            print(f"    FAILED {e['account_id']} after {e['attempts']} attempts: {msg[:160]}")
        if c["stage2"] and c["stage2"]["status"] == PartitionStatus.FAILED:
            print(f"    STAGE 2 FAILED: {c['stage2']['message']}")
    t = doc["totals"]
    print(f"{'total':<23} {t['reports']:>7} {t['done']:>5} {t['failed']:>6} {t['open']:>5}"
          + ("   → python -m ingest rerun --failed" + (f" --date {doc['date']}" if doc["date"] else "")
             if doc["failed"] or t["open"] else ""))
    return code
