"""What the service answers about itself: typed views, turned into plain dicts only by the adapter.

The service returns these dataclasses; :class:`~herocollector.CollectorArchiver` calls
``to_dict()`` on them, because a HEROS remote call carries built-in types only.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from herocollector.journal.sqlite import Job, JobState
from herocollector.service.compaction import TableUpkeepState
from herocollector.service.scan import ScanResult

TRASH_LISTED = 100
"""At most this many runs in the trash are listed by ``status()``; ``in_trash`` counts them all."""

RECENT_LISTED = 20
"""The recent jobs ``status()`` lists."""


@dataclass(frozen=True)
class JobCounts:
    """Jobs per state.

    Attributes:
        by_state: The number of jobs in each state (every state present, zeros included).
    """

    by_state: dict[JobState, int]

    @classmethod
    def from_journal(cls, counts: dict[str, int]) -> JobCounts:
        """From the journal's counts, keyed by state value."""
        return cls({state: int(counts.get(state.value, 0)) for state in JobState})

    def __getitem__(self, state: JobState) -> int:
        return self.by_state[state]

    @property
    def busy(self) -> int:
        """Jobs not finished yet: pending, waiting or running."""
        return self[JobState.PENDING] + self[JobState.WAITING] + self[JobState.RUNNING]

    def to_dict(self) -> dict[str, int]:
        """``{state: count}`` with the states' names."""
        return {state.value: n for state, n in self.by_state.items()}


@dataclass(frozen=True)
class TrashEntry:
    """A cleaned run whose segments are still in the trash.

    Attributes:
        path: The run directory.
        delete_after: Unix time after which the purge deletes them for good (None: unknown).
    """

    path: str
    delete_after: float | None


@dataclass(frozen=True)
class FollowedRun:
    """A run collected while it is written (``follow: true``), as ``status()`` lists it.

    Attributes:
        path: The logger directory.
        job: Its journal job.
        chunk: Chunks committed so far.
        rows: Rows committed so far.
        lag: Seconds since the newest committed records were written (None: none yet).
    """

    path: str | None
    job: int
    chunk: int
    rows: int
    lag: float | None


@dataclass(frozen=True)
class ServiceStatus:
    """The answer of ``status()``.

    Attributes:
        counts: Jobs per state.
        running: The runs being collected right now by this service's workers.
        workers: This service's worker count.
        journal: Where the journal is (a PostgreSQL URL without its password).
        output_root: Where outputs go.
        in_trash: How many cleaned runs are in the trash.
        pending_deletion: The first :data:`TRASH_LISTED` of them, soonest deletion first.
        last_scan: The last catch-up scan, if any ran.
        recent: The most recently updated jobs.
        compaction: ``format: "delta"``: each table's upkeep (when this service last compacted it), by table.
        following: ``follow: true``: the runs being followed, with their lag.
        extra: Further sections other parts of the service report (for example a cleanup
            in progress), by name.
    """

    counts: JobCounts
    running: list[str]
    workers: int
    journal: str
    output_root: str
    in_trash: int
    pending_deletion: list[TrashEntry]
    last_scan: ScanResult | None
    recent: list[Job]
    extra: dict[str, Any] = field(default_factory=dict)
    compaction: dict[str, TableUpkeepState] = field(default_factory=dict)
    following: list[FollowedRun] = field(default_factory=list)

    @property
    def queued(self) -> int:
        """Jobs due to be collected."""
        return self.counts[JobState.PENDING]

    @property
    def waiting(self) -> int:
        """Jobs whose run has no ``_DONE`` yet."""
        return self.counts[JobState.WAITING]

    def to_dict(self) -> dict[str, Any]:
        """Plain built-in types, for a HEROS reply."""
        return {
            "counts": self.counts.to_dict(),
            "queued": self.queued,
            "waiting": self.waiting,
            "running": list(self.running),
            "workers": self.workers,
            "journal": self.journal,
            "output_root": self.output_root,
            "in_trash": self.in_trash,
            "pending_deletion": [asdict(entry) for entry in self.pending_deletion],
            "last_scan": None if self.last_scan is None else asdict(self.last_scan),
            "recent": [job.to_dict() for job in self.recent],
            "compaction": {table: asdict(state) for table, state in self.compaction.items()},
            "following": [asdict(run) for run in self.following],
            **self.extra,
        }
