"""The SQLite side of :class:`herocollector.journal.sqlite.SqliteJournal`: schema, migration, transactions.

:func:`migrate` brings a journal file of any earlier release up to date on open: the tables,
the columns added since (``ADDED_COLUMNS``), the indexes every query uses (``INDEXES``) and the
table of jobs per state that triggers keep (``COUNT_TRIGGERS``). :func:`run_batch` runs the steps of a
group commit (:mod:`herocollector.journal.group`) in one transaction.

May import: :mod:`herocollector.errors`, :mod:`herocollector.journal.base` and :mod:`herocollector.journal.group`.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from herocollector.errors import JournalError
from herocollector.journal.base import JobState
from herocollector.journal.group import Outcome

SCHEMA = """
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
    trash_until  REAL,
    deadline     REAL,
    token        INTEGER NOT NULL DEFAULT 0,
    lease_owner  TEXT,
    lease_until  REAL
);
CREATE TABLE IF NOT EXISTS outputs (
    path   TEXT PRIMARY KEY,
    job_id INTEGER NOT NULL REFERENCES jobs(id),
    rows   INTEGER NOT NULL
);
"""

# Indexes, created after the added columns exist (an older journal gains them on open). Every
# query the service makes is served by one: the due job, a state's jobs in id order (pages), the
# trash in purge order, and a job's outputs.
INDEXES = """
DROP INDEX IF EXISTS jobs_state;
CREATE INDEX IF NOT EXISTS jobs_due ON jobs(state, COALESCE(next_attempt, 0), id);
CREATE INDEX IF NOT EXISTS jobs_state_id ON jobs(state, id);
CREATE INDEX IF NOT EXISTS jobs_trash ON jobs(trash_until) WHERE trash_until IS NOT NULL;
CREATE INDEX IF NOT EXISTS outputs_job ON outputs(job_id);
"""

# Jobs per state, kept by triggers in the same transaction as every change (status() reads six
# rows instead of counting every job).
COUNT_TRIGGERS = (
    "CREATE TRIGGER IF NOT EXISTS job_counts_insert AFTER INSERT ON jobs BEGIN "
    "UPDATE job_counts SET n = n + 1 WHERE state = NEW.state; END",
    "CREATE TRIGGER IF NOT EXISTS job_counts_update AFTER UPDATE OF state ON jobs WHEN OLD.state IS NOT NEW.state "
    "BEGIN UPDATE job_counts SET n = n - 1 WHERE state = OLD.state; "
    "UPDATE job_counts SET n = n + 1 WHERE state = NEW.state; END",
    "CREATE TRIGGER IF NOT EXISTS job_counts_delete AFTER DELETE ON jobs BEGIN "
    "UPDATE job_counts SET n = n - 1 WHERE state = OLD.state; END",
)

# Columns added after the first release, with their SQL type: an older journal gains them on open.
ADDED_COLUMNS = {
    "trash_until": "REAL",
    "deadline": "REAL",
    "token": "INTEGER NOT NULL DEFAULT 0",
    "lease_owner": "TEXT",
    "lease_until": "REAL",
}


def migrate(db: sqlite3.Connection) -> None:
    """Create or bring up to date the journal's tables, columns, indexes and counts (idempotent)."""
    db.executescript(SCHEMA)
    present = {row[1] for row in db.execute("PRAGMA table_info(jobs)")}
    for column, sql_type in ADDED_COLUMNS.items():
        if column not in present:
            db.execute(f"ALTER TABLE jobs ADD COLUMN {column} {sql_type}")
    db.executescript(INDEXES)
    count_states(db)


def count_states(db: sqlite3.Connection) -> None:
    """Create (once) the table of jobs per state that triggers keep, so ``counts()`` reads six rows.

    A journal that has none yet is counted once, in the transaction that creates the triggers,
    so no change is missed or counted twice.
    """
    db.execute("BEGIN IMMEDIATE")
    try:
        new = db.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'job_counts'").fetchone()
        if new is None:
            db.execute("CREATE TABLE job_counts (state TEXT PRIMARY KEY, n INTEGER NOT NULL)")
            db.execute("INSERT INTO job_counts (state, n) SELECT state, COUNT(*) FROM jobs GROUP BY state")
        db.executemany(
            "INSERT OR IGNORE INTO job_counts (state, n) VALUES (?, 0)", [(state.value,) for state in JobState]
        )
        for trigger in COUNT_TRIGGERS:
            db.execute(trigger)
        db.execute("COMMIT")
    except BaseException:
        db.execute("ROLLBACK")
        raise


def in_states(states: Iterable[JobState]) -> tuple[str, list[str]]:
    """A query of the jobs in any of ``states`` in id order, one index search per state.

    ``state IN (...)`` would be planned as a scan of the whole table once most jobs share one
    state (done), as they do in a journal that has collected for a while.
    """
    wanted = list(dict.fromkeys(str(state) for state in states))
    arms = " UNION ALL ".join("SELECT * FROM jobs WHERE state = ?" for _ in wanted)
    return f"{arms} ORDER BY id", wanted


class Transaction:
    """``with Transaction(db, lock, file) as db``: one immediate transaction under the journal lock.

    SQLite errors become :class:`JournalError` naming ``file``; the transaction is rolled back.
    """

    def __init__(self, db: sqlite3.Connection, lock: threading.RLock, file: Path) -> None:
        self._db, self._lock, self._file = db, lock, file

    def __enter__(self) -> sqlite3.Connection:
        self._lock.acquire()
        try:
            self._db.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            self._lock.release()
            raise JournalError(f"journal transaction failed: {exc}", self._file) from None
        return self._db

    def __exit__(self, exc_type: type | None, exc: BaseException | None, tb: object) -> None:
        try:
            self._db.execute("ROLLBACK" if exc_type else "COMMIT")
        except sqlite3.Error as error:
            if exc_type is None:
                raise JournalError(f"journal commit failed: {error}", self._file) from None
        finally:
            self._lock.release()
        if isinstance(exc, sqlite3.Error):
            raise JournalError(f"journal update failed: {exc}", self._file) from exc


def run_batch(
    db: sqlite3.Connection,
    lock: threading.RLock,
    file: Path,
    steps: Sequence[Callable[[sqlite3.Connection], Any]],
    single: bool,
) -> list[Outcome]:
    """Run the steps of one group commit in one immediate transaction, each in a savepoint; commit once.

    A lone step runs without a savepoint (a failure rolls the transaction back); a lone
    ``single`` step, one statement, runs as its own transaction. SQLite errors become
    :class:`JournalError` naming ``file``.

    Raises:
        JournalError: The transaction could not begin, or its commit failed: no step was kept.
    """
    with lock:
        if single:
            return [_outcome(db, steps[0], file, savepoint=False)]
        try:
            db.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            raise JournalError(f"journal transaction failed: {exc}", file) from None
        try:
            outcomes = [_outcome(db, step, file, savepoint=len(steps) > 1) for step in steps]
            if len(steps) == 1 and outcomes[0].error is not None:
                db.execute("ROLLBACK")
                return outcomes
            db.execute("COMMIT")
        except BaseException as exc:
            try:
                db.execute("ROLLBACK")
            except sqlite3.Error:
                pass  # the failed commit ended the transaction already
            if isinstance(exc, sqlite3.Error):
                raise JournalError(f"journal commit failed: {exc}", file) from None
            raise
        return outcomes


def _outcome(db: sqlite3.Connection, step: Callable[[sqlite3.Connection], Any], file: Path, savepoint: bool) -> Outcome:
    """Run one step (in a savepoint of its own if asked): its result, or its error with its changes undone."""
    if savepoint:
        db.execute("SAVEPOINT step")
    try:
        result = step(db)
    except Exception as exc:  # noqa: BLE001 - the caller of this step gets it
        if savepoint:
            db.execute("ROLLBACK TO step")
            db.execute("RELEASE step")
        if isinstance(exc, sqlite3.Error):
            error: BaseException = JournalError(f"journal update failed: {exc}", file)
            error.__cause__ = exc
            return Outcome(error=error)
        return Outcome(error=exc)
    if savepoint:
        db.execute("RELEASE step")
    return Outcome(result)
