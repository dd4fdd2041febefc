"""The shared PostgreSQL journal: what a fleet needs beyond the single-actor behaviour
(which ``test_journal.py`` checks on both journals): leases, fencing, wake-ups, the schema guard.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator

import psycopg
import pytest

from herocollector.errors import JournalError, LeaseLost
from herocollector.journal.base import JobState
from herocollector.journal.postgres import SCHEMA_VERSION, PgJournal, redact
from herocollector.journal.sqlite import open_journal
from herocollector.testing.actors import wait_for
from herocollector.testing.servers import PostgresTestServer


@pytest.fixture
def url(postgres: PostgresTestServer) -> str:
    return postgres.database()


@pytest.fixture
def two(url: str) -> Iterator[tuple[PgJournal, PgJournal]]:
    """Two actors' connections to one journal."""
    a, b = PgJournal(url), PgJournal(url)
    try:
        yield a, b
    finally:
        a.close()
        b.close()


def test_open_journal_picks_the_backend(url: str, tmp_path: object) -> None:
    journal = open_journal(url)
    try:
        assert isinstance(journal, PgJournal) and journal.shared
    finally:
        journal.close()


def test_an_event_heard_by_every_actor_is_journalled_once(two: tuple[PgJournal, PgJournal]) -> None:
    a, b = two
    barrier = threading.Barrier(8)
    results = []

    def announce(journal: PgJournal) -> None:
        barrier.wait()
        results.append(journal.submit("/runs/r1", "logger", {"path": "/runs/r1"}))

    threads = [threading.Thread(target=announce, args=(j,)) for j in (a, b) * 4]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len({job.id for job, _ in results}) == 1
    assert len(a.jobs()) == 1
    assert b.submit_new(["/runs/r1", "/runs/r2"], "scan") == 1
    assert a.submit_new(["/runs/r2", "/runs/r3"], "scan") == 1
    assert [j.path for j in b.jobs()] == ["/runs/r1", "/runs/r2", "/runs/r3"]


def test_skip_locked_gives_each_job_to_one_worker(two: tuple[PgJournal, PgJournal]) -> None:
    a, b = two
    a.submit_new([f"/runs/r{i}" for i in range(40)], "scan")
    taken: list[int] = []
    lock = threading.Lock()

    def worker(journal: PgJournal, name: str) -> None:
        while (job := journal.take_due(owner=name, lease=60)) is not None:
            with lock:
                taken.append(job.id)

    threads = [threading.Thread(target=worker, args=(j, f"w{i}")) for i, j in enumerate((a, b, a, b))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(taken) == sorted(j.id for j in a.jobs())
    assert a.counts()["running"] == 40


def test_an_expired_lease_is_taken_over_and_the_old_holder_is_fenced(two: tuple[PgJournal, PgJournal]) -> None:
    a, b = two
    a.submit("/runs/r1", "logger", {})
    first = a.take_due(owner="actor-a", lease=0.3)
    assert first is not None and first.token == 1 and first.lease_owner == "actor-a"
    assert b.take_due(owner="actor-b", lease=30) is None  # the lease is live
    assert a.renew(first.id, first.token, 0.3)

    second = wait_for(lambda: b.take_due(owner="actor-b", lease=30), "the lease to run out", timeout=10)
    assert second.id == first.id and second.token == 2 and second.lease_owner == "actor-b"
    assert second.attempts == 2  # the presumed-dead attempt counts

    assert not a.renew(first.id, first.token, 30)
    for stale in (
        lambda: a.finish(first.id, {"/out/x.arrow": 1}, token=first.token),
        lambda: a.fail(first.id, "boom", None, token=first.token),
        lambda: a.defer(first.id, None, "x", token=first.token),
        lambda: a.park(first.id, 0.0, None, token=first.token),
    ):
        with pytest.raises(LeaseLost, match="token 1 is stale"):
            stale()
    assert b.get(first.id).state == JobState.RUNNING and b.get(first.id).token == 2
    done = b.finish(second.id, {"/out/x.arrow": 5}, token=second.token)
    assert done.state == JobState.DONE and done.outputs == {"/out/x.arrow": 5} and done.lease_owner is None


def test_notify_wakes_the_other_actors(two: tuple[PgJournal, PgJournal]) -> None:
    a, b = two
    woken = threading.Event()
    b.subscribe(woken.set)
    wait_for(lambda: _listening(a), "the listener to LISTEN")
    a.submit("/runs/r1", "logger", {})
    assert woken.wait(10)


def _listening(journal: PgJournal) -> bool:
    with psycopg.connect(journal.url) as conn:
        row = conn.execute("SELECT COUNT(*) FROM pg_stat_activity WHERE query LIKE 'LISTEN %%'").fetchone()
    return bool(row and row[0])


def test_resume_frees_the_restarted_owners_jobs_only(two: tuple[PgJournal, PgJournal]) -> None:
    a, b = two
    a.submit_new(["/runs/r1", "/runs/r2"], "scan")
    mine = a.take_due(owner="host:/state-a", lease=60)
    theirs = b.take_due(owner="host:/state-b", lease=60)
    assert mine is not None and theirs is not None
    resumed = a.resume("host:/state-a")
    assert [j.id for j in resumed] == [mine.id]
    assert a.get(theirs.id).state == JobState.RUNNING


def test_a_newer_schema_is_refused(url: str) -> None:
    PgJournal(url).close()
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("UPDATE herocollector_schema SET version = %s", (SCHEMA_VERSION + 1,))
    with pytest.raises(JournalError, match="newer than this herocollector"):
        PgJournal(url)


def test_the_schema_is_created_once_by_racing_actors(url: str) -> None:
    journals: list[PgJournal] = []
    errors: list[BaseException] = []

    def open_one() -> None:
        try:
            journals.append(PgJournal(url))
        except BaseException as exc:  # noqa: BLE001 - collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=open_one) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for journal in journals:
        journal.close()
    assert not errors and len(journals) == 4
    with psycopg.connect(url) as conn:
        assert conn.execute("SELECT version FROM herocollector_schema").fetchall() == [(SCHEMA_VERSION,)]


def test_an_unreachable_server_is_a_clear_journal_error(tmp_path: object) -> None:
    with pytest.raises(JournalError, match="cannot connect to the journal"):
        PgJournal("postgresql://nobody:secret@/db?host=/nonexistent-socket-dir", connect_timeout=2)


def test_passwords_are_redacted() -> None:
    assert redact("postgresql://u:secret@db.lab:5432/hc") == "postgresql://u:***@db.lab:5432/hc"
    assert redact("postgresql:///hc?host=/run/postgresql") == "postgresql:///hc?host=/run/postgresql"


def test_a_version_2_journal_is_migrated_and_counted(url: str) -> None:
    from herocollector.journal.postgres_db import MIGRATIONS

    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("CREATE TABLE herocollector_schema (version integer NOT NULL)")
        for number in (1, 2):
            conn.execute(MIGRATIONS[number].encode())
        conn.execute("INSERT INTO herocollector_schema (version) VALUES (2)")
        conn.execute(
            "INSERT INTO herocollector_jobs (path, source, metadata, state, created, updated) "
            "SELECT 'r-' || i, 'x', '{}', CASE WHEN i % 3 = 0 THEN 'failed' ELSE 'done' END, 1, 1 "
            "FROM generate_series(1, 30) AS i"
        )
    journal = PgJournal(url)
    try:
        assert journal.counts() == {"pending": 0, "waiting": 0, "running": 0, "done": 20, "failed": 10, "cleaned": 0}
        journal.retry()
        assert journal.counts()["failed"] == 0 and journal.counts()["pending"] == 10
    finally:
        journal.close()
    with psycopg.connect(url) as conn:
        assert conn.execute("SELECT version FROM herocollector_schema").fetchall() == [(SCHEMA_VERSION,)]


def test_counts_stay_exact_through_many_changes_and_folds(two: tuple[PgJournal, PgJournal]) -> None:
    from herocollector.journal.postgres_db import FOLD_AT

    a, b = two
    changes = 0
    while changes < 2 * FOLD_AT:
        created = a.submit_new([f"/r/{changes}-{i}" for i in range(50)], "scan")
        changes += created
        while (job := b.take_due(owner="b")) is not None:
            b.finish(job.id, {}, token=job.token)
            changes += 1
        a.counts()  # folds now and then
    expected = {state.value: len(a.jobs(state)) for state in JobState}
    assert a.counts() == expected == b.counts()
    assert expected["done"] > FOLD_AT
    with psycopg.connect(a.url) as conn:
        parts = conn.execute("SELECT COUNT(*) FROM herocollector_job_counts").fetchone()
    assert parts is not None and parts[0] < FOLD_AT  # folded, not growing with every change


@pytest.mark.parametrize("batched", [False, True], ids=["transaction", "group-commit"])
def test_a_deadlock_between_two_actors_is_run_again_not_reported(url: str, batched: bool) -> None:
    """Two actors inserting the same keys in opposite orders deadlock; the server's victim runs again.

    Before, the victim got a ``JournalError`` while the journal answered, which the intake takes
    for a bad event (journalled as a failed job without a path).
    """
    from herocollector.journal.postgres_db import PgConnections

    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("CREATE TABLE deadlock_keys (k text PRIMARY KEY)")
    barrier = threading.Barrier(2, timeout=30)
    calls = {"a": 0, "b": 0}

    def insert(db: psycopg.Connection, key: str) -> None:
        db.execute("INSERT INTO deadlock_keys (k) VALUES (%s) ON CONFLICT (k) DO NOTHING", (key,))

    def actor(name: str, first: str, second: str, results: list[object]) -> None:
        connections = PgConnections(url, 10.0)

        def first_step(db: psycopg.Connection) -> None:
            calls[name] += 1
            insert(db, first)
            if calls[name] == 1:
                barrier.wait()  # both hold their first key, then each wants the other's

        def second_step(db: psycopg.Connection) -> str:
            insert(db, second)
            return name

        try:
            if batched:
                outcomes = connections.run_batch([first_step, second_step], single=False)
                results.extend(o.error if o.error is not None else o.result for o in outcomes)
            else:
                results.append(connections.run(lambda db: (first_step(db), second_step(db))[1]))
        except Exception as exc:  # noqa: BLE001 - the assertion below shows it
            results.append(exc)
        finally:
            connections.close()

    got_a: list[object] = []
    got_b: list[object] = []
    threads = [
        threading.Thread(target=actor, args=("a", "k1", "k2", got_a)),
        threading.Thread(target=actor, args=("b", "k2", "k1", got_b)),
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert got_a[-1] == "a" and got_b[-1] == "b", (got_a, got_b)
    assert not any(isinstance(r, Exception) for r in got_a + got_b), (got_a, got_b)
    assert sorted(calls.values()) == [1, 2]  # the deadlock's victim ran again, once
    with psycopg.connect(url) as conn:
        assert sorted(r[0] for r in conn.execute("SELECT k FROM deadlock_keys")) == ["k1", "k2"]
