"""BigQuery job handling without an emulator: deterministic ids, 409 → resume, retries, errors.

bqemulator never answers 409 for a reused job id, so the resume path is exercised here with
the real ``bigquery.Client`` over a fake HTTP session that loses the response of the first
``jobs.insert``: the library re-sends the same job id, real BigQuery's 409 comes back, and
the stage must resume the existing job with ``get_job`` instead of running it twice.
"""

from __future__ import annotations

import json
import re
from datetime import date
from typing import Any
from urllib.parse import urlsplit

import pytest
import requests
from google.api_core import exceptions as gexc
from google.auth.credentials import AnonymousCredentials
from google.cloud import bigquery

from aggregations.bq import BigQueryStage, safe_job_part, translate
from ingest.config import RetrySettings
from ingest.errors import RetriableError, StageError, Throttled, Transient

FAST = RetrySettings(max_attempts=3, backoff_min_s=0.0, backoff_max_s=0.01)
DAY = date(2026, 1, 31)


class FakeBigQuery:
    """Just enough of the BigQuery REST API for load + merge jobs, with injectable faults."""

    def __init__(self, lose_first_insert_of: set[str] = frozenset(),
                 fail_jobs: dict[str, dict[str, Any]] | None = None):
        self.jobs: dict[str, dict[str, Any]] = {}
        self.lose = set(lose_first_insert_of)
        self.fail_jobs = fail_jobs or {}
        self.calls: list[tuple[str, str]] = []
        self.is_mtls = False  # read by google-cloud-core when it builds request URLs

    def _response(self, method: str, url: str, status: int, body: Any) -> requests.Response:
        resp = requests.Response()
        resp.status_code = status
        resp._content = json.dumps(body).encode()
        resp.headers["content-type"] = "application/json"
        resp.request = requests.Request(method, url).prepare()
        return resp

    def _job(self, job_id: str) -> dict[str, Any]:
        job = self.jobs[job_id]
        done = {**job, "status": {"state": "DONE"}, "statistics": {"load": {"outputRows": "3"}}}
        if job_id in self.fail_jobs:
            done["status"]["errorResult"] = self.fail_jobs[job_id]
            done["status"]["errors"] = [self.fail_jobs[job_id]]
        return done

    def request(self, method: str, url: str, data: Any = None, headers: Any = None, timeout: Any = None,
                **_: Any) -> requests.Response:
        path = urlsplit(url).path
        self.calls.append((method, path))
        if method == "POST" and path.endswith("/jobs"):
            body = json.loads(data)
            job_id = body["jobReference"]["jobId"]
            if job_id in self.jobs:
                return self._response(method, url, 409,
                                      {"error": {"code": 409, "message": f"Already Exists: Job {job_id}",
                                                 "errors": [{"reason": "duplicate", "message": "exists"}]}})
            self.jobs[job_id] = {**body, "id": job_id, "status": {"state": "RUNNING"}}
            if job_id in self.lose:
                self.lose.discard(job_id)
                raise requests.exceptions.ConnectionError("connection reset after the request was sent")
            return self._response(method, url, 200, self.jobs[job_id])
        m = re.search(r"/jobs/([^/]+)$", path)
        if method == "GET" and m:
            if m.group(1) not in self.jobs:
                return self._response(method, url, 404, {"error": {"code": 404, "message": "Not found", "errors": []}})
            return self._response(method, url, 200, self._job(m.group(1)))
        m = re.search(r"/queries/([^/]+)$", path)
        if method == "GET" and m:
            job = self._job(m.group(1))
            if "errorResult" in job["status"]:
                return self._response(method, url, 200, {"jobReference": job["jobReference"], "jobComplete": True,
                                                         "errors": job["status"]["errors"]})
            return self._response(method, url, 200, {"jobReference": job["jobReference"], "jobComplete": True,
                                                     "totalRows": "0", "rows": [], "schema": {"fields": []}})
        if "/tables/" in path:  # get/update (expiry, best effort) and delete of staging
            return self._response(method, url, 404 if method != "DELETE" else 200,
                                  {"error": {"code": 404, "message": "Not found", "errors": []}}
                                  if method != "DELETE" else {})
        raise AssertionError(f"unexpected {method} {url}")

    def inserts(self) -> list[str]:
        return [p for m, p in self.calls if m == "POST"]


def make_stage(fake: FakeBigQuery, run_id: str = "20260201T0100-abc") -> BigQueryStage:
    client = bigquery.Client(project="local-demo", credentials=AnonymousCredentials(), _http=fake, location="US")
    return BigQueryStage(client, "local-demo", "ads", run_id, location="US", retry=FAST, sleep=lambda s: None)


def test_lost_insert_response_resumes_existing_job_via_409() -> None:
    load_id = "ingest_load_meta_20260131_20260201T0100-abc_1"
    fake = FakeBigQuery(lose_first_insert_of={load_id})
    stage = make_stage(fake)
    rows = stage.load_partition("meta", DAY, "gs://bucket/raw/meta/dt=2026-01-31/*.csv")
    assert rows == 3
    # the load job was created once; the re-sent insert got 409 and the job was resumed
    assert [j for j in fake.jobs if j.startswith("ingest_load")] == [load_id]
    assert stage.jobs.resumed == 1
    assert len(fake.inserts()) == 3  # load: lost + re-sent (409); merge: once
    assert ("GET", f"/bigquery/v2/projects/local-demo/jobs/{load_id}") in fake.calls
    assert (stage.jobs.load, stage.jobs.query) == (1, 1)
    merge = fake.jobs["ingest_merge_meta_20260131_20260201T0100-abc_1"]
    script = merge["configuration"]["query"]["query"]
    assert "DELETE FROM `local-demo.ads.raw_meta` WHERE date = DATE '2026-01-31'" in script
    assert "FROM `local-demo.ads._stage_meta_20260131`" in script
    load_cfg = fake.jobs[load_id]["configuration"]["load"]
    assert int(load_cfg["skipLeadingRows"]) == 1 and load_cfg["writeDisposition"] == "WRITE_TRUNCATE"
    assert load_cfg["sourceUris"] == ["gs://bucket/raw/meta/dt=2026-01-31/*.csv"]
    assert load_cfg["destinationTable"]["tableId"] == "_stage_meta_20260131"
    assert [f["name"] for f in load_cfg["schema"]["fields"]][:3] == ["date", "media", "account_id"]


def test_failed_job_is_retried_under_a_new_attempt_id() -> None:
    first = "ingest_load_meta_20260131_r1_1"
    fake = FakeBigQuery(fail_jobs={first: {"reason": "backendError", "message": "try again"}})
    stage = make_stage(fake, run_id="r1")
    assert stage.load_partition("meta", DAY, "gs://b/raw/meta/dt=2026-01-31/*.csv") == 3
    assert [j for j in fake.jobs if j.startswith("ingest_load")] == [first, "ingest_load_meta_20260131_r1_2"]
    assert stage.jobs.load == 2 and stage.jobs.resumed == 0


def test_invalid_job_is_not_retried() -> None:
    first = "ingest_load_meta_20260131_r1_1"
    fake = FakeBigQuery(fail_jobs={first: {"reason": "invalid", "message": "CSV table references column 11"}})
    stage = make_stage(fake, run_id="r1")
    with pytest.raises(StageError, match="column 11"):
        stage.load_partition("meta", DAY, "gs://b/raw/meta/dt=2026-01-31/*.csv")
    assert [j for j in fake.jobs] == [first]


def test_transient_failures_give_up_after_max_attempts() -> None:
    ids = {f"ingest_load_meta_20260131_r1_{i}" for i in (1, 2, 3)}
    fake = FakeBigQuery(fail_jobs={i: {"reason": "backendError", "message": "down"} for i in ids})
    stage = make_stage(fake, run_id="r1")
    with pytest.raises(Transient):
        stage.load_partition("meta", DAY, "gs://b/raw/meta/dt=2026-01-31/*.csv")
    assert set(fake.jobs) == ids


def test_job_ids_are_deterministic_and_safe() -> None:
    stage = make_stage(FakeBigQuery(), run_id="run 2026/02/01:01")
    assert stage.job_id("load", "meta_20260131", 2) == "ingest_load_meta_20260131_run_2026_02_01_01_2"
    assert safe_job_part("") == "_"
    assert BigQueryStage.staging_table("google_ads", DAY) == "_stage_google_ads_20260131"


@pytest.mark.parametrize(
    ("exc", "expected"),
    [
        (gexc.InternalServerError("boom"), Transient),
        (gexc.ServiceUnavailable("down"), Transient),
        (gexc.BadGateway("bad gw"), Transient),
        (gexc.TooManyRequests("slow down"), Throttled),
        (gexc.Forbidden("rate", errors=[{"reason": "rateLimitExceeded"}]), Throttled),
        (gexc.BadRequest("backend", errors=[{"reason": "backendError"}]), Transient),
        (ConnectionError("reset"), Transient),
        (requests.exceptions.ConnectionError("reset"), Transient),
        (gexc.BadRequest("invalid csv"), StageError),
        (gexc.NotFound("no table"), StageError),
        (gexc.Forbidden("quota", errors=[{"reason": "quotaExceeded"}]), StageError),
        (gexc.Conflict("dup"), StageError),
        (ValueError("odd"), StageError),
    ],
)
def test_translate(exc: BaseException, expected: type[Exception]) -> None:
    err = translate(exc, "load meta 2026-01-31")
    assert type(err) is expected
    assert isinstance(err, RetriableError) == (expected in (Transient, Throttled))
    assert "load meta 2026-01-31" in str(err)
