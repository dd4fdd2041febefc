"""The scheduler: worker threads that take due jobs from the journal, and periodic tasks.

There is no in-memory queue. A worker asks the journal for the next due job
(:meth:`~herocollector.journal.sqlite.Journal.take_due`); when there is none it sleeps until the
earliest ``next_attempt`` or until :meth:`Scheduler.wake` is called (a new event, a retry). So
a retry needs no timer, and a restart resumes with the same query. Waiting runs (no ``_DONE``
yet) are checked by a periodic task, never by a worker.

Periodic tasks (the ``_DONE`` checks, the catch-up scan, the trash purge) each run on their
own thread, so a long scan cannot delay a ``_DONE`` check or a collection. While the journal
fails, a task's rounds come further apart (:func:`outage_pause`), and they resume at once when
it answers again (:meth:`Scheduler.resume_backed_off`).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from herocollector.errors import JournalError
from herocollector.journal.sqlite import Job, JobStore
from herocollector.service.health import JournalHealth

log = logging.getLogger(__name__)

_IDLE_POLL = 1.0  # seconds an idle worker sleeps at most before asking the journal again
OUTAGE_PAUSE = 5.0
"""Seconds a periodic task waits at most between rounds the journal failed (see :func:`outage_pause`)."""


@dataclass
class _Periodic:
    name: str
    interval: float
    task: Callable[[], None]
    run_at_start: bool
    now: threading.Event = field(default_factory=threading.Event)
    failures: int = 0  # rounds in a row that the journal failed


def outage_pause(interval: float, failures: int) -> float:
    """The wait before a periodic task's next round, after ``failures`` rounds in a row the journal failed.

    Doubling from the task's interval up to :data:`OUTAGE_PAUSE` (never below the interval), so
    that a ``_DONE`` check every 100 ms does not ask a journal that is down ten times a second;
    :meth:`Scheduler.resume_backed_off` ends the wait once the journal answers again.
    """
    if failures <= 0:
        return interval
    return max(interval, min(interval * 2.0 ** min(failures, 32), OUTAGE_PAUSE))


class Scheduler:
    """Runs due jobs on ``workers`` threads, and periodic tasks, until :meth:`close`.

    Args:
        journal: Where due jobs come from.
        run_job: Runs one job taken from the journal; must not raise (it is the job runner).
        workers: Worker threads, each collecting one run at a time.
        owner: Who takes the jobs (recorded with each lease).
        lease: Seconds a job's lease lasts unless renewed.
        health: Told about journal failures (logged once per outage, then rate-limited) and successes.
    """

    def __init__(
        self,
        journal: JobStore,
        run_job: Callable[[Job], None],
        workers: int = 2,
        owner: str = "",
        lease: float = 30.0,
        health: JournalHealth | None = None,
    ) -> None:
        self._journal = journal
        self._health = health or JournalHealth()
        self._owner = owner
        self._lease = lease
        self._run_job = run_job
        self._workers = workers
        self._stop = threading.Event()
        self._signal = threading.Condition()
        self._generation = 0
        self._threads: list[threading.Thread] = []
        self._periodic: list[_Periodic] = []
        self._running: dict[int, Job] = {}
        self._running_lock = threading.Lock()

    @property
    def stopping(self) -> threading.Event:
        """Set once :meth:`close` was called; long tasks poll it to stop early."""
        return self._stop

    def every(self, name: str, interval: float, task: Callable[[], None], run_at_start: bool = True) -> None:
        """Run ``task`` every ``interval`` seconds on its own thread (register before :meth:`start`)."""
        self._periodic.append(_Periodic(name, interval, task, run_at_start))

    def start(self) -> None:
        """Start the workers and the periodic tasks."""
        for number in range(self._workers):
            self._spawn(f"herocollector-worker-{number + 1}", self._work)
        for periodic in self._periodic:
            self._spawn(f"herocollector-{periodic.name}", self._repeat, periodic)

    def _spawn(self, name: str, target: Callable[..., None], *args: object) -> None:
        thread = threading.Thread(target=target, args=args, name=name, daemon=True)
        self._threads.append(thread)
        thread.start()

    def trigger(self, name: str) -> None:
        """Run the periodic task ``name`` now instead of at its next interval (no-op if there is none)."""
        for periodic in self._periodic:
            if periodic.name == name:
                periodic.now.set()

    def resume_backed_off(self) -> None:
        """Run now the periodic tasks that wait longer than their interval because the journal failed."""
        for periodic in self._periodic:
            if periodic.failures:
                periodic.now.set()

    def wake(self) -> None:
        """Tell idle workers that a job may be due now."""
        with self._signal:
            self._generation += 1
            self._signal.notify_all()

    def release(self, job_id: int) -> None:
        """The job's outcome is in the journal: stop listing it as running, though its worker still reports it."""
        with self._running_lock:
            self._running.pop(job_id, None)

    def running(self) -> list[Job]:
        """The jobs the workers hold right now."""
        with self._running_lock:
            return list(self._running.values())

    def _work(self) -> None:
        while not self._stop.is_set():
            with self._signal:
                seen = self._generation
            try:
                job = self._journal.take_due(owner=self._owner, lease=self._lease)
            except JournalError as exc:
                self._health.failed("taking the next job", exc)
                self._stop.wait(_IDLE_POLL)
                continue
            except Exception as exc:  # noqa: BLE001 - a journal hiccup must not end the worker
                log.error(f"taking the next job from the journal failed: {exc}")
                self._stop.wait(_IDLE_POLL)
                continue
            self._health.succeeded()
            if job is None:
                self._sleep(seen)
                continue
            with self._running_lock:
                self._running[job.id] = job
            try:
                self._run_job(job)
            except BaseException as exc:  # noqa: BLE001 - the runner should never raise; survive if it does
                log.error(f"job {job.id} escaped its runner: {type(exc).__name__}: {exc}")
            finally:
                with self._running_lock:
                    self._running.pop(job.id, None)

    def _sleep(self, seen: int) -> None:
        """Until woken, the next ``next_attempt``, or the idle poll, whichever comes first."""
        try:
            due = self._journal.next_due()
        except Exception:  # noqa: BLE001 - sleep the idle poll and ask again
            due = None
        delay = _IDLE_POLL if due is None else min(max(due - time.time(), 0.0), _IDLE_POLL)
        if delay <= 0:
            return
        with self._signal:
            if self._generation == seen and not self._stop.is_set():
                self._signal.wait(delay)

    def _repeat(self, periodic: _Periodic) -> None:
        if not periodic.run_at_start and self._pause(periodic):
            return
        while not self._stop.is_set():
            try:
                periodic.task()
                periodic.failures = 0
            except JournalError as exc:
                periodic.failures += 1
                self._health.failed(periodic.name, exc)
            except Exception as exc:  # noqa: BLE001 - a periodic task must survive one failed round
                log.error(f"{periodic.name} failed: {type(exc).__name__}: {exc}")
            if self._pause(periodic):
                return

    def _pause(self, periodic: _Periodic) -> bool:
        """Wait for the next round (its interval, or :meth:`trigger`); True once closing."""
        periodic.now.wait(outage_pause(periodic.interval, periodic.failures))
        periodic.now.clear()
        return self._stop.is_set()

    def close(self, timeout: float = 4.0) -> bool:
        """Stop taking jobs and wait for the threads (a running job is cancelled by its runner).

        Args:
            timeout: Seconds to wait for all threads together.

        Returns:
            Whether every thread ended in time.
        """
        self._stop.set()
        for periodic in self._periodic:
            periodic.now.set()
        with self._signal:
            self._generation += 1
            self._signal.notify_all()
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(deadline - time.monotonic(), 0.0))
        alive = [t.name for t in self._threads if t.is_alive()]
        if alive:
            log.warning(f"threads still running after close: {', '.join(alive)}")
        return not alive
