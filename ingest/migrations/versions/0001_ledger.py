"""The ledger: runs, report tasks, their events, stage-2 steps and partition locks.

Revision ID: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None

TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "ingest_runs",
        sa.Column("run_id", sa.String(64), primary_key=True),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("date_from", sa.Date, nullable=False),
        sa.Column("date_to", sa.Date, nullable=False),
        sa.Column("media", sa.Text, nullable=False),
        sa.Column("started_by", sa.String(200), nullable=False),
        sa.Column("started_at", TS, nullable=False),
        sa.Column("finished_at", TS),
        sa.Column("outcome", sa.String(16), nullable=False),
        sa.Column("counts", sa.Text, nullable=False),
    )
    op.create_index("ix_ingest_runs_started", "ingest_runs", ["started_at"])
    op.create_table(
        "ingest_report_tasks",
        sa.Column("media", sa.String(64), primary_key=True),
        sa.Column("account_id", sa.String(64), primary_key=True),
        sa.Column("date", sa.Date, primary_key=True),
        sa.Column("run_id", sa.String(64), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False),
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
        sa.Column("started_at", TS),
        sa.Column("finished_at", TS),
        sa.Column("duration_s", sa.Float),
    )
    op.create_index("ix_ingest_tasks_date_media", "ingest_report_tasks", ["date", "media"])
    op.create_index("ix_ingest_tasks_run", "ingest_report_tasks", ["run_id"])
    op.create_index("ix_ingest_tasks_status", "ingest_report_tasks", ["status"])
    op.create_table(
        "ingest_task_events",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("run_id", sa.String(64), nullable=False),
        sa.Column("media", sa.String(64), nullable=False),
        sa.Column("account_id", sa.String(64)),
        sa.Column("date", sa.Date),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("attempt", sa.Integer),
        sa.Column("error_kind", sa.String(32)),
        sa.Column("message", sa.Text),
        sa.Column("at", TS, nullable=False),
    )
    op.create_index("ix_ingest_events_run", "ingest_task_events", ["run_id"])
    op.create_table(
        "ingest_stage_steps",
        sa.Column("media", sa.String(64), primary_key=True),
        sa.Column("date", sa.Date, primary_key=True),
        sa.Column("run_id", sa.String(64), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("loaded_rows", sa.Integer),
        sa.Column("message", sa.Text),
        sa.Column("updated_at", TS, nullable=False),
    )
    op.create_table(
        "ingest_locks",
        sa.Column("media", sa.String(64), primary_key=True),
        sa.Column("date", sa.Date, primary_key=True),
        sa.Column("run_id", sa.String(64), nullable=False),
        sa.Column("holder", sa.String(200), nullable=False),
        sa.Column("heartbeat_at", TS, nullable=False),
    )


def downgrade() -> None:
    for table in ("ingest_locks", "ingest_stage_steps", "ingest_task_events", "ingest_report_tasks", "ingest_runs"):
        op.drop_table(table)
