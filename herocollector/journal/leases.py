"""Named leases in the journal: one holder at a time for work that is not a job (a table's compaction).

A lease is a row ``(name, owner, until)``. :meth:`NamedLeases.acquire` takes it when nobody holds
it, when its holder's time ran out, or when ``owner`` holds it already (then it is renewed);
:meth:`NamedLeases.release` gives it up, and only its holder can. A holder that dies simply stops
renewing: the lease is free again ``seconds`` after its last acquire. Each call is one statement
(an upsert guarded by the holder and the expiry), so two actors asking at once cannot both win.

:class:`SqliteLeases` keeps them in the SQLite journal of one actor (its clock);
:class:`PgLeases` in the fleet's PostgreSQL journal, timed by the server's clock, so the hosts'
clocks do not have to agree. Both create their table on open if it is missing (``CREATE TABLE IF
NOT EXISTS``, on PostgreSQL under the schema's advisory lock): it is an addition that an older
herocollector ignores, so it needs no schema version of its own.

:class:`LeaseMethods` gives a journal the two methods of the
:class:`~herocollector.journal.base.Journal` protocol, over its ``_leases``.

May import: :mod:`herocollector.errors` and the journal's own modules.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Protocol

from herocollector.errors import JournalError

if TYPE_CHECKING:  # psycopg is the [postgres] extra: a SQLite journal must not need it
    from herocollector.journal.postgres_db import Conn, PgConnections

SQLITE_SCHEMA = "CREATE TABLE IF NOT EXISTS leases (name TEXT PRIMARY KEY, owner TEXT NOT NULL, until REAL NOT NULL)"
PG_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS herocollector_leases "
    "(name text PRIMARY KEY, owner text NOT NULL, until double precision NOT NULL)"
)


def _checked(name: str, owner: str, seconds: float) -> None:
    """Refuse a lease request that could never mean what it says."""
    if not name or not owner:
        raise JournalError(f"a lease needs a name and an owner (got {name!r}, {owner!r})")
    if not seconds > 0:
        raise JournalError(f"lease {name!r}: seconds must be positive (got {seconds!r})")


class NamedLeases(Protocol):
    """Where a journal keeps its named leases."""

    def acquire(self, name: str, owner: str, seconds: float) -> bool:
        """Take or renew the lease ``name`` for ``seconds``; False if another owner holds it."""
        ...

    def release(self, name: str, owner: str) -> bool:
        """Give up the lease ``name``; False if ``owner`` did not hold it."""
        ...


class SqliteLeases:
    """Named leases in a SQLite journal (one actor; its clock).

    Args:
        transaction: Opens one immediate transaction on the journal's connection (its lock held).
    """

    def __init__(self, transaction: Callable[[], AbstractContextManager[sqlite3.Connection]]) -> None:
        self._transaction = transaction
        with transaction() as db:
            db.execute(SQLITE_SCHEMA)

    def acquire(self, name: str, owner: str, seconds: float) -> bool:
        """See :meth:`NamedLeases.acquire`."""
        _checked(name, owner, seconds)
        now = time.time()
        with self._transaction() as db:
            rows = db.execute(
                "INSERT INTO leases (name, owner, until) VALUES (?, ?, ?) ON CONFLICT (name) DO UPDATE "
                "SET owner = excluded.owner, until = excluded.until "
                "WHERE leases.owner = excluded.owner OR leases.until <= ? RETURNING owner",
                (name, owner, now + seconds, now),
            ).fetchall()
        return bool(rows)

    def release(self, name: str, owner: str) -> bool:
        """See :meth:`NamedLeases.release`."""
        with self._transaction() as db:
            return bool(db.execute("DELETE FROM leases WHERE name = ? AND owner = ?", (name, owner)).rowcount)


class PgLeases:
    """Named leases in the fleet's PostgreSQL journal, timed by the server's clock.

    Args:
        connections: The journal's connections.
    """

    def __init__(self, connections: PgConnections) -> None:
        from herocollector.journal.postgres_db import LOCK_KEY, NOW

        self._db = connections
        self._now = NOW

        def create(db: Conn) -> None:
            # Actors starting together would race on the catalogue without the lock.
            db.execute("SELECT pg_advisory_xact_lock(%s)", (LOCK_KEY,))
            db.execute(PG_SCHEMA)

        connections.run(create)

    def acquire(self, name: str, owner: str, seconds: float) -> bool:
        """See :meth:`NamedLeases.acquire`."""
        _checked(name, owner, seconds)
        now = self._now
        sql = (
            f"INSERT INTO herocollector_leases (name, owner, until) VALUES (%s, %s, {now} + %s) "
            "ON CONFLICT (name) DO UPDATE SET owner = excluded.owner, until = excluded.until "
            f"WHERE herocollector_leases.owner = excluded.owner OR herocollector_leases.until <= {now} "
            "RETURNING owner"
        )
        rows = self._db.run(lambda db: db.execute(sql.encode(), (name, owner, float(seconds))).fetchall(), single=True)
        return bool(rows)

    def release(self, name: str, owner: str) -> bool:
        """See :meth:`NamedLeases.release`."""
        sql = b"DELETE FROM herocollector_leases WHERE name = %s AND owner = %s"
        return bool(self._db.run(lambda db: db.execute(sql, (name, owner)).rowcount, single=True))


class LeaseMethods:
    """The named-lease methods of the :class:`~herocollector.journal.base.Journal` protocol, over ``_leases``."""

    _leases: NamedLeases

    def acquire_lease(self, name: str, owner: str, seconds: float) -> bool:
        """Take the named lease ``name`` for ``seconds``, or renew it if ``owner`` holds it.

        Returns:
            False if another owner holds it and its time has not run out.

        Raises:
            JournalError: The journal failed, or the name, owner or seconds are empty.
        """
        return self._leases.acquire(name, owner, seconds)

    def release_lease(self, name: str, owner: str) -> bool:
        """Give up the named lease ``name``; only its holder can.

        Returns:
            Whether ``owner`` held it (and now nobody does).
        """
        return self._leases.release(name, owner)
