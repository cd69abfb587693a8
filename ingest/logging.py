"""structlog, configured once per process (driver and every Ray worker): JSON lines in the
shape Cloud Logging reads (severity, message, timestamp), context bound via contextvars,
and credentials redacted from every line.

One line looks like::

    {"run_id": "run-20261121T010203-ab12cd", "media": "meta", "account": "100200300",
     "date": "2026-11-20", "attempt": 2, "severity": "INFO", "message": "retry_decision",
     "timestamp": "2026-11-21T01:02:04.123456Z", ...}

- ``severity`` uses Cloud Logging's names (DEBUG, INFO, WARNING, ERROR, CRITICAL);
- ``run_id``, ``media``, ``account``, ``date``, ``attempt`` come from
  ``structlog.contextvars`` (the driver binds ``run_id``; the actors bind the rest per report);
- every string anywhere in the event — nested dicts and lists, exception tracebacks, the
  ``str()`` of any other object — goes through :func:`ingest.errors.redact`, which removes
  ``access_token=…`` query strings, ``Authorization``/``Bearer`` headers, developer tokens,
  passwords in URLs and the exact value of every credential this process has loaded;
- records of the standard ``logging`` module (WARNING and above: google-cloud, aiohttp,
  alembic…) are routed through the same pipeline, so they are JSON and redacted as well.

In a terminal (stderr is a TTY) lines are rendered for people instead — structlog's
``ConsoleRenderer``: time, level, event, key=value — redacted the same way. Ray workers and
``ray job`` logs are never TTYs, so what Cloud Logging reads stays JSON.
``INGEST_LOG_FORMAT=json|console`` overrides the choice.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Any

import structlog

from ingest.errors import redact

_configured = False

_SEVERITY = {
    "debug": "DEBUG",
    "info": "INFO",
    "msg": "INFO",
    "log": "INFO",
    "warn": "WARNING",
    "warning": "WARNING",
    "error": "ERROR",
    "exception": "ERROR",
    "critical": "CRITICAL",
    "fatal": "CRITICAL",
}


def _cloud_logging_shape(_logger: Any, method: str, event: dict[str, Any]) -> dict[str, Any]:
    event["severity"] = _SEVERITY.get(method.lower(), "DEFAULT")
    event["message"] = event.pop("event", "")
    return event


def scrub(value: Any, _depth: int = 0) -> Any:
    """Redact credentials from any value about to be written (recursively; other objects via str)."""
    if isinstance(value, str):
        return redact(value)
    if value is None or isinstance(value, (bool, int, float)):
        return value
    if _depth > 8:
        return redact(repr(value))
    if isinstance(value, dict):
        return {str(k): scrub(v, _depth + 1) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [scrub(v, _depth + 1) for v in value]
    return redact(str(value))


def _redact(_logger: Any, _method: str, event: dict[str, Any]) -> dict[str, Any]:
    return {k: scrub(v) for k, v in event.items()}


class _StderrLogger:
    """Writes each line to the *current* sys.stderr (not the one seen at configure time)."""

    def msg(self, message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    info = debug = warning = warn = error = critical = exception = fatal = log = msg


def _stderr_factory(*_args: Any) -> _StderrLogger:
    return _StderrLogger()


class _StructlogHandler(logging.Handler):
    """Sends records of the standard ``logging`` module through structlog (JSON, redacted)."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            kw: dict[str, Any] = {"logger": record.name}
            if record.exc_info:
                kw["exc_info"] = record.exc_info
            structlog.get_logger(record.name).log(record.levelno, record.getMessage(), **kw)
        except Exception:  # noqa: BLE001 - logging must never raise into the caller
            self.handleError(record)


def console_wanted(environ: dict[str, str] | None = None, stream: Any = None) -> bool:
    """Human lines when stderr is a terminal, JSON otherwise; ``INGEST_LOG_FORMAT`` decides first."""
    choice = (environ if environ is not None else os.environ).get("INGEST_LOG_FORMAT", "").lower()
    if choice in ("json", "console"):
        return choice == "console"
    stream = stream if stream is not None else sys.stderr
    return bool(getattr(stream, "isatty", lambda: False)())


def processors(console: bool = False) -> list[Any]:
    """The processor chain (also used by tests to render an event exactly as production does)."""
    if console:
        return [
            structlog.contextvars.merge_contextvars,
            structlog.processors.TimeStamper(fmt="%H:%M:%S", utc=False, key="timestamp"),
            structlog.processors.format_exc_info,  # a traceback becomes text, then is redacted like any value
            _redact,
            structlog.dev.ConsoleRenderer(colors=True),
        ]
    return [
        structlog.contextvars.merge_contextvars,
        structlog.processors.TimeStamper(fmt="iso", utc=True, key="timestamp"),
        structlog.processors.format_exc_info,
        _cloud_logging_shape,
        _redact,
        structlog.processors.JSONRenderer(default=str, ensure_ascii=False),
    ]


def configure_logging(level: int | None = None) -> None:
    """Idempotent: the CLI calls it at start, every Ray actor in its constructor."""
    global _configured
    _bridge_stdlib()  # every call: a library (or a test harness) may have reset the root handlers
    if _configured:
        return
    if level is None:
        level = logging.getLevelName(os.environ.get("INGEST_LOG_LEVEL", "INFO").upper())
        level = level if isinstance(level, int) else logging.INFO
    structlog.configure(
        processors=processors(console=console_wanted()),
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=_stderr_factory,
        cache_logger_on_first_use=True,
    )
    _configured = True


def _bridge_stdlib() -> None:
    root = logging.getLogger()
    if not any(isinstance(h, _StructlogHandler) for h in root.handlers):
        root.addHandler(_StructlogHandler(level=logging.WARNING))
