"""The PostgreSQL side of :class:`herocollector.journal.postgres.PgJournal`: connections, schema, SQL helpers.

:class:`PgConnections` holds the journal's two connections (one for changes, one for reads,
so a page of jobs read for a cleanup never waits for a state change), reconnects once when a
connection broke, creates and migrates the schema under an advisory lock (:data:`MIGRATIONS`,
``herocollector_schema.version``; a journal newer than this code is refused) and listens for
``NOTIFY herocollector_jobs``; :meth:`PgConnections.run_batch` runs the steps of a group commit
(:mod:`herocollector.journal.group`) in one transaction.

May import: :mod:`herocollector.errors` and :mod:`herocollector.journal.group`.
"""

from __future__ import annotations

import json
import random
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

import psycopg
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from herocollector.errors import JournalError
from herocollector.journal.group import Outcome

Conn = psycopg.Connection[dict[str, Any]]
"""A connection whose rows are dicts by column name."""

SCHEMA_VERSION = 3
IDLE_IN_TRANSACTION_TIMEOUT = 2.0
"""Seconds a session may sit in an open transaction: a paused actor's row locks are freed then."""
ROLLBACK_RETRIES = 8
"""Times a transaction the server rolled back (a deadlock, a serialization failure) is run again."""
ROLLBACK_BACKOFF = 0.02
"""Seconds of the jittered wait before the n-th run again is at most n times this."""
CHANNEL = "herocollector_jobs"
LOCK_KEY = 0x6865726F636F6C  # pg_advisory_xact_lock key of the schema migration ("herocol")
NOW = "extract(epoch from clock_timestamp())::float8"
"""The server's clock, in SQL: lease times do not depend on the hosts' clocks."""
_T = TypeVar("_T")

MIGRATIONS: dict[int, str] = {
    1: """
    CREATE TABLE herocollector_jobs (
        id           bigserial PRIMARY KEY,
        path         text UNIQUE,
        source       text NOT NULL,
        metadata     jsonb NOT NULL,
        state        text NOT NULL,
        attempts     integer NOT NULL DEFAULT 0,
        error        text,
        rows         bigint,
        created      double precision NOT NULL,
        updated      double precision NOT NULL,
        next_attempt double precision,
        trash_until  double precision,
        deadline     double precision,
        token        bigint NOT NULL DEFAULT 0,
        lease_owner  text,
        lease_until  double precision
    );
    CREATE INDEX herocollector_jobs_due ON herocollector_jobs (state, next_attempt);
    CREATE INDEX herocollector_jobs_lease ON herocollector_jobs (state, lease_until);
    CREATE TABLE herocollector_outputs (
        path   text PRIMARY KEY,
        job_id bigint NOT NULL REFERENCES herocollector_jobs (id),
        rows   bigint NOT NULL
    );
    CREATE INDEX herocollector_outputs_job ON herocollector_outputs (job_id);
    """,
    # Pages of one state in id order (cleanup of every run), and the trash in purge order.
    2: """
    CREATE INDEX IF NOT EXISTS herocollector_jobs_state_id ON herocollector_jobs (state, id);
    CREATE INDEX IF NOT EXISTS herocollector_jobs_trash ON herocollector_jobs (trash_until, id)
        WHERE trash_until IS NOT NULL;
    CREATE INDEX IF NOT EXISTS herocollector_outputs_job ON herocollector_outputs (job_id);
    """,
    # Jobs per state without counting every job: each change appends its +1/-1 (no row is shared
    # between transactions, so actors never wait on each other for it); counts() sums them and
    # folds them up now and then. The triggers come first: their lock waits for the writers in
    # flight, so the count below sees every job and later changes are all appended.
    3: """
    CREATE TABLE herocollector_job_counts (state text NOT NULL, n bigint NOT NULL);
    CREATE FUNCTION herocollector_count_job() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        IF TG_OP IN ('UPDATE', 'DELETE') THEN
            INSERT INTO herocollector_job_counts (state, n) VALUES (OLD.state, -1);
        END IF;
        IF TG_OP IN ('UPDATE', 'INSERT') THEN
            INSERT INTO herocollector_job_counts (state, n) VALUES (NEW.state, 1);
        END IF;
        RETURN NULL;
    END $$;
    CREATE TRIGGER herocollector_jobs_counted AFTER INSERT OR DELETE ON herocollector_jobs
        FOR EACH ROW EXECUTE FUNCTION herocollector_count_job();
    CREATE TRIGGER herocollector_jobs_recounted AFTER UPDATE OF state ON herocollector_jobs
        FOR EACH ROW WHEN (OLD.state IS DISTINCT FROM NEW.state) EXECUTE FUNCTION herocollector_count_job();
    INSERT INTO herocollector_job_counts (state, n) SELECT state, COUNT(*) FROM herocollector_jobs GROUP BY state;
    """,
}
"""The schema changes, by version: each runs once, in order, in the migrating transaction."""
FOLD_AT = 512
"""counts() folds the per-change rows into one per state once there are this many."""
FOLD_KEY = 0x6865726F636F6D  # pg_try_advisory_xact_lock key: one actor folds the counts at a time


def first(cursor: psycopg.Cursor[dict[str, Any]]) -> dict[str, Any]:
    """The one row of an aggregate query (there always is one)."""
    row = cursor.fetchone()
    if row is None:
        raise JournalError("the journal returned no row for an aggregate query")
    return row


def _dumps(value: Any) -> str:
    # jsonb cannot hold NUL characters: keep them visible as the text \u0000 instead.
    return json.dumps(value, default=str).replace("\\u0000", "\\\\u0000")


def jsonb(value: Any) -> Jsonb:
    """JSON for a ``jsonb`` column; what JSON cannot hold is stored as its ``str``."""
    return Jsonb(value, dumps=_dumps)


def redact(url: str) -> str:
    """A connection URL without its password, for logs and ``status()``."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit(parts._replace(netloc=netloc))


def rolled_back_by_server(exc: psycopg.Error) -> bool:
    """Whether the server rolled the transaction back to end a deadlock or a serialization failure.

    SQLSTATE class 40. psycopg's ``TransactionRollback`` is not the base of all of them
    (``DeadlockDetected`` is not a subclass), so the code is what tells.
    """
    return (exc.sqlstate or "").startswith("40")


class PgConnections:
    """The connections of one journal (thread-safe): changes, reads and the listener.

    Args:
        url: A ``postgresql://`` connection URL.
        connect_timeout: Seconds to wait for the server.
    """

    def __init__(self, url: str, connect_timeout: float = 10.0) -> None:
        self.url = url
        self.location = redact(url)
        self._timeout = connect_timeout
        self._lock = threading.RLock()
        self._conn: Conn | None = None
        self._read_lock = threading.Lock()
        self._reader: Conn | None = None
        self._listener: threading.Thread | None = None
        self._stop = threading.Event()

    def connect(self) -> Conn:
        """A new connection, autocommit, with dict rows and the idle-in-transaction timeout."""
        try:
            conn = psycopg.connect(self.url, autocommit=True, row_factory=dict_row, connect_timeout=int(self._timeout))
            # A paused actor (SIGSTOP, a VM freeze) must not keep row locks: the server ends a
            # session that sits in an open transaction for longer than this.
            conn.execute(
                "SELECT set_config('idle_in_transaction_session_timeout', %s, false)",
                (str(int(IDLE_IN_TRANSACTION_TIMEOUT * 1000)),),
            )
            return conn
        except psycopg.Error as exc:
            raise JournalError(f"cannot connect to the journal at {self.location}: {exc}") from None

    def run(self, action: Callable[[Conn], _T], read: bool = False, single: bool = False) -> _T:
        """Run ``action`` in one transaction; reconnect once if the connection broke.

        A transaction the server rolled back to end a deadlock or a serialization failure
        (:func:`rolled_back_by_server`) is run again, up to :data:`ROLLBACK_RETRIES` times.

        With ``read``, on the connection for reads, so that a page of jobs read for a cleanup
        never waits for, or holds up, a state change on the other. With ``single``, ``action``
        runs one statement, which is its own transaction: no ``BEGIN``/``COMMIT`` round trips.
        """
        with self._read_lock if read else self._lock:
            rolled_back = 0
            reconnected = False
            while True:
                conn = self._reader if read else self._conn
                if conn is None or conn.closed or conn.broken:
                    conn = self.connect()
                    if read:
                        self._reader = conn
                    else:
                        self._conn = conn
                try:
                    if single:
                        return action(conn)
                    with conn.transaction():
                        return action(conn)
                except (psycopg.OperationalError, psycopg.InterfaceError) as exc:
                    broken = conn.closed or conn.broken
                    if not broken and rolled_back_by_server(exc) and rolled_back < ROLLBACK_RETRIES:
                        # A deadlock with another actor, or a serialization failure: the server
                        # rolled the whole transaction back, so running it again is safe, and it
                        # is nobody's fault. Reported as an error, it looked like a bad event or
                        # a failed job to the caller, since the journal answers.
                        rolled_back += 1
                        time.sleep(random.uniform(0.0, ROLLBACK_BACKOFF * rolled_back))
                        continue
                    if broken and not reconnected:
                        reconnected = True
                        continue
                    raise JournalError(f"journal query failed at {self.location}: {exc}") from None
                except psycopg.Error as exc:
                    raise JournalError(f"journal query failed at {self.location}: {exc}") from None

    def run_batch(self, steps: Sequence[Callable[[Conn], Any]], single: bool) -> list[Outcome]:
        """Run the steps of one group commit in one transaction, each in a savepoint; commit once.

        A lone step runs as :meth:`run` runs an action (``single``: as one statement). A step's
        psycopg error that leaves the connection usable is that step's alone (its savepoint rolled
        back); a broken connection, or a deadlock, fails the whole batch, which :meth:`run`
        runs again (nothing of it was committed).

        Raises:
            JournalError: The transaction or its commit failed: no step was kept.
        """
        if len(steps) == 1:
            step = steps[0]

            def alone(db: Conn) -> list[Outcome]:
                return [Outcome(step(db))]

            try:
                return self.run(alone, single=single)
            except Exception as exc:  # noqa: BLE001 - the one caller gets it
                return [Outcome(error=exc)]

        def batch(db: Conn) -> list[Outcome]:
            outcomes = []
            for step in steps:
                try:
                    with db.transaction():  # a savepoint
                        outcomes.append(Outcome(step(db)))
                except psycopg.Error as exc:
                    if db.closed or db.broken or rolled_back_by_server(exc):
                        raise  # the batch is lost: run() runs it again, or fails every step
                    outcomes.append(Outcome(error=JournalError(f"journal query failed at {self.location}: {exc}")))
                except Exception as exc:  # noqa: BLE001 - LeaseLost, OutputTakenError: this step's caller gets it
                    outcomes.append(Outcome(error=exc))
            return outcomes

        return self.run(batch)

    def migrate(self) -> int:
        """Create or upgrade the schema; returns its version.

        Raises:
            JournalError: The schema is newer than this code.
        """

        def step(db: Conn) -> int:
            db.execute("SELECT pg_advisory_xact_lock(%s)", (LOCK_KEY,))
            db.execute("CREATE TABLE IF NOT EXISTS herocollector_schema (version integer NOT NULL)")
            row = db.execute("SELECT version FROM herocollector_schema").fetchone()
            version = 0 if row is None else int(row["version"])
            if version > SCHEMA_VERSION:
                raise JournalError(
                    f"the journal at {self.location} has schema version {version}, newer than this "
                    f"herocollector understands ({SCHEMA_VERSION}); upgrade herocollector"
                )
            for number in range(version + 1, SCHEMA_VERSION + 1):
                db.execute(MIGRATIONS[number].encode())
            if row is None:
                db.execute("INSERT INTO herocollector_schema (version) VALUES (%s)", (SCHEMA_VERSION,))
            elif version < SCHEMA_VERSION:
                db.execute("UPDATE herocollector_schema SET version = %s", (SCHEMA_VERSION,))
            return SCHEMA_VERSION

        return int(self.run(step))

    def subscribe(self, wake: Callable[[], None]) -> None:
        """Call ``wake`` whenever another actor journals or requeues a job (``LISTEN``)."""
        if self._listener is not None:
            return

        def listen() -> None:
            while not self._stop.is_set():
                try:
                    with psycopg.connect(self.url, autocommit=True, connect_timeout=int(self._timeout)) as conn:
                        conn.execute(f"LISTEN {CHANNEL}")
                        while not self._stop.is_set():
                            for _ in conn.notifies(timeout=0.5, stop_after=64):
                                wake()
                except psycopg.Error:
                    self._stop.wait(1.0)  # the server went away: listen again soon

        self._listener = threading.Thread(target=listen, name="herocollector-listen", daemon=True)
        self._listener.start()

    def close(self) -> None:
        """Stop listening and close the connection."""
        self._stop.set()
        if self._listener is not None:
            self._listener.join(timeout=5)
        with self._lock, self._read_lock:
            for conn in (self._conn, self._reader):
                if conn is not None:
                    conn.close()
            self._conn = self._reader = None
