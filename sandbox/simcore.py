"""What the three platform simulators share: config, quotas, fault injection, control API.

A simulator is an aiohttp application that speaks one platform's documented wire format. The
platform-specific modules only describe *responses* (data pages, throttle bodies, error
bodies); this module decides *when* to send them:

1. latency (``latency_ms`` ± ``jitter_ms``);
2. the "down" switch: every API request gets the platform's 503;
3. auth: any non-empty token is valid except the literal ``revoked``;
4. quotas: sliding one-second windows per account and per app; a request over quota gets
   the platform's real throttle response and is counted as a *violation*;
5. faults: with probability ``fault_rate`` a request gets one fault, drawn from the
   ``faults`` weights with a seeded RNG. Faults never touch ground truth (``truth.py``) and
   async jobs are per-request state, so a retried request serves the correct data.

Control endpoints (not part of any real API) live under ``/_sim/``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import threading
import time
from collections import Counter, deque
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import asdict, dataclass, field, fields
from datetime import date
from typing import Any

import httpx
from aiohttp import web

from sandbox.oauth_sim import TOKEN_ENDPOINTS, TokenIssuer

from sandbox.truth import DENIED_ACCOUNT, DRIFT_ACCOUNT, RESERVED, truth_json, truth_rows

#: every fault kind a simulator knows; weights of 0 disable a kind
FAULT_KINDS = ("throttle", "server_error", "timeout", "drop", "truncated", "job_failed", "auth", "drift")

#: by default only faults a healthy pipeline must *recover* from are injected (a body cut short
#: on 200, as proxies and resets do, is read again); ``auth`` and ``drift`` make a report fail
#: (fatal by our taxonomy), so they are opt-in
DEFAULT_FAULT_WEIGHTS = {
    "throttle": 1.0,
    "server_error": 1.0,
    "timeout": 0.5,
    "drop": 1.0,
    "truncated": 1.0,
    "job_failed": 1.0,
    "auth": 0.0,
    "drift": 0.0,
}


@dataclass
class SimConfig:
    """Runtime-changeable behaviour of one simulator (``POST /_sim/config`` takes any subset)."""

    seed: int = 7
    fault_rate: float = 0.0
    faults: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_FAULT_WEIGHTS))
    #: per-kind probability on every request it applies to (e.g. ``{"throttle": 0.1, "truncated": 0.1}``
    #: = 10 % of each kind); when set, it replaces ``fault_rate`` × ``faults`` weights
    fault_rates: dict[str, float] = field(default_factory=dict)
    latency_ms: float = 0.0
    jitter_ms: float = 0.0
    #: requests per second per account / per app (developer token); 0 disables the quota
    #: (defaults sit above a media limiter of 20 rps + burst 5, so a healthy run has 0 violations)
    account_rps: float = 30.0
    app_rps: float = 60.0
    down: bool = False
    #: how long a "timeout" fault hangs before answering (longer than the client timeout)
    hang_s: float = 35.0
    #: status polls before an async job completes (reserved SLOW account: ×4)
    job_polls: int = 2
    #: Meta: server-side maximum page size; Google: rows per streamed batch
    page_size: int = 500
    #: Meta: ``estimated_time_to_regain_access`` (minutes) sent with throttles
    regain_minutes: int = 0
    #: lifetime of access tokens the OAuth endpoint issues (Google 3599 s, Yahoo 3600 s)
    token_lifetime_s: float = 3599.0
    #: ``expires_in`` the token endpoint announces; 0 = the true lifetime. Longer than the true
    #: one = tokens revoked early (clock skew, revocation): the API answers 401 before the client expects it
    token_reported_lifetime_s: float = 0.0
    #: late data: date (ISO) → conversions that arrived since, added to each campaign with clicks
    #: on that date (the platforms restate a day for weeks: Meta 28 days, Google 30, Yahoo 7–90)
    late_conversions: dict[str, int] = field(default_factory=dict)

    def update(self, changes: dict[str, Any]) -> None:
        known = {f.name for f in fields(self)}
        unknown = sorted(set(changes) - known)
        if unknown:
            raise ValueError(f"unknown config keys: {', '.join(unknown)} (known: {', '.join(sorted(known))})")
        for key, value in changes.items():
            if key == "faults":
                bad = sorted(set(value) - set(FAULT_KINDS))
                if bad:
                    raise ValueError(f"unknown fault kinds: {', '.join(bad)} (known: {', '.join(FAULT_KINDS)})")
                merged = dict(self.faults)
                merged.update({k: float(v) for k, v in value.items()})
                value = merged
            elif key == "fault_rates":
                bad = sorted(set(value) - set(FAULT_KINDS))
                if bad or not all(0 <= float(v) <= 1 for v in value.values()):
                    raise ValueError(f"fault_rates: kinds from {', '.join(FAULT_KINDS)}, each within 0..1")
                value = {k: float(v) for k, v in value.items()}
            elif key == "late_conversions":
                try:
                    value = {date.fromisoformat(k).isoformat(): int(v) for k, v in value.items()}
                except (AttributeError, TypeError, ValueError):
                    raise ValueError("late_conversions: {\"YYYY-MM-DD\": units, ...}") from None
            elif key == "fault_rate" and not 0 <= float(value) <= 1:
                raise ValueError("fault_rate must be within 0..1")
            current = getattr(self, key)
            if isinstance(current, bool):
                value = bool(value)
            elif isinstance(current, (int, float)) and not isinstance(current, bool):
                value = type(current)(value)
            setattr(self, key, value)


@dataclass
class Ctx:
    """Per-request decisions handed to a platform handler."""

    account: str
    drift: bool = False
    job_failed: bool = False


class SimulatedError(Exception):
    """Raised by a handler to answer with a platform error response."""

    def __init__(self, response: web.Response) -> None:
        super().__init__(response.status)
        self.response = response


class _Dropped(Exception):
    pass


class Simulator:
    """Base of a platform simulator; subclasses add routes and response builders."""

    media: str = ""

    def __init__(self, config: SimConfig | None = None) -> None:
        self.config = config or SimConfig()
        self.reset()

    # -- state ------------------------------------------------------------------------------
    def reset(self) -> None:
        self.issuer = TokenIssuer(self.config.token_lifetime_s)
        self.rng = random.Random(self.config.seed)
        self.windows: dict[str, deque[float]] = {}
        self.jobs: dict[str, dict[str, Any]] = {}
        self.job_seq = 0
        self.stats_: dict[str, Any] = {
            "requests": 0,
            "violations": 0,
            "violations_by_scope": Counter(),
            "faults": Counter(),
            "auth_failures": 0,
            "down_rejections": 0,
            "served_reports": 0,
            "jobs_created": 0,
            "by_endpoint": Counter(),
            # wall-clock arrival (after latency) of the first and the last request, and of each
            # violation: the bench tells start-up, sending and tail apart with them
            "first_at": None,
            "last_at": None,
            "violations_at": [],
            # arrivals per wall-clock second: where the sending fell below the quota
            "arrivals_by_s": Counter(),
        }

    def stats(self) -> dict[str, Any]:
        s = {k: (dict(v) if isinstance(v, Counter) else v) for k, v in self.stats_.items()}
        s["faults_total"] = sum(self.stats_["faults"].values())
        s.update(self.issuer.stats)
        s["media"] = self.media
        s["open_jobs"] = len(self.jobs)
        return s

    def late_units(self, day: date) -> int:
        return self.config.late_conversions.get(day.isoformat(), 0)

    def truth(self, account: str, day: date) -> list[dict[str, Any]]:
        """The rows this simulator serves for (account, day) now, late conversions included."""
        return truth_rows(self.media, account, day, self.config.seed, self.late_units(day))

    def next_job_id(self, base: int) -> str:
        self.job_seq += 1
        return str(base + self.config.seed * 1000 + self.job_seq)

    # -- per-platform hooks ------------------------------------------------------------------
    def routes(self) -> list[web.RouteDef]:
        raise NotImplementedError

    def token(self, request: web.Request) -> str | None:
        auth = request.headers.get("Authorization", "")
        scheme, _, value = auth.partition(" ")
        if scheme.lower() in ("bearer", "oauth") and value.strip():
            return value.strip()
        return None

    def auth_error(self, request: web.Request, missing: bool) -> web.Response:
        raise NotImplementedError

    def denied_error(self, request: web.Request, account: str) -> web.Response:
        raise NotImplementedError

    def throttle_error(self, request: web.Request, scope: str, account: str, wait_s: float) -> web.Response:
        raise NotImplementedError

    def server_error(self, request: web.Request, down: bool = False) -> web.Response:
        raise NotImplementedError

    def usage_headers(self, account: str) -> dict[str, str]:
        return {}

    # -- the request pipeline ------------------------------------------------------------------
    def _window(self, key: str, now: float) -> deque[float]:
        win = self.windows.setdefault(key, deque())
        while win and now - win[0] >= 1.0:
            win.popleft()
        return win

    def utilization(self, key: str, limit: float) -> float:
        if limit <= 0:
            return 0.0
        return min(1.0, len(self._window(key, time.monotonic())) / limit)

    def _quota(self, account: str) -> tuple[str, float] | None:
        """Record the request; return (scope, seconds until a slot frees) when over quota."""
        now = time.monotonic()
        checks = [("app", "app", self.config.app_rps), ("account", f"acct:{account}", self.config.account_rps)]
        for scope, key, limit in checks:
            if limit <= 0:
                continue
            win = self._window(key, now)
            if len(win) >= limit:
                return scope, max(0.001, 1.0 - (now - win[0]))
        for _scope, key, limit in checks:
            if limit > 0:
                self._window(key, now).append(now)
        return None

    def _pick_fault(self, applicable: set[str]) -> str | None:
        cfg = self.config
        if cfg.fault_rates:  # each kind at its own rate, on every request type it applies to
            for kind in FAULT_KINDS:
                rate = cfg.fault_rates.get(kind, 0.0)
                if rate > 0 and kind in applicable and self.rng.random() < rate:
                    return kind
            return None
        roll = self.rng.random()  # always drawn: the sequence does not depend on the config
        if cfg.fault_rate <= 0 or roll >= cfg.fault_rate:
            return None
        kinds = [(k, w) for k, w in cfg.faults.items() if w > 0 and k in applicable]
        if not kinds:
            return None
        total = sum(w for _, w in kinds)
        x = self.rng.random() * total
        for kind, weight in kinds:
            x -= weight
            if x <= 0:
                return kind
        return kinds[-1][0]

    async def serve(
        self,
        request: web.Request,
        endpoint: str,
        account: str,
        handler: Callable[[Ctx], Awaitable[web.Response]],
        *,
        data: bool = False,
        job_create: bool = False,
    ) -> web.StreamResponse:
        """Run one API request through latency, down, auth, quota and fault decisions."""
        st = self.stats_
        st["requests"] += 1
        st["by_endpoint"][endpoint] += 1
        cfg = self.config
        if cfg.latency_ms or cfg.jitter_ms:
            delay = cfg.latency_ms + self.rng.uniform(-cfg.jitter_ms, cfg.jitter_ms)
            await asyncio.sleep(max(0.0, delay) / 1000)
        if cfg.down:
            st["down_rejections"] += 1
            return self.server_error(request, down=True)
        token = self.token(request)
        if not token or token == "revoked" or not self.issuer.valid(token):
            st["auth_failures"] += 1
            return self.auth_error(request, missing=not token)
        if account == DENIED_ACCOUNT:
            st["auth_failures"] += 1
            return self.denied_error(request, account)
        arrived = time.time()
        st["first_at"] = st["first_at"] or arrived
        st["last_at"] = arrived
        st["arrivals_by_s"][int(arrived)] += 1
        over = self._quota(account)
        if over is not None:
            st["violations"] += 1
            st["violations_at"].append(arrived)
            st["violations_by_scope"][over[0]] += 1
            return self._with_usage(self.throttle_error(request, over[0], account, over[1]), account)
        # every request type (create, poll, page, download, stream) can fail any of these ways,
        # a 200 cut short included; drift only where report data is served
        applicable = {"throttle", "server_error", "timeout", "drop", "auth", "truncated"}
        if data:
            applicable.add("drift")
        if job_create:
            applicable.add("job_failed")
        kind = self._pick_fault(applicable)
        ctx = Ctx(account=account, drift=account == DRIFT_ACCOUNT)
        if kind:
            st["faults"][kind] += 1
            if kind == "throttle":
                return self._with_usage(self.throttle_error(request, "account", account, 1.0), account)
            if kind == "server_error":
                return self.server_error(request)
            if kind == "auth":
                return self.auth_error(request, missing=False)
            if kind == "timeout":
                await asyncio.sleep(cfg.hang_s)
                return self.server_error(request)
            if kind == "drop":
                if request.transport is not None:
                    request.transport.abort()
                raise _Dropped()
            ctx.drift = ctx.drift or kind == "drift"
            ctx.job_failed = kind == "job_failed"
        try:
            response = await handler(ctx)
        except SimulatedError as exc:
            response = exc.response
        if kind == "truncated" and response.body:
            body = bytes(response.body)
            response = web.Response(
                body=body[: max(1, len(body) // 2)], status=response.status, content_type=response.content_type
            )
        return self._with_usage(response, account)

    def _with_usage(self, response: web.Response, account: str) -> web.Response:
        for key, value in self.usage_headers(account).items():
            response.headers.setdefault(key, value)  # a throttle body's own usage header wins
        return response

    # -- control API --------------------------------------------------------------------------
    async def _stats(self, request: web.Request) -> web.Response:
        return web.json_response(self.stats())

    async def _config(self, request: web.Request) -> web.Response:
        if request.method == "POST":
            try:
                changes = await request.json()
                if not isinstance(changes, dict):
                    raise ValueError("expected a JSON object")
                self.config.update(changes)
            except (ValueError, TypeError) as exc:
                return web.json_response({"error": str(exc)}, status=400)
        return web.json_response(asdict(self.config))

    async def _reset(self, request: web.Request) -> web.Response:
        self.reset()
        return web.json_response({"reset": True})

    async def _truth(self, request: web.Request) -> web.Response:
        try:
            day = date.fromisoformat(request.query["date"])
            account = request.query["account"]
        except (KeyError, ValueError):
            return web.json_response({"error": "need ?date=YYYY-MM-DD&account=ID"}, status=400)
        return web.json_response(truth_json(self.media, account, day, self.config.seed, self.late_units(day)))

    async def _reserved(self, request: web.Request) -> web.Response:
        return web.json_response(RESERVED)

    def app(self) -> web.Application:
        @web.middleware
        async def drop_guard(request: web.Request, handler: Any) -> web.StreamResponse:
            try:
                return await handler(request)
            except _Dropped:
                # the socket is already aborted; give aiohttp something it will fail to write
                return web.Response(status=500)

        app = web.Application(middlewares=[drop_guard])
        app.add_routes(
            [
                web.get("/_sim/stats", self._stats),
                web.get("/_sim/config", self._config),
                web.post("/_sim/config", self._config),
                web.post("/_sim/reset", self._reset),
                web.get("/_sim/truth", self._truth),
                web.get("/_sim/reserved", self._reserved),
            ]
        )
        if self.media in TOKEN_ENDPOINTS:
            path, style = TOKEN_ENDPOINTS[self.media]
            app.add_routes([web.post(path, self._token) if style == "form" else web.get(path, self._token)])
        app.add_routes(self.routes())
        return app

    async def _token(self, request: web.Request) -> web.Response:
        self.issuer.lifetime_s = self.config.token_lifetime_s  # changeable at run time via /_sim/config
        self.issuer.reported_lifetime_s = self.config.token_reported_lifetime_s
        return await self.issuer.handle(request)


def json_response(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    """Compact JSON like the platforms send (no spaces), UTF-8."""
    return web.Response(
        body=json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode(),
        status=status,
        content_type="application/json",
        charset="utf-8",
        headers=headers,
    )


# -- running simulators ------------------------------------------------------------------------


def make_simulator(media: str, config: SimConfig | None = None) -> Simulator:
    if media == "meta":
        from sandbox.meta_sim import MetaSimulator

        return MetaSimulator(config)
    if media == "google_ads":
        from sandbox.google_ads_sim import GoogleAdsSimulator

        return GoogleAdsSimulator(config)
    if media == "yahoo_ads":
        from sandbox.yahoo_ads_sim import YahooAdsSimulator

        return YahooAdsSimulator(config)
    raise ValueError(f"no simulator for media {media!r} (known: meta, google_ads, yahoo_ads)")


async def start_site(sim: Simulator, host: str, port: int) -> tuple[web.AppRunner, int]:
    """Start ``sim`` on host:port (0 = a free port); return the runner and the bound port."""
    runner = web.AppRunner(sim.app(), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port, shutdown_timeout=0.5)
    await site.start()
    bound = runner.addresses[0][1]
    return runner, bound


class SimulatorHandle:
    """A simulator running in a background thread (for tests and scripts)."""

    def __init__(self, sim: Simulator, host: str, port: int) -> None:
        self.sim = sim
        self.host = host
        self.port = port
        self.media = sim.media

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def _call(self, method: str, path: str, body: Any = None) -> Any:
        with httpx.Client(timeout=10) as client:
            response = client.request(method, self.base_url + path, json=body)
            response.raise_for_status()
            return response.json()

    def stats(self) -> dict[str, Any]:
        return self._call("GET", "/_sim/stats")

    def configure(self, **changes: Any) -> dict[str, Any]:
        return self._call("POST", "/_sim/config", changes)

    def reset(self) -> None:
        self._call("POST", "/_sim/reset")

    def truth(self, account: str, day: date) -> list[dict[str, Any]]:
        return self._call("GET", f"/_sim/truth?date={day.isoformat()}&account={account}")


@contextlib.contextmanager
def run_simulator(
    media: str,
    port: int = 0,
    seed: int = 7,
    fault_rate: float = 0.0,
    latency_ms: float = 0.0,
    host: str = "127.0.0.1",
    **config: Any,
) -> Iterator[SimulatorHandle]:
    """Run one simulator in a background thread; stop it when the block exits.

    ``config`` takes any other ``SimConfig`` field (faults, account_rps, app_rps, down,
    hang_s, job_polls, page_size, jitter_ms, regain_minutes).
    """
    cfg = SimConfig(seed=seed, fault_rate=fault_rate, latency_ms=latency_ms)
    cfg.update(config)
    sim = make_simulator(media, cfg)
    loop = asyncio.new_event_loop()
    started = threading.Event()
    state: dict[str, Any] = {}

    def run() -> None:
        asyncio.set_event_loop(loop)
        try:
            runner, bound = loop.run_until_complete(start_site(sim, host, port))
        except BaseException as exc:  # surfaced to the caller below
            state["error"] = exc
            started.set()
            return
        state["runner"], state["port"] = runner, bound
        started.set()
        loop.run_forever()
        loop.run_until_complete(runner.cleanup())
        pending = [t for t in asyncio.all_tasks(loop) if not t.done()]
        for task in pending:
            task.cancel()
        loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
        loop.close()

    thread = threading.Thread(target=run, name=f"sim-{media}", daemon=True)
    thread.start()
    started.wait(10)
    if "error" in state:
        raise state["error"]
    try:
        yield SimulatorHandle(sim, host, state["port"])
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
