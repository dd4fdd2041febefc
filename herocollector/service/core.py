"""The collection service: journal, scheduler, workers, output writing, scanning and cleanup.

It knows nothing of HEROS. The actor (:class:`herocollector.CollectorArchiver`) is a thin
adapter that feeds it announcements and exposes its methods remotely; tests and scripts use
it directly::

    from herocollector import CollectionService, ServiceConfig

    config = ServiceConfig.from_arguments(
        save_template="{{ output_root }}/{{ logger_name }}/{{ measure }}.arrow",
        output_root="/data/collected", allowed_roots=["/data/runs"], state_dir="/var/lib/hc",
    )
    with CollectionService(config) as service:
        service.submit("my-logger", {"path": "/data/runs/run-0001"})
        service.wait_idle(timeout=60)

Data flows one way: announcement → journal → scheduler → worker (job runner) → reader
(codec) → output pipeline → commit → journal.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from herocollector.config import ServiceConfig
from herocollector.decode import native
from herocollector.errors import JournalError
from herocollector.events import RunCollected, RunFailed, RunProgress
from herocollector.journal.base import Announcement
from herocollector.journal.sqlite import Job, JobState, JobStore, open_journal
from herocollector.output.uploads import ABANDONED_SWEEP
from herocollector.output.verify import RunCheck
from herocollector.run.rundir import job_key
from herocollector.service.checks import run_path_argument
from herocollector.service.cleanup import RunCleaner, SweepProgress
from herocollector.service.compaction import TableUpkeep
from herocollector.service.follow import followed_runs
from herocollector.service.health import JournalHealth
from herocollector.service.intake import SPOOL_DIR, Intake, Malformed, Spool, announcement_of
from herocollector.service.metrics import MetricsExporter
from herocollector.service.runner import JobRunner
from herocollector.service.scan import Scanner, ScanResult
from herocollector.service.scheduler import Scheduler
from herocollector.service.statedir import StateDirLock
from herocollector.service.status import RECENT_LISTED, TRASH_LISTED, JobCounts, ServiceStatus, TrashEntry

log = logging.getLogger(__name__)


LOCK_WAIT = 3.0
"""Seconds a new service waits for the ``state_dir`` lock (a predecessor may be shutting down)."""


@dataclass
class ServiceMetrics:
    """Counters since the service started (the actor publishes them as datasource observables).

    Attributes:
        runs_collected: Runs collected.
        runs_failed: Failed attempts.
        rows_collected: Rows written.
        bytes_collected: Segment bytes decoded.
        last_latency: Seconds from announcement to commit of the last collected run.
        last_seconds: Seconds the last collection took.
    """

    runs_collected: int = 0
    runs_failed: int = 0
    rows_collected: int = 0
    bytes_collected: int = 0
    last_latency: float = 0.0
    last_seconds: float = 0.0


class CollectionService:
    """Collects announced runs into output files, durably; see the module documentation.

    Args:
        config: What to collect and where to write it.
        on_collected: Called with every collected run (the actor fires ``run_collected``).
        on_failed: Called with every failed attempt (the actor fires ``run_failed``).
        on_progress: Called with every chunk committed of a run followed while it is written
            (``follow``; the actor fires ``run_progress``).

    Raises:
        StateDirLocked: Another service uses ``state_dir``.
        JournalError: The journal cannot be opened.
        ConfigError: ``metrics_port`` cannot be listened on.
    """

    exporter: MetricsExporter | None = None
    """The Prometheus endpoint (with ``metrics_port``)."""

    def __init__(
        self,
        config: ServiceConfig,
        on_collected: Callable[[RunCollected], None] | None = None,
        on_failed: Callable[[RunFailed], None] | None = None,
        on_progress: Callable[[RunProgress], None] | None = None,
    ) -> None:
        self.config = config
        self._on_collected = on_collected
        self._on_failed = on_failed
        self._lock = StateDirLock(config.state_dir, f"{config.event_name} from {config.object_selector}")
        self._closed = False
        self._metrics = ServiceMetrics()
        self._metrics_lock = threading.Lock()
        self._last_counts = JobCounts.from_journal({})
        self._lock.acquire(wait=LOCK_WAIT)
        native.warm_up_in_background()  # a first start compiles the decoder while the rest starts, and logs it
        journal: JobStore | None = None
        scheduler: Scheduler | None = None
        intake: Intake | None = None
        cleaner: RunCleaner | None = None
        try:
            self.journal = journal = open_journal(config.journal_location)
            self.health = JournalHealth()
            self.scheduler = scheduler = Scheduler(
                journal, self._run_job, config.workers, config.owner, config.lease_timeout, self.health
            )
            self.intake = intake = Intake(
                journal,
                Spool(config.state_dir / SPOOL_DIR),
                self.health,
                config.path_key,
                config.timeout,
                config.allowed_roots,
                self._journalled,
                self._malformed,
            )
            self.upkeep = TableUpkeep(config, journal, scheduler.stopping)
            self.runner = JobRunner(
                config,
                journal,
                scheduler.stopping,
                self._collected,
                self._failed,
                self._cleanup_after if config.cleanup_after_collect else None,
                on_inventory=lambda job, inventory: self.cleaner.record_inventory(job, inventory),
                on_table=self.upkeep.add,
                on_progress=on_progress,
            )
            self.cleaner = cleaner = RunCleaner(config, journal, scheduler.stopping)
            self.scanner = Scanner(
                journal, config.allowed_roots, config.scan_depth, scheduler.stopping, unfinished=config.follow
            )
            resumed = journal.resume(config.owner)
            scheduler.every("done-check", config.backoff / 1000, self._check_waiting)
            scheduler.every("purge", min(max(config.cleanup_grace / 4, 0.05), 60.0), self.cleaner.purge_due, False)
            # Multipart uploads that a killed predecessor left, on a thread: an unreachable S3 must not delay the start.
            scheduler.every("uploads", ABANDONED_SWEEP, self.runner.store.abort_abandoned)
            if config.scan_interval is not None and config.allowed_roots:
                scheduler.every("scan", config.scan_interval, self._scan)
            if config.format.is_table and config.compact_interval is not None:  # a thread of its own, not a worker's
                scheduler.every("compaction", config.compact_interval, self.upkeep.run, run_at_start=False)
            journal.subscribe(scheduler.wake)
            self.health.on_recovery(lambda: scheduler.trigger("scan"))  # runs missed while the journal was down
            self.health.on_recovery(scheduler.resume_backed_off)
            self.exporter = self._serve_metrics()
            scheduler.start()
            self.intake.start()
        except BaseException:
            # A failed start keeps nothing: no thread, no journal connection, no lock.
            self._stop_metrics()
            if scheduler is not None:
                scheduler.close()
            if intake is not None:
                intake.close()
            if cleaner is not None:
                cleaner.close()
            if journal is not None:
                journal.close()
            self._lock.release()
            raise
        log.info(
            f"service started with {config.workers} worker(s), journal {self.journal.location}, "
            f"{len(resumed)} unfinished job(s) resumed"
        )

    # -- announcements ------------------------------------------------------------------------

    def announce(self, source: str, data: Any) -> None:
        """Take an announced run (a ``finished`` event) for journalling; returns at once.

        The event goes to the intake, which journals events in batches, and spools them
        durably while the journal is unreachable (see :mod:`herocollector.service.intake`).
        This is what the Zenoh callback calls; :meth:`submit` journals synchronously.

        Args:
            source: The HERO that announced it.
            data: The event payload: a dict with the path under ``path_key``, a
                ``(payload, metadata)`` pair, or a bare path.
        """
        self.intake.offer(source, data)

    def submit(self, source: str, data: Any) -> Job:
        """Journal an announced run now, so it is collected once it is done.

        Args:
            source: The HERO that announced it.
            data: The event payload: a dict with the path under ``path_key``, a
                ``(payload, metadata)`` pair, or a bare path.

        Returns:
            The job (a malformed event is journalled as a failed job without a path).
        """
        found = announcement_of(
            source, data, self.config.path_key, self.config.timeout, time.time(), self.config.allowed_roots
        )
        if isinstance(found, Malformed):
            job = self.journal.record_malformed(found.source, found.event, found.error)
            self._malformed(job)
            return job
        return self._submit(found)

    def _submit(self, announcement: Announcement) -> Job:
        results = self.journal.submit_many([announcement])
        self._journalled(results)
        return results[0][0]

    def _journalled(self, results: list[tuple[Job, bool]]) -> None:
        for job, due in results:
            if due:
                log.info(f"job {job.id} journalled for {job.path} (from {job.source})")
            else:
                log.info(f"{job.path} is already {job.state.value} (job {job.id}); event noted")
        if any(due for _, due in results):
            self.scheduler.wake()

    def _malformed(self, job: Job) -> None:
        log.error(f"job {job.id} failed: {job.error} (from {job.source})")
        self._failed(RunFailed(None, job.error or "", 1, True, job.id))

    def collect(self, path: str) -> Job:
        """Journal a logger directory as if a ``finished`` event had announced it.

        Args:
            path: Absolute path of the logger directory.

        Returns:
            The job (pending if new; its state if known before).

        Raises:
            ConfigError: ``path`` is not a non-empty absolute path of at most 4,096 bytes
                without NUL; no job is created.
        """
        path = os.path.normpath(run_path_argument(path))
        deadline = None if self.config.timeout is None else time.time() + self.config.timeout / 1000
        key = job_key(path, self.config.allowed_roots)
        return self._submit(Announcement(key, "remote", {self.config.path_key: path}, deadline))

    # -- queries and control ------------------------------------------------------------------

    def counts(self) -> JobCounts:
        """Jobs per state, in the whole journal (the fleet's, on a shared journal)."""
        return JobCounts.from_journal(self.journal.counts())

    def running(self) -> list[str]:
        """The runs this service's workers are collecting right now."""
        return [job.path for job in self.scheduler.running() if job.path is not None]

    def status(self) -> ServiceStatus:
        """Jobs per state, the runs being collected, the trash (counted, and a bounded list) and recent jobs.

        While the journal is unreachable this answers at once, without asking it: the last
        counts it gave, and the outage (since when, the error, the events spooled meanwhile)
        under ``journal_outage``.
        """
        extra: dict[str, Any] = {"cleanup": asdict(self.cleaner.progress())}
        outage = self.health.outage
        if outage is None:
            try:
                counts = self.counts()
                in_trash = self.journal.trash_count()
                trash = [TrashEntry(j.path, j.trash_until) for j in self.journal.in_trash(TRASH_LISTED) if j.path]
                recent = self.journal.recent(RECENT_LISTED)
            except JournalError as exc:
                self.health.failed("answering status()", exc)
                outage = self.health.outage
            else:
                self._last_counts = counts
                return ServiceStatus(
                    counts=counts,
                    running=self.running(),
                    workers=self.config.workers,
                    journal=self.journal.location,
                    output_root=str(self.config.output_root),
                    in_trash=in_trash,
                    pending_deletion=trash,
                    last_scan=self.scanner.last,
                    recent=recent,
                    extra=extra,
                    compaction=self.upkeep.states(),
                    following=followed_runs(self.journal) if self.config.follow else [],
                )
        if outage is not None:
            extra["journal_outage"] = {**outage.to_dict(), "spooled_batches": self.intake.spooled}
        return ServiceStatus(
            counts=self._last_counts,
            running=self.running(),
            workers=self.config.workers,
            journal=self.journal.location,
            output_root=str(self.config.output_root),
            in_trash=0,
            pending_deletion=[],
            last_scan=self.scanner.last,
            recent=[],
            extra=extra,
            compaction=self.upkeep.states(),
        )

    def failed(self) -> list[Job]:
        """The jobs kept as failed, with their errors and attempt counts."""
        return self.journal.jobs(JobState.FAILED)

    def retry(self, path: str | None = None) -> int:
        """Queue failed jobs again (all, or the one of ``path``) with a fresh retry budget.

        Returns:
            How many jobs were queued.
        """
        jobs = self.journal.retry(None if path is None else os.path.normpath(run_path_argument(path)))
        if jobs:
            self.scheduler.wake()
        return len(jobs)

    def cleanup(
        self,
        path: str | None = None,
        keep_meta: bool = True,
        wait_for_done: bool = True,
        backoff: int = 100,
        timeout: int | None = 60_000,
        force: bool = False,
    ) -> bool:
        """Clean collected runs; see :meth:`herocollector.service.cleanup.RunCleaner.cleanup`."""
        return self.cleaner.cleanup(path, keep_meta, wait_for_done, backoff, timeout, force)

    def start_cleanup(
        self,
        keep_meta: bool = True,
        wait_for_done: bool = True,
        backoff: int = 100,
        timeout: int | None = 60_000,
        force: bool = False,
    ) -> SweepProgress:
        """Clean every collected run in the background; progress in ``status()["cleanup"]``.

        See :meth:`herocollector.service.cleanup.RunCleaner.start_sweep`.
        """
        return self.cleaner.start_sweep(keep_meta, wait_for_done, backoff, timeout, force)

    def wait_cleanup(self, timeout: float) -> bool | None:
        """Wait for a background cleanup: its answer, or None if it is still running after ``timeout`` s."""
        return self.cleaner.wait_sweep(timeout)

    def verify(self, path: str) -> RunCheck:
        """Verify a collected run's outputs against its manifest; see :func:`herocollector.output.verify.verify_job`."""
        return self.cleaner.verify(path)

    def restore(self, path: str) -> bool:
        """Put a cleaned run's segments back; see :meth:`herocollector.service.cleanup.RunCleaner.restore`."""
        return self.cleaner.restore(path)

    def scan(self) -> ScanResult:
        """Run the catch-up scan now (it also runs every ``scan_interval`` seconds)."""
        result = self.scanner.scan()
        if result.journalled:
            self.scheduler.wake()
        return result

    def metrics(self) -> ServiceMetrics:
        """A copy of the counters."""
        with self._metrics_lock:
            return ServiceMetrics(**asdict(self._metrics))

    def wait_idle(self, timeout: float = 60.0, interval: float = 0.01) -> bool:
        """Wait until no job is pending, waiting or running.

        Returns:
            True if idle, False if ``timeout`` seconds passed first.
        """
        deadline = time.monotonic() + timeout
        if not self.intake.wait_empty(timeout):
            return False
        while True:
            if self.counts().busy == 0 and not self.scheduler.running():
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(interval)

    # -- lifecycle ----------------------------------------------------------------------------

    def close(self) -> None:
        """Stop promptly, whatever is waiting: a running collection is put back as pending.

        Idempotent. Takes a few seconds at most (the workers stop between two batches).
        """
        if self._closed:
            return
        self._closed = True
        self.intake.close()  # what has arrived is journalled, or spooled
        self.scheduler.close()
        self._stop_metrics()
        self.cleaner.close()
        self.runner.record_pending()
        self.journal.close()
        self._lock.release()
        log.info("service closed")

    def __enter__(self) -> CollectionService:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- internals ----------------------------------------------------------------------------

    def _run_job(self, job: Job) -> None:
        self.runner.run(job)

    def _check_waiting(self) -> None:
        self.runner.record_pending()
        if self.runner.check_waiting():
            self.scheduler.wake()

    def _scan(self) -> None:
        self.scan()

    def _cleanup_after(self, path: str) -> None:
        self.cleaner.cleanup(path, wait_for_done=False)

    def _collected(self, report: RunCollected) -> None:
        self.scheduler.release(report.job)  # done in the journal: no longer running, whatever is reported next
        if report.path:  # before the event goes out: a listener may clean the run at once
            self.cleaner.record_collected(report.path, report.job, report.bytes or None)
        job = self.journal.get(report.job)
        with self._metrics_lock:
            self._metrics.runs_collected += 1
            self._metrics.rows_collected += report.rows
            self._metrics.bytes_collected += report.bytes
            self._metrics.last_seconds = report.seconds
            if job is not None:
                self._metrics.last_latency = max(time.time() - job.created, 0.0)
        if self.exporter is not None:
            lag = None if job is None else time.time() - job.created
            self.exporter.observe_collected(report.seconds, lag, report.rows, report.bytes)
        if self._on_collected is not None:
            self._on_collected(report)

    def _failed(self, report: RunFailed) -> None:
        self.scheduler.release(report.job)
        with self._metrics_lock:
            self._metrics.runs_failed += 1
        if self.exporter is not None:
            self.exporter.observe_failed(report.error, report.path)
        if self._on_failed is not None:
            self._on_failed(report)

    def metrics_url(self) -> str | None:
        """The address Prometheus scrapes (``http://host:port/metrics``), None without ``metrics_port``."""
        exporter = self.exporter
        return None if exporter is None else f"http://{exporter.url_host}:{exporter.port}/metrics"

    def _serve_metrics(self) -> MetricsExporter | None:
        if self.config.metrics_port is None:
            return None
        return MetricsExporter(
            self.config.metrics_address,
            self.config.metrics_port,
            lambda: {state.value: n for state, n in self.counts().by_state.items()},
            lambda: len(self.scheduler.running()),
        )

    def _stop_metrics(self) -> None:
        exporter, self.exporter = self.exporter, None
        if exporter is not None:
            exporter.close()

    def cleanup_refusal(self, path: str, keep_meta: bool = True, force: bool = False) -> str | None:
        """Why a cleanup that is to wait for ``path``'s ``_DONE`` must be refused now; None if it may wait.

        What :meth:`cleanup` refuses, and also a forced cleanup of a run this service is about to
        collect (pending, waiting or running): once its ``_DONE`` came, the two would race.
        """
        path = os.path.normpath(str(path))
        job = self.journal.by_path(path)
        if self.config.follow and job is not None and job.state in (JobState.PENDING, JobState.RUNNING):
            cursor = self.journal.follow_cursor(job.id)
            if cursor is not None:
                return (
                    f"the run is being followed (job {job.id}, chunks committed while it is written); it is "
                    "cleaned after its _DONE and its final commit"
                )
        if force and job is not None and job.state in (JobState.PENDING, JobState.WAITING, JobState.RUNNING):
            return f"the run is being collected (job {job.id} is {job.state.value}); clean it once it is collected"
        return self.cleaner.refusal(path, job, force, keep_meta)
