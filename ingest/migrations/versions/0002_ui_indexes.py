"""Indexes for the run-history page (``python -m ingest ui``) and its aggregated queries.

- events by (run_id, media, date, kind): a run's grid counts retries/failures per cell, the
  30-night chart groups the last runs' events by media, a cell's detail lists its events —
  all without scanning other runs' events;
- events by (media, date, account_id): one report's history across runs;
- report tasks by (media, date, status): a cell's accounts, failed first, paged.

Revision ID: 0002
"""

from __future__ import annotations

from alembic import op

revision = "0002"
down_revision = "0001"


def upgrade() -> None:
    op.create_index("ix_ingest_events_run_cell", "ingest_task_events", ["run_id", "media", "date", "kind"],
                    if_not_exists=True)
    op.create_index("ix_ingest_events_report", "ingest_task_events", ["media", "date", "account_id"],
                    if_not_exists=True)
    op.create_index("ix_ingest_tasks_media_date_status", "ingest_report_tasks", ["media", "date", "status"],
                    if_not_exists=True)


def downgrade() -> None:
    op.drop_index("ix_ingest_tasks_media_date_status", "ingest_report_tasks")
    op.drop_index("ix_ingest_events_report", "ingest_task_events")
    op.drop_index("ix_ingest_events_run_cell", "ingest_task_events")
