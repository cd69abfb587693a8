"""Construct the real cloud/RDB clients from config: the only place endpoints differ.

In production ``endpoint`` is unset and the clients use Application Default Credentials;
locally ``endpoint`` points at the emulators and anonymous credentials are used. Nothing
else in the pipeline knows which one it is talking to.
"""

from __future__ import annotations

import os
from functools import lru_cache
from typing import TYPE_CHECKING

import requests
from google.auth.credentials import AnonymousCredentials
from google.cloud import storage  # type: ignore[attr-defined]  # namespace package

from ingest.config import BigQuerySettings, GcsSettings

if TYPE_CHECKING:  # imported where used: the fetcher and supervisor processes never need them (≈0.7 s each)
    from google.cloud import bigquery
    from sqlalchemy import Engine


def gcs_client(settings: GcsSettings, project: str) -> storage.Client:
    if settings.endpoint:
        # google-cloud-storage reads the emulator address from the environment only.
        os.environ["STORAGE_EMULATOR_HOST"] = settings.endpoint
        client = storage.Client(project=project, credentials=AnonymousCredentials())
    else:
        client = storage.Client(project=project)
    _environment_read_once(client._http, settings.endpoint or "https://storage.googleapis.com")
    return client


def _environment_read_once(session: requests.Session, url: str) -> None:
    """``requests`` re-reads proxies, ``.netrc`` and CA bundles from the environment on *every*
    request (two passes over ``os.environ``, which is long in a Ray worker, and a few stat()
    calls): a quarter of the CPU of one GCS upload, and a fetcher uploads 2+ objects per report.
    The client talks to one host, so read them once here, for that host; same behaviour."""
    session.proxies.update(requests.utils.get_environ_proxies(url))
    bundle = os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE")
    if bundle and url.startswith("https://"):  # a bundle path costs a stat() per request; plain http never uses it
        session.verify = bundle
    session.trust_env = False


def bq_client(settings: BigQuerySettings) -> bigquery.Client:
    from google.api_core.client_options import ClientOptions
    from google.cloud import bigquery

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
    from sqlalchemy import create_engine, event

    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url[len("postgresql://"):]
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"timeout": 30})

        @event.listens_for(engine, "connect")
        def _pragmas(dbapi_conn, _record):  # type: ignore[no-untyped-def]
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            # WAL + NORMAL: no fsync per commit (the driver commits a batch of events at a time);
            # a power loss may drop the last commits, never corrupt. The ledger survives that by
            # design (a report not recorded as done is fetched again; landing is idempotent).
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.close()

        return engine
    return create_engine(url, pool_pre_ping=True)
