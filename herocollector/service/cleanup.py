"""Cleaning collected runs: segments into the trash, restored on request, purged after a grace period.

Only a logger directory inside ``allowed_roots`` (symlinks resolved) is touched, and only its
``*.seg.zst`` files and ``streams/``. Without ``allowed_roots`` nothing is ever cleaned. A run
that was not collected is refused unless ``force`` is given. See :mod:`herocollector.run.trash`
for the two-phase deletion itself.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from pathlib import Path

from herocollector.config import ServiceConfig
from herocollector.journal.sqlite import Job, JobState, JobStore
from herocollector.run import logdir, trash

log = logging.getLogger(__name__)


class RunCleaner:
    """Cleans, restores and purges runs for the service.

    Args:
        config: The service configuration (``allowed_roots``, ``cleanup_grace``).
        journal: The job journal.
        stopping: Ends any wait for ``_DONE`` when the service closes.
    """

    def __init__(self, config: ServiceConfig, journal: JobStore, stopping: threading.Event) -> None:
        self.config = config
        self.journal = journal
        self.stopping = stopping

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
            force: Also clean a run that was not collected.

        Returns:
            True if every requested run was cleaned; False if any was refused or its
            ``_DONE`` did not appear in time (the reasons are logged). A False answer means
            that run was left as it was.
        """
        if path is None:
            targets: list[tuple[str, Job | None]] = [
                (job.path, job) for job in self.journal.jobs(JobState.DONE) if job.path
            ]
        else:
            path = os.path.normpath(str(path))
            targets = [(path, self.journal.by_path(path))]
        ok = True
        for target, job in targets:
            refusal = self.refusal(target, job, force, keep_meta)
            if refusal:
                log.warning(f"cleanup of {target} refused: {refusal}")
                ok = False
                continue
            real = Path(os.path.realpath(target))
            if wait_for_done and not logdir.wait_for_done([real], backoff, timeout, stop=self.stopping):
                log.warning(f"cleanup of {target} not done: no _DONE within {timeout} ms")
                ok = False
                continue
            trash.soft_delete(real, keep_meta=keep_meta)
            if job is not None:
                self.journal.mark_cleaned(job.id, time.time() + self.config.cleanup_grace)
            else:
                log.warning(f"{target} has no job; its trash is not purged automatically")
            if self.config.cleanup_grace == 0:
                self._purge(real, job)
            log.info(
                f"herocollector: cleaned {target} (keep_meta={keep_meta}); "
                f"trash deleted for good after {self.config.cleanup_grace:g} s"
            )
        return ok

    def restore(self, path: str) -> bool:
        """Put a cleaned run's segments back from the trash (before the grace period ends).

        Args:
            path: The logger directory.

        Returns:
            True if anything was restored.
        """
        path = os.path.normpath(str(path))
        job = self.journal.by_path(path)
        if self.refusal(path, job, force=True, restoring=True) is not None:
            return False
        restored = trash.restore(Path(os.path.realpath(path)))
        if job is not None and restored:  # nothing put back (purged already): the run stays cleaned
            self.journal.restored(job.id)
        log.info(f"restored {len(restored)} item(s) of {path}")
        return bool(restored)

    def purge_due(self) -> None:
        """Delete the trash whose grace period is over (a periodic task)."""
        for job in self.journal.in_trash():
            if job.trash_until is None or job.trash_until > time.time() or job.path is None:
                break
            try:
                self._purge(Path(os.path.realpath(job.path)), job)
            except OSError as exc:
                log.warning(f"purging the trash of {job.path} failed: {exc}")

    def _purge(self, run: Path, job: Job | None) -> None:
        trash.purge(run, self.config.cleanup_grace)
        if job is not None and not trash.trashed(run):
            self.journal.purged(job.id)

    def refusal(
        self, target: str, job: Job | None, force: bool, keep_meta: bool = True, restoring: bool = False
    ) -> str | None:
        """Why a cleanup (or with ``restoring`` a restore) must not touch ``target``, or None if it may."""
        if not self.config.allowed_roots:
            return "no allowed_roots configured"
        if not os.path.isabs(target):
            return "path is not absolute"
        real = Path(os.path.realpath(target))
        if not any(real.is_relative_to(root) for root in self.config.allowed_roots):
            return "outside allowed_roots"
        streams_trashed = restoring and any(
            p.name.startswith(f"{logdir.STREAMS_DIR}.trash-") for p, _ in trash.trashed(real)
        )
        if not real.is_dir() or not ((real / logdir.STREAMS_DIR).is_dir() or streams_trashed):
            return "not a logger directory"
        if not keep_meta and (real / logdir.STREAMS_DIR).is_symlink():
            return "streams/ is a symlink; it is not removed with keep_meta=False"
        if (job is None or job.state != JobState.DONE) and not force:
            return f"run not collected (state {job.state.value if job else 'unknown'}); pass force=True to clean anyway"
        return None
