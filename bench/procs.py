"""Process sampling for the benchmark, from /proc (Linux): RSS of the driver and of every
Ray process, and how many Ray worker processes exist, sampled in a background thread."""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path


def _rss_kb(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return 0


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _is_ray(cmd: str) -> bool:
    return (cmd.startswith("ray::") or "ray/core/src" in cmd or "default_worker.py" in cmd or "raylet" in cmd
            or "gcs_server" in cmd)


def ray_processes() -> dict[int, str]:
    """Ray's own processes (raylet, gcs, workers) on this machine."""
    return {pid: cmd for pid, cmd in _all_cmdlines().items() if _is_ray(cmd)}


AGENTS = ("ray::DashboardAgent", "ray::RuntimeEnvAgent")


def is_worker(cmd: str) -> bool:
    """A Ray *worker* process (an actor or an idle worker), not the raylet, GCS or node agents."""
    return (cmd.startswith("ray::") and not cmd.startswith(AGENTS)) or "default_worker.py" in cmd


def worker_processes() -> list[int]:
    return [pid for pid, cmd in ray_processes().items() if is_worker(cmd)]


GROUPS = (("supervisors", "ray::SupervisorActor"), ("fetchers", "ray::FetcherActor"),
          ("simulators", "sandbox.simulators"), ("fake-gcs-server", "fake-gcs-server"), ("bqemulator", "bq_emulator"),
          ("ray system", "raylet"), ("ray system", "gcs_server"), ("ray system", "ray::"))


def _cpu_s(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return 0.0


def _all_cmdlines() -> dict[int, str]:
    return {int(e): _cmdline(int(e)) for e in os.listdir("/proc") if e.isdigit()}


@dataclass
class Peak:
    driver_rss_mb: float = 0.0
    total_rss_mb: float = 0.0
    ray_workers: int = 0
    actors: int = 0


class Sampler:
    """Samples every ``every_s`` until stopped; keeps the peaks."""

    def __init__(self, every_s: float = 0.25) -> None:
        self.peak = Peak()
        self._stop = threading.Event()
        self._every = every_s
        self._thread = threading.Thread(target=self._loop, daemon=True, name="bench-sampler")
        self._cpu: dict[int, tuple[str, float]] = {}
        self._cpu0 = {pid: _cpu_s(pid) for pid in _all_cmdlines()}
        self._own_s = 0.0  # CPU of the sampling thread (counted in the driver's process)

    def cpu_by_group(self) -> dict[str, float]:
        """CPU seconds used during the sampling by each kind of process (where the time goes)."""
        out: dict[str, float] = {}
        for group, secs in self._cpu.values():
            out[group] = out.get(group, 0.0) + secs
        if "driver" in out:  # the sampling itself runs in the driver's process: not the product's CPU
            out["driver"] = max(0.0, out["driver"] - self._own_s)
        out = {group: round(secs, 1) for group, secs in out.items()}
        return dict(sorted(out.items(), key=lambda kv: -kv[1]))

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self.sample()

    def sample(self) -> None:
        """One pass over /proc (it runs in the driver's process, so it must stay cheap: its own
        CPU would count as the driver's)."""
        me = os.getpid()
        cmdlines = _all_cmdlines()
        for pid, cmd in cmdlines.items():
            group = "driver" if pid == me else next((g for g, needle in GROUPS if needle in cmd), None)
            if group:
                self._cpu[pid] = (group, _cpu_s(pid) - self._cpu0.get(pid, 0.0))
        driver = _rss_kb(me) / 1024
        procs = [p for p, c in cmdlines.items() if _is_ray(c)]
        workers = [p for p in procs if is_worker(cmdlines[p])]
        actors = [p for p in procs if cmdlines[p].startswith("ray::") and "Actor" in cmdlines[p]]
        total = driver + sum(_rss_kb(p) for p in procs) / 1024
        pk = self.peak
        pk.driver_rss_mb = max(pk.driver_rss_mb, driver)
        pk.total_rss_mb = max(pk.total_rss_mb, total)
        pk.ray_workers = max(pk.ray_workers, len(workers))
        pk.actors = max(pk.actors, len(actors))

    def _loop(self) -> None:
        # often enough that a process living a second or two (a fetcher of a small night) is seen
        # near its end: a process's CPU is read while it lives, never after it exits
        while not self._stop.wait(self._every):
            started = time.thread_time()
            self.sample()
            self._own_s += time.thread_time() - started
