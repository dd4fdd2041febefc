"""The shared job journal on PostgreSQL: one journal for a fleet of actors on several hosts.

:class:`PgJournal` implements :class:`herocollector.journal.base.Journal` (the job model, the
state machine and what a repeated announcement does are described there) in PostgreSQL,
through psycopg 3, so that every actor of a fleet sees and changes the same jobs:

* every actor hears every event; the run is journalled once (``INSERT … ON CONFLICT DO
  NOTHING`` on the unique path);
* a worker takes a due job with ``FOR UPDATE SKIP LOCKED``, under a lease and a new fencing
  token. A job whose lease ran out (its actor paused, partitioned or dead) is due again and is
  taken over with the next token. Every state change names the token and is refused when it
  is stale, so a fenced-out actor can neither mark the job done nor fail it;
* ``NOTIFY herocollector_jobs`` on every new or requeued job wakes the idle actors, which
  ``LISTEN`` on a connection of their own;
* lease times are the database server's clock, so the hosts' clocks do not have to agree.

The schema is created and migrated by :meth:`PgJournal.migrate`, under an advisory lock, and
``herocollector_schema`` records its version: a journal newer than this code is refused
(:mod:`herocollector.journal.postgres_db` holds the connections and the migrations).
Every query is served by an index; every job of a large journal is read page by page
(:meth:`PgJournal.done_jobs_page`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection, Iterable, Sequence
from typing import Any, TypeVar

from herocollector.errors import JournalError, LeaseLost
from herocollector.journal.base import Announcement, Job, JobState, failure_state, job_from_row, resubmit
from herocollector.journal.cursors import CursorMethods, PgCursors
from herocollector.journal.group import GroupCommit
from herocollector.journal.leases import LeaseMethods, PgLeases
from herocollector.journal.postgres_db import CHANNEL, FOLD_AT, FOLD_KEY, SCHEMA_VERSION, Conn, PgConnections, redact
from herocollector.journal.postgres_db import NOW as _NOW
from herocollector.journal.postgres_db import first as _first
from herocollector.journal.postgres_db import jsonb as _jsonb
from herocollector.journal.reservations import PgReservations, ReservationMethods

__all__ = ["SCHEMA_VERSION", "PgJournal", "redact"]

_T = TypeVar("_T")


class PgJournal(LeaseMethods, CursorMethods, ReservationMethods):
    """The job journal on PostgreSQL (thread-safe); see the module documentation.

    Args:
        url: A ``postgresql://`` connection URL (libpq: host, port, dbname, user, password,
            ``sslmode``, a Unix socket folder as ``host=…``).
        connect_timeout: Seconds to wait for the server.

    Raises:
        JournalError: The server cannot be reached, or its schema is newer than this code.
    """

    shared = True
    """A fleet shares this journal: leases are renewed and checked."""

    def __init__(self, url: str, connect_timeout: float = 10.0) -> None:
        self.url = url
        self.location = redact(url)
        self._db = PgConnections(url, connect_timeout)
        self.migrate()
        self._leases = PgLeases(self._db)
        self._cursors = PgCursors(self._db)
        # The workers' changes share transactions and commits (one WAL flush for all that come together).
        self._group: GroupCommit[Conn] = GroupCommit(self._db.run_batch)
        self._reservations = PgReservations(self._group, self._one)

    def _run(self, action: Callable[[Conn], _T], read: bool = False, single: bool = False) -> _T:
        """Run ``action`` in one transaction (see :meth:`PgConnections.run`)."""
        return self._db.run(action, read, single)

    def _grouped(self, step: Callable[[Conn], _T], single: bool = False) -> _T:
        """Run ``step`` in the next group commit (:mod:`herocollector.journal.group`); durable on return."""
        return self._group.run(step, single)

    def migrate(self) -> int:
        """Create or upgrade the schema; returns its version.

        Raises:
            JournalError: The schema is newer than this code.
        """
        return self._db.migrate()

    def subscribe(self, wake: Callable[[], None]) -> None:
        """Call ``wake`` whenever another actor journals or requeues a job (``LISTEN``)."""
        self._db.subscribe(wake)

    def close(self) -> None:
        """Stop listening and close the connections."""
        self._db.close()

    # -- reading -----------------------------------------------------------------------------

    @staticmethod
    def _outputs(db: Conn, ids: list[int]) -> dict[int, dict[str, int]]:
        found: dict[int, dict[str, int]] = {i: {} for i in ids}
        if ids:
            for row in db.execute(
                "SELECT job_id, path, rows FROM herocollector_outputs WHERE job_id = ANY(%s) ORDER BY path", (ids,)
            ):
                found[int(row["job_id"])][row["path"]] = int(row["rows"])
        return found

    def _jobs(self, db: Conn, rows: Iterable[dict[str, Any]]) -> list[Job]:
        rows = list(rows)
        outputs = self._outputs(db, [int(r["id"]) for r in rows])
        return [job_from_row(r, r["metadata"], outputs[int(r["id"])]) for r in rows]

    def _one(self, db: Conn, job_id: int) -> Job:
        jobs = self._jobs(db, db.execute("SELECT * FROM herocollector_jobs WHERE id = %s", (job_id,)).fetchall())
        if not jobs:
            raise JournalError(f"job {job_id} does not exist")
        return jobs[0]

    def _select(self, sql: str, params: Iterable[Any] = ()) -> list[Job]:
        """The jobs a query selects, with their outputs; built after the connection is free again."""

        def step(db: Conn) -> tuple[list[dict[str, Any]], dict[int, dict[str, int]]]:
            rows = db.execute(sql.encode(), tuple(params)).fetchall()
            return rows, self._outputs(db, [int(r["id"]) for r in rows])

        rows, outputs = self._run(step, read=True)
        return [job_from_row(r, r["metadata"], outputs[int(r["id"])]) for r in rows]

    def get(self, job_id: int) -> Job | None:
        """The job with this id, or None."""
        jobs = self._select("SELECT * FROM herocollector_jobs WHERE id = %s", (job_id,))
        return jobs[0] if jobs else None

    def by_path(self, path: str) -> Job | None:
        """The job of a logger directory, or None."""
        jobs = self._select("SELECT * FROM herocollector_jobs WHERE path = %s", (path,))
        return jobs[0] if jobs else None

    def jobs(self, *states: JobState) -> list[Job]:
        """Jobs in any of ``states`` (all jobs if none given), oldest first."""
        if states:
            return self._select(
                "SELECT * FROM herocollector_jobs WHERE state = ANY(%s) ORDER BY id", ([str(s) for s in states],)
            )
        return self._select("SELECT * FROM herocollector_jobs ORDER BY id")

    def jobs_page(self, state: JobState, after_id: int, limit: int) -> list[Job]:
        """Up to ``limit`` jobs in ``state`` whose id is above ``after_id``, in id order (one short read)."""
        return self._select(
            "SELECT * FROM herocollector_jobs WHERE state = %s AND id > %s ORDER BY id LIMIT %s",
            (state.value, after_id, limit),
        )

    def done_jobs_page(self, after_id: int, limit: int) -> list[Job]:
        """Up to ``limit`` done jobs whose id is above ``after_id``, in id order, with their outputs."""
        return self.jobs_page(JobState.DONE, after_id, limit)

    def recent(self, limit: int) -> list[Job]:
        """The ``limit`` newest jobs, oldest of them first."""
        return list(reversed(self._select("SELECT * FROM herocollector_jobs ORDER BY id DESC LIMIT %s", (limit,))))

    def counts(self) -> dict[str, int]:
        """Number of jobs per state (every state listed), from the per-state sums the triggers keep."""

        def step(db: Conn) -> list[dict[str, Any]]:
            rows = db.execute(
                "SELECT state, SUM(n) AS n, COUNT(*) AS parts FROM herocollector_job_counts GROUP BY state"
            )
            found = rows.fetchall()
            if (
                sum(int(r["parts"]) for r in found) >= FOLD_AT
                and _first(db.execute("SELECT pg_try_advisory_xact_lock(%s) AS mine", (FOLD_KEY,)))["mine"]
            ):
                # Rows appended by transactions that commit meanwhile are not in this statement's
                # snapshot: they are neither deleted nor summed, and stay for the next fold.
                db.execute(
                    "WITH gone AS (DELETE FROM herocollector_job_counts RETURNING state, n) "
                    "INSERT INTO herocollector_job_counts (state, n) SELECT state, SUM(n) FROM gone GROUP BY state"
                )
            return found

        rows = self._run(step)
        found = {r["state"]: int(r["n"]) for r in rows}
        return {state.value: found.get(state.value, 0) for state in JobState}

    def owner_of(self, output: str) -> Job | None:
        """The job that wrote an output file, or None."""
        jobs = self._select(
            "SELECT j.* FROM herocollector_jobs j JOIN herocollector_outputs o ON o.job_id = j.id WHERE o.path = %s",
            (output,),
        )
        return jobs[0] if jobs else None

    def next_due(self) -> float | None:
        """The earliest ``next_attempt`` of a pending job, or the earliest lease that runs out."""
        row = self._run(
            lambda db: _first(
                db.execute(
                    "SELECT LEAST((SELECT MIN(COALESCE(next_attempt, 0)) FROM herocollector_jobs "
                    "WHERE state = 'pending'), (SELECT MIN(lease_until) FROM herocollector_jobs "
                    f"WHERE state = 'running')) AS due, {_NOW} AS now"
                )
            ),
            read=True,
        )
        if row["due"] is None:
            return None
        return time.time() + (float(row["due"]) - float(row["now"]))  # in this host's clock

    # -- transitions -----------------------------------------------------------------------

    def _notify(self, db: Conn) -> None:
        db.execute(f"NOTIFY {CHANNEL}")

    def _insert_new(
        self, path: str, source: str, metadata: dict[str, Any], deadline: float | None, now: float
    ) -> Job | None:
        """Journal a run that has no job yet in one statement, with its ``NOTIFY``; None if it has one.

        One round trip instead of a transaction's six, for the common case of a new run.
        """
        sql = (
            "WITH new AS (INSERT INTO herocollector_jobs (path, source, metadata, state, created, updated, deadline) "
            "VALUES (%s, %s, %s, 'pending', %s, %s, %s) ON CONFLICT (path) DO NOTHING RETURNING *) "
            "SELECT new.*, pg_notify(%s, '') FROM new"
        )
        params = (path, source, _jsonb(metadata), now, now, deadline, CHANNEL)
        rows = self._grouped(lambda db: db.execute(sql, params).fetchall(), single=True)
        return job_from_row(rows[0], rows[0]["metadata"], {}) if rows else None

    def submit(
        self, path: str, source: str, metadata: dict[str, Any], deadline: float | None = None
    ) -> tuple[Job, bool]:
        """Journal an announced run; an existing job changes as :data:`herocollector.journal.base.RESUBMIT` says."""
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

        def step(db: Conn) -> list[tuple[Job, bool]]:
            now = time.time()
            results = [self._submit(db, announcement, now) for announcement in announcements]
            if any(queued for _, queued in results):
                self._notify(db)
            return results

        return self._grouped(step)

    def _submit(self, db: Conn, announcement: Announcement, now: float) -> tuple[Job, bool]:
        path, source, metadata, deadline = (
            announcement.path,
            announcement.source,
            announcement.metadata,
            announcement.deadline,
        )
        row = db.execute(
            "INSERT INTO herocollector_jobs (path, source, metadata, state, created, updated, deadline) "
            "VALUES (%s, %s, %s, 'pending', %s, %s, %s) ON CONFLICT (path) DO NOTHING RETURNING id",
            (path, source, _jsonb(metadata), now, now, deadline),
        ).fetchone()
        if row is not None:
            return self._one(db, int(row["id"])), True
        current = db.execute("SELECT id, state FROM herocollector_jobs WHERE path = %s FOR UPDATE", (path,)).fetchone()
        if current is None:  # deleted between the two statements: journal it anew next time
            raise JournalError(f"the job of {path} vanished while it was submitted")
        job_id = int(current["id"])
        changes, queued = resubmit(JobState(current["state"]), source, metadata, deadline, now)
        if changes:
            if "metadata" in changes:
                changes["metadata"] = _jsonb(changes["metadata"])
            assignments = ", ".join(f"{column} = %s" for column in changes)
            db.execute(
                f"UPDATE herocollector_jobs SET {assignments} WHERE id = %s".encode(), (*changes.values(), job_id)
            )
        return self._one(db, job_id), queued

    def submit_new(self, paths: Iterable[str], source: str, deadline: float | None = None) -> int:
        """Journal runs that have no job yet (the catch-up scan); returns how many were new."""
        wanted = list(dict.fromkeys(paths))
        if not wanted:
            return 0

        def step(db: Conn) -> int:
            now = time.time()
            rows = db.execute(
                "INSERT INTO herocollector_jobs (path, source, metadata, state, created, updated, deadline) "
                "SELECT p, %s, '{}'::jsonb, 'pending', %s, %s, %s FROM unnest(%s::text[]) AS p "
                "ON CONFLICT (path) DO NOTHING RETURNING id",
                (source, now, now, deadline, wanted),
            ).fetchall()
            if rows:
                self._notify(db)
            return len(rows)

        return int(self._run(step))

    def record_malformed(self, source: str, event: Any, error: str) -> Job:
        """Journal an event that could not be understood, as a failed job without a path."""

        def step(db: Conn) -> Job:
            now = time.time()
            row = db.execute(
                "INSERT INTO herocollector_jobs (path, source, metadata, state, attempts, error, created, updated) "
                "VALUES (NULL, %s, %s, 'failed', 1, %s, %s, %s) RETURNING id",
                (source, _jsonb({"event": repr(event)[:2000]}), error, now, now),
            ).fetchone()
            assert row is not None  # INSERT … RETURNING returns the row
            return self._one(db, int(row["id"]))

        return self._run(step)

    def take_due(self, now: float | None = None, owner: str = "", lease: float = 30.0) -> Job | None:
        """Take the next due job under a new token and a lease.

        Due is a pending job whose time has come, or a running one whose lease ran out (its
        actor is presumed gone).

        Returns:
            The job, or None if none is due.
        """
        clock = _NOW if now is None else "%(now)s::float8"

        def step(db: Conn) -> Job | None:
            row = db.execute(
                f"WITH clock AS (SELECT {clock} AS now), "
                "next AS (SELECT j.id FROM herocollector_jobs j, clock "
                "  WHERE (j.state = 'pending' AND COALESCE(j.next_attempt, 0) <= clock.now) "
                "     OR (j.state = 'running' AND COALESCE(j.lease_until, 0) < clock.now) "
                "  ORDER BY COALESCE(j.next_attempt, 0), j.id LIMIT 1 FOR UPDATE OF j SKIP LOCKED) "
                "UPDATE herocollector_jobs j SET state = 'running', attempts = j.attempts + 1, next_attempt = NULL, "
                "  updated = clock.now, token = j.token + 1, lease_owner = %(owner)s, "
                "  lease_until = clock.now + %(lease)s "
                "FROM next, clock WHERE j.id = next.id RETURNING j.id",
                {"now": now, "owner": owner, "lease": lease},
            ).fetchone()
            return None if row is None else self._one(db, int(row["id"]))

        return self._grouped(step)

    def start(self, job_id: int) -> Job | None:
        """Take one particular pending job (running, attempt counted, new token); None if not pending."""

        def step(db: Conn) -> Job | None:
            cur = db.execute(
                f"UPDATE herocollector_jobs SET state = 'running', attempts = attempts + 1, next_attempt = NULL, "
                f"updated = {_NOW}, token = token + 1 WHERE id = %s AND state = 'pending'",
                (job_id,),
            )
            return self._one(db, job_id) if cur.rowcount else None

        return self._run(step)

    def renew(self, job_id: int, token: int, lease: float) -> bool:
        """Extend the lease of a running job held under ``token``; False if it was lost."""

        def step(db: Conn) -> bool:
            cur = db.execute(
                f"UPDATE herocollector_jobs SET lease_until = {_NOW} + %s "
                "WHERE id = %s AND token = %s AND state = 'running'",
                (lease, job_id, token),
            )
            return bool(cur.rowcount)

        return bool(self._grouped(step, single=True))

    def _fenced_update(
        self, sql: str, params: tuple[Any, ...], job_id: int, token: int | None, notify: bool = False
    ) -> Job:
        """Run an update that names the job's token; raise LeaseLost if it is stale."""

        def step(db: Conn) -> Job:
            cur = db.execute(sql.encode(), (*params, job_id, token))
            if token is not None and not cur.rowcount:
                current = db.execute(
                    "SELECT token, lease_owner FROM herocollector_jobs WHERE id = %s", (job_id,)
                ).fetchone()
                holder = f"token {current['token']} of {current['lease_owner']}" if current else "no job"
                raise LeaseLost(f"job {job_id}: token {token} is stale ({holder})")
            if notify:
                self._notify(db)
            return self._one(db, job_id)

        return self._grouped(step)

    def park(self, job_id: int, check_at: float, deadline: float | None, token: int | None = None) -> Job:
        """A running job whose run has no ``_DONE``: waiting, its attempt not counted."""
        return self._fenced_update(
            "UPDATE herocollector_jobs SET state = 'waiting', attempts = GREATEST(attempts - 1, 0), "
            "next_attempt = %s, deadline = %s, updated = %s, lease_owner = NULL, lease_until = NULL "
            "WHERE state = 'running' AND id = %s AND token = COALESCE(%s, token)",
            (check_at, deadline, time.time()),
            job_id,
            token,
        )

    def wake(self, job_id: int) -> None:
        """A waiting job whose ``_DONE`` appeared: pending, due now."""

        def step(db: Conn) -> None:
            cur = db.execute(
                "UPDATE herocollector_jobs SET state = 'pending', next_attempt = NULL, updated = %s "
                "WHERE id = %s AND state = 'waiting'",
                (time.time(), job_id),
            )
            if cur.rowcount:
                self._notify(db)

        self._run(step)

    def finish(self, job_id: int, outputs: dict[str, int], token: int | None = None) -> Job:
        """Mark a job done with its outputs and their row counts.

        Raises:
            LeaseLost: ``token`` is stale.
        """

        def step(db: Conn) -> Job:
            cur = db.execute(
                "UPDATE herocollector_jobs SET state = 'done', error = NULL, rows = %s, next_attempt = NULL, "
                "deadline = NULL, updated = %s, lease_owner = NULL, lease_until = NULL "
                "WHERE id = %s AND token = COALESCE(%s, token)",
                (sum(outputs.values()), time.time(), job_id, token),
            )
            if token is not None and not cur.rowcount:
                raise LeaseLost(f"job {job_id}: token {token} is stale")
            db.execute("DELETE FROM herocollector_outputs WHERE job_id = %s", (job_id,))
            db.execute(  # one statement for all outputs: one round trip
                "INSERT INTO herocollector_outputs (path, job_id, rows) "
                "SELECT p, %s, r FROM unnest(%s::text[], %s::bigint[]) AS o (p, r)",
                (job_id, list(outputs), list(outputs.values())),
            )
            return self._one(db, job_id)

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
        """Record a failed attempt (see :meth:`herocollector.journal.sqlite.SqliteJournal.fail`)."""
        state = failure_state(retry_at).value
        deadline = "deadline" if keep_deadline else "NULL"

        def step(db: Conn) -> Job:
            cur = db.execute(
                f"UPDATE herocollector_jobs SET state = %s, error = %s, next_attempt = %s, deadline = {deadline}, "
                "updated = %s, lease_owner = NULL, lease_until = NULL WHERE id = %s AND token = COALESCE(%s, token)",
                (state, error, retry_at, time.time(), job_id, token),
            )
            if token is not None and not cur.rowcount:
                raise LeaseLost(f"job {job_id}: token {token} is stale")
            db.execute(
                "DELETE FROM herocollector_outputs WHERE job_id = %s AND NOT (path = ANY(%s))",
                (job_id, list(keep_outputs)),
            )
            if retry_at is not None:
                self._notify(db)
            return self._one(db, job_id)

        return self._grouped(step)

    def expire(self, job_id: int, error: str, retry_at: float | None) -> Job:
        """A waiting job whose ``_DONE`` deadline passed: the attempt counts."""
        state = failure_state(retry_at).value

        def step(db: Conn) -> Job:
            db.execute(
                "UPDATE herocollector_jobs SET state = %s, attempts = attempts + 1, error = %s, next_attempt = %s, "
                "deadline = NULL, updated = %s WHERE id = %s AND state = 'waiting'",
                (state, error, retry_at, time.time(), job_id),
            )
            db.execute("DELETE FROM herocollector_outputs WHERE job_id = %s", (job_id,))
            return self._one(db, job_id)

        return self._run(step)

    def retry(self, path: str | None = None) -> list[Job]:
        """Put failed jobs (all, or the one of ``path``) back to pending with no attempts."""

        def step(db: Conn) -> list[Job]:
            rows = db.execute(
                "UPDATE herocollector_jobs SET state = 'pending', attempts = 0, next_attempt = NULL, deadline = NULL, "
                "updated = %s WHERE state = 'failed' AND path IS NOT NULL AND path = COALESCE(%s, path) RETURNING id",
                (time.time(), path),
            ).fetchall()
            if rows:
                self._notify(db)
            return [self._one(db, int(r["id"])) for r in sorted(rows, key=lambda r: r["id"])]

        return list(self._run(step))

    def resume(self, owner: str | None = None) -> list[Job]:
        """After a restart: the running jobs this owner held, or whose lease ran out, are pending.

        The interrupted attempt still counts. Other actors' live leases are left alone.

        Returns:
            Every job that is pending or waiting now.
        """

        def step(db: Conn) -> list[Job]:
            db.execute(
                "UPDATE herocollector_jobs SET state = 'pending', lease_owner = NULL, lease_until = NULL, "
                f"updated = %s WHERE state = 'running' AND (lease_owner = %s OR COALESCE(lease_until, 0) < {_NOW})",
                (time.time(), owner),
            )
            rows = db.execute(
                "SELECT * FROM herocollector_jobs WHERE state IN ('pending', 'waiting') ORDER BY id"
            ).fetchall()
            return self._jobs(db, rows)

        return list(self._run(step))

    def defer(self, job_id: int, retry_at: float | None, reason: str | None, token: int | None = None) -> Job:
        """Put a running job back to pending without counting the attempt."""
        return self._fenced_update(
            "UPDATE herocollector_jobs SET state = 'pending', attempts = GREATEST(attempts - 1, 0), "
            "error = COALESCE(%s, error), next_attempt = %s, updated = %s, lease_owner = NULL, lease_until = NULL "
            "WHERE state = 'running' AND id = %s AND token = COALESCE(%s, token)",
            (reason, retry_at, time.time()),
            job_id,
            token,
            notify=True,
        )

    def mark_cleaned(self, job_id: int, trash_until: float | None = None) -> None:
        """Record a cleanup: a done job becomes cleaned (other states stay as they are)."""
        self._run(
            lambda db: db.execute(
                "UPDATE herocollector_jobs SET state = CASE WHEN state = 'done' THEN 'cleaned' ELSE state END, "
                "trash_until = %s, updated = %s WHERE id = %s",
                (trash_until, time.time(), job_id),
            )
        )

    def in_trash(self, limit: int | None = None) -> list[Job]:
        """Jobs whose segments are in the trash, soonest purge first (at most ``limit``; None: all)."""
        return self._select(
            "SELECT * FROM herocollector_jobs WHERE trash_until IS NOT NULL ORDER BY trash_until, id LIMIT %s",
            (limit,),
        )

    def trash_count(self) -> int:
        """How many jobs have segments in the trash."""
        sql = "SELECT COUNT(*) AS n FROM herocollector_jobs WHERE trash_until IS NOT NULL"
        return int(self._run(lambda db: _first(db.execute(sql)), read=True)["n"])

    def purged(self, job_id: int) -> None:
        """Record that a job's trash was deleted for good."""
        self._run(
            lambda db: db.execute(
                "UPDATE herocollector_jobs SET trash_until = NULL, updated = %s WHERE id = %s", (time.time(), job_id)
            )
        )

    def restored(self, job_id: int) -> None:
        """A job whose trash was put back: a cleaned one is done again."""
        self._run(
            lambda db: db.execute(
                "UPDATE herocollector_jobs SET state = CASE WHEN state = 'cleaned' THEN 'done' ELSE state END, "
                "trash_until = NULL, updated = %s WHERE id = %s",
                (time.time(), job_id),
            )
        )
