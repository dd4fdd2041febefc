"""Output reservations: every output path a job will write, reserved in the journal before it is written.

An output path belongs to one job only; reserving it first is how a collision between two runs
is found before anything is overwritten. :meth:`Reservations.claim` reserves all of a job's
paths in one step of the journal's group commit (:mod:`herocollector.journal.group`): one
transaction, shared with whatever else is being committed, instead of one per output. It is all
or nothing: when another job owns one of the paths, :class:`~herocollector.errors.OutputTakenError`
names the first such path (in the order given) and its owner, and none of them is reserved.
Reserving a path the job holds already changes nothing.

:class:`SqliteReservations` and :class:`PgReservations` keep them in the ``outputs`` /
``herocollector_outputs`` table of each backend (the row a finished job's output is recorded in);
:class:`ReservationMethods` gives a journal the protocol's methods over its ``_reservations``.

May import: :mod:`herocollector.errors` and the journal's own modules.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Collection, Sequence
from typing import TYPE_CHECKING, Protocol

from herocollector.errors import OutputTakenError
from herocollector.journal.base import Job
from herocollector.journal.group import GroupCommit

if TYPE_CHECKING:  # psycopg is the [postgres] extra: a SQLite journal must not need it
    from herocollector.journal.postgres_db import Conn

_PART = 500
"""Paths per ``IN (...)`` query (SQLite allows a limited number of parameters)."""


class Reservations(Protocol):
    """Where a journal keeps its output reservations."""

    def claim(self, job_id: int, outputs: Sequence[str]) -> None:
        """Reserve every path of ``outputs`` for the job, all or none; raises OutputTakenError."""
        ...

    def release(self, job_id: int) -> None:
        """Forget every reservation of the job."""
        ...


class SqliteReservations:
    """Output reservations in a SQLite journal.

    Args:
        group: The journal's group commit.
        fetch: The job with an id, read on the connection of the transaction.
    """

    def __init__(self, group: GroupCommit[sqlite3.Connection], fetch: Callable[[sqlite3.Connection, int], Job]) -> None:
        self._group = group
        self._fetch = fetch

    def claim(self, job_id: int, outputs: Sequence[str]) -> None:
        """See :meth:`Reservations.claim`."""
        wanted = list(dict.fromkeys(outputs))
        if not wanted:
            return

        def step(db: sqlite3.Connection) -> None:
            owners: dict[str, int] = {}
            for start in range(0, len(wanted), _PART):
                part = wanted[start : start + _PART]
                marks = ",".join("?" * len(part))
                owners.update(db.execute(f"SELECT path, job_id FROM outputs WHERE path IN ({marks})", part).fetchall())
            for path in wanted:
                owner = owners.get(path)
                if owner is not None and owner != job_id:
                    raise OutputTakenError(path, self._fetch(db, owner))
            db.executemany(
                "INSERT INTO outputs (path, job_id, rows) VALUES (?, ?, 0)",
                [(path, job_id) for path in wanted if path not in owners],
            )

        self._group.run(step)

    def release(self, job_id: int) -> None:
        """See :meth:`Reservations.release`."""
        self._group.run(lambda db: db.execute("DELETE FROM outputs WHERE job_id = ?", (job_id,)), single=True)


def sqlite_release(db: sqlite3.Connection, job_id: int, keep: Collection[str] = ()) -> None:
    """In a SQLite transaction: delete the job's output reservations but those in ``keep``."""
    if not keep:
        db.execute("DELETE FROM outputs WHERE job_id = ?", (job_id,))
        return
    kept = set(keep)
    paths = [r[0] for r in db.execute("SELECT path FROM outputs WHERE job_id = ?", (job_id,))]
    db.executemany("DELETE FROM outputs WHERE path = ? AND job_id = ?", [(p, job_id) for p in paths if p not in kept])


class PgReservations:
    """Output reservations in the fleet's PostgreSQL journal.

    Two actors that reserve the same paths at once are served one after the other: the second
    insert waits for the first transaction, then sees its rows. The paths are inserted in sorted
    order, so two jobs whose paths overlap lock them in the same order and never deadlock.

    Args:
        group: The journal's group commit.
        fetch: The job with an id, read on the connection of the transaction.
    """

    def __init__(self, group: GroupCommit[Conn], fetch: Callable[[Conn, int], Job]) -> None:
        self._group = group
        self._fetch = fetch

    def claim(self, job_id: int, outputs: Sequence[str]) -> None:
        """See :meth:`Reservations.claim`."""
        wanted = list(dict.fromkeys(outputs))
        if not wanted:
            return

        def step(db: Conn) -> None:
            db.execute(
                "INSERT INTO herocollector_outputs (path, job_id, rows) "
                "SELECT p, %s, 0 FROM unnest(%s::text[]) AS p ORDER BY p ON CONFLICT (path) DO NOTHING",
                (job_id, wanted),
            )
            rows = db.execute(
                "SELECT path, job_id FROM herocollector_outputs WHERE path = ANY(%s) AND job_id <> %s",
                (wanted, job_id),
            ).fetchall()
            taken = {row["path"]: int(row["job_id"]) for row in rows}
            for path in wanted:  # the first in the caller's order; the transaction undoes the inserts
                if path in taken:
                    raise OutputTakenError(path, self._fetch(db, taken[path]))

        self._group.run(step)

    def release(self, job_id: int) -> None:
        """See :meth:`Reservations.release`."""
        sql = b"DELETE FROM herocollector_outputs WHERE job_id = %s"
        self._group.run(lambda db: db.execute(sql, (job_id,)), single=True)


class ReservationMethods:
    """The reservation methods of the :class:`~herocollector.journal.base.Journal` protocol, over ``_reservations``."""

    _reservations: Reservations

    def claim_outputs(self, job_id: int, outputs: Sequence[str]) -> None:
        """Reserve a job's output paths before they are written: all in one transaction, all or none.

        Raises:
            OutputTakenError: Another job owns one of them (the first in ``outputs``); none is reserved.
        """
        self._reservations.claim(job_id, outputs)

    def claim_output(self, job_id: int, output: str) -> None:
        """Reserve one output path for a job before it is written.

        Raises:
            OutputTakenError: Another job owns the path.
        """
        self._reservations.claim(job_id, [output])

    def release_outputs(self, job_id: int) -> None:
        """Forget the output reservations of a job."""
        self._reservations.release(job_id)
