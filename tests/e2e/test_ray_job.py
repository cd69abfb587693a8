"""The README's production submit line, verbatim, against a real Ray head (token auth, as Ray
2.60 enables it). Only the placeholder address is substituted; the line is read from the
README, so the two cannot drift. It runs from a copy of this checkout whose
``config/pipeline.yaml`` differs from production only in endpoints (the local stack), exactly
as ``make cluster-rehearsal`` does, so the uv runtime env really installs the project.

The head carries the cluster profile's ``fetcher_slot`` itself (no autoscaler here: the
rehearsal covers scaling), and the job's status is the run's outcome: a partial run (exit 3)
→ FAILED here; a successful one → SUCCEEDED in the rehearsal, which submits the same line.
The head is stopped by killing its own processes, never with ``ray stop``.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from ingest.config import parse_config
from sandbox.cluster import FakeCluster
from sandbox.cli import SANDBOX_CREDENTIALS
from sandbox.rehearsal import (ADDRESS_PLACEHOLDER, local_pipeline_config, prepare_workdir, readme_submit_line,
                               submit_readme_line)
from sandbox.truth import DENIED_ACCOUNT

pytestmark = pytest.mark.stack


@pytest.fixture(scope="module")
def head(stack: Any) -> Iterator[FakeCluster]:
    env = {**SANDBOX_CREDENTIALS, **os.environ, **stack.env()}
    env.pop("DATABASE_URL", None)
    cluster = FakeCluster(env=env, head_cpus=2, autoscale=False, head_resources={"fetcher_slot": 4})
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.stop()


def _submit(head: FakeCluster, tmp_path: Path, raw: dict[str, Any]) -> tuple[int, str, str]:
    workdir = tmp_path / "work"
    workdir.mkdir()
    prepare_workdir(workdir, raw)
    before = {j["id"] for j in head.jobs()}
    proc = submit_readme_line(workdir, head.dashboard_url, head.client_env(), tmp_path / "job.log")
    code = proc.wait(timeout=300)
    logs = (tmp_path / "job.log").read_text(errors="replace")
    new = [j for j in head.jobs() if j["id"] not in before]
    assert len(new) == 1, logs[-3000:]
    return code, logs, f"{new[0]['status']}\n{new[0]['message']}"


def test_readme_has_one_submit_line_with_the_placeholder() -> None:
    line = readme_submit_line()
    assert line.startswith("ray job submit --address " + ADDRESS_PLACEHOLDER)
    assert "--working-dir ." in line and "python -m ingest run --config config/pipeline.yaml" in line
    assert '{"uv": ["${RAY_RUNTIME_ENV_CREATE_WORKING_DIR}"]}' in line  # the form that rebuilds on change


def test_readme_submit_line_verbatim_partial_run_fails_the_job(head: FakeCluster, stack: Any, tmp_path: Path) -> None:
    """A partial run (exit 3) is a FAILED job, so the scheduler's alerting sees it. The successful
    line (SUCCEEDED, totals equal truth, the run's summary in the job's output) is checked by the
    cluster rehearsal (tests/e2e/test_cluster_rehearsal.py), which submits the same line."""
    raw = local_pipeline_config(stack, f"sqlite:///{tmp_path / 'partial.db'}", isolate="partial")
    raw["media"]["meta"]["accounts"].append({"id": DENIED_ACCOUNT, "advertiser": "sakura_foods"})
    code, logs, status = _submit(head, tmp_path, raw)
    assert code != 0, logs[-4000:]
    assert status.splitlines()[0] == "FAILED" and "exit code 3" in status, status
    assert ": PARTIAL (exit 3)" in logs
    assert '"fetchers_planned"' in logs  # cluster placement: the supervisors' plan, in the job's logs


def test_pipeline_config_is_production_shaped() -> None:
    """What the job runs in production: cluster placement on, no emulator endpoints, no secrets."""
    raw = yaml.safe_load((Path(__file__).resolve().parents[2] / "config" / "pipeline.yaml").read_text())
    cfg = parse_config(raw, "config/pipeline.yaml")
    assert cfg.ray.address == "auto" and cfg.ray.fetcher_resource == "fetcher_slot"
    assert cfg.gcs.endpoint is None and cfg.bigquery.endpoint is None and cfg.sandbox is None
    cluster = yaml.safe_load((Path(__file__).resolve().parents[2] / "ray-cluster.yaml").read_text())
    workers = [t for n, t in cluster["available_node_types"].items() if n != cluster["head_node_type"]]
    assert all(t["resources"].get("fetcher_slot", 0) >= 1 for t in workers)
    assert "fetcher_slot" not in cluster["available_node_types"][cluster["head_node_type"]]["resources"]
