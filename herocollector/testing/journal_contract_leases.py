"""The journal contract's tests of named leases (part of :class:`~herocollector.testing.journal_contract.JournalTests`).

A named lease is what one actor of a fleet holds while it compacts a table: the same tests run on
SQLite and on PostgreSQL (where several actors share it).
"""

from __future__ import annotations

import threading

import pytest

from herocollector.errors import JournalError
from herocollector.journal.base import Journal
from herocollector.testing.actors import wait_for
from herocollector.testing.journal_contract_base import JournalTestBase

NAME = "compact:/data/tables/measurements"


class JournalLeaseTests(JournalTestBase):
    """Named leases: acquire, held by another, renewal, expiry, release by the owner only."""

    def test_a_free_lease_is_acquired_and_renewed_by_its_owner(self, journal: Journal) -> None:
        """A free lease is acquired; its owner acquires it again (a renewal); another owner cannot."""
        assert journal.acquire_lease(NAME, "actor-a", 600) is True
        assert journal.acquire_lease(NAME, "actor-a", 600) is True
        assert journal.acquire_lease(NAME, "actor-b", 600) is False

    def test_leases_of_different_names_are_independent(self, journal: Journal) -> None:
        """Another name is another lease."""
        assert journal.acquire_lease(NAME, "actor-a", 600)
        assert journal.acquire_lease(NAME + "-other", "actor-b", 600)
        assert not journal.acquire_lease(NAME + "-other", "actor-a", 600)

    def test_an_expired_lease_goes_to_the_next_owner(self, journal: Journal) -> None:
        """Once its time ran out, another owner takes the lease, and the old owner no longer holds it."""
        assert journal.acquire_lease(NAME, "actor-a", 0.3)
        wait_for(lambda: journal.acquire_lease(NAME, "actor-b", 600), "the lease of actor-a to run out", 30)
        assert journal.acquire_lease(NAME, "actor-a", 600) is False
        assert journal.release_lease(NAME, "actor-a") is False

    def test_only_the_owner_releases(self, journal: Journal) -> None:
        """A release by another owner changes nothing; the owner's frees the lease at once."""
        assert journal.acquire_lease(NAME, "actor-a", 600)
        assert journal.release_lease(NAME, "actor-b") is False
        assert journal.acquire_lease(NAME, "actor-b", 600) is False
        assert journal.release_lease(NAME, "actor-a") is True
        assert journal.release_lease(NAME, "actor-a") is False
        assert journal.acquire_lease(NAME, "actor-b", 600) is True

    def test_concurrent_acquires_have_one_winner(self, journal: Journal) -> None:
        """Eight owners asking at once: exactly one holds the lease."""
        start = threading.Barrier(8)
        won: list[str] = []
        errors: list[BaseException] = []

        def ask(owner: str) -> None:
            try:
                start.wait(10)
                if journal.acquire_lease(NAME, owner, 600):
                    won.append(owner)
            except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
                errors.append(exc)

        threads = [threading.Thread(target=ask, args=(f"actor-{i}",)) for i in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
        assert not errors and len(won) == 1
        assert all(journal.acquire_lease(NAME, f"actor-{i}", 600) == (f"actor-{i}" == won[0]) for i in range(8))

    def test_a_lease_survives_a_restart(self, journal: Journal) -> None:
        """The lease is durable: after a restart another owner still cannot take it."""
        assert journal.acquire_lease(NAME, "actor-a", 600)
        reopened = self.reopen(journal)
        try:
            assert reopened.acquire_lease(NAME, "actor-b", 600) is False
            assert reopened.acquire_lease(NAME, "actor-a", 600) is True
        finally:
            reopened.close()

    @pytest.mark.parametrize(("name", "owner", "seconds"), [("", "actor-a", 10), (NAME, "", 10), (NAME, "a", 0)])
    def test_a_meaningless_lease_is_refused(self, journal: Journal, name: str, owner: str, seconds: float) -> None:
        """No name, no owner or no time is a JournalError, not a lease."""
        with pytest.raises(JournalError):
            journal.acquire_lease(name, owner, seconds)
