"""Threads kept for the parts of runs decoded in parallel, and the bounded channel from a part to its caller.

:data:`POOL` runs jobs on daemon threads that stay for :data:`IDLE_SECONDS` after their last
job, so that the parts of one run, and the runs after it, reuse them. A fresh thread costs
more than its start: its memory allocator's heap (pyarrow's pool) starts empty, so every chunk
it decodes first faults in new pages; a kept thread's heap is warm. A job is always handed to
a thread at once, idle or new, so a part never waits for another run's parts to end.

:class:`Channel` is one part's output: the items of ``produce()``, made on a pool thread at
most ``depth`` ahead of the caller, then the producer's exception if it raised one, in order.
Closing stops the producer between two items and waits for it if it started, so nothing of a
part is still being made when the caller has gone on.

May import: nothing of herocollector.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")

IDLE_SECONDS = 30.0
"""How long a pool thread waits for its next job before it ends."""
POLL_SECONDS = 0.05
"""How often a producer waiting on a full channel looks whether it was stopped."""
THREAD_NAME = "herocollector-decode-part"


class Pool:
    """Daemon threads that run jobs, kept for reuse while jobs keep coming."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._idle: list[queue.SimpleQueue[Callable[[], None]]] = []
        self._busy = 0

    def submit(self, job: Callable[[], None]) -> None:
        """Run ``job`` on an idle thread, or on a new one; it must not raise."""
        with self._lock:
            inbox = self._idle.pop() if self._idle else None
            self._busy += 1
        if inbox is not None:
            inbox.put(job)
            return
        inbox = queue.SimpleQueue()
        inbox.put(job)  # before the start: a start that an interrupt cuts short leaves no thread waiting in vain
        try:
            threading.Thread(target=self._serve, args=(inbox,), name=THREAD_NAME, daemon=True).start()
        except BaseException:
            with self._lock:
                self._busy -= 1  # the job may not run; its channel does not wait for a job never taken
            raise

    def busy(self) -> int:
        """Jobs handed out and not finished."""
        with self._lock:
            return self._busy

    def wait_idle(self, timeout: float) -> bool:
        """Wait until no job is running; False if one still is after ``timeout`` seconds."""
        with self._changed:
            return self._changed.wait_for(lambda: self._busy == 0, timeout)

    def _serve(self, inbox: queue.SimpleQueue[Callable[[], None]]) -> None:
        while True:
            try:
                job = inbox.get(timeout=IDLE_SECONDS)
            except queue.Empty:
                with self._lock:
                    if inbox in self._idle:
                        self._idle.remove(inbox)
                        return
                continue  # taken from the idle list just now: its job is on the way
            try:
                job()
            finally:
                with self._changed:
                    self._busy -= 1
                    self._idle.append(inbox)
                    self._changed.notify_all()


POOL = Pool()
"""The process's pool for decoding parts."""


class _Failure:
    """The producer's exception, delivered in order."""

    def __init__(self, exc: BaseException) -> None:
        self.exc = exc


_END = object()


class Channel(Iterator[T]):
    """The items of ``produce()``, made on a :data:`POOL` thread, at most ``depth`` ahead.

    Args:
        produce: Called once, on a pool thread; what it returns is iterated (and closed) there.
        depth: Items the channel holds (at least 1).
    """

    def __init__(self, produce: Callable[[], Iterable[T]], depth: int) -> None:
        self._produce = produce
        self._queue: queue.Queue[object] = queue.Queue(maxsize=max(depth, 1))
        self._stop = threading.Event()
        self._taken = threading.Event()  # a pool thread began the job
        self._done = threading.Event()
        self._submitted = False  # handed to a thread for sure: it will be taken
        self._finished = False

    def start(self, pool: Pool = POOL) -> None:
        """Hand the job to a pool thread."""
        pool.submit(self._run)
        self._submitted = True

    def __iter__(self) -> Channel[T]:
        return self

    def __next__(self) -> T:
        if self._finished:
            raise StopIteration
        item = self._queue.get()
        if item is _END:
            self._finished = True
            raise StopIteration
        if isinstance(item, _Failure):
            self._finished = True
            raise item.exc
        return item  # type: ignore[return-value]

    def stop(self) -> None:
        """Ask the producer to stop, without waiting for it."""
        self._stop.set()
        self._finished = True
        self._drain()

    def close(self) -> None:
        """Stop the producer and wait until it has stopped (if a pool thread has it)."""
        self.stop()
        if not self._submitted and not self._taken.is_set():
            return  # a start cut short by an interrupt: a thread that takes it sees the stop and does nothing
        while not self._done.wait(POLL_SECONDS):
            self._drain()  # a producer blocked on a full channel takes the room and sees the stop

    def _drain(self) -> None:
        while True:
            try:
                self._queue.get_nowait()
            except queue.Empty:
                return

    def _put(self, item: object) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=POLL_SECONDS)
                return True
            except queue.Full:
                continue
        return False

    def _run(self) -> None:
        self._taken.set()
        try:
            if self._stop.is_set():
                return
            items = iter(self._produce())
            try:
                for item in items:
                    if not self._put(item):
                        return
            finally:
                close = getattr(items, "close", None)
                if close is not None:
                    close()
            self._put(_END)
        except BaseException as exc:  # noqa: BLE001 - every failure is handed to the caller
            self._put(_Failure(exc))
        finally:
            self._done.set()
