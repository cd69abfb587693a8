"""``ingest status``: what ran and what failed, at a glance, from the ledger alone."""

from __future__ import annotations

import json
from collections import defaultdict
from datetime import date
from typing import Any

from ingest.clients import rdb_engine
from ingest.config import PipelineConfig
from ingest.job import EXIT_PARTIAL, EXIT_SUCCESS
from ingest.ledger import Ledger

STATES = ("done", "failed", "retrying", "running", "pending")


def summarize(ledger: Ledger, *, day: date | None = None, run_id: str | None = None) -> dict[str, Any]:
    tasks = ledger.task_rows(run_id=run_id) if run_id else ledger.task_rows(dates=[day] if day else None)
    cells: dict[tuple[str, date], dict[str, Any]] = {}
    for t in tasks:
        cell = cells.setdefault((t["media"], t["date"]), {
            "media": t["media"], "date": t["date"].isoformat(), "reports": 0, **{s: 0 for s in STATES},
            "attempts": 0, "max_attempts": 0, "fetch_seconds": 0.0, "rows": 0, "errors": []})
        cell["reports"] += 1
        cell[t["status"]] = cell.get(t["status"], 0) + 1
        cell["attempts"] += t["attempts"] or 0
        cell["max_attempts"] = max(cell["max_attempts"], t["attempts"] or 0)
        cell["fetch_seconds"] = round(cell["fetch_seconds"] + (t["duration_s"] or 0.0), 3)
        cell["rows"] += t["rows"] or 0
        if t["status"] == "failed":
            cell["errors"].append({"account_id": t["account_id"], "error_kind": t["error_kind"],
                                   "message": t["error_message"], "attempts": t["attempts"]})
    dates = {d for _, d in cells}
    stages = {(s["media"], s["date"]): s for s in ledger.stage_rows(dates)} if dates else {}
    for (media, d), cell in cells.items():
        st = stages.get((media, d))
        cell["stage2"] = {"status": st["status"], "loaded_rows": st["loaded_rows"], "message": st["message"]} if st else None
    run = ledger.run(run_id) if run_id else None
    events: dict[str, int] = defaultdict(int)
    if run_id:
        for e in ledger.events(run_id):
            events[e["kind"]] += 1
    failed = sum(c["failed"] for c in cells.values()) + sum(
        1 for c in cells.values() if c["stage2"] and c["stage2"]["status"] == "failed")
    return {
        "date": day.isoformat() if day and not run_id else None,
        "run": {k: (v.isoformat() if hasattr(v, "isoformat") else v) for k, v in run.items()} if run else None,
        "events": dict(events),
        "cells": [cells[k] for k in sorted(cells)],
        "failed": failed,
    }


def print_status(cfg: PipelineConfig, *, day: date | None, run_id: str | None, as_json: bool) -> int:
    ledger = Ledger(rdb_engine(cfg.database_url()))
    ledger.migrate()
    doc = summarize(ledger, day=day, run_id=run_id)
    code = EXIT_PARTIAL if doc["failed"] else EXIT_SUCCESS
    if as_json:
        print(json.dumps(doc, indent=2, default=str))
        return code
    if doc["run"]:
        r = doc["run"]
        print(f"run {r['run_id']} ({r['kind']}) {r['outcome']}  started {r['started_at']} by {r['started_by']}")
        if doc["events"]:
            print("  events: " + ", ".join(f"{k} {v}" for k, v in sorted(doc["events"].items())))
    elif not doc["cells"]:
        print(f"nothing recorded for {doc['date']}")
        return code
    print(f"{'media':<12} {'date':<10} {'reports':>7} {'done':>5} {'failed':>6} {'open':>5} {'attempts':>8} "
          f"{'fetch s':>8} {'rows':>6}  stage 2")
    for c in doc["cells"]:
        open_ = c["pending"] + c["running"] + c["retrying"]
        st = c["stage2"]["status"] if c["stage2"] else "-"
        print(f"{c['media']:<12} {c['date']:<10} {c['reports']:>7} {c['done']:>5} {c['failed']:>6} {open_:>5} "
              f"{c['attempts']:>8} {c['fetch_seconds']:>8.1f} {c['rows']:>6}  {st}")
        for e in c["errors"][:5]:
            print(f"    FAILED {e['account_id']} after {e['attempts']} attempts: {e['error_kind']}: {(e['message'] or '')[:160]}")
        if c["stage2"] and c["stage2"]["status"] == "failed":
            print(f"    STAGE 2 FAILED: {c['stage2']['message']}")
    return code
