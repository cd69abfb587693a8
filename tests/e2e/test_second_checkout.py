"""Two checkouts on one machine: the second one's ``make demo`` runs while the first one's local
stack holds the configured ports. It starts its own stack on free ports, says so, and never
touches (nor borrows) the other one; a second ``up`` reuses its own knowingly."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from sandbox.cli import SANDBOX_CREDENTIALS

REPO = Path(__file__).resolve().parents[2]
LOCAL_PORTS = {"4443": "gcs_port", "9050": "bq_port", "9060": "bq_grpc_port",
               "8701": "meta", "8702": "google_ads", "8703": "yahoo_ads"}


def _checkout_config(first: Any, root: Path) -> Path:
    """config/local.yaml as the *second* checkout has it: the same fixed ports — which the first
    checkout's stack (the session's ``stack``) holds — its own sandbox root and database."""
    s = first.spec
    actual = {"gcs_port": s.gcs_port, "bq_port": s.bq_port, "bq_grpc_port": s.bq_grpc_port, **s.sim_ports}
    text = (REPO / "config" / "local.yaml").read_text()
    text = re.sub(r"\b(4443|9050|9060|8701|8702|8703)\b", lambda m: str(actual[LOCAL_PORTS[m.group(1)]]), text)
    text = text.replace("root: .sandbox", f"root: {root / '.sandbox'}")
    text = text.replace("url: sqlite:///.sandbox/mart.db", f"url: sqlite:///{root / '.sandbox' / 'mart.db'}")
    path = root / "local.yaml"
    path.write_text(text)
    return path


def _sandbox(config: Path, *argv: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, **SANDBOX_CREDENTIALS}
    env.pop("DATABASE_URL", None)
    env.pop("INGEST_CONFIG", None)
    return subprocess.run([sys.executable, "-m", "sandbox", "--config", str(config), *argv], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=600)


@pytest.mark.stack
def test_second_checkout_demo_runs_beside_another_stack(stack: Any, tmp_path: Path) -> None:
    config = _checkout_config(stack, tmp_path)
    try:
        up = _sandbox(config, "up")
        assert up.returncode == 0, up.stderr[-2000:]
        assert "started this checkout's local stack" in up.stdout and "on free ports" in up.stdout
        again = _sandbox(config, "up")
        assert "reusing this checkout's local stack" in again.stdout

        demo = _sandbox(config, "demo", "--date", "2026-11-20")
        assert demo.returncode == 0, (demo.stdout[-3000:], demo.stderr[-3000:])
        assert "SUCCESS" in demo.stdout and "Traceback" not in demo.stderr
        assert (tmp_path / ".sandbox" / "mart.db").exists()
        assert stack.healthy()  # the other checkout's stack is untouched ...
        assert not list(stack.spec.gcs_root.glob("ad-ingest-local/raw/*"))  # ... and was not written to
    finally:
        down = _sandbox(config, "down")
    assert down.returncode == 0 and stack.healthy()
