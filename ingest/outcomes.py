"""The states a report task, a stage-2 partition and a run can be in, and a run's counts.

One definition each, used by the driver, the ledger, ``status``, the history page and the
notifications, so "how many reports failed" is computed once (:class:`RunCounts`) and a
state is a named member, not a string each module spells for itself. The members are
``StrEnum``: they are stored, logged and serialised as their plain values.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from enum import StrEnum


class TaskStatus(StrEnum):
    """A report task (media × account × date) in the ledger; changed only by ``Ledger._updates``."""

    PENDING = "pending"
    RUNNING = "running"
    RETRYING = "retrying"
    DONE = "done"
    FAILED = "failed"


#: worst first: a cell of the history page takes the colour of its worst state
TASK_STATE_ORDER: tuple[TaskStatus, ...] = (
    TaskStatus.FAILED, TaskStatus.RETRYING, TaskStatus.RUNNING, TaskStatus.PENDING, TaskStatus.DONE)
#: not settled yet: a run still owes these an outcome
TASK_OPEN: tuple[TaskStatus, ...] = (TaskStatus.PENDING, TaskStatus.RUNNING, TaskStatus.RETRYING)


class PartitionStatus(StrEnum):
    """A (media, date) partition in stage 2; ``pending`` until a run publishes it."""

    PENDING = "pending"
    PUBLISHED = "published"
    SKIPPED = "skipped"
    FAILED = "failed"


class RunOutcome(StrEnum):
    """A run as a whole; each finished outcome has its exit code (``ingest.job``)."""

    RUNNING = "running"
    SUCCESS = "success"
    PARTIAL = "partial"
    FAILED = "failed"
    ABORTED = "aborted"


@dataclass
class MediaCounts:
    """One media's reports in one run."""

    planned: int = 0
    #: already done by an earlier run (a resumed night), not fetched again
    skipped: int = 0
    done: int = 0
    failed: int = 0
    #: requests or reports sent again
    retries: int = 0
    restarts: int = 0
    rows: int = 0
    requests: int = 0

    @property
    def ok(self) -> int:
        return self.done + self.skipped

    @classmethod
    def from_doc(cls, doc: Mapping[str, object]) -> MediaCounts:
        """From a stored counts document; unknown keys ignored, bad values as 0 (old rows)."""
        values: dict[str, int] = {}
        for f in fields(cls):
            raw = doc.get(f.name, 0)
            try:
                values[f.name] = int(raw or 0)  # type: ignore[call-overload]
            except (TypeError, ValueError):
                values[f.name] = 0
        return cls(**values)


class RunCounts(dict[str, MediaCounts]):
    """Per media counts of a run, and the run's totals: the one place they are summed."""

    @property
    def planned(self) -> int:
        return sum(m.planned for m in self.values())

    @property
    def ok(self) -> int:
        return sum(m.ok for m in self.values())

    @property
    def done(self) -> int:
        return sum(m.done for m in self.values())

    @property
    def failed(self) -> int:
        return sum(m.failed for m in self.values())

    @property
    def retries(self) -> int:
        return sum(m.retries for m in self.values())

    def outcome(self, stage2_failed: int = 0) -> RunOutcome:
        """success: nothing failed; failed: nothing succeeded; partial otherwise."""
        if self.failed == 0 and stage2_failed == 0:
            return RunOutcome.SUCCESS
        if self.ok == 0:
            return RunOutcome.FAILED
        return RunOutcome.PARTIAL

    def to_doc(self) -> dict[str, dict[str, int]]:
        """The JSON document stored in ``ingest_runs.counts``."""
        return {m: asdict(c) for m, c in self.items()}

    @classmethod
    def from_doc(cls, doc: str | Mapping[str, object] | None) -> RunCounts:
        """From ``ingest_runs.counts`` (text or parsed); a damaged document reads as no counts."""
        if isinstance(doc, str):
            try:
                doc = json.loads(doc or "{}")
            except ValueError:
                doc = {}
        out = cls()
        if isinstance(doc, Mapping):
            for media, m in doc.items():
                if isinstance(m, Mapping):
                    out[str(media)] = MediaCounts.from_doc(m)
        return out

    @classmethod
    def empty(cls, media: list[str]) -> RunCounts:
        return cls({m: MediaCounts() for m in media})
