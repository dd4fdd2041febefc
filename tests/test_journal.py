"""The job journal: a durable SQLite state machine under the actor's ``state_dir``.

States: pending -> running -> done -> cleaned, with failed (and retries) on the side. Every
test uses a real database file in ``tmp_path``; "restart" means closing the journal and
opening a new one on the same file.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from herocollector.errors import OutputTakenError
from herocollector.journal.base import Job, JobState, JobStore
from herocollector.journal.postgres import PgJournal
from herocollector.journal.sqlite import SqliteJournal

RUN_A = "/data/runs/run-a"
RUN_B = "/data/runs/run-b"


@pytest.fixture
def file(tmp_path: Path) -> Path:
    return tmp_path / "state" / "nested" / "journal.sqlite3"


@pytest.fixture(params=["sqlite", "postgres"])
def journal(request: pytest.FixtureRequest, file: Path) -> Iterator[JobStore]:
    """The same behaviour from both journals: SQLite, and PostgreSQL in a fresh database."""
    if request.param == "sqlite":
        j: JobStore = SqliteJournal(file)
    else:
        j = PgJournal(request.getfixturevalue("postgres").database())
    yield j
    j.close()


def _reopen(journal: JobStore) -> JobStore:
    journal.close()
    return SqliteJournal(journal.file) if isinstance(journal, SqliteJournal) else PgJournal(journal.url)


def _done(journal: JobStore, path: str = RUN_A, outputs: dict[str, int] | None = None) -> Job:
    job, queued = journal.submit(path, "logger-x", {"path": path})
    assert queued
    assert journal.start(job.id) is not None
    return journal.finish(job.id, outputs if outputs is not None else {f"/out/{Path(path).name}.arrow": 10})


# ----------------------------------------------------------------------------------------
# Basics
# ----------------------------------------------------------------------------------------


def test_creates_the_database_and_its_folders(file: Path) -> None:
    assert not file.parent.exists()
    journal = SqliteJournal(file)
    try:
        assert file.is_file()
        assert journal.file == file
        assert journal.jobs() == []
        assert journal.counts() == {state: 0 for state in tuple(JobState)}
    finally:
        journal.close()


def test_submit_new_path_is_queued(journal: JobStore) -> None:
    before = time.time()
    job, queued = journal.submit(RUN_A, "logger-x", {"path": RUN_A, "experiment": "e1"})
    assert queued is True
    assert job.path == RUN_A
    assert job.source == "logger-x"
    assert job.metadata == {"path": RUN_A, "experiment": "e1"}
    assert job.state == JobState.PENDING
    assert job.attempts == 0
    assert job.error is None and job.rows is None and job.next_attempt is None
    assert job.outputs == {}
    assert before <= job.created <= job.updated <= time.time()
    assert journal.get(job.id) == job
    assert journal.by_path(RUN_A) == job
    assert journal.by_path(RUN_B) is None
    assert journal.get(job.id + 100) is None


def test_job_to_dict_is_json_friendly(journal: JobStore) -> None:
    job, _ = journal.submit(RUN_A, "logger-x", {"path": RUN_A, "n": 1})
    as_dict = job.to_dict()
    assert json.loads(json.dumps(as_dict)) == as_dict
    assert as_dict["path"] == RUN_A and as_dict["state"] == JobState.PENDING and as_dict["outputs"] == {}


def test_metadata_that_is_not_json_is_stored_as_strings(journal: JobStore) -> None:
    job, _ = journal.submit(RUN_A, "logger-x", {"path": RUN_A, "when": Path("/x")})
    assert journal.get(job.id).metadata == {"path": RUN_A, "when": "/x"}


# ----------------------------------------------------------------------------------------
# Submit: no double collection
# ----------------------------------------------------------------------------------------


def test_submit_again_while_pending_requeues_the_same_job(journal: JobStore) -> None:
    first, _ = journal.submit(RUN_A, "logger-x", {"v": 1})
    again, queued = journal.submit(RUN_A, "logger-y", {"v": 2})
    assert queued is True
    assert again.id == first.id
    assert again.state == JobState.PENDING
    assert again.metadata == {"v": 2} and again.source == "logger-y"
    assert len(journal.jobs()) == 1


def test_submit_again_while_waiting_takes_the_newest_event_and_keeps_waiting(journal: JobStore) -> None:
    job, _ = journal.submit(RUN_A, "logger-1", {"n": 1}, deadline=5000.0)
    taken = journal.take_due(owner="a")
    assert taken is not None and taken.id == job.id
    journal.park(job.id, check_at=4000.0, deadline=5000.0, token=taken.token)
    again, queued = journal.submit(RUN_A, "logger-2", {"n": 2}, deadline=9000.0)
    assert queued is False
    stored = journal.get(job.id)
    assert stored == again
    assert (stored.state, stored.source, stored.metadata["n"]) == (JobState.WAITING, "logger-2", 2)
    assert stored.deadline == 5000.0 and stored.next_attempt == 4000.0 and stored.attempts == 0


def test_submit_again_while_running_is_not_queued(journal: JobStore) -> None:
    job, _ = journal.submit(RUN_A, "logger-x", {})
    journal.start(job.id)
    again, queued = journal.submit(RUN_A, "logger-x", {})
    assert queued is False
    assert again.id == job.id and again.state == JobState.RUNNING and again.attempts == 1


def test_submit_again_while_done_is_not_queued(journal: JobStore) -> None:
    done = _done(journal)
    again, queued = journal.submit(RUN_A, "logger-y", {"changed": True})
    assert queued is False
    assert again.id == done.id
    assert again.state == JobState.DONE
    assert journal.get(done.id).metadata == {"path": RUN_A}  # untouched
    assert len(journal.jobs()) == 1


def test_submit_again_while_cleaned_is_not_queued(journal: JobStore) -> None:
    done = _done(journal)
    journal.mark_cleaned(done.id)
    again, queued = journal.submit(RUN_A, "logger-x", {})
    assert queued is False and again.state == JobState.CLEANED


def test_submit_after_failure_requeues_with_attempts_reset(journal: JobStore) -> None:
    job, _ = journal.submit(RUN_A, "logger-x", {"v": 1})
    journal.start(job.id)
    journal.fail(job.id, "boom", time.time())  # retried ...
    journal.start(job.id)
    failed = journal.fail(job.id, "boom again", None)  # ... then given up
    assert failed.state == JobState.FAILED and failed.attempts == 2
    again, queued = journal.submit(RUN_A, "logger-z", {"v": 2})
    assert queued is True
    assert again.id == job.id
    assert again.state == JobState.PENDING
    assert again.attempts == 0
    assert again.next_attempt is None
    assert again.source == "logger-z" and again.metadata == {"v": 2}


def test_submit_while_pending_keeps_attempts(journal: JobStore) -> None:
    job, _ = journal.submit(RUN_A, "logger-x", {})
    journal.start(job.id)
    journal.fail(job.id, "transient", time.time() + 60)
    again, queued = journal.submit(RUN_A, "logger-x", {})
    assert queued is True
    assert again.attempts == 1  # still counts towards max_retries
    assert again.next_attempt is None  # queued now


# ----------------------------------------------------------------------------------------
# Start, finish, fail, retry
# ----------------------------------------------------------------------------------------


def test_start_only_from_pending(journal: JobStore) -> None:
    job, _ = journal.submit(RUN_A, "logger-x", {})
    started = journal.start(job.id)
    assert started is not None
    assert started.state == JobState.RUNNING and started.attempts == 1
    assert journal.start(job.id) is None  # second start: already running
    assert journal.get(job.id).attempts == 1
    journal.finish(job.id, {"/out/a.arrow": 3})
    assert journal.start(job.id) is None  # done
    journal.mark_cleaned(job.id)
    assert journal.start(job.id) is None  # cleaned
    assert journal.start(9999) is None  # unknown


def test_start_of_a_failed_job_is_refused(journal: JobStore) -> None:
    job, _ = journal.submit(RUN_A, "logger-x", {})
    journal.start(job.id)
    journal.fail(job.id, "bad", None)
    assert journal.start(job.id) is None


def test_finish_records_outputs_and_rows(journal: JobStore) -> None:
    job, _ = journal.submit(RUN_A, "logger-x", {})
    journal.start(job.id)
    journal.claim_output(job.id, "/out/a/stock.arrow")
    journal.claim_output(job.id, "/out/a/stale.arrow")  # claimed, then not written
    outputs = {"/out/a/stock.arrow": 120, "/out/a/orders.arrow": 80, "/out/a/empty.arrow": 0}
    done = journal.finish(job.id, outputs)
    assert done.state == JobState.DONE
    assert done.rows == 200
    assert done.error is None
    assert done.outputs == outputs
    assert journal.get(job.id).outputs == outputs
    assert journal.owner_of("/out/a/stock.arrow").id == job.id
    assert journal.owner_of("/out/a/stale.arrow") is None  # reservations replaced by the outputs
    assert journal.owner_of("/out/elsewhere.arrow") is None


def test_finish_with_no_outputs(journal: JobStore) -> None:
    job, _ = journal.submit(RUN_A, "logger-x", {})
    journal.start(job.id)
    done = journal.finish(job.id, {})
    assert done.state == JobState.DONE and done.rows == 0 and done.outputs == {}


def test_finish_clears_the_error_of_earlier_attempts(journal: JobStore) -> None:
    job, _ = journal.submit(RUN_A, "logger-x", {})
    journal.start(job.id)
    journal.fail(job.id, "first attempt failed", time.time())
    journal.start(job.id)
    done = journal.finish(job.id, {"/out/x.arrow": 1})
    assert done.error is None and done.attempts == 2


def test_fail_with_retry_at_goes_back_to_pending(journal: JobStore) -> None:
    job, _ = journal.submit(RUN_A, "logger-x", {})
    journal.start(job.id)
    retry_at = time.time() + 30
    failed = journal.fail(job.id, "SegmentError: corrupt", retry_at)
    assert failed.state == JobState.PENDING
    assert failed.error == "SegmentError: corrupt"
    assert failed.next_attempt == pytest.approx(retry_at)
    assert failed.attempts == 1
    restarted = journal.start(job.id)
    assert restarted.attempts == 2
    assert restarted.next_attempt is None
    assert restarted.error == "SegmentError: corrupt"  # kept until it succeeds


def test_fail_without_retry_is_failed(journal: JobStore) -> None:
    job, _ = journal.submit(RUN_A, "logger-x", {})
    journal.start(job.id)
    failed = journal.fail(job.id, "gave up", None)
    assert failed.state == JobState.FAILED
    assert failed.error == "gave up"
    assert failed.next_attempt is None
    assert [j.id for j in journal.jobs(JobState.FAILED)] == [job.id]


def _failed(journal: JobStore, path: str) -> Job:
    job, _ = journal.submit(path, "logger-x", {})
    journal.start(job.id)
    return journal.fail(job.id, f"failed {path}", None)


def test_retry_all(journal: JobStore) -> None:
    a, b = _failed(journal, RUN_A), _failed(journal, RUN_B)
    done = _done(journal, "/data/runs/run-c")
    retried = journal.retry(None)
    assert sorted(j.id for j in retried) == sorted([a.id, b.id])
    for job in retried:
        assert job.state == JobState.PENDING and job.attempts == 0 and job.next_attempt is None
    assert journal.get(done.id).state == JobState.DONE
    assert journal.retry(None) == []  # nothing failed any more


def test_retry_one_path(journal: JobStore) -> None:
    a, b = _failed(journal, RUN_A), _failed(journal, RUN_B)
    retried = journal.retry(RUN_B)
    assert [j.id for j in retried] == [b.id]
    assert journal.get(a.id).state == JobState.FAILED
    assert journal.get(b.id).state == JobState.PENDING and journal.get(b.id).attempts == 0
    assert journal.retry("/data/runs/unknown") == []
    assert journal.retry(RUN_B) == []  # pending, not failed


def test_retry_ignores_done_and_running_jobs(journal: JobStore) -> None:
    done = _done(journal, RUN_A)
    running, _ = journal.submit(RUN_B, "logger-x", {})
    journal.start(running.id)
    assert journal.retry(None) == []
    assert journal.retry(RUN_A) == []
    assert journal.get(done.id).state == JobState.DONE
    assert journal.get(running.id).state == JobState.RUNNING


def test_mark_cleaned(journal: JobStore) -> None:
    done = _done(journal)
    journal.mark_cleaned(done.id)
    cleaned = journal.get(done.id)
    assert cleaned.state == JobState.CLEANED
    assert cleaned.outputs == done.outputs and cleaned.rows == done.rows
    assert journal.jobs(JobState.DONE) == []
    assert [j.id for j in journal.jobs(JobState.CLEANED)] == [done.id]


# ----------------------------------------------------------------------------------------
# Restart
# ----------------------------------------------------------------------------------------


def test_resume_turns_running_into_pending_after_restart(journal: JobStore) -> None:
    running, _ = journal.submit(RUN_A, "logger-x", {"path": RUN_A})
    journal.start(running.id)
    waiting, _ = journal.submit(RUN_B, "logger-x", {})
    retrying, _ = journal.submit("/data/runs/run-r", "logger-x", {})
    journal.start(retrying.id)
    retry_at = time.time() + 3600
    journal.fail(retrying.id, "transient", retry_at)
    done = _done(journal, "/data/runs/run-d")
    failed = _failed(journal, "/data/runs/run-f")

    reopened = _reopen(journal)
    try:
        resumed = reopened.resume()
        assert [j.id for j in resumed] == [running.id, waiting.id, retrying.id]
        assert all(j.state == JobState.PENDING for j in resumed)
        by_id = {j.id: j for j in resumed}
        assert by_id[running.id].attempts == 1  # the interrupted attempt still counts
        assert by_id[running.id].metadata == {"path": RUN_A}
        assert by_id[retrying.id].next_attempt == pytest.approx(retry_at)  # its delay is kept
        assert reopened.get(done.id).state == JobState.DONE
        assert reopened.get(failed.id).state == JobState.FAILED
        assert reopened.start(running.id).attempts == 2
    finally:
        reopened.close()


def test_everything_survives_a_restart(journal: JobStore) -> None:
    done = _done(journal, RUN_A, {"/out/a.arrow": 5, "/out/b.arrow": 7})
    failed = _failed(journal, RUN_B)
    reopened = _reopen(journal)
    try:
        assert reopened.get(done.id) == done
        assert reopened.get(failed.id) == failed
        assert reopened.counts()[JobState.DONE] == 1 and reopened.counts()[JobState.FAILED] == 1
        assert reopened.owner_of("/out/b.arrow").id == done.id
        assert reopened.submit(RUN_A, "logger-x", {})[1] is False
        new, queued = reopened.submit("/data/runs/new", "logger-x", {})
        assert queued and new.id > failed.id
    finally:
        reopened.close()


def test_two_journals_on_one_file_see_each_other(file: Path) -> None:
    first, second = SqliteJournal(file), SqliteJournal(file)
    try:
        job, _ = first.submit(RUN_A, "logger-x", {})
        assert second.by_path(RUN_A).id == job.id
        assert second.start(job.id) is not None
        assert first.start(job.id) is None
    finally:
        first.close()
        second.close()


# ----------------------------------------------------------------------------------------
# Outputs
# ----------------------------------------------------------------------------------------


def test_claim_output_conflict_names_the_other_run(journal: JobStore) -> None:
    a, _ = journal.submit(RUN_A, "logger-x", {})
    b, _ = journal.submit(RUN_B, "logger-x", {})
    journal.claim_output(a.id, "/out/stock.arrow")
    journal.claim_output(a.id, "/out/stock.arrow")  # idempotent for the owner
    with pytest.raises(OutputTakenError) as info:
        journal.claim_output(b.id, "/out/stock.arrow")
    assert info.value.path == "/out/stock.arrow"
    assert info.value.owner.id == a.id
    assert info.value.owner.path == RUN_A
    assert RUN_A in str(info.value) and "/out/stock.arrow" in str(info.value)
    assert journal.owner_of("/out/stock.arrow").id == a.id
    journal.claim_output(b.id, "/out/orders.arrow")  # another path is free
    assert journal.owner_of("/out/orders.arrow").id == b.id


def test_claim_conflict_with_a_done_job(journal: JobStore) -> None:
    done = _done(journal, RUN_A, {"/out/stock.arrow": 10})
    b, _ = journal.submit(RUN_B, "logger-x", {})
    with pytest.raises(OutputTakenError) as info:
        journal.claim_output(b.id, "/out/stock.arrow")
    assert info.value.owner.id == done.id and info.value.owner.state == JobState.DONE
    assert journal.get(done.id).outputs == {"/out/stock.arrow": 10}  # the failed claim changed nothing


def test_release_outputs_frees_reservations(journal: JobStore) -> None:
    a, _ = journal.submit(RUN_A, "logger-x", {})
    b, _ = journal.submit(RUN_B, "logger-x", {})
    journal.claim_output(a.id, "/out/stock.arrow")
    journal.release_outputs(a.id)
    assert journal.owner_of("/out/stock.arrow") is None
    journal.claim_output(b.id, "/out/stock.arrow")
    assert journal.owner_of("/out/stock.arrow").id == b.id


# ----------------------------------------------------------------------------------------
# Queries, malformed events
# ----------------------------------------------------------------------------------------


def test_counts_and_jobs_by_state(journal: JobStore) -> None:
    pending, _ = journal.submit("/r/pending", "x", {})
    running, _ = journal.submit("/r/running", "x", {})
    journal.start(running.id)
    done = _done(journal, "/r/done")
    cleaned = _done(journal, "/r/cleaned")
    journal.mark_cleaned(cleaned.id)
    failed = _failed(journal, "/r/failed")
    journal.record_malformed("x", 42, "malformed event: 42")
    assert journal.counts() == {"pending": 1, "waiting": 0, "running": 1, "done": 1, "failed": 2, "cleaned": 1}
    assert list(journal.counts()) == list(tuple(JobState))
    assert [j.id for j in journal.jobs()] == sorted(j.id for j in journal.jobs())
    assert len(journal.jobs()) == 6
    assert [j.id for j in journal.jobs(JobState.DONE, JobState.CLEANED)] == [done.id, cleaned.id]
    assert [j.id for j in journal.jobs(JobState.PENDING)] == [pending.id]
    assert [j.path for j in journal.jobs(JobState.FAILED)] == [failed.path, None]
    assert journal.jobs("no-such-state") == []


def test_record_malformed(journal: JobStore) -> None:
    event = {"nopath": 1, "big": "x" * 5000}
    job = journal.record_malformed("logger-x", event, "malformed event: event has no logger path under 'path'")
    assert job.path is None
    assert job.state == JobState.FAILED
    assert job.source == "logger-x"
    assert job.attempts == 1
    assert job.error == "malformed event: event has no logger path under 'path'"
    assert job.metadata["event"].startswith("{'nopath': 1")
    assert len(job.metadata["event"]) <= 2000
    second = journal.record_malformed("logger-y", 42, "malformed event: int")
    assert second.id != job.id and second.metadata == {"event": "42"}  # many malformed jobs may exist
    assert [j.id for j in journal.jobs(JobState.FAILED)] == [job.id, second.id]
    assert journal.retry(None) == []  # nothing to collect without a path
    assert journal.get(job.id).state == JobState.FAILED
    reopened = _reopen(journal)
    try:
        assert reopened.get(job.id) == job
    finally:
        reopened.close()


def test_record_malformed_of_unprintable_event(journal: JobStore) -> None:
    class Weird:
        def __repr__(self) -> str:
            return "<weird \x00 event>"

    job = journal.record_malformed("logger-x", Weird(), "malformed event")
    # PostgreSQL's jsonb cannot hold a NUL character: it is kept visible as the text \u0000
    kept = "<weird \x00 event>" if isinstance(journal, SqliteJournal) else "<weird \\u0000 event>"
    assert journal.get(job.id).metadata == {"event": kept}


# ----------------------------------------------------------------------------------------
# Concurrency
# ----------------------------------------------------------------------------------------


def _hammer(submit: list, threads: int = 12) -> list[tuple[Job, bool]]:
    results: list[tuple[Job, bool]] = []
    errors: list[BaseException] = []
    barrier = threading.Barrier(threads)
    lock = threading.Lock()

    def worker(index: int) -> None:
        try:
            barrier.wait()
            for _ in range(5):
                result = submit[index % len(submit)](RUN_A, f"logger-{index}", {"thread": index})
                with lock:
                    results.append(result)
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    pool = [threading.Thread(target=worker, args=(i,)) for i in range(threads)]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join(timeout=60)
    assert not errors, errors
    assert len(results) == threads * 5
    return results


def test_concurrent_submits_of_one_path_create_one_job(journal: JobStore) -> None:
    results = _hammer([journal.submit])
    assert len({job.id for job, _ in results}) == 1
    assert len(journal.jobs()) == 1
    assert journal.counts()[JobState.PENDING] == 1


def test_concurrent_submits_through_separate_connections_create_one_job(file: Path) -> None:
    journals = [SqliteJournal(file) for _ in range(4)]
    try:
        results = _hammer([j.submit for j in journals])
        assert len({job.id for job, _ in results}) == 1
        assert len(journals[0].jobs()) == 1
        with sqlite3.connect(file) as db:
            assert db.execute("SELECT COUNT(*) FROM jobs").fetchone()[0] == 1
    finally:
        for j in journals:
            j.close()


def test_concurrent_starts_run_a_job_once(journal: JobStore) -> None:
    job, _ = journal.submit(RUN_A, "logger-x", {})
    barrier = threading.Barrier(8)
    started: list[Job | None] = []

    def worker() -> None:
        barrier.wait()
        started.append(journal.start(job.id))

    pool = [threading.Thread(target=worker) for _ in range(8)]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join(timeout=60)
    assert sum(s is not None for s in started) == 1
    assert journal.get(job.id).attempts == 1


def test_concurrent_claims_of_one_output_have_one_winner(journal: JobStore) -> None:
    jobs = [journal.submit(f"/r/run-{i}", "x", {})[0] for i in range(8)]
    barrier = threading.Barrier(len(jobs))
    winners: list[int] = []
    losers: list[OutputTakenError] = []

    def worker(job: Job) -> None:
        barrier.wait()
        try:
            journal.claim_output(job.id, "/out/shared.arrow")
            winners.append(job.id)
        except OutputTakenError as exc:
            losers.append(exc)

    pool = [threading.Thread(target=worker, args=(job,)) for job in jobs]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join(timeout=60)
    assert len(winners) == 1 and len(losers) == len(jobs) - 1
    assert all(exc.owner.id == winners[0] for exc in losers)
    assert journal.owner_of("/out/shared.arrow").id == winners[0]


def test_recent_returns_the_newest_jobs_oldest_first(tmp_path: Path) -> None:
    journal = SqliteJournal(tmp_path / "journal.sqlite3")
    try:
        for i in range(5):
            journal.submit(f"/runs/run-{i}", "logger", {})
        assert [job.path for job in journal.recent(3)] == ["/runs/run-2", "/runs/run-3", "/runs/run-4"]
        assert [job.path for job in journal.recent(10)] == [job.path for job in journal.jobs()]
    finally:
        journal.close()


# ----------------------------------------------------------------------------------------
# Scale: pages, bounded lists, indexes
# ----------------------------------------------------------------------------------------


def test_done_jobs_page_walks_every_done_job_once_in_id_order(journal: JobStore) -> None:
    done = [_done(journal, f"/data/runs/d-{i}", {f"/out/d-{i}.arrow": i}) for i in range(7)]
    journal.submit("/data/runs/pending", "logger-x", {})
    _failed(journal, "/data/runs/failed")
    journal.mark_cleaned(done[2].id)
    expected = [job.id for job in done if job.id != done[2].id]
    seen: list[int] = []
    after = 0
    while page := journal.done_jobs_page(after, 2):
        assert len(page) <= 2
        assert all(job.state == JobState.DONE for job in page)
        seen.extend(job.id for job in page)
        after = page[-1].id
    assert seen == expected
    assert journal.done_jobs_page(0, 100)[0].outputs == {"/out/d-0.arrow": 0}  # with their outputs
    assert journal.done_jobs_page(done[-1].id, 100) == []


def test_in_trash_with_a_limit_gives_the_soonest_purges(journal: JobStore) -> None:
    jobs = [_done(journal, f"/data/runs/t-{i}") for i in range(5)]
    for i, job in enumerate(jobs):
        journal.mark_cleaned(job.id, 1000.0 - i)  # the last one is purged first
    assert [job.id for job in journal.in_trash(limit=2)] == [jobs[4].id, jobs[3].id]
    assert [job.id for job in journal.in_trash()] == [job.id for job in reversed(jobs)]
    assert journal.trash_count() == 5
    journal.purged(jobs[4].id)
    assert journal.trash_count() == 4 and journal.in_trash(limit=1)[0].id == jobs[3].id


def test_an_old_sqlite_journal_gains_the_indexes(file: Path) -> None:
    file.parent.mkdir(parents=True)
    old = sqlite3.connect(file)
    old.executescript(
        "CREATE TABLE jobs (id INTEGER PRIMARY KEY AUTOINCREMENT, path TEXT UNIQUE, source TEXT NOT NULL, "
        "metadata TEXT NOT NULL, state TEXT NOT NULL, attempts INTEGER NOT NULL DEFAULT 0, error TEXT, rows INTEGER, "
        "created REAL NOT NULL, updated REAL NOT NULL, next_attempt REAL);"
        "CREATE TABLE outputs (path TEXT PRIMARY KEY, job_id INTEGER NOT NULL REFERENCES jobs(id), "
        "rows INTEGER NOT NULL);"
        "CREATE INDEX jobs_state ON jobs(state, next_attempt);"
        "INSERT INTO jobs (path, source, metadata, state, created, updated) VALUES ('/r/a', 'x', '{}', 'done', 1, 1);"
        "INSERT INTO outputs VALUES ('/out/a.arrow', 1, 3);"
    )
    old.close()
    journal = SqliteJournal(file)
    try:
        assert journal.done_jobs_page(0, 10)[0].outputs == {"/out/a.arrow": 3}
        assert journal.counts() == {"pending": 0, "waiting": 0, "running": 0, "done": 1, "failed": 0, "cleaned": 0}
        journal.submit("/r/b", "x", {})
        journal.mark_cleaned(1)
        assert journal.counts() == {"pending": 1, "waiting": 0, "running": 0, "done": 0, "failed": 0, "cleaned": 1}
    finally:
        journal.close()
    reopened = SqliteJournal(file)  # counted once: opening again counts nothing twice
    try:
        assert reopened.counts()["cleaned"] == 1 and reopened.counts()["pending"] == 1
    finally:
        reopened.close()
    db = sqlite3.connect(file)
    try:
        indexes = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'index'")}
        assert {"jobs_due", "jobs_state_id", "jobs_trash", "outputs_job"} <= indexes
        plan = " ".join(str(r) for r in db.execute("EXPLAIN QUERY PLAN SELECT * FROM outputs WHERE job_id = 1"))
        assert "outputs_job" in plan
    finally:
        db.close()
