"""The job model and the contract every journal backend keeps.

A job is one logger directory announced by an event, by a remote ``collect`` or found by the
catch-up scan. It is written to the journal before anything else happens, so a crash never
loses an announced run, and the journal is the only queue: workers take due jobs from it
(:meth:`Journal.take_due`), so resuming after a restart is the same query as any other. ::

    pending --take_due--> running --finish--> done --mark_cleaned--> cleaned
       ^  ^                 |  |                      <--restored--
       |  |      no _DONE   |  | fail (retryable, attempts left): pending, next_attempt later
       |  +---- waiting <---+  | fail (final): failed --retry()--> pending
       |    (wake: _DONE seen) |
       +-----------------------+ defer / cancel (another actor, shutdown): attempt not counted

Outputs are recorded with the job that wrote them (an output path belongs to one job only),
which is how a collision between two runs is detected.

Two backends implement :class:`Journal`: :class:`herocollector.journal.sqlite.SqliteJournal`
(one actor, a file under ``state_dir``) and :class:`herocollector.journal.postgres.PgJournal`
(a fleet). What happens when a run that already has a job is announced again is decided here
once (:data:`RESUBMIT`, :func:`resubmit`), so the backends cannot disagree:

========== ===================================================================================
state      a new announcement of the same path
========== ===================================================================================
pending    takes the new source and metadata and becomes due now (attempts kept); queued
waiting    takes the new source and metadata and keeps waiting (deadline kept); not queued
failed     starts over: pending, 0 attempts, the new source, metadata and deadline; queued
running    left alone (a repeated event is not collected twice); not queued
done       left alone; not queued
cleaned    left alone; not queued
========== ===================================================================================

The newest announcement's source and metadata win for a run not yet collected, because a
logger that announces a run again describes it better than before; its ``_DONE`` deadline
still counts from the first announcement.

May import: :mod:`herocollector.errors` only.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol, runtime_checkable


class JobState(enum.StrEnum):
    """Where a job stands."""

    PENDING = "pending"
    """Due at ``next_attempt`` (or now)."""
    WAITING = "waiting"
    """Its run has no ``_DONE`` yet; checked every ``backoff`` ms, no worker held."""
    RUNNING = "running"
    """A worker collects it."""
    DONE = "done"
    """Collected; its outputs are recorded."""
    FAILED = "failed"
    """Failed for good (or refused); ``retry()`` puts it back."""
    CLEANED = "cleaned"
    """Collected, then its segments were cleaned."""


@dataclass
class Job:
    """One journalled collection job.

    Attributes:
        id: Journal id.
        path: The logger directory (None for a malformed event).
        source: The HERO that announced it (``remote`` for ``collect``, ``scan`` for the scan).
        metadata: The event metadata used for templating.
        state: Where it stands.
        attempts: How many times it has been run.
        error: The last error, if any.
        rows: Rows written, once done.
        created: When it was journalled (Unix time).
        updated: When it last changed.
        next_attempt: When it is due (pending) or checked next (waiting), if set.
        trash_until: For a cleaned run whose segments are in the trash: when they are
            deleted for good (Unix time); None once purged or when never trashed.
        deadline: Until when its ``_DONE`` is waited for (None: no limit).
        outputs: Output files and their row counts, once done.
        token: Fencing token: raised every time a worker takes the job. A state change that
            names an older token is refused (:class:`~herocollector.errors.LeaseLost`).
        lease_owner: The actor that holds the job while it runs.
        lease_until: When that lease runs out unless renewed (Unix time).
    """

    id: int
    path: str | None
    source: str
    metadata: dict[str, Any]
    state: JobState
    attempts: int
    error: str | None
    rows: int | None
    created: float
    updated: float
    next_attempt: float | None
    trash_until: float | None = None
    deadline: float | None = None
    outputs: dict[str, int] = field(default_factory=dict)
    token: int = 0
    lease_owner: str | None = None
    lease_until: float | None = None

    def to_dict(self) -> dict[str, Any]:
        """The job as a JSON-friendly dict (what remote methods return)."""
        data = asdict(self)
        data["state"] = self.state.value
        return data


class Row(Protocol):
    """A database row by column name (``sqlite3.Row``, a psycopg ``dict_row``)."""

    def __getitem__(self, key: str, /) -> Any: ...


def job_from_row(row: Row, metadata: dict[str, Any], outputs: dict[str, int]) -> Job:
    """A :class:`Job` from a row of the jobs table (same column names in both backends).

    Args:
        row: The row, by column name.
        metadata: Its metadata, already decoded.
        outputs: Its outputs and their row counts.
    """
    return Job(
        id=int(row["id"]),
        path=row["path"],
        source=row["source"],
        metadata=metadata,
        state=JobState(row["state"]),
        attempts=int(row["attempts"]),
        error=row["error"],
        rows=None if row["rows"] is None else int(row["rows"]),
        created=row["created"],
        updated=row["updated"],
        next_attempt=row["next_attempt"],
        trash_until=row["trash_until"],
        deadline=row["deadline"],
        outputs=outputs,
        token=int(row["token"]),
        lease_owner=row["lease_owner"],
        lease_until=row["lease_until"],
    )


@dataclass(frozen=True)
class Resubmit:
    """What a new announcement does to a job in one state (see the table in the module docs).

    Attributes:
        state: The state it moves to; None: it stays.
        take_event: It takes the announcement's source and metadata.
        due_now: Its ``next_attempt`` is cleared, and ``submit`` reports it queued.
        reset_attempts: Its attempts start again from 0.
        take_deadline: It takes the announcement's ``_DONE`` deadline.
    """

    state: JobState | None = None
    take_event: bool = False
    due_now: bool = False
    reset_attempts: bool = False
    take_deadline: bool = False


@dataclass(frozen=True)
class Announcement:
    """One announcement of a run, as the event intake hands it to :meth:`Journal.submit_many`.

    Attributes:
        path: The logger directory.
        source: The announcing HERO.
        metadata: Event metadata for templating.
        deadline: Until when to wait for its ``_DONE`` (None: no limit).
    """

    path: str
    source: str
    metadata: dict[str, Any]
    deadline: float | None = None


RESUBMIT: Mapping[JobState, Resubmit] = {
    JobState.PENDING: Resubmit(take_event=True, due_now=True),
    JobState.WAITING: Resubmit(take_event=True),
    JobState.FAILED: Resubmit(
        state=JobState.PENDING, take_event=True, due_now=True, reset_attempts=True, take_deadline=True
    ),
    JobState.RUNNING: Resubmit(),
    JobState.DONE: Resubmit(),
    JobState.CLEANED: Resubmit(),
}
"""Per state, what a new announcement of a path that has a job does: the one place it is decided."""


def resubmit(
    state: JobState, source: str, metadata: dict[str, Any], deadline: float | None, now: float
) -> tuple[dict[str, Any], bool]:
    """The column changes for a job in ``state`` that is announced again, and whether it is queued.

    Args:
        state: The job's state now.
        source: The announcing HERO.
        metadata: The announcement's metadata (each backend encodes it for its ``metadata`` column).
        deadline: The announcement's ``_DONE`` deadline.
        now: The time of the announcement.

    Returns:
        ``({column: value}, queued)``; no columns when the job is left alone.
    """
    rule = RESUBMIT[state]
    changes: dict[str, Any] = {}
    if rule.state is not None:
        changes["state"] = rule.state.value
    if rule.take_event:
        changes["source"] = source
        changes["metadata"] = metadata
    if rule.reset_attempts:
        changes["attempts"] = 0
    if rule.due_now:
        changes["next_attempt"] = None
    if rule.take_deadline:
        changes["deadline"] = deadline
    if changes:
        changes["updated"] = now
    return changes, rule.due_now


def failure_state(retry_at: float | None) -> JobState:
    """The state of a failed attempt: pending again at ``retry_at``, or failed for good if None."""
    return JobState.PENDING if retry_at is not None else JobState.FAILED


@runtime_checkable
class Journal(Protocol):
    """The durable job store the service uses; both backends implement all of it.

    Token-guarded transitions (``park``, ``finish``, ``fail``, ``defer``) raise
    :class:`~herocollector.errors.LeaseLost` for a stale token; every database failure is a
    :class:`~herocollector.errors.JournalError`.
    """

    @property
    def shared(self) -> bool:
        """Whether a fleet shares the journal: then leases are renewed, checked and taken over."""
        ...

    @property
    def location(self) -> str:
        """Where the journal is, for logs and ``status()`` (no password)."""
        ...

    def close(self) -> None:
        """Close the journal."""
        ...

    def subscribe(self, wake: Callable[[], None]) -> None:
        """Call ``wake`` when another actor journals or requeues a job (nothing for one actor)."""
        ...

    # -- queries -----------------------------------------------------------------------------

    def get(self, job_id: int) -> Job | None:
        """The job with this id, or None."""
        ...

    def by_path(self, path: str) -> Job | None:
        """The job of a logger directory, or None."""
        ...

    def jobs(self, *states: JobState) -> list[Job]:
        """Jobs in any of ``states`` (all if none given), oldest first; unbounded."""
        ...

    def jobs_page(self, state: JobState, after_id: int, limit: int) -> list[Job]:
        """Up to ``limit`` jobs in ``state`` with an id above ``after_id``, in id order; one short read."""
        ...

    def done_jobs_page(self, after_id: int, limit: int) -> list[Job]:
        """Up to ``limit`` done jobs with an id above ``after_id``, in id order, with their outputs.

        Walk every done job by passing the last id of the previous page (starting at 0) until a
        page is empty. Each page is one short read: the journal is never held between pages.
        A job that becomes done during the walk with an id below the cursor is seen by the next walk.
        """
        ...

    def recent(self, limit: int) -> list[Job]:
        """The ``limit`` newest jobs, oldest of them first."""
        ...

    def counts(self) -> dict[str, int]:
        """Number of jobs per state (every state listed)."""
        ...

    def owner_of(self, output: str) -> Job | None:
        """The job that wrote (or reserved) an output file, or None."""
        ...

    def next_due(self) -> float | None:
        """When the next job is due (Unix time; 0 if one is due now), or None."""
        ...

    def in_trash(self, limit: int | None = None) -> list[Job]:
        """Jobs whose segments are in the trash, soonest purge first (at most ``limit``; None: all)."""
        ...

    def trash_count(self) -> int:
        """How many jobs have segments in the trash."""
        ...

    # -- transitions ---------------------------------------------------------------------------

    def submit(
        self, path: str, source: str, metadata: dict[str, Any], deadline: float | None = None
    ) -> tuple[Job, bool]:
        """Journal an announced run; an existing job changes as :data:`RESUBMIT` says.

        Returns:
            The job and whether it is due now (new or requeued).
        """
        ...

    def submit_many(self, announcements: Sequence[Announcement]) -> list[tuple[Job, bool]]:
        """:meth:`submit` for many announcements in one transaction: one durable commit for all.

        Announcements of the same path are applied in order, as separate calls would be.

        Returns:
            For each announcement, in order, its job and whether it is due now.
        """
        ...

    def submit_new(self, paths: Iterable[str], source: str, deadline: float | None = None) -> int:
        """Journal the runs that have no job yet (the catch-up scan); returns how many were new."""
        ...

    def record_malformed(self, source: str, event: Any, error: str) -> Job:
        """Journal an event that could not be understood, as a failed job without a path."""
        ...

    def take_due(self, now: float | None = None, owner: str = "", lease: float = ...) -> Job | None:
        """Take the next due job: running, attempt counted, a new fencing token and a lease."""
        ...

    def renew(self, job_id: int, token: int, lease: float) -> bool:
        """Extend the lease of a running job held under ``token``; False if it was lost."""
        ...

    def start(self, job_id: int) -> Job | None:
        """Take one particular pending job (running, attempt counted); None if it is not pending."""
        ...

    def park(self, job_id: int, check_at: float, deadline: float | None, token: int | None = None) -> Job:
        """A running job whose run has no ``_DONE``: waiting, its attempt not counted."""
        ...

    def wake(self, job_id: int) -> None:
        """A waiting job whose ``_DONE`` appeared: pending, due now."""
        ...

    def claim_output(self, job_id: int, output: str) -> None:
        """Reserve an output path for a job before it is written.

        Raises:
            OutputTakenError: Another job owns the path.
        """
        ...

    def claim_outputs(self, job_id: int, outputs: Sequence[str]) -> None:
        """Reserve all of a job's output paths before they are written, in one transaction: all or none.

        Raises:
            OutputTakenError: Another job owns one of them (the first in ``outputs``); none is reserved.
        """
        ...

    def release_outputs(self, job_id: int) -> None:
        """Forget the output reservations of a job."""
        ...

    def finish(self, job_id: int, outputs: dict[str, int], token: int | None = None) -> Job:
        """Mark a job done with its outputs and their row counts."""
        ...

    def fail(
        self,
        job_id: int,
        error: str,
        retry_at: float | None,
        keep_deadline: bool = True,
        token: int | None = None,
        keep_outputs: Collection[str] = (),
    ) -> Job:
        """Record a failed attempt: pending again at ``retry_at``, or failed for good if None.

        The job's output reservations are released in the same transaction, but those in
        ``keep_outputs`` (published by the attempt, committed by no manifest) stay the job's own.
        """
        ...

    def expire(self, job_id: int, error: str, retry_at: float | None) -> Job:
        """A waiting job whose ``_DONE`` deadline passed: the attempt counts."""
        ...

    def retry(self, path: str | None = None) -> list[Job]:
        """Put failed jobs (all, or the one of ``path``) back to pending with no attempts."""
        ...

    def resume(self, owner: str | None = None) -> list[Job]:
        """After a restart: running jobs (this owner's, or with a lapsed lease) go back to pending.

        Returns:
            Every job that is pending or waiting now.
        """
        ...

    def defer(self, job_id: int, retry_at: float | None, reason: str | None, token: int | None = None) -> Job:
        """Put a running job back to pending without counting the attempt."""
        ...

    def mark_cleaned(self, job_id: int, trash_until: float | None = None) -> None:
        """Record a cleanup: a done job becomes cleaned; its trash is deleted after ``trash_until``."""
        ...

    def purged(self, job_id: int) -> None:
        """Record that a job's trash was deleted for good."""
        ...

    def restored(self, job_id: int) -> None:
        """A job whose trash was put back: a cleaned one is done again."""
        ...

    # -- named leases (work that is not a job: a table's compaction) ----------------------------

    def acquire_lease(self, name: str, owner: str, seconds: float) -> bool:
        """Take the lease ``name`` for ``seconds`` (free, run out, or ``owner``'s own: renewed).

        Returns:
            False if another owner holds it and its time has not run out.
        """
        ...

    def release_lease(self, name: str, owner: str) -> bool:
        """Give up the lease ``name``; only its holder can. Returns whether ``owner`` held it."""
        ...

    # -- follow cursors (runs collected while they are written) ----------------------------------

    def follow_cursor(self, job_id: int) -> str | None:
        """The follow cursor the job's last holder stored, or None."""
        ...

    def store_follow_cursor(self, job_id: int, token: int, cursor: str) -> None:
        """Store the job's follow cursor; raises LeaseLost unless it runs under ``token``."""
        ...

    def follow_cursors(self) -> dict[int, str]:
        """Every stored follow cursor, by job id."""
        ...


JobStore = Journal
"""Either journal backend (the name the service modules use)."""
