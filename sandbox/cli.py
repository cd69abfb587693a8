"""``python -m sandbox``: the local stack (development and CI only, never in production).

    python -m sandbox up|down|status [--config F]   start, stop or check the local stack
    python -m sandbox demo [--date D] [--config F]  start it and run the whole pipeline (make demo)

Exit codes as ``python -m ingest``: 0 success · 2 bad input or a config without a ``sandbox:``
section · 3/4 the demo run's outcome · ``status`` exits 4 when any service is down.
"""

from __future__ import annotations

import argparse
import os

from ingest.config import follow_local_stack
from ingest.cli import EPILOG, Parser, UsageError, parse_date, run_cli, run_job, validate_date
from ingest.config import PipelineConfig
from ingest.job import EXIT_FAILED, EXIT_SUCCESS, RunRequest
from sandbox.stack import LocalStack, StackSpec

#: the credentials the local profile names, with harmless values the simulators accept; the OAuth
#: triples buy expiring access tokens from the simulators' token endpoints (sandbox/oauth_sim.py)
SANDBOX_CREDENTIALS = {
    "META_ACCESS_TOKEN": "sandbox-token",
    "GOOGLE_ADS_DEVELOPER_TOKEN": "sandbox-developer-token",
    "GOOGLE_ADS_REFRESH_TOKEN": "sandbox-refresh-token",
    "GOOGLE_ADS_CLIENT_ID": "sandbox-client.apps.googleusercontent.com",
    "GOOGLE_ADS_CLIENT_SECRET": "sandbox-client-secret",
    "YAHOO_ADS_REFRESH_TOKEN": "sandbox-refresh-token",
    "YAHOO_ADS_CLIENT_ID": "sandbox-client-id",
    "YAHOO_ADS_CLIENT_SECRET": "sandbox-client-secret",
}
SANDBOX_TOKENS = tuple(SANDBOX_CREDENTIALS)


def build_parser() -> argparse.ArgumentParser:
    p = Parser(prog="python -m sandbox",
               description="The local stack (fake-gcs-server, bqemulator, API simulators) and the demo. "
                           "Development and CI only: needs a checkout and the `local` extra.",
               epilog=EPILOG)
    p.add_argument("--config", default=None, help="config YAML (default: $INGEST_CONFIG or config/local.yaml)")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    common = Parser(add_help=False)  # so --config also works after the command
    common.add_argument("--config", default=argparse.SUPPRESS, help="config YAML")
    sub.add_parser("up", parents=[common], help="start the local stack (a no-op when it is already healthy)")
    sub.add_parser("down", parents=[common], help="stop the local stack (its data stays under the sandbox root)")
    sub.add_parser("status", parents=[common], help="health of each service; exit 4 if any is down")
    demo = sub.add_parser("demo", parents=[common],
                          help="start the local stack and run the whole pipeline for one date (make demo)")
    demo.add_argument("--date", type=parse_date, help="report date (default: yesterday)")
    return p


def sandbox_stack(cfg: PipelineConfig) -> LocalStack:
    sb = cfg.sandbox
    if sb is None:
        raise UsageError("this config has no `sandbox:` section; the local stack is for the local profile only")
    return LocalStack(StackSpec(root=cfg.sandbox_root(), project=cfg.bigquery.project, gcs_port=sb.gcs_port,
                                bq_port=sb.bq_port, bq_grpc_port=sb.bq_grpc_port, sim_ports=dict(sb.sim_ports),
                                seed=sb.seed, fault_rate=sb.fault_rate, latency_ms=sb.latency_ms))


def _dispatch(cfg: PipelineConfig, args: argparse.Namespace) -> int:
    stack = sandbox_stack(cfg)
    if args.command == "up":
        print(stack.up() + ": " + ", ".join(stack.health()))
    elif args.command == "down":
        stack.down()
        print("local stack stopped")
    elif args.command == "status":
        health = stack.health()
        for name, ok in health.items():
            print(f"{name:<22} {'up' if ok else 'DOWN'}")
        return EXIT_SUCCESS if all(health.values()) else EXIT_FAILED
    elif args.command == "demo":
        for var, value in SANDBOX_CREDENTIALS.items():  # the simulators' credentials; real ones come from the env
            os.environ.setdefault(var, value)
        days = [validate_date(cfg, args.date)] if args.date else []  # bad input: nothing started
        print(stack.up())
        cfg = follow_local_stack(cfg)  # the ports this checkout's stack really listens on
        # like the nightly: without --date, each account's own yesterday in its time zone
        code = run_job(cfg, RunRequest("demo", days, cfg.media_names(), force=True, yesterday_per_account=not days,
                                        lookback=True), False)
        print(f"  local stack still running (stop: python -m sandbox down); ledger and marts in {cfg.database_url()}")
        return code
    return EXIT_SUCCESS


def main(argv: list[str] | None = None) -> int:
    return run_cli(build_parser(), argv, _dispatch)


if __name__ == "__main__":
    raise SystemExit(main())
