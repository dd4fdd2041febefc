"""The journal contract's tests of follow cursors (part of ``JournalTests``).

A follow cursor says how far a run collected while it is written was committed; whoever takes the
job over continues from it, and only the job's current holder can move it.
"""

from __future__ import annotations

import pytest

from herocollector.errors import LeaseLost
from herocollector.journal.base import Journal
from herocollector.testing.journal_contract_base import OTHER, JournalTestBase


class JournalCursorTests(JournalTestBase):
    """Follow cursors: stored by the holder, read by anyone, fenced, kept across a reopen."""

    def test_a_job_has_no_cursor_until_its_holder_stores_one(self, journal: Journal) -> None:
        """A new job has none; its holder stores one, stores it again, and everyone reads the latest."""
        job = self.take(journal)
        assert journal.follow_cursor(job.id) is None
        journal.store_follow_cursor(job.id, job.token, '{"chunk": 1}')
        journal.store_follow_cursor(job.id, job.token, '{"chunk": 2}')
        assert journal.follow_cursor(job.id) == '{"chunk": 2}'
        assert journal.follow_cursors() == {job.id: '{"chunk": 2}'}

    def test_only_the_current_holder_moves_the_cursor(self, journal: Journal) -> None:
        """A stale token, or a job that is not running, cannot move it: LeaseLost, and it stays."""
        job = self.take(journal)
        journal.store_follow_cursor(job.id, job.token, "first")
        with pytest.raises(LeaseLost):
            journal.store_follow_cursor(job.id, job.token + 1, "stale")
        journal.defer(job.id, None, "following", token=job.token)
        with pytest.raises(LeaseLost):
            journal.store_follow_cursor(job.id, job.token, "not running")
        assert journal.follow_cursor(job.id) == "first"
        again = journal.take_due(owner="actor-b", lease=600)
        assert again is not None and again.id == job.id and again.token != job.token
        assert journal.follow_cursor(job.id) == "first", "the next holder continues from it"
        journal.store_follow_cursor(again.id, again.token, "second")
        assert journal.follow_cursor(job.id) == "second"

    def test_cursors_are_kept_across_a_reopen_and_per_job(self, journal: Journal) -> None:
        """Each job has its own, and they outlive a restart."""
        first = self.take(journal)
        second = self.take(journal, OTHER)
        journal.store_follow_cursor(first.id, first.token, "a")
        journal.store_follow_cursor(second.id, second.token, "b")
        reopened = self.reopen(journal)
        assert reopened.follow_cursor(first.id) == "a" and reopened.follow_cursor(second.id) == "b"
