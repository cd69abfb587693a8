"""Logs for people in a terminal, JSON for machines: the choice and the redaction of both."""

from __future__ import annotations

import io
import json


from ingest.errors import register_secret
from ingest.logging import console_wanted, processors


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def render(console: bool, **event: object) -> str:
    chain = processors(console=console)
    out: object = dict(event, event="retry_decision")
    for proc in chain:
        out = proc(None, "info", out)  # type: ignore[arg-type]
    return str(out)


def test_terminal_gets_console_lines_and_pipes_get_json() -> None:
    assert console_wanted({}, _Tty()) is True
    assert console_wanted({}, io.StringIO()) is False  # Ray workers, `ray job` logs, CI: JSON
    assert console_wanted({"INGEST_LOG_FORMAT": "json"}, _Tty()) is False
    assert console_wanted({"INGEST_LOG_FORMAT": "console"}, io.StringIO()) is True


def test_both_renderings_redact_credentials() -> None:
    register_secret("sekrit-token-value-123")
    human = render(True, media="meta", reason="401 with sekrit-token-value-123")
    machine = json.loads(render(False, media="meta", reason="401 with sekrit-token-value-123"))
    assert "retry_decision" in human and "media" in human and "sekrit-token-value-123" not in human
    assert not human.lstrip().startswith("{")  # not JSON
    assert machine["message"] == "retry_decision" and "sekrit-token-value-123" not in machine["reason"]
