"""The README's morning freshness line, verbatim (after ``cd``): against the production config
with only the database redirected (``DATABASE_URL``, as production sets it), it reads the
ledger, exits 3 for a night that never ran, and posts the missing accounts to the webhook."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import sqlalchemy as sa

from ingest.job import EXIT_PARTIAL
from ingest.ledger import Ledger
from tests.webhook import Receiver

REPO = Path(__file__).resolve().parents[2]


def readme_freshness_line() -> list[str]:
    """The crontab line's command, from ``python -m ingest`` on (the venv path is the host's)."""
    lines = [ln for ln in (REPO / "README.md").read_text().splitlines()
             if "-m ingest freshness" in ln and "--notify" in ln and ln.lstrip()[:1].isdigit()]
    assert len(lines) == 1, lines
    command = re.search(r"python -m ingest freshness.*$", lines[0])
    assert command is not None
    return shlex.split(command.group(0))


def test_readme_freshness_line_catches_a_night_that_never_ran(tmp_path: Path) -> None:
    argv = readme_freshness_line()
    assert argv[:4] == ["python", "-m", "ingest", "freshness"] and "--config" in argv
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    Ledger(sa.create_engine(url)).migrate()  # a deployed ledger in which no night has run
    with Receiver() as hook:
        env = {**os.environ, "DATABASE_URL": url, "INGEST_WEBHOOK_URL": hook.url}
        proc = subprocess.run([sys.executable, *argv[1:]], cwd=REPO, env=env, capture_output=True, text=True,
                              timeout=120)
        assert proc.returncode == EXIT_PARTIAL, proc.stderr
        assert "missing" in proc.stdout and "accounts incomplete" in proc.stdout
        assert hook.posts and "no data for " in hook.posts[0]["json"]["text"]
    assert hook.url not in proc.stdout + proc.stderr  # the webhook URL is a secret
