"""What an operator reads when a resource the run needs is unreachable, missing or refused.

The CLI's last line of defence (``ingest.cli.run_cli``): an exception of a client library —
SQLAlchemy, google-cloud, a socket — becomes ONE line naming the resource and the fix, never
a traceback, and the run exits with the documented code for "nothing could run" (4). Errors
that are ours (``ingest.errors``) never get here: they are handled where they happen.
"""

from __future__ import annotations

import errno


def _first_line(exc: BaseException, limit: int = 200) -> str:
    text = str(getattr(exc, "orig", None) or exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:limit]


def explain(exc: BaseException, *, database: str | None = None, bucket: str | None = None,
            dataset: str | None = None) -> str | None:
    """One line for a known infrastructure failure; None for anything else (a real bug)."""
    import sqlalchemy as sa
    from google.api_core import exceptions as gexc
    from google.auth import exceptions as auth_exc

    chain: list[BaseException] = []
    seen: BaseException | None = exc
    while seen is not None and len(chain) < 5:  # the cause may sit under a later failure (e.g. while aborting)
        chain.append(seen)
        seen = seen.__cause__ or seen.__context__
    for e in chain:
        if isinstance(e, (sa.exc.OperationalError, sa.exc.InterfaceError)):
            return (f"database {database or '(database.url)'} unreachable: {_first_line(e)} — check database.url or "
                    f"$DATABASE_URL and that the server accepts connections; nothing was fetched")
        if isinstance(e, auth_exc.DefaultCredentialsError):
            return ("no Google credentials for GCS/BigQuery: run on GCP with a service account, or set "
                    "GOOGLE_APPLICATION_CREDENTIALS (gcloud auth application-default login on a laptop)")
        if isinstance(e, gexc.Forbidden):
            return (f"Google Cloud refused access ({_first_line(e)}) — grant the job's service account "
                    f"roles on gs://{bucket} (storage.objectAdmin) and {dataset} "
                    f"(bigquery.dataEditor, bigquery.jobUser)")
        if isinstance(e, gexc.NotFound):
            return f"not found: {_first_line(e)} — create it, or fix gcs.bucket / bigquery.dataset in the config"
        if isinstance(e, OSError) and e.errno == errno.EADDRINUSE:
            return f"address already in use ({_first_line(e)}) — stop what listens there or choose another --port"
        if type(e).__module__.startswith(("requests", "urllib3")) and "Connection" in type(e).__name__:
            return (f"cannot reach Google Cloud storage/BigQuery ({type(e).__name__}: {_first_line(e, 160)}) — check "
                    f"gcs.endpoint / bigquery.endpoint (local: python -m sandbox up) or the network")
    return None
