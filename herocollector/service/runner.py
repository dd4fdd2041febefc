"""The job runner: one job taken from the journal, carried to its next state. It never raises.

For a job it:

1. refuses a run the configuration forbids (:class:`~herocollector.errors.RunRefused`);
2. parks a run without ``_DONE`` as *waiting* (no worker is held; the service checks it every
   ``backoff`` ms), or fails it with :class:`~herocollector.errors.DoneTimeout` once its
   deadline has passed;
3. with ``claim_runs``, claims the run against the other actors of a fleet;
4. plans the run, reserves its output paths in the journal, and adopts the run as it is if
   its manifest is complete and true (an earlier attempt died after writing it); otherwise
   removes a stale manifest, writes and publishes its outputs through the
   :class:`~herocollector.output.pipeline.OutputPipeline`, then writes the manifest, its commit
   record (:mod:`herocollector.output.manifest`);
5. records the outcome, in one place (:meth:`JobRunner.conclude`): done with its outputs,
   parked, put back, or failed under the retry policy (the error's
   :attr:`~herocollector.errors.CollectorError.retryable` and ``max_retries``). A failed
   attempt keeps the journal reservations of the outputs it left published without a manifest
   (a full disk at the manifest, a publish that failed half-way), so every file under a final
   name is accounted for, and the retry replaces them.

A journal error while recording an outcome is kept and recorded again later
(:meth:`JobRunner.record_pending`), so the worker lives on and nothing is forgotten.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from herocollector.config import ServiceConfig
from herocollector.errors import (
    Cancelled,
    DoneTimeout,
    LeaseLost,
    RunRefused,
)
from herocollector.events import RunCollected, RunFailed, RunProgress
from herocollector.journal.base import Job, JobState, JobStore
from herocollector.output.delta import table_of
from herocollector.output.delta_merge import compact_run
from herocollector.output.files import OutputFormat, remove_abandoned
from herocollector.output.paths import PathTemplate, Trusted
from herocollector.output.pipeline import OutputPipeline, PlannedRun
from herocollector.output.stores import open_store
from herocollector.run import logdir
from herocollector.run.claims import COLLECTED, HELD, RunClaim
from herocollector.run.rundir import RunDirectory, RunInventory
from herocollector.service.commit import ManifestCommitter, RunCommitter
from herocollector.service.follow import RunFollower
from herocollector.service.lease import LeaseKeeper
from herocollector.service.table_commit import TableCommitter

log = logging.getLogger(__name__)


class _Deferred(Exception):
    """The run is being collected by another actor of the fleet; look again later."""


@dataclass
class _Attempt:
    """What one attempt left behind that its outcome must record.

    Attributes:
        unmanifested: Outputs under a final name with this run's provenance that no manifest
            commits (the attempt failed after publishing, or an earlier one died there).
        inventory: The run as the attempt planned (and, when it decoded it, re-checked) it.
    """

    unmanifested: list[str] = field(default_factory=list)
    inventory: RunInventory | None = None


@dataclass(frozen=True)
class Collected:
    """The run is collected (by this actor, or another one of the fleet): done.

    Attributes:
        report: What is reported (a run's rows in a table are reported under the table).
        inventory: What this actor read of the run (None when another actor collected it).
        recorded: The outputs as the journal records them (its own keys for a run's rows in a
            shared table; see :func:`herocollector.output.delta.journal_key`).
    """

    report: RunCollected
    inventory: RunInventory | None = None
    recorded: dict[str, int] | None = None


@dataclass(frozen=True)
class Parked:
    """The run has no ``_DONE`` yet: waiting, checked again at ``check_at``."""

    check_at: float
    deadline: float | None


@dataclass(frozen=True)
class Following:
    """A followed run's chunk step is over (``follow``): pending again at ``check_at``, no worker held.

    Attributes:
        check_at: When the next chunk is read.
        progress: The chunk this step committed (None: nothing new).
    """

    check_at: float
    progress: RunProgress | None


@dataclass(frozen=True)
class PutBack:
    """Pending again without counting the attempt (another actor's claim, or a shutdown)."""

    retry_at: float | None
    reason: str | None


@dataclass(frozen=True)
class Fenced:
    """The lease was taken over: this actor records nothing."""

    reason: str


@dataclass(frozen=True)
class Failed:
    """A failed attempt, recorded under the retry policy.

    Attributes:
        error: The original cause.
        attempts: Attempts made, this one included.
        kept: Output reservations kept: files published with no manifest to commit them.
        waited: The job was waiting for ``_DONE`` (not running) when it failed.
    """

    error: BaseException
    attempts: int
    kept: tuple[str, ...] = ()
    waited: bool = False


Outcome = Collected | Parked | Following | PutBack | Fenced | Failed
"""Where one job goes next; :meth:`JobRunner.conclude` records it."""


def describe(exc: BaseException) -> str:
    """``Type: message`` of an error, as the journal and the events report it."""
    return f"{type(exc).__name__}: {exc}"


def _log_fenced(job: Job, reason: str) -> None:
    """The one line that says an actor lost a job to another: whether its runner or the journal found out."""
    log.warning(f"job {job.id} for {job.path}: lease lost, fenced out; nothing recorded ({reason})")


class JobRunner:
    """Runs jobs for the service; see the module documentation.

    Args:
        config: The service configuration.
        journal: The job journal.
        stopping: Set when the service closes; a running collection then stops early.
        on_collected: Called with every collected run.
        on_failed: Called with every failed attempt.
        after_collect: Called with the path of every run this actor collected (cleanup).
        on_inventory: Called with every job this actor collected and the inventory of the run
            it read (what a cleanup may remove), right before the journal records it done.
        on_table: Told every Delta table a run was committed to (what compaction looks after).
        on_progress: Called with every chunk committed of a run followed while it is written.
    """

    def __init__(
        self,
        config: ServiceConfig,
        journal: JobStore,
        stopping: threading.Event,
        on_collected: Callable[[RunCollected], None],
        on_failed: Callable[[RunFailed], None],
        after_collect: Callable[[str], None] | None = None,
        on_inventory: Callable[[Job, RunInventory], None] | None = None,
        on_table: Callable[[str], None] | None = None,
        on_progress: Callable[[RunProgress], None] | None = None,
    ) -> None:
        self.config = config
        self.journal = journal
        self.stopping = stopping
        self.on_collected = on_collected
        self.on_failed = on_failed
        self.after_collect = after_collect
        self.on_inventory = on_inventory
        self.template = PathTemplate(config.save_template, config.output_root)
        self.store = open_store(config.output_root, config.storage_options, config.staging_dir)
        self.pipeline = OutputPipeline(
            rule=config.rule,
            columns=config.columns,
            label_types=config.label_types,
            format=OutputFormat.STREAM if config.format.is_table else config.format,
            compression=None if config.format.is_table else config.compression,
            chunk_bytes=config.chunk_bytes,
            decode_threads=config.threads,
        )
        self.committer: RunCommitter
        if config.format.is_table:
            self.committer = TableCommitter(config, self.pipeline, stopping, on_table)
        else:
            self.committer = ManifestCommitter(config, journal, self.store, self.pipeline, stopping)
        self.on_progress = on_progress
        self.follower = RunFollower(
            config,
            journal,
            self.pipeline,
            lambda job, run, stream: self._route(job, run, stream.metadata),
            stopping,
            compact=lambda table, run: compact_run(table, run, config.storage_options, actor=config.owner),
        )
        # Stable across restarts, so a restarted actor recognises its own claims.
        self.owner = config.owner
        self._unrecorded: dict[int, Callable[[], object]] = {}
        self._unrecorded_lock = threading.Lock()

    # -- running a job ----------------------------------------------------------------------

    def run(self, job: Job) -> None:
        """Collect one job taken from the journal and record the outcome. Never raises."""
        started = time.monotonic()
        attempt = _Attempt()
        outcome: Outcome
        try:
            outcome = self._collect(job, started, attempt)
        except _Deferred as deferred:
            outcome = PutBack(time.time() + self.config.claim_heartbeat, str(deferred))
        except Cancelled:
            outcome = PutBack(None, None)
        except LeaseLost as lost:
            outcome = Fenced(str(lost))
        except BaseException as exc:  # noqa: BLE001 - whatever happens, the worker lives on
            outcome = Failed(exc, job.attempts, tuple(attempt.unmanifested))
        self.conclude(job, outcome)

    def _collect(self, job: Job, started: float, attempt: _Attempt) -> Collected | Parked | Following:
        """The work of :meth:`run`, up to its outcome (recorded by :meth:`conclude`)."""
        remove_abandoned()  # temporary files an earlier attempt could not remove (a read-only folder)
        if job.path is None:
            raise RunRefused("job has no logger path")
        with RunDirectory(job.path, self.config.allowed_roots) as run_dir:  # refuses, or names what is wrong
            path, done = run_dir.path, run_dir.is_done()
        if self.config.follow:
            return self._follow(job, path, done, started)
        if not done:
            return self._park(job)
        with LeaseKeeper(self.journal, job, self.config.lease_timeout, self.stopping) as lease:
            outputs, nbytes, collected_by = self._claimed_write(job, path, lease, attempt)
            lease.check()
        seconds = time.monotonic() - started
        shown = {table_of(key): rows for key, rows in outputs.items()}
        report = RunCollected(job.path, shown, sum(outputs.values()), seconds, job.id, nbytes, collected_by)
        return Collected(report, attempt.inventory if collected_by is None else None, outputs)

    def _follow(self, job: Job, path: Path, done: bool, started: float) -> Collected | Following:
        """One chunk of a followed run; the run is collected once its ``_DONE`` chunk is committed."""
        with LeaseKeeper(self.journal, job, self.config.lease_timeout, self.stopping) as lease:
            step = self.follower.step(job, path, lease)
            lease.check()
        now = time.time()
        if step.complete:
            shown = {table_of(key): rows for key, rows in step.outputs.items()}
            report = RunCollected(
                job.path or str(path), shown, sum(step.outputs.values()), time.monotonic() - started, job.id
            )
            return Collected(report, step.inventory, step.outputs)
        quiet = now - (step.grown or now)
        if not done and self.config.timeout is not None and quiet * 1000 >= self.config.timeout:
            raise DoneTimeout(f"no _DONE, and no new record for {self.config.timeout} ms", job.path)
        return Following(now + self.config.follow_interval, step.progress)

    def _park(self, job: Job) -> Parked:
        """No ``_DONE`` yet: wait in the journal, or fail if the deadline passed."""
        now = time.time()
        deadline = job.deadline
        if deadline is None and self.config.timeout is not None:
            deadline = now + self.config.timeout / 1000
        if deadline is not None and now >= deadline:
            raise DoneTimeout(f"no _DONE within {self.config.timeout} ms of the announcement", job.path)
        return Parked(now + self.config.backoff / 1000, deadline)

    def _claimed_write(
        self, job: Job, path: Path, lease: LeaseKeeper, attempt: _Attempt
    ) -> tuple[dict[str, int], int, str | None]:
        """Write the outputs, under a fleet claim if configured.

        Returns:
            Rows per output, bytes decoded, and the actor that collected the run if it was
            another one.
        """
        if not self.config.claim_runs:
            return (*self._write_outputs(job, path, lease, attempt), None)
        claim = RunClaim(path, self.owner, self.config.claim_timeout, self.config.claim_heartbeat)
        result = claim.acquire()
        if result.outcome == COLLECTED:
            outputs = {str(k): int(v) for k, v in result.info.get("outputs", {}).items()}
            owner = result.info.get("owner")
            return outputs, 0, None if owner == self.owner else str(owner)
        if result.outcome == HELD:
            raise _Deferred(f"claimed by {result.info.get('owner')} (pid {result.info.get('pid')})")
        written: dict[str, int] | None = None
        try:
            written, nbytes = self._write_outputs(job, path, lease, attempt)
        finally:
            claim.release(written)
        return written, nbytes, None

    def _write_outputs(self, job: Job, path: Path, lease: LeaseKeeper, attempt: _Attempt) -> tuple[dict[str, int], int]:
        """Adopt the run if its manifest is true; else decode it once, publish its outputs, then its manifest.

        Returns:
            Rows per output, and the size of the run's segments (what the run holds, adopted or decoded).
        """
        run = self.pipeline.plan_run(path, self.config.allowed_roots)
        attempt.inventory = run.inventory
        plan = self.pipeline.plan([run], lambda index, planned, stream: self._route(job, planned, stream.metadata))
        if not plan.targets:
            return {}, run.segment_bytes
        try:
            return self.committer.commit(job, plan, lease), run.segment_bytes
        except BaseException:
            attempt.unmanifested = self.committer.left_published(job, plan)
            raise

    def _route(self, job: Job, run: PlannedRun, labels: dict[str, object]) -> Path | str:
        """Render a stream's output path: default_metadata, event metadata, labels, then the run."""
        context = {
            **job.metadata,
            **labels,
            "source_name": job.source,
            "logger_path": Trusted(job.path or ""),
            "logger_name": Path(job.path or "").name,
        }
        return self.template.render_location(context, trusted=self.config.default_metadata)

    # -- outcomes -----------------------------------------------------------------------------

    def conclude(self, job: Job, outcome: Outcome) -> None:
        """Record an outcome in the journal, log it and report it: the one place outcomes go. Never raises."""
        if isinstance(outcome, Collected):
            self._collected(job, outcome)
        elif isinstance(outcome, Parked):
            if self._record(
                job, lambda: self.journal.park(job.id, outcome.check_at, outcome.deadline, token=job.token)
            ):
                log.info(f"job {job.id}: {job.path} has no _DONE yet; waiting")
        elif isinstance(outcome, Following):
            recorded = self._record(job, lambda: self.journal.defer(job.id, outcome.check_at, None, token=job.token))
            if recorded and outcome.progress is not None and self.on_progress is not None:
                self._notify(self.on_progress, outcome.progress)
        elif isinstance(outcome, PutBack):
            if self._record(job, lambda: self.journal.defer(job.id, outcome.retry_at, outcome.reason, token=job.token)):
                if outcome.reason is None:
                    log.info(f"job {job.id} for {job.path} interrupted by shutdown; it stays pending")
                else:
                    log.info(f"job {job.id} for {job.path} deferred: {outcome.reason}")
        elif isinstance(outcome, Fenced):
            _log_fenced(job, outcome.reason)
        else:
            self._failed(job, outcome)

    def _collected(self, job: Job, outcome: Collected) -> None:
        report = outcome.report
        outputs = outcome.recorded if outcome.recorded is not None else report.outputs
        if self.on_inventory is not None and outcome.inventory is not None:
            try:  # before the journal says done, so a cleanup that follows at once finds the record
                self.on_inventory(job, outcome.inventory)
            except Exception as exc:  # noqa: BLE001 - the run is collected; cleanup then refuses it, naming why
                log.error(f"job {job.id}: recording what was read of {job.path} failed: {exc}")
        if not self._record(job, lambda: self.journal.finish(job.id, outputs, token=job.token)):
            return  # fenced out at the last moment: not collected by this actor
        if report.collected_by is None:
            log.info(
                f"job {job.id} collected {job.path}: {report.rows} rows into {len(outputs)} "
                f"file(s) in {report.seconds:.3f} s"
            )
        else:
            log.info(f"job {job.id}: {job.path} was collected by {report.collected_by}")
        self._notify(self.on_collected, report)
        if self.after_collect is not None and report.collected_by is None and job.path is not None:
            try:
                self.after_collect(job.path)
            except Exception as exc:  # noqa: BLE001 - the run is collected; cleanup can be retried
                log.error(f"cleanup after collecting {job.path} failed: {exc}")

    def _failed(self, job: Job, failure: Failed) -> None:
        """Record a failed attempt under the retry policy and report it."""
        exc, attempts = failure.error, failure.attempts
        message = describe(exc)
        retryable = getattr(exc, "retryable", True) and not isinstance(exc, RunRefused)
        retry_at = None
        if retryable and attempts <= self.config.max_retries and job.path is not None:
            retry_at = time.time() + self.config.retry_delay_for(attempts)
        keep_deadline = not isinstance(exc, DoneTimeout)  # after a _DONE timeout the next try waits afresh

        def record() -> object:
            if failure.waited:
                return self.journal.expire(job.id, message, retry_at)
            return self._fail(job, message, retry_at, keep_deadline, failure.kept)

        if not self._record(job, record):
            return  # another actor holds the job now: this attempt is not its failure to report
        if failure.kept:
            log.warning(f"job {job.id}: outputs published without a manifest stay reserved: {list(failure.kept)}")
        if retry_at is None:
            log.error(f"job {job.id} for {job.path} failed after {attempts} attempt(s): {message}")
        else:
            log.warning(
                f"job {job.id} for {job.path} failed (attempt {attempts}), "
                f"retrying in {retry_at - time.time():.1f} s: {message}"
            )
        self._notify(self.on_failed, RunFailed(job.path, message, attempts, retry_at is None, job.id))

    def _fail(
        self, job: Job, message: str, retry_at: float | None, keep_deadline: bool, kept: tuple[str, ...]
    ) -> object:
        """``journal.fail``, keeping the reservations of ``kept`` (outputs published without a manifest), atomically."""
        return self.journal.fail(
            job.id, message, retry_at, keep_deadline=keep_deadline, token=job.token, keep_outputs=kept
        )

    def check_waiting(self) -> bool:
        """Wake waiting jobs whose ``_DONE`` appeared; fail those past their deadline.

        Returns:
            Whether any job became due.
        """
        woke = False
        now = time.time()
        for job in self.journal.jobs(JobState.WAITING):
            if job.path is not None and logdir.is_done(job.path):
                self.journal.wake(job.id)
                woke = True
            elif job.deadline is not None and now >= job.deadline:
                error = DoneTimeout(f"no _DONE within {self.config.timeout} ms of the announcement", job.path)
                self.conclude(job, Failed(error, job.attempts + 1, waited=True))
                woke = True
        return woke

    # -- recording outcomes -------------------------------------------------------------------

    def _record(self, job: Job, action: Callable[[], object]) -> bool:
        """Record an outcome in the journal; if the journal fails, keep it for later.

        Returns:
            False if the job was fenced out (nothing is recorded, now or later, and nothing
            is reported: another actor holds the job).
        """
        try:
            action()
        except LeaseLost as lost:
            _log_fenced(job, str(lost))
            return False
        except Exception as exc:  # noqa: BLE001 - keep the outcome, record it again later
            log.error(f"recording the outcome of job {job.id} failed ({exc}); will retry")
            with self._unrecorded_lock:
                self._unrecorded[job.id] = action
        return True

    def record_pending(self) -> int:
        """Record again the outcomes the journal refused earlier.

        Returns:
            How many are still unrecorded.
        """
        with self._unrecorded_lock:
            pending = list(self._unrecorded.items())
        for job_id, action in pending:
            try:
                action()
            except LeaseLost:
                pass  # fenced out: another actor owns the job now
            except Exception:  # noqa: BLE001 - try again next round
                continue
            with self._unrecorded_lock:
                if self._unrecorded.get(job_id) is action:
                    del self._unrecorded[job_id]
        with self._unrecorded_lock:
            return len(self._unrecorded)

    def _notify(self, callback: Callable[..., None], report: object) -> None:
        try:
            callback(report)
        except Exception as exc:  # noqa: BLE001 - a listener must not fail the job
            log.error(f"reporting {type(report).__name__} failed: {exc}")
