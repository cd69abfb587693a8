"""MediaSupervisor without Ray: retries, escalation, breaker give-up, crash replacement."""

from __future__ import annotations

import asyncio
from collections import Counter
from datetime import date

import pytest

from ingest.config import MediaSettings
from ingest.errors import AuthError, Throttled, Transient
from ingest.supervision.supervisor import MediaSupervisor, RestartIntensity, WorkerDied
from ingest.tasks import Event, ReportKey, ReportResult, Totals

DAY = date(2026, 11, 21)


def settings(**over: object) -> MediaSettings:
    base = {
        "connector": "meta", "base_url": "http://127.0.0.1:1", "api_version": "v21.0",
        "accounts": [{"id": "1", "advertiser": "a"}], "fetchers": 2, "concurrency": 3,
        "retry": {"max_attempts": 4, "backoff_min_s": 0.001, "backoff_max_s": 0.01},
        "breaker": {"failure_threshold": 3, "open_s": 0.02, "max_open_cycles": 2},
        "restarts": {"max_restarts": 3, "period_s": 60, "backoff_min_s": 0.001, "backoff_max_s": 0.01},
        "quota": {"requests_per_second": 1000, "burst": 100},
    }
    base.update(over)
    return MediaSettings.model_validate(base)


class ScriptedFetcher:
    """Fails each key according to a script of exceptions, then succeeds."""

    def __init__(self, script: dict[str, list[BaseException]], calls: Counter[str], alive: list[bool]) -> None:
        self.script, self.calls, self.alive = script, calls, alive

    async def fetch(self, key: ReportKey) -> ReportResult:
        await asyncio.sleep(0)
        self.calls[key.account] += 1
        if not self.alive[0]:
            raise WorkerDied("killed")
        todo = self.script.get(key.account, [])
        if todo:
            exc = todo.pop(0)
            if isinstance(exc, WorkerDied):
                self.alive[0] = False
            raise exc
        return ReportResult(key, Totals(rows=1), 10, 1, (), 0.0)


def run(sup: MediaSupervisor, keys: list[ReportKey]) -> list[Event]:
    async def go() -> list[Event]:
        return [e async for e in sup.run(keys)]

    return asyncio.run(asyncio.wait_for(go(), 20))


def make(script: dict[str, list[BaseException]], **over: object) -> tuple[MediaSupervisor, Counter[str], list[int]]:
    calls: Counter[str] = Counter()
    spawned: list[int] = []

    async def spawn(i: int) -> ScriptedFetcher:
        spawned.append(i)
        return ScriptedFetcher(script, calls, [True])

    return MediaSupervisor("meta", settings(**over), spawn), calls, spawned


def keys(*accounts: str) -> list[ReportKey]:
    return [ReportKey("meta", a, DAY) for a in accounts]


def final(events: list[Event]) -> dict[str, Event]:
    return {e.key.account: e for e in events if e.kind in ("done", "failed") and e.key}


def test_retries_then_succeeds_and_fatal_fails_at_once() -> None:
    sup, calls, _ = make({"a": [Transient("503"), Throttled("slow", retry_after=0.01)], "b": [AuthError("190")]})
    events = run(sup, keys("a", "b", "c"))
    out = final(events)
    assert out["a"].kind == "done" and out["a"].attempt == 3
    assert out["b"].kind == "failed" and out["b"].error_kind == "auth" and calls["b"] == 1
    assert out["c"].kind == "done" and calls["c"] == 1
    assert sum(1 for e in events if e.kind == "retry") == 2


def test_exhausted_attempts_fail_with_reason() -> None:
    sup, calls, _ = make({"a": [Transient("x")] * 10})
    out = final(run(sup, keys("a", "b")))
    assert out["a"].kind == "failed" and calls["a"] == 4 and "gave up after 4 attempts" in (out["a"].message or "")
    assert out["b"].kind == "done"


def test_breaker_opens_and_gives_up_when_api_stays_down() -> None:
    sup, calls, _ = make({a: [Transient("down")] * 100 for a in "abcdefgh"},
                         retry={"max_attempts": 50, "backoff_min_s": 0.001, "backoff_max_s": 0.002})
    events = run(sup, keys(*"abcdefgh"))
    out = final(events)
    assert all(e.kind == "failed" for e in out.values()) and len(out) == 8
    assert any(e.kind == "breaker_open" for e in events)
    assert any("circuit breaker opened" in (e.message or "") for e in out.values())
    assert sum(calls.values()) < 8 * 50  # the breaker stopped the hammering


def test_dead_fetcher_is_replaced_and_report_fetched_exactly_once_more() -> None:
    sup, calls, spawned = make({"a": [WorkerDied("pid 1")]}, fetchers=1, concurrency=1)
    events = run(sup, keys("a", "b"))
    out = final(events)
    assert out["a"].kind == "done" and out["a"].attempt == 1  # a crash is not an API attempt
    assert calls["a"] == 2
    assert [e.kind for e in events].count("restart") == 1 and spawned == [0, 0]


def test_an_attempt_after_a_partial_one_rewrites_every_object() -> None:
    """A key's ``landed`` digests let the fetcher leave identical objects alone, but only on the
    first attempt: a failed attempt or a lost worker may have written part of the report."""
    seen: dict[str, list[tuple[str | None, ...]]] = {}

    class Recording(ScriptedFetcher):
        async def fetch(self, key: ReportKey) -> ReportResult:
            seen.setdefault(key.account, []).append(key.landed)
            return await super().fetch(key)

    calls: Counter[str] = Counter()
    script: dict[str, list[BaseException]] = {"a": [Transient("GCS write failed")], "b": [WorkerDied("pid 1")]}

    async def spawn(i: int) -> Recording:
        return Recording(script, calls, [True])

    sup = MediaSupervisor("meta", settings(fetchers=1, concurrency=1), spawn)
    landed = ("h1", "h2")
    events = run(sup, [ReportKey("meta", a, DAY, 2, landed) for a in ("a", "b", "c")])
    assert {a: e.kind for a, e in final(events).items()} == {"a": "done", "b": "done", "c": "done"}
    assert seen == {"a": [landed, ()], "b": [landed, ()], "c": [landed]}


def test_restart_intensity_escalates() -> None:
    sup, _, _ = make({a: [WorkerDied("boom")] for a in "abcdef"}, fetchers=1, concurrency=1,
                     restarts={"max_restarts": 2, "period_s": 60, "backoff_min_s": 0.001, "backoff_max_s": 0.001})
    events = run(sup, keys(*"abcdef"))
    assert any(e.kind == "escalated" for e in events)
    out = final(events)
    assert len(out) == 6 and any(e.kind == "failed" for e in out.values())


def test_restart_intensity_window() -> None:
    t = [0.0]
    ri = RestartIntensity(settings().restarts.model_copy(update={"max_restarts": 2, "period_s": 10}),
                          clock=lambda: t[0])
    assert ri.allow() and ri.allow() and not ri.allow()
    t[0] = 11
    assert ri.allow()


def test_unexpected_exception_fails_report_not_run() -> None:
    sup, _, _ = make({"a": [RuntimeError("bug")]})  # type: ignore[list-item]
    out = final(run(sup, keys("a", "b")))
    assert out["a"].kind == "failed" and out["b"].kind == "done"


class JobWatchingFetcher:
    """Records how many fetches run at once and the supervisor's job slots in use meanwhile;
    may die mid-fetch (a killed process never gives anything back itself)."""

    def __init__(self, sup: MediaSupervisor, die_on: set[str], seen: list[tuple[int, int]]) -> None:
        self.sup, self.die_on, self.seen = sup, die_on, seen
        self.dead = False
        self.running = 0

    async def fetch(self, key: ReportKey) -> ReportResult:
        if self.dead:
            raise WorkerDied("killed")
        self.running += 1
        try:
            self.seen.append((self.running, self.sup.jobs.in_use))
            await asyncio.sleep(0.002)
            if key.account in self.die_on:
                self.die_on.discard(key.account)
                self.dead = True
                raise WorkerDied("killed while its report held a job slot")
            return ReportResult(key, Totals(rows=1), 10, 1, (), 0.0)
        finally:
            self.running -= 1


@pytest.mark.parametrize(("options", "jobs"), [({"mode": "async"}, True), ({"mode": "sync"}, False)])
def test_a_report_that_is_a_platform_job_holds_a_slot_around_its_fetch(options: dict[str, str], jobs: bool) -> None:
    """Meta async (and Yahoo): the supervisor holds one of max_concurrent_jobs slots from before
    the fetch call until it returns, however it ends — no Ray call of the fetcher's, and a dead
    fetcher cannot keep one (with a leaked slot the run would hang: wait_for fails). Meta sync:
    no slots, reports overlap freely."""
    seen: list[tuple[int, int]] = []
    holder: list[MediaSupervisor] = []
    die_on = {"a", "c"}

    async def spawn(i: int) -> JobWatchingFetcher:
        return JobWatchingFetcher(holder[0], die_on, seen)

    sup = MediaSupervisor("meta", settings(fetchers=1, concurrency=3, options=options,
                                           quota={"requests_per_second": 1000, "burst": 100,
                                                  "max_concurrent_jobs": 1}), spawn)
    holder.append(sup)
    out = final(run(sup, keys(*"abcdef")))
    assert all(e.kind == "done" for e in out.values()) and len(out) == 6
    assert sup.counts["restarts"] >= 1 and sup.jobs.in_use == 0
    if jobs:  # one report at a time: each death is its own
        assert sup.counts["restarts"] == 2
        assert sup.report_jobs and all(s == (1, 1) for s in seen), seen  # one at a time, each holding the slot
    else:
        assert not sup.report_jobs and sup.jobs.peak == 0 and max(r for r, _ in seen) > 1


def test_probe_lost_to_a_crash_does_not_wedge_the_breaker() -> None:
    """Breaker half-open, its single probe's fetcher dies: another request must probe."""
    sup, calls, spawned = make({"a": [Transient("503")], "b": [WorkerDied("killed during the probe")]},
                               fetchers=1, concurrency=1,
                               breaker={"failure_threshold": 1, "open_s": 0.02, "max_open_cycles": 3})
    events = run(sup, keys("a", "b"))
    out = final(events)
    assert out["a"].kind == "done" and out["b"].kind == "done"
    assert [e.kind for e in events].count("breaker_open") == 1 and sup.breaker.state == "closed"
    assert spawned == [0, 0]


def test_replacement_that_fails_to_start_is_retried_within_intensity() -> None:
    calls: Counter[str] = Counter()
    script: dict[str, list[BaseException]] = {"a": [WorkerDied("pid 1")]}
    spawns: list[int] = []

    async def spawn(i: int) -> ScriptedFetcher:
        spawns.append(i)
        if len(spawns) == 2:  # the first replacement is killed before it is ready
            raise RuntimeError("ActorDiedError: killed while starting")
        return ScriptedFetcher(script, calls, [True])

    sup = MediaSupervisor("meta", settings(fetchers=1, concurrency=1), spawn)
    events = run(sup, keys("a", "b"))
    out = final(events)
    assert out["a"].kind == "done" and out["b"].kind == "done" and calls["a"] == 2
    restarts = [e for e in events if e.kind == "restart"]
    assert len(restarts) == 2 and "failed to start" in (restarts[1].message or "")
    assert len(spawns) == 3


def test_every_retry_decision_is_logged_with_its_reason() -> None:
    from structlog.testing import capture_logs

    sup, _, _ = make({"a": [Transient("503"), Throttled("slow", retry_after=0.01)], "b": [AuthError("190")]})
    with capture_logs() as logs:
        run(sup, keys("a", "b"))
    decisions = [e for e in logs if e["event"] == "retry_decision"]
    assert sorted((e["report"].split("/")[1], e["attempt"], e["action"]) for e in decisions) == [
        ("a", 1, "retry"), ("a", 2, "retry"), ("b", 1, "fail")]
    reasons = {(e["report"].split("/")[1], e["attempt"]): e["reason"] for e in decisions}
    assert reasons[("a", 1)].startswith("transient failure") and "backoff" in reasons[("a", 1)]
    assert reasons[("a", 2)].startswith("throttled by the platform; waiting the server's hint")
    assert reasons[("b", 1)].startswith("authentication/permission failure")


def test_the_media_ends_with_its_totals_and_the_fetchers_calls_to_it() -> None:
    """``supervisor_finished``: what a night cost the supervisor beyond one fetch call per report
    (permit calls and the permits they carried), next to the outcome counts."""
    from structlog.testing import capture_logs

    sup, _, _ = make({"a": [Transient("503")]})

    async def go() -> list[Event]:
        await sup.permits(None, ["a", "b", "c"])  # what a fetcher's waiting requests ask in one call
        await sup.permits(0.5, ["a"])
        return [e async for e in sup.run(keys("a", "b"))]

    with capture_logs() as logs:
        asyncio.run(asyncio.wait_for(go(), 20))
    [end] = [e for e in logs if e["event"] == "supervisor_finished"]
    assert (end["media"], end["reports"], end["done"], end["failed"], end["retries"]) == ("meta", 2, 2, 0, 1)
    assert (end["permit_calls"], end["permits"]) == (2, 4)


@pytest.mark.parametrize(("done", "skipped", "failed", "stage_failed", "expected"), [
    (3, 0, 0, 0, ("success", 0)),
    (0, 3, 0, 0, ("success", 0)),  # nothing to fetch: everything was already done
    (2, 0, 1, 0, ("partial", 3)),
    (3, 0, 0, 1, ("partial", 3)),  # every report landed but a partition's stage 2 failed
    (0, 1, 2, 0, ("partial", 3)),  # the skipped report is done from an earlier run
    (0, 0, 3, 0, ("failed", 4)),
])
def test_exit_code_tells_success_partial_and_failure_apart(done: int, skipped: int, failed: int, stage_failed: int,
                                                            expected: tuple[str, int]) -> None:
    from aggregations.stage2 import PartitionResult, Stage2Result
    from ingest.job import NightlyJob, RunReport
    from ingest.outcomes import MediaCounts, RunCounts, RunOutcome

    counts = MediaCounts(planned=done + skipped + failed, done=done, skipped=skipped, failed=failed)
    report = RunReport("r", RunOutcome.RUNNING, 0, RunCounts({"meta": counts}))
    if stage_failed:
        report.stage2 = Stage2Result("r", {("meta", DAY): PartitionResult("meta", DAY)})  # starts failed
    job = NightlyJob.__new__(NightlyJob)  # _outcome needs no database
    assert job._outcome(report) == expected


def test_single_throttle_delays_only_its_report_but_a_run_of_throttles_pauses_the_media() -> None:
    sup, _, _ = make({"a": [Throttled("slow", retry_after=0.01)]},
                     quota={"requests_per_second": 1000, "burst": 100, "pause_after_throttles": 3})
    run(sup, keys("a", "b"))
    assert sup.limiter.paused_s == 0  # one throttle: only report a waited
    sup, _, _ = make({"a": [Throttled("x", retry_after=0.05)] * 3},
                     fetchers=1, concurrency=1,
                     quota={"requests_per_second": 1000, "burst": 100, "pause_after_throttles": 3})
    run(sup, keys("a"))
    assert sup.limiter.paused_s > 0  # three in a row: the whole media waited the hint


class StaggeredFetcher:
    """Finishes report i after i × 10 ms: results trickle in as on a busy night."""

    async def fetch(self, key: ReportKey) -> ReportResult:
        await asyncio.sleep(int(key.account) * 0.01)
        return ReportResult(key, Totals(rows=1), 10, 1, (), 0.0)


@pytest.mark.parametrize("linger_s", [0.0, 0.2])
def test_events_that_happen_close_together_travel_together_when_the_supervisor_lingers(linger_s: float) -> None:
    """Each yield is one Ray object to the driver: lingering gathers a burst into few of them
    and every event still arrives."""

    async def spawn(i: int) -> StaggeredFetcher:
        return StaggeredFetcher()

    sup = MediaSupervisor("meta", settings(fetchers=1, concurrency=10), spawn)
    reports = keys(*(str(i) for i in range(1, 9)))

    async def timed() -> tuple[list[list[Event]], float]:
        started = asyncio.get_running_loop().time()
        batches = [b async for b in sup.run_batches(reports, linger_s=linger_s)]
        return batches, asyncio.get_running_loop().time() - started

    batches, took = asyncio.run(asyncio.wait_for(timed(), 20))
    events = [e for b in batches for e in b]
    assert sorted(e.key.account for e in events if e.kind == "done" and e.key) == [str(i) for i in range(1, 9)]
    assert sup.counts["event_batches"] == len(batches)
    if linger_s:
        # the eight results land within 80 ms: one or two objects, not one per result
        assert len(batches) <= 3, [[e.kind for e in b] for b in batches]
        assert took < 0.08 + linger_s + 0.5
    else:
        assert len(batches) >= 8  # each report's result as it happens
