"""``make bench``: fetch speed against the quota limit, the naive baseline, scale, stage 2.

Starts its own local stack (free ports, temporary root), runs each scenario in a fresh
process (bench/scenario.py), prints one table and writes bench/results.json.
``python -m bench.run --quick`` runs small sizes (a smoke run of the harness).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from sandbox.cli import SANDBOX_CREDENTIALS
from sandbox.stack import LocalStack, StackSpec, free_port

REPO = Path(__file__).resolve().parent.parent
MEDIA = ("meta", "google_ads", "yahoo_ads")
FAULTS = {"throttle": 1.0, "server_error": 1.0, "timeout": 0.0, "drop": 0.0, "job_failed": 0.0,
          "truncated": 0.0, "auth": 0.0, "drift": 0.0}
#: every kind a careful client recovers from, in equal parts (auth and drift are fatal by design)
RECOVERABLE = {"throttle": 1.0, "server_error": 1.0, "timeout": 1.0, "drop": 1.0, "job_failed": 1.0,
               "truncated": 1.0, "auth": 0.0, "drift": 0.0}


def scenarios(quick: bool) -> list[tuple[str, dict[str, Any]]]:
    k = 0.1 if quick else 1.0
    nightly_accounts = max(4, int(334 * k))  # 3 × 334 = 1,002 reports on one date
    nightly: dict[str, Any] = {
        "latency_ms": 50, "jitter_ms": 15, "fault_rate": 0.10, "faults": FAULTS, "days": 1, "last_date": "2026-11-20",
        "media": {"meta": {"accounts": nightly_accounts, "quota_rps": 12},
                  "google_ads": {"accounts": nightly_accounts, "quota_rps": 12},
                  "yahoo_ads": {"accounts": nightly_accounts, "quota_rps": 36}},
    }
    out: list[tuple[str, dict[str, Any]]] = [
        ("nightly", {"kind": "pipeline", **nightly}),
        ("naive baseline", {"kind": "naive", **nightly}),
        # the nightly's fixed cost: the same actors start, stage 2 runs, but one account per media
        ("empty night", {"kind": "pipeline", **nightly, "fault_rate": 0.0,
                         "media": {m: {**v, "accounts": 1} for m, v in nightly["media"].items()}}),
    ]
    # issue 14: every recoverable fault kind, on every request type, in equal parts; Meta async
    # (create, polls, pages) so a fault can land mid-report; 0 reports may be lost
    for rate in (0.10, 0.20):
        out.append((f"faults {rate:.0%}", {
            "kind": "pipeline", **nightly, "fault_rate": rate, "faults": RECOVERABLE, "meta_mode": "async",
            "page_size": 2}))
    # issue 15: the refetch window (Meta 28, Google 30, Yahoo 30 days) against the same night without it
    out.append(("late data", {
        "kind": "late", "latency_ms": 20, "jitter_ms": 5, "fault_rate": 0.0, "faults": FAULTS,
        "last_date": "2026-11-20",
        "lookback": {"meta": 28, "google_ads": 30, "yahoo_ads": 30},
        "meta_mode": "async", "page_size": 500,  # as config/pipeline.yaml: async insights, 500 rows a page
        "media": {m: {"accounts": max(4, int(50 * k)), "quota_rps": 12 if m != "yahoo_ads" else 36} for m in MEDIA},
    }))
    days = 10
    for frac, label in ((0.25, "scale ¼"), (0.5, "scale ½"), (1.0, "scale")):
        accounts = max(2, int(667 * frac * k))  # 3 media × 667 accounts × 10 days ≈ 20,000 reports
        out.append((label, {
            "kind": "pipeline", "latency_ms": 20, "jitter_ms": 5, "fault_rate": 0.0, "faults": FAULTS, "stage2": False,
            "days": days, "last_date": "2026-11-20",
            "media": {m: {"accounts": accounts, "quota_rps": 400 if m != "yahoo_ads" else 1200, "concurrency": 96}
                      for m in MEDIA},
        }))
    # the same 20,000 partitions as `ingest backfill` plans them: each account's 10 days in one range report
    out.append(("backfill", {
        "kind": "pipeline", "latency_ms": 20, "jitter_ms": 5, "fault_rate": 0.0, "faults": FAULTS, "stage2": False,
        "days": days, "last_date": "2026-11-20", "ranges": True,
        "media": {m: {"accounts": max(2, int(667 * k)), "quota_rps": 400 if m != "yahoo_ads" else 1200,
                      "concurrency": 96} for m in MEDIA},
    }))
    # issue 17: the same fetch at generous quotas on the rehearsal cluster with 1, 2, 4 fetcher nodes
    for workers in (1, 2, 4):
        out.append((f"cluster {workers}", {
            "kind": "cluster", "workers": workers, "latency_ms": 20, "jitter_ms": 5, "fault_rate": 0.0,
            "faults": FAULTS, "days": 10, "last_date": "2026-11-20",
            "media": {"google_ads": {"accounts": max(4, int(300 * k)), "quota_rps": 1000, "concurrency": 64,
                                     "fetchers": 2 * workers}},
        }))
    # what issue 17's CPU goals stand on: a report fetched in one process without Ray, and Ray's
    # own cost for a night's six actors (bench/floor.py)
    out.append(("floor", {"kind": "floor", "latency_ms": 20, "jitter_ms": 5, "fault_rate": 0.0, "faults": FAULTS,
                          "reports": max(40, int(400 * k)), "concurrency": 8, "actors": 2 * len(MEDIA),
                          "hold_s": 20 if not quick else 3,
                          "media": {m: {"accounts": 100, "quota_rps": 1000} for m in MEDIA}}))
    # stage 2's listings and downloads at a GCS round trip, one at a time vs several (see bench/gcs_latency.py)
    out.append(("gcs latency", {"kind": "gcs", "partitions": 30, "objects": max(5, int(50 * k)), "delay_ms": 20,
                                "latency_ms": 0, "jitter_ms": 0, "fault_rate": 0.0, "faults": FAULTS,
                                "media": {"meta": {"accounts": 1, "quota_rps": 10}}}))
    pg = os.environ.get("BENCH_DATABASE_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
    out.append(("publish", {"kind": "publish", "database_url": pg, "rows": int(1_000_000 * k)}))
    return out


def start_stack() -> LocalStack:
    """The bench's own local stack: free ports, a temporary root (never another checkout's)."""
    root = Path(tempfile.mkdtemp(prefix="bench-stack-"))
    stack = LocalStack(StackSpec(root=root, project="local-demo", gcs_port=free_port(), bq_port=free_port(),
                                 bq_grpc_port=free_port(), sim_ports={m: free_port() for m in MEDIA}, latency_ms=0))
    stack.up()
    return stack


def scenario_process(spec: dict[str, Any], stack: LocalStack) -> tuple[list[str], dict[str, str]]:
    """The command line and environment of one scenario's process against ``stack`` (its own
    bucket and dataset, the sandbox's credentials)."""
    s = stack.spec
    spec = {**spec, "stack": {"gcs": s.gcs_endpoint, "bq": s.bq_endpoint, "sims": {m: s.sim_url(m) for m in MEDIA}},
            "bucket": f"bench-{uuid.uuid4().hex[:8]}", "dataset": f"bench_{uuid.uuid4().hex[:8]}"}
    env = {**os.environ, **stack.env()}
    for var, value in SANDBOX_CREDENTIALS.items():
        env.setdefault(var, value)
    return [sys.executable, "-m", "bench.scenario", json.dumps(spec)], env


def run_one(name: str, spec: dict[str, Any], stack: LocalStack) -> dict[str, Any]:
    cmd, env = scenario_process(spec, stack)
    started = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    took = time.perf_counter() - started
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        tail = "\n".join(proc.stderr.splitlines()[-15:])
        print(f"[{name}] FAILED (exit {proc.returncode}) after {took:.0f}s\n{tail}", file=sys.stderr)
        return {"error": f"exit {proc.returncode}", "stderr_tail": tail}
    result = json.loads(lines[-1][len("RESULT "):])
    result["scenario_s"] = round(took, 1)
    print(f"[{name}] done in {took:.0f}s", file=sys.stderr)
    return result


def fmt(v: Any, spec: str = "") -> str:
    if v is None or v == "":
        return "-"
    return format(v, spec) if spec else str(v)


def table(results: dict[str, dict[str, Any]]) -> str:
    cols = [("reports", "reports", ""), ("wall s", "wall_s", ".1f"), ("bound s", "bound_s", ".1f"),
            ("wall/bound", "wall_over_bound", ".2f"), ("req/report", "requests_per_report", ".2f"),
            ("min", "minimum_per_report", ".2f"), ("req/min", "requests_over_minimum", ".2f"),
            ("violations", "violations", ""), ("faults", "faults_injected", ""), ("failed", "failed_reports", ""),
            ("ms/report", "per_report_ms", ".1f"), ("workers", "ray_worker_processes", ""),
            ("driver MB", "driver_peak_rss_mb", ".0f"), ("total MB", "total_peak_rss_mb", ".0f")]
    head = f"{'scenario':<15}" + "".join(f"{c[0]:>11}" for c in cols)
    lines = [head, "-" * len(head)]
    for name, r in results.items():
        if "reports" not in r or name.startswith("cluster "):
            continue
        lines.append(f"{name:<15}" + "".join(f"{fmt(r.get(key), spec):>11}" for _, key, spec in cols))
    nightly = results.get("nightly", {})
    if "stage2" in nightly:
        s2 = nightly["stage2"]
        lines.append(f"\nstage 2 (nightly, bqemulator): {s2['bq_load_jobs']} load jobs + "
                     f"{s2['bq_query_jobs']} query jobs; "
                     f"load {s2['load_s_per_date']:.2f}s/date, aggregate {s2['aggregate_s_per_date']:.2f}s/date, "
                     f"total {s2['seconds']:.1f}s; listing the CSVs {s2['durations_s'].get('list', 0):.2f}s, "
                     f"{s2.get('csv_objects_read', 'all')} of them read back")
    for name in ("faults 10%", "faults 20%"):
        r = results.get(name, {})
        if "media" in r:
            per = ", ".join(f"{m} {v['requests_per_report'] / v['minimum_per_report']:.2f}"
                            for m, v in r["media"].items())
            lines.append(f"{name}: lost {r.get('failed_reports')} of {r['reports']} (goal 0); "
                         "requests over the minimum "
                         f"per media (goal ≤ 1.15): {per}; wall/bound {r['wall_over_bound']:.2f} (goal ≤ 1.20); "
                         f"violations {r['violations']} (goal 0)")
    for name in ("nightly", "faults 10%", "faults 20%"):
        line = quota_line(name, results.get(name, {}))
        if line:
            lines.append(line)
    late = results.get("late data", {})
    if "requests_per_account" in late:
        per = ", ".join(f"{m} {v['with_lookback']:.2f} vs {v['no_lookback']:.2f} "
                        f"({v['ratio']:.2f}×, {v['lookback_days']} days)"
                        for m, v in late["requests_per_account"].items())
        first, again = late["first_night"], late["restated_night"]
        lines.append(f"late data ({late['accounts']} accounts): requests per account per night with the refetch window "
                     f"vs without (goal ≤ 2×): {per}")
        lines.append(f"late data: BigQuery load jobs per night {first['bq_load_jobs']} on the first night "
                     f"({first['partitions_published']} partitions) and {again['bq_load_jobs']} after a restatement "
                     f"(goal ≤ {late['media_tables']}, one per media table); partitions republished when "
                     f"{again['days_restated']} days changed: {again['partitions_published']} "
                     f"(expected {again['partitions_expected']}: those days + the new one, per media)")
        if "csv_objects_written" in again:
            lines.append(f"late data: CSV objects written {first['csv_objects_written']} on the first night "
                         f"({first['report_days']} report-days, every day new) and "
                         f"{again['csv_objects_written']} after the restatement ({again['report_days']} report-days "
                         f"refetched: only changed days are written); fetchers' CPU "
                         f"{first['fetchers_cpu_ms_per_report_day']:.1f} vs "
                         f"{again['fetchers_cpu_ms_per_report_day']:.1f} ms per report-day")
        if "csv_objects_read" in again:
            lines.append(f"late data: stage 2 read back {first['csv_objects_read']} CSV objects on the first night "
                         f"(listing {first['stage2_list_s']:.1f}s) and {again['csv_objects_read']} after the "
                         f"restatement ({again['stage2_list_s']:.1f}s); the others matched the ledger's MD5")
    cpu = [(name, r) for name, r in results.items() if "our_cpu_ms_per_partition" in r
           and (name.startswith("scale") or name == "backfill")]
    if cpu:
        per = ", ".join(f"{name} {r['our_cpu_ms_per_report']:.1f} ms/report = {r['our_cpu_ms_per_partition']:.1f} "
                        f"ms/partition ({r['reports']} reports, {r['partitions']} partitions)" for name, r in cpu)
        lines.append(f"CPU of our processes (fetchers + supervisors + driver; goal ≤ 5 ms/report): {per}")
    lines.extend(cpu_split(results))
    lines.extend(floor_lines(results))
    scale = results.get("scale", {})
    if "cpu_s_by_process" in scale:
        cpu = ", ".join(f"{k} {v:.0f}s" for k, v in scale["cpu_s_by_process"].items())
        lines.append(f"where the scale run's CPU went ({os.cpu_count()} cores): {cpu}")
    nodes = [(r["workers"], r) for name, r in results.items() if name.startswith("cluster ") and "reports_per_s" in r]
    if nodes:
        base = nodes[0][1]["reports_per_s"]
        per = ", ".join(f"{w} node{'s' if w > 1 else ''} {r['reports_per_s']:.0f} reports/s "
                        f"({r['reports_per_s'] / base:.2f}×)"
                        for w, r in nodes)
        lines.append(f"cluster (fake multi-node autoscaler, {nodes[0][1]['reports']} Google Ads reports, "
                     f"generous quota, throughput first→last report landed): {per}")
    gcs = results.get("gcs latency", {})
    if "md5_known_1_s" in gcs:
        t = gcs["threads"]
        lines.append(f"stage 2 step 1 at {gcs['delay_ms']:.0f} ms per GCS round trip ({gcs['partitions']} partitions, "
                     f"{gcs['objects']} CSVs): MD5s known (listings only) {gcs['md5_known_1_s']:.2f}s one at a time, "
                     f"{gcs[f'md5_known_{t}_s']:.2f}s {t} at a time; none known (every CSV read back) "
                     f"{gcs['none_known_1_s']:.2f}s vs {gcs[f'none_known_{t}_s']:.2f}s")
    pub = results.get("publish", {})
    if "rows" in pub:
        ratio = pub["publish_rows_per_s"] / pub["copy_rows_per_s"]
        lines.append(f"RDB publish (PostgreSQL, {pub['rows']:,} rows): "
                     f"{pub['publish_rows_per_s']:,.0f} rows/s vs raw COPY "
                     f"{pub['copy_rows_per_s']:,.0f} rows/s → {ratio:.2f} of COPY (goal ≥ 0.8)")
    return "\n".join(lines)


def _our_cpu_s(r: dict[str, Any]) -> float:
    return float(r["our_cpu_ms_per_report"]) * r["reports"] / 1000


def _per_further_report_ms(big: dict[str, Any], small: dict[str, Any]) -> float:
    """Our CPU per report that ``big`` has beyond ``small``: the marginal cost of a report."""
    return (_our_cpu_s(big) - _our_cpu_s(small)) / (big["reports"] - small["reports"]) * 1000


def cpu_split(results: dict[str, dict[str, Any]]) -> list[str]:
    """Our CPU split into what a night costs whatever its size (processes starting, stage 2: the
    empty night) and what each further report costs (the nightly beyond the empty night, and the
    scale run beyond scale ¼): the figure that sizes a cluster for a larger night."""
    out = []
    empty, nightly = results.get("empty night", {}), results.get("nightly", {})
    if "our_cpu_ms_per_report" in empty and "our_cpu_ms_per_report" in nightly:
        fixed, extra = _our_cpu_s(empty), _per_further_report_ms(nightly, empty)
        out.append(f"CPU of our processes per night (empty night: {empty['reports']} reports, the same actors, "
                   f"stage 2): {fixed:.1f}s fixed; the nightly's {nightly['our_cpu_ms_per_report']:.1f} ms/report "
                   f"= that + {extra:.1f} ms for each report beyond it (goal ≤ 5 ms/report)")
    small, full = results.get("scale ¼", {}), results.get("scale", {})
    if "our_cpu_ms_per_report" in small and "our_cpu_ms_per_report" in full and full["reports"] > small["reports"]:
        out.append(f"CPU of our processes per further report at generous quotas (scale beyond scale ¼): "
                   f"{_per_further_report_ms(full, small):.1f} ms")
    return out


def floor_lines(results: dict[str, dict[str, Any]]) -> list[str]:
    """What the CPU goals stand on (bench/floor.py): a night of the nightly's size cannot cost
    our processes less than Ray's own cost for its six actors plus each report's work measured
    in one process without Ray; and 20,000 reports cannot finish faster than the emulators'
    and simulators' core-seconds plus those reports' work in one process allow on this machine's
    cores (2 × the bound is the goal)."""
    out = []
    floor, nightly = results.get("floor", {}), results.get("nightly", {})
    lib = floor.get("library", {})
    # a report of the nightly's and the scale run's mix: both have as many reports of each media
    mix = sum(r["cpu_ms_per_report"] for r in lib.values()) / len(lib) if lib else None
    if "ray" in floor and mix is not None:
        ray = floor["ray"]
        each = ", ".join(f"{m} {r['cpu_ms_per_report']:.1f} ms ({r['requests_per_report']:.0f} "
                         f"request{'s' if r['requests_per_report'] > 1 else ''})" for m, r in lib.items())
        line = (f"floor under the CPU goal (bench/floor.py): a report fetched and landed in one process without "
                f"Ray (its requests, 2 GCS uploads, parsing, the CSV): {each}; {mix:.1f} ms for the nightly's mix "
                f"(goal ≤ 5). Ray alone: {ray['actors']} bare actors {ray['startup_cpu_s']:.2f}s start-up and "
                f"{ray['idle_cpu_per_s'] * 1000:.1f} ms/s idle each, the driver's ray.init "
                f"{ray['driver_init_cpu_s']:.2f}s")
        if "wall_s" in nightly and nightly.get("reports"):
            idle = ray["idle_cpu_per_s"] * nightly["wall_s"]
            night = ray["driver_init_cpu_s"] + ray["actors"] * (ray["startup_cpu_s"] + idle)
            least = night * 1000 / nightly["reports"] + mix
            line += (f" = {night:.1f}s over the nightly's {nightly['wall_s']:.0f}s; so the nightly's "
                     f"{nightly['reports']} reports cannot cost less than {least:.1f} ms/report here "
                     f"(measured {nightly['our_cpu_ms_per_report']:.1f})")
        out.append(line)
    scale = results.get("scale", {})
    if "cpu_s_by_process" in scale and "bound_s" in scale:
        cores = os.cpu_count() or 1
        budget = 2 * scale["bound_s"] * cores
        rig = sum(v for k, v in scale["cpu_s_by_process"].items() if k in ("fake-gcs-server", "simulators"))
        line = (f"floor under 20,000 reports within 2 × the bound: that is {budget:.1f} core-s on {cores} cores "
                f"for everything; the emulators and simulators alone used {rig:.0f} of the scale run")
        if mix is not None:
            ours = mix * scale["reports"] / 1000
            line += (f", and its {scale['reports']} reports fetched in one process without Ray would use {ours:.0f} "
                     f"more: at least {(rig + ours) / cores / scale['bound_s']:.1f} × the bound here "
                     f"(measured {scale['wall_over_bound']:.1f} ×)")
        out.append(line)
    return out


def quota_line(name: str, r: dict[str, Any]) -> str | None:
    """Issue 17's quota figures: wall over the bound split into the start-up (Ray up → the first
    request: actor processes starting) and the sending (first request → last report landed)."""
    media = [v for v in r.get("media", {}).values() if "first_request_s" in v and "last_report_s" in v]
    if not media:
        return None
    first = min(v["first_request_s"] for v in media)
    sending = max(v["last_report_s"] for v in media) - first
    startup = max(0.0, r["wall_s"] - sending)
    worst = max((v["last_report_s"] - v["first_request_s"]) / v["bound_s"] for v in media)
    failures = f"; failed: {'; '.join(r['first_failures'])}" if r.get("first_failures") else ""
    return (f"quota ({name}): wall/bound {r['wall_over_bound']:.2f} (goal ≤ 1.10) = start-up {startup:.1f}s "
            f"(Ray up → first request) + sending {sending:.1f}s; sending/bound {sending / r['bound_s']:.2f}, "
            f"worst media {worst:.2f}; self-caused violations {r['violations']} (goal 0){failures}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true", help="10%% sizes: check the harness, not the figures")
    ap.add_argument("--only", action="append", help="run only these scenarios (by name)")
    ap.add_argument("--out", default=str(REPO / "bench" / "results.json"))
    args = ap.parse_args()
    stack = start_stack()
    results: dict[str, dict[str, Any]] = {}
    started = time.perf_counter()
    try:
        for name, spec in scenarios(args.quick):
            if args.only and name not in args.only:
                continue
            print(f"[{name}] running…", file=sys.stderr)
            results[name] = run_one(name, spec, stack)
    finally:
        stack.down()
    if args.only and Path(args.out).exists():  # a partial run updates its scenarios, keeps the others' figures
        results = {**json.loads(Path(args.out).read_text()).get("results", {}), **results}
    doc = {"machine": {"cpus": os.cpu_count()}, "quick": args.quick, "total_s": round(time.perf_counter() - started, 1),
           "results": results}
    Path(args.out).write_text(json.dumps(doc, indent=2, default=str) + "\n")
    print(table(results))
    print(f"\nwritten {args.out} ({doc['total_s']:.0f}s)")
    return 0 if all("error" not in r for r in results.values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
