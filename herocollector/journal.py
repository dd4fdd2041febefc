"""The job journal: every collection job, durably, in SQLite under the actor's ``state_dir``.

A job is one logger directory announced by an event (or by a remote ``collect``). It is
written to the journal before it is queued, so a crash never loses an announced run; on
restart the unfinished jobs are queued again. States::

    pending -> running -> done -> cleaned
                 |  ^
                 v  |   (retried with growing delay, up to max_retries)
               failed  <- retry() puts it back to pending

Outputs are recorded with the job that wrote them (an output path belongs to one job only),
which is how a collision between two runs is detected.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

PENDING, RUNNING, DONE, FAILED, CLEANED = "pending", "running", "done", "failed", "cleaned"
STATES = (PENDING, RUNNING, DONE, FAILED, CLEANED)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    path         TEXT UNIQUE,
    source       TEXT NOT NULL,
    metadata     TEXT NOT NULL,
    state        TEXT NOT NULL,
    attempts     INTEGER NOT NULL DEFAULT 0,
    error        TEXT,
    rows         INTEGER,
    created      REAL NOT NULL,
    updated      REAL NOT NULL,
    next_attempt REAL,
    trash_until  REAL
);
CREATE TABLE IF NOT EXISTS outputs (
    path   TEXT PRIMARY KEY,
    job_id INTEGER NOT NULL REFERENCES jobs(id),
    rows   INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS jobs_state ON jobs(state);
"""

# Columns added after the first release, with their SQL type: an older journal gains them on open.
_ADDED_COLUMNS = {"trash_until": "REAL"}


@dataclass
class Job:
    """One journalled collection job.

    Attributes:
        id: Journal id.
        path: The logger directory (None for a malformed event).
        source: The HERO that announced it (or ``remote``).
        metadata: The event metadata used for templating.
        state: One of pending, running, done, failed, cleaned.
        attempts: How many times it has been run.
        error: The last error, if any.
        rows: Rows written, once done.
        created: When it was journalled (Unix time).
        updated: When it last changed.
        next_attempt: When a pending retry is due (Unix time), if scheduled.
        trash_until: For a cleaned run whose segments are in the trash: when they are
            deleted for good (Unix time); None once purged or when never trashed.
        outputs: Output files and their row counts, once done.
    """

    id: int
    path: str | None
    source: str
    metadata: dict[str, Any]
    state: str
    attempts: int
    error: str | None
    rows: int | None
    created: float
    updated: float
    next_attempt: float | None
    trash_until: float | None = None
    outputs: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """The job as a JSON-friendly dict (what remote methods return)."""
        return asdict(self)


class OutputTakenError(Exception):
    """An output path already belongs to another job."""

    def __init__(self, path: str, owner: Job) -> None:
        super().__init__(f"{path} was already written by the job for {owner.path}")
        self.path = path
        self.owner = owner


class Journal:
    """The actor's durable job store (thread-safe).

    Args:
        file: The SQLite database file; created with its parent folders.
    """

    def __init__(self, file: str | Path) -> None:
        self.file = Path(file)
        self.file.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()
        self._db = sqlite3.connect(self.file, check_same_thread=False, isolation_level=None, timeout=30)
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(_SCHEMA)
        present = {row["name"] for row in self._db.execute("PRAGMA table_info(jobs)")}
        for column, sql_type in _ADDED_COLUMNS.items():
            if column not in present:
                self._db.execute(f"ALTER TABLE jobs ADD COLUMN {column} {sql_type}")

    def close(self) -> None:
        """Close the database."""
        with self._lock:
            self._db.close()

    def _transaction(self) -> "_Tx":
        return _Tx(self)

    def _job(self, row: sqlite3.Row | None) -> Job | None:
        if row is None:
            return None
        outputs = {
            r["path"]: r["rows"]
            for r in self._db.execute("SELECT path, rows FROM outputs WHERE job_id = ? ORDER BY path", (row["id"],))
        }
        return Job(
            id=row["id"],
            path=row["path"],
            source=row["source"],
            metadata=json.loads(row["metadata"]),
            state=row["state"],
            attempts=row["attempts"],
            error=row["error"],
            rows=row["rows"],
            created=row["created"],
            updated=row["updated"],
            next_attempt=row["next_attempt"],
            trash_until=row["trash_until"],
            outputs=outputs,
        )

    # -- queries ---------------------------------------------------------------------------

    def get(self, job_id: int) -> Job | None:
        """The job with this id, or None."""
        with self._lock:
            return self._job(self._db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone())

    def by_path(self, path: str) -> Job | None:
        """The job of a logger directory, or None."""
        with self._lock:
            return self._job(self._db.execute("SELECT * FROM jobs WHERE path = ?", (path,)).fetchone())

    def jobs(self, *states: str) -> list[Job]:
        """Jobs in any of ``states`` (all jobs if none given), oldest first."""
        with self._lock:
            if states:
                marks = ",".join("?" * len(states))
                rows = self._db.execute(f"SELECT * FROM jobs WHERE state IN ({marks}) ORDER BY id", states)
            else:
                rows = self._db.execute("SELECT * FROM jobs ORDER BY id")
            return [self._job(r) for r in rows.fetchall()]

    def recent(self, limit: int) -> list[Job]:
        """The ``limit`` newest jobs, oldest of them first (without reading the whole journal)."""
        with self._lock:
            rows = self._db.execute("SELECT * FROM jobs ORDER BY id DESC LIMIT ?", (limit,)).fetchall()
            return [self._job(r) for r in reversed(rows)]

    def counts(self) -> dict[str, int]:
        """Number of jobs per state (every state listed)."""
        with self._lock:
            found = dict(self._db.execute("SELECT state, COUNT(*) FROM jobs GROUP BY state").fetchall())
        return {state: found.get(state, 0) for state in STATES}

    def owner_of(self, output: str) -> Job | None:
        """The job that wrote an output file, or None."""
        with self._lock:
            row = self._db.execute("SELECT job_id FROM outputs WHERE path = ?", (output,)).fetchone()
            return None if row is None else self.get(row["job_id"])

    # -- transitions -----------------------------------------------------------------------

    def submit(self, path: str, source: str, metadata: dict[str, Any]) -> tuple[Job, bool]:
        """Journal an announced run.

        A run that is new, failed or pending is (re)queued; a run that is running, done or
        cleaned is left alone (a repeated event is not collected twice).

        Args:
            path: The logger directory.
            source: The announcing HERO.
            metadata: Event metadata for templating.

        Returns:
            The job and whether it should be queued now.
        """
        now = time.time()
        with self._transaction() as db:
            row = db.execute("SELECT * FROM jobs WHERE path = ?", (path,)).fetchone()
            if row is None:
                cur = db.execute(
                    "INSERT INTO jobs (path, source, metadata, state, created, updated) VALUES (?, ?, ?, ?, ?, ?)",
                    (path, source, json.dumps(metadata, default=str), PENDING, now, now),
                )
                return self._job(db.execute("SELECT * FROM jobs WHERE id = ?", (cur.lastrowid,)).fetchone()), True
            if row["state"] in (FAILED, PENDING):
                db.execute(
                    "UPDATE jobs SET state = ?, source = ?, metadata = ?, attempts = CASE WHEN state = ? "
                    "THEN 0 ELSE attempts END, next_attempt = NULL, updated = ? WHERE id = ?",
                    (PENDING, source, json.dumps(metadata, default=str), FAILED, now, row["id"]),
                )
                return self._job(db.execute("SELECT * FROM jobs WHERE id = ?", (row["id"],)).fetchone()), True
            return self._job(row), False

    def record_malformed(self, source: str, event: Any, error: str) -> Job:
        """Journal an event that could not be understood, as a failed job without a path."""
        now = time.time()
        with self._transaction() as db:
            cur = db.execute(
                "INSERT INTO jobs (path, source, metadata, state, attempts, error, created, updated) "
                "VALUES (NULL, ?, ?, ?, 1, ?, ?, ?)",
                (source, json.dumps({"event": repr(event)[:2000]}), FAILED, error, now, now),
            )
            return self._job(db.execute("SELECT * FROM jobs WHERE id = ?", (cur.lastrowid,)).fetchone())

    def start(self, job_id: int) -> Job | None:
        """Mark a pending job running and count the attempt; None if it is not pending."""
        with self._transaction() as db:
            cur = db.execute(
                "UPDATE jobs SET state = ?, attempts = attempts + 1, next_attempt = NULL, updated = ? "
                "WHERE id = ? AND state = ?",
                (RUNNING, time.time(), job_id, PENDING),
            )
            if not cur.rowcount:
                return None
            return self._job(db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone())

    def claim_output(self, job_id: int, output: str) -> None:
        """Reserve an output path for a job before it is written.

        Raises:
            OutputTakenError: Another job owns the path.
        """
        with self._transaction() as db:
            row = db.execute("SELECT job_id FROM outputs WHERE path = ?", (output,)).fetchone()
            if row is not None and row["job_id"] != job_id:
                raise OutputTakenError(output, self._job(db.execute("SELECT * FROM jobs WHERE id = ?", (row["job_id"],)).fetchone()))
            db.execute("INSERT OR IGNORE INTO outputs (path, job_id, rows) VALUES (?, ?, 0)", (output, job_id))

    def release_outputs(self, job_id: int) -> None:
        """Forget the output reservations of a job that failed."""
        with self._transaction() as db:
            db.execute("DELETE FROM outputs WHERE job_id = ?", (job_id,))

    def finish(self, job_id: int, outputs: dict[str, int]) -> Job:
        """Mark a job done with its outputs and their row counts."""
        with self._transaction() as db:
            db.execute("DELETE FROM outputs WHERE job_id = ?", (job_id,))
            db.executemany(
                "INSERT INTO outputs (path, job_id, rows) VALUES (?, ?, ?)",
                [(path, job_id, rows) for path, rows in outputs.items()],
            )
            db.execute(
                "UPDATE jobs SET state = ?, error = NULL, rows = ?, updated = ? WHERE id = ?",
                (DONE, sum(outputs.values()), time.time(), job_id),
            )
            return self._job(db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone())

    def fail(self, job_id: int, error: str, retry_at: float | None) -> Job:
        """Record a failed attempt: pending again with a retry time, or failed for good."""
        state = PENDING if retry_at is not None else FAILED
        with self._transaction() as db:
            db.execute(
                "UPDATE jobs SET state = ?, error = ?, next_attempt = ?, updated = ? WHERE id = ?",
                (state, error, retry_at, time.time(), job_id),
            )
            return self._job(db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone())

    def retry(self, path: str | None = None) -> list[Job]:
        """Put failed jobs (all, or the one of ``path``) back to pending with no attempts."""
        with self._transaction() as db:
            if path is None:
                ids = [r["id"] for r in db.execute("SELECT id FROM jobs WHERE state = ? AND path IS NOT NULL", (FAILED,))]
            else:
                ids = [r["id"] for r in db.execute("SELECT id FROM jobs WHERE state = ? AND path = ?", (FAILED, path))]
            db.executemany(
                "UPDATE jobs SET state = ?, attempts = 0, next_attempt = NULL, updated = ? WHERE id = ?",
                [(PENDING, time.time(), i) for i in ids],
            )
            return [self._job(db.execute("SELECT * FROM jobs WHERE id = ?", (i,)).fetchone()) for i in ids]

    def resume(self) -> list[Job]:
        """After a restart: jobs that were running go back to pending; all pending are returned."""
        with self._transaction() as db:
            db.execute("UPDATE jobs SET state = ?, updated = ? WHERE state = ?", (PENDING, time.time(), RUNNING))
            rows = db.execute("SELECT * FROM jobs WHERE state = ? ORDER BY id", (PENDING,)).fetchall()
            return [self._job(r) for r in rows]

    def defer(self, job_id: int, retry_at: float, reason: str) -> Job:
        """Put a running job back to pending without counting the attempt (e.g. another
        actor holds the run's claim)."""
        with self._transaction() as db:
            db.execute(
                "UPDATE jobs SET state = ?, attempts = MAX(attempts - 1, 0), error = ?, next_attempt = ?, "
                "updated = ? WHERE id = ?",
                (PENDING, reason, retry_at, time.time(), job_id),
            )
            return self._job(db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone())

    def mark_cleaned(self, job_id: int, trash_until: float | None = None) -> None:
        """Record a cleanup: a done job becomes cleaned (other states stay as they are, a
        forced cleanup does not make a run collected); its segments are in the trash until
        ``trash_until``, or gone if None."""
        with self._transaction() as db:
            db.execute(
                "UPDATE jobs SET state = CASE WHEN state = ? THEN ? ELSE state END, trash_until = ?, updated = ? "
                "WHERE id = ?",
                (DONE, CLEANED, trash_until, time.time(), job_id),
            )

    def in_trash(self) -> list[Job]:
        """Jobs whose segments are in the trash, soonest purge first."""
        with self._lock:
            rows = self._db.execute(
                "SELECT * FROM jobs WHERE trash_until IS NOT NULL ORDER BY trash_until"
            ).fetchall()
            return [self._job(r) for r in rows]

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
                (CLEANED, DONE, time.time(), job_id),
            )

class _Tx:
    """``with journal._transaction() as db``: one immediate transaction under the journal lock."""

    def __init__(self, journal: Journal) -> None:
        self._journal = journal

    def __enter__(self) -> sqlite3.Connection:
        self._journal._lock.acquire()
        self._journal._db.execute("BEGIN IMMEDIATE")
        return self._journal._db

    def __exit__(self, exc_type: type | None, *exc: object) -> None:
        try:
            self._journal._db.execute("ROLLBACK" if exc_type else "COMMIT")
        finally:
            self._journal._lock.release()

