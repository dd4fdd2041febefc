"""The journal contract's tests of batched reservations and shared commits (part of :class:`JournalTests`).

``claim_outputs`` reserves all of a job's output paths in one call, all or none. Transitions that
several threads make at once may share one commit (:mod:`herocollector.journal.group`): each
caller still sees what it would see alone, a stale token fails its own caller only, and every
change a call returned from is there after a restart.
"""

from __future__ import annotations

import threading

import pytest

from herocollector.errors import LeaseLost, OutputTakenError
from herocollector.journal.base import Job, JobState, Journal
from herocollector.testing.journal_contract_base import OTHER, RUN, JournalTestBase


class JournalSpeedTests(JournalTestBase):
    """``claim_outputs`` and concurrent transitions: written once for every backend."""

    def test_claim_outputs_reserves_every_path(self, journal: Journal) -> None:
        """All paths are the job's after one call; again, or with repeats, changes nothing."""
        taken = self.take(journal)
        paths = ["/out/a.arrow", "/out/b.arrow", "/out/c.arrow"]
        journal.claim_outputs(taken.id, paths)
        journal.claim_outputs(taken.id, [*paths, paths[0]])  # idempotent for its owner
        journal.claim_outputs(taken.id, [])
        for path in paths:
            owner = journal.owner_of(path)
            assert owner is not None and owner.id == taken.id
        job = journal.get(taken.id)
        assert job is not None and job.outputs == dict.fromkeys(paths, 0)

    def test_claim_outputs_is_all_or_nothing(self, journal: Journal) -> None:
        """One path owned by another job: OutputTakenError names it and its owner; none of the others is reserved."""
        done = self.in_state(journal, JobState.DONE, RUN)
        (owned,) = done.outputs
        other = self.take(journal, OTHER)
        with pytest.raises(OutputTakenError) as info:
            journal.claim_outputs(other.id, ["/out/free-1.arrow", owned, "/out/free-2.arrow"])
        assert info.value.path == owned and info.value.owner.id == done.id and info.value.owner.path == RUN
        assert journal.owner_of("/out/free-1.arrow") is None and journal.owner_of("/out/free-2.arrow") is None
        journal.claim_outputs(other.id, ["/out/free-1.arrow", "/out/free-2.arrow"])  # the free ones still are
        owner = journal.owner_of("/out/free-2.arrow")
        assert owner is not None and owner.id == other.id

    def test_concurrent_outcomes_each_as_if_alone(self, journal: Journal) -> None:
        """Threads finishing, failing and fenced at once: each gets its own outcome, and all of it is durable."""
        count = 12
        jobs = [self.take(journal, f"/data/runs/run-{i:02d}") for i in range(count)]
        errors: dict[int, BaseException] = {}
        results: dict[int, Job] = {}
        start = threading.Barrier(count)

        def outcome(i: int, job: Job) -> None:
            start.wait()
            try:
                if i % 4 == 3:  # a stale token: this caller alone is fenced
                    journal.finish(job.id, {f"/out/{i}.arrow": i}, token=job.token - 1)
                elif i % 4 == 2:
                    results[i] = journal.fail(job.id, "broken", None, token=job.token)
                else:
                    journal.claim_outputs(job.id, [f"/out/{i}.arrow"])
                    results[i] = journal.finish(job.id, {f"/out/{i}.arrow": i}, token=job.token)
            except BaseException as exc:  # noqa: BLE001 - checked below
                errors[i] = exc

        threads = [threading.Thread(target=outcome, args=(i, job)) for i, job in enumerate(jobs)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=120)
        assert not any(thread.is_alive() for thread in threads)
        assert sorted(errors) == [i for i in range(count) if i % 4 == 3]
        assert all(isinstance(error, LeaseLost) for error in errors.values())
        journal = self.reopen(journal)
        try:
            for i, job in enumerate(jobs):
                now = journal.get(job.id)
                assert now is not None
                if i % 4 == 3:
                    assert (now.state, now.token, now.outputs) == (JobState.RUNNING, job.token, {})
                elif i % 4 == 2:
                    assert (now.state, results[i].state) == (JobState.FAILED, JobState.FAILED)
                else:
                    assert now.state == JobState.DONE and now.outputs == {f"/out/{i}.arrow": i} == results[i].outputs
        finally:
            journal.close()

    def test_concurrent_takes_never_take_one_job_twice(self, journal: Journal) -> None:
        """Workers taking at once (their takes may share a transaction) each get a different job."""
        count = 8
        for i in range(count):
            journal.submit(f"/data/runs/run-{i:02d}", "logger-1", {})
        taken: list[Job | None] = []
        lock = threading.Lock()
        start = threading.Barrier(count + 2)

        def take() -> None:
            start.wait()
            job = journal.take_due(owner="actor-a", lease=600.0)
            with lock:
                taken.append(job)

        threads = [threading.Thread(target=take) for _ in range(count + 2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=120)
        got = [job.id for job in taken if job is not None]
        assert len(got) == count == len(set(got)) and taken.count(None) == 2
        assert journal.counts()[JobState.RUNNING.value] == count
