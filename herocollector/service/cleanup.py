"""Cleaning collected runs: segments into the trash, restored on request, purged after a grace period.

Only a logger directory inside ``allowed_roots`` (symlinks resolved) is touched, and only what
was collected. Without ``allowed_roots`` nothing is ever cleaned. A run that was not collected
is refused unless ``force`` is given. See :mod:`herocollector.run.trash` for the mechanics.

A run's path is not trusted to lead to the same directory later, so the cleaner keeps a ledger
of its own, ``<state_dir>/cleanup.sqlite3``:

* ``inventory``: when a run is collected, the identity of its directory (device, inode) and of
  each segment file (name, device, inode, size, mtime): what the collection read, handed over
  by the runner right before the job is recorded done (:meth:`RunCleaner.record_inventory`).
  Should that fail, a look right after the collection, through a directory descriptor opened
  without following symlinks, stands in (:meth:`RunCleaner.record_collected`); it is refused
  (and so the run is not cleaned without ``force``) when the segment sizes do not add up to
  the bytes the collection decoded.
* ``trash``: every entry the cleaner renamed into a run's trash, by name and identity.

``cleanup`` first verifies the run's outputs against its manifest
(:func:`herocollector.output.verify.verify_job`, under the manifest root, or beside the outputs
for a run that version 0.2 collected): a run whose outputs are missing, changed or
do not add up to the journal's rows is not cleaned. It then opens the run directory, checks it
is the directory collected and that its segments are the files collected (and that no segment
appeared since), and renames exactly those, relative to the directory's descriptor. The purge
and ``restore`` act only on the entries the ledger records, again checked by identity after
``allowed_roots`` is checked again; a user's file that merely looks like trash is never touched.

Cleaning every run pages through the journal (:meth:`done_jobs_page`), one short read per page,
so the journal is never held for long; :meth:`RunCleaner.start_sweep` does it on a thread of its
own and reports progress (:meth:`RunCleaner.progress`).
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
import time
from dataclasses import asdict, dataclass
from functools import cached_property
from pathlib import Path

from herocollector.config import ServiceConfig
from herocollector.errors import CollectorError
from herocollector.journal.base import Job, JobState, JobStore
from herocollector.output.delta import verify_tables
from herocollector.output.manifest import ManifestRoot
from herocollector.output.stores import OutputStore, open_store
from herocollector.output.verify import RunCheck, verify_job
from herocollector.run import logdir, trash
from herocollector.run.inventory import DIR, RunInventory
from herocollector.run.rundir import RunDirectory, within_roots
from herocollector.service.commit import open_manifests
from herocollector.service.ledger import AFTER, LEDGER_FILE, READ, CleanupLedger

log = logging.getLogger(__name__)

PAGE = 200
"""Jobs read from the journal per page when every run is cleaned or purged."""
RECORD_WAIT = 2.0
"""Seconds a cleanup waits for the inventory of a run whose job turned done a moment ago."""
SWEEP_DONE_WAIT = 8_000
"""Milliseconds the cleanup of every run waits for a run's ``_DONE`` when no ``timeout`` is given."""
RETRY_PURGE = 3600.0
"""Seconds until a purge that could not proceed (the run directory was replaced) is tried again."""


@dataclass
class SweepProgress:
    """How far a cleanup of every collected run has got.

    Attributes:
        running: Still working.
        total: Collected runs when it started (the journal's ``done`` count).
        seen: Runs looked at so far.
        cleaned: Runs cleaned.
        refused: Runs refused or not verified (their reasons are logged).
        started: When it started (Unix time).
        finished: When it ended, None while running.
        error: Why it stopped early, if it did.
    """

    running: bool = False
    total: int = 0
    seen: int = 0
    cleaned: int = 0
    refused: int = 0
    started: float | None = None
    finished: float | None = None
    error: str | None = None


class RunCleaner:
    """Cleans, verifies, restores and purges runs for the service.

    Args:
        config: The service configuration (``allowed_roots``, ``cleanup_grace``, ``state_dir``).
        journal: The job journal.
        stopping: Ends any wait for ``_DONE``, and a sweep, when the service closes.
        store: Where the outputs are (default: the store of ``output_root``).
    """

    def __init__(
        self,
        config: ServiceConfig,
        journal: JobStore,
        stopping: threading.Event,
        store: OutputStore | None = None,
    ) -> None:
        self.config = config
        self.journal = journal
        self.stopping = stopping
        self.store = store or open_store(config.output_root, config.storage_options, config.staging_dir)
        self.ledger = CleanupLedger(Path(config.state_dir) / LEDGER_FILE)
        self._lock = threading.RLock()  # one run at a time: a sweep, a remote call and the purge never race
        self._sweep = SweepProgress()
        self._sweep_thread: threading.Thread | None = None
        self._sweep_ok = True
        self._warned: set[str] = set()
        self._recorded = threading.Condition()  # notified whenever an inventory is recorded

    def close(self, timeout: float = 5.0) -> None:
        """Wait for a running sweep (it stops between two runs once ``stopping`` is set); close the ledger.

        Args:
            timeout: Seconds to wait for the sweep; one still verifying a large output is left
                to fail at its next ledger write (reported in its progress), so closing stays prompt.
        """
        thread = self._sweep_thread
        if thread is not None:
            thread.join(timeout)
        self.ledger.close()

    # -- collection ---------------------------------------------------------------------------

    def record_inventory(self, job: Job, inventory: RunInventory) -> None:
        """Record what the collection of a job read (its run directory's inventory): what a cleanup may trash."""
        if job.path is not None and self.config.allowed_roots:
            self.ledger.record_inventory(job.path, job.id, inventory, READ)
            with self._recorded:
                self._recorded.notify_all()

    def record_collected(self, path: str, job_id: int | None, segment_bytes: int | None = None) -> bool:
        """Record what a run is now, right after it was collected: what a later cleanup may trash.

        Args:
            path: The logger path, as journalled.
            job_id: Its job.
            segment_bytes: The bytes the collection decoded; the inventory is refused if the
                segments there now do not add up to it (the run changed meanwhile).

        Returns:
            Whether it was recorded.
        """
        if not self.config.allowed_roots:
            return False  # nothing is ever cleaned without allowed_roots
        if self.ledger.inventory_source(path, job_id) == READ:
            return True  # the collection recorded what it read: better than a look afterwards
        try:
            with RunDirectory(path, self.config.allowed_roots) as run:
                inventory = trash.take_inventory(run)
        except (CollectorError, OSError) as exc:
            log.warning(f"{path}: not recorded for cleanup: {exc}")
            return False
        # The collection reads regular segment files only (a symlink fails it), so only those count.
        if segment_bytes and inventory.segment_bytes != segment_bytes:
            log.warning(
                f"{path}: not recorded for cleanup: its segments hold {inventory.segment_bytes} bytes now, "
                f"{segment_bytes} were collected; it is cleaned only with force=True"
            )
            return False
        try:
            self.ledger.record_inventory(path, job_id, inventory, AFTER)
            with self._recorded:
                self._recorded.notify_all()
        except sqlite3.Error as exc:
            log.error(f"{path}: not recorded for cleanup: the ledger failed: {exc}")
            return False
        return True

    # -- verification -------------------------------------------------------------------------

    def verify(self, path: str) -> RunCheck:
        """Verify a collected run's outputs against its manifest and the journal.

        Args:
            path: The logger directory, as journalled.

        Returns:
            The result (not ``ok`` for a run without a done or cleaned job).
        """
        path = os.path.normpath(str(path))
        job = self.journal.by_path(path)
        if job is None or job.state not in (JobState.DONE, JobState.CLEANED):
            state = "no job" if job is None else f"job {job.id} is {job.state.value}"
            return RunCheck(path, None, (), (f"run not collected ({state})",))
        return self._verify(path, job)

    def _verify(self, path: str, job: Job) -> RunCheck:
        """The run's record checked: its tables' commits (``format: "delta"``), or its manifest and files."""
        if self.config.format.is_table:
            return verify_tables(path, job.outputs, job.rows, self.config.storage_options)
        return verify_job(self.store, path, job.outputs, job.rows, self.manifests)

    @cached_property
    def manifests(self) -> ManifestRoot:
        """Where the manifests of the file formats are (opened at first use: tables have none)."""
        return open_manifests(self.config)

    # -- cleanup ------------------------------------------------------------------------------

    def cleanup(
        self,
        path: str | None = None,
        keep_meta: bool = True,
        wait_for_done: bool = True,
        backoff: int = 100,
        timeout: int | None = 60_000,
        force: bool = False,
    ) -> bool:
        """Move the segments (and with ``keep_meta=False`` ``streams/``) of runs into the trash.

        Args:
            path: One logger directory; None for every collected, not yet cleaned run.
            keep_meta: Keep ``streams/``.
            wait_for_done: Wait for ``_DONE`` first.
            backoff: Milliseconds between ``_DONE`` polls.
            timeout: Milliseconds to wait for ``_DONE`` per run (None: until the service closes).
            force: Also clean a run that was not collected (unverified: there is nothing to
                verify it against).

        Returns:
            True if every requested run was cleaned; False if any was refused, failed
            verification, or its ``_DONE`` did not appear in time (the reasons are logged).
            A False answer means that run was left as it was.
        """
        if path is None:
            progress = SweepProgress(running=True, started=time.time())
            return self._sweep_all(progress, keep_meta, wait_for_done, backoff, timeout, force)
        path = os.path.normpath(str(path))
        return self._clean_one(path, self.journal.by_path(path), keep_meta, wait_for_done, backoff, timeout, force)

    def start_sweep(
        self,
        keep_meta: bool = True,
        wait_for_done: bool = True,
        backoff: int = 100,
        timeout: int | None = 60_000,
        force: bool = False,
    ) -> SweepProgress:
        """Clean every collected run on a thread of its own; a sweep already running is joined instead.

        Returns:
            A copy of its progress when it started (``total`` runs to look at).
        """
        with self._lock:
            if self._sweep_thread is not None and self._sweep_thread.is_alive():
                return self.progress()
            total = self.journal.counts()[JobState.DONE.value]
            self._sweep = SweepProgress(running=True, total=total, started=time.time())
            self._sweep_ok = True
            progress = self._sweep

            def work() -> None:
                try:
                    self._sweep_ok = self._sweep_all(progress, keep_meta, wait_for_done, backoff, timeout, force)
                except Exception as exc:  # noqa: BLE001 - reported in status(); the service lives on
                    self._sweep_ok = False
                    progress.error = f"{type(exc).__name__}: {exc}"
                    log.error(f"cleanup of every run stopped: {progress.error}")
                finally:
                    progress.finished = time.time()
                    progress.running = False

            self._sweep_thread = threading.Thread(target=work, name="herocollector-cleanup", daemon=True)
            self._sweep_thread.start()
            return SweepProgress(**asdict(progress))

    def wait_sweep(self, timeout: float) -> bool | None:
        """Wait up to ``timeout`` s for the sweep: its answer (as :meth:`cleanup`), None if still running."""
        thread = self._sweep_thread
        if thread is not None:
            thread.join(timeout)
            if thread.is_alive():
                return None
        return self._sweep_ok

    def progress(self) -> SweepProgress:
        """A copy of the progress of the last (or running) cleanup of every run."""
        return SweepProgress(**asdict(self._sweep))

    def _sweep_all(
        self,
        progress: SweepProgress,
        keep_meta: bool,
        wait_for_done: bool,
        backoff: int,
        timeout: int | None,
        force: bool,
    ) -> bool:
        ok = True
        after = 0
        # A collected run had its _DONE: one without it now changed, and must not hold the sweep up for good.
        timeout = SWEEP_DONE_WAIT if timeout is None else timeout
        while not self.stopping.is_set():
            page = self.journal.done_jobs_page(after, PAGE)
            if not page:
                break
            after = page[-1].id
            for job in page:
                if self.stopping.is_set():
                    return False
                cleaned = job.path is not None and self._clean_one(
                    job.path, job, keep_meta, wait_for_done, backoff, timeout, force
                )
                progress.seen += 1
                if cleaned:
                    progress.cleaned += 1
                else:
                    progress.refused += 1
                    ok = False
        if progress.total < progress.seen:
            progress.total = progress.seen
        return ok and not self.stopping.is_set()

    def _clean_one(
        self,
        target: str,
        job: Job | None,
        keep_meta: bool,
        wait_for_done: bool,
        backoff: int,
        timeout: int | None,
        force: bool,
    ) -> bool:
        refusal = self.refusal(target, job, force, keep_meta)
        if refusal:
            log.warning(f"cleanup of {target} refused: {refusal}")
            return False
        if wait_for_done and not logdir.wait_for_done([os.path.realpath(target)], backoff, timeout, stop=self.stopping):
            log.warning(f"cleanup of {target} not done: no _DONE within {timeout} ms")
            return False
        if job is not None:
            job = self.journal.get(job.id)  # the page it came from may be old
            if job is None or (job.state != JobState.DONE and not force):
                log.info(f"cleanup of {target}: cleaned meanwhile")
                return job is not None and job.state == JobState.CLEANED
        collected = job is not None and job.state == JobState.DONE
        if collected and job is not None:
            # Outside the lock: reading every output takes long, and it changes nothing.
            check = self._verify(target, job)
            if not check.ok:
                differences = "; ".join(check.failures())
                log.warning(f"cleanup of {target} refused: its outputs failed verification: {differences}")
                return False
        inventory = self.ledger.inventory(target)
        if collected and inventory is None and job is not None and time.time() - job.updated < RECORD_WAIT * 5:
            inventory = self._wait_for_inventory(target)
        if collected and inventory is None and not force:
            log.warning(
                f"cleanup of {target} refused: no record of what was collected (collected by another "
                "actor or an older version); pass force=True to clean what is there now"
            )
            return False
        with self._lock:
            if job is not None:
                now = self.journal.get(job.id)  # another caller may have cleaned it while this one verified
                if now is None or now.state != job.state or now.outputs != job.outputs:
                    log.info(f"cleanup of {target}: changed meanwhile ({'gone' if now is None else now.state.value})")
                    return now is not None and now.state == JobState.CLEANED
            try:
                with RunDirectory(target, self.config.allowed_roots) as run:
                    named = trash.name_trash(run, trash.plan_trash(run, inventory, keep_meta))
                    # Recorded before anything is renamed: a ledger that cannot be written (a full
                    # state_dir) touches nothing, and a crash during the renames leaves only
                    # recorded trash, which restore and the purge find.
                    recorded = self.ledger.record_trash(target, None if job is None else job.id, run, named)
                    moved = trash.move_to_trash(run, named)
                    if len(moved) != len(named):
                        skipped = {e.name for e in named} - {e.name for e in moved}
                        self.ledger.keep_trash(target, [e for e in recorded if e.name not in skipped])
            except CollectorError as exc:  # RunChanged above, or the directory gone or moved since the refusal check
                log.warning(f"cleanup of {target} refused: {exc.reason}")
                return False
            except (OSError, sqlite3.Error) as exc:
                log.warning(f"cleanup of {target} stopped: {exc}; whatever it renamed is recorded in the trash")
                return False
            if job is not None:
                self.journal.mark_cleaned(job.id, time.time() + self.config.cleanup_grace)
            else:
                log.warning(f"{target} has no job; its trash is not purged automatically")
            if self.config.cleanup_grace == 0:
                self._purge(target, job)
        log.info(
            f"cleaned {target} ({len(moved)} entries into the trash, keep_meta={keep_meta}); "
            f"deleted for good after {self.config.cleanup_grace:g} s"
        )
        return True

    def _wait_for_inventory(self, path: str) -> RunInventory | None:
        """The inventory of a run collected a moment ago, once its collection has recorded it.

        The job turns done in the journal just before the collection is reported and its
        inventory recorded; a caller that cleans the run at once must not be refused for that.
        """
        deadline = time.monotonic() + RECORD_WAIT
        with self._recorded:
            while (found := self.ledger.inventory(path)) is None and not self.stopping.is_set():
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._recorded.wait(left)
        return found

    # -- restore and purge --------------------------------------------------------------------

    def restore(self, path: str) -> bool:
        """Put a cleaned run's trash back (before the grace period ends): only what the cleaner trashed.

        Args:
            path: The logger directory.

        Returns:
            True if anything was restored.
        """
        path = os.path.normpath(str(path))
        job = self.journal.by_path(path)
        if self.refusal(path, job, force=True, restoring=True) is not None:
            return False
        with self._lock:
            record = self.ledger.trash(path)
            if record is None:
                log.info(f"{path}: nothing of it is in the trash this service keeps")
                return False
            (dev, ino), entries = record
            try:
                with RunDirectory(path, self.config.allowed_roots) as run:
                    run.check_identity(dev, ino, "trashed")
                    restored = trash.restore_recorded(run, entries)
            except (CollectorError, OSError) as exc:
                log.warning(f"restore of {path} refused: {exc}")
                return False
            back = {e.name for e in restored}
            self.ledger.keep_trash(path, [e for e in entries if e.name not in back])
            if job is not None and restored:  # nothing put back (purged already): the run stays cleaned
                self.journal.restored(job.id)
        log.info(f"restored {len(restored)} item(s) of {path}")
        return bool(restored)

    def purge_due(self) -> None:
        """Delete the trash whose grace period is over (a periodic task), a page at a time."""
        now = time.time()
        for job in self.journal.in_trash(limit=PAGE):
            if job.trash_until is None or job.trash_until > now or self.stopping.is_set():
                break
            if job.path is None:
                continue
            try:
                self._purge(job.path, job)
            except (CollectorError, OSError) as exc:
                log.warning(f"purging the trash of {job.path} failed: {exc}")

    def _purge(self, path: str, job: Job | None) -> None:
        with self._lock:
            if job is not None:
                job = self.journal.get(job.id)  # purged or restored meanwhile: nothing to do
                if job is None or job.trash_until is None:
                    return
            record = self.ledger.trash(path)
            if record is None:
                self._no_record(path, job)
                return
            (dev, ino), entries = record
            try:
                with RunDirectory(path, self.config.allowed_roots) as run:
                    run.check_identity(dev, ino, "trashed")
                    deleted, kept = trash.purge_recorded(run, entries)
            except CollectorError as exc:  # replaced, gone, or a folder on its path a symlink now
                log.warning(f"purge of {path} not done: {exc.reason}; tried again in {RETRY_PURGE:g} s")
                if job is not None:
                    self.journal.mark_cleaned(job.id, time.time() + RETRY_PURGE)
                return
            for reason in kept:
                log.warning(f"purge of {path}: {reason}")
            gone = {e.name for e in deleted}
            left = [e for e in entries if e.name not in gone and e.entry.kind == DIR]
            # Only a trashed streams/ holding files it did not hold when trashed can be left: those
            # are not ours, so the record ends here and they are left for their owner.
            self.ledger.keep_trash(path, [])
            self.ledger.forget_inventory(path)
            if left:
                log.warning(f"purge of {path}: {', '.join(e.name for e in left)} kept for the files it holds")
            if job is not None:
                self.journal.purged(job.id)
            log.info(f"purged {len(deleted)} trash entries of {path}")

    def _no_record(self, path: str, job: Job | None) -> None:
        """A job in the trash the ledger knows nothing of: another actor's trash, or an older version's."""
        if path not in self._warned:
            self._warned.add(path)
            log.warning(
                f"purge of {path}: this service did not trash it (another actor, or an older version), "
                "so it deletes nothing there"
            )
        if job is not None and not self.journal.shared:
            # Only this actor uses the journal, so nobody else will purge it: look again much later.
            self.journal.mark_cleaned(job.id, time.time() + RETRY_PURGE)

    def refusal(
        self, target: str, job: Job | None, force: bool, keep_meta: bool = True, restoring: bool = False
    ) -> str | None:
        """Why a cleanup (or with ``restoring`` a restore) must not touch ``target``, or None if it may."""
        if not self.config.allowed_roots:
            return "no allowed_roots configured"
        if not os.path.isabs(target):
            return "path is not absolute"
        real = Path(os.path.realpath(target))
        if not within_roots(real, self.config.allowed_roots):
            return "outside allowed_roots"
        # Only what this cleaner trashed counts: a user's "streams.trash-1" makes no logger directory.
        record = self.ledger.trash(target) if restoring else None
        streams_trashed = record is not None and any(e.original == logdir.STREAMS_DIR for e in record[1])
        if not real.is_dir() or not ((real / logdir.STREAMS_DIR).is_dir() or streams_trashed):
            return "not a logger directory"
        if not keep_meta and (real / logdir.STREAMS_DIR).is_symlink():
            return "streams/ is a symlink; it is not removed with keep_meta=False"
        if (job is None or job.state != JobState.DONE) and not force:
            return f"run not collected (state {job.state.value if job else 'unknown'}); pass force=True to clean anyway"
        return None
