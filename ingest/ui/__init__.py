"""The operators' web page: run history, a run's media × date grid, failed reports, a chart of
the last 30 nights and the exact ``rerun`` command for every cell. Read-only.

``python -m ingest ui [--host 127.0.0.1] [--port 8080]``; see ``ingest/ui/app.py``.
"""

from __future__ import annotations

import errno

import shlex
import sys
from collections.abc import Mapping

import structlog

from ingest.config import PipelineConfig
from ingest.errors import register_secret

log = structlog.get_logger("ingest.ui")

EXIT_USAGE = 2


def serve(cfg: PipelineConfig, *, host: str | None, port: int | None, environ: Mapping[str, str],
          config_arg: str | None = None) -> int:
    """Start the page and block until interrupted. Exit 2 if it may not start (no token off-loopback)."""
    from aiohttp import web

    from ingest.ui.app import create_app, is_loopback
    from ingest.ui.queries import LedgerReader, read_only_engine

    host = host or cfg.ui.host
    port = port or cfg.ui.port
    token = (environ.get(cfg.ui.token_env) or "").strip() or None
    if not is_loopback(host) and not token:
        print(f"error: refusing to serve on {host}: binding to anything but 127.0.0.1/localhost requires an access "
              f"token in ${cfg.ui.token_env} (e.g. export {cfg.ui.token_env}=$(python -c 'import secrets; "
              f"print(secrets.token_urlsafe(32))'))", file=sys.stderr)
        return EXIT_USAGE
    if token:
        if len(token) < 16:
            print(f"error: ${cfg.ui.token_env} is too short (use at least 16 characters)", file=sys.stderr)
            return EXIT_USAGE
        register_secret(token)
    try:
        engine = read_only_engine(cfg.database_url())
    except FileNotFoundError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    from ingest.ledger import Ledger

    behind = Ledger(engine).schema_behind()  # read-only: never migrates, says what to run
    if behind:
        print(f"error: {behind}", file=sys.stderr)
        return EXIT_USAGE
    suffix = f" --config {shlex.quote(config_arg)}" if config_arg else ""
    app = create_app(LedgerReader(engine), token=token, page_size=cfg.ui.page_size, cmd_suffix=suffix,
                     timezone=cfg.timezone)
    if not _port_free(host, port):  # before announcing anything: one line, not a listening message and a traceback
        return _port_in_use(host, port)
    shown = f"[{host}]" if ":" in host else host
    log.info("ui_listening", url=f"http://{shown}:{port}/", token_required=bool(token))
    print(f"ingest ui: http://{shown}:{port}/"
          + ("  (access token required: ?token=… once, then a cookie)" if token else ""),
          file=sys.stderr, flush=True)
    try:
        web.run_app(app, host=host, port=port, access_log=None, print=None, handle_signals=True)
    except OSError as exc:
        if exc.errno != errno.EADDRINUSE:
            raise
        return _port_in_use(host, port)  # taken between the check and the bind
    return 0


def _port_in_use(host: str, port: int) -> int:
    print(f"error: port {port} on {host} is already in use: stop what listens there, or pass --port "
          f"(or set ui.port in the config)", file=sys.stderr)
    return EXIT_USAGE


def _port_free(host: str, port: int) -> bool:
    import socket

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as aiohttp binds: TIME_WAIT is not "in use"
        try:
            probe.bind((host, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                return False
            raise
    return True
