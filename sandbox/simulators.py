"""Run the ad-platform simulators: in-process for tests, or as one process for the local stack.

    python -m sandbox.simulators --port meta=8701 --port google_ads=8702 \\
        --port yahoo_ads=8703 --seed 7 --fault-rate 0.02 --latency-ms 5

prints one ``simulators ready ...`` line when every port listens, answers ``GET /_sim/stats``
on each port (the health check), and runs until SIGTERM/SIGINT. For tests use
``run_simulator`` (re-exported here) which runs one simulator in a background thread.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
from typing import Any

from sandbox.simcore import (
    DEFAULT_FAULT_WEIGHTS,
    FAULT_KINDS,
    SimConfig,
    SimulatorHandle,
    make_simulator,
    run_simulator,
    start_site,
)
from sandbox.truth import RESERVED, truth_rows

__all__ = ["run_simulator", "SimulatorHandle", "SimConfig", "truth_rows", "RESERVED", "main"]

MEDIA = ("meta", "google_ads", "yahoo_ads")


def _parse_port(value: str) -> tuple[str, int]:
    media, sep, port = value.partition("=")
    if not sep or media not in MEDIA or not port.isdigit():
        raise argparse.ArgumentTypeError(f"expected MEDIA=PORT with MEDIA in {', '.join(MEDIA)}, got {value!r}")
    return media, int(port)


def _parse_faults(value: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for item in value.split(","):
        kind, sep, weight = item.partition("=")
        if kind not in FAULT_KINDS:
            raise argparse.ArgumentTypeError(f"unknown fault kind {kind!r} (known: {', '.join(FAULT_KINDS)})")
        out[kind] = float(weight) if sep else 1.0
    return out


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m sandbox.simulators", description=__doc__.split("\n")[0])
    p.add_argument("--port", action="append", type=_parse_port, required=True, metavar="MEDIA=PORT",
                   help="start a simulator for MEDIA on PORT (repeatable; PORT 0 = any free port)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--fault-rate", type=float, default=0.0, help="probability of a fault per API request")
    p.add_argument("--faults", type=_parse_faults, default=None, metavar="KIND=W,...",
                   help=f"fault weights (kinds: {', '.join(FAULT_KINDS)}); default "
                        + ",".join(f"{k}={v:g}" for k, v in DEFAULT_FAULT_WEIGHTS.items()))
    p.add_argument("--latency-ms", type=float, default=0.0)
    p.add_argument("--jitter-ms", type=float, default=0.0)
    p.add_argument("--account-rps", type=float, default=SimConfig.account_rps, help="per-account quota, 0 = off")
    p.add_argument("--app-rps", type=float, default=SimConfig.app_rps, help="per-app quota, 0 = off")
    p.add_argument("--hang-s", type=float, default=SimConfig.hang_s, help="duration of a 'timeout' fault")
    p.add_argument("--job-polls", type=int, default=SimConfig.job_polls)
    p.add_argument("--page-size", type=int, default=SimConfig.page_size)
    return p


def config_from_args(args: argparse.Namespace) -> SimConfig:
    cfg = SimConfig(seed=args.seed)
    changes: dict[str, Any] = {
        "fault_rate": args.fault_rate,
        "latency_ms": args.latency_ms,
        "jitter_ms": args.jitter_ms,
        "account_rps": args.account_rps,
        "app_rps": args.app_rps,
        "hang_s": args.hang_s,
        "job_polls": args.job_polls,
        "page_size": args.page_size,
    }
    if args.faults is not None:
        changes["faults"] = args.faults
    cfg.update(changes)
    return cfg


async def serve(args: argparse.Namespace) -> None:
    runners = []
    bound: dict[str, str] = {}
    for media, port in args.port:
        sim = make_simulator(media, config_from_args(args))  # one config object per simulator
        runner, actual = await start_site(sim, args.host, port)
        runners.append(runner)
        bound[media] = f"http://{args.host}:{actual}"
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print("simulators ready " + json.dumps(bound), flush=True)
    try:
        await stop.wait()
    finally:
        for runner in runners:
            await runner.cleanup()


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    medias = [m for m, _ in args.port]
    if len(set(medias)) != len(medias):
        print("each media may be given once", file=sys.stderr)
        return 2
    try:
        asyncio.run(serve(args))
    except OSError as exc:
        print(f"cannot start simulators: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
