"""Whether the journal answers: outages are noticed once, logged once, and reported by ``status()``.

Every part of the service that talks to the journal (the intake, the workers, the periodic
tasks) reports its failures and successes here. The first failure starts an outage and is
logged as an error; further failures are counted and summarised at most once per
:data:`LOG_EVERY` seconds, instead of one line per worker poll. The first success ends the
outage, is logged with its length, and runs the recovery callbacks (the intake replays its
spool, the catch-up scan runs at once).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

log = logging.getLogger(__name__)

LOG_EVERY = 30.0
"""Seconds between two summaries of journal errors during one outage."""


@dataclass(frozen=True)
class Outage:
    """The journal has not answered since ``since``.

    Attributes:
        since: Unix time of the first failure.
        error: The latest error, as ``Type: message``.
        failures: Failed journal calls since the outage began.
    """

    since: float
    error: str
    failures: int

    def to_dict(self) -> dict[str, object]:
        """Plain types, for ``status()``."""
        return {"since": self.since, "seconds": round(time.time() - self.since, 3), "error": self.error}


class JournalHealth:
    """Tracks journal outages for the whole service (thread-safe)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._outage: Outage | None = None
        self._logged_at = 0.0
        self._unlogged = 0
        self._on_recovery: list[Callable[[], None]] = []

    def on_recovery(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` (on the thread that saw the journal answer again) after every outage."""
        self._on_recovery.append(callback)

    @property
    def outage(self) -> Outage | None:
        """The outage in progress, or None while the journal answers."""
        with self._lock:
            return self._outage

    def failed(self, what: str, exc: BaseException) -> None:
        """A journal call failed: start or extend the outage, and log within the rate limit.

        Args:
            what: What was being done (``"journalling 12 events"``), for the log.
            exc: The error.
        """
        error = f"{type(exc).__name__}: {exc}"
        now = time.time()
        with self._lock:
            if self._outage is None:
                self._outage = Outage(now, error, 1)
                self._logged_at = now
                self._unlogged = 0
                log.error(f"the journal is unreachable ({what}): {error}; retrying, events are spooled")
                return
            self._outage = Outage(self._outage.since, error, self._outage.failures + 1)
            self._unlogged += 1
            if now - self._logged_at < LOG_EVERY:
                return
            count, self._unlogged, self._logged_at = self._unlogged, 0, now
            since = now - self._outage.since
        log.error(f"the journal is still unreachable after {since:.0f} s ({count} more failures): {error}")

    def succeeded(self) -> None:
        """A journal call succeeded: end the outage, if any, and run the recovery callbacks."""
        with self._lock:
            outage, self._outage = self._outage, None
        if outage is None:
            return
        log.warning(f"the journal answers again after {time.time() - outage.since:.1f} s ({outage.failures} failures)")
        for callback in self._on_recovery:
            try:
                callback()
            except Exception as exc:  # noqa: BLE001 - recovery work is retried by its own owner
                log.error(f"recovery after the journal outage failed: {type(exc).__name__}: {exc}")
