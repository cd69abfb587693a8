"""Each landed day keeps the MD5 of its CSV's bytes, in the form GCS lists it (``md5Hash``,
base64): stage 2 counts a listed object whose MD5 matches from the ledger's totals of the same
bytes instead of downloading it again. Rows landed before this migration have none and are read.

Revision ID: 0005
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"


def upgrade() -> None:
    with op.batch_alter_table("ingest_report_tasks") as batch:  # batch: SQLite cannot ALTER freely
        batch.add_column(sa.Column("csv_md5", sa.String(24)))


def downgrade() -> None:
    with op.batch_alter_table("ingest_report_tasks") as batch:
        batch.drop_column("csv_md5")
