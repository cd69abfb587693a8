"""What the page reads from the ledger: every query aggregated in SQL or paged, each served by
an index (``0001_ledger`` and ``0002_ui_indexes``), so pages stay fast with 100,000s of
report tasks. Read-only: nothing here writes, and the engine refuses writes anyway.
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any, TypedDict, cast

import sqlalchemy as sa
from sqlalchemy import Engine, event

from ingest.ledger import report_tasks, runs, stage_steps, task_events
from ingest.outcomes import TASK_STATE_ORDER, RunCounts, TaskStatus

#: worst first: the colour of a cell is its worst state
STATE_ORDER = TASK_STATE_ORDER
NIGHTLY_KINDS = ("run", "demo")


# -- what the pages get: the ledger's rows, typed (the columns of ``ingest.ledger``'s tables) --
class RunRow(TypedDict):
    run_id: str
    kind: str
    date_from: date
    date_to: date
    media: str
    started_by: str
    started_at: datetime
    finished_at: datetime | None
    outcome: str
    counts: str
    #: ``counts`` parsed
    counts_doc: RunCounts


class EventRow(TypedDict):
    id: int
    run_id: str
    media: str
    account_id: str | None
    date: date | None
    kind: str
    attempt: int | None
    error_kind: str | None
    message: str | None
    at: datetime


class StageRow(TypedDict):
    media: str
    date: date
    run_id: str
    status: str
    loaded_rows: int | None
    message: str | None
    updated_at: datetime


class TaskRow(TypedDict):
    media: str
    account_id: str
    date: date
    run_id: str
    status: str
    attempts: int
    error_kind: str | None
    error_message: str | None
    rows: int | None
    bytes: int | None
    requests: int | None
    impressions: int | None
    clicks: int | None
    spend: Any  # Decimal | None (SQLite may give float)
    conversions: Any
    gcs_paths: str | None
    started_at: datetime | None
    finished_at: datetime | None
    duration_s: float | None
    #: ``gcs_paths`` parsed
    paths: list[str]
    #: this run's events of the report (cell page only)
    events: list[EventRow]


class CellError(TypedDict):
    error_kind: str | None
    count: int
    message: str | None


class OpenAccount(TypedDict):
    account_id: str
    status: str
    attempts: int
    error_kind: str | None


class NightMedia(TypedDict):
    duration_s: float
    failed: int
    settled: int


class Night(TypedDict):
    """One calendar day of the chart."""

    date: date
    media: dict[str, NightMedia]
    outcomes: list[str]
    missing: bool
    now_reports: int
    now_failed: int


def read_only_engine(url: str) -> Engine:
    """An engine that cannot write: SQLite ``query_only``, PostgreSQL read-only transactions."""
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url[len("postgresql://"):]
    if url.startswith("sqlite"):
        path = url.split("///", 1)[-1].split("?", 1)[0]
        if path and path != ":memory:" and not Path(path).exists():
            raise FileNotFoundError(f"no ledger database at {path} (run the pipeline first, e.g. `make demo`)")
        engine = sa.create_engine(url, connect_args={"timeout": 30})

        @event.listens_for(engine, "connect")
        def _ro_sqlite(dbapi_conn, _record):  # type: ignore[no-untyped-def]
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA query_only=ON")
            cur.close()

        return engine
    engine = sa.create_engine(url, pool_pre_ping=True)

    @event.listens_for(engine, "connect")
    def _ro_pg(dbapi_conn, _record):  # type: ignore[no-untyped-def]
        cur = dbapi_conn.cursor()
        cur.execute("SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY")
        cur.close()
        dbapi_conn.commit()

    return engine


def _aware(ts: datetime | None) -> datetime | None:
    if ts is None:
        return None
    return ts if ts.tzinfo else ts.replace(tzinfo=UTC)


def _as_date(value: Any) -> date:
    return value if isinstance(value, date) else date.fromisoformat(str(value)[:10])


def worst(states: dict[str, int]) -> str:
    for s in STATE_ORDER:
        if states.get(s):
            return str(s)
    return "empty"


@dataclass
class Cell:
    media: str
    day: date
    states: dict[str, int] = field(default_factory=dict)
    reports: int = 0
    touched: int = 0
    attempts: int = 0
    max_attempts: int = 0
    fetch_s: float = 0.0
    rows: int = 0
    bytes: int = 0
    started_at: datetime | None = None
    finished_at: datetime | None = None
    events: dict[str, int] = field(default_factory=dict)
    errors: list[CellError] = field(default_factory=list)
    open_accounts: list[OpenAccount] = field(default_factory=list)
    stage: StageRow | None = None

    @property
    def state(self) -> str:
        return worst(self.states)


class LedgerReader:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    # -- runs list ----------------------------------------------------------------------------
    def runs(self, *, page: int = 1, page_size: int = 50, day: date | None = None, media: str | None = None,
             outcome: str | None = None, kind: str | None = None) -> tuple[list[RunRow], int]:
        r = runs
        where = []
        if day is not None:
            where += [r.c.date_from <= day, r.c.date_to >= day]
        if media:
            where.append((sa.literal(",") + r.c.media + sa.literal(",")).like(f"%,{media},%"))
        if outcome:
            where.append(r.c.outcome == outcome)
        if kind:
            where.append(r.c.kind == kind)
        q = sa.select(r).where(*where).order_by(r.c.started_at.desc(), r.c.run_id.desc())
        q = q.limit(page_size).offset((max(page, 1) - 1) * page_size)
        with self.engine.connect() as conn:
            rows = [_run_row(x) for x in conn.execute(q).mappings()]
            total = conn.execute(sa.select(sa.func.count()).select_from(r).where(*where)).scalar_one()
        return rows, int(total)

    def media_names(self) -> list[str]:
        with self.engine.connect() as conn:
            names = conn.execute(sa.select(runs.c.media).distinct().limit(500)).scalars().all()
        return sorted({m for joined in names for m in (joined or "").split(",") if m})

    def run(self, run_id: str) -> RunRow | None:
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(runs).where(runs.c.run_id == run_id)).mappings().first()
        return None if row is None else _run_row(row)

    # -- a run's grid: media × date ----------------------------------------------------------
    def grid(self, run: RunRow, open_per_cell: int = 12) -> dict[tuple[str, date], Cell]:
        t, e, s = report_tasks, task_events, stage_steps
        media = [m for m in run["media"].split(",") if m]
        d0, d1 = _as_date(run["date_from"]), _as_date(run["date_to"])
        run_id = run["run_id"]
        in_run = [t.c.date >= d0, t.c.date <= d1, t.c.media.in_(media)]
        cells: dict[tuple[str, date], Cell] = {}

        def cell(m: str, d: Any) -> Cell:
            d = _as_date(d)
            return cells.setdefault((m, d), Cell(m, d))

        agg = sa.select(
            t.c.media, t.c.date, t.c.status, sa.func.count().label("n"),
            sa.func.sum(sa.case((t.c.run_id == run_id, 1), else_=0)).label("touched"),
            sa.func.sum(t.c.attempts).label("attempts"), sa.func.max(t.c.attempts).label("max_attempts"),
            sa.func.sum(t.c.duration_s).label("fetch_s"), sa.func.sum(t.c.rows).label("rows"),
            sa.func.sum(t.c.bytes).label("bytes"),
            sa.func.min(t.c.started_at).label("started_at"), sa.func.max(t.c.finished_at).label("finished_at"),
        ).where(*in_run).group_by(t.c.media, t.c.date, t.c.status)
        errs = sa.select(
            t.c.media, t.c.date, t.c.error_kind, sa.func.count().label("n"),
            sa.func.max(t.c.error_message).label("message"),
        ).where(*in_run, t.c.status == "failed").group_by(t.c.media, t.c.date, t.c.error_kind)
        evs = sa.select(e.c.media, e.c.date, e.c.kind, sa.func.count().label("n")).where(
            e.c.run_id == run_id).group_by(e.c.media, e.c.date, e.c.kind)
        stages = sa.select(s).where(s.c.date >= d0, s.c.date <= d1, s.c.media.in_(media))
        with self.engine.connect() as conn:
            for r in conn.execute(agg).mappings():
                c = cell(r["media"], r["date"])
                n = int(r["n"])
                c.states[r["status"]] = c.states.get(r["status"], 0) + n
                c.reports += n
                c.touched += int(r["touched"] or 0)
                c.attempts += int(r["attempts"] or 0)
                c.max_attempts = max(c.max_attempts, int(r["max_attempts"] or 0))
                c.fetch_s += float(r["fetch_s"] or 0)
                c.rows += int(r["rows"] or 0)
                c.bytes += int(r["bytes"] or 0)
                for k, pick in (("started_at", min), ("finished_at", max)):
                    v = _aware(r[k])
                    cur = getattr(c, k)
                    setattr(c, k, v if cur is None else (cur if v is None else pick(cur, v)))
            for r in conn.execute(errs).mappings():
                cell(r["media"], r["date"]).errors.append(
                    CellError(error_kind=r["error_kind"], count=int(r["n"]), message=r["message"]))
            for r in conn.execute(evs).mappings():
                if r["date"] is None:
                    continue  # media-level events (a supervisor restart) are shown on the run header
                c = cell(r["media"], r["date"])
                c.events[r["kind"]] = c.events.get(r["kind"], 0) + int(r["n"])
            for r in conn.execute(stages).mappings():
                cell(r["media"], r["date"]).stage = cast(StageRow, dict(r))
            # the accounts shown when a cell is expanded: what is not done, worst first, a few per cell
            bad = [(m, d) for (m, d), c in cells.items() if c.reports - c.states.get(TaskStatus.DONE, 0) > 0]
            for m, d in bad[:400]:
                q = sa.select(t.c.account_id, t.c.status, t.c.attempts, t.c.error_kind).where(
                    t.c.media == m, t.c.date == d, t.c.status != TaskStatus.DONE).order_by(
                    _state_rank(t.c.status), t.c.account_id).limit(open_per_cell)
                cells[(m, d)].open_accounts = [cast(OpenAccount, dict(x)) for x in conn.execute(q).mappings()]
        for c in cells.values():
            c.errors.sort(key=lambda x: -x["count"])
        return cells

    def run_events(self, run_id: str) -> dict[str, int]:
        e = task_events
        with self.engine.connect() as conn:
            rows = conn.execute(
                sa.select(e.c.kind, sa.func.count()).where(e.c.run_id == run_id).group_by(e.c.kind)
            ).all()
        return {k: int(n) for k, n in rows}

    def media_events(self, run_id: str, limit: int = 50) -> list[EventRow]:
        """Events not tied to one report (supervisor restarts) and breaker changes of a run."""
        e = task_events
        q = sa.select(e).where(
            e.c.run_id == run_id, e.c.kind.in_(("restart", "breaker_open", "breaker_closed", "escalated"))
        ).order_by(e.c.id).limit(limit)
        with self.engine.connect() as conn:
            return [cast(EventRow, dict(x)) for x in conn.execute(q).mappings()]

    # -- one cell: (media, date) × accounts ------------------------------------------------------
    def cell(self, run_id: str, media: str, day: date, *, page: int = 1, page_size: int = 50,
             status: str | None = None) -> tuple[list[TaskRow], int, StageRow | None]:
        t, e, s = report_tasks, task_events, stage_steps
        where = [t.c.media == media, t.c.date == day]
        if status:
            where.append(t.c.status == status)
        q = sa.select(t).where(*where).order_by(_state_rank(t.c.status), t.c.account_id).limit(page_size).offset(
            (max(page, 1) - 1) * page_size)
        with self.engine.connect() as conn:
            rows = [_task_row(x) for x in conn.execute(q).mappings()]
            total = conn.execute(sa.select(sa.func.count()).select_from(t).where(*where)).scalar_one()
            stage = conn.execute(sa.select(s).where(s.c.media == media, s.c.date == day)).mappings().first()
            accounts = [r["account_id"] for r in rows]
            events: dict[str, list[EventRow]] = defaultdict(list)
            if accounts:
                eq = sa.select(e).where(e.c.run_id == run_id, e.c.media == media, e.c.date == day,
                                        e.c.account_id.in_(accounts)).order_by(e.c.id)
                for ev in conn.execute(eq).mappings():
                    events[ev["account_id"]].append(cast(EventRow, dict(ev)))
        for r in rows:
            r["events"] = events.get(r["account_id"], [])
        return rows, int(total), cast(StageRow, dict(stage)) if stage else None

    def task(self, media: str, day: date, account: str, history: int = 100) -> tuple[TaskRow | None, list[EventRow]]:
        t, e = report_tasks, task_events
        with self.engine.connect() as conn:
            row = conn.execute(
                sa.select(t).where(t.c.media == media, t.c.date == day, t.c.account_id == account)
            ).mappings().first()
            evs = [cast(EventRow, dict(x)) for x in conn.execute(sa.select(e).where(
                e.c.media == media, e.c.date == day, e.c.account_id == account
            ).order_by(e.c.id.desc()).limit(history)).mappings()]
        return (_task_row(row) if row else None), evs

    def stage(self, media: str, day: date) -> StageRow | None:
        s = stage_steps
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(s).where(s.c.media == media, s.c.date == day)).mappings().first()
        return cast(StageRow, dict(row)) if row else None

    # -- the chart: the last 30 nights ---------------------------------------------------------
    def nights(self, limit: int = 30) -> list[Night]:
        """The last ``limit`` calendar days up to the newest nightly date, one entry each: per
        media, how long its fetch took (run start → its last report settled, summed over that
        night's runs) and how many reports failed then (from the event history, never
        overwritten); ``missing`` when no nightly run covered the day (a gap on the chart, not
        a hidden one); ``now_failed``: reports of that date failed *now* (a successful rerun
        clears it, the night's earlier outcomes stay in ``outcomes``)."""
        r, e, t = runs, task_events, report_tasks
        with self.engine.connect() as conn:
            newest = conn.execute(sa.select(sa.func.max(r.c.date_to)).where(r.c.kind.in_(NIGHTLY_KINDS))).scalar()
            if newest is None:
                return []
            newest = _as_date(newest)
            calendar = [date.fromordinal(newest.toordinal() - i) for i in range(limit - 1, -1, -1)]
            days = conn.execute(sa.select(r.c.date_to).where(r.c.kind.in_(NIGHTLY_KINDS), r.c.date_to >= calendar[0])
                                .group_by(r.c.date_to)).scalars().all()
            run_rows = conn.execute(sa.select(r.c.run_id, r.c.date_to, r.c.started_at, r.c.finished_at, r.c.outcome)
                                    .where(r.c.kind.in_(NIGHTLY_KINDS), r.c.date_to.in_(days))).mappings().all()
            by_run = {x["run_id"]: dict(x) for x in run_rows}
            agg = conn.execute(sa.select(
                e.c.run_id, e.c.media, sa.func.max(e.c.at).label("last"),
                sa.func.sum(sa.case((e.c.kind == "failed", 1), else_=0)).label("failed"),
                sa.func.count().label("settled"),
            ).where(
                e.c.run_id.in_(list(by_run)), e.c.kind.in_(("done", "failed"))
            ).group_by(e.c.run_id, e.c.media)).mappings().all()
            current = conn.execute(sa.select(
                t.c.date, sa.func.count().label("reports"),
                sa.func.sum(sa.case((t.c.status == TaskStatus.FAILED, 1), else_=0)).label("failed"),
            ).where(t.c.date.in_(calendar)).group_by(t.c.date)).mappings().all()
        now = {_as_date(c["date"]): (int(c["reports"]), int(c["failed"] or 0)) for c in current}
        nights: dict[date, Night] = {}
        have = {_as_date(d) for d in days}
        for d in calendar:
            reports, failed = now.get(d, (0, 0))
            nights[d] = Night(date=d, media={}, outcomes=[], missing=d not in have, now_reports=reports,
                              now_failed=failed)
        for run in by_run.values():
            nights[_as_date(run["date_to"])]["outcomes"].append(run["outcome"])
        for a in agg:
            run = by_run[a["run_id"]]
            n = nights[_as_date(run["date_to"])]["media"].setdefault(
                a["media"], NightMedia(duration_s=0.0, failed=0, settled=0))
            start, last = _aware(run["started_at"]), _aware(a["last"])
            if start and last:
                n["duration_s"] += max(0.0, (last - start).total_seconds())
            n["failed"] += int(a["failed"] or 0)
            n["settled"] += int(a["settled"] or 0)
        return [v for _, v in sorted(nights.items())]

    def current_failed(self, rows: list[RunRow]) -> dict[str, tuple[int, int]]:
        """Per run of ``rows``: (reports, failed) of its dates and media as the ledger has them
        *now* — what the data looks like after any rerun, beside the run's own outcome."""
        if not rows:
            return {}
        first = min(_as_date(r["date_from"]) for r in rows)
        last = max(_as_date(r["date_to"]) for r in rows)
        t = report_tasks
        with self.engine.connect() as conn:
            cells = conn.execute(sa.select(
                t.c.date, t.c.media, sa.func.count().label("reports"),
                sa.func.sum(sa.case((t.c.status == TaskStatus.FAILED, 1), else_=0)).label("failed"),
            ).where(t.c.date.between(first, last)).group_by(t.c.date, t.c.media)).mappings().all()
        out = {}
        for r in rows:
            media = set((r["media"] or "").split(","))
            lo, hi = _as_date(r["date_from"]), _as_date(r["date_to"])
            mine = [c for c in cells if c["media"] in media and lo <= _as_date(c["date"]) <= hi]
            out[r["run_id"]] = (sum(int(c["reports"]) for c in mine), sum(int(c["failed"] or 0) for c in mine))
        return out


def _state_rank(col: Any) -> Any:
    return sa.case(*((col == s, i) for i, s in enumerate(STATE_ORDER)), else_=len(STATE_ORDER))


def _run_row(row: Any) -> RunRow:
    out = dict(row)
    out["counts_doc"] = RunCounts.from_doc(out.get("counts"))
    return cast(RunRow, out)


def _task_row(row: Any) -> TaskRow:
    out = dict(row)
    out["paths"] = _paths(out.get("gcs_paths"))
    out.setdefault("events", [])
    return cast(TaskRow, out)


def _paths(raw: str | None) -> list[str]:
    if not raw:
        return []
    try:
        value = json.loads(raw)
    except ValueError:
        return [raw]
    return [str(p) for p in value] if isinstance(value, list) else [str(value)]
