"""structlog, configured once per process (driver and every Ray worker): JSON lines in the
shape Cloud Logging reads (severity, message, timestamp), context bound via contextvars,
and credentials redacted from every line."""

from __future__ import annotations

import logging
import sys
from typing import Any

import structlog

from ingest.errors import redact

_configured = False


def _cloud_logging_shape(_logger: Any, method: str, event: dict[str, Any]) -> dict[str, Any]:
    event["severity"] = method.upper().replace("EXCEPTION", "ERROR").replace("WARN", "WARNING").replace("WARNINGING", "WARNING")
    event["message"] = event.pop("event", "")
    return event


def _redact(_logger: Any, _method: str, event: dict[str, Any]) -> dict[str, Any]:
    return {k: redact(v) if isinstance(v, str) else v for k, v in event.items()}


class _StderrLogger:
    """Writes each line to the *current* sys.stderr (not the one seen at configure time)."""

    def msg(self, message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    info = debug = warning = warn = error = critical = exception = fatal = log = msg


def _stderr_factory(*_args: Any) -> _StderrLogger:
    return _StderrLogger()


def configure_logging(level: int = logging.INFO) -> None:
    global _configured
    if _configured:
        return
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.TimeStamper(fmt="iso", utc=True, key="timestamp"),
            structlog.processors.format_exc_info,
            _cloud_logging_shape,
            _redact,
            structlog.processors.JSONRenderer(default=str),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=_stderr_factory,
        cache_logger_on_first_use=True,
    )
    _configured = True
