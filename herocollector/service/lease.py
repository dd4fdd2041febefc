"""A job's lease while it is collected, and the guard the output pipeline consults.

On a shared journal a lease that is not renewed in time is taken over by another actor with a new
fencing token; :class:`LeaseKeeper` renews it on a thread and synchronously right before anything is
published or committed, and :class:`JobGuard` is what the pipeline asks between batches.
"""

from __future__ import annotations

import threading

from herocollector.errors import Cancelled, LeaseLost
from herocollector.heartbeat import Heartbeat
from herocollector.journal.base import Job, JobStore


class JobGuard:
    """The pipeline's guard for one job: stop when the service closes or the lease is lost.

    Args:
        lease: The job's lease.
        stopping: Set when the service closes.
    """

    def __init__(self, lease: LeaseKeeper, stopping: threading.Event) -> None:
        self._lease = lease
        self._stopping = stopping

    def check(self) -> None:
        """Between batches: raise Cancelled if the service is closing, LeaseLost if a renewal lost the lease."""
        if self._stopping.is_set():
            raise Cancelled("the service is closing")
        self._lease.raise_if_lost()

    def before_publish(self) -> None:
        """Renew the lease now; raise LeaseLost if it is gone."""
        self._lease.check()


class LeaseKeeper:
    """Holds a job's lease while it is collected: renews it, and tells when it was lost.

    On a shared journal a lease that is not renewed in time is taken over by another actor,
    with a new fencing token. The keeper renews it every third of ``lease`` seconds on a
    thread; :meth:`check` renews it synchronously, right before anything is published.

    Args:
        journal: The job journal.
        job: The job, with the token it was taken under.
        lease: Seconds a lease lasts.
        stopping: Ends the renewals when the service closes.
    """

    def __init__(self, journal: JobStore, job: Job, lease: float, stopping: threading.Event) -> None:
        self._journal = journal
        self._job = job
        self._lease = lease
        self._lost = threading.Event()
        self._stopping = stopping
        self._heartbeat: Heartbeat | None = None

    def __enter__(self) -> LeaseKeeper:
        if self._journal.shared:
            self._heartbeat = Heartbeat(self._renew, self._lease / 3, "herocollector-lease").start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._heartbeat is not None:
            self._heartbeat.stop()

    def _renew(self) -> bool:
        """One renewal; False (no more beats) once the lease is found lost."""
        if self._journal.renew(self._job.id, self._job.token, self._lease):
            return True
        self._lost.set()
        return False

    def raise_if_lost(self) -> None:
        """Raise LeaseLost if a renewal found the lease gone."""
        if self._lost.is_set():
            raise LeaseLost(f"job {self._job.id}: the lease under token {self._job.token} was taken over")

    def check(self) -> None:
        """Renew now; raise LeaseLost if the lease is gone (call right before publishing)."""
        self.raise_if_lost()
        if not self._journal.renew(self._job.id, self._job.token, self._lease):
            self._lost.set()
            self.raise_if_lost()
