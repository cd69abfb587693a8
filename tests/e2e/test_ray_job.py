"""The README's production command against a real Ray head: ``ray start --head`` (token auth,
as Ray 2.60 enables it) and ``ray job submit -- python -m ingest run``. The job's status is the
run's outcome: a successful run → SUCCEEDED, a partial run (exit 3) → FAILED.

The head gets its own --temp-dir and free ports (so no ``ray.init()`` elsewhere on this machine
finds it) and is stopped by killing its process session — never ``ray stop``, which would stop
every Ray on the machine.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from datetime import date
from pathlib import Path
from typing import Any

import pytest

from ingest.config import PipelineConfig
from sandbox.cli import SANDBOX_TOKENS
from sandbox.stack import free_port
from sandbox.truth import DENIED_ACCOUNT
from tests.e2e.test_nightly import expected_totals, mart_totals
from tests.e2e.test_operator import kill_session, write_config

pytestmark = pytest.mark.stack

BIN = Path(sys.executable).parent
DAY_OK, DAY_PARTIAL = date(2026, 11, 12), date(2026, 11, 13)


def _ensure_token() -> None:
    """Ray 2.60 token auth: the token lives in ~/.ray/auth_token (made once per machine)."""
    if not (Path.home() / ".ray" / "auth_token").exists():
        subprocess.run([str(BIN / "ray"), "get-auth-token", "--generate"], check=True, capture_output=True, timeout=60)


@pytest.fixture(scope="module")
def head(stack: Any) -> Iterator[dict[str, Any]]:
    _ensure_token()
    temp_dir = tempfile.mkdtemp(prefix="rh", dir="/tmp")  # short: Ray's unix socket paths are limited
    dashboard = free_port()
    ports = {"--port": free_port(), "--dashboard-port": dashboard, "--ray-client-server-port": free_port(),
             "--node-manager-port": free_port(), "--object-manager-port": free_port(),
             "--dashboard-agent-listen-port": free_port(), "--dashboard-agent-grpc-port": free_port(),
             "--runtime-env-agent-port": free_port(), "--metrics-export-port": free_port()}
    # the job's driver inherits the head's environment: the emulator address and (fake) API tokens
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update(stack.env())
    for var in SANDBOX_TOKENS:
        env.setdefault(var, "sandbox-token")
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    cmd = [str(BIN / "ray"), "start", "--head", "--temp-dir", temp_dir, "--dashboard-host", "127.0.0.1",
           "--include-dashboard", "true", "--num-cpus", "2", "--disable-usage-stats",
           *[str(x) for kv in ports.items() for x in kv]]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=60)
        assert proc.returncode == 0, out.decode(errors="replace")[-3000:]
        yield {"address": f"http://127.0.0.1:{dashboard}", "env": {**env, "RAY_AUTH_MODE": "token"}}
    finally:
        if proc.poll() is None:
            proc.kill()
        kill_session(proc.pid, timeout=0)
        shutil.rmtree(temp_dir, ignore_errors=True)


def submit(head: dict[str, Any], config: str, day: date, submission_id: str) -> tuple[int, str, str]:
    """``ray job submit`` as the README shows it (it waits and tails the job's logs)."""
    cmd = [str(BIN / "ray"), "job", "submit", "--address", head["address"], "--submission-id", submission_id,
           "--", sys.executable, "-m", "ingest", "--config", config, "run", "--date", str(day)]
    done = subprocess.run(cmd, capture_output=True, text=True, env=head["env"], timeout=120)
    # the JobStatus the cluster recorded, and its message ("... failed with exit code 3 ...")
    probe = ("import sys; from ray.job_submission import JobSubmissionClient as C; "
             "info = C(sys.argv[1]).get_job_info(sys.argv[2]); print(info.status.value); print(info.message)")
    status = subprocess.run([sys.executable, "-c", probe, head["address"], submission_id],
                            capture_output=True, text=True, env=head["env"], timeout=60)
    assert status.returncode == 0, status.stderr[-2000:]
    return done.returncode, done.stdout + done.stderr, status.stdout


def test_ray_job_submit_status_is_the_runs_outcome(head: dict[str, Any], stack, make_config: Callable[..., PipelineConfig],  # type: ignore[no-untyped-def]
                                                   sqlite_url: str, tmp_path: Path) -> None:
    cfg = make_config(stack, sqlite_url)
    config = write_config(cfg, tmp_path / "job.yaml")
    tag = str(int(time.time() * 1000))
    code, logs, status = submit(head, config, DAY_OK, f"ingest-ok-{tag}")
    assert code == 0, logs[-4000:]
    assert status.splitlines()[0] == "SUCCEEDED", status
    assert ": SUCCESS (exit 0)" in logs  # the run's own summary, in the job's logs
    assert mart_totals(sqlite_url, DAY_OK) == expected_totals(cfg, DAY_OK)

    accounts = [a.model_dump() for a in cfg.media["meta"].accounts] + [{"id": DENIED_ACCOUNT, "advertiser": "sakura_foods"}]
    partial = make_config(stack, sqlite_url, media={"meta": {"accounts": accounts}})
    config = write_config(partial, tmp_path / "partial.yaml")
    code, logs, status = submit(head, config, DAY_PARTIAL, f"ingest-partial-{tag}")
    assert code != 0, logs[-4000:]
    assert status.splitlines()[0] == "FAILED" and "exit code 3" in status, status
    assert ": PARTIAL (exit 3)" in logs
