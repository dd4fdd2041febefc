"""Fewer durable commits per job (#17): group commit, batched reservations, the lease-renewal policy.

On both backends (SQLite in ``tmp_path``, PostgreSQL on the real test server): outcomes that come
together share one commit, each caller still gets its own outcome, and what a call returned from
is durable (a SIGKILL right after cannot lose it). A job's lease is renewed at most once before
its publishes when it has time left, never on a journal only one actor uses, and a lease lost
meanwhile is still found. A collection on SQLite costs three commits per job: take, reserve, finish.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import psycopg
import pytest

from herocollector.actor.demo import write_simulated_run
from herocollector.config import ServiceConfig
from herocollector.errors import LeaseLost, OutputTakenError
from herocollector.journal.base import Job, JobState, Journal
from herocollector.journal.postgres import PgJournal
from herocollector.journal.sqlite import SqliteJournal
from herocollector.service.core import CollectionService
from herocollector.service.intake import Malformed, announcement_of
from herocollector.service.lease import JobGuard, LeaseKeeper
from herocollector.testing.actors import wait_for
from herocollector.testing.servers import PostgresTestServer

WAIT = 120.0
"""Seconds any condition may take on a loaded 2-core machine."""


@pytest.fixture(params=["sqlite", "postgres"])
def journal(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[SqliteJournal | PgJournal]:
    opened: SqliteJournal | PgJournal
    if request.param == "sqlite":
        opened = SqliteJournal(tmp_path / "journal.sqlite3")
    else:
        server: PostgresTestServer = request.getfixturevalue("postgres")
        opened = PgJournal(server.database())
    yield opened
    opened.close()


def writer(journal: SqliteJournal | PgJournal) -> AbstractContextManager[object]:
    """The lock every write transaction of ``journal`` takes: held, it keeps the next commit from starting."""
    return journal._lock if isinstance(journal, SqliteJournal) else journal._db._lock


def take(journal: Journal, path: str, lease: float = 600.0) -> Job:
    journal.submit(path, "logger-1", {})
    job = journal.take_due(owner="actor-a", lease=lease)
    assert job is not None and job.path == path
    return job


# -- group commit --------------------------------------------------------------------------------


def test_outcomes_that_come_together_share_one_commit(journal: SqliteJournal | PgJournal) -> None:
    """Six outcomes held up behind one commit are committed by at most two; each caller gets its own outcome."""
    holder = take(journal, "/data/runs/holder")
    journal.finish(holder.id, {"/out/held.arrow": 1}, token=holder.token)
    jobs = [take(journal, f"/data/runs/run-{i}") for i in range(6)]
    errors: dict[int, BaseException] = {}

    def outcome(i: int, job: Job) -> None:
        try:
            if i == 4:  # collides with the holder's output: this step alone is rolled back
                journal.claim_outputs(job.id, ["/out/new.arrow", "/out/held.arrow"])
            elif i == 5:  # a stale token: fenced
                journal.finish(job.id, {"/out/5.arrow": 5}, token=job.token - 1)
            else:
                journal.finish(job.id, {f"/out/{i}.arrow": i}, token=job.token)
        except BaseException as exc:  # noqa: BLE001 - checked below
            errors[i] = exc

    threads = [threading.Thread(target=outcome, args=(i, job)) for i, job in enumerate(jobs)]
    before = journal._group.commits
    with writer(journal):  # the first batch waits for the lock; the other five queue up behind it
        for thread in threads:
            thread.start()
        wait_for(lambda: journal._group.pending == len(jobs), "every outcome to be handed in", WAIT)
        assert journal._group.commits == before  # nothing committed while the journal was held
    for thread in threads:
        thread.join(WAIT)
    assert not any(thread.is_alive() for thread in threads)
    assert 1 <= journal._group.commits - before <= 2
    assert sorted(errors) == [4, 5]
    assert isinstance(errors[4], OutputTakenError) and errors[4].path == "/out/held.arrow"
    assert errors[4].owner.id == holder.id
    assert isinstance(errors[5], LeaseLost)
    assert journal.owner_of("/out/new.arrow") is None  # all or nothing
    for i, job in enumerate(jobs):
        now = journal.get(job.id)
        assert now is not None
        if i < 4:
            assert (now.state, now.outputs) == (JobState.DONE, {f"/out/{i}.arrow": i})
        else:
            assert (now.state, now.outputs) == (JobState.RUNNING, {})


CHILD = textwrap.dedent(
    """
    import sys, threading
    from herocollector.journal.sqlite import SqliteJournal

    journal = SqliteJournal(sys.argv[1])
    jobs = [journal.take_due(owner="child", lease=600.0) for _ in range(int(sys.argv[2]))]
    said = threading.Lock()

    def finish(job):
        journal.finish(job.id, {f"/out/{job.id}.arrow": job.id}, token=job.token)
        with said:
            print(f"finished {job.id}", flush=True)

    for job in jobs:
        threading.Thread(target=finish, args=(job,)).start()
    threading.Event().wait()
    """
)


def test_a_finish_that_returned_survives_a_sigkill(tmp_path: Path) -> None:
    """Every ``finish`` that returned in a process killed right after it is done in the journal reopened."""
    file = tmp_path / "journal.sqlite3"
    journal = SqliteJournal(file)
    for i in range(8):
        journal.submit(f"/data/runs/run-{i}", "logger-1", {})
    journal.close()
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(file), "8"], stdout=subprocess.PIPE, text=True, env={**os.environ}
    )
    try:
        assert child.stdout is not None
        returned = []
        for _ in range(8):
            line = child.stdout.readline()
            assert line.startswith("finished "), f"the child said {line!r}"
            returned.append(int(line.split()[1]))
        child.send_signal(signal.SIGKILL)
    finally:
        child.kill()
        child.wait(WAIT)
        if child.stdout is not None:
            child.stdout.close()
    reopened = SqliteJournal(file)
    try:
        for job_id in returned:
            job = reopened.get(job_id)
            assert job is not None and job.state == JobState.DONE and job.outputs == {f"/out/{job_id}.arrow": job_id}
    finally:
        reopened.close()


# -- the lease-renewal policy --------------------------------------------------------------------


def test_no_renewal_on_a_journal_only_this_actor_uses(tmp_path: Path) -> None:
    """On SQLite the checks before each publish commit nothing: nobody else can take the job."""
    journal = SqliteJournal(tmp_path / "journal.sqlite3")
    try:
        job = take(journal, "/data/runs/run-a")
        before = journal._group.commits
        with LeaseKeeper(journal, job, 30.0, threading.Event()) as lease:
            for _ in range(5):
                lease.check()
                JobGuard(lease, threading.Event()).before_publish()
        assert lease.renewals == 0 and journal._group.commits == before
        journal.finish(job.id, {}, token=job.token)
    finally:
        journal.close()


def lease_until(url: str, job_id: int) -> float:
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute("SELECT lease_until FROM herocollector_jobs WHERE id = %s", (job_id,)).fetchone()
    assert row is not None
    return float(row[0])


def test_a_shared_journal_renews_once_while_the_lease_is_fresh(postgres: PostgresTestServer) -> None:
    """PostgreSQL: the first check renews; checks within half a lease do not; an aged lease is renewed again."""
    url = postgres.database()
    journal = PgJournal(url)
    try:
        job = take(journal, "/data/runs/run-a", lease=600.0)
        taken_until = lease_until(url, job.id)
        with LeaseKeeper(journal, job, 600.0, threading.Event()) as lease:
            lease.check()
            renewed_until = lease_until(url, job.id)
            assert lease.renewals == 1 and renewed_until > taken_until
            for _ in range(5):
                lease.check()
            assert lease.renewals == 1 and lease_until(url, job.id) == renewed_until
            assert lease._renewed_at is not None
            lease._renewed_at -= 600.0 * 0.6  # as if more than half the lease had passed since
            lease.check()
            assert lease.renewals == 2 and lease_until(url, job.id) > renewed_until
    finally:
        journal.close()


def test_a_lease_taken_over_is_found_at_the_next_renewal(postgres: PostgresTestServer) -> None:
    """Another actor took the job (a new token): the check that renews raises LeaseLost, and so does the guard."""
    url = postgres.database()
    journal = PgJournal(url)
    try:
        job = take(journal, "/data/runs/run-a", lease=600.0)
        with LeaseKeeper(journal, job, 600.0, threading.Event()) as lease:
            lease.check()
            with psycopg.connect(url, autocommit=True) as conn:
                conn.execute("UPDATE herocollector_jobs SET token = token + 1 WHERE id = %s", (job.id,))
            assert lease._renewed_at is not None
            lease._renewed_at -= 600.0
            with pytest.raises(LeaseLost):
                lease.check()
            with pytest.raises(LeaseLost):
                JobGuard(lease, threading.Event()).check()
    finally:
        journal.close()


# -- a whole collection ----------------------------------------------------------------------------


def test_a_collection_on_sqlite_costs_three_commits_per_job(tmp_path: Path) -> None:
    """Runs of three outputs each: take, reserve (all outputs at once) and finish, one step each; no renewal."""
    runs, state = tmp_path / "runs", tmp_path / "state"
    paths = [runs / f"run-{i}" for i in range(4)]
    for i, path in enumerate(paths):
        write_simulated_run(path, records=300, entities=2, seed=i)
    arguments: dict[str, Any] = dict(
        save_template="{{ output_root }}/{{ logger_name }}/{{ measure }}.arrow",
        output_root=str(tmp_path / "out"),
        allowed_roots=[str(runs)],
        state_dir=str(state),
        workers=1,
        scan_interval=None,
    )
    config = ServiceConfig.from_arguments(**arguments)
    journal = SqliteJournal(config.journal_location)  # journalled before the start: the worker never idles between
    for path in paths:
        found = announcement_of("logger-1", str(path), config.path_key, None, 0.0, config.allowed_roots)
        assert not isinstance(found, Malformed)
        journal.submit_many([found])
    journal.close()
    with CollectionService(config) as service:
        assert isinstance(service.journal, SqliteJournal)
        group = service.journal._group
        wait_for(lambda: service.journal.counts()[JobState.DONE.value] == len(paths), "every run collected", WAIT)
        steps = group.steps
        jobs = [service.journal.by_path(str(path)) for path in paths]
    assert all(job is not None and len(job.outputs) == 3 for job in jobs)
    # take + claim_outputs + finish per job, and at most two takes that found nothing since the last finish
    assert 3 * len(paths) <= steps <= 3 * len(paths) + 2


def test_a_step_that_runs_another_step_is_refused(tmp_path: Path) -> None:
    """A step calling back into the group commit would wait for itself: it is refused, and the journal goes on."""
    journal = SqliteJournal(tmp_path / "journal.sqlite3")
    try:
        job = take(journal, "/data/runs/run-a")
        with pytest.raises(RuntimeError, match="wait for itself"):
            journal._grouped(lambda db: journal._grouped(lambda inner: None))
        done = journal.finish(job.id, {"/out/a.arrow": 1}, token=job.token)
        assert done.state == JobState.DONE
    finally:
        journal.close()
