"""The catch-up scan: finished runs that no event announced (the actor was down, an event was lost).

Zenoh events have no replay, so a run that finished while no actor listened would never be
collected. The scan walks ``allowed_roots`` down to ``scan_depth`` levels (a root itself is
level 0), finds every logger directory (a folder with ``streams/``) that holds ``_DONE``, and
journals those that have no job yet, with the source ``"scan"``. A run that has a job in any
state, collected and cleaned ones included, is left alone, so nothing is collected twice.
It does not descend into a logger directory, nor follow symlinks to folders.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from herocollector.journal.sqlite import JobStore
from herocollector.run.logdir import DONE_MARKER, STREAMS_DIR

log = logging.getLogger(__name__)

SCAN_SOURCE = "scan"
_BATCH = 500  # runs journalled per transaction: the journal stays free for the workers in between


@dataclass(frozen=True)
class ScanResult:
    """What one scan found.

    Attributes:
        finished: Finished logger directories found.
        journalled: Of those, the ones that had no job and were journalled now.
        seconds: How long the scan took.
    """

    finished: int
    journalled: int
    seconds: float


def finished_runs(
    roots: Sequence[Path], depth: int, stop: threading.Event | None = None, unfinished: bool = False
) -> Iterator[str]:
    """Finished logger directories below ``roots``, at most ``depth`` levels down.

    Args:
        roots: Folders to walk (missing ones are skipped).
        depth: Levels below a root to look at (0: the root itself only).
        stop: Ends the walk early once set.
        unfinished: Also the logger directories without ``_DONE`` (runs followed while written).

    Yields:
        Absolute, normalised paths of folders with ``streams/`` and ``_DONE`` (or, with
        ``unfinished``, just ``streams/``).
    """
    stack = [(str(root), 0) for root in reversed(roots)]
    while stack:
        if stop is not None and stop.is_set():
            return
        folder, level = stack.pop()
        try:
            with os.scandir(folder) as entries:
                names = {e.name: e for e in entries}
        except OSError:
            continue
        streams = names.get(STREAMS_DIR)
        if streams is not None and streams.is_dir(follow_symlinks=False):
            if unfinished or DONE_MARKER in names:
                yield os.path.normpath(folder)
            continue
        if level >= depth:
            continue
        children = sorted(
            (e.path for e in names.values() if e.is_dir(follow_symlinks=False) and not e.name.startswith(".")),
            reverse=True,
        )
        stack.extend((child, level + 1) for child in children)


class Scanner:
    """Runs the catch-up scan into a journal.

    Args:
        journal: Where found runs are journalled.
        roots: ``allowed_roots``.
        depth: ``scan_depth``.
        stop: Set when the service closes; a scan then stops early.
        unfinished: Also journal the runs without ``_DONE`` (``follow``: they are collected while written).
    """

    def __init__(
        self, journal: JobStore, roots: Sequence[Path], depth: int, stop: threading.Event, unfinished: bool = False
    ) -> None:
        self.journal = journal
        self.roots = list(roots)
        self.depth = depth
        self.stop = stop
        self.unfinished = unfinished
        self.last: ScanResult | None = None

    def scan(self) -> ScanResult:
        """Walk the roots once and journal the finished runs without a job.

        Returns:
            What was found.
        """
        started = time.monotonic()
        finished = journalled = 0
        batch: list[str] = []
        for path in finished_runs(self.roots, self.depth, self.stop, self.unfinished):
            finished += 1
            batch.append(path)
            if len(batch) >= _BATCH:
                journalled += self.journal.submit_new(batch, SCAN_SOURCE)
                batch = []
        if batch:
            journalled += self.journal.submit_new(batch, SCAN_SOURCE)
        result = ScanResult(finished, journalled, time.monotonic() - started)
        self.last = result
        if journalled:
            log.info(
                f"scan found {finished} finished run(s), journalled {journalled} new one(s) in {result.seconds:.2f} s"
            )
        return result
