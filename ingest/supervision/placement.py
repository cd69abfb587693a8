"""Where the actors run and how many fetchers a media gets: plain data, no Ray calls.

Two profiles, chosen by ``ray.fetcher_resource`` in the config:

* **local** (unset; ``make demo``, tests): everything fits on one machine. Fetchers ask for a
  fraction of a CPU and run wherever Ray puts them.
* **cluster** (set, e.g. ``fetcher_slot``): the head runs the driver, its ledger writer and
  the supervisors (pinned by Ray's built-in head-node resource); each fetcher needs one unit of
  the custom resource, which only worker node types carry (``ray-cluster.yaml``). Pending
  fetchers are demand the autoscaler answers by adding worker nodes; when the night is over
  the fetchers die with their supervisors and the idle nodes are removed.

The number of fetchers comes from the night's work and the media's quota, not a constant:
one per ``reports_per_fetcher`` reports, never more than the quota can feed
(``quota.requests_per_second / fetcher_rps``), at most ``max_fetchers``. ``fetchers`` in the
config pins the number (tests, or an operator who knows better).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from ingest.config import MediaSettings, RaySettings

#: Ray's own resource that only the head node carries (ray._common.constants.HEAD_NODE_RESOURCE_NAME)
HEAD_NODE_RESOURCE = "node:__internal_head__"

FETCHER_CPUS = 0.25
SUPERVISOR_CPUS = 0.05
FETCHER_MEMORY = 300 * 1024 * 1024
SUPERVISOR_MEMORY = 200 * 1024 * 1024


def fetchers_for(reports: int, settings: MediaSettings) -> int:
    """How many fetcher processes a media gets for ``reports`` reports (see module doc)."""
    if settings.fetchers is not None:
        return settings.fetchers
    by_work = math.ceil(reports / settings.reports_per_fetcher)
    by_quota = math.ceil(settings.quota.requests_per_second / settings.fetcher_rps)
    return max(1, min(by_work, by_quota, settings.max_fetchers))


def namespace(run_id: str) -> str:
    """One Ray namespace per run, so the dashboard groups a night's actors and names never clash."""
    return f"ingest-{run_id}"


@dataclass(frozen=True)
class Placement:
    """Ray ``.options()`` for the supervisor and fetcher actors of one run."""

    run_id: str
    fetcher_resource: str | None = None

    @classmethod
    def from_settings(cls, settings: RaySettings, run_id: str) -> Placement:
        return cls(run_id, settings.fetcher_resource)

    @property
    def clustered(self) -> bool:
        return self.fetcher_resource is not None

    def supervisor(self, media: str, generation: int = 0) -> dict[str, Any]:
        name = f"supervisor:{media}" + (f"~{generation}" if generation else "")
        opts: dict[str, Any] = {"num_cpus": SUPERVISOR_CPUS, "memory": SUPERVISOR_MEMORY,
                                "name": name, "namespace": namespace(self.run_id)}
        if self.clustered:
            opts["resources"] = {HEAD_NODE_RESOURCE: 0.001}
        return opts

    def fetcher(self, media: str, index: int, incarnation: int = 0) -> dict[str, Any]:
        """``incarnation`` > 0 for a replacement: a new name, the dead one may not be released yet."""
        name = f"fetcher:{media}:{index}" + (f"~{incarnation}" if incarnation else "")
        opts: dict[str, Any] = {"num_cpus": FETCHER_CPUS, "memory": FETCHER_MEMORY,
                                "name": name, "namespace": namespace(self.run_id)}
        if self.fetcher_resource:
            opts["resources"] = {self.fetcher_resource: 1}
        return opts
