"""The contract every journal backend keeps, as one pytest base class: :class:`JournalTests`.

Written in the style of zarr's ``StoreTests``: every test is written once, here, and a test
module subclasses :class:`JournalTests` for each backend, providing the ``journal`` fixture
(a fresh, empty journal) and :meth:`JournalTests.reopen` (the same journal after a restart)::

    class TestSqliteJournal(JournalTests):
        @pytest.fixture
        def journal(self, tmp_path: Path) -> Iterator[Journal]:
            journal = SqliteJournal(tmp_path / "journal.sqlite3")
            yield journal
            journal.close()

        def reopen(self, journal: Journal) -> Journal:
            journal.close()
            return SqliteJournal(journal.file)

The expected outcomes are spelled out in each test, independently of
:data:`herocollector.journal.base.RESUBMIT`, so a change of the decisions there fails here.
Where a fleet's journal differs by design (leases taken over, ``resume`` of one owner), the
test asks :attr:`~herocollector.journal.base.Journal.shared`.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

from herocollector.errors import LeaseLost
from herocollector.journal.base import Announcement, Job, JobState, Journal
from herocollector.testing.journal_contract_base import FAR, OTHER, RUN
from herocollector.testing.journal_contract_cursors import JournalCursorTests
from herocollector.testing.journal_contract_leases import JournalLeaseTests
from herocollector.testing.journal_contract_queries import JournalQueryTests
from herocollector.testing.journal_contract_speed import JournalSpeedTests


class JournalTests(JournalQueryTests, JournalLeaseTests, JournalCursorTests, JournalSpeedTests):
    """The journal contract; subclass it with a ``journal`` fixture and :meth:`reopen` (see the module docstring)."""

    # -- the protocol ------------------------------------------------------------------------------

    def test_implements_the_protocol(self, journal: Journal) -> None:
        """The backend is a Journal, with the expected ``shared`` and a ``location``."""
        assert isinstance(journal, Journal)
        assert journal.shared is self.shared
        assert isinstance(journal.location, str) and journal.location
        assert journal.jobs() == []
        assert journal.counts() == {state.value: 0 for state in JobState}
        assert journal.next_due() is None

    # -- submit ------------------------------------------------------------------------------------

    def test_submit_of_a_new_run_is_pending_and_due(self, journal: Journal) -> None:
        """Submit of a new run is pending and due."""
        before = time.time()
        job, queued = journal.submit(RUN, "logger-1", {"n": 1, "when": object}, deadline=FAR)
        assert queued is True
        assert (job.path, job.source, job.state, job.attempts, job.deadline) == (
            RUN,
            "logger-1",
            JobState.PENDING,
            0,
            FAR,
        )
        assert job.metadata["n"] == 1 and isinstance(job.metadata["when"], str)  # not JSON: its str
        assert before <= job.created <= job.updated <= time.time()
        assert job.next_attempt is None and job.outputs == {} and job.error is None
        assert journal.by_path(RUN) == job and journal.get(job.id) == job
        assert journal.by_path(OTHER) is None and journal.get(job.id + 1000) is None

    # (state, state after, takes the new source and metadata, queued, attempts after)
    RESUBMIT_CASES: tuple[tuple[JobState, JobState, bool, bool, int], ...] = (
        (JobState.PENDING, JobState.PENDING, True, True, 0),
        (JobState.WAITING, JobState.WAITING, True, False, 0),
        (JobState.FAILED, JobState.PENDING, True, True, 0),
        (JobState.RUNNING, JobState.RUNNING, False, False, 1),
        (JobState.DONE, JobState.DONE, False, False, 1),
        (JobState.CLEANED, JobState.CLEANED, False, False, 1),
    )

    @pytest.mark.parametrize(("state", "after", "takes_event", "queued", "attempts"), RESUBMIT_CASES)
    def test_submit_again_in_each_state(
        self, journal: Journal, state: JobState, after: JobState, takes_event: bool, queued: bool, attempts: int
    ) -> None:
        """A repeated announcement in each state: see the table in :mod:`herocollector.journal.base`."""
        first = self.in_state(journal, state)
        assert first.state == state
        again, was_queued = journal.submit(RUN, "logger-2", {"n": 2}, deadline=FAR + 5)
        stored = journal.get(first.id)
        assert stored == again
        assert len(journal.jobs()) == 1
        assert was_queued is queued
        assert again.id == first.id and again.state == after and again.attempts == attempts
        if takes_event:
            assert (again.source, again.metadata) == ("logger-2", {"n": 2})
        else:
            assert (again.source, again.metadata) == (first.source, first.metadata)
            assert again.updated == first.updated  # untouched
        if state == JobState.FAILED:
            assert again.deadline == FAR + 5 and again.next_attempt is None  # starts over
        else:
            assert again.deadline == first.deadline  # the _DONE deadline counts from the first event
        if state == JobState.WAITING:
            assert again.next_attempt == first.next_attempt  # its next check is kept
        if queued:
            assert journal.take_due(owner="b") is not None

    def test_submit_of_a_pending_run_makes_it_due_now(self, journal: Journal) -> None:
        """A repeated announcement of a pending run waiting for its retry makes it due now."""
        taken = self.take(journal)
        journal.fail(taken.id, "transient", FAR, token=taken.token)
        assert journal.take_due(owner="a") is None
        job, queued = journal.submit(RUN, "logger-2", {})
        assert queued and job.next_attempt is None and job.attempts == 1  # attempts are kept
        again = journal.take_due(owner="a")
        assert again is not None and again.id == job.id and again.attempts == 2

    def test_submit_many_applies_each_announcement_in_order(self, journal: Journal) -> None:
        """``submit_many``: one transaction, each announcement as a separate ``submit`` would apply it."""
        done = self.in_state(journal, JobState.DONE, "/data/runs/done")
        results = journal.submit_many(
            [
                Announcement(RUN, "logger-1", {"n": 1}),
                Announcement(RUN, "logger-2", {"n": 2}, deadline=FAR),
                Announcement(OTHER, "logger-1", {}),
                Announcement("/data/runs/done", "logger-3", {}),
            ]
        )
        assert [queued for _, queued in results] == [True, True, True, False]
        assert results[0][0].id == results[1][0].id and results[3][0] == done
        job = journal.by_path(RUN)
        assert job is not None and (job.source, job.metadata, job.deadline) == ("logger-2", {"n": 2}, None)
        assert journal.submit_many([]) == []
        (again,) = journal.submit_many([Announcement(RUN, "logger-3", {"n": 3})])  # a known run, alone
        assert again[1] is True and again[0].id == job.id and again[0].source == "logger-3"
        assert len(journal.jobs()) == 3

    def test_submit_new_journals_only_unknown_runs(self, journal: Journal) -> None:
        """``submit_new`` (the scan) journals only runs without a job."""
        done = self.in_state(journal, JobState.DONE)
        created = journal.submit_new([RUN, OTHER, OTHER, "/data/runs/run-c"], "scan", deadline=FAR)
        assert created == 2
        assert journal.get(done.id) == done
        other = journal.by_path(OTHER)
        assert other is not None and (other.source, other.state, other.deadline) == ("scan", JobState.PENDING, FAR)
        assert journal.submit_new([], "scan") == 0

    def test_concurrent_submits_of_one_run_make_one_job(self, journal: Journal) -> None:
        """Concurrent submits of one run make one job."""
        results: list[tuple[Job, bool]] = []
        errors: list[BaseException] = []
        barrier = threading.Barrier(6)

        def announce(index: int) -> None:
            try:
                barrier.wait(timeout=60)
                for _ in range(4):
                    results.append(journal.submit(RUN, f"logger-{index}", {"i": index}))
            except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
                errors.append(exc)

        threads = [threading.Thread(target=announce, args=(i,)) for i in range(6)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=120)
        assert not errors and len(results) == 24
        assert len({job.id for job, _ in results}) == 1 and len(journal.jobs()) == 1

    def test_record_malformed_is_a_failed_job_without_a_path(self, journal: Journal) -> None:
        """A malformed event is a failed job without a path, never retried."""
        job = journal.record_malformed("logger-1", {"odd": b"\x01"}, "not an event")
        assert (job.path, job.state, job.error, job.attempts) == (None, JobState.FAILED, "not an event", 1)
        assert "odd" in job.metadata["event"]
        assert journal.retry() == []  # a job without a path is never retried

    # -- take_due, leases, fencing -------------------------------------------------------------------

    def test_take_due_takes_each_due_job_once_in_due_order(self, journal: Journal) -> None:
        """``take_due`` gives each due job once, earliest ``next_attempt`` first."""
        first = self.take(journal, RUN)
        journal.fail(first.id, "transient", 100.0, token=first.token)  # due since 1970
        fresh, _ = journal.submit(OTHER, "logger-1", {})  # no next_attempt: due before any time
        order = [journal.take_due(owner="a", lease=600), journal.take_due(owner="b", lease=600)]
        assert [job.id if job else None for job in order] == [fresh.id, first.id]
        assert journal.take_due(owner="c") is None

    def test_take_due_leaves_a_job_until_its_time(self, journal: Journal) -> None:
        """A job is not due before its ``next_attempt``; ``next_due`` says when."""
        taken = self.take(journal)
        retry_at = time.time() + 3600
        journal.fail(taken.id, "transient", retry_at, token=taken.token)
        assert journal.take_due(owner="a") is None
        due = journal.next_due()
        assert due is not None and abs(due - retry_at) < 60  # the server's clock may differ a little
        later = journal.take_due(now=retry_at + 1, owner="a")
        assert later is not None and later.id == taken.id

    def test_take_due_counts_the_attempt_and_raises_the_token(self, journal: Journal) -> None:
        """``take_due`` counts the attempt, raises the token and records the lease."""
        job, _ = journal.submit(RUN, "logger-1", {})
        taken = journal.take_due(owner="actor-a", lease=600)
        assert taken is not None
        assert (taken.state, taken.attempts, taken.lease_owner) == (JobState.RUNNING, 1, "actor-a")
        assert taken.token > job.token
        assert taken.lease_until is not None and taken.lease_until > time.time() + 300
        journal.defer(taken.id, None, "shutdown", token=taken.token)
        again = journal.take_due(owner="actor-b", lease=600)
        assert again is not None and again.token > taken.token and again.attempts == 1  # deferral not counted

    def test_start_takes_only_a_pending_job(self, journal: Journal) -> None:
        """Start takes only a pending job."""
        job, _ = journal.submit(RUN, "logger-1", {})
        started = journal.start(job.id)
        assert started is not None and started.state == JobState.RUNNING and started.attempts == 1
        assert started.token > job.token
        assert journal.start(job.id) is None

    def test_renew_extends_the_lease_of_the_current_token_only(self, journal: Journal) -> None:
        """Renew extends the lease of the current token only."""
        taken = self.take(journal, lease=60)
        assert journal.renew(taken.id, taken.token, 900) is True
        renewed = journal.get(taken.id)
        assert renewed is not None and renewed.lease_until is not None and renewed.lease_until > time.time() + 600
        assert journal.renew(taken.id, taken.token - 1, 900) is False
        journal.finish(taken.id, {}, token=taken.token)
        assert journal.renew(taken.id, taken.token, 900) is False  # no longer running

    @pytest.mark.parametrize("transition", ["finish", "fail", "park", "defer"])
    def test_a_stale_token_is_fenced_out(self, journal: Journal, transition: str) -> None:
        """A stale token is fenced out."""
        taken = self.take(journal)
        journal.defer(taken.id, None, None, token=taken.token)
        current = journal.take_due(owner="actor-b")
        assert current is not None and current.token > taken.token
        stale: dict[str, Callable[[], Any]] = {
            "finish": lambda: journal.finish(taken.id, {"/out/x.arrow": 1}, token=taken.token),
            "fail": lambda: journal.fail(taken.id, "late", None, token=taken.token),
            "park": lambda: journal.park(taken.id, FAR, None, token=taken.token),
            "defer": lambda: journal.defer(taken.id, None, "late", token=taken.token),
        }
        with pytest.raises(LeaseLost):
            stale[transition]()
        assert journal.get(taken.id) == current  # nothing changed
        assert journal.owner_of("/out/x.arrow") is None

    def test_an_expired_lease_is_taken_over_only_on_a_shared_journal(self, journal: Journal) -> None:
        """An expired lease is taken over only on a shared journal."""
        taken = self.take(journal, lease=600)
        later = time.time() + 1200  # the lease has run out by then
        takeover = journal.take_due(now=later, owner="actor-b", lease=600)
        if journal.shared:
            assert takeover is not None and takeover.id == taken.id and takeover.token > taken.token
            assert takeover.lease_owner == "actor-b"
            with pytest.raises(LeaseLost):
                journal.finish(taken.id, {}, token=taken.token)
        else:  # one actor: its own running job is never taken from it
            assert takeover is None
            assert journal.finish(taken.id, {}, token=taken.token).state == JobState.DONE

    # -- finish, fail, park, wake, expire, retry, resume ------------------------------------------------

    def test_finish_records_the_outputs_and_rows(self, journal: Journal) -> None:
        """Finish records the outputs and rows."""
        taken = self.take(journal)
        journal.fail(taken.id, "first try", 0.0, token=taken.token)
        again = journal.take_due(owner="a")
        assert again is not None
        done = journal.finish(again.id, {"/out/b.arrow": 7, "/out/a.arrow": 5}, token=again.token)
        assert (done.state, done.rows, done.error, done.lease_owner, done.lease_until) == (
            JobState.DONE,
            12,
            None,
            None,
            None,
        )
        assert done.outputs == {"/out/a.arrow": 5, "/out/b.arrow": 7}
        assert list(done.outputs) == ["/out/a.arrow", "/out/b.arrow"]  # in path order
        assert journal.get(done.id) == done
        owner = journal.owner_of("/out/b.arrow")
        assert owner is not None and owner.id == done.id

    def test_fail_retries_later_or_fails_for_good(self, journal: Journal) -> None:
        """Fail retries later or fails for good."""
        taken = self.take(journal)
        retry = journal.fail(taken.id, "OSError: busy", FAR, token=taken.token)
        assert (retry.state, retry.error, retry.next_attempt, retry.attempts) == (
            JobState.PENDING,
            "OSError: busy",
            FAR,
            1,
        )
        assert retry.lease_owner is None
        again = journal.take_due(now=FAR + 1, owner="a")
        assert again is not None
        final = journal.fail(again.id, "RunRefused: no", None, token=again.token)
        assert (final.state, final.attempts, final.error) == (JobState.FAILED, 2, "RunRefused: no")
        assert [job.id for job in journal.jobs(JobState.FAILED)] == [final.id]

    def test_fail_without_keep_deadline_waits_afresh(self, journal: Journal) -> None:
        """Fail without keep deadline waits afresh."""
        job, _ = journal.submit(RUN, "logger-1", {}, deadline=FAR)
        taken = journal.take_due(owner="a")
        assert taken is not None
        assert journal.fail(job.id, "x", FAR, token=taken.token).deadline == FAR
        again = journal.take_due(now=FAR + 1, owner="a")
        assert again is not None
        assert journal.fail(job.id, "DoneTimeout", FAR + 10, keep_deadline=False, token=again.token).deadline is None

    def test_park_wake_and_expire(self, journal: Journal) -> None:
        """Park wake and expire."""
        taken = self.take(journal)
        parked = journal.park(taken.id, check_at=FAR - 1, deadline=FAR, token=taken.token)
        assert (parked.state, parked.attempts, parked.next_attempt, parked.deadline, parked.lease_owner) == (
            JobState.WAITING,
            0,
            FAR - 1,
            FAR,
            None,
        )
        assert journal.take_due(now=FAR + 10, owner="a") is None  # waiting runs hold no worker
        journal.wake(taken.id)
        woken = journal.get(taken.id)
        assert woken is not None and woken.state == JobState.PENDING and woken.next_attempt is None
        journal.wake(taken.id)  # only a waiting job is woken
        again = journal.take_due(owner="a")
        assert again is not None
        journal.park(again.id, check_at=FAR - 1, deadline=FAR, token=again.token)
        expired = journal.expire(again.id, "DoneTimeout: no _DONE", FAR + 5)
        assert (expired.state, expired.attempts, expired.deadline, expired.next_attempt) == (
            JobState.PENDING,
            1,
            None,
            FAR + 5,
        )

    def test_retry_puts_failed_jobs_back(self, journal: Journal) -> None:
        """Retry puts failed jobs back."""
        a = self.in_state(journal, JobState.FAILED, RUN)
        b = self.in_state(journal, JobState.FAILED, OTHER)
        done = self.in_state(journal, JobState.DONE, "/data/runs/run-d")
        assert [job.id for job in journal.retry(OTHER)] == [b.id]
        retried = journal.retry()
        assert [job.id for job in retried] == [a.id]
        assert all(job.state == JobState.PENDING and job.attempts == 0 for job in retried)
        assert journal.get(done.id) == done
        assert journal.retry() == []

    def test_resume_after_a_restart(self, journal: Journal) -> None:
        """Resume after a restart."""
        running = self.in_state(journal, JobState.RUNNING, RUN)
        waiting = self.in_state(journal, JobState.WAITING, OTHER)
        done = self.in_state(journal, JobState.DONE, "/data/runs/run-d")
        reopened = self.reopen(journal)
        try:
            assert reopened.get(done.id) == done
            resumed = reopened.resume(owner="actor-a")
            assert [job.id for job in resumed] == [running.id, waiting.id]
            back = reopened.get(running.id)
            assert back is not None and back.state == JobState.PENDING and back.attempts == 1  # the attempt counts
            assert back.lease_owner is None
        finally:
            reopened.close()

    def test_resume_leaves_another_actors_live_lease_on_a_shared_journal(self, journal: Journal) -> None:
        """Resume leaves another actor's live lease on a shared journal."""
        running = self.take(journal, owner="actor-b", lease=600)
        resumed = journal.resume(owner="actor-a")
        job = journal.get(running.id)
        assert job is not None
        if journal.shared:
            assert resumed == [] and job.state == JobState.RUNNING and job.lease_owner == "actor-b"
        else:  # one actor: whatever ran before the restart was its own
            assert [j.id for j in resumed] == [running.id] and job.state == JobState.PENDING
