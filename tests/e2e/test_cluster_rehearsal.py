"""``make cluster-rehearsal`` in CI: the README's submit line on a local autoscaling cluster
(Ray's autoscaler, fake multi-node provider, worker types from ray-cluster.yaml), one worker
node killed while it fetches. It is also the suite's check of a successful submit (SUCCEEDED,
the run's summary in the output); test_ray_job has the partial one. ≈2.5 min on two cores;
the rehearsal itself says what it checks (sandbox/rehearsal.py)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
from pathlib import Path

import pytest

from sandbox.cluster import scaled_worker_types

REPO = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.stack


def test_make_cluster_rehearsal_passes() -> None:
    """The README's `make cluster-rehearsal`, verbatim, in its own processes (Ray reads RAY_AUTH_MODE
    once per process)."""
    # as a user types it at the top level: inside `make test` the nested make would add its own
    # "Entering/Leaving directory" lines, which a user never sees
    drop = ("DATABASE_URL", "RAY_ADDRESS", "INGEST_CONFIG", "MAKELEVEL", "MAKEFLAGS", "MFLAGS")
    env = {k: v for k, v in os.environ.items() if k not in drop}
    proc = subprocess.Popen(["make", "cluster-rehearsal"], cwd=REPO, env=env, text=True, start_new_session=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        stdout, stderr = proc.communicate(timeout=900)
    except BaseException:  # timeout or an interrupted test run: SIGTERM lets it stop its cluster and stack
        os.killpg(proc.pid, signal.SIGTERM)
        proc.communicate(timeout=60)
        raise
    out = stdout + stderr
    print(stdout)  # the timeline, in pytest's report when this fails
    assert proc.returncode == 0, out[-6000:]
    last = stdout.strip().splitlines()[-1]
    assert re.fullmatch(r"rehearsal: workers added (\d+), removed \1, nodes killed 1, "
                        r"reports lost 0, totals equal truth", last), last
    assert int(re.search(r"added (\d+)", last).group(1)) >= 2  # type: ignore[union-attr]
    assert "killed worker node" in out and "reports re-queued after the node loss" in out


def test_rehearsal_node_types_follow_ray_cluster_yaml(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Same worker type names and scheduling resources as production; a drift fails here."""
    import yaml

    from sandbox.cluster import CLUSTER_YAML

    prod = yaml.safe_load(CLUSTER_YAML.read_text())
    prod_workers = {n: t for n, t in prod["available_node_types"].items() if n != prod["head_node_type"]}
    scaled = scaled_worker_types()
    assert scaled.keys() == prod_workers.keys()
    for name, spec in scaled.items():
        assert spec["resources"].keys() == prod_workers[name]["resources"].keys()
    # and a drift is caught: a new resource in production shows up in the derived types
    drifted = dict(prod)
    drifted["available_node_types"] = {**prod["available_node_types"],
                                       "cpu_worker": {**prod_workers["cpu_worker"],
                                                      "resources": {**prod_workers["cpu_worker"]["resources"],
                                                                    "gpu_slot": 2}}}
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(drifted))
    assert "gpu_slot" in scaled_worker_types(path)["cpu_worker"]["resources"]
