"""``ingest doctor``: is this setup ready for tonight? (the equivalent of ``dbt debug``).

Every check runs, each bounded in time, and none changes anything: config (already loaded
and validated by the CLI), API versions against their sunset, credentials (present; a token
refresh where refresh credentials are set), reachability of every media endpoint, the GCS
bucket, the BigQuery dataset, the RDB and the ledger's migration state. One line per check,
PASS/WARN/FAIL with the reason and the fix; exit 0 when nothing failed, 3 otherwise.

``plan_night`` is ``run --dry-run``: what tonight would fetch — reports, dates, requests and
the duration the quotas allow — from the config and the ledger alone, no API call;
``plan_backfill`` is the same for ``backfill --dry-run``.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from datetime import date
from typing import Any, Literal

import httpx

from ingest.config import PipelineConfig
from ingest.errors import IngestError, redact

Status = Literal["PASS", "WARN", "FAIL"]
TIMEOUT_S = 5.0


@dataclass(frozen=True, slots=True)
class Check:
    name: str
    status: Status
    detail: str


def _run(name: str, fn: Callable[[], tuple[Status, str]]) -> Check:
    try:
        status, detail = fn()
    except Exception as exc:  # noqa: BLE001 - a check that breaks is a failed check, with its reason
        status, detail = "FAIL", f"{type(exc).__name__}: {exc}"
    return Check(name, status, redact(detail)[:400])


def run_checks(cfg: PipelineConfig, environ: dict[str, str], source: str = "config") -> list[Check]:
    checks = [Check("config", "PASS", f"{source}: valid; {len(cfg.media)} media, "
                                      f"{sum(len(m.accounts) for m in cfg.media.values())} accounts")]
    for media, settings in cfg.media.items():
        checks.append(_run(f"{media}: api version", partial(_version, cfg, media)))
        checks.append(_run(f"{media}: credentials", partial(_credentials, cfg, media, environ)))
        checks.append(_run(f"{media}: endpoint", partial(_reachable, settings.base_url)))
    checks.append(_run("gcs bucket", lambda: _bucket(cfg)))
    checks.append(_run("bigquery dataset", lambda: _dataset(cfg)))
    checks.append(_run("database", lambda: _database(cfg)))
    return checks


def _version(cfg: PipelineConfig, media: str) -> tuple[Status, str]:
    from ingest.media.registry import connector_class
    from ingest.media.versions import check_version

    settings = cfg.media[media]
    cls = connector_class(settings.connector)
    check = check_version(cls.versions, settings.api_version or cls.default_version, cfg.today(), cls.platform)
    if check.error:
        return "FAIL", check.error
    if check.warning:
        return "WARN", check.warning
    sunset = next((v.sunset for v in cls.versions if v.name == check.version), None)
    return "PASS", f"{check.version}" + (f" (sunset {sunset.isoformat()})" if sunset else " (no sunset announced)")


def _credentials(cfg: PipelineConfig, media: str, environ: dict[str, str]) -> tuple[Status, str]:
    from ingest.media.base import Secret
    from ingest.media.registry import connector_class
    from ingest.media.tokens import token_cache_for

    settings = cfg.media[media]
    missing = [var for var in settings.credentials.values() if not environ.get(var)]
    if missing:
        return "FAIL", f"not set: {', '.join('$' + v for v in missing)} (export them in the job's environment)"
    secrets = {name: Secret(environ[var]) for name, var in settings.credentials.items()}
    cls = connector_class(settings.connector)
    cache = token_cache_for(media, settings.token_url or cls.token_url, cls.token_style, secrets)
    if cache is None:
        return "PASS", f"{len(secrets)} set (static token: checked by the first request)"

    async def refresh() -> str:
        try:
            token = await asyncio.wait_for(cache.get(), TIMEOUT_S * 2)
            return (f"token refreshed at {settings.token_url or cls.token_url}, "
                    f"valid {max(0, int(token.expires_at - time.time()))} s")
        finally:
            await cache.close()

    try:
        return "PASS", asyncio.run(refresh())
    except IngestError as exc:
        return "FAIL", f"token refresh refused: {exc.message} (check the refresh token and client id/secret)"
    except TimeoutError:
        return "FAIL", f"token endpoint did not answer within {TIMEOUT_S * 2:.0f} s"


def _reachable(url: str) -> tuple[Status, str]:
    try:
        response = httpx.get(url, timeout=TIMEOUT_S, follow_redirects=False)
    except httpx.HTTPError as exc:
        return "FAIL", f"{url} unreachable: {type(exc).__name__} (check base_url, DNS, egress firewall)"
    return "PASS", f"{url} answered HTTP {response.status_code}"


def _bucket(cfg: PipelineConfig) -> tuple[Status, str]:
    from ingest.clients import gcs_client

    client = gcs_client(cfg.gcs, cfg.project)
    bucket = client.lookup_bucket(cfg.gcs.bucket, timeout=TIMEOUT_S, retry=None)  # one bounded try: a check, not a run
    if bucket is None:
        return ("WARN" if cfg.gcs.endpoint else "FAIL"), (
            f"gs://{cfg.gcs.bucket} does not exist: create it (gcloud storage buckets create gs://{cfg.gcs.bucket}) "
            f"or fix gcs.bucket" + (" — the local stack creates it on the first run" if cfg.gcs.endpoint else ""))
    return "PASS", f"gs://{cfg.gcs.bucket} exists"


def _dataset(cfg: PipelineConfig) -> tuple[Status, str]:
    from google.api_core import exceptions as gexc
    from google.cloud.bigquery import DEFAULT_RETRY

    from ingest.clients import bq_client

    client = bq_client(cfg.bigquery)
    ref = f"{cfg.bigquery.project}.{cfg.bigquery.dataset}"
    try:
        client.get_dataset(ref, timeout=TIMEOUT_S, retry=DEFAULT_RETRY.with_timeout(TIMEOUT_S))
    except gexc.NotFound:
        return "WARN", f"{ref} does not exist yet: the first run creates it (needs bigquery.datasets.create)"
    finally:
        client.close()
    return "PASS", f"{ref} exists"


def _database(cfg: PipelineConfig) -> tuple[Status, str]:
    import sqlalchemy as sa

    from ingest.clients import rdb_engine
    from ingest.ledger import Ledger

    engine = rdb_engine(cfg.database_url())
    where = engine.url.render_as_string(hide_password=True)
    with engine.connect() as conn:
        conn.execute(sa.text("SELECT 1"))
    behind = Ledger(engine).schema_behind()
    if behind:
        return "WARN", behind
    return "PASS", f"{where} reachable, ledger schema current"


def print_checks(checks: list[Check]) -> None:
    width = max(len(c.name) for c in checks)
    for c in checks:
        print(f"{c.status:<4}  {c.name:<{width}}  {c.detail}")
    failed = sum(c.status == "FAIL" for c in checks)
    warned = sum(c.status == "WARN" for c in checks)
    print(f"{len(checks)} checks: {failed} failed, {warned} warnings"
          + (" — fix the FAIL lines before tonight" if failed else ""))


# -- run --dry-run, backfill --dry-run ----------------------------------------------------------
@dataclass(frozen=True, slots=True)
class MediaPlan:
    media: str
    accounts: int
    reports: int
    #: reports over several days: the nightly's refetch windows, a backfill's ranges
    ranges: int
    dates: int
    requests: int
    quota_rps: float
    seconds_at_quota: float


def plan_night(cfg: PipelineConfig, *, day: date | None, lookback: bool) -> tuple[list[MediaPlan], list[date]]:
    """What ``run`` would fetch tonight, from the config and the ledger (no API call): each
    account's yesterday in its known zone (or ``day``), then its refetch window as ranges."""
    from ingest.freshness import account_zones
    from ingest.job import RunRequest, plan_keys
    from ingest.timezones import local_yesterday

    media = cfg.media_names()
    if day is None:
        ledger = _ledger(cfg)
        zones = account_zones(cfg, ledger) if ledger.schema_behind() is None else {
            (m, a.id): a.timezone or cfg.timezone for m, s in cfg.media.items() for a in s.accounts}
        days = {ref: local_yesterday(tz) for ref, tz in zones.items()}
        req = RunRequest("run", sorted(set(days.values())), media, account_days=days, lookback=lookback)
    else:
        req = RunRequest("run", [day], media, lookback=lookback)
    return _media_plans(cfg, media, plan_keys(cfg, req))


def plan_backfill(cfg: PipelineConfig, dates: list[date], media: list[str], *,
                  force: bool) -> tuple[list[MediaPlan], list[date]]:
    """What ``backfill`` would fetch: the days not done yet (per the ledger, read only; all of
    them with ``force``), as the range reports the run would make of them."""
    from ingest.job import RunRequest, plan_keys, to_fetch

    req = RunRequest("backfill", dates, media, force=force, ranges=True)
    keys = plan_keys(cfg, req)
    ledger = _ledger(cfg)
    states = ledger.states(keys) if not force and ledger.schema_behind() is None else {}
    return _media_plans(cfg, media, to_fetch(req, keys, states)[0])


def _ledger(cfg: PipelineConfig) -> Any:
    from ingest.clients import rdb_engine
    from ingest.ledger import Ledger

    return Ledger(rdb_engine(cfg.database_url()))


def _media_plans(cfg: PipelineConfig, media: list[str], keys: list[Any]) -> tuple[list[MediaPlan], list[date]]:
    from ingest.media.base import Secret
    from ingest.supervision.fetcher import build_connector

    out = []
    for m in media:
        settings = cfg.media[m]
        mine = [k for k in keys if k.media == m]
        per_report = build_connector(
            m, settings, {k: Secret("dry-run") for k in settings.credentials}
        ).minimum_requests()
        requests = per_report * len(mine)
        rps = settings.quota.requests_per_second
        out.append(MediaPlan(m, len(settings.accounts), len(mine), sum(k.span > 1 for k in mine),
                             len({d for k in mine for d in k.days()}), requests, rps, requests / rps))
    return out, sorted({d for k in keys for d in k.days()})


def print_plan(plans: list[MediaPlan], dates: list[date]) -> None:
    span = f"{dates[0]}..{dates[-1]}" if dates else "-"
    print(f"dry run: nothing fetched, nothing written. Dates touched: {span} ({len(dates)})")
    print(f"{'media':<12} {'accounts':>8} {'reports':>8} {'ranges':>7} {'dates':>6} {'requests':>9} "
          f"{'quota/s':>8} {'at quota':>9}")
    for p in plans:
        print(f"{p.media:<12} {p.accounts:>8} {p.reports:>8} {p.ranges:>7} {p.dates:>6} {p.requests:>9} "
              f"{p.quota_rps:>8.1f} {math.ceil(p.seconds_at_quota):>8}s")
    longest = max((p.seconds_at_quota for p in plans), default=0.0)
    print(f"expected fetch time ≈ {math.ceil(longest)} s at quota (media run in parallel; the fewest requests each "
          f"report needs, without faults or pagination beyond one page)")


def as_json(checks: list[Check]) -> list[dict[str, Any]]:
    return [{"check": c.name, "status": c.status, "detail": c.detail} for c in checks]
