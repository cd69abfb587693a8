"""``make cluster-rehearsal``: the production submit line against a local autoscaling cluster.

What it proves, on one machine (shared/DESIGN.md has the recipe and its pitfalls):

1. a head with Ray's autoscaler and fake multi-node provider, worker node types derived from
   ``ray-cluster.yaml`` (``sandbox/cluster.py``), token auth as Ray 2.60 has it;
2. the README's ``ray job submit`` line, **verbatim** but for the head's address, run from a
   copy of this checkout whose ``config/pipeline.yaml`` differs from production only in its
   endpoints (the local stack: fake-gcs-server, bqemulator, the API simulators) and accounts;
3. fetchers wait for worker nodes, the autoscaler adds them, and one worker node is killed
   (its raylet and every process under it) while it is fetching;
4. the run still ends SUCCESS with every report done, mart totals equal the simulators'
   truth, the run's summary and the supervisors' placement are in the submit line's output,
   and the idle workers are removed after the idle timeout.

Exit code 0 only when all of that holds; the last line says what happened.
"""

from __future__ import annotations

import os

if __name__ == "__main__":  # only as a program: Ray reads it once per process, and the cluster uses token auth
    os.environ.setdefault("RAY_AUTH_MODE", "token")  # (imported by tests, it must not change their local Ray)

import argparse  # noqa: E402
import re  # noqa: E402
import shutil  # noqa: E402
import signal  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402
from datetime import date  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import yaml  # noqa: E402

from sandbox.checks import expected_totals, mart_totals  # noqa: E402
from sandbox.cli import SANDBOX_CREDENTIALS  # noqa: E402
from sandbox.cluster import FakeCluster  # noqa: E402
from sandbox.oauth_sim import TOKEN_ENDPOINTS  # noqa: E402
from sandbox.stack import LocalStack, StackSpec, free_port  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
README = REPO / "README.md"
#: the placeholder the README's submit line uses for the head's dashboard address
ADDRESS_PLACEHOLDER = "http://HEAD:8265"
MEDIA = ("meta", "google_ads", "yahoo_ads")


def readme_submit_line(readme: Path = README) -> str:
    """The one ``ray job submit`` line of the README's production section (continuations joined)."""
    text = readme.read_text()
    section = text.split("## Running in production", 1)[1].split("\n## ", 1)[0]
    lines = re.sub(r"\\\n\s*", "", section).splitlines()
    found = [ln.strip() for ln in lines if ln.strip().startswith("ray job submit ")]
    if len(found) != 1:
        raise ValueError(f"{readme}: expected exactly one `ray job submit` line in 'Running in production', "
                         f"found {len(found)}")
    if ADDRESS_PLACEHOLDER not in found[0]:
        raise ValueError(f"{readme}: the submit line has no {ADDRESS_PLACEHOLDER} placeholder")
    return found[0]


def local_pipeline_config(stack: LocalStack, database_url: str, extra_accounts: int = 0,
                          isolate: str | None = None) -> dict[str, Any]:
    """config/pipeline.yaml with only endpoints (and, optionally, more accounts) changed.

    Everything else — Ray placement, quotas, retry settings, options, credential *names* — is
    production's, so the rehearsal runs what production runs. ``isolate`` suffixes the bucket
    and dataset, so tests sharing one stack never see each other's objects.
    """
    raw = yaml.safe_load((REPO / "config" / "pipeline.yaml").read_text())
    raw["project"] = stack.spec.project
    raw["gcs"]["endpoint"] = stack.spec.gcs_endpoint
    raw["bigquery"].update({"project": stack.spec.project, "endpoint": stack.spec.bq_endpoint, "location": "US"})
    if isolate:
        raw["gcs"]["bucket"] += f"-{isolate}"
        raw["bigquery"]["dataset"] += f"_{isolate}"
    raw["database"] = {"url": database_url, "url_env": None}
    raw["sandbox"] = {"root": str(stack.spec.root), "seed": stack.spec.seed}
    for media, settings in raw["media"].items():
        settings["base_url"] = stack.spec.sim_url(media)
        if media in TOKEN_ENDPOINTS:  # the simulator's OAuth endpoint instead of the platform's
            settings["token_url"] = stack.spec.sim_url(media) + TOKEN_ENDPOINTS[media][0]
        base = int(settings["accounts"][-1]["id"]) + 100
        settings["accounts"] += [{"id": str(base + i), "advertiser": settings["accounts"][i % 2]["advertiser"]}
                                 for i in range(extra_accounts)]
    return raw


def prepare_workdir(dest: Path, pipeline_config: dict[str, Any]) -> Path:
    """A copy of this checkout's tracked and new files, as `--working-dir .` would upload it."""
    files = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                           capture_output=True, check=True).stdout.decode().split("\0")
    for name in filter(None, files):
        src = REPO / name
        if src.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / name)
    (dest / "config" / "pipeline.yaml").write_text(yaml.safe_dump(pipeline_config, sort_keys=False))
    return dest


def submit_readme_line(workdir: Path, address: str, env: dict[str, str], log_path: Path) -> subprocess.Popen[bytes]:
    """Run the README's line through a shell, exactly as an operator types it, but the address."""
    line = readme_submit_line().replace(ADDRESS_PLACEHOLDER, address)
    log = open(log_path, "wb")  # noqa: SIM115 (handed to the child)
    return subprocess.Popen(["bash", "-c", line], cwd=workdir, env=env, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)


@dataclass
class Timeline:
    t0: float = field(default_factory=time.time)
    entries: list[tuple[float, str]] = field(default_factory=list)

    def add(self, what: str, at: float | None = None) -> None:
        """``at``: epoch seconds when it happened (default: now)."""
        self.entries.append(((at if at is not None else time.time()) - self.t0, what))

    def print(self) -> None:
        for offset, what in sorted(self.entries, key=lambda e: e[0]):
            print(f"  {offset:6.1f}s  {what}")


@dataclass
class NodeWatch:
    """Worker nodes seen coming and going; the one we kill is counted as removed by us."""

    timeline: Timeline
    alive: set[str] = field(default_factory=set)
    added: int = 0
    removed: int = 0
    first_added_at: float | None = None

    def update(self, nodes: set[str]) -> None:
        for node in sorted(nodes - self.alive):
            self.added += 1
            self.first_added_at = self.first_added_at or time.time()
            self.timeline.add(f"worker node added: …{node[-5:]}")
        for node in sorted(self.alive - nodes):
            self.removed += 1
            self.timeline.add(f"worker node removed: …{node[-5:]}")
        self.alive = set(nodes)

    def killed(self, node: str) -> None:
        self.alive.discard(node)
        self.removed += 1


@dataclass
class Result:
    added: int = 0
    removed: int = 0
    killed: int = 0
    lost: int = -1
    totals_equal: bool = False
    job_status: str = "?"
    requeued: int = 0
    problems: list[str] = field(default_factory=list)
    first_worker_s: float | None = None
    scale_down_s: float | None = None

    @property
    def ok(self) -> bool:
        return (not self.problems and self.added >= 1 and self.removed == self.added and self.killed == 1
                and self.lost == 0 and self.totals_equal and self.job_status == "SUCCEEDED")

    def line(self) -> str:
        return (f"rehearsal: workers added {self.added}, removed {self.removed}, nodes killed {self.killed}, "
                f"reports lost {self.lost}, totals {'equal' if self.totals_equal else 'DIFFER from'} truth")


def _fetchers_on_workers(dashboard: str, workers: set[str]) -> dict[str, list[str]]:
    """Alive fetcher actors by worker node id (Ray's state API over the dashboard)."""
    from ray.util.state import list_actors

    out: dict[str, list[str]] = {}
    try:
        actors = list_actors(address=dashboard, filters=[("state", "=", "ALIVE")], limit=1000,
                             raise_on_missing_output=False)
    except Exception:  # noqa: BLE001 - the dashboard may be busy; ask again next tick
        return out
    for actor in actors:
        if actor.class_name == "FetcherActor" and actor.node_id in workers:
            out.setdefault(actor.node_id, []).append(actor.name or "?")
    return out


def _ledger_progress(database_url: str) -> tuple[int, int]:
    """(reports done, reports known) in the ledger so far; (0, 0) before the run created it."""
    import sqlalchemy as sa

    from ingest.ledger import report_tasks

    try:
        engine = sa.create_engine(database_url)
        with engine.connect() as conn:
            rows = conn.execute(sa.select(report_tasks.c.status, sa.func.count()).group_by(report_tasks.c.status)).all()
        engine.dispose()
    except sa.exc.OperationalError:  # not created yet
        return 0, 0
    counts = {status: int(n) for status, n in rows}
    return counts.get("done", 0), sum(counts.values())


def rehearse(extra_accounts: int = 5, latency_ms: float = 100, fault_rate: float = 0.05,
             scale_down_timeout_s: float = 150, job_timeout_s: float = 600,
             keep: bool = False) -> tuple[Result, Timeline]:
    result = Result()
    timeline = Timeline()
    root = Path(tempfile.mkdtemp(prefix="rehearsal-"))
    stack = LocalStack(StackSpec(root=root / "stack", project="ad-agency-prod", gcs_port=free_port(),
                                 bq_port=free_port(), bq_grpc_port=free_port(),
                                 sim_ports={m: free_port() for m in MEDIA}, seed=7,
                                 fault_rate=fault_rate, latency_ms=latency_ms))
    database_url = f"sqlite:///{root / 'mart.db'}"
    env = {**SANDBOX_CREDENTIALS, **os.environ}
    env.pop("DATABASE_URL", None)
    cluster: FakeCluster | None = None
    try:
        stack.up()
        env.update(stack.env())
        cluster = FakeCluster(env=env, head_cpus=1, idle_timeout_minutes=0.5)
        cluster.start()
        timeline.add(f"head up ({cluster.dashboard_url}), local stack under {root}")
        raw = local_pipeline_config(stack, database_url, extra_accounts)
        workdir = prepare_workdir(root / "work", raw)
        from ingest.config import parse_config

        cfg = parse_config(raw, source="rehearsal pipeline.yaml")
        day = cfg.yesterday()
        submitted_at = time.time()
        job = submit_readme_line(workdir, cluster.dashboard_url, cluster.client_env(), root / "job.log")
        timeline.add(f"submitted the README's line for {day} "
                     f"({sum(len(m.accounts) for m in cfg.media.values())} reports)")
        watch = NodeWatch(timeline)
        killed = 0
        deadline = time.monotonic() + job_timeout_s
        while job.poll() is None:
            if time.monotonic() > deadline:
                job.kill()
                result.problems.append(f"the job did not finish within {job_timeout_s:.0f}s")
                break
            nodes = set(cluster.worker_nodes())
            watch.update(nodes)
            if not killed:
                done, known = _ledger_progress(database_url)
                busy = _fetchers_on_workers(cluster.dashboard_url, nodes)
                if busy and 0 < done < known:  # fetching: some reports landed, others in flight
                    victim = max(busy, key=lambda n: len(busy[n]))
                    procs = cluster.kill_node(victim)
                    watch.killed(victim)
                    killed += 1
                    timeline.add(f"killed worker node …{victim[-5:]} ({procs} processes; fetchers "
                                 f"{', '.join(sorted(busy[victim]))}; {done}/{known} reports done)")
            time.sleep(0.5)
        result.killed = killed
        timeline.add(f"job ended (submit exit code {job.returncode})")
        result.job_status = _job_status(cluster)
        result.requeued = _count_requeued(cluster.temp_dir)
        if killed:
            timeline.add(f"reports re-queued after the node loss (supervisor logs): {result.requeued}")
        result.lost, restarts = _lost_reports(database_url, day)
        for at, what in restarts:
            timeline.add(what, at=at)
        result.totals_equal = mart_totals(database_url, day) == expected_totals(cfg, day)
        # scale-down: the autoscaler removes every idle worker after idle_timeout_minutes
        ended = time.monotonic()
        while time.monotonic() < ended + scale_down_timeout_s and watch.alive | set(cluster.worker_nodes()):
            watch.update(set(cluster.worker_nodes()))
            time.sleep(1)
        watch.update(set(cluster.worker_nodes()))
        result.added, result.removed = watch.added, watch.removed
        if watch.first_added_at is not None:
            result.first_worker_s = watch.first_added_at - submitted_at
        if watch.alive:
            result.problems.append(f"workers still up {scale_down_timeout_s:.0f}s after the job ended")
        else:
            result.scale_down_s = time.monotonic() - ended
            timeline.add(f"all workers removed, {result.scale_down_s:.0f}s after the job ended")
        job_log = (root / "job.log").read_text(errors="replace")
        if result.job_status != "SUCCEEDED":
            result.problems.append(f"job status {result.job_status}; log tail:\n{job_log[-3000:]}")
        # the run's own summary and the supervisors' placement reach the operator's terminal
        for wanted in (": SUCCESS (exit 0)", '"fetchers_planned"'):
            if wanted not in job_log:
                result.problems.append(f"{wanted} missing from the submit line's output")
    finally:
        if cluster is not None:
            cluster.stop()
        stack.down()
        if not keep:
            shutil.rmtree(root, ignore_errors=True)
    return result, timeline


def _job_status(cluster: FakeCluster) -> str:
    jobs = cluster.jobs()
    return str(jobs[-1]["status"]) if jobs else "NONE"


def _count_requeued(temp_dir: str) -> int:
    """`report_requeued` log lines the supervisors wrote (Ray keeps worker logs under the session)."""
    logs = Path(temp_dir) / "session_latest" / "logs"
    return sum(f.read_text(errors="replace").count('"report_requeued"') for f in logs.glob("worker-*") if f.is_file())


def _lost_reports(database_url: str, day: date) -> tuple[int, list[tuple[float, str]]]:
    """Reports of the night not done in the ledger (-1: no ledger), and the fetcher restarts it recorded."""
    import sqlalchemy as sa

    from ingest.ledger import report_tasks, task_events

    engine = sa.create_engine(database_url)
    try:
        with engine.connect() as conn:
            statuses = conn.execute(sa.select(report_tasks.c.status, sa.func.count())
                                    .where(report_tasks.c.date == day).group_by(report_tasks.c.status)).all()
            restarts = conn.execute(sa.select(task_events.c.media, task_events.c.message, task_events.c.at)
                                    .where(task_events.c.kind == "restart").order_by(task_events.c.id)).all()
    except sa.exc.OperationalError:
        return -1, []
    finally:
        engine.dispose()
    if not statuses:
        return -1, []
    lost = sum(int(n) for status, n in statuses if status != "done")
    return lost, [(_epoch(at), f"(ledger) {m}: {msg.splitlines()[0]}") for m, msg, at in restarts]


def _epoch(at: Any) -> float:
    from datetime import UTC, datetime

    if isinstance(at, str):
        at = datetime.fromisoformat(at)
    return float(at.replace(tzinfo=at.tzinfo or UTC).timestamp())


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m sandbox.rehearsal", description=__doc__.split("\n\n")[0])
    p.add_argument("--extra-accounts", type=int, default=5, help="accounts added per media to pipeline.yaml's")
    p.add_argument("--keep", action="store_true", help="keep the temp dir (logs, ledger, marts)")
    args = p.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so the cluster and stack are stopped on the way out
    print("cluster rehearsal: local autoscaling cluster, the README's submit line, one worker node killed "
          "(≈2.5 min; the timeline follows at the end)", flush=True)
    result, timeline = rehearse(extra_accounts=args.extra_accounts, keep=args.keep)
    timeline.print()
    for problem in result.problems:
        print(f"  PROBLEM: {problem}")
    if result.first_worker_s is not None:
        print(f"  first worker node {result.first_worker_s:.0f}s after submit; "
              f"scale-down {result.scale_down_s if result.scale_down_s is not None else float('nan'):.0f}s "
              "after the job")
    print(result.line())
    return 0 if result.ok else 1


if __name__ == "__main__":
    sys.exit(main())
