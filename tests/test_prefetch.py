"""Decoding ahead on threads: the pipeline's runs in flight, and an interrupt while a thread starts.

An interrupt (Ctrl-C: a real SIGINT, sent with ``signal.pthread_kill`` to the main thread) can
arrive while the pipeline is inside ``Thread.start()``: before the thread exists, or after it
exists but before ``start()`` returns. Either way the write fails with that interrupt, nothing
is published, and no decoding thread is left running.
"""

from __future__ import annotations

import signal
import sys
import threading
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest

from herocollector.decode.prefetch import Prefetch, prefetched, prefetched_once
from herocollector.errors import SegmentError
from herocollector.output.pipeline import OutputPipeline, WriteContext
from herocollector.testing.runs import build_run

DECODE_THREAD = "herocollector-decode"


def _decoding_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("herocollector-") and t.is_alive()]


def _read(path: Path) -> pa.Table:
    with pa.ipc.open_file(str(path)) as reader:
        return reader.read_all()


class _InterruptThreadStart:
    """Sends SIGINT to the main thread at a point inside the ``nth`` start of a decoding thread.

    ``where="entry"``: as ``Thread.start`` is entered (the thread is never created);
    ``where="wait"``: as it waits for the new thread to report (the thread exists, ``start()``
    has not returned). The profiler only picks the moment; the interrupt is a real signal,
    raised by Python's own SIGINT handler in the main thread.
    """

    def __init__(self, where: str, nth: int) -> None:
        self.where = where
        self.nth = nth
        self.starts = 0
        self.fired = False

    def _profile(self, frame: types.FrameType, event: str, arg: Any) -> None:
        if event != "call" or self.fired:
            return
        if self.where == "entry":
            if frame.f_code is not threading.Thread.start.__code__:
                return
            thread = frame.f_locals.get("self")
        else:
            caller = frame.f_back
            if frame.f_code is not threading.Event.wait.__code__ or caller is None:
                return
            if caller.f_code is not threading.Thread.start.__code__:
                return
            thread = caller.f_locals.get("self")
        if not isinstance(thread, threading.Thread) or thread.name != DECODE_THREAD:
            return
        self.starts += 1
        if self.starts == self.nth:
            self.fired = True
            sys.setprofile(None)
            signal.pthread_kill(threading.main_thread().ident or 0, signal.SIGINT)

    def __enter__(self) -> _InterruptThreadStart:
        self._previous = signal.signal(signal.SIGINT, signal.default_int_handler)
        sys.setprofile(self._profile)
        return self

    def __exit__(self, *exc: object) -> None:
        sys.setprofile(None)
        signal.signal(signal.SIGINT, self._previous)


@pytest.fixture
def three_runs(tmp_path: Path) -> list[Path]:
    return [build_run(tmp_path / f"run-{i}", seed=70 + i, n_records=400, rotate_bytes=1500).path for i in range(3)]


@pytest.mark.skipif(threading.current_thread() is not threading.main_thread(), reason="signals need the main thread")
@pytest.mark.parametrize("where", ["entry", "wait"])
@pytest.mark.parametrize("nth", [1, 2], ids=["first-thread", "second-thread"])
def test_an_interrupt_while_a_decoding_thread_starts_is_what_the_write_raises(
    tmp_path: Path, three_runs: list[Path], where: str, nth: int
) -> None:
    out = tmp_path / "out"
    out.mkdir()
    pipeline = OutputPipeline(prefetch_runs=1, chunk_bytes=4096)
    plan = pipeline.plan([pipeline.plan_run(p) for p in three_runs], lambda index, run, stream: out / f"{index}.arrow")
    before = _decoding_threads()
    with _InterruptThreadStart(where, nth) as interrupt, pytest.raises(KeyboardInterrupt):
        pipeline.write(plan, WriteContext())
    assert interrupt.fired
    assert [t for t in _decoding_threads() if t not in before] == []
    assert sorted(p.name for p in out.iterdir()) == []  # nothing published, no temporary file left


def test_the_same_pipeline_writes_all_runs_after_an_interrupted_write(tmp_path: Path, three_runs: list[Path]) -> None:
    out = tmp_path / "out"
    out.mkdir()
    pipeline = OutputPipeline(prefetch_runs=2, chunk_bytes=4096)
    plan = pipeline.plan([pipeline.plan_run(p) for p in three_runs], lambda index, run, stream: out / f"{index}.arrow")
    with _InterruptThreadStart("entry", 2), pytest.raises(KeyboardInterrupt):
        pipeline.write(plan, WriteContext())
    sequential = OutputPipeline(prefetch_runs=0, chunk_bytes=4096)
    expected = sequential.plan(
        [sequential.plan_run(p) for p in three_runs], lambda i, r, s: tmp_path / f"seq-{i}.arrow"
    )
    sequential.write(expected, WriteContext())
    written = pipeline.write(plan, WriteContext())
    assert [w.path for w in written] == [out / f"{i}.arrow" for i in range(3)]
    for i in range(3):
        assert _read(out / f"{i}.arrow").equals(_read(tmp_path / f"seq-{i}.arrow"))
        assert _read(out / f"{i}.arrow").num_rows > 0


# ----------------------------------------------------------------------------------------
# Prefetch, the one helper of the reader thread and the pipeline
# ----------------------------------------------------------------------------------------

READER = "herocollector-test-reader"
DEADLINE = 60.0  # seconds; generous on a loaded 2-core machine, and only ever reached by a hang


class _Source:
    """A producer that counts what it made and records on which thread it was closed."""

    def __init__(self, count: int, fail: BaseException | None = None) -> None:
        self.count = count
        self.fail = fail
        self.made = 0
        self.closed_on: str | None = None
        self.made_enough = threading.Event()
        self.enough = 0

    def __call__(self) -> Iterator[int]:
        try:
            for i in range(self.count):
                self.made += 1
                if self.made >= self.enough > 0:
                    self.made_enough.set()
                yield i
            if self.fail is not None:
                raise self.fail
        finally:
            self.closed_on = threading.current_thread().name


def test_items_arrive_in_order_and_the_thread_ends() -> None:
    source = _Source(1000)
    with Prefetch(source, 3, name="herocollector-test") as items:
        assert list(items) == list(range(1000))
    assert source.closed_on == "herocollector-test"
    assert [t for t in threading.enumerate() if t.name == "herocollector-test"] == []


def test_the_producers_exception_is_raised_in_the_consumer_after_its_items() -> None:
    got: list[int] = []
    with pytest.raises(SegmentError, match="damaged") as info:
        got.extend(prefetched(_Source(50, SegmentError("damaged", "segment-000001.seg.zst", 12)), 2, name=READER))
    assert got == list(range(50))
    assert info.value.path == "segment-000001.seg.zst" and info.value.offset == 12
    assert not [t for t in threading.enumerate() if t.name == READER]


def test_the_producer_runs_at_most_depth_items_ahead_and_stops_when_closed() -> None:
    source = _Source(100_000)
    source.enough = 5  # 4 in the queue, 1 waiting to be put
    items = Prefetch(source, 4, name="herocollector-test")
    items.start()
    assert source.made_enough.wait(DEADLINE)
    items.close()
    assert source.made == 5  # an unbounded queue would have taken far more while the consumer was away
    assert source.closed_on == "herocollector-test"  # closed where it ran
    assert [t for t in threading.enumerate() if t.name == "herocollector-test"] == []
    assert list(items) == []  # a closed prefetch yields nothing more


def test_a_prefetch_closed_before_it_started_never_runs_its_producer() -> None:
    source = _Source(10)
    items = Prefetch(source, 2)
    items.close()
    items.start()
    assert source.made == 0 and source.closed_on is None
    assert list(items) == []


def test_a_consumer_that_stops_early_stops_the_thread() -> None:
    source = _Source(100_000)
    generator = prefetched(source, 2, name=READER)
    assert next(generator) == 0
    generator.close()
    assert source.closed_on == READER
    assert source.made < 100_000
    assert not [t for t in threading.enumerate() if t.name == READER]


def test_items_are_made_in_the_calling_thread_until_they_are_worth_a_thread() -> None:
    main = threading.current_thread().name
    small = _Source(5)
    assert list(prefetched_once(small, 2, lambda: False, name=READER)) == list(range(5))
    assert small.closed_on == main  # no thread at all

    made_on: list[str] = []
    closed_on: list[str] = []

    def large() -> Iterator[int]:
        try:
            for i in range(100):
                made_on.append(threading.current_thread().name)
                yield i
        finally:
            closed_on.append(threading.current_thread().name)

    assert list(prefetched_once(large, 2, lambda: len(made_on) > 10, name=READER)) == list(range(100))
    assert made_on == [main] * 11 + [READER] * 89
    assert closed_on == [READER]  # the rest was made, and the iterator closed, on the thread
    assert not [t for t in threading.enumerate() if t.name == READER]


def test_an_iterator_that_never_reached_the_thread_is_closed_in_the_caller_and_errors_keep_their_order() -> None:
    source = _Source(100)
    generator = prefetched_once(source, 2, lambda: False, name=READER)
    assert next(generator) == 0
    generator.close()
    assert source.closed_on == threading.current_thread().name and source.made == 1

    got: list[int] = []
    failing = _Source(30, SegmentError("damaged", "segment-000001.seg.zst", 7))
    with pytest.raises(SegmentError, match="damaged"):
        got.extend(prefetched_once(failing, 2, lambda: failing.made >= 20, name=READER))
    assert got == list(range(30)) and failing.closed_on == READER
    assert not [t for t in threading.enumerate() if t.name == READER]
