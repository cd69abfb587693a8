"""Which numbers analysts can trust this morning: every expected (media, account, date), its state.

Expected dates: each account's own yesterday (in its time zone, as the nightly fetches it) back
``days`` days, or one ``--date``. Each is, from the ledger alone (no API call, no write):

- ``ok``       fetched, and its partition published to the marts;
- ``partial``  fetched but not yet in the marts (stage 2 pending or failed), or still running;
- ``stale``    its last refetch failed: the marts hold an earlier fetch, late conversions may be missing;
- ``failed``   its fetch failed and nothing was ever landed;
- ``missing``  never fetched: the night did not run, or the account was added since.

A date inside the media's refetch window (``lookback_days`` before yesterday) "may still
change": the platform restates it and the nightly refetches it; older dates are final.
``ingest freshness`` exits 0 when every expected date is ``ok`` and 3 otherwise; the nightly
publishes the same picture to the ``mart_freshness`` table for analysts.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from enum import StrEnum
from typing import Any

import sqlalchemy as sa

from ingest.config import PipelineConfig
from ingest.ledger import Ledger, report_tasks, stage_steps
from ingest.outcomes import PartitionStatus, TaskStatus
from ingest.timezones import AccountTimezones, local_yesterday

class State(StrEnum):
    """An expected (media, account, date) as analysts see it."""

    OK = "ok"
    PARTIAL = "partial"
    STALE = "stale"
    FAILED = "failed"
    MISSING = "missing"


#: worst first
PROBLEMS: tuple[State, ...] = (State.MISSING, State.FAILED, State.STALE, State.PARTIAL)


@dataclass
class AccountFreshness:
    media: str
    account: str
    advertiser: str
    timezone: str
    #: every expected date → its state
    states: dict[date, State]
    #: dates from here on are inside the refetch window: they may still change
    may_change_from: date
    latest_complete: date | None = None
    last_fetched_at: datetime | None = None
    reasons: dict[date, str] = field(default_factory=dict)

    def dates(self, state: State) -> list[date]:
        return sorted(d for d, s in self.states.items() if s == state)

    @property
    def ok(self) -> bool:
        return all(s == State.OK for s in self.states.values())

    def as_dict(self) -> dict[str, Any]:
        return {
            "media": self.media, "account_id": self.account, "advertiser": self.advertiser, "timezone": self.timezone,
            "ok": self.ok,
            "latest_complete_date": self.latest_complete.isoformat() if self.latest_complete else None,
            "final_through": (self.may_change_from - timedelta(days=1)).isoformat(),
            "may_change_from": self.may_change_from.isoformat(),
            "last_fetched_at": self.last_fetched_at.isoformat() if self.last_fetched_at else None,
            **{str(state): [d.isoformat() for d in self.dates(state)] for state in PROBLEMS},
            "reasons": {d.isoformat(): r for d, r in sorted(self.reasons.items())},
        }


@dataclass
class FreshnessReport:
    checked_at: datetime
    accounts: list[AccountFreshness]

    @property
    def ok(self) -> bool:
        return all(a.ok for a in self.accounts)

    def problems(self) -> list[tuple[AccountFreshness, State, list[date]]]:
        out = []
        for a in self.accounts:
            for state in PROBLEMS:
                if dates := a.dates(state):
                    out.append((a, state, dates))
        return out

    def as_dict(self) -> dict[str, Any]:
        return {"checked_at": self.checked_at.isoformat(), "ok": self.ok,
                "accounts": [a.as_dict() for a in self.accounts]}


def account_zones(cfg: PipelineConfig, ledger: Ledger) -> dict[tuple[str, str], str]:
    """Each account's zone as the nightly last knew it, without asking any API
    (``AccountTimezones.known``); a zone never looked up falls back to the config's ``timezone``."""
    zones, unknown = AccountTimezones(cfg, ledger).known(cfg.media_names())
    zones.update({(m, account): cfg.timezone for m, accounts in unknown.items() for account in accounts})
    return zones


def check_freshness(cfg: PipelineConfig, ledger: Ledger, *, day: date | None = None, days: int = 7,
                    now: datetime | None = None, media: list[str] | None = None) -> FreshnessReport:
    """The state of every expected date (see the module docstring); reads the ledger only."""
    now = now or datetime.now(UTC)
    zones = account_zones(cfg, ledger)
    expected: dict[tuple[str, str], list[date]] = {}
    windows: dict[tuple[str, str], date] = {}
    for (m, account), tz in zones.items():
        if media and m not in media:
            continue
        yesterday = local_yesterday(tz, now)
        lookback = cfg.media[m].lookback_days or 0
        windows[(m, account)] = yesterday - timedelta(days=lookback)
        expected[(m, account)] = [day] if day else [yesterday - timedelta(days=i) for i in range(max(1, days))]
    all_dates = {d for ds in expected.values() for d in ds}
    with ledger.engine.connect() as conn:
        tasks = conn.execute(sa.select(
            report_tasks.c.media, report_tasks.c.account_id, report_tasks.c.date, report_tasks.c.status,
            report_tasks.c.content_hash, report_tasks.c.rows, report_tasks.c.error_kind, report_tasks.c.error_message,
            report_tasks.c.last_fetched_at, report_tasks.c.finished_at,
        ).where(report_tasks.c.date.in_(all_dates))).mappings().all() if all_dates else []
        stages = conn.execute(sa.select(stage_steps.c.media, stage_steps.c.date, stage_steps.c.status)
                              .where(stage_steps.c.date.in_(all_dates))).all() if all_dates else []
    task_of = {(t["media"], t["account_id"], t["date"]): t for t in tasks}
    stage_of = {(m, d): s for m, d, s in stages}
    advertiser = {(m, a.id): a.advertiser for m, s in cfg.media.items() for a in s.accounts}
    out = []
    for (m, account), dates in sorted(expected.items()):
        fresh = AccountFreshness(m, account, advertiser[(m, account)], zones[(m, account)], {}, windows[(m, account)])
        for d in sorted(dates):
            t = task_of.get((m, account, d))
            state, reason = _state(t, stage_of.get((m, d)))
            fresh.states[d] = state
            if reason:
                fresh.reasons[d] = reason
            if t is not None:
                seen = t["last_fetched_at"] or (t["finished_at"] if t["status"] == TaskStatus.DONE else None)
                if seen is not None:
                    seen = seen if seen.tzinfo else seen.replace(tzinfo=UTC)
                    fresh.last_fetched_at = max(fresh.last_fetched_at or seen, seen)
        ok = fresh.dates(State.OK)
        fresh.latest_complete = ok[-1] if ok else None
        out.append(fresh)
    return FreshnessReport(now, out)


def _state(task: Any, stage: str | None) -> tuple[State, str | None]:
    if task is None:
        return State.MISSING, "never fetched"
    landed = task["content_hash"] is not None or task["rows"] is not None
    status = task["status"]
    if status == TaskStatus.FAILED:
        why = f"{task['error_kind'] or 'error'}: {(task['error_message'] or '')[:200]}"
        if landed:
            return State.STALE, f"last refetch failed ({why}); an earlier fetch is published"
        return State.FAILED, why
    if status != TaskStatus.DONE:
        return State.PARTIAL, f"fetch {status}"
    if stage != PartitionStatus.PUBLISHED:
        return State.PARTIAL, f"fetched, stage 2 {stage or 'not run'}"
    return State.OK, None


def render_text(report: FreshnessReport) -> list[str]:
    """One line per account with a problem, then a summary line."""
    lines = []
    for a in report.accounts:
        if a.ok:
            continue
        parts = [f"{state} {_dates(dates)}" for state in PROBLEMS if (dates := a.dates(state))]
        latest = a.latest_complete.isoformat() if a.latest_complete else "none"
        lines.append(f"{a.media}/{a.account} ({a.advertiser}): " + "; ".join(parts) + f" — latest complete {latest}")
    bad = sum(1 for a in report.accounts if not a.ok)
    if bad:
        lines.append(f"{bad} of {len(report.accounts)} accounts incomplete → python -m ingest rerun --failed "
                     f"(missing dates: python -m ingest run --date D, or backfill)")
    else:
        lines.append(f"all {len(report.accounts)} accounts complete")
    return lines


def notification_text(report: FreshnessReport) -> str:
    """The webhook line: 'no data for 2026-11-29: meta/act_1 missing, ...'."""
    by_day: dict[date, list[str]] = {}
    for a, state, dates in report.problems():
        for d in dates:
            by_day.setdefault(d, []).append(f"{a.media}/{a.account} {state}")
    return "\n".join(
        f"no data for {d.isoformat()}: {', '.join(items)}" for d, items in sorted(by_day.items(), reverse=True)
    )


def _dates(dates: list[date]) -> str:
    if len(dates) <= 3:
        return ", ".join(d.isoformat() for d in dates)
    return f"{dates[0].isoformat()}..{dates[-1].isoformat()} ({len(dates)} dates)"


def publish_freshness(engine: sa.Engine, report: FreshnessReport) -> int:
    """Replace ``mart_freshness`` with this picture, in one transaction (analysts never see it half-written)."""
    from aggregations.mart import create_mart, mart_freshness

    create_mart(engine)
    rows = []
    for a in report.accounts:
        d = a.as_dict()
        rows.append({
            "media": a.media, "account_id": a.account, "advertiser": a.advertiser, "timezone": a.timezone,
            "latest_complete_date": a.latest_complete, "final_through": a.may_change_from - timedelta(days=1),
            "may_change_from": a.may_change_from,
            **{f"{state}_dates": ",".join(d[state]) for state in PROBLEMS},
            "last_fetched_at": a.last_fetched_at, "checked_at": report.checked_at,
        })
    with engine.begin() as conn:
        conn.execute(mart_freshness.delete())
        if rows:
            conn.execute(mart_freshness.insert(), rows)
    return len(rows)


def run_freshness(cfg: PipelineConfig, *, day: date | None, days: int, media: list[str] | None, as_json: bool,
                  notify: bool, now: datetime | None = None, environ: dict[str, str] | None = None) -> int:
    """``ingest freshness``: print the picture; exit 0 when complete, 3 (EXIT_PARTIAL) otherwise."""
    import json
    import os

    from ingest.clients import rdb_engine
    from ingest.errors import ConfigError
    from ingest.job import EXIT_PARTIAL, EXIT_SUCCESS
    from ingest.notify import Notifier

    ledger = Ledger(rdb_engine(cfg.database_url()))
    behind = ledger.schema_behind()  # read-only: never migrates
    if behind:
        raise ConfigError(behind)
    report = check_freshness(cfg, ledger, day=day, days=days, now=now, media=media)
    if as_json:
        print(json.dumps(report.as_dict(), indent=2))
    else:
        for line in render_text(report):
            print(line)
    if notify and not report.ok:
        text = notification_text(report)
        notifier = Notifier(cfg.notify, dict(os.environ if environ is None else environ))
        if not notifier.enabled:
            print(f"--notify: ${cfg.notify.webhook_url_env} is not set; nothing posted")
        else:
            notifier.send("freshness", {"text": f":warning: {text}"})
    return EXIT_SUCCESS if report.ok else EXIT_PARTIAL
