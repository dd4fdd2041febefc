"""One heartbeat for everything that must be kept alive while a run is collected.

A job's lease in a shared journal and a run's claim file on a shared filesystem both need the
same thing: an action repeated every few seconds on a thread of its own, until the work ends
or the action reports that what it kept alive is gone.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

log = logging.getLogger(__name__)


class Heartbeat:
    """Calls ``beat`` every ``interval`` seconds on its own thread until :meth:`stop`, or until ``beat`` returns False.

    An exception in ``beat`` is logged and the next beat comes as planned: a missed beat is
    what the other side's timeout is there for.

    Args:
        beat: The action; returns False when there is nothing left to keep alive.
        interval: Seconds between two beats.
        name: The thread's name.
    """

    def __init__(self, beat: Callable[[], bool], interval: float, name: str) -> None:
        self._beat = beat
        self._interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self) -> Heartbeat:
        """Start beating (the first beat comes after one interval)."""
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop, and wait for a beat in progress to end."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    def is_alive(self) -> bool:
        """Whether it still beats."""
        return self._thread.is_alive()

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            try:
                if not self._beat():
                    return
            except Exception as exc:  # noqa: BLE001 - the next beat may succeed; the caller's checks decide
                log.warning(f"{self._thread.name}: {type(exc).__name__}: {exc}")

    def __enter__(self) -> Heartbeat:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
