"""Late data: each (media, account, date) keeps the digest of its last landed rows, how often
its content changed (revisions), when it was last fetched and when it last changed. A refetch
with the same digest is not republished.

Revision ID: 0004
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"

COLUMNS = (
    sa.Column("content_hash", sa.String(64)),
    sa.Column("revisions", sa.Integer, nullable=False, server_default="0"),
    sa.Column("last_fetched_at", sa.DateTime(timezone=True)),
    sa.Column("last_changed_at", sa.DateTime(timezone=True)),
)


def upgrade() -> None:
    with op.batch_alter_table("ingest_report_tasks") as batch:  # batch: SQLite cannot ALTER freely
        for column in COLUMNS:
            batch.add_column(column.copy())


def downgrade() -> None:
    with op.batch_alter_table("ingest_report_tasks") as batch:
        for column in COLUMNS:
            batch.drop_column(column.name)
