"""Items produced ahead on a thread: a bounded queue filled by a thread, closed promptly.

:class:`Prefetch` runs ``produce()`` on a thread of its own, at most ``depth`` items ahead of
the consumer; items, and finally the producer's exception if it raised one, arrive in order
in the consumer. :func:`prefetched` is the same as a generator, and :func:`prefetched_once`
makes the first items in the consumer's thread, until a test says the rest is worth a thread.
It is the one prefetcher of the package: the segment decoder reads and decompresses chunks
ahead of the record decoder with it (:class:`herocollector.decode.codec.SegmentDecoder`), and
the output pipeline (:mod:`herocollector.output.pipeline`) decodes whole runs ahead of the one
being written, each through its own queue, started in run order.

Closing stops the producer between two items (it closes ``produce()``'s iterator on its own
thread, so a reader and the run directory it holds are closed where they were used) and
waits for it: no thread outlives its consumer. An exception raised in the consumer while a
thread is being started (a Ctrl-C inside ``Thread.start()``) leaves a thread that may or may
not exist; closing tells the two apart and joins only a thread that runs.

May import: nothing of herocollector (a leaf of the decoder).
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Generator, Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")

POLL_SECONDS = 0.05
"""How often a producer waiting on a full queue looks whether it was stopped."""

START_WAIT_SECONDS = 30.0
"""How long closing waits for a thread whose ``start()`` was interrupted to report that it runs.
Only a thread listed by ``threading.enumerate()`` is waited for; one that was created reports at
once. The bound is for the one instant at which an interrupt leaves a thread listed that was
never created (between ``start()`` listing it and creating it), so closing cannot hang."""


class _Failure:
    """An exception raised by the producer, delivered in order through the queue."""

    def __init__(self, exc: BaseException) -> None:
        self.exc = exc


_END = object()


class Prefetch(Iterator[T]):
    """Iterate ``produce()`` on a thread, ``depth`` items ahead of the consumer.

    The thread starts with :meth:`start`, or with the first item asked for. Use as a context
    manager, or call :meth:`close`, whatever happens.

    Args:
        produce: Called once, on the thread; what it returns is iterated there (and closed
            there, if it has ``close``).
        depth: Items the queue holds (at least 1).
        name: The thread's name.
    """

    def __init__(self, produce: Callable[[], Iterable[T]], depth: int, *, name: str = "herocollector-prefetch") -> None:
        self._produce = produce
        self._name = name
        self._queue: queue.Queue[object] = queue.Queue(maxsize=max(depth, 1))
        self._stop = threading.Event()
        self._began = threading.Event()  # set first thing on the thread: it runs, so it can be joined
        self._thread: threading.Thread | None = None
        self._launched = False  # start() returned
        self._done = False

    def __enter__(self) -> Prefetch[T]:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def start(self) -> None:
        """Start the thread, unless it was started (or the prefetch closed) already."""
        if self._thread is not None or self._stop.is_set():
            return
        self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
        self._thread.start()
        self._launched = True

    def __iter__(self) -> Prefetch[T]:
        return self

    def __next__(self) -> T:
        if self._done:
            raise StopIteration
        self.start()
        item = self._queue.get()
        if item is _END:
            self._done = True
            raise StopIteration
        if isinstance(item, _Failure):
            self._done = True
            raise item.exc
        return item  # type: ignore[return-value]

    def stop(self) -> None:
        """Ask the producer to stop, without waiting for it (see :meth:`close`)."""
        self._stop.set()
        self._done = True
        self._drain()

    def close(self) -> None:
        """Stop the producer and wait until its thread has ended (if it ever ran)."""
        self.stop()
        thread = self._thread
        if thread is None:
            return
        if not self._launched and not self._began.is_set():
            # start() was interrupted: the thread may never have been created. One that was is
            # listed, reports at once, sees the stop and ends without calling produce().
            if thread not in threading.enumerate() or not self._began.wait(START_WAIT_SECONDS):
                return
        while thread.is_alive():
            self._drain()  # a producer blocked on a full queue takes the room and then sees the stop
            thread.join(POLL_SECONDS)

    def _drain(self) -> None:
        while True:
            try:
                self._queue.get_nowait()
            except queue.Empty:
                return

    def _put(self, item: object) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=POLL_SECONDS)  # wakes to notice the stop when the consumer is gone
                return True
            except queue.Full:
                continue
        return False

    def _run(self) -> None:
        self._began.set()
        if self._stop.is_set():
            return
        try:
            items = iter(self._produce())
            try:
                for item in items:
                    if not self._put(item) or self._stop.is_set():
                        return  # not one more item made for a consumer that is gone
            finally:
                close = getattr(items, "close", None)
                if close is not None:
                    close()
        except BaseException as exc:  # noqa: BLE001 - every failure is handed to the consumer
            self._put(_Failure(exc))
            return
        self._put(_END)


def prefetched(
    produce: Callable[[], Iterable[T]], depth: int, *, name: str = "herocollector-prefetch"
) -> Generator[T, None, None]:
    """Run ``produce()`` in a thread, ``depth`` items ahead of the consumer (a :class:`Prefetch`).

    Items (and finally the producer's exception, if any) arrive in order. Closing this
    generator (or an exception in the consumer) stops the thread and waits for it, so no
    thread outlives its consumer.
    """
    with Prefetch(produce, depth, name=name) as items:
        yield from items


def prefetched_once(
    produce: Callable[[], Iterable[T]],
    depth: int,
    worth_a_thread: Callable[[], bool],
    *,
    name: str = "herocollector-prefetch",
) -> Generator[T, None, None]:
    """Like :func:`prefetched`, but the items are made in the calling thread until ``worth_a_thread()``.

    Asked before each item: once it is true, the rest of the same iterator is made on a thread,
    ahead of the consumer. For input of unknown size (a stream, a pipe), so that a small one
    costs no thread, which would have nothing to overlap, and a large one still gets one.
    The iterator is closed on the thread that made its last item.
    """
    items = iter(produce())
    handed = False

    def take() -> Iterable[T]:
        nonlocal handed
        handed = True
        return items

    try:
        while not worth_a_thread():
            try:
                item = next(items)
            except StopIteration:
                return
            yield item
        with Prefetch(take, depth, name=name) as ahead:
            yield from ahead
    finally:
        close = getattr(items, "close", None)
        if not handed and close is not None:  # never reached the thread (or it stopped before taking it)
            close()
