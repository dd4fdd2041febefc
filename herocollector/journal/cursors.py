"""Follow cursors in the journal: how far a run that is collected while it is written was committed.

A cursor is an opaque text (the follow state's JSON, :mod:`herocollector.service.follow`) kept per
job in a table of its own, ``cursors`` (SQLite) or ``herocollector_cursors`` (PostgreSQL). Writing
one is fenced: :meth:`CursorStore.store` changes it only while the job is running under the
given token, in one statement, so an actor that lost the job's lease can never move the cursor of
the actor that took it over; it raises :class:`~herocollector.errors.LeaseLost` instead. Reading
needs no lease: whoever takes the job over continues from the cursor the last holder stored.

The table is created on open when it is missing (``CREATE TABLE IF NOT EXISTS``, on PostgreSQL
under the schema's advisory lock): an addition an older herocollector ignores.

May import: :mod:`herocollector.errors` and the journal's own modules.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Protocol

from herocollector.errors import LeaseLost

if TYPE_CHECKING:  # psycopg is the [postgres] extra: a SQLite journal must not need it
    from herocollector.journal.postgres_db import Conn, PgConnections

SQLITE_SCHEMA = "CREATE TABLE IF NOT EXISTS cursors (job_id INTEGER PRIMARY KEY, cursor TEXT NOT NULL, updated REAL)"
PG_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS herocollector_cursors "
    "(job_id bigint PRIMARY KEY, cursor text NOT NULL, updated double precision)"
)


class CursorStore(Protocol):
    """Where a journal keeps its follow cursors."""

    def load(self, job_id: int) -> str | None:
        """The job's cursor, or None."""
        ...

    def store(self, job_id: int, token: int, cursor: str) -> None:
        """Set the job's cursor while it runs under ``token``; raises LeaseLost otherwise."""
        ...

    def all(self) -> dict[int, str]:
        """Every job's cursor."""
        ...


class SqliteCursors:
    """Follow cursors in a SQLite journal.

    Args:
        transaction: Opens one immediate transaction on the journal's connection.
    """

    def __init__(self, transaction: Callable[[], AbstractContextManager[sqlite3.Connection]]) -> None:
        self._transaction = transaction
        with transaction() as db:
            db.execute(SQLITE_SCHEMA)

    def load(self, job_id: int) -> str | None:
        """See :meth:`CursorStore.load`."""
        with self._transaction() as db:
            row = db.execute("SELECT cursor FROM cursors WHERE job_id = ?", (job_id,)).fetchone()
        return None if row is None else str(row[0])

    def store(self, job_id: int, token: int, cursor: str) -> None:
        """See :meth:`CursorStore.store`."""
        with self._transaction() as db:
            rows = db.execute(
                "INSERT INTO cursors (job_id, cursor, updated) SELECT id, ?, ? FROM jobs "
                "WHERE id = ? AND token = ? AND state = 'running' "
                "ON CONFLICT (job_id) DO UPDATE SET cursor = excluded.cursor, updated = excluded.updated "
                "RETURNING job_id",
                (cursor, time.time(), job_id, token),
            ).fetchall()
        if not rows:
            raise LeaseLost(f"job {job_id}: not running under token {token}; its follow cursor is not moved")

    def all(self) -> dict[int, str]:
        """See :meth:`CursorStore.all`."""
        with self._transaction() as db:
            return {int(r[0]): str(r[1]) for r in db.execute("SELECT job_id, cursor FROM cursors").fetchall()}


class PgCursors:
    """Follow cursors in the fleet's PostgreSQL journal.

    Args:
        connections: The journal's connections.
    """

    def __init__(self, connections: PgConnections) -> None:
        from herocollector.journal.postgres_db import LOCK_KEY

        self._db = connections

        def create(db: Conn) -> None:
            db.execute("SELECT pg_advisory_xact_lock(%s)", (LOCK_KEY,))
            db.execute(PG_SCHEMA)

        connections.run(create)

    def load(self, job_id: int) -> str | None:
        """See :meth:`CursorStore.load`."""
        sql = b"SELECT cursor FROM herocollector_cursors WHERE job_id = %s"
        row = self._db.run(lambda db: db.execute(sql, (job_id,)).fetchone(), read=True)
        return None if row is None else str(row["cursor"])

    def store(self, job_id: int, token: int, cursor: str) -> None:
        """See :meth:`CursorStore.store`."""
        sql = (
            b"INSERT INTO herocollector_cursors (job_id, cursor, updated) "
            b"SELECT id, %s, extract(epoch FROM clock_timestamp()) FROM herocollector_jobs "
            b"WHERE id = %s AND token = %s AND state = 'running' "
            b"ON CONFLICT (job_id) DO UPDATE SET cursor = excluded.cursor, updated = excluded.updated "
            b"RETURNING job_id"
        )
        rows = self._db.run(lambda db: db.execute(sql, (cursor, job_id, token)).fetchall(), single=True)
        if not rows:
            raise LeaseLost(f"job {job_id}: not running under token {token}; its follow cursor is not moved")

    def all(self) -> dict[int, str]:
        """See :meth:`CursorStore.all`."""
        sql = b"SELECT job_id, cursor FROM herocollector_cursors"
        rows = self._db.run(lambda db: db.execute(sql).fetchall(), read=True)
        return {int(r["job_id"]): str(r["cursor"]) for r in rows}


class CursorMethods:
    """The follow-cursor methods of the :class:`~herocollector.journal.base.Journal` protocol, over ``_cursors``."""

    _cursors: CursorStore

    def follow_cursor(self, job_id: int) -> str | None:
        """The follow cursor the job's last holder stored, or None (never followed)."""
        return self._cursors.load(job_id)

    def store_follow_cursor(self, job_id: int, token: int, cursor: str) -> None:
        """Store the job's follow cursor; only its current holder can.

        Raises:
            LeaseLost: The job is not running under ``token``: another actor holds it now.
            JournalError: The journal failed.
        """
        self._cursors.store(job_id, token, cursor)

    def follow_cursors(self) -> dict[int, str]:
        """Every stored follow cursor, by job id (what ``status()`` reports followed runs from)."""
        return self._cursors.all()
