"""The journal contract's tests of output reservations, counts, pages and the trash (part of :class:`JournalTests`)."""

from __future__ import annotations

import threading

import pytest

from herocollector.errors import JournalError, OutputTakenError
from herocollector.journal.base import Job, JobState, Journal
from herocollector.testing.journal_contract_base import FAR, OTHER, RUN, JournalTestBase


class JournalQueryTests(JournalTestBase):
    """Outputs, counts, status, pages and trash: written once for every backend."""

    # -- outputs -------------------------------------------------------------------------------------

    def test_output_reservations(self, journal: Journal) -> None:
        """Output reservations."""
        a, _ = journal.submit(RUN, "logger-1", {})
        b, _ = journal.submit(OTHER, "logger-1", {})
        journal.claim_output(a.id, "/out/x.arrow")
        journal.claim_output(a.id, "/out/x.arrow")  # idempotent for its owner
        with pytest.raises(OutputTakenError) as info:
            journal.claim_output(b.id, "/out/x.arrow")
        assert info.value.path == "/out/x.arrow" and info.value.owner.id == a.id and info.value.owner.path == RUN
        assert RUN in str(info.value) and "/out/x.arrow" in str(info.value)
        journal.release_outputs(a.id)
        assert journal.owner_of("/out/x.arrow") is None
        journal.claim_output(b.id, "/out/x.arrow")
        owner = journal.owner_of("/out/x.arrow")
        assert owner is not None and owner.id == b.id

    def test_a_failed_attempt_releases_its_reservations(self, journal: Journal) -> None:
        """A failed attempt releases its reservations."""
        taken = self.take(journal)
        journal.claim_output(taken.id, "/out/x.arrow")
        journal.fail(taken.id, "x", FAR, token=taken.token)
        assert journal.owner_of("/out/x.arrow") is None

    def test_a_failed_attempt_keeps_the_outputs_it_published(self, journal: Journal) -> None:
        """``fail(keep_outputs=...)`` keeps those reservations (in the same transaction), releases the rest."""
        taken = self.take(journal)
        other = self.take(journal, OTHER)  # running: not in the way of the retry below
        for path in ("/out/published.arrow", "/out/planned.arrow", "/out/also.arrow"):
            journal.claim_output(taken.id, path)
        failed = journal.fail(
            taken.id, "PublishError: no space", 0.0, token=taken.token, keep_outputs={"/out/published.arrow", "/x"}
        )
        assert failed.outputs == {"/out/published.arrow": 0}
        with pytest.raises(OutputTakenError):
            journal.claim_output(other.id, "/out/published.arrow")
        journal.claim_output(other.id, "/out/planned.arrow")  # released
        assert journal.owner_of("/x") is None  # a kept path the job never reserved is not created
        again = journal.take_due(owner="a")
        assert again is not None and again.id == taken.id
        journal.claim_output(again.id, "/out/published.arrow")  # the retry re-reserves its own
        done = journal.finish(again.id, {"/out/published.arrow": 9}, token=again.token)
        assert done.outputs == {"/out/published.arrow": 9}

    def test_a_collected_runs_outputs_stay_its_own(self, journal: Journal) -> None:
        """A collected run's outputs stay its own."""
        done = self.in_state(journal, JobState.DONE, RUN)
        other = self.take(journal, OTHER)
        (path,) = done.outputs
        with pytest.raises(OutputTakenError) as info:
            journal.claim_output(other.id, path)
        assert info.value.owner.id == done.id and info.value.owner.path == RUN
        assert journal.get(done.id) == done

    def test_finish_replaces_the_reservations(self, journal: Journal) -> None:
        """Finish replaces the reservations."""
        taken = self.take(journal)
        journal.claim_output(taken.id, "/out/planned.arrow")
        done = journal.finish(taken.id, {"/out/real.arrow": 3}, token=taken.token)
        assert done.outputs == {"/out/real.arrow": 3}
        assert journal.owner_of("/out/planned.arrow") is None

    def test_concurrent_claims_of_one_output_have_one_winner(self, journal: Journal) -> None:
        """Concurrent claims of one output have one winner."""
        jobs = [journal.submit(f"/data/runs/c-{i}", "logger-1", {})[0] for i in range(6)]
        winners: list[int] = []
        losers: list[OutputTakenError] = []
        barrier = threading.Barrier(len(jobs))

        def claim(job: Job) -> None:
            barrier.wait(timeout=60)
            try:
                journal.claim_output(job.id, "/out/shared.arrow")
                winners.append(job.id)
            except OutputTakenError as exc:
                losers.append(exc)

        threads = [threading.Thread(target=claim, args=(job,)) for job in jobs]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=120)
        assert len(winners) == 1 and len(losers) == len(jobs) - 1
        assert all(exc.owner.id == winners[0] for exc in losers)

    # -- counts, status, pages, trash ---------------------------------------------------------------

    def test_counts_list_every_state(self, journal: Journal) -> None:
        """Counts list every state."""
        states = [state for state in JobState if state != JobState.PENDING] + [JobState.PENDING]
        for index, state in enumerate(states):  # pending last: in_state takes the only due job
            self.in_state(journal, state, f"/data/runs/s-{index}")
        journal.submit("/data/runs/extra", "logger-1", {})
        expected = {state.value: 1 for state in JobState}
        expected[JobState.PENDING.value] = 2
        assert journal.counts() == expected
        assert [job.state for job in journal.jobs(JobState.DONE, JobState.CLEANED)] == [
            JobState.DONE,
            JobState.CLEANED,
        ]

    def test_recent_is_the_newest_jobs_oldest_first(self, journal: Journal) -> None:
        """Recent is the newest jobs oldest first."""
        for i in range(6):
            journal.submit(f"/data/runs/r-{i}", "logger-1", {})
        assert [job.path for job in journal.recent(3)] == [f"/data/runs/r-{i}" for i in (3, 4, 5)]
        assert journal.recent(100) == journal.jobs()

    def test_done_jobs_page_walks_every_done_job_once(self, journal: Journal) -> None:
        """Done jobs page walks every done job once."""
        done = [self.in_state(journal, JobState.DONE, f"/data/runs/d-{i}") for i in range(5)]
        self.in_state(journal, JobState.FAILED, "/data/runs/failed")
        self.in_state(journal, JobState.CLEANED, "/data/runs/cleaned")
        seen: list[Job] = []
        after = 0
        while page := journal.done_jobs_page(after, 2):
            assert len(page) <= 2
            seen.extend(page)
            after = page[-1].id
            journal.mark_cleaned(page[0].id)  # cleaning during the walk does not disturb it
        assert [job.id for job in seen] == [job.id for job in done]
        assert seen[0].outputs == done[0].outputs
        pending = journal.jobs_page(JobState.FAILED, 0, 10)
        assert [job.path for job in pending] == ["/data/runs/failed"]

    def test_a_read_in_progress_holds_up_no_change(self, journal: Journal) -> None:
        """While a page is being read (a cleanup of every run), runs are journalled, taken and finished."""
        self.in_state(journal, JobState.DONE, "/data/runs/d-0")
        outcome: list[object] = []

        def change() -> None:
            try:
                job, queued = journal.submit(RUN, "logger-1", {})
                taken = journal.take_due(owner="a")
                assert queued and taken is not None and taken.id == job.id
                outcome.append(journal.finish(taken.id, {"/out/a.arrow": 1}, token=taken.token).state)
            except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
                outcome.append(exc)

        with self.reading(journal):
            worker = threading.Thread(target=change)
            worker.start()
            worker.join(timeout=60)
            finished_while_reading = not worker.is_alive()
        worker.join(timeout=60)
        assert finished_while_reading, "a state change waited for a read"
        assert outcome == [JobState.DONE]
        assert [job.path for job in journal.done_jobs_page(0, 10)] == ["/data/runs/d-0", RUN]

    def test_trash_is_listed_soonest_purge_first_and_bounded(self, journal: Journal) -> None:
        """Trash is listed soonest purge first and bounded."""
        jobs = [self.in_state(journal, JobState.DONE, f"/data/runs/t-{i}") for i in range(4)]
        for i, job in enumerate(jobs):
            journal.mark_cleaned(job.id, 1000.0 - i)
        assert [job.id for job in journal.in_trash()] == [job.id for job in reversed(jobs)]
        assert [job.id for job in journal.in_trash(limit=2)] == [jobs[3].id, jobs[2].id]
        assert journal.trash_count() == 4
        journal.purged(jobs[3].id)
        assert journal.trash_count() == 3
        journal.restored(jobs[2].id)
        restored = journal.get(jobs[2].id)
        assert restored is not None and restored.state == JobState.DONE and restored.trash_until is None

    def test_mark_cleaned_leaves_other_states_alone(self, journal: Journal) -> None:
        """Mark cleaned leaves other states alone."""
        failed = self.in_state(journal, JobState.FAILED)
        journal.mark_cleaned(failed.id, 500.0)  # a forced cleanup does not make a run collected
        job = journal.get(failed.id)
        assert job is not None and job.state == JobState.FAILED and job.trash_until == 500.0

    def test_everything_survives_a_restart(self, journal: Journal) -> None:
        """Everything survives a restart."""
        done = self.in_state(journal, JobState.DONE, RUN)
        failed = self.in_state(journal, JobState.FAILED, OTHER)
        reopened = self.reopen(journal)
        try:
            assert reopened.get(done.id) == done and reopened.get(failed.id) == failed
            assert reopened.counts()[JobState.DONE.value] == 1
            new, queued = reopened.submit("/data/runs/new", "logger-1", {})
            assert queued and new.id > failed.id
        finally:
            reopened.close()

    def test_a_missing_job_is_a_journal_error(self, journal: Journal) -> None:
        """A missing job is a journal error."""
        with pytest.raises(JournalError):
            journal.finish(12345, {})
