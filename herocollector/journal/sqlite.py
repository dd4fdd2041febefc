"""The job journal of one actor: every collection job, durably, in SQLite under its ``state_dir``.

:class:`SqliteJournal` implements :class:`herocollector.journal.base.Journal` (the job model,
the state machine and what a repeated announcement does are described there) on a SQLite file
in WAL mode with ``synchronous=FULL``. It is thread-safe: changes go through one connection
under one lock, in short transactions that the workers' transitions share when they come
together (:mod:`herocollector.journal.group`: one fsync for all); reads through another, which WAL lets read while
the first writes. Every query is served by an index (:data:`herocollector.journal.sqlite_db.INDEXES`),
so a call takes about the same time with a hundred jobs or a hundred thousand; every job of a
large journal is read page by page (:meth:`SqliteJournal.done_jobs_page`).

An older journal file gains the columns, indexes and counts added since on open
(:func:`herocollector.journal.sqlite_db.migrate`).
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Callable, Collection, Iterable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from herocollector.errors import JournalError, LeaseLost, OutputTakenError
from herocollector.journal.base import Announcement, Job, JobState, JobStore, failure_state, job_from_row, resubmit
from herocollector.journal.cursors import CursorMethods, SqliteCursors
from herocollector.journal.group import GroupCommit, Outcome
from herocollector.journal.leases import LeaseMethods, SqliteLeases
from herocollector.journal.reservations import ReservationMethods, SqliteReservations, sqlite_release
from herocollector.journal.sqlite_db import Transaction, in_states, migrate, run_batch

__all__ = ["Job", "JobState", "JobStore", "Journal", "OutputTakenError", "SqliteJournal", "open_journal"]

_T = TypeVar("_T")


def _dumps(metadata: dict[str, Any]) -> str:
    """Metadata as JSON text; what JSON cannot hold is stored as its ``str``."""
    return json.dumps(metadata, default=str)


class SqliteJournal(LeaseMethods, CursorMethods, ReservationMethods):
    """The service's durable job store in SQLite (thread-safe), for one actor.

    A fleet of actors shares :class:`herocollector.journal.postgres.PgJournal` instead; both
    implement :class:`herocollector.journal.base.Journal` (:func:`open_journal` picks one).

    Args:
        file: The SQLite database file; created with its parent folders.

    Raises:
        JournalError: The database cannot be opened.
    """

    shared = False
    """Only one actor uses it (the state_dir lock makes sure): leases are never taken over."""

    def __init__(self, file: str | Path) -> None:
        self.file = Path(file)
        self.location = str(self.file)
        self._lock = threading.RLock()
        self._read_lock = threading.Lock()
        try:
            self.file.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(self.file, check_same_thread=False, isolation_level=None, timeout=30)
            self._db.row_factory = sqlite3.Row
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            migrate(self._db)
            # Reads go through a connection of their own (WAL lets it read while the other
            # writes), so a page of jobs read for a cleanup never holds up a submit.
            self._reader = sqlite3.connect(self.file, check_same_thread=False, isolation_level=None, timeout=30)
            self._reader.row_factory = sqlite3.Row
            self._reader.execute("PRAGMA query_only=ON")
            self._leases = SqliteLeases(self._transaction)
            self._cursors = SqliteCursors(self._transaction)
            # The workers' changes share durable commits (one fsync for all that come together).
            self._group: GroupCommit[sqlite3.Connection] = GroupCommit(self._run_batch)
            self._reservations = SqliteReservations(self._group, self._fetch)
        except (sqlite3.Error, OSError) as exc:
            raise JournalError(f"cannot open the job journal: {exc}", self.file) from None

    def close(self) -> None:
        """Close the database."""
        with self._lock, self._read_lock:
            self._db.close()
            self._reader.close()

    def subscribe(self, wake: Callable[[], None]) -> None:
        """Nothing to listen for: only this actor writes the journal."""

    def _transaction(self) -> Transaction:
        return Transaction(self._db, self._lock, self.file)

    def _run_batch(self, steps: Sequence[Callable[[sqlite3.Connection], Any]], single: bool) -> list[Outcome]:
        return run_batch(self._db, self._lock, self.file, steps, single)

    def _grouped(self, step: Callable[[sqlite3.Connection], _T], single: bool = False) -> _T:
        """Run ``step`` in the next group commit (:mod:`herocollector.journal.group`); durable on return."""
        return self._group.run(step, single)

    def _read(self, sql: str, params: Iterable[Any] = ()) -> list[sqlite3.Row]:
        with self._read_lock:
            try:
                return self._reader.execute(sql, tuple(params)).fetchall()
            except sqlite3.Error as exc:
                raise JournalError(f"journal query failed: {exc}", self.file) from None

    @staticmethod
    def _outputs(db: sqlite3.Connection, ids: list[int]) -> dict[int, dict[str, int]]:
        """The outputs of these jobs, by job id (one query per 500 jobs, through ``outputs_job``)."""
        found: dict[int, dict[str, int]] = {i: {} for i in ids}
        for start in range(0, len(ids), 500):
            part = ids[start : start + 500]
            marks = ",".join("?" * len(part))
            for r in db.execute(
                f"SELECT job_id, path, rows FROM outputs WHERE job_id IN ({marks}) ORDER BY path", part
            ):
                found[r["job_id"]][r["path"]] = r["rows"]
        return found

    def _build(self, db: sqlite3.Connection, rows: Iterable[sqlite3.Row]) -> list[Job]:
        rows = list(rows)
        return self._assemble(rows, self._outputs(db, [r["id"] for r in rows]))

    @staticmethod
    def _assemble(rows: list[sqlite3.Row], outputs: dict[int, dict[str, int]]) -> list[Job]:
        return [job_from_row(row, json.loads(row["metadata"]), outputs[row["id"]]) for row in rows]

    def _select(self, sql: str, params: Iterable[Any] = ()) -> list[Job]:
        """The jobs a query on ``jobs`` selects, with their outputs.

        They are read on the reader connection, in one read transaction (the jobs and their
        outputs agree), and built after its lock is released.
        """
        with self._read_lock:
            try:
                self._reader.execute("BEGIN")
                try:
                    rows = self._reader.execute(sql, tuple(params)).fetchall()
                    outputs = self._outputs(self._reader, [r["id"] for r in rows])
                finally:
                    self._reader.execute("COMMIT")
            except sqlite3.Error as exc:
                raise JournalError(f"journal query failed: {exc}", self.file) from None
        return self._assemble(rows, outputs)

    def _fetch(self, db: sqlite3.Connection, job_id: int) -> Job:
        jobs = self._build(db, db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchall())
        if not jobs:
            raise JournalError(f"job {job_id} does not exist", self.file)
        return jobs[0]

    # -- queries ---------------------------------------------------------------------------

    def get(self, job_id: int) -> Job | None:
        """The job with this id, or None."""
        jobs = self._select("SELECT * FROM jobs WHERE id = ?", (job_id,))
        return jobs[0] if jobs else None

    def by_path(self, path: str) -> Job | None:
        """The job of a logger directory, or None."""
        jobs = self._select("SELECT * FROM jobs WHERE path = ?", (path,))
        return jobs[0] if jobs else None

    def jobs(self, *states: JobState) -> list[Job]:
        """Jobs in any of ``states`` (all jobs if none given), oldest first.

        Unbounded: for every job of a large journal page with :meth:`jobs_page`.
        """
        if states:
            sql, params = in_states(states)
            return self._select(sql, params)
        return self._select("SELECT * FROM jobs ORDER BY id")

    def jobs_page(self, state: JobState, after_id: int, limit: int) -> list[Job]:
        """Up to ``limit`` jobs in ``state`` whose id is above ``after_id``, in id order (one short read)."""
        return self._select(
            "SELECT * FROM jobs WHERE state = ? AND id > ? ORDER BY id LIMIT ?", (state.value, after_id, limit)
        )

    def done_jobs_page(self, after_id: int, limit: int) -> list[Job]:
        """Up to ``limit`` done jobs whose id is above ``after_id``, in id order, with their outputs.

        Page through every done job with ``after_id`` = the last id of the previous page
        (start at 0) until a page is empty; each page is one short read.
        """
        return self.jobs_page(JobState.DONE, after_id, limit)

    def recent(self, limit: int) -> list[Job]:
        """The ``limit`` newest jobs, oldest of them first (without reading the whole journal)."""
        return list(reversed(self._select("SELECT * FROM jobs ORDER BY id DESC LIMIT ?", (limit,))))

    def counts(self) -> dict[str, int]:
        """Number of jobs per state (every state listed)."""
        found = {row[0]: row[1] for row in self._read("SELECT state, n FROM job_counts")}
        return {state.value: found.get(state.value, 0) for state in JobState}

    def owner_of(self, output: str) -> Job | None:
        """The job that wrote an output file, or None."""
        jobs = self._select("SELECT j.* FROM jobs j JOIN outputs o ON o.job_id = j.id WHERE o.path = ?", (output,))
        return jobs[0] if jobs else None

    def next_due(self) -> float | None:
        """The earliest ``next_attempt`` of a pending job (0 if one is due with none set)."""
        rows = self._read("SELECT MIN(COALESCE(next_attempt, 0)) FROM jobs WHERE state = ?", (JobState.PENDING.value,))
        due = rows[0][0]
        return None if due is None else float(due)

    # -- transitions -----------------------------------------------------------------------

    def _insert_new(
        self, path: str, source: str, metadata: dict[str, Any], deadline: float | None, now: float
    ) -> Job | None:
        """Journal a run that has no job yet in one statement (its own transaction); None if it has one.

        One statement instead of a transaction's five, for the common case of a new run: each
        one gives up the GIL and has to win it back from busy threads.
        """
        params = (path, source, _dumps(metadata), JobState.PENDING.value, now, now, deadline)
        rows = self._grouped(
            lambda db: db.execute(
                "INSERT INTO jobs (path, source, metadata, state, created, updated, deadline) "
                "VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (path) DO NOTHING RETURNING *",
                params,
            ).fetchall(),
            single=True,
        )
        return self._assemble(rows, {row["id"]: {} for row in rows})[0] if rows else None

    def submit(
        self, path: str, source: str, metadata: dict[str, Any], deadline: float | None = None
    ) -> tuple[Job, bool]:
        """Journal an announced run; an existing job changes as :data:`herocollector.journal.base.RESUBMIT` says.

        Args:
            path: The logger directory.
            source: The announcing HERO.
            metadata: Event metadata for templating.
            deadline: Until when to wait for its ``_DONE`` (None: no limit).

        Returns:
            The job and whether it is due now (new or requeued).
        """
        return self.submit_many([Announcement(path, source, metadata, deadline)])[0]

    def submit_many(self, announcements: Sequence[Announcement]) -> list[tuple[Job, bool]]:
        """:meth:`submit` for many announcements in one transaction (one durable commit)."""
        if not announcements:
            return []
        if len(announcements) == 1:  # the common case, a new run: one statement, no transaction round trips
            one = announcements[0]
            created = self._insert_new(one.path, one.source, one.metadata, one.deadline, time.time())
            if created is not None:
                return [(created, True)]
        now = time.time()
        return self._grouped(lambda db: [self._submit(db, announcement, now) for announcement in announcements])

    def _submit(self, db: sqlite3.Connection, announcement: Announcement, now: float) -> tuple[Job, bool]:
        path, source, metadata, deadline = (
            announcement.path,
            announcement.source,
            announcement.metadata,
            announcement.deadline,
        )
        row = db.execute("SELECT id, state FROM jobs WHERE path = ?", (path,)).fetchone()
        if row is None:
            cur = db.execute(
                "INSERT INTO jobs (path, source, metadata, state, created, updated, deadline) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                (path, source, _dumps(metadata), JobState.PENDING.value, now, now, deadline),
            )
            return self._fetch(db, int(cur.lastrowid or 0)), True
        changes, queued = resubmit(JobState(row["state"]), source, metadata, deadline, now)
        if changes:
            if "metadata" in changes:
                changes["metadata"] = _dumps(changes["metadata"])
            assignments = ", ".join(f"{column} = ?" for column in changes)
            db.execute(f"UPDATE jobs SET {assignments} WHERE id = ?", (*changes.values(), row["id"]))
        return self._fetch(db, row["id"]), queued

    def submit_new(self, paths: Iterable[str], source: str, deadline: float | None = None) -> int:
        """Journal runs that have no job yet (the catch-up scan); the others are left alone.

        Returns:
            How many jobs were created.
        """
        now = time.time()
        wanted = list(dict.fromkeys(paths))
        with self._transaction() as db:
            known: set[str] = set()
            for start in range(0, len(wanted), 500):
                part = wanted[start : start + 500]
                marks = ",".join("?" * len(part))
                known.update(r[0] for r in db.execute(f"SELECT path FROM jobs WHERE path IN ({marks})", part))
            rows = [(p, source, "{}", JobState.PENDING.value, now, now, deadline) for p in wanted if p not in known]
            db.executemany(
                "INSERT INTO jobs (path, source, metadata, state, created, updated, deadline) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                rows,
            )
            return len(rows)

    def record_malformed(self, source: str, event: Any, error: str) -> Job:
        """Journal an event that could not be understood, as a failed job without a path."""
        now = time.time()
        with self._transaction() as db:
            cur = db.execute(
                "INSERT INTO jobs (path, source, metadata, state, attempts, error, created, updated) "
                "VALUES (NULL, ?, ?, ?, 1, ?, ?, ?)",
                (source, json.dumps({"event": repr(event)[:2000]}), JobState.FAILED.value, error, now, now),
            )
            return self._fetch(db, int(cur.lastrowid or 0))

    def take_due(self, now: float | None = None, owner: str = "", lease: float = 3600.0) -> Job | None:
        """Take the next due pending job: running, attempt counted, a new fencing token and a lease.

        Args:
            now: The time (default: now).
            owner: Who takes it.
            lease: Seconds the lease lasts unless renewed.

        Returns:
            The job, or None if none is due.
        """
        now = time.time() if now is None else now

        def step(db: sqlite3.Connection) -> Job | None:
            row = db.execute(
                "SELECT id FROM jobs WHERE state = ? AND COALESCE(next_attempt, 0) <= ? "
                "ORDER BY COALESCE(next_attempt, 0), id LIMIT 1",
                (JobState.PENDING.value, now),
            ).fetchone()
            if row is None:
                return None
            db.execute(
                "UPDATE jobs SET state = ?, attempts = attempts + 1, next_attempt = NULL, updated = ?, "
                "token = token + 1, lease_owner = ?, lease_until = ? WHERE id = ?",
                (JobState.RUNNING.value, now, owner, now + lease, row["id"]),
            )
            return self._fetch(db, row["id"])

        return self._grouped(step)

    def renew(self, job_id: int, token: int, lease: float) -> bool:
        """Extend the lease of a running job held under ``token``.

        Returns:
            False if the lease is lost (the token is stale, or the job is no longer running).
        """
        until = time.time() + lease
        sql = "UPDATE jobs SET lease_until = ? WHERE id = ? AND token = ? AND state = ?"
        params = (until, job_id, token, JobState.RUNNING.value)
        return bool(self._grouped(lambda db: db.execute(sql, params).rowcount, single=True))

    def _fenced(self, db: sqlite3.Connection, cur: sqlite3.Cursor, job_id: int, token: int | None) -> None:
        """Raise LeaseLost if an update guarded by ``token`` changed nothing."""
        if token is not None and not cur.rowcount:
            current = db.execute("SELECT token, lease_owner FROM jobs WHERE id = ?", (job_id,)).fetchone()
            holder = f"token {current['token']} of {current['lease_owner']}" if current else "no job"
            raise LeaseLost(f"job {job_id}: token {token} is stale ({holder})", self.file)

    def start(self, job_id: int) -> Job | None:
        """Take one particular pending job (running, attempt counted, new token); None if it is not pending."""
        with self._transaction() as db:
            cur = db.execute(
                "UPDATE jobs SET state = ?, attempts = attempts + 1, next_attempt = NULL, updated = ?, "
                "token = token + 1 WHERE id = ? AND state = ?",
                (JobState.RUNNING.value, time.time(), job_id, JobState.PENDING.value),
            )
            return self._fetch(db, job_id) if cur.rowcount else None

    def park(self, job_id: int, check_at: float, deadline: float | None, token: int | None = None) -> Job:
        """A running job whose run has no ``_DONE``: waiting, its attempt not counted."""

        def step(db: sqlite3.Connection) -> Job:
            cur = db.execute(
                "UPDATE jobs SET state = ?, attempts = MAX(attempts - 1, 0), next_attempt = ?, deadline = ?, "
                "updated = ?, lease_owner = NULL, lease_until = NULL WHERE id = ? AND state = ? "
                "AND token = COALESCE(?, token)",
                (JobState.WAITING.value, check_at, deadline, time.time(), job_id, JobState.RUNNING.value, token),
            )
            self._fenced(db, cur, job_id, token)
            return self._fetch(db, job_id)

        return self._grouped(step)

    def wake(self, job_id: int) -> None:
        """A waiting job whose ``_DONE`` appeared: pending, due now."""
        with self._transaction() as db:
            db.execute(
                "UPDATE jobs SET state = ?, next_attempt = NULL, updated = ? WHERE id = ? AND state = ?",
                (JobState.PENDING.value, time.time(), job_id, JobState.WAITING.value),
            )

    def finish(self, job_id: int, outputs: dict[str, int], token: int | None = None) -> Job:
        """Mark a job done with its outputs and their row counts.

        Raises:
            LeaseLost: ``token`` is stale.
        """

        def step(db: sqlite3.Connection) -> Job:
            cur = db.execute(
                "UPDATE jobs SET lease_owner = NULL, lease_until = NULL WHERE id = ? AND token = COALESCE(?, token)",
                (job_id, token),
            )
            self._fenced(db, cur, job_id, token)
            db.execute("DELETE FROM outputs WHERE job_id = ?", (job_id,))
            db.executemany(
                "INSERT INTO outputs (path, job_id, rows) VALUES (?, ?, ?)",
                [(path, job_id, rows) for path, rows in outputs.items()],
            )
            db.execute(
                "UPDATE jobs SET state = ?, error = NULL, rows = ?, next_attempt = NULL, deadline = NULL, "
                "updated = ? WHERE id = ?",
                (JobState.DONE.value, sum(outputs.values()), time.time(), job_id),
            )
            return self._fetch(db, job_id)

        return self._grouped(step)

    def fail(
        self,
        job_id: int,
        error: str,
        retry_at: float | None,
        keep_deadline: bool = True,
        token: int | None = None,
        keep_outputs: Collection[str] = (),
    ) -> Job:
        """Record a failed attempt: pending again with a retry time, or failed for good.

        The job's output reservations are released, so a failed run blocks no other run's paths,
        except those in ``keep_outputs``: outputs the attempt published that no manifest commits,
        which stay the job's own (in the same transaction) until a retry replaces them.

        Args:
            job_id: The job.
            error: What went wrong.
            retry_at: When to try again; None fails the job for good.
            keep_deadline: Keep the ``_DONE`` deadline (False after a ``_DONE`` timeout, so
                the next attempt waits afresh).
            token: The fencing token the attempt ran under (None: unfenced).
            keep_outputs: Reserved output paths of the job that stay reserved.

        Raises:
            LeaseLost: ``token`` is stale.
        """
        state = failure_state(retry_at)
        deadline = "deadline" if keep_deadline else "NULL"

        def step(db: sqlite3.Connection) -> Job:
            cur = db.execute(
                f"UPDATE jobs SET state = ?, error = ?, next_attempt = ?, deadline = {deadline}, updated = ?, "
                "lease_owner = NULL, lease_until = NULL WHERE id = ? AND token = COALESCE(?, token)",
                (state.value, error, retry_at, time.time(), job_id, token),
            )
            self._fenced(db, cur, job_id, token)
            sqlite_release(db, job_id, keep_outputs)  # a failed job blocks no paths but those it published
            return self._fetch(db, job_id)

        return self._grouped(step)

    def expire(self, job_id: int, error: str, retry_at: float | None) -> Job:
        """A waiting job whose ``_DONE`` deadline passed: the attempt counts.

        It is pending again at ``retry_at`` (and then waits afresh), or failed for good if None.
        """
        state = failure_state(retry_at)
        with self._transaction() as db:
            db.execute(
                "UPDATE jobs SET state = ?, attempts = attempts + 1, error = ?, next_attempt = ?, deadline = NULL, "
                "updated = ? WHERE id = ? AND state = ?",
                (state.value, error, retry_at, time.time(), job_id, JobState.WAITING.value),
            )
            db.execute("DELETE FROM outputs WHERE job_id = ?", (job_id,))
            return self._fetch(db, job_id)

    def retry(self, path: str | None = None) -> list[Job]:
        """Put failed jobs (all, or the one of ``path``) back to pending with no attempts."""
        with self._transaction() as db:
            if path is None:
                rows = db.execute("SELECT id FROM jobs WHERE state = ? AND path IS NOT NULL", (JobState.FAILED.value,))
            else:
                rows = db.execute("SELECT id FROM jobs WHERE state = ? AND path = ?", (JobState.FAILED.value, path))
            ids = [r["id"] for r in rows]
            db.executemany(
                "UPDATE jobs SET state = ?, attempts = 0, next_attempt = NULL, deadline = NULL, updated = ? "
                "WHERE id = ?",
                [(JobState.PENDING.value, time.time(), i) for i in ids],
            )
            return [self._fetch(db, i) for i in ids]

    def resume(self, owner: str | None = None) -> list[Job]:
        """After a restart: jobs that were running go back to pending.

        The interrupted attempt still counts, so a run that crashes the process every time
        ends as failed instead of looping.

        Returns:
            Every job that is pending or waiting now.
        """
        with self._transaction() as db:
            db.execute(
                "UPDATE jobs SET state = ?, updated = ?, lease_owner = NULL, lease_until = NULL WHERE state = ?",
                (JobState.PENDING.value, time.time(), JobState.RUNNING.value),
            )
            sql, params = in_states((JobState.PENDING, JobState.WAITING))
            return self._build(db, db.execute(sql, params).fetchall())

    def defer(self, job_id: int, retry_at: float | None, reason: str | None, token: int | None = None) -> Job:
        """Put a running job back to pending without counting the attempt.

        For a run whose claim another actor holds, or a collection the closing service stopped.
        """

        def step(db: sqlite3.Connection) -> Job:
            cur = db.execute(
                "UPDATE jobs SET state = ?, attempts = MAX(attempts - 1, 0), error = COALESCE(?, error), "
                "next_attempt = ?, updated = ?, lease_owner = NULL, lease_until = NULL "
                "WHERE id = ? AND state = ? AND token = COALESCE(?, token)",
                (JobState.PENDING.value, reason, retry_at, time.time(), job_id, JobState.RUNNING.value, token),
            )
            self._fenced(db, cur, job_id, token)
            return self._fetch(db, job_id)

        return self._grouped(step)

    def mark_cleaned(self, job_id: int, trash_until: float | None = None) -> None:
        """Record a cleanup: a done job becomes cleaned.

        Other states stay as they are: a forced cleanup does not make a run collected. Its
        segments are in the trash until ``trash_until``, or gone if None.
        """
        with self._transaction() as db:
            db.execute(
                "UPDATE jobs SET state = CASE WHEN state = ? THEN ? ELSE state END, trash_until = ?, updated = ? "
                "WHERE id = ?",
                (JobState.DONE.value, JobState.CLEANED.value, trash_until, time.time(), job_id),
            )

    def in_trash(self, limit: int | None = None) -> list[Job]:
        """Jobs whose segments are in the trash, soonest purge first (at most ``limit``; None: all)."""
        return self._select(
            "SELECT * FROM jobs WHERE trash_until IS NOT NULL ORDER BY trash_until, id LIMIT ?",
            (-1 if limit is None else limit,),
        )

    def trash_count(self) -> int:
        """How many jobs have segments in the trash."""
        return int(self._read("SELECT COUNT(*) FROM jobs WHERE trash_until IS NOT NULL")[0][0])

    def purged(self, job_id: int) -> None:
        """Record that a job's trash was deleted for good."""
        with self._transaction() as db:
            db.execute("UPDATE jobs SET trash_until = NULL, updated = ? WHERE id = ?", (time.time(), job_id))

    def restored(self, job_id: int) -> None:
        """A job whose trash was put back: a cleaned one is done again (and can be cleaned again)."""
        with self._transaction() as db:
            db.execute(
                "UPDATE jobs SET state = CASE WHEN state = ? THEN ? ELSE state END, trash_until = NULL, updated = ? "
                "WHERE id = ?",
                (JobState.CLEANED.value, JobState.DONE.value, time.time(), job_id),
            )


Journal = SqliteJournal
"""The class's former name, kept while callers move to :class:`SqliteJournal`.

Not :class:`herocollector.journal.base.Journal`, the protocol both backends implement.
"""


def open_journal(spec: str | Path) -> JobStore:
    """The journal a ``journal`` setting names.

    Args:
        spec: A ``postgresql://`` (or ``postgres://``) URL for a journal a fleet shares, or
            the path of a SQLite file.

    Returns:
        The opened journal.

    Raises:
        JournalError: It cannot be opened.
    """
    text = str(spec)
    if text.startswith(("postgresql://", "postgres://")):
        from herocollector.journal.postgres import PgJournal

        return PgJournal(text)
    return SqliteJournal(text)
