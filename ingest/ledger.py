"""The ledger: every run and every report task, in the RDB, so nothing is invisible.

Tables (same code on PostgreSQL and SQLite):
- ``ingest_runs``: one row per run (kind, dates, media, who started it, outcome, counts).
- ``ingest_report_tasks``: the *current* state of each report (media, account, date):
  status, attempts, last error, rows/bytes/sums, GCS paths, timings, and the run that last
  touched it. Resume and ``rerun --failed`` read it.
- ``ingest_task_events``: history — every retry, restart, breaker change, success, failure.
- ``ingest_stage_steps``: stage 2 per (media, date): load/publish/reconcile result.
The driver is the only writer during a run (actors stream events to it).
"""

from __future__ import annotations

import getpass
import itertools
import json
import os
import socket
import uuid
from collections.abc import Iterable
from datetime import UTC, date, datetime
from pathlib import Path
from decimal import Decimal
from typing import Any, NamedTuple

import sqlalchemy as sa
from sqlalchemy import Engine
from sqlalchemy.dialects import postgresql, sqlite

from ingest.errors import IngestError
from ingest.outcomes import PartitionStatus, RunCounts, RunOutcome, TaskStatus
from ingest.storage import ReportPaths
from ingest.tasks import DayResult, Event, ReportKey, Totals


metadata = sa.MetaData()

runs = sa.Table(
    "ingest_runs",
    metadata,
    sa.Column("run_id", sa.String(64), primary_key=True),
    sa.Column("kind", sa.String(16), nullable=False),
    sa.Column("date_from", sa.Date, nullable=False),
    sa.Column("date_to", sa.Date, nullable=False),
    sa.Column("media", sa.Text, nullable=False),
    sa.Column("started_by", sa.String(200), nullable=False),
    sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("finished_at", sa.DateTime(timezone=True)),
    sa.Column("outcome", sa.String(16), nullable=False),
    sa.Column("counts", sa.Text, nullable=False, default="{}"),
    sa.Index("ix_ingest_runs_started", "started_at"),
)

report_tasks = sa.Table(
    "ingest_report_tasks",
    metadata,
    sa.Column("media", sa.String(64), primary_key=True),
    sa.Column("account_id", sa.String(64), primary_key=True),
    sa.Column("date", sa.Date, primary_key=True),
    sa.Column("run_id", sa.String(64), nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("attempts", sa.Integer, nullable=False, default=0),
    sa.Column("error_kind", sa.String(32)),
    sa.Column("error_message", sa.Text),
    sa.Column("rows", sa.Integer),
    sa.Column("bytes", sa.Integer),
    sa.Column("requests", sa.Integer),
    sa.Column("impressions", sa.BigInteger),
    sa.Column("clicks", sa.BigInteger),
    sa.Column("spend", sa.Numeric(20, 6)),
    sa.Column("conversions", sa.Numeric(20, 6)),
    sa.Column("gcs_paths", sa.Text),
    sa.Column("started_at", sa.DateTime(timezone=True)),
    sa.Column("finished_at", sa.DateTime(timezone=True)),
    sa.Column("duration_s", sa.Float),
    # late data (migration 0004): digest of the landed CSV; how often the content changed
    sa.Column("content_hash", sa.String(64)),
    sa.Column("revisions", sa.Integer, nullable=False, server_default="0"),
    sa.Column("last_fetched_at", sa.DateTime(timezone=True)),
    sa.Column("last_changed_at", sa.DateTime(timezone=True)),
    # migration 0005: MD5 of the landed CSV as GCS lists it (base64), so stage 2 need not read it back
    sa.Column("csv_md5", sa.String(24)),
    sa.Index("ix_ingest_tasks_date_media", "date", "media"),
    sa.Index("ix_ingest_tasks_run", "run_id"),
)

task_events = sa.Table(
    "ingest_task_events",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("run_id", sa.String(64), nullable=False),
    sa.Column("media", sa.String(64), nullable=False),
    sa.Column("account_id", sa.String(64)),
    sa.Column("date", sa.Date),
    sa.Column("kind", sa.String(16), nullable=False),
    sa.Column("attempt", sa.Integer),
    sa.Column("error_kind", sa.String(32)),
    sa.Column("message", sa.Text),
    sa.Column("at", sa.DateTime(timezone=True), nullable=False),
    sa.Index("ix_ingest_events_run", "run_id"),
)

stage_steps = sa.Table(
    "ingest_stage_steps",
    metadata,
    sa.Column("media", sa.String(64), primary_key=True),
    sa.Column("date", sa.Date, primary_key=True),
    sa.Column("run_id", sa.String(64), nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("loaded_rows", sa.Integer),
    sa.Column("message", sa.Text),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
)


locks = sa.Table(
    "ingest_locks",
    metadata,
    sa.Column("media", sa.String(64), primary_key=True),
    sa.Column("date", sa.Date, primary_key=True),
    sa.Column("run_id", sa.String(64), nullable=False),
    sa.Column("holder", sa.String(200), nullable=False),
    sa.Column("heartbeat_at", sa.DateTime(timezone=True), nullable=False),
)

#: each account's time zone, as the platform reported it (or the config pinned it): its report
#: dates are local dates there, so "yesterday" is computed per account
account_timezones = sa.Table(
    "ingest_account_timezones",
    metadata,
    sa.Column("media", sa.String(64), primary_key=True),
    sa.Column("account_id", sa.String(64), primary_key=True),
    sa.Column("timezone", sa.String(64), nullable=False),
    sa.Column("source", sa.String(16), nullable=False),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
)

MIGRATIONS = Path(__file__).resolve().parent / "migrations"


#: stage 2 still owes these partitions a publish
_NOT_PUBLISHED = (PartitionStatus.PENDING, PartitionStatus.FAILED)


class Fetched(NamedTuple):
    """What the fetchers landed for some partitions, as the ledger recorded it (``Ledger.fetched``)."""

    #: (media, date) → the sums of its reports' last good fetch
    totals: dict[tuple[str, date], Totals]
    #: CSV object name → (its MD5 as GCS lists it, the sums of its rows)
    csvs: dict[str, tuple[str, Totals]]


class LockedError(IngestError):
    """Another live run holds one of the (media, date) partitions this run needs.

    Not bad input: the CLI maps it to its own exit code (5) by name, not by inheritance —
    nothing was started, try later. ``code`` carries the holding run ids, comma-separated.
    """

    kind = "locked"

    @property
    def holders(self) -> list[str]:
        return (self.code or "").split(",") if self.code else []


#: one report-day's row, by bound parameters: executed many at once, with the columns to set
#: taken from the parameters (every set of one ``executemany`` has the same keys)
_TASK_UPDATE = report_tasks.update().where(
    report_tasks.c.media == sa.bindparam("k_media"), report_tasks.c.account_id == sa.bindparam("k_account"),
    report_tasks.c.date == sa.bindparam("k_date"))


def _where(key: ReportKey) -> dict[str, Any]:
    return {"k_media": key.media, "k_account": key.account, "k_date": key.day}


def _event_row(run_id: str, event: Event, at: datetime) -> dict[str, Any]:
    key = event.key
    return {"run_id": run_id, "media": event.media, "account_id": key.account if key else None,
            "date": key.day if key else None, "kind": event.kind, "attempt": event.attempt,
            "error_kind": event.error_kind, "message": (event.message or "")[:4000] or None, "at": at}


def now() -> datetime:
    return datetime.now(UTC)


def started_by() -> str:
    try:
        user = getpass.getuser()
    except Exception:  # noqa: BLE001 - containers without a passwd entry
        user = str(os.getuid())
    return f"{user}@{socket.gethostname()} pid {os.getpid()}"


def new_run_id(kind: str) -> str:
    return f"{kind}-{now().strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:6]}"


def _upsert(engine: Engine, table: sa.Table, keys: list[str], columns: Iterable[str]) -> sa.Insert:
    """Insert, or on a conflict of ``keys`` set ``columns``: values come with ``execute``, so one
    statement serves a single row or many at once (``executemany``)."""
    ins = (postgresql.insert if engine.dialect.name == "postgresql" else sqlite.insert)(table)
    return ins.on_conflict_do_update(index_elements=keys, set_={c: ins.excluded[c] for c in columns if c not in keys})


class Ledger:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        #: (run, media, date) partitions this process has marked pending for stage 2 in a run
        self._marked_pending: set[tuple[str, str, date]] = set()

    def migrate(self) -> None:
        """Apply Alembic migrations up to head (idempotent; run on every CLI start)."""
        from alembic import command
        from alembic.config import Config

        cfg = Config()
        cfg.set_main_option("script_location", str(MIGRATIONS))
        with self.engine.begin() as conn:
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, "head")

    def schema_behind(self) -> str | None:
        """Why the ledger's schema is not at this code's head (None when it is), without
        changing anything: read-only commands say so instead of migrating."""
        from alembic.config import Config
        from alembic.runtime.migration import MigrationContext
        from alembic.script import ScriptDirectory

        cfg = Config()
        cfg.set_main_option("script_location", str(MIGRATIONS))
        head = ScriptDirectory.from_config(cfg).get_current_head()
        with self.engine.connect() as conn:
            current = MigrationContext.configure(
                conn, opts={"version_table": "ingest_alembic_version"}
            ).get_current_revision()
        if current == head:
            return None
        where = self.engine.url.render_as_string(hide_password=True)
        return (f"the ledger at {where} is at schema {current or 'none (empty database)'}, this version needs {head}: "
                f"run `python -m ingest migrate` (or any run, which migrates first)")

    # -- one run per (media, date) at a time ----------------------------------------------
    def acquire(
        self, run_id: str, partitions: Iterable[tuple[str, date]], *, stale_after_s: float, take_over: bool = False
    ) -> list[str]:
        """Lock every partition for ``run_id`` or none. Return the runs whose stale locks were taken.

        A lock whose heartbeat is older than ``stale_after_s`` (its driver died) — or any lock
        when ``take_over`` — is taken with a conditional UPDATE, so two contenders cannot both win.
        """
        parts = sorted(set(partitions))
        holder = started_by()
        taken: set[str] = set()
        cutoff = now().timestamp() - stale_after_s
        #: run id → (holder, heartbeat age, partitions) of live locks in the way
        held: dict[str, tuple[str, float, list[str]]] = {}
        with self.engine.begin() as conn:  # raising rolls back the locks inserted so far: all or none
            for media, day in parts:
                ins = (postgresql.insert if self.engine.dialect.name == "postgresql" else sqlite.insert)(locks).values(
                    media=media, date=day, run_id=run_id, holder=holder, heartbeat_at=now()
                ).on_conflict_do_nothing().returning(locks.c.run_id)
                if conn.execute(ins).first() is not None:  # rowcount is -1 here on psycopg 3
                    continue
                row = conn.execute(sa.select(locks).where(locks.c.media == media, locks.c.date == day)).mappings().one()
                beat = row["heartbeat_at"]
                beat_ts = (beat if beat.tzinfo else beat.replace(tzinfo=UTC)).timestamp()
                if not take_over and beat_ts >= cutoff:
                    entry = held.setdefault(row["run_id"], (row["holder"], now().timestamp() - beat_ts, []))
                    entry[2].append(f"{media} {day}")
                    continue
                upd = locks.update().where(
                    locks.c.media == media, locks.c.date == day, locks.c.run_id == row["run_id"],
                    locks.c.heartbeat_at == beat,
                ).values(run_id=run_id, holder=holder, heartbeat_at=now())
                if conn.execute(upd.returning(locks.c.run_id)).first() is None:
                    raise LockedError(f"{media} {day}: another run took the lock at the same moment; try again")
                taken.add(row["run_id"])
            if held:
                raise LockedError(
                    "refused: " + "; ".join(
                        f"{', '.join(p)} {'is' if len(p) == 1 else 'are'} held by run {rid} "
                        f"({who}, heartbeat {age:.0f}s ago)"
                        for rid, (who, age, p) in sorted(held.items()))
                    + f". Wait for it to finish, or pass --take-over if that run is dead (its locks go stale "
                      f"{stale_after_s:.0f}s after its last heartbeat).", code=",".join(sorted(held)))
            for old in taken:
                conn.execute(runs.update().where(runs.c.run_id == old, runs.c.outcome == RunOutcome.RUNNING).values(
                    outcome=RunOutcome.ABORTED, finished_at=now()))
        return sorted(taken)

    def heartbeat(self, run_id: str) -> None:
        with self.engine.begin() as conn:
            conn.execute(locks.update().where(locks.c.run_id == run_id).values(heartbeat_at=now()))

    def release(self, run_id: str) -> None:
        with self.engine.begin() as conn:
            conn.execute(locks.delete().where(locks.c.run_id == run_id))

    # -- runs -----------------------------------------------------------------------------
    def open_run(self, kind: str, dates: list[date], media: list[str]) -> str:
        run_id = new_run_id(kind)
        with self.engine.begin() as conn:
            conn.execute(runs.insert().values(
                run_id=run_id, kind=kind, date_from=min(dates), date_to=max(dates), media=",".join(media),
                started_by=started_by(), started_at=now(), outcome=RunOutcome.RUNNING, counts="{}",
            ))
        return run_id

    def close_run(self, run_id: str, outcome: RunOutcome, counts: RunCounts, *, refused: str | None = None) -> None:
        """``refused``: why a run that never started was turned away (kept beside its counts)."""
        doc: dict[str, Any] = dict(counts.to_doc())
        if refused:
            doc["refused"] = refused
        with self.engine.begin() as conn:
            conn.execute(runs.update().where(runs.c.run_id == run_id).values(
                finished_at=now(), outcome=outcome, counts=json.dumps(doc)))

    def run(self, run_id: str) -> dict[str, Any] | None:
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(runs).where(runs.c.run_id == run_id)).mappings().first()
        return dict(row) if row else None

    # -- report tasks ------------------------------------------------------------------------
    def states(self, keys: Iterable[ReportKey]) -> dict[ReportKey, dict[str, Any]]:
        keys = list(keys)
        if not keys:
            return {}
        dates = {k.day for k in keys}
        media = {k.media for k in keys}
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(report_tasks).where(
                report_tasks.c.date.in_(dates), report_tasks.c.media.in_(media))).mappings().all()
        wanted = set(keys)
        out = {}
        for r in rows:
            key = ReportKey(r["media"], r["account_id"], r["date"])
            if key in wanted:
                out[key] = dict(r)
        return out

    def with_landed(self, keys: list[ReportKey]) -> list[ReportKey]:
        """``keys`` carrying the digest of each day the ledger records as done (``ReportKey.landed``).
        Only *done* days: a failed or interrupted fetch may have rewritten some of its objects
        after the digest was recorded. One query for the whole night."""
        if not keys:
            return keys
        t = report_tasks
        days = [d for k in keys for d in k.days()]
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(t.c.media, t.c.account_id, t.c.date, t.c.content_hash).where(
                t.c.media.in_({k.media for k in keys}), t.c.date >= min(days), t.c.date <= max(days),
                t.c.status == TaskStatus.DONE, t.c.content_hash.is_not(None))).all()
        done = {(m, a, d): h for m, a, d, h in rows}
        out = []
        for k in keys:
            landed = tuple(done.get((k.media, k.account, d)) for d in k.days())
            out.append(ReportKey(k.media, k.account, k.day, k.span, landed) if any(landed) else k)
        return out

    def plan(self, run_id: str, keys: list[ReportKey]) -> None:
        """Mark the reports this run will fetch as pending (creating or resetting the row of each
        day they cover; what an earlier fetch landed — sums, digest, revisions — stays)."""
        rows = [{"media": key.media, "account_id": key.account, "date": key.day, "run_id": run_id,
                 "status": TaskStatus.PENDING, "attempts": 0, "error_kind": None, "error_message": None,
                 "started_at": None, "finished_at": None, "duration_s": None}
                for key in (day for k in keys for day in k.day_keys())]
        if not rows:
            return
        with self.engine.begin() as conn:  # one executemany, not a statement per report-day
            conn.execute(_upsert(self.engine, report_tasks, ["media", "account_id", "date"], rows[0]), rows)

    def apply(self, run_id: str, event: Event, *, republish: bool = False) -> None:
        """Record one supervisor event."""
        self.apply_many(run_id, [event], republish=republish)

    def apply_many(self, run_id: str, events: list[Event], *, republish: bool = False) -> None:
        """Record events in order, in one transaction (the driver batches what arrived together).
        ``republish``: a forced re-fetch (an operator's ``rerun``) sends its partitions to stage 2
        even when their content did not change — the operator asked for them to be redone.

        The statements are batched too: all event rows in one ``executemany``, and each run of
        consecutive task updates of one shape in one (in the events' order, so a report's retry
        is written before its outcome): a night's ledger writes cost a few statements per batch
        on the driver, not two or three per event."""
        if not events:
            return
        changed: set[tuple[str, date]] = set()
        at = now()
        updates: list[tuple[str, dict[str, Any]]] = []
        with self.engine.begin() as conn:
            landed = self._landed(conn, events)
            for event in events:
                updates.extend(self._updates(run_id, event, at, changed, landed, republish))
            conn.execute(task_events.insert(), [_event_row(run_id, e, at) for e in events])
            stage = [p for shape, p in updates if shape == "stage"
                     and (run_id, p["media"], p["date"]) not in self._marked_pending]
            for _shape, group in itertools.groupby((u for u in updates if u[0] != "stage"), key=lambda u: u[0]):
                conn.execute(_TASK_UPDATE, [p for _, p in group])
            if stage:
                conn.execute(_upsert(self.engine, stage_steps, ["media", "date"], stage[0]), stage)
        # after COMMIT: a partition this run marked pending stays so until its stage 2 (this run's,
        # after the fetch), so later batches need not write it again
        self._marked_pending.update((run_id, p["media"], p["date"]) for p in stage)

    @staticmethod
    def _landed(conn: sa.Connection, events: list[Event]) -> dict[tuple[str, str, date], tuple[str | None, int]]:
        """(content digest, revisions) of every day the done events of a batch land, read in one
        query rather than one per report (the driver writes a whole night through here)."""
        wanted = {(e.key.media, e.key.account, d.day) for e in events if e.kind == "done" and e.key and e.result
                  for d in (e.result.days or (DayResult(e.key.day, e.result.totals, "", ""),))}
        if not wanted:
            return {}
        t = report_tasks
        rows = conn.execute(sa.select(t.c.media, t.c.account_id, t.c.date, t.c.content_hash, t.c.revisions).where(
            t.c.media.in_({m for m, _, _ in wanted}), t.c.account_id.in_({a for _, a, _ in wanted}),
            t.c.date.in_({d for _, _, d in wanted}))).all()
        return {(m, a, d): (h, r or 0) for m, a, d, h, r in rows if (m, a, d) in wanted}

    def _updates(self, run_id: str, event: Event, at: datetime, changed: set[tuple[str, date]],
                 landed: dict[tuple[str, str, date], tuple[str | None, int]],
                 republish: bool = False) -> list[tuple[str, dict[str, Any]]]:
        """The single place a task's status changes: the row updates one event makes, as
        (shape, parameters) — the same shape means the same columns, one ``executemany``.
        ``changed``: partitions already marked pending for stage 2 in this batch."""
        key = event.key
        if key is None or event.kind not in ("done", "failed", "retry"):
            return []
        if event.kind == "retry":
            return [("retry", {**_where(k), "status": TaskStatus.RETRYING, "attempts": event.attempt,
                               "error_kind": event.error_kind, "error_message": event.message}) for k in key.day_keys()]
        if event.kind == "failed" or event.result is None:
            return [("failed", {**_where(k), "status": TaskStatus(event.kind), "attempts": event.attempt,
                                "finished_at": at, "error_kind": event.error_kind,
                                "error_message": (event.message or "")[:4000]})
                    for k in key.day_keys()]
        r = event.result
        out: list[tuple[str, dict[str, Any]]] = []
        days = r.days or (DayResult(key.day, r.totals, "", ""),)  # results without days: older callers
        for i, d in enumerate(days):
            share = _Share(_part(r.requests, i, len(days)), _part(r.bytes, i, len(days)), r.elapsed_s / len(days))
            out.extend(self._land_day(run_id, ReportKey(key.media, key.account, d.day), d, share, r.paths,
                                      event.attempt, at, changed, landed, republish))
        return out

    def _land_day(self, run_id: str, key: ReportKey, d: DayResult, share: _Share, paths: tuple[str, ...], attempt: int,
                  at: datetime, changed: set[tuple[str, date]],
                  landed: dict[tuple[str, str, date], tuple[str | None, int]],
                  republish: bool = False) -> list[tuple[str, dict[str, Any]]]:
        """One day of a done report: its sums, and whether its content changed since it was last
        landed (``landed``: what the batch read before). Only a changed day (or a first one)
        sends its partition to stage 2 again."""
        ref = (key.media, key.account, key.day)
        old_hash, revisions = landed.get(ref, (None, 0))
        differs = not d.digest or d.digest != old_hash
        row = {**_where(key), "status": TaskStatus.DONE, "attempts": attempt, "finished_at": at, "error_kind": None,
               "error_message": None, "rows": d.totals.rows, "bytes": share.bytes, "requests": share.requests,
               "impressions": d.totals.impressions, "clicks": d.totals.clicks, "spend": d.totals.spend,
               "conversions": d.totals.conversions,
               "gcs_paths": json.dumps([paths[0], d.csv_path] if d.csv_path else list(paths)),
               "duration_s": share.seconds, "content_hash": d.digest or None, "csv_md5": d.md5 or None,
               "last_fetched_at": at}
        if differs:
            row.update(revisions=revisions + 1, last_changed_at=at)
        landed[ref] = (d.digest or None, row.get("revisions", revisions))  # the same day again in this batch
        out = [("done_changed" if differs else "done_same", row)]
        if (differs or republish) and (key.media, key.day) not in changed:
            # the partition changed: stage 2 must (re)load it, even if this driver dies now
            changed.add((key.media, key.day))
            out.append(("stage", {"media": key.media, "date": key.day, "run_id": run_id,
                                  "status": PartitionStatus.PENDING, "loaded_rows": None,
                                  "message": "new reports fetched", "updated_at": at}))
        return out

    def mark_running(self, run_id: str, media: str) -> None:
        """The run's planned reports of ``media`` are now with its supervisor (one statement)."""
        with self.engine.begin() as conn:
            conn.execute(report_tasks.update().where(
                report_tasks.c.run_id == run_id, report_tasks.c.media == media,
                report_tasks.c.status == TaskStatus.PENDING,
            ).values(status=TaskStatus.RUNNING, started_at=now()))

    def fetched(self, partitions: Iterable[tuple[str, date]]) -> Fetched:
        """Per (media, date), the sums of each report's last *good* fetch: what reconciliation
        expects; and per CSV object, the MD5 and sums of the bytes that fetch landed.

        A report whose re-fetch failed keeps its earlier CSV in GCS (and its totals here), so
        it still counts; a report that never succeeded has no CSV and no totals. A failed
        re-fetch that rewrote the object anyway leaves it with another MD5: stage 2 reads it.
        """
        out = Fetched({}, {})
        parts = set(partitions)
        if not parts:
            return out
        t = report_tasks
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(
                t.c.media, t.c.account_id, t.c.date, t.c.rows, t.c.impressions, t.c.clicks, t.c.spend,
                t.c.conversions, t.c.csv_md5,
            ).where(t.c.rows.is_not(None), t.c.date.in_({d for _, d in parts}))).all()
        for media, account, day, n, imps, clicks, spend, conv, md5 in rows:
            p = (media, day)
            if p in parts:
                tot = Totals(n or 0, imps or 0, clicks or 0, Decimal(spend or 0), Decimal(conv or 0))
                out.totals[p] = out.totals.get(p, Totals()) + tot
                if md5:
                    out.csvs[ReportPaths("", media, account, day).day_csv(day)] = (md5, tot)
        return out

    def task_rows(self, *, dates: Iterable[date] | None = None, run_id: str | None = None) -> list[dict[str, Any]]:
        q = sa.select(report_tasks)
        if dates is not None:
            q = q.where(report_tasks.c.date.in_(set(dates)))
        if run_id is not None:
            q = q.where(report_tasks.c.run_id == run_id)
        with self.engine.connect() as conn:
            return [dict(r) for r in conn.execute(
                q.order_by(report_tasks.c.date, report_tasks.c.media, report_tasks.c.account_id)
            ).mappings()]

    def unfinished(self, media: Iterable[str], day: date | None = None) -> tuple[set[ReportKey], set[tuple[str, date]]]:
        """What ``rerun --failed`` re-does: reports not done (failed, or left pending/running by a
        dead run) and stage-2 partitions still pending or failed, for these media (and date)."""
        media = set(media)
        t, s = report_tasks, stage_steps
        q = sa.select(t.c.media, t.c.account_id, t.c.date).where(t.c.status != TaskStatus.DONE, t.c.media.in_(media))
        qs = sa.select(s.c.media, s.c.date).where(s.c.status.in_(_NOT_PUBLISHED), s.c.media.in_(media))
        if day is not None:
            q, qs = q.where(t.c.date == day), qs.where(s.c.date == day)
        with self.engine.connect() as conn:
            keys = {ReportKey(m, a, d) for m, a, d in conn.execute(q)}
            parts = {(m, d) for m, d in conn.execute(qs)}
        return keys, parts

    def runs_for(self, day: date, limit: int = 20) -> list[dict[str, Any]]:
        """Runs whose date range covers ``day``, newest first."""
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(runs).where(runs.c.date_from <= day, runs.c.date_to >= day)
                                .order_by(runs.c.started_at.desc()).limit(limit)).mappings().all()
        return [dict(r) for r in rows]

    def locks(self, dates: Iterable[date] | None = None) -> list[dict[str, Any]]:
        q = sa.select(locks)
        if dates is not None:
            q = q.where(locks.c.date.in_(set(dates)))
        with self.engine.connect() as conn:
            return [dict(r) for r in conn.execute(q.order_by(locks.c.date, locks.c.media)).mappings()]

    def events(self, run_id: str) -> list[dict[str, Any]]:
        with self.engine.connect() as conn:
            return [dict(r) for r in conn.execute(
                sa.select(task_events).where(task_events.c.run_id == run_id).order_by(task_events.c.id)
            ).mappings()]

    # -- stage 2 ---------------------------------------------------------------------------
    def record_stage(
        self, run_id: str, media: str, day: date, status: PartitionStatus, loaded_rows: int | None,
        message: str | None,
    ) -> None:
        row = {"media": media, "date": day, "run_id": run_id, "status": status, "loaded_rows": loaded_rows,
               "message": message, "updated_at": now()}
        with self.engine.begin() as conn:
            conn.execute(_upsert(self.engine, stage_steps, ["media", "date"], row), row)

    def pending_partitions(self, media: Iterable[str], dates: Iterable[date]) -> list[tuple[str, date]]:
        """(media, date) partitions whose reports changed since their last successful stage 2."""
        media, dates = set(media), set(dates)
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(stage_steps.c.media, stage_steps.c.date).where(
                stage_steps.c.status.in_(_NOT_PUBLISHED), stage_steps.c.media.in_(media),
                stage_steps.c.date.in_(dates))).all()
        return sorted((r[0], r[1]) for r in rows)

    def timezones(self) -> dict[tuple[str, str], str]:
        """(media, account) → IANA time zone remembered from the platform."""
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(account_timezones.c.media, account_timezones.c.account_id,
                                          account_timezones.c.timezone)).all()
        return {(m, a): tz for m, a, tz in rows}

    def remember_timezones(self, found: dict[tuple[str, str], str], source: str = "api") -> None:
        if not found:
            return
        with self.engine.begin() as conn:
            for (media, account), tz in found.items():
                key = (account_timezones.c.media == media) & (account_timezones.c.account_id == account)
                conn.execute(sa.delete(account_timezones).where(key))
                conn.execute(sa.insert(account_timezones).values(media=media, account_id=account, timezone=tz,
                                                                 source=source, updated_at=now()))

    def stage_rows(self, dates: Iterable[date]) -> list[dict[str, Any]]:
        with self.engine.connect() as conn:
            return [dict(r) for r in conn.execute(
                sa.select(stage_steps).where(stage_steps.c.date.in_(set(dates)))
            ).mappings()]


class _Share(NamedTuple):
    """A day's part of its report's requests, bytes and fetch time. A range report's figures are
    spread over its days so that sums per date, per run and in the UI stay the report's own
    (recording the whole report on each day counted a 30-day range 30 times)."""

    requests: int
    bytes: int
    seconds: float


def _part(total: int, i: int, n: int) -> int:
    """Day ``i`` of ``n``'s integer share of ``total``; the shares add up to ``total``."""
    return total // n + (1 if i < total % n else 0)
