"""Alembic environment for the ledger. Run by ``Ledger.migrate()`` on every CLI start, with
the pipeline's own engine, so operators never run migrations by hand."""

from __future__ import annotations

from alembic import context

connection = context.config.attributes["connection"]
context.configure(connection=connection, version_table="ingest_alembic_version", render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
