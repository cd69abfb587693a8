"""Where a scenario's CPU goes, by function: py-spy samples the driver, the supervisors and the
fetchers while one ``make bench`` scenario runs, and the self time of each function is summed
per process kind.

    python -m bench.profile                      # "scale ¼" (≈5,000 reports, generous quotas)
    python -m bench.profile --scenario nightly --top 15

Needs ``py-spy`` (``pip install -e '.[bench]'``; not a dependency of the product or the tests).
Writes bench/profile.json (the top entries per process kind) and prints them.
"""

from __future__ import annotations

import argparse
import itertools
import json
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

from bench.procs import _all_cmdlines
from bench.run import REPO, scenario_process, scenarios, start_stack

KINDS = (("supervisors", "ray::SupervisorActor"), ("fetchers", "ray::FetcherActor"))


def _targets(driver: int) -> dict[int, str]:
    out = {driver: "driver"}
    for pid, cmd in _all_cmdlines().items():
        kind = next((k for k, needle in KINDS if cmd.startswith(needle)), None)
        if kind:
            out[pid] = kind
    return out


def _library_caller(frames: list[str]) -> str:
    """The innermost frame that is neither the standard library nor the import system: who, in
    a package or in our code, asked for the leaf's work (e.g. which call keeps stat()-ing files)."""
    for f in reversed(frames[:-1]):
        where = f.partition(" (")[2]
        if "site-packages/" in where or _ours(f):
            return _frame(f)
    return "(stdlib only)"


def _attribute(raw: Path) -> tuple[Counter[str], Counter[str]]:
    """py-spy's raw (collapsed) output → samples per innermost frame (where the CPU is spent)
    and per innermost frame of *our* code, ingest/ or aggregations/ (which of our functions,
    with everything it calls, spends it; "(outside our code)" when none is on the stack)."""
    leaf: Counter[str] = Counter()
    ours: Counter[str] = Counter()
    if not raw.exists():
        return leaf, ours
    for line in raw.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        if not stack or not n.isdigit():
            continue
        frames = stack.split(";")
        leaf[f"{_frame(frames[-1])} ← {_library_caller(frames)}"] += int(n)
        own = next((f for f in reversed(frames) if _ours(f)), None)
        ours[_frame(own) if own else "(outside our code)"] += int(n)
    return leaf, ours


def _ours(frame: str) -> bool:
    """A frame of ingest/ or aggregations/ (py-spy prints paths relative to sys.path or absolute)."""
    where = frame.partition(" (")[2]
    return any(where.startswith(p) or f"/{p}" in where for p in ("ingest/", "aggregations/"))


def _frame(frame: str) -> str:
    name, _, where = frame.partition(" (")
    path = where.rstrip(")").rpartition(":")[0]
    return f"{name} ({_short(path)})"


def _short(path: str) -> str:
    for marker in ("site-packages/", "/lib/python3.11/", str(REPO) + "/"):
        if marker in path:
            return path.split(marker, 1)[1]
    return path


def profile(scenario: str, top: int, rate: int) -> dict[str, Any]:
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(spy).exists():
        raise SystemExit("py-spy is not installed: pip install -e '.[bench]'")
    spec = dict(scenarios(False))[scenario]
    stack = start_stack()
    tmp = Path(tempfile.mkdtemp(prefix="bench-profile-"))
    try:
        cmd, env = scenario_process(spec, stack)
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        spies: dict[int, tuple[str, subprocess.Popen[bytes], Path]] = {}
        while proc.poll() is None:  # attach to each of our processes as it appears
            for pid, kind in _targets(proc.pid).items():
                if pid not in spies:
                    raw = tmp / f"{kind}-{pid}.txt"
                    spies[pid] = (kind, subprocess.Popen(
                        [spy, "record", "--pid", str(pid), "--rate", str(rate), "--format", "raw", "--nonblocking",
                         "--output", str(raw)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL), raw)
            time.sleep(0.5)
        result_line = [
            ln for ln in (proc.stdout.read() if proc.stdout else "").splitlines() if ln.startswith("RESULT ")
        ]
        for _, sp, _ in spies.values():
            try:
                sp.wait(timeout=30)  # py-spy writes its file when the target exits
            except subprocess.TimeoutExpired:
                sp.terminate()
                sp.wait(timeout=10)
        by_kind: dict[str, tuple[Counter[str], Counter[str]]] = {}
        for kind, _, raw in spies.values():
            leaf, ours = by_kind.setdefault(kind, (Counter(), Counter()))
            more_leaf, more_ours = _attribute(raw)
            leaf.update(more_leaf)
            ours.update(more_ours)
        result = json.loads(result_line[-1][len("RESULT "):]) if result_line else {}
        doc: dict[str, Any] = {"scenario": scenario, "reports": result.get("reports"),
                               "per_report_ms": result.get("per_report_ms"),
                               "cpu_s_by_process": result.get("cpu_s_by_process"), "top": {}, "ours": {}}
        for kind, (leaf, ours) in sorted(by_kind.items()):
            total = sum(leaf.values()) or 1
            doc["top"][kind] = [{"function": f, "share": round(n / total, 3)} for f, n in leaf.most_common(top)]
            doc["ours"][kind] = [{"function": f, "share": round(n / total, 3)} for f, n in ours.most_common(top)]
        return doc
    finally:
        stack.down()
        shutil.rmtree(tmp, ignore_errors=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scenario", default="scale ¼")
    ap.add_argument("--top", type=int, default=12)
    ap.add_argument("--rate", type=int, default=50, help="samples per second per process")
    ap.add_argument("--out", default=str(REPO / "bench" / "profile.json"))
    args = ap.parse_args()
    doc = profile(args.scenario, args.top, args.rate)
    Path(args.out).write_text(json.dumps(doc, indent=2) + "\n")
    print(f"{doc['scenario']}: {doc['reports']} reports, {doc['per_report_ms']} ms/report; "
          f"CPU s: {doc['cpu_s_by_process']}")
    for kind, rows in doc["top"].items():
        print(f"\n{kind}: share of samples by innermost frame | by innermost frame of our code")
        for r, o in itertools.zip_longest(rows, doc["ours"][kind]):
            left = f"{r['share'] * 100:5.1f}%  {r['function'][:110]:<110}" if r else " " * 118
            print(f"  {left} | " + (f"{o['share'] * 100:5.1f}%  {o['function']}" if o else ""))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
