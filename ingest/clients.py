"""Construct the real cloud/RDB clients from config: the only place endpoints differ.

In production ``endpoint`` is unset and the clients use Application Default Credentials;
locally ``endpoint`` points at the emulators and anonymous credentials are used. Nothing
else in the pipeline knows which one it is talking to.
"""

from __future__ import annotations

import os
from functools import lru_cache

from google.api_core.client_options import ClientOptions
from google.auth.credentials import AnonymousCredentials
from google.cloud import bigquery, storage  # type: ignore[attr-defined]  # namespace package
from sqlalchemy import Engine, create_engine, event

from ingest.config import BigQuerySettings, GcsSettings


def gcs_client(settings: GcsSettings, project: str) -> storage.Client:
    if settings.endpoint:
        # google-cloud-storage reads the emulator address from the environment only.
        os.environ["STORAGE_EMULATOR_HOST"] = settings.endpoint
        return storage.Client(project=project, credentials=AnonymousCredentials())
    return storage.Client(project=project)


def bq_client(settings: BigQuerySettings) -> bigquery.Client:
    if settings.endpoint:
        return bigquery.Client(
            project=settings.project,
            credentials=AnonymousCredentials(),
            client_options=ClientOptions(api_endpoint=settings.endpoint),
            location=settings.location,
        )
    return bigquery.Client(project=settings.project, location=settings.location)


@lru_cache(maxsize=8)
def rdb_engine(url: str) -> Engine:
    """One engine per URL per process. SQLite gets WAL + a busy timeout for concurrent readers."""
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url[len("postgresql://"):]
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"timeout": 30})

        @event.listens_for(engine, "connect")
        def _pragmas(dbapi_conn, _record):  # type: ignore[no-untyped-def]
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.close()

        return engine
    return create_engine(url, pool_pre_ping=True)
