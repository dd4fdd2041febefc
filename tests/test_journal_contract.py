"""The journal contract (:class:`herocollector.testing.journal_contract.JournalTests`) on both backends:
SQLite in ``tmp_path``, and PostgreSQL on the real test server, in a fresh database per test.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import AbstractContextManager
from pathlib import Path

import pytest

from herocollector.journal.base import Journal
from herocollector.journal.postgres import PgJournal
from herocollector.journal.sqlite import SqliteJournal
from herocollector.testing.journal_contract import JournalTests
from herocollector.testing.servers import PostgresTestServer


class TestSqliteJournal(JournalTests):
    shared = False

    @pytest.fixture
    def journal(self, tmp_path: Path) -> Iterator[Journal]:
        journal = SqliteJournal(tmp_path / "state" / "journal.sqlite3")
        yield journal
        journal.close()

    def reopen(self, journal: Journal) -> Journal:
        assert isinstance(journal, SqliteJournal)
        journal.close()
        return SqliteJournal(journal.file)

    def reading(self, journal: Journal) -> AbstractContextManager[object]:
        assert isinstance(journal, SqliteJournal)
        return journal._read_lock


class TestPgJournal(JournalTests):
    shared = True

    @pytest.fixture
    def journal(self, postgres: PostgresTestServer) -> Iterator[Journal]:
        journal = PgJournal(postgres.database())
        yield journal
        journal.close()

    def reopen(self, journal: Journal) -> Journal:
        assert isinstance(journal, PgJournal)
        journal.close()
        return PgJournal(journal.url)

    def reading(self, journal: Journal) -> AbstractContextManager[object]:
        assert isinstance(journal, PgJournal)
        return journal._db._read_lock
