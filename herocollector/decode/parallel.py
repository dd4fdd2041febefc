"""One run decoded on several threads: parts decoded with ticks from zero, fixed up in order.

A run's segments are read and their frame headers walked in the calling thread
(:func:`herocollector.decode.frames.scan_segment`: cheap, no decompression), and the complete
frames cut into *parts* of about ``chunk_bytes`` compressed bytes: the small files of a rotated
run together, a large segment in several parts. Each part is decompressed and decoded on a
thread of its own (:mod:`herocollector.decode.workers`: threads kept for reuse, each part's
output through a bounded :class:`~herocollector.decode.workers.Channel`; zstd and the record
kernel release the GIL), at most ``threads`` parts at a time, as if it were a run of its own: every
stream's epoch tick counts from zero, and the kernel leaves the ticks raw
(:data:`~herocollector.decode.status.SCALED_VALUES`). At its end a part reports how far it
moved each stream's tick. The calling thread takes the parts in order and adds to each record
the ticks of every part before it (a per-stream prefix sum, wrapping as the kernel's ``int64``
does), then computes ``float64(tick) * epoch_scale``, the same operation the kernel does: the
rows are bit for bit those of a decode on one thread, in the same order.

Errors come in order too: a part's error is raised when the caller reaches it, after every row
before it, so a damaged part never lets a later part's error come first; an error found by the
frame walk (which runs ahead) waits until every part before it has been decoded. Memory stays
bounded per thread: a part's compressed bytes, and at most two chunks of decoded columns (one
queued, one being made).

May import: the other decoder modules and :mod:`herocollector.errors`.
"""

from __future__ import annotations

import io
import os
import threading
from collections import deque
from collections.abc import Callable, Generator, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Protocol

import numpy as np
import zstandard

from herocollector.decode import status as codes
from herocollector.decode.columns import Columns, RecordDecoder, StreamTable
from herocollector.decode.frames import Chunk, Readable, ReadBuffers, Span, decompress_span, merged, scan_segment
from herocollector.decode.records import Records
from herocollector.decode.workers import Channel

_local = threading.local()

PART_QUEUE = 1
"""Decoded chunks a part's thread may have ready before the caller takes them."""

PIPELINE_THREADS = 2
"""Threads the one-thread decode keeps busy: a reader thread decompresses ahead of the one that decodes."""


def default_threads() -> int:
    """Threads that decode one run when none are asked for: the cores, if more than the one-thread decode uses.

    On a machine with no more cores than :data:`PIPELINE_THREADS`, both are already busy with
    one thread and its reader, and decoding in parts only adds work (the frame walk on its own,
    the ticks fixed up): on two cores a run took 1.3 to 1.5 times as long in two parts at a time
    as on one thread (``benchmarks/collect_bench.py``, ``threads 2 / threads 1``).
    """
    cores = os.cpu_count() or 1
    return cores if cores > PIPELINE_THREADS else 1


class Opened(Protocol):
    """A segment as the decoder opens it (``codec._Source``)."""

    @property
    def name(self) -> str | Path:
        """The segment's name in errors."""

    def open(self) -> BinaryIO | io.RawIOBase:
        """The segment, opened at its start."""


def coalesced(chunks: Iterable[Chunk], chunk_bytes: int) -> Iterator[Chunk]:
    """The chunks, with runs of small chunks of whole frames put together up to ``chunk_bytes``.

    Chunks smaller than half a chunk (a file's last frames, or the small files of a rotated run)
    go together, in order: one kernel call and one batch instead of one per file. Damage still
    comes in order, after everything before it.
    """
    pending: list[Chunk] = []
    held = 0
    try:
        for chunk in chunks:
            if chunk.piece or chunk.doomed or held + chunk.data.size > chunk_bytes:
                if pending:
                    yield merged(pending)
                pending, held = [], 0
            if chunk.piece or chunk.doomed:
                yield chunk
                continue
            pending.append(chunk)
            held += chunk.data.size
            if held >= chunk_bytes // 2:  # big enough: do not keep the decoder waiting
                yield merged(pending)
                pending, held = [], 0
    except GeneratorExit:
        raise
    except BaseException:
        if pending:
            yield merged(pending)
        raise
    if pending:
        yield merged(pending)


@dataclass(frozen=True)
class _Advance:
    """How far a part moved each stream slot's tick (the last item of a part)."""

    ticks: np.ndarray


def _parts(
    sources: Sequence[Opened], readable: Callable[[BinaryIO | io.RawIOBase], Readable], chunk_bytes: int, max_frame: int
) -> Generator[list[Span], None, None]:
    """The run's frames, walked in order and cut into parts of at least ``chunk_bytes`` compressed bytes.

    A walk error (or the source's own, e.g. a run that changed) comes after the part holding
    every span before it.
    """
    space = ReadBuffers(chunk_bytes)
    pending: list[Span] = []
    held = 0
    try:
        for source in sources:
            with source.open() as fh:  # closed when the segment ends, or decoding stops
                for span in scan_segment(readable(fh), source.name, chunk_bytes, space, max_frame, keep=True):
                    pending.append(span)
                    held += span.nbytes
                    if held >= chunk_bytes:
                        yield pending
                        pending, held = [], 0
    except GeneratorExit:
        raise
    except BaseException:
        if pending:
            yield pending
        raise
    if pending:
        yield pending


class _Part:
    """What decodes one part, on a pool thread (its ``Channel`` calls it there)."""

    def __init__(
        self,
        spans: list[Span],
        streams: StreamTable,
        mode: int,
        chunk_bytes: int,
        max_frame: int,
        max_record: int,
        density: list[tuple[float, float]],
    ) -> None:
        self.spans = spans
        self.density = density  # records and elements per byte so far, shared by the run's parts
        self.streams = streams
        self.mode = mode
        self.chunk_bytes = chunk_bytes
        self.max_frame = max_frame
        self.max_record = max_record

    def __call__(self) -> Iterator[Records | Columns | _Advance]:
        # A pool thread keeps its decompressor: a new one allocates (and faults in) its workspace.
        dctx = getattr(_local, "dctx", None)
        if dctx is None:
            dctx = _local.dctx = zstandard.ZstdDecompressor()
        size = self.chunk_bytes
        chunks = (c for span in self.spans for c in decompress_span(span, size, dctx, self.max_frame))
        ticks = np.zeros(len(self.streams), dtype=np.int64)
        decoder = RecordDecoder(self.streams, ticks, self.mode, self.max_record)
        decoder.density = self.density[0]  # sized from the parts before: fewer, fuller column arrays
        yield from decoder.decode(coalesced(chunks, size))
        self.density[0] = decoder.density
        self.spans = []  # the compressed bytes are not needed any more
        yield _Advance(ticks)


def decode_in_parts(
    sources: Sequence[Opened],
    readable: Callable[[BinaryIO | io.RawIOBase], Readable],
    streams: StreamTable,
    ticks: np.ndarray,
    scaled: bool,
    threads: int,
    chunk_bytes: int,
    max_frame: int,
    max_record: int,
) -> Iterator[Records | Columns]:
    """Decode a run's segments on ``threads`` threads; the same rows, in the same order, as one thread.

    Args:
        sources: The segments, in name order.
        readable: The opened segment as the frame walk reads it.
        streams: The run's streams.
        ticks: Each slot's last tick before the first segment; updated in place, as the
            one-thread decoder updates it.
        scaled: Columns (scaled epochs and values), else Records (raw ticks and quanta).
        threads: Parts decoded at the same time (at least 1).
        chunk_bytes: Decompressed bytes per chunk, and compressed bytes per part (at least).
        max_frame: Most decompressed bytes of one frame.
        max_record: Most decompressed bytes of one record.

    Yields:
        Columns (or Records) in file order.

    Raises:
        SegmentError: The first damage in file order, as the one-thread decoder reports it.
    """
    mode = codes.SCALED_VALUES if scaled else codes.RAW
    parts = _parts(sources, readable, chunk_bytes, max_frame)
    running: deque[Channel[Records | Columns | _Advance]] = deque()
    walk_error: BaseException | None = None
    walked = False
    density = [RecordDecoder.DENSITY]

    def launch() -> None:
        nonlocal walk_error, walked
        while not walked and len(running) < max(threads, 1):
            try:
                spans = next(parts)
            except StopIteration:
                walked = True
                return
            except Exception as exc:  # noqa: BLE001 - raised after every part before it is decoded
                walk_error, walked = exc, True
                return
            decode = _Part(spans, streams, mode, chunk_bytes, max_frame, max_record, density)
            part = Channel(decode, PART_QUEUE)
            running.append(part)
            part.start()

    try:
        launch()
        while running:
            part = running[0]
            for item in part:
                if isinstance(item, _Advance):
                    ticks += item.ticks  # wraps, as the kernel's int64 does
                    continue
                _fix_ticks(item, ticks, streams)
                yield item
            running.popleft().close()
            launch()
        if walk_error is not None:
            raise walk_error
    finally:
        for part in running:  # all asked to stop first, so none decodes on while another is awaited
            part.stop()
        for part in running:
            part.close()
        parts.close()


def _fix_ticks(item: Records | Columns, base: np.ndarray, streams: StreamTable) -> None:
    """Ticks counted from the part's start made absolute (``base``: each slot's tick before the part)."""
    if isinstance(item, Columns):
        ticks = item.epochs.view(np.int64)
        if base.any():
            ticks += base[item.slots]
        # The kernel's own operation, so the epochs are bit for bit the one-thread decoder's.
        np.multiply(ticks.astype(np.float64), streams.epoch_scales[item.slots], out=item.epochs)
    elif base.any():
        item.ticks[...] += base[np.searchsorted(streams.ids, item.stream_ids.astype(np.uint64))]
