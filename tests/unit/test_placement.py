"""Where actors run and how many fetchers a media gets (ingest/supervision/placement.py)."""

from __future__ import annotations

import pytest

from ingest.config import MediaSettings, RaySettings
from ingest.supervision.placement import HEAD_NODE_RESOURCE, Placement, fetchers_for


def media(**over: object) -> MediaSettings:
    base: dict[str, object] = {"connector": "meta", "base_url": "http://127.0.0.1:1", "api_version": "v21.0",
                               "accounts": [{"id": "1", "advertiser": "a"}], "quota": {"requests_per_second": 100}}
    base.update(over)
    return MediaSettings.model_validate(base)


@pytest.mark.parametrize(("reports", "over", "expected"), [
    (0, {}, 1),                                                 # at least one
    (150, {}, 1),                                               # small night: one fetcher
    (1_000, {"quota": {"requests_per_second": 1000}}, 5),       # one per reports_per_fetcher (200)
    (100_000, {}, 4),                                           # the quota (100 rps / 25 per fetcher) caps it
    (100_000, {"quota": {"requests_per_second": 1000}}, 8),     # max_fetchers caps it
    (100_000, {"quota": {"requests_per_second": 5}}, 1),        # a slow API needs one process, whatever the work
    (10, {"fetchers": 3}, 3),                                   # pinned by the operator
    (900, {"reports_per_fetcher": 100, "max_fetchers": 16, "quota": {"requests_per_second": 1000}}, 9),
])
def test_fetchers_come_from_work_and_quota(reports: int, over: dict[str, object], expected: int) -> None:
    assert fetchers_for(reports, media(**over)) == expected


def test_local_profile_runs_anywhere() -> None:
    p = Placement.from_settings(RaySettings(), "run-1")
    assert not p.clustered
    assert "resources" not in p.supervisor("meta") and "resources" not in p.fetcher("meta", 0)
    assert p.fetcher("meta", 0)["num_cpus"] > 0


def test_cluster_profile_pins_supervisors_to_head_and_fetchers_to_workers() -> None:
    p = Placement.from_settings(RaySettings(address="auto", fetcher_resource="fetcher_slot"), "run-1")
    sup, fetch = p.supervisor("meta"), p.fetcher("meta", 2)
    assert sup["resources"] == {HEAD_NODE_RESOURCE: 0.001}
    assert fetch["resources"] == {"fetcher_slot": 1}
    assert (sup["name"], fetch["name"]) == ("supervisor:meta", "fetcher:meta:2")
    assert sup["namespace"] == fetch["namespace"] == "ingest-run-1"
    # a replacement gets a name of its own: the dead actor's may not be released yet
    assert p.fetcher("meta", 2, incarnation=1)["name"] == "fetcher:meta:2~1"
    assert p.supervisor("meta", generation=2)["name"] == "supervisor:meta~2"


def test_head_resource_is_rays_own() -> None:
    from ray._common.constants import HEAD_NODE_RESOURCE_NAME

    assert HEAD_NODE_RESOURCE == HEAD_NODE_RESOURCE_NAME
