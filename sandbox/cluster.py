"""A local Ray autoscaling cluster: Ray's own autoscaler over its fake multi-node provider.

Used by ``make cluster-rehearsal`` (``sandbox/rehearsal.py``) and its test. The autoscaling
config is *derived* from ``ray-cluster.yaml``: the same worker node type names and scheduling
resources, sizes scaled to this machine (``scaled_worker_types``), so the rehearsal exercises
what production schedules on. Recipe and pitfalls checked on these machines (shared/DESIGN.md):

* the head type must be called ``ray.head.default``; the head runs with ``RAY_FAKE_CLUSTER=1``;
* all fake nodes share one session dir, so their uv/pip runtime envs would collide in one
  ``runtime_resources`` dir: ``IsolatedFakeProvider`` gives each node its own;
* a node loss is its raylet *and* every process it started (workers, agents);
* we stop only our own processes (by process group / node), never with ``ray stop``.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from ray.autoscaler._private.fake_multi_node.node_provider import FAKE_HEAD_NODE_ID, FakeMultiNodeProvider

from sandbox.stack import free_port

REPO = Path(__file__).resolve().parent.parent
CLUSTER_YAML = REPO / "ray-cluster.yaml"
HEAD_TYPE = "ray.head.default"
#: one fake node costs ~5 processes on this 2-core machine: keep the rehearsal small
SCALE = {"CPU": 1, "memory": 2 * 1024**3}
MAX_WORKERS = 3
FAKE_NODE_ENV = "RAY_OVERRIDE_NODE_ID_FOR_TESTING"


class IsolatedFakeProvider(FakeMultiNodeProvider):
    """Ray's fake multi-node provider, with a runtime-env dir per node.

    Fake nodes share the head's session dir; with one ``runtime_resources`` dir their
    concurrent uv/pip env builds overwrite each other. Real nodes each have their own disk.
    """

    def _create_node_with_resources_and_labels(self, node_config, tags, count, resources, labels):  # type: ignore[no-untyped-def]
        import ray._private.node
        import ray._private.parameter
        from ray._common.network_utils import build_address
        from ray._private import ray_constants
        from ray.autoscaler.tags import (NODE_KIND_WORKER, STATUS_UP_TO_DATE, TAG_RAY_NODE_KIND, TAG_RAY_NODE_NAME,
                                         TAG_RAY_NODE_STATUS, TAG_RAY_USER_NODE_TYPE)

        resources = copy.deepcopy(resources)
        with self.lock:
            node_type = tags[TAG_RAY_USER_NODE_TYPE]
            next_id = self._next_hex_node_id()
            gcs = self._gcs_address or build_address(ray._private.services.get_node_ip_address(), 6379)
            params = ray._private.parameter.RayParams(
                min_worker_port=0, max_worker_port=0, dashboard_port=None, dashboard_agent_listen_port=0,
                num_cpus=resources.pop("CPU", 0), num_gpus=resources.pop("GPU", 0),
                memory=resources.pop("memory", None),
                object_store_memory=resources.pop("object_store_memory", None),
                resources=resources, labels=labels, redis_address=gcs, gcs_address=gcs,
                runtime_env_dir_name=f"runtime_resources_{next_id[-5:]}",
                env_vars={
                    FAKE_NODE_ENV: next_id,
                    "RAY_CLOUD_INSTANCE_ID": next_id,
                    "RAY_NODE_TYPE_NAME": node_type,
                    ray_constants.RESOURCES_ENVIRONMENT_VARIABLE: json.dumps(resources),
                    ray_constants.LABELS_ENVIRONMENT_VARIABLE: json.dumps(labels),
                },
            )
            node = ray._private.node.Node(params, head=False, shutdown_at_exit=False, spawn_reaper=False)
            all_tags = {TAG_RAY_NODE_KIND: NODE_KIND_WORKER, TAG_RAY_USER_NODE_TYPE: node_type,
                        TAG_RAY_NODE_NAME: next_id, TAG_RAY_NODE_STATUS: STATUS_UP_TO_DATE}
            all_tags.update(tags)
            self._nodes[next_id] = {"tags": all_tags, "node": node}


def scaled_worker_types(cluster_yaml: Path = CLUSTER_YAML, max_workers: int = MAX_WORKERS) -> dict[str, Any]:
    """ray-cluster.yaml's worker node types with the same names and resource keys, scaled down.

    CPU becomes 1 and memory 2 GiB per node; every custom resource (what the scheduling uses, e.g. the fetcher
    slots) keeps its key and is halved, at least 1, so a node still holds more than one fetcher.
    """
    config = yaml.safe_load(cluster_yaml.read_text())
    out: dict[str, Any] = {}
    for name, spec in config["available_node_types"].items():
        if name == config["head_node_type"]:
            continue
        resources = {k: (SCALE[k] if k in SCALE else max(1, int(v) // 2)) for k, v in spec["resources"].items()}
        out[name] = {"resources": resources, "node_config": {}, "min_workers": 0,
                     "max_workers": min(max_workers, spec.get("max_workers", max_workers))}
    return out


def autoscaling_config(gcs_address: str, idle_timeout_minutes: float = 0.5, head_cpus: int = 1,
                       max_workers: int = MAX_WORKERS) -> dict[str, Any]:
    workers = scaled_worker_types(max_workers=max_workers)
    return {
        "cluster_name": "ad-ingest-rehearsal",
        "max_workers": sum(w["max_workers"] for w in workers.values()),
        "upscaling_speed": 1.0,
        "idle_timeout_minutes": idle_timeout_minutes,
        "docker": {},
        "provider": {
            "type": "external",
            "module": f"{__name__}.IsolatedFakeProvider",
            "use_node_id_as_ip": True,
            "disable_node_updaters": True,
            "disable_launch_config_check": True,
            "launch_multiple": True,
            "gcs_address": gcs_address,
        },
        "auth": {"ssh_user": "nobody"},
        "available_node_types": {HEAD_TYPE: {"resources": {"CPU": head_cpus}, "node_config": {}, "max_workers": 0},
                                 **workers},
        "head_node_type": HEAD_TYPE,
        "file_mounts": {}, "cluster_synced_files": [], "file_mounts_sync_continuously": False,
        "rsync_exclude": [], "rsync_filter": [],
        "initialization_commands": [], "setup_commands": [], "head_setup_commands": [],
        "worker_setup_commands": [], "head_start_ray_commands": [], "worker_start_ray_commands": [],
    }


def ensure_auth_token(bin_dir: Path) -> None:
    """Ray 2.60 token auth: the token lives in ~/.ray/auth_token (made once per machine)."""
    if not (Path.home() / ".ray" / "auth_token").exists():
        subprocess.run([str(bin_dir / "ray"), "get-auth-token", "--generate"], check=True, capture_output=True,
                       timeout=60)


@dataclass
class FakeCluster:
    """A head (``ray start --head``) on free ports with its own temp dir, plus the autoscaler."""

    env: dict[str, str]
    head_cpus: int = 1
    idle_timeout_minutes: float = 0.5
    head_resources: dict[str, float] = field(default_factory=dict)
    autoscale: bool = True
    #: worker nodes the autoscaler may add, per worker type (the bench's scaling runs use 1, 2, 4)
    max_workers: int = MAX_WORKERS
    temp_dir: str = ""
    dashboard_url: str = ""
    gcs_address: str = ""
    _pgid: int | None = None

    def start(self, timeout: float = 90) -> None:
        bin_dir = Path(sys.executable).parent
        ensure_auth_token(bin_dir)
        self.temp_dir = tempfile.mkdtemp(prefix="rc", dir="/tmp")  # short: unix socket paths are limited
        port, dashboard = free_port(), free_port()
        self.gcs_address = f"127.0.0.1:{port}"
        self.dashboard_url = f"http://127.0.0.1:{dashboard}"
        ports = {"--port": port, "--dashboard-port": dashboard, "--ray-client-server-port": free_port(),
                 "--node-manager-port": free_port(), "--object-manager-port": free_port(),
                 "--dashboard-agent-listen-port": free_port(), "--dashboard-agent-grpc-port": free_port(),
                 "--runtime-env-agent-port": free_port(), "--metrics-export-port": free_port()}
        cmd = [str(bin_dir / "ray"), "start", "--head", "--node-ip-address", "127.0.0.1", "--temp-dir", self.temp_dir,
               "--dashboard-host", "127.0.0.1", "--include-dashboard", "true", "--num-cpus", str(self.head_cpus),
               "--disable-usage-stats", *[str(x) for kv in ports.items() for x in kv]]
        if self.head_resources:
            cmd += ["--resources", json.dumps(self.head_resources)]
        env = {k: v for k, v in self.env.items() if k != "RAY_ADDRESS"}
        env["PATH"] = f"{bin_dir}{os.pathsep}{env.get('PATH', '')}"
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
        if self.autoscale:
            config = Path(self.temp_dir) / "autoscaling.yaml"
            config.write_text(yaml.safe_dump(autoscaling_config(self.gcs_address, self.idle_timeout_minutes,
                                                                self.head_cpus, self.max_workers)))
            cmd.append(f"--autoscaling-config={config}")
            env.update({"RAY_FAKE_CLUSTER": "1", "AUTOSCALER_UPDATE_INTERVAL_S": "1"})
        self.env = env
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        self._pgid = proc.pid
        out, _ = proc.communicate(timeout=timeout)
        if proc.returncode != 0:
            self.stop()
            raise RuntimeError(f"ray start --head failed: {out.decode(errors='replace')[-3000:]}")

    def client_env(self) -> dict[str, str]:
        """What `ray job submit` and `ray.init` need to reach this head (token auth on)."""
        return {**self.env, "RAY_AUTH_MODE": "token", "RAY_ADDRESS": self.gcs_address}

    def jobs(self) -> list[dict[str, Any]]:
        """The cluster's jobs (id, status, message), asked from a fresh process: Ray reads
        RAY_AUTH_MODE once per process, and the caller's may have started without it."""
        probe = ("import json, sys; from ray.job_submission import JobSubmissionClient as C; "
                 "print(json.dumps([{'id': j.submission_id, 'status': j.status.value, 'message': j.message} "
                 "for j in C(sys.argv[1]).list_jobs()]))")
        done = subprocess.run([sys.executable, "-c", probe, self.dashboard_url], capture_output=True, text=True,
                              env=self.client_env(), timeout=60)
        if done.returncode != 0:
            raise RuntimeError(f"listing jobs failed: {done.stderr[-2000:]}")
        return list(json.loads(done.stdout.strip().splitlines()[-1]))

    # -- nodes --------------------------------------------------------------------------------
    def worker_nodes(self) -> dict[str, int]:
        """Alive fake worker nodes: node id → raylet pid (from the processes, not from Ray)."""
        import psutil

        nodes: dict[str, int] = {}
        for proc in psutil.process_iter(["name", "cmdline"]):
            try:
                if proc.info["name"] != "raylet" and not any("raylet" in c for c in (proc.info["cmdline"] or [])[:1]):
                    continue
                node_id = proc.environ().get(FAKE_NODE_ENV)
                if node_id and node_id != FAKE_HEAD_NODE_ID and self.temp_dir in " ".join(proc.info["cmdline"] or []):
                    nodes[node_id] = proc.pid
            except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                continue
        return nodes

    def kill_node(self, node_id: str) -> int:
        """Lose a node as a preemption would: its raylet and every process under it, at once."""
        import psutil

        raylet = self.worker_nodes().get(node_id)
        if raylet is None:
            return 0
        victims = [psutil.Process(raylet)]
        victims += victims[0].children(recursive=True)
        for proc in psutil.process_iter():  # agents and workers started beside the raylet
            try:
                if proc.pid not in {v.pid for v in victims} and proc.environ().get(FAKE_NODE_ENV) == node_id:
                    victims.append(proc)
            except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                continue
        for proc in victims:
            try:
                proc.send_signal(signal.SIGKILL)
            except psutil.NoSuchProcess:
                pass
        return len(victims)

    def stop(self) -> None:
        """Kill the head's process group and every fake node of this cluster; never `ray stop`."""
        import psutil

        for node_id in list(self.worker_nodes()):
            self.kill_node(node_id)
        if self._pgid:
            try:
                os.killpg(self._pgid, signal.SIGKILL)
            except OSError:
                pass
        for proc in psutil.process_iter(["cmdline"]):  # anything else still holding our temp dir
            try:
                if self.temp_dir and self.temp_dir in " ".join(proc.info["cmdline"] or []):
                    proc.kill()
            except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                continue
        time.sleep(0.5)
        if self.temp_dir:
            shutil.rmtree(self.temp_dir, ignore_errors=True)
