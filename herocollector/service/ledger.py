"""The cleaner's ledger, ``<state_dir>/cleanup.sqlite3``: what each run was when collected, and what was trashed.

A run's path is not trusted to lead to the same directory later: the ledger records the
identity of a collected run's directory and segments (``inventory``), and every entry the
cleaner renamed into a run's trash (``trash``), so that cleanup, restore and the purge act only
on what they recorded. See :mod:`herocollector.service.cleanup`.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

from herocollector.errors import StateDirError
from herocollector.run.inventory import RunInventory
from herocollector.run.rundir import RunDirectory
from herocollector.run.trash import TrashEntry

LEDGER_FILE = "cleanup.sqlite3"
READ, AFTER = "read", "after"
"""How an inventory was taken: what the collection read, or a look right after it."""

_SCHEMA = """
CREATE TABLE IF NOT EXISTS inventory (
    path     TEXT PRIMARY KEY,
    job_id   INTEGER,
    recorded REAL NOT NULL,
    data     TEXT NOT NULL,
    source   TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS trash (
    path    TEXT PRIMARY KEY,
    job_id  INTEGER,
    dev     INTEGER NOT NULL,
    ino     INTEGER NOT NULL,
    trashed REAL NOT NULL,
    entries TEXT NOT NULL
);
"""


class CleanupLedger:
    """The cleaner's own record of what was collected and what it trashed (SQLite, thread-safe).

    Args:
        file: The database file; created with its folder.

    Raises:
        StateDirError: It cannot be opened or created.
    """

    def __init__(self, file: Path) -> None:
        self.file = file
        self._lock = threading.Lock()
        try:
            file.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(file, check_same_thread=False, isolation_level=None, timeout=30)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.executescript(_SCHEMA)
        except (sqlite3.Error, OSError) as exc:
            raise StateDirError(f"cannot open the cleanup ledger: {exc}", file) from None

    def close(self) -> None:
        """Close the database."""
        with self._lock:
            self._db.close()

    def _one(self, sql: str, *params: Any) -> Any:
        with self._lock:
            return self._db.execute(sql, params).fetchone()

    def _write(self, sql: str, *params: Any) -> None:
        with self._lock:
            self._db.execute(sql, params)

    def record_inventory(self, path: str, job_id: int | None, inventory: RunInventory, source: str) -> None:
        """Record what a run was when it was collected (replacing an earlier record).

        Args:
            path: The logger path, as journalled (the record's key).
            job_id: Its job.
            inventory: What it was.
            source: ``read`` (what the collection read) or ``after`` (looked at right after it).
        """
        self._write(
            "INSERT OR REPLACE INTO inventory (path, job_id, recorded, data, source) VALUES (?, ?, ?, ?, ?)",
            path,
            job_id,
            time.time(),
            json.dumps(inventory.to_json(path)),
            source,
        )

    def inventory_source(self, path: str, job_id: int | None) -> str | None:
        """How the inventory of ``path`` for ``job_id`` was taken, None if there is none."""
        row = self._one("SELECT source FROM inventory WHERE path = ? AND job_id IS ?", path, job_id)
        return None if row is None else str(row[0])

    def inventory(self, path: str) -> RunInventory | None:
        """What the run at ``path`` was when it was collected, if recorded (its ``path`` as journalled)."""
        row = self._one("SELECT data FROM inventory WHERE path = ?", path)
        return None if row is None else RunInventory.from_json(json.loads(row[0]))

    def record_trash(
        self, path: str, job_id: int | None, run: RunDirectory, entries: list[TrashEntry]
    ) -> list[TrashEntry]:
        """Add entries to a run's trash record.

        Returns:
            Every entry recorded for the run now.
        """
        known = self.trash(path)
        before = known[1] if known is not None and (known[0] == (run.dev, run.ino)) else []
        recorded = [*before, *entries]
        data = json.dumps([e.to_json() for e in recorded])
        self._write(
            "INSERT OR REPLACE INTO trash (path, job_id, dev, ino, trashed, entries) VALUES (?, ?, ?, ?, ?, ?)",
            path,
            job_id,
            run.dev,
            run.ino,
            time.time(),
            data,
        )
        return recorded

    def trash(self, path: str) -> tuple[tuple[int, int], list[TrashEntry]] | None:
        """The directory identity and the entries recorded in a run's trash, if any."""
        row = self._one("SELECT dev, ino, entries FROM trash WHERE path = ?", path)
        if row is None:
            return None
        return (int(row[0]), int(row[1])), [TrashEntry.from_json(e) for e in json.loads(row[2])]

    def forget_inventory(self, path: str) -> None:
        """Forget what a run was when collected (its segments are gone for good)."""
        self._write("DELETE FROM inventory WHERE path = ?", path)

    def keep_trash(self, path: str, entries: list[TrashEntry]) -> None:
        """Keep only ``entries`` in a run's trash record (none: forget it)."""
        if not entries:
            self._write("DELETE FROM trash WHERE path = ?", path)
        else:
            self._write("UPDATE trash SET entries = ? WHERE path = ?", json.dumps([e.to_json() for e in entries]), path)
