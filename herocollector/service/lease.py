"""A job's lease while it is collected, and the guard the output pipeline consults.

On a shared journal a lease that is not renewed in time is taken over by another actor with a new
fencing token; :class:`LeaseKeeper` renews it on a thread, and makes sure right before anything is
published or committed that the lease was renewed less than half a lease ago (renewing it then if it
was not), and :class:`JobGuard` is what the pipeline asks between batches.

A journal that only this actor uses (SQLite) never hands a job to anyone else, so its leases are
neither renewed nor checked there: that would be a durable commit per check for nothing.
"""

from __future__ import annotations

import threading
import time

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


FRESH = 0.5
"""Share of the lease that may have passed since the last renewal for :meth:`LeaseKeeper.check` to rely on it."""


class LeaseKeeper:
    """Holds a job's lease while it is collected: renews it, and tells when it was lost.

    On a shared journal a lease that is not renewed in time is taken over by another actor,
    with a new fencing token. The keeper renews it every third of ``lease`` seconds on a
    thread; :meth:`check`, called right before anything is published, renews it synchronously
    unless a renewal that began less than ``FRESH`` of a lease ago succeeded: then at least half
    of the lease is left, by the journal's clock, for what the caller does next. So a job
    renews once before its first publish, not once per output, and the commit still happens
    within a renewed lease. On a journal only this actor uses, nothing is renewed.

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
        self._renewed_lock = threading.Lock()
        self._renewed_at: float | None = None  # monotonic start of the last successful renewal
        self.renewals = 0
        """Renewals made (by the heartbeat and by :meth:`check`)."""

    def __enter__(self) -> LeaseKeeper:
        if self._journal.shared:
            self._heartbeat = Heartbeat(self._renew, self._lease / 3, "herocollector-lease").start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._heartbeat is not None:
            self._heartbeat.stop()

    def _renew(self) -> bool:
        """One renewal; False (no more beats) once the lease is found lost."""
        issued = time.monotonic()  # the journal's new expiry is at least a lease after this
        renewed = self._journal.renew(self._job.id, self._job.token, self._lease)
        with self._renewed_lock:
            self.renewals += 1
            if renewed:
                self._renewed_at = issued if self._renewed_at is None else max(self._renewed_at, issued)
        if not renewed:
            self._lost.set()
        return renewed

    def _fresh(self) -> bool:
        """Whether a successful renewal began less than ``FRESH`` of a lease ago."""
        with self._renewed_lock:
            at = self._renewed_at
        return at is not None and time.monotonic() - at < self._lease * FRESH

    def raise_if_lost(self) -> None:
        """Raise LeaseLost if a renewal found the lease gone."""
        if self._lost.is_set():
            raise LeaseLost(f"job {self._job.id}: the lease under token {self._job.token} was taken over")

    def check(self) -> None:
        """Make sure the lease holds for at least half a lease more (call right before publishing).

        Renews it unless a renewal began less than half a lease ago; on a journal only this
        actor uses there is nothing to renew.

        Raises:
            LeaseLost: The lease is gone.
        """
        self.raise_if_lost()
        if not self._journal.shared or self._fresh():
            return
        if not self._renew():
            self.raise_if_lost()
