"""A real browser on the page: headless Chromium (Debian's ``chromium`` package, installed here
by apt when missing — never a browser download) driven over the Chrome DevTools protocol.

It opens the runs list with the access token once (then lives on the cookie), follows the
newest run's link to its grid, expands a failed cell and follows a failed account to its
detail, checks what a person would read on each page, and saves screenshots under
``test-output/ui/``. ``INGEST_UPDATE_SCREENSHOTS=1`` (or a missing file) also refreshes
``docs/img/ui-run.png`` and ``docs/img/ui-runs.png`` used by the docs.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import os
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import sqlalchemy as sa
from aiohttp import web

from sandbox.stack import free_port
from ingest.ui.app import create_app
from ingest.ui.queries import LedgerReader, read_only_engine
from sandbox.ui_sample import Seeded, seed

REPO = Path(__file__).resolve().parents[2]
OUT = REPO / "test-output" / "ui"
DOCS_IMG = REPO / "docs" / "img"
TOKEN = "browser-test-token-0123456789"
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--disable-dev-shm-usage", "--hide-scrollbars", "--window-size=1360,960"]


def _find_chromium() -> str | None:
    for name in ("chromium", "chromium-browser"):
        path = shutil.which(name)
        if path:
            return path
    return None


@pytest.fixture(scope="session")
def chromium() -> str:
    """Debian's chromium; installed once per session with apt-get when missing."""
    path = _find_chromium()
    if path:
        return path
    in_ci = bool(os.environ.get("CI"))
    if shutil.which("apt-get") and os.geteuid() == 0:
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        cmd = ["apt-get", "install", "-y", "--no-install-recommends", "chromium", "fonts-liberation"]
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
        if proc.returncode != 0:  # stale package lists: refresh once, then try again
            subprocess.run(["apt-get", "update"], env=env, capture_output=True, timeout=600)
            proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
        path = _find_chromium()
        if path:
            return path
        problem = f"apt-get install chromium failed: {proc.stderr.strip()[-400:]}"
    else:
        problem = "chromium is not installed and apt-get is not usable here (needs root)"
    if in_ci:
        pytest.fail(problem)
    pytest.skip(f"{problem}; install Debian's chromium package to run the browser test")


class _Server:
    """The UI app on a free loopback port, in its own thread and event loop."""

    def __init__(self, app: web.Application) -> None:
        self.app, self.port = app, free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self._ready = threading.Event()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        runner = web.AppRunner(self.app, access_log=None)
        self._loop.run_until_complete(runner.setup())
        self._loop.run_until_complete(web.TCPSite(runner, "127.0.0.1", self.port).start())
        self._ready.set()
        self._loop.run_forever()
        self._loop.run_until_complete(runner.cleanup())

    def __enter__(self) -> _Server:
        self._thread.start()
        assert self._ready.wait(10)
        return self

    def __exit__(self, *exc: object) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)


class Browser:
    """Just enough of the DevTools protocol: navigate/click, wait for load, read the DOM, screenshot."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self._ids = itertools.count(1)
        self._events: list[dict[str, Any]] = []

    async def send(self, method: str, **params: Any) -> dict[str, Any]:
        msg_id = next(self._ids)
        await self.ws.send_str(json.dumps({"id": msg_id, "method": method, "params": params}))
        while True:
            msg = json.loads((await asyncio.wait_for(self.ws.receive(), 30)).data)
            if msg.get("id") == msg_id:
                if "error" in msg:
                    raise AssertionError(f"{method}: {msg['error']}")
                return msg.get("result", {})
            self._events.append(msg)

    async def _wait_load(self) -> None:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if any(e.get("method") == "Page.loadEventFired" for e in self._events):
                self._events.clear()
                return
            msg = json.loads((await asyncio.wait_for(self.ws.receive(), 30)).data)
            self._events.append(msg)
        raise AssertionError("page did not load")

    async def goto(self, url: str) -> None:
        self._events.clear()
        await self.send("Page.navigate", url=url)
        await self._wait_load()

    async def click(self, selector: str) -> None:
        self._events.clear()
        found = await self.js(f"(() => {{ const el = document.querySelector({json.dumps(selector)});"
                              f" if (!el) return false; el.click(); return true; }})()")
        assert found, f"nothing matches {selector}"
        await self._wait_load()

    async def js(self, expression: str) -> Any:
        res = await self.send("Runtime.evaluate", expression=expression, returnByValue=True)
        return res["result"].get("value")

    async def screenshot(self, path: Path) -> None:
        data = await self.send("Page.captureScreenshot", format="png")
        path.write_bytes(base64.b64decode(data["data"]))


@pytest.fixture
def ledger(tmp_path: Path) -> Iterator[tuple[str, Seeded]]:
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    engine = sa.create_engine(url)
    s = seed(engine, nights=14, accounts=6, fail_rate=0.05)
    engine.dispose()
    yield url, s


def _launch(chromium: str, profile: str) -> tuple[subprocess.Popen[bytes], int]:
    proc = subprocess.Popen([chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "--remote-debugging-port=0",
                             "about:blank"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    port_file = Path(profile) / "DevToolsActivePort"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if port_file.exists() and port_file.read_text().strip():
            return proc, int(port_file.read_text().split()[0])
        if proc.poll() is not None:
            raise AssertionError(f"chromium exited with {proc.returncode}")
        time.sleep(0.1)
    raise AssertionError("chromium did not open its DevTools port")


def test_browser_runs_list_grid_and_failed_cell(chromium: str, ledger: tuple[str, Seeded]) -> None:
    url, s = ledger
    OUT.mkdir(parents=True, exist_ok=True)
    profile = tempfile.mkdtemp(prefix="chromium-")
    app = create_app(LedgerReader(read_only_engine(url)), token=TOKEN)
    proc, port = _launch(chromium, profile)
    try:
        with _Server(app) as server:
            asyncio.run(_drive(port, server.base, s))
    finally:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(10)
        except (OSError, subprocess.TimeoutExpired):
            os.killpg(proc.pid, signal.SIGKILL)
        shutil.rmtree(profile, ignore_errors=True)
    for name in ("runs.png", "run.png", "cell.png", "report.png"):
        assert (OUT / name).stat().st_size > 10_000, name
    DOCS_IMG.mkdir(parents=True, exist_ok=True)
    for src, dst in (("run.png", "ui-run.png"), ("runs.png", "ui-runs.png")):
        if os.environ.get("INGEST_UPDATE_SCREENSHOTS") == "1" or not (DOCS_IMG / dst).exists():
            shutil.copyfile(OUT / src, DOCS_IMG / dst)


async def _drive(port: int, base: str, s: Seeded) -> None:
    async with aiohttp.ClientSession() as http:
        targets = await (await http.get(f"http://127.0.0.1:{port}/json/list")).json()
        page = next(t for t in targets if t["type"] == "page")
        async with http.ws_connect(page["webSocketDebuggerUrl"], max_msg_size=0) as ws:
            b = Browser(ws)
            await b.send("Page.enable")
            await b.send("Emulation.setDeviceMetricsOverride", width=1360, height=960, deviceScaleFactor=1,
                         mobile=False)

            # without the token: refused
            await b.goto(base + "/")
            assert "access token required" in await b.js("document.body.innerText")

            # the runs list: the token once, then a cookie; the address bar loses the token
            await b.goto(f"{base}/?token={TOKEN}")
            assert await b.js("location.search") == ""
            assert await b.js("document.title") == "runs · ingest"
            rows = await b.js("[...document.querySelectorAll('table.runs tbody tr')].map(r => r.innerText)")
            assert len(rows) == len(s.runs) and s.last_run in rows[0] and "partial" in rows[0]
            assert await b.js("document.querySelectorAll('svg rect.dur').length") == 14 * 3
            await b.screenshot(OUT / "runs.png")

            # the newest run's grid
            await b.click("a.run-link")
            assert await b.js("location.pathname") == f"/runs/{s.last_run}"
            assert s.last_run in await b.js("document.querySelector('h1').innerText")
            states = await b.js("[...document.querySelectorAll('.grid .box')].map(b => b.dataset.state)")
            assert "failed" in states and "done" in states and len(states) == 3
            cmds = await b.js("[...document.querySelectorAll('.grid code.cmd')].map(c => c.innerText)")
            assert "python -m ingest rerun --failed --media meta --date 2026-11-20" in cmds  # failures: only those
            await b.js("document.querySelector('.box[data-state=failed] details').open = true")
            await b.screenshot(OUT / "run.png")

            # the failed cell, then one failed account's detail
            await b.click(".box[data-state=failed] a.cell-link")
            cell_text = await b.js("document.body.innerText")
            assert "retries exhausted" in cell_text and "reconciled:" in cell_text
            first_state = await b.js("document.querySelector('table.tasks tbody tr').className")
            assert first_state == "task failed"
            await b.screenshot(OUT / "cell.png")
            await b.click("table.tasks tbody tr.failed td a")
            detail = await b.js("document.body.innerText")
            kind = await b.js("document.querySelector('.error-kind').innerText")
            assert kind in ("throttled", "auth", "data")
            assert "retries exhausted" in await b.js("document.querySelector('.error-message').innerText")
            assert "--account " in await b.js("document.querySelector('main > p code.cmd').innerText")
            assert "History (all runs, newest first)" in detail and "retry attempt 1" in detail
            for secret in ("EAAB-not-a-real-token", "ya29.not-real", TOKEN):
                assert secret not in detail and secret not in await b.js("document.documentElement.outerHTML")
            await b.screenshot(OUT / "report.png")
