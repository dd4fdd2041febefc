"""The fixtures and helpers that :class:`herocollector.testing.journal_contract.JournalTests` is built on."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import AbstractContextManager

import pytest

from herocollector.journal.base import Job, JobState, Journal

RUN = "/data/runs/run-a"
OTHER = "/data/runs/run-b"
FAR = 4_000_000_000.0
"""A Unix time far in the future (2096): never due during a test."""


class JournalTestBase:
    """The journal contract; subclass it with a ``journal`` fixture and :meth:`reopen`.

    Attributes:
        shared: Whether the backend under test is a fleet's shared journal.
    """

    shared: bool = False

    @pytest.fixture
    def journal(self) -> Iterator[Journal]:
        """A fresh, empty journal of the backend under test, closed afterwards."""
        raise NotImplementedError("a JournalTests subclass provides the journal fixture")

    def reopen(self, journal: Journal) -> Journal:
        """Close ``journal`` and open the same journal again, as after a restart."""
        raise NotImplementedError("a JournalTests subclass provides reopen()")

    def reading(self, journal: Journal) -> AbstractContextManager[object]:
        """A context in which a read of ``journal`` is in progress (its read connection is busy)."""
        raise NotImplementedError("a JournalTests subclass provides reading()")

    # -- helpers ---------------------------------------------------------------------------------

    @staticmethod
    def take(journal: Journal, path: str = RUN, owner: str = "actor-a", lease: float = 600.0) -> Job:
        """Journal ``path`` and take it: a running job under a fresh token."""
        job, _ = journal.submit(path, "logger-1", {"n": 1})
        taken = journal.take_due(owner=owner, lease=lease)
        assert taken is not None and taken.id == job.id, f"{path} was not due"
        return taken

    def in_state(self, journal: Journal, state: JobState, path: str = RUN) -> Job:
        """A job of ``path`` brought into ``state`` through the journal's own transitions."""
        if state == JobState.PENDING:
            return journal.submit(path, "logger-1", {"n": 1}, deadline=FAR)[0]
        taken = self.take(journal, path)
        if state == JobState.RUNNING:
            return taken
        if state == JobState.WAITING:
            return journal.park(taken.id, check_at=FAR - 1, deadline=FAR, token=taken.token)
        if state == JobState.FAILED:
            return journal.fail(taken.id, "broken", None, token=taken.token)
        done = journal.finish(taken.id, {f"/out/{path.rsplit('/', 1)[-1]}.arrow": 5}, token=taken.token)
        if state == JobState.DONE:
            return done
        journal.mark_cleaned(done.id, FAR)
        cleaned = journal.get(done.id)
        assert cleaned is not None
        return cleaned
