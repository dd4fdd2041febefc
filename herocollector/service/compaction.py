"""Compaction and vacuum of the Delta tables the service commits to, one actor of a fleet at a time.

With ``format: "delta"`` and a ``compact_interval``, the service looks after every table it has
committed a run to (:meth:`TableUpkeep.add`, which the table committer calls) and, at its first
round, the tables of the journal's recent done jobs (a restarted actor keeps looking after
them). Every ``compact_interval`` seconds, on the scheduler's periodic thread of its own (never a
worker's), :meth:`TableUpkeep.run` takes each table in turn:

1. it takes the journal lease ``compact:<table>`` (:meth:`~herocollector.journal.base.Journal.acquire_lease`)
   and renews it while it works; a table whose lease another actor holds is skipped this round;
2. it compacts the table if it has grown small files
   (:func:`herocollector.output.delta_upkeep.compact`);
3. after a compaction, with ``vacuum_retention``, it deletes the files that no version within
   the retention references (:func:`herocollector.output.delta_upkeep.vacuum`);
4. it gives the lease back.

The lease saves work, it does not guard data: two compactions of one table that did overlap
(a lease lost to a partition) would conflict in Delta, and the second one would not land. A
failure (an unreachable store, a conflict) is logged and the table is tried again next round.
``status()`` reports each table under ``compaction`` (:class:`TableUpkeepState`).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace

from herocollector.config import ServiceConfig
from herocollector.errors import CollectorError
from herocollector.heartbeat import Heartbeat
from herocollector.journal.base import JobState, JobStore
from herocollector.output.delta import table_of
from herocollector.output.delta_upkeep import MIN_SMALL_FILES, Compaction, Vacuum, compact, vacuum

log = logging.getLogger(__name__)

LEASE_SECONDS = 120.0
"""How long the compaction lease of a table lasts unless renewed (an actor that died frees it then)."""
RENEW_EVERY = LEASE_SECONDS / 4
SEED_JOBS = 200
"""How many of the journal's newest jobs tell a (re)started service the tables it looks after."""


def lease_name(table: str) -> str:
    """The journal lease of a table's compaction."""
    return f"compact:{table}"


@dataclass(frozen=True)
class TableUpkeepState:
    """What this service knows of one table's upkeep (``status()["compaction"][table]``).

    Attributes:
        table: The table location.
        last_checked: When this service last looked at the table (Unix time; None: not yet).
        last_compacted: When this service last compacted it (Unix time; None: never).
        files: Data files of the table at the last look.
        version: The table's version at the last look.
        vacuumed_files: Files the last vacuum deleted.
        held_by_other: At the last round another actor held the table's compaction lease.
        error: What went wrong at the last look, if anything.
    """

    table: str
    last_checked: float | None = None
    last_compacted: float | None = None
    files: int | None = None
    version: int | None = None
    vacuumed_files: int = 0
    held_by_other: bool = False
    error: str | None = None


class TableUpkeep:
    """Compacts and vacuums the service's tables under a journal lease each; see the module documentation.

    Args:
        config: The service configuration (``compact_interval``, ``vacuum_retention``, ``storage_options``).
        journal: Holds the leases, and the recent jobs whose tables are looked after.
        stopping: Set when the service closes; a round stops between two tables.
        min_files: Files below the target size a partition must hold to be compacted.
        compactor: Compacts one table (:func:`~herocollector.output.delta_upkeep.compact`).
    """

    def __init__(
        self,
        config: ServiceConfig,
        journal: JobStore,
        stopping: threading.Event,
        min_files: int = MIN_SMALL_FILES,
        compactor: Callable[..., Compaction] = compact,
    ) -> None:
        self.config = config
        self.journal = journal
        self.stopping = stopping
        self.min_files = min_files
        self._compact = compactor
        self._states: dict[str, TableUpkeepState] = {}
        self._lock = threading.Lock()
        self._seeded = False

    def add(self, table: str) -> None:
        """Look after ``table`` from now on (a run was committed to it); cheap, called by the committer."""
        with self._lock:
            self._states.setdefault(table, TableUpkeepState(table))

    def tables(self) -> list[str]:
        """The tables looked after."""
        with self._lock:
            return sorted(self._states)

    def states(self) -> dict[str, TableUpkeepState]:
        """Each table's upkeep, by table (what ``status()`` reports)."""
        with self._lock:
            return dict(sorted(self._states.items()))

    def _update(self, table: str, **changes: object) -> None:
        with self._lock:
            self._states[table] = replace(self._states.get(table, TableUpkeepState(table)), **changes)  # type: ignore[arg-type]

    def seed(self) -> None:
        """Look after the tables of the journal's newest done jobs (one bounded read)."""
        for job in self.journal.recent(SEED_JOBS):
            if job.state in (JobState.DONE, JobState.CLEANED):
                for key in job.outputs:
                    self.add(table_of(key))

    def run(self) -> None:
        """One round: every table, in turn, under its lease (the periodic task)."""
        if not self._seeded:
            self.seed()
            self._seeded = True
        for table in self.tables():
            if self.stopping.is_set():
                return
            self.upkeep(table)

    def upkeep(self, table: str) -> Compaction | None:
        """Compact (and vacuum) one table under its lease.

        Returns:
            What the compaction found and did; None if another actor holds the lease or it failed.
        """
        owner, name = self.config.owner, lease_name(table)
        if not self.journal.acquire_lease(name, owner, LEASE_SECONDS):
            log.debug(f"{table}: another actor compacts it now; skipped this round")
            self._update(table, last_checked=time.time(), held_by_other=True, error=None)
            return None
        renew = lambda: self.journal.acquire_lease(name, owner, LEASE_SECONDS)  # noqa: E731
        beat = Heartbeat(renew, RENEW_EVERY, "herocollector-compaction-lease")
        error: str | None = None
        cleaned: Vacuum | None = None
        try:
            with beat:
                result = self._compact(table, self.config.storage_options, actor=owner, min_files=self.min_files)
                if result.compacted and self.config.vacuum_retention is not None:
                    try:
                        cleaned = vacuum(table, self.config.vacuum_retention, self.config.storage_options, actor=owner)
                    except CollectorError as exc:  # the compaction landed all the same
                        error = f"vacuum failed: {exc}"
                        log.warning(f"{table}: {error}; tried again after the next compaction")
        except Exception as exc:  # noqa: BLE001 - one table's failure must not end the round for the others
            log.warning(f"{table}: upkeep failed, tried again next round: {type(exc).__name__}: {exc}")
            self._update(table, last_checked=time.time(), held_by_other=False, error=str(exc))
            return None
        finally:
            try:
                self.journal.release_lease(name, owner)
            except CollectorError as exc:  # it runs out by itself
                log.warning(f"{table}: giving back the compaction lease failed: {exc}")
        now = time.time()
        changes: dict[str, object] = dict(
            last_checked=now, files=result.files_after, version=result.version, held_by_other=False, error=error
        )
        if result.compacted:
            changes["last_compacted"] = now
            changes["vacuumed_files"] = 0 if cleaned is None else len(cleaned.removed)
        self._update(table, **changes)
        return result
