"""``python -m ingest`` (also the ``ingest`` console script): the operator's commands.

Exit codes: 0 success · 2 bad input (config, arguments; nothing was started) ·
3 partial failure (some reports or partitions failed; the rest landed) · 4 total failure ·
5 refused: another live run holds a (media, date) this run needs (nothing was started).
``status`` exits 3 when anything it shows is failed, else 0.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from datetime import date, timedelta
from collections.abc import Callable
from typing import Any

from ingest.config import PipelineConfig, check_account, load_config
from ingest.errors import ConfigError, redact
from ingest.job import EXIT_FAILED, EXIT_LOCKED, EXIT_SUCCESS, EXIT_USAGE, NightlyJob, RunReport, RunRequest
from ingest.ledger import LockedError
from ingest.logging import configure_logging
from ingest.outcomes import PartitionStatus


class UsageError(ConfigError):
    pass


EPILOG = ("Exit codes: 0 success, 2 bad input (nothing started), 3 partial failure, 4 total failure (also: a "
          "database, bucket or dataset the run needs is unreachable or refused: one line names it), "
          "5 refused because another live run holds the same media and date (nothing started).")


class Parser(argparse.ArgumentParser):
    """Bad arguments: one line naming the problem, exit code 2 (no usage dump)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("allow_abbrev", False)  # flags are spelled out: `--dry` is not `--dry-run`
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(EXIT_USAGE, f"error: {self.prog}: {message} (see: {self.prog} --help)\n")


def parse_date(value: str) -> date:
    try:
        if not re.fullmatch(r"\d{4}-\d{2}-\d{2}", value):  # one spelling only (fromisoformat also takes 20261120)
            raise ValueError(value)
        return date.fromisoformat(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a date (YYYY-MM-DD): {value!r}") from None


def build_parser() -> argparse.ArgumentParser:
    p = Parser(
        prog="ingest",
        description="Fetch ad-platform reports into GCS, load and aggregate them in BigQuery, publish to the RDB.",
        epilog=EPILOG,
    )
    p.add_argument("--config", default=None, help="config YAML (default: $INGEST_CONFIG or config/local.yaml)")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    common = Parser(add_help=False)  # so --config also works after the command
    common.add_argument("--config", default=argparse.SUPPRESS, help="config YAML")

    run = sub.add_parser("run", parents=[common], epilog=EPILOG,
                         help="the nightly job: every media and account for one date",
                         description="Fetch every configured media and account for one date (default: yesterday in "
                                     "the configured time zone), then load, aggregate and publish. Reports already "
                                     "done for that date are skipped, so running it again after a crash resumes.")
    run.add_argument("--date", type=parse_date, help="report date YYYY-MM-DD (default: yesterday)")
    run.add_argument("--force", action="store_true",
                     help="re-fetch reports already done (idempotent: nothing duplicates)")
    run.add_argument("--json", action="store_true", help="print the run summary as JSON")
    run.add_argument("--take-over", action="store_true", help="take partition locks held by a run you know is dead")
    run.add_argument("--dry-run", action="store_true",
                     help="plan the night (reports, dates, requests, time at quota) without calling any API or writing")
    run.add_argument("--no-lookback", action="store_true",
                     help="fetch the date only, without refetching each media's lookback_days window "
                          "(late conversions)")

    rerun = sub.add_parser("rerun", parents=[common], epilog=EPILOG,
                           help="re-run one media for one date (and account), or only what failed",
                           description="Either re-fetch exactly one media for one date (optionally one account), then "
                                       "re-load and re-aggregate only the affected partitions — other media are "
                                       "untouched; or, with --failed, fetch only the reports that failed or never "
                                       "finished.")
    rerun.add_argument("--media", help="media name as in the config")
    rerun.add_argument("--date", type=parse_date, help="report date YYYY-MM-DD")
    rerun.add_argument("--account", help="only this account id")
    rerun.add_argument("--failed", action="store_true",
                       help="only what failed or never finished (all dates, or --date)")
    rerun.add_argument("--json", action="store_true", help="print the run summary as JSON")
    rerun.add_argument("--take-over", action="store_true", help="take partition locks held by a run you know is dead")

    backfill = sub.add_parser("backfill", parents=[common], epilog=EPILOG,
                              help="fetch a range of dates in one run (resumable)",
                              description="Fetch every date from --from to --to (inclusive) in one run, inside the "
                                          "same quota budget: each account's consecutive dates as one range report "
                                          "(at most 31 days). Days already done are skipped, so an interrupted "
                                          "backfill resumes when started again.")
    backfill.add_argument("--from", dest="date_from", type=parse_date, required=True, help="first date YYYY-MM-DD")
    backfill.add_argument("--to", dest="date_to", type=parse_date, required=True, help="last date YYYY-MM-DD")
    backfill.add_argument("--media", help="only this media")
    backfill.add_argument("--force", action="store_true", help="re-fetch reports already done")
    backfill.add_argument("--json", action="store_true", help="print the run summary as JSON")
    backfill.add_argument("--take-over", action="store_true",
                          help="take partition locks held by a run you know is dead")
    backfill.add_argument("--dry-run", action="store_true",
                          help="plan the backfill (range reports, requests, time at quota) without calling any API "
                               "or writing")

    status = sub.add_parser("status", parents=[common], help="what ran and what failed: per media × date, or one run",
                            description="Counts by state, attempts, durations and the last errors per media × date. "
                                        "Exit code 3 if anything is failed, 0 otherwise.")
    status.add_argument("--date", type=parse_date, help="report date (default: yesterday)")
    status.add_argument("--run", dest="run_id", help="a run id instead of a date")
    status.add_argument("--json", action="store_true", help="machine-readable output")

    fresh = sub.add_parser("freshness", parents=[common], epilog=EPILOG,
                           help="is every expected date there? missing, partial, failed or stale per media and account",
                           description="Checks each account's yesterday (in its time zone) back --days days, or one "
                                       "--date, from the ledger only (read-only, no API calls). Exit 0 when every "
                                       "expected date is fetched and published, 3 otherwise.")
    fresh.add_argument("--date", type=parse_date, help="check this one date only")
    fresh.add_argument("--days", type=int, default=7, help="how many days back from yesterday to check (default 7)")
    fresh.add_argument("--media", help="only this media")
    fresh.add_argument("--json", action="store_true", help="machine-readable output")
    fresh.add_argument("--notify", action="store_true",
                       help="post what is missing to the webhook ($INGEST_WEBHOOK_URL)")

    sub.add_parser("migrate", parents=[common], help="bring the ledger's schema up to this version (runs do it too)")

    doctor = sub.add_parser("doctor", parents=[common], epilog=EPILOG,
                            help="check this setup before the night: versions, credentials, endpoints, GCS, "
                                 "BigQuery, RDB",
                            description="Runs every check (each bounded to a few seconds, none writes anything) and "
                                        "prints PASS/WARN/FAIL with the reason. Exit 0 when nothing failed, "
                                        "3 otherwise.")
    doctor.add_argument("--json", action="store_true", help="machine-readable output")

    ui = sub.add_parser("ui", parents=[common], help="the read-only run-history web page (docs/operations.md)",
                        description="Serve the run history, each run's media × date grid, failures and a "
                                    "30-night chart from the ledger. Read-only. Binding to anything but "
                                    "127.0.0.1/localhost requires an access token in $INGEST_UI_TOKEN "
                                    "(exit 2 without it).")
    ui.add_argument("--host", default=None, help="address to bind (default: ui.host in the config, 127.0.0.1)")
    ui.add_argument("--port", type=int, default=None, help="port (default: ui.port in the config, 8080)")
    return p


def validate_date(cfg: PipelineConfig, day: date) -> date:
    if day > cfg.today():
        raise UsageError(f"--date {day} is in the future (today in {cfg.timezone} is {cfg.today()})")
    return day


def _media_arg(cfg: PipelineConfig, media: str | None) -> list[str]:
    if media is None:
        return cfg.media_names()
    if media not in cfg.media:
        raise UsageError(f"unknown media {media!r} (configured: {', '.join(cfg.media)})")
    return [media]


def print_summary(cfg: PipelineConfig, report: RunReport, as_json: bool) -> None:
    stage2 = report.stage2
    doc: dict[str, Any] = {
        "run_id": report.run_id,
        "outcome": report.outcome,
        "exit_code": report.exit_code,
        "fetch_seconds": round(report.fetch_s, 2),
        "stage2_seconds": round(report.stage2_s, 2),
        "media": report.media.to_doc(),
        "rows_loaded": sum(p.rows_loaded for p in stage2.partitions.values()) if stage2 else 0,
        "summary_rows_published": dict(stage2.published_rows) if stage2 else {},
        "partitions": {f"{m}/{d}": {"status": p.status, "rows_loaded": p.rows_loaded, "detail": p.error or p.detail}
                       for (m, d), p in stage2.partitions.items()} if stage2 else {},
        "bigquery_jobs": stage2.bq_jobs if stage2 else 0,
        "failures": [{**f, "date": str(f["date"])} for f in report.failures],
        "database": _safe_url(cfg.database_url()),
    }
    if as_json:
        print(json.dumps(doc, indent=2, default=str))
        return
    print(f"\nrun {report.run_id}: {report.outcome.upper()} (exit {report.exit_code})  "
          f"fetch {report.fetch_s:.1f}s, stage 2 {report.stage2_s:.1f}s")
    print(f"  {'media':<12} {'reports':>7} {'done':>5} {'skipped':>7} "
          f"{'failed':>6} {'retries':>7} {'rows':>6} {'requests':>8}")
    for m, s in report.media.items():
        print(f"  {m:<12} {s.planned:>7} {s.done:>5} {s.skipped:>7} "
              f"{s.failed:>6} {s.retries:>7} {s.rows:>6} {s.requests:>8}")
    print(f"  rows loaded into BigQuery: {doc['rows_loaded']}  (BigQuery jobs: {doc['bigquery_jobs']})")
    for table, n in doc["summary_rows_published"].items():
        print(f"  published {n:>6} rows → {table}")
    for name, part in doc["partitions"].items():
        if part["status"] == PartitionStatus.FAILED:
            print(f"  STAGE 2 FAILED {name}: {part['detail']}")
    for f in report.failures[:10]:
        print(f"  FAILED {f['media']}/{f['account_id']}/{f['date']} after {f['attempts']} attempts: "
              f"{f['error_message']}")
    print(f"  query them: {doc['database']}  "
          f"(tables mart_daily_campaign, mart_daily_advertiser, mart_mtd_advertiser_media)")


def _safe_url(url: str) -> str:
    import re

    return re.sub(r"//([^:/@]+):[^@]*@", r"//\1:***@", url)


def run_job(cfg: PipelineConfig, req: RunRequest, as_json: bool) -> int:
    from ingest.progress import for_terminal

    job = NightlyJob(cfg, progress=for_terminal(None if not as_json else False))
    report = job.execute(req)
    print_summary(cfg, report, as_json)
    return report.exit_code


def _rerun(cfg: PipelineConfig, args: argparse.Namespace) -> int:
    if args.failed:
        if args.account:
            raise UsageError("--failed cannot be combined with --account")
        from ingest.clients import rdb_engine
        from ingest.ledger import Ledger

        media = _media_arg(cfg, args.media)
        day = validate_date(cfg, args.date) if args.date else None
        ledger = Ledger(rdb_engine(cfg.database_url()))
        ledger.migrate()
        # exactly the reports recorded as not done (failed, or left behind by a dead run) and the
        # stage-2 partitions still pending/failed — never a report that is done or never planned
        keys, parts = ledger.unfinished(media, day)
        keys = {k for k in keys if k.account in cfg.media[k.media].account_ids()}
        if not keys and not parts:
            print("nothing failed or unfinished" + (f" for {day}" if day else "") + ": nothing to re-run")
            return EXIT_SUCCESS
        involved = {k.media for k in keys} | {m for m, _ in parts}
        dates = sorted({k.day for k in keys} | {d for _, d in parts})
        req = RunRequest("rerun", dates, [m for m in media if m in involved], only=frozenset(keys),
                         take_over=args.take_over)
        return run_job(cfg, req, args.json)
    if not args.media or not args.date:
        raise UsageError("rerun needs --media and --date (or --failed)")
    media = _media_arg(cfg, args.media)
    day = validate_date(cfg, args.date)
    accounts = None
    if args.account:
        check_account(args.account)
        if args.account not in cfg.media[media[0]].account_ids():
            raise UsageError(f"account {args.account!r} is not configured for media {media[0]!r}")
        accounts = [args.account]
    return run_job(cfg, RunRequest("rerun", [day], media, accounts=accounts, force=True, take_over=args.take_over),
                   args.json)


def run_cli(parser: argparse.ArgumentParser, argv: list[str] | None,
            dispatch: Callable[[PipelineConfig, argparse.Namespace], int]) -> int:
    """Parse, load the config, dispatch; bad input is one ``error:`` line and exit 2, a lock refusal exit 5.

    Shared with ``python -m sandbox`` (the local stack's commands, which are not part of the product).
    """
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help (0) or a bad argument (2, one line already printed)
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    configure_logging()
    try:
        cfg = load_config(args.config)
        _refuse_silent_local_default(cfg, args)
        return dispatch(cfg, args)
    except (LockedError, ConfigError) as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return EXIT_FOR_ERROR[type(exc)]
    except Exception as exc:  # noqa: BLE001 - an unreachable/missing resource is one line, a bug stays a traceback
        from ingest.infra_errors import explain

        line = explain(exc, **_resources(cfg if "cfg" in locals() else None))
        if line is None:
            raise
        print(f"error: {redact(line)}", file=sys.stderr)
        return EXIT_FAILED


#: the operator errors that stop a command before anything runs → its exit code (README, Runbook);
#: by exact type, never by inheritance
EXIT_FOR_ERROR: dict[type[Exception], int] = {ConfigError: EXIT_USAGE, UsageError: EXIT_USAGE, LockedError: EXIT_LOCKED}


def _resources(cfg: PipelineConfig | None) -> dict[str, str | None]:
    if cfg is None:
        return {}
    try:
        from sqlalchemy.engine import make_url

        database = make_url(cfg.database_url()).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 - only for the message
        database = None
    return {"database": database, "bucket": cfg.gcs.bucket, "dataset": f"{cfg.bigquery.project}.{cfg.bigquery.dataset}"}


WRITING_COMMANDS = ("run", "rerun", "backfill")


def _refuse_silent_local_default(cfg: PipelineConfig, args: argparse.Namespace) -> None:
    """A command that fetches and publishes never falls back to config/local.yaml by accident.

    Without ``--config`` or ``$INGEST_CONFIG`` the default is the local profile, which points at
    127.0.0.1: it is taken only while this checkout's local stack is up (its state file exists).
    Anywhere else — a cluster's head, a Ray job, an operator's laptop — the run is refused
    before anything starts, naming the config to pass.
    """
    if getattr(args, "command", None) not in WRITING_COMMANDS or args.config or os.environ.get("INGEST_CONFIG"):
        return
    if cfg.sandbox is not None and (cfg.sandbox_root() / "stack.json").exists():
        return
    raise UsageError(f"`ingest {args.command}` needs the config of this deployment: pass --config "
                     f"config/pipeline.yaml (or set INGEST_CONFIG); the default config/local.yaml is used only "
                     f"while the local stack is up (python -m sandbox up)")


def main(argv: list[str] | None = None) -> int:
    return run_cli(build_parser(), argv, _dispatch)


def _dispatch(cfg: PipelineConfig, args: argparse.Namespace) -> int:
    if args.command == "run" and args.dry_run:
        from ingest.doctor import plan_night, print_plan

        day = validate_date(cfg, args.date) if args.date else None
        print_plan(*plan_night(cfg, day=day, lookback=not args.no_lookback))
        return EXIT_SUCCESS
    if args.command == "doctor":
        import json

        from ingest.doctor import as_json, print_checks, run_checks
        from ingest.job import EXIT_PARTIAL

        checks = run_checks(cfg, dict(os.environ),
                            source=args.config or os.environ.get("INGEST_CONFIG") or "config/local.yaml")
        if args.json:
            print(json.dumps(as_json(checks), indent=2))
        else:
            print_checks(checks)
        return EXIT_PARTIAL if any(c.status == "FAIL" for c in checks) else EXIT_SUCCESS
    if args.command == "run":
        if args.date is None:  # the nightly: each account's own yesterday, in its time zone
            req = RunRequest("run", [], cfg.media_names(), force=args.force, take_over=args.take_over,
                             yesterday_per_account=True, lookback=not args.no_lookback)
            return run_job(cfg, req, args.json)
        day = validate_date(cfg, args.date)
        return run_job(cfg, RunRequest("run", [day], cfg.media_names(), force=args.force, take_over=args.take_over,
                                       lookback=not args.no_lookback), args.json)
    if args.command == "rerun":
        return _rerun(cfg, args)
    if args.command == "backfill":
        if args.date_from > args.date_to:
            raise UsageError(f"--from {args.date_from} is after --to {args.date_to}")
        validate_date(cfg, args.date_to)
        days = (args.date_to - args.date_from).days + 1
        if days > cfg.max_backfill_days:
            raise UsageError(f"{days} days is more than max_backfill_days={cfg.max_backfill_days}; split the range")
        dates = [args.date_from + timedelta(days=i) for i in range(days)]
        if args.dry_run:
            from ingest.doctor import plan_backfill, print_plan

            print_plan(*plan_backfill(cfg, dates, _media_arg(cfg, args.media), force=args.force))
            return EXIT_SUCCESS
        req = RunRequest("backfill", dates, _media_arg(cfg, args.media), force=args.force, take_over=args.take_over,
                         ranges=True)
        return run_job(cfg, req, args.json)
    if args.command == "ui":
        from ingest.ui import serve

        return serve(cfg, host=args.host, port=args.port, environ=os.environ, config_arg=args.config)
    if args.command == "freshness":
        from ingest.freshness import run_freshness

        if args.days < 1:
            raise UsageError("--days must be at least 1")
        media = [_media_arg(cfg, args.media)[0]] if args.media else None
        return run_freshness(cfg, day=args.date, days=args.days, media=media, as_json=args.json, notify=args.notify)
    if args.command == "migrate":
        from ingest.clients import rdb_engine
        from ingest.ledger import Ledger

        ledger = Ledger(rdb_engine(cfg.database_url()))
        ledger.migrate()
        print("ledger schema is current")
        return EXIT_SUCCESS
    if args.command == "status":
        from ingest.status import print_status

        return print_status(cfg, day=args.date if args.run_id else validate_date(cfg, args.date or cfg.yesterday()),
                            run_id=args.run_id, as_json=args.json)
    return EXIT_USAGE


if __name__ == "__main__":
    raise SystemExit(main())
