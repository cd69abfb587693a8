"""One benchmark scenario, run in its own process (fresh Ray, clean peak-RSS figures).

    python -m bench.scenario '<json spec>'   → prints ``RESULT {json}`` as its last line

Kinds: ``pipeline`` (the product: NightlyJob through Ray supervisors), ``late`` (nights with the
refetch window, before and after the platforms restate a few days), ``naive`` (what a team
would write without it: asyncio + httpx, fixed retries with a fixed sleep, no shared quota),
``publish`` (RDB publish vs raw COPY). The local stack is started by bench/run.py; the spec
carries its endpoints.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
import urllib.request
from datetime import UTC, date, timedelta
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent


def sim_call(url: str, path: str, body: Any = None) -> Any:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url + path, data=data, method="POST" if body is not None else "GET",
                                 headers={"content-type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as resp:  # noqa: S310 - loopback
        return json.loads(resp.read() or b"null")


def configure_sims(spec: dict[str, Any]) -> None:
    for media, m in spec["media"].items():
        url = spec["stack"]["sims"][media]
        sim_call(url, "/_sim/config", {
            "latency_ms": spec["latency_ms"], "jitter_ms": spec["jitter_ms"], "fault_rate": spec["fault_rate"],
            "faults": spec["faults"], "app_rps": m["quota_rps"], "account_rps": 0, "job_polls": 1,
            "hang_s": spec.get("hang_s", 3.0), "regain_minutes": 0, "page_size": spec.get("page_size", 500),
        })
        sim_call(url, "/_sim/reset", {})


def sim_stats(spec: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {media: sim_call(spec["stack"]["sims"][media], "/_sim/stats") for media in spec["media"]}


def build_config(spec: dict[str, Any], workdir: Path) -> Any:
    from ingest.config import load_config
    from sandbox.oauth_sim import TOKEN_ENDPOINTS

    stack = spec["stack"]
    media_over: dict[str, Any] = {}
    for media, m in spec["media"].items():
        base = {"meta": 300_000_000, "google_ads": 3_000_000_000, "yahoo_ads": 3_000_000}[media]
        media_over[media] = {
            "base_url": stack["sims"][media],
            **({"token_url": stack["sims"][media] + TOKEN_ENDPOINTS[media][0]} if media in TOKEN_ENDPOINTS else {}),
            "accounts": [{"id": str(base + i), "advertiser": f"adv_{i % 20}"} for i in range(m["accounts"])],
            "fetchers": m.get("fetchers", 1),
            "concurrency": m.get("concurrency", 64),
            "timeout_s": spec.get("timeout_s", 2.0),
            # configured as an operator would: the platform's quota, and the network's jitter (the
            # simulated one): the limiter's window guard keeps arrivals within the quota
            "quota": {"requests_per_second": m["quota_rps"], "burst": 1,
                      "arrival_jitter_s": spec.get("arrival_jitter_s", spec["jitter_ms"] / 1000),
                      "max_concurrent_jobs": 64, "poll_min_s": 0.05, "poll_max_s": 1.0},
            "retry": {"max_attempts": 8, "backoff_min_s": 0.05, "backoff_max_s": 2.0},
            "breaker": {"failure_threshold": 50, "open_s": 1.0},
            **({"options": {"mode": spec["meta_mode"], "page_limit": spec.get("page_size", 500)}}
               if media == "meta" and spec.get("meta_mode") else {}),
            "lookback_days": spec.get("lookback", {}).get(media, 0),
        }
    return load_config(REPO / "config" / "local.yaml", {
        "gcs": {"bucket": spec["bucket"], "endpoint": stack["gcs"]},
        "bigquery": {"dataset": spec["dataset"], "endpoint": stack["bq"]},
        "database": {"url": f"sqlite:///{workdir / 'ledger.db'}", "url_env": None},
        "sandbox": None,
        "media": media_over,
        "max_backfill_days": 400,
        "base_dir": str(workdir),
        **({"ray": spec["ray"]} if spec.get("ray") else {}),
    })


def dates_of(spec: dict[str, Any]) -> list[date]:
    last = date.fromisoformat(spec["last_date"])
    return [last - timedelta(days=i) for i in range(spec["days"])][::-1]


def minimum_requests(cfg: Any) -> dict[str, int]:
    from ingest.media.base import Secret
    from ingest.supervision.fetcher import build_connector

    return {m: build_connector(m, s, {k: Secret("x") for k in s.credentials}).minimum_requests()
            for m, s in cfg.media.items()}


def meta_minimum(spec: dict[str, Any], cfg: Any) -> float:
    """Meta's fewest requests per report: one per page of the report's rows (a range report's
    days together), plus create and one poll when async."""
    import math

    from ingest.job import MAX_RANGE_DAYS
    from sandbox.truth import truth_rows

    # a page holds what the connector asks for (its page_limit option) up to what the simulator serves
    page = min(cfg.media["meta"].options.get("page_limit", 500), spec.get("page_size", 500))
    extra = 2 if spec.get("meta_mode") == "async" else 0
    seed = 7
    days = dates_of(spec)
    step = MAX_RANGE_DAYS if spec.get("ranges") else 1
    reports = [days[i:i + step] for i in range(0, len(days), step)]
    counts = [extra + max(1, math.ceil(sum(len(truth_rows("meta", a, d, seed)) for d in report) / page))
              for a in cfg.media["meta"].account_ids() for report in reports]
    return sum(counts) / len(counts)


def reports_per_account(spec: dict[str, Any]) -> int:
    """One per date, or (``ranges``: a backfill) one per MAX_RANGE_DAYS consecutive dates."""
    import math

    from ingest.job import MAX_RANGE_DAYS

    return math.ceil(spec["days"] / MAX_RANGE_DAYS) if spec.get("ranges") else spec["days"]


def figures(spec: dict[str, Any], cfg: Any, wall: float, reports: int,
            stats: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Wall vs the quota bound, requests per report vs the flow's minimum, violations."""
    mins: dict[str, float] = dict(minimum_requests(cfg))
    if "meta" in mins:
        mins["meta"] = round(meta_minimum(spec, cfg), 3)
    per_media = {}
    bound = 0.0
    for media, st in stats.items():
        quota = spec["media"][media]["quota_rps"]
        faults = st["faults_total"]
        rejected = st["violations"] + st.get("auth_failures", 0) + st.get("down_rejections", 0)
        unavoidable = (st["requests"] - rejected - faults) + faults  # successful + one per injected fault
        n = spec["media"][media]["accounts"] * reports_per_account(spec)
        per_media[media] = {"reports": n, "requests": st["requests"],
                            "requests_per_report": round(st["requests"] / n, 3),
                            "minimum_per_report": mins[media], "faults_injected": faults,
                            "violations": st["violations"],
                            "bound_s": round(unavoidable / quota, 2)}
        bound = max(bound, unavoidable / quota)
    requests = sum(s["requests"] for s in stats.values())
    minimum = sum(per_media[m]["reports"] * per_media[m]["minimum_per_report"] for m in per_media)
    return {
        "reports": reports, "wall_s": round(wall, 2), "bound_s": round(bound, 2),
        "wall_over_bound": round(wall / bound, 3) if bound else None,
        "requests_per_report": round(requests / reports, 3), "minimum_per_report": round(minimum / reports, 3),
        "requests_over_minimum": round(requests / minimum, 3),
        "violations": sum(s["violations"] for s in stats.values()),
        "faults_injected": sum(s["faults_total"] for s in stats.values()),
        "per_report_ms": round(wall / reports * 1000, 2), "media": per_media,
    }


def per_second(counts: dict[str, int]) -> list[int]:
    """A simulator's arrivals per wall-clock second as a list from its first second to its last."""
    if not counts:
        return []
    secs = {int(k): v for k, v in counts.items()}
    return [secs.get(t, 0) for t in range(min(secs), max(secs) + 1)]


def run_pipeline(spec: dict[str, Any], workdir: Path) -> dict[str, Any]:
    from bench.procs import Sampler
    from ingest.job import NightlyJob, RunRequest

    configure_sims(spec)
    cfg = build_config(spec, workdir)
    dates = dates_of(spec)
    job = NightlyJob(cfg)
    with Sampler() as sampler:
        report = job.execute(RunRequest("backfill", dates, cfg.media_names(), force=True,
                                        stage2=spec.get("stage2", True), ranges=spec.get("ranges", False)))
    stats = sim_stats(spec)
    reports = sum(m.planned for m in report.media.values())
    # wall = the fetch phase without starting the local Ray itself (a nightly cluster is already up)
    out = figures(spec, cfg, report.fetch_s - report.ray_start_s, reports, stats)
    out["ray_start_s"] = round(report.ray_start_s, 2)
    run = job.ledger.run(report.run_id) or {}
    finished: dict[str, float] = {}
    for t in job.ledger.task_rows(dates=dates):
        if t["finished_at"] is not None and run.get("started_at") is not None:
            finished[t["media"]] = max(finished.get(t["media"], 0.0),
                                       (t["finished_at"] - run["started_at"]).total_seconds())
    for media, secs in finished.items():  # when each media's last report landed, from the run's start
        out_media = out["media"].get(media)
        if out_media is not None:
            out_media["last_report_s"] = round(secs, 2)
    if run.get("started_at") is not None:  # when its first and last request arrived, and its violations
        started = run["started_at"]
        epoch = (started if started.tzinfo else started.replace(tzinfo=UTC)).timestamp()
        for media, st in stats.items():
            if media in out["media"] and st.get("first_at"):
                out["media"][media].update({
                    "first_request_s": round(st["first_at"] - epoch, 2),
                    "last_request_s": round(st["last_at"] - epoch, 2),
                    "violations_s": [round(t - epoch, 2) for t in st.get("violations_at", [])],
                    # requests arriving in each second of the sending: where it ran below the quota
                    "arrivals_by_s": per_second(st.get("arrivals_by_s", {}))})
    failed = sum(m.failed for m in report.media.values())
    out.update({
        "outcome": report.outcome, "failed_reports": failed,
        "first_failures": [f"{f['media']}/{f['account_id']}/{f['date']}: {f['error_message']}"
                           for f in report.failures[:3]],
        "retries": sum(m.retries for m in report.media.values()),
        "ray_worker_processes": sampler.peak.ray_workers, "actors": sampler.peak.actors,
        "driver_peak_rss_mb": round(sampler.peak.driver_rss_mb, 1),
        "total_peak_rss_mb": round(sampler.peak.total_rss_mb, 1),
        "cpu_s_by_process": sampler.cpu_by_group(),
    })
    # the CPU of our own processes (not the emulators', simulators' or Ray's), per report and per
    # partition (report-day: what a range report covers several of)
    ours = sum(v for k, v in out["cpu_s_by_process"].items() if k in ("fetchers", "supervisors", "driver"))
    partitions = sum(m["accounts"] for m in spec["media"].values()) * spec["days"]
    out.update({"partitions": partitions, "our_cpu_ms_per_report": round(ours / reports * 1000, 2),
                "our_cpu_ms_per_partition": round(ours / partitions * 1000, 2)})
    if report.stage2 is not None:
        s2 = report.stage2
        out["stage2"] = {"seconds": round(report.stage2_s, 2), "dates": len(dates), "partitions": len(s2.partitions),
                         "bq_load_jobs": s2.bq_load_jobs, "bq_query_jobs": s2.bq_query_jobs,
                         "durations_s": s2.durations_s, "csv_objects_read": s2.csv_objects_read,
                         "load_s_per_date": round(s2.durations_s.get("load", 0) / len(dates), 3),
                         "aggregate_s_per_date": round(s2.durations_s.get("aggregate", 0) / len(dates), 3),
                         "failed_partitions": len(s2.by_status("failed"))}
    return out


async def _naive(spec: dict[str, Any], cfg: Any, attempts: int, sleep_s: float, parallel: int) -> tuple[int, int]:
    """asyncio.gather over every report with a semaphore; 3 tries with a 1 s sleep; no quota."""
    import httpx

    from ingest.clients import gcs_client
    from ingest.media.base import HttpSession, Secret, rows_to_csv
    from ingest.storage import ReportPaths, ReportStore
    from ingest.supervision.fetcher import build_connector

    store = ReportStore(gcs_client(cfg.gcs, cfg.project), cfg.gcs.bucket)
    store.ensure_bucket()
    sem = asyncio.Semaphore(parallel)
    ok = failed = 0

    async def one(client: httpx.AsyncClient, media: str, account: str, day: date) -> None:
        nonlocal ok, failed
        settings = cfg.media[media]
        conn = build_connector(media, settings, {k: Secret("bench-token") for k in settings.credentials})

        async def poll(_: int) -> None:
            await asyncio.sleep(1.0)

        async with sem:
            for _attempt in range(attempts):
                try:
                    rows = await conn.fetch(HttpSession(client, poll_wait=poll), account, day)
                    paths = ReportPaths(cfg.gcs.bucket, media, account, day)
                    await asyncio.to_thread(store.put, paths.day_csv(day), rows_to_csv(rows), "text/csv")
                    ok += 1
                    return
                except Exception:  # noqa: BLE001 - the naive way: catch everything, sleep, try again
                    await asyncio.sleep(sleep_s)
            failed += 1

    async with httpx.AsyncClient(timeout=cfg.media["meta"].timeout_s,
                                 limits=httpx.Limits(max_connections=parallel)) as client:
        await asyncio.gather(*(one(client, m, a, d)
                               for m, s in cfg.media.items() for a in s.account_ids() for d in dates_of(spec)))
    return ok, failed


def run_late(spec: dict[str, Any], workdir: Path) -> dict[str, Any]:
    """Issue 15's figures: a nightly with each media's refetch window against the same night
    without one, then a night after the platforms restated a few days of the window."""
    from ingest.job import NightlyJob, RunRequest

    configure_sims(spec)
    for media in spec["media"]:
        sim_call(spec["stack"]["sims"][media], "/_sim/config", {"late_conversions": {}})
    cfg = build_config(spec, workdir)
    last = date.fromisoformat(spec["last_date"])
    accounts = {m: spec["media"][m]["accounts"] for m in spec["media"]}

    from bench.procs import Sampler
    from sandbox.checks import csv_generations

    writes: list[dict[str, Any]] = []

    def night(day: date, lookback: bool) -> tuple[Any, dict[str, int], float]:
        before = {m: s["requests"] for m, s in sim_stats(spec).items()}
        objects = csv_generations(cfg)
        started = time.perf_counter()
        with Sampler() as sampler:
            report = NightlyJob(cfg).execute(RunRequest("run", [day], cfg.media_names(), lookback=lookback))
        took = time.perf_counter() - started
        after = {m: s["requests"] for m, s in sim_stats(spec).items()}
        now = csv_generations(cfg)
        days = sum(n * (1 + (spec["lookback"][m] if lookback else 0)) for m, n in accounts.items())
        fetchers = sampler.cpu_by_group().get("fetchers", 0.0)
        writes.append({"csv_objects_written": sum(1 for n, g in now.items() if objects.get(n) != g),
                       "report_days": days, "fetchers_cpu_s": fetchers,
                       "fetchers_cpu_ms_per_report_day": round(fetchers / days * 1000, 2)})
        return report, {m: after[m] - before[m] for m in after}, took

    baseline, base_req, base_s = night(last - timedelta(days=1), lookback=False)  # yesterday only
    first, first_req, first_s = night(last, lookback=True)  # first night with the window: every day is new
    changed = [last - timedelta(days=d) for d in (2, 5, 9)]  # the platforms restate three days
    for media in spec["media"]:
        sim_call(spec["stack"]["sims"][media], "/_sim/config",
                 {"late_conversions": {d.isoformat(): 3 for d in changed}})
    second, second_req, second_s = night(last + timedelta(days=1), lookback=True)
    per_account = {m: {"no_lookback": round(base_req[m] / accounts[m], 2),
                       "with_lookback": round(second_req[m] / accounts[m], 2),
                       "ratio": round(second_req[m] / base_req[m], 2), "lookback_days": spec["lookback"][m]}
                   for m in spec["media"]}

    def stage(r: Any) -> dict[str, Any]:
        s2 = r.stage2
        return {"partitions_published": len(s2.partitions) if s2 else 0, "bq_load_jobs": s2.bq_load_jobs if s2 else 0,
                "bq_query_jobs": s2.bq_query_jobs if s2 else 0, "stage2_s": round(r.stage2_s, 1),
                "csv_objects_read": s2.csv_objects_read if s2 else 0,
                "stage2_list_s": round(s2.durations_s.get("list", 0.0), 2) if s2 else 0.0}

    return {
        "accounts": sum(accounts.values()), "outcomes": [baseline.outcome, first.outcome, second.outcome],
        "requests_per_account": per_account,
        "max_request_ratio": max(v["ratio"] for v in per_account.values()),
        "no_lookback_night": {**stage(baseline), **writes[0], "wall_s": round(base_s, 1)},
        "first_night": {**stage(first), **writes[1], "wall_s": round(first_s, 1)},
        "restated_night": {**stage(second), **writes[2], "wall_s": round(second_s, 1), "days_restated": len(changed),
                           "partitions_expected": len(spec["media"]) * (len(changed) + 1)},
        "media_tables": len(spec["media"]),
    }


def run_naive(spec: dict[str, Any], workdir: Path) -> dict[str, Any]:
    from bench.procs import Sampler

    configure_sims(spec)
    cfg = build_config(spec, workdir)
    with Sampler() as sampler:
        started = time.perf_counter()
        ok, failed = asyncio.run(_naive(spec, cfg, attempts=3, sleep_s=1.0, parallel=spec.get("naive_parallel", 64)))
        wall = time.perf_counter() - started
    out = figures(spec, cfg, wall, ok + failed, sim_stats(spec))
    out.update({"failed_reports": failed, "driver_peak_rss_mb": round(sampler.peak.driver_rss_mb, 1),
                "ray_worker_processes": 0, "total_peak_rss_mb": round(sampler.peak.driver_rss_mb, 1)})
    return out


def run_cluster(spec: dict[str, Any], workdir: Path) -> dict[str, Any]:
    """Issue 17: fetch throughput at generous quotas on the rehearsal cluster (Ray's autoscaler
    over its fake multi-node provider, node types from ray-cluster.yaml) with ``workers`` fetcher
    nodes. Throughput is measured from the first report landed to the last (the nodes' start-up
    is reported apart): what the night gains per node once they are up."""
    import os

    # the head listens on 127.0.0.1 only; a driver on the same machine must say 127.0.0.1 too (Ray
    # would swap loopback for the machine's address). Set before Ray is imported (read once).
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    os.environ["RAY_AUTH_MODE"] = "token"  # the rehearsal cluster's; Ray reads it once per process
    from sandbox.cluster import FakeCluster

    workers = spec["workers"]
    cluster = FakeCluster(env=dict(os.environ), head_cpus=1, idle_timeout_minutes=5, max_workers=workers)
    cluster.start()
    try:
        from ingest.job import NightlyJob, RunRequest

        configure_sims(spec)
        # every fetcher takes one fetcher_slot: 2 per scaled node, so 2 × workers fetchers fill the nodes
        cfg = build_config({**spec, "ray": {"address": cluster.gcs_address, "fetcher_resource": "fetcher_slot"}},
                           workdir)
        job = NightlyJob(cfg)
        started = time.perf_counter()
        report = job.execute(RunRequest("backfill", dates_of(spec), list(spec["media"]), force=True, stage2=False))
        wall = time.perf_counter() - started
        finished = sorted(t["finished_at"] for t in job.ledger.task_rows(dates=dates_of(spec)) if t["finished_at"])
        reports = sum(m.planned for m in report.media.values())
        span = (finished[-1] - finished[0]).total_seconds() if len(finished) > 1 else wall
        return {"workers": workers, "fetchers": sum(m.get("fetchers", 1) for m in spec["media"].values()),
                "reports": reports, "failed_reports": report.media.failed, "wall_s": round(wall, 1),
                "landing_s": round(span, 1), "reports_per_s": round(len(finished) / span, 1) if span else None,
                "nodes_seen": workers}
    finally:
        cluster.stop()


def run_publish(spec: dict[str, Any], _workdir: Path) -> dict[str, Any]:
    from bench.publish import bench_publish

    return bench_publish(spec["database_url"], rows=spec["rows"]).as_dict()


def run_gcs(spec: dict[str, Any], workdir: Path) -> dict[str, Any]:
    from bench.gcs_latency import run_gcs_latency

    return run_gcs_latency(build_config(spec, workdir), spec["partitions"], spec["objects"], spec["delay_ms"] / 1000)


def run_floor(spec: dict[str, Any], workdir: Path) -> dict[str, Any]:
    from bench.floor import ray_floor, report_floor

    ray = ray_floor(spec["actors"], spec["hold_s"])  # first: its driver figure includes importing Ray
    configure_sims(spec)
    cfg = build_config(spec, workdir)
    return {"ray": ray, "library": {m: report_floor(cfg, m, spec["reports"], spec["concurrency"])
                                    for m in spec["media"]}}


def main() -> None:
    import tempfile

    spec = json.loads(sys.argv[1])
    kind = spec["kind"]
    with tempfile.TemporaryDirectory(prefix=f"bench-{kind}-") as tmp:
        result = {"pipeline": run_pipeline, "naive": run_naive, "publish": run_publish,
                  "late": run_late, "cluster": run_cluster, "gcs": run_gcs, "floor": run_floor}[kind](spec, Path(tmp))
    print("RESULT " + json.dumps(result, default=str), flush=True)


if __name__ == "__main__":
    main()
