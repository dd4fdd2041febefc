"""Segment codec for the disco data logger's ``.seg.zst`` format.

A segment is a concatenation of zstd frames (and possibly skippable frames); a zstd frame
decompresses to whole records; a record is a run of LEB128 varints::

    stream_id, zigzag(epoch_delta_ticks), n, first_index, gap_1..gap_{n-1}, zigzag(q_0..q_{n-1})

Decoding is one pipeline per logger run:

* a reader thread reads the segment files in order, walks the zstd frame headers with a
  compiled kernel (:func:`herocollector.decode.kernel.scan_frames`) and decompresses consecutive
  frames together with ``zstandard``, streaming across frames, into chunks of at most
  ``chunk_bytes`` decompressed bytes (a frame larger than that is streamed on its own, in
  pieces; the small last chunks of segment files are put together);
* the calling thread decodes each chunk with one call of the compiled record kernel
  (:func:`herocollector.decode.kernel.decode_records`): varints, zigzag, index gaps, per-stream
  epoch ticks (carried across chunks and segment files), scales and the stream selection in
  one pass that writes the output columns directly, with no Python step per record;
* while chunk k is decoded, the reader decompresses chunk k+1 (a queue of two chunks): both
  the kernel and zstd run without the GIL.

The kernels are called through :mod:`herocollector.decode.native`, which loads their machine code
from a cache (numba compiles them once per installation and CPU).

The pieces live in their own modules: :mod:`herocollector.decode.records` (records, varints,
the encoder), :mod:`herocollector.decode.frames` (frame walk, zstd, the reader thread) and
:mod:`herocollector.decode.columns` (the record decoder and its output); this module holds
:class:`SegmentDecoder` and re-exports the names other modules import from here.

Memory is bounded by a few chunks and their columns, plus one record of at most
``max_record_bytes`` (:data:`MAX_RECORD_BYTES`), whatever the input: frames of more than
``max_frame_bytes`` (:data:`MAX_FRAME_BYTES`) and larger records are refused with a
``SegmentError`` (docs/architecture.md, "Memory", gives the bound). Independent runs can be
decoded in parallel threads: a decoder shares no mutable state with any other.

Damage stops the kernel at once; the exact error (which file, which frame, which byte of the
frame's content) is then worked out on that frame only, so that it is the error of the first
damaged frame, exactly as a frame-by-frame reference decoder reports it.
"""

from __future__ import annotations

import io
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Protocol

import numpy as np
import zstandard

from herocollector.decode import native as kernel  # re-exported: ``codec.kernel`` is the loaded kernels
from herocollector.decode.columns import MAX_RECORD_BYTES, Columns, RecordDecoder, StreamTable
from herocollector.decode.frames import MAX_FRAME_BYTES, SINGLE_PASS_BYTES, Chunk, Readable, ReadBuffers, read_segment
from herocollector.decode.parallel import coalesced, decode_in_parts
from herocollector.decode.prefetch import prefetched, prefetched_once
from herocollector.decode.records import (
    Records,
    TickState,
    encode_records,
    encode_segment,
    encode_varints,
    zigzag_decode,
    zigzag_encode,
)
from herocollector.decode.status import MAX_VARINT_BYTES

__all__ = [
    "DEFAULT_CHUNK_BYTES",
    "MAX_CHUNK_BYTES",
    "MAX_FRAME_BYTES",
    "MAX_RECORD_BYTES",
    "MAX_VARINT_BYTES",
    "MIN_CHUNK_BYTES",
    "PIPELINE_DEPTH",
    "SINGLE_PASS_BYTES",
    "Columns",
    "Records",
    "SegmentDecoder",
    "SegmentSource",
    "StreamTable",
    "TickState",
    "encode_records",
    "encode_segment",
    "encode_varints",
    "kernel",
    "zigzag_decode",
    "zigzag_encode",
]

DEFAULT_CHUNK_BYTES = 1 << 20
"""Decompressed bytes decoded per step; bounds the decoder's working memory."""
MIN_CHUNK_BYTES = 1 << 12
"""Smaller ``chunk_bytes`` values are raised to this."""
MAX_CHUNK_BYTES = 1 << 30
"""Larger ``chunk_bytes`` values are lowered to this (list offsets are ``int32``)."""
PIPELINE_DEPTH = 2
"""Decompressed chunks the reader thread may be ahead of the decoder."""


class SegmentSource(Protocol):
    """A segment the caller opens itself (e.g. relative to a directory fd, with ``O_NOFOLLOW``).

    :meth:`SegmentDecoder.columns` takes these as well as paths. ``open()`` is called once, on
    the reader thread, when the decoder reaches this segment; the decoder closes the file
    object when the segment ends (or decoding stops). An exception from ``open()`` ends the
    decode with that exception.

    Attributes:
        name: The segment's name in errors (``SegmentError.path``).
    """

    @property
    def name(self) -> str | Path:
        """The segment's name in errors."""

    def open(self) -> BinaryIO:
        """The segment, opened for binary reading at its start; the decoder closes it."""


# ----------------------------------------------------------------------------------------
# Segment decoding
# ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Source:
    """A segment to decode: a path, a caller's open file object, or an opener."""

    name: str | Path
    fh: BinaryIO | Readable | None = None
    opener: Callable[[], BinaryIO | io.RawIOBase] | None = None

    def open(self) -> BinaryIO | io.RawIOBase:
        """The segment, opened for reading (a caller's file object is not closed after)."""
        if self.opener is not None:
            return self.opener()
        if self.fh is not None:
            return _NotClosing(self.fh)
        return open(self.name, "rb")


class _ReadingInto(io.RawIOBase):
    """A caller's file object without ``readinto`` (``BinaryIO`` does not promise it); not closed here."""

    def __init__(self, fh: BinaryIO) -> None:
        self._fh = fh

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        data = self._fh.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)


def _readable(fh: BinaryIO | io.RawIOBase) -> Readable:
    """``fh`` as the reader reads it: through its ``readinto``, or its ``read``."""
    if isinstance(fh, io.RawIOBase) or hasattr(fh, "readinto"):
        return fh
    return _ReadingInto(fh)


def _source(item: str | Path | SegmentSource, on_bytes: Callable[[int], None] | None) -> _Source:
    """A path or a :class:`SegmentSource` as the reader opens it, counting bytes if asked."""
    if isinstance(item, (str, os.PathLike)):
        path = item

        def open_path() -> io.FileIO:
            return open(path, "rb", buffering=0)

        opener: Callable[[], BinaryIO | io.FileIO] = open_path
        name: str | Path = item
    else:
        opener, name = item.open, item.name
    if on_bytes is None:
        return _Source(name, opener=opener)
    return _Source(name, opener=lambda: _Counting(opener, on_bytes))


class _Counting(io.RawIOBase):
    """A segment, opened on first read and closed at its end, that reports bytes read."""

    def __init__(self, opener: Callable[[], BinaryIO | io.RawIOBase], on_bytes: Callable[[int], None]) -> None:
        self._opener = opener
        self._on_bytes = on_bytes
        self._fh: BinaryIO | io.RawIOBase | None = None

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        if self._fh is None:
            self._fh = self._opener()  # closed when the file ends, or by close()
        got = _readable(self._fh).readinto(buffer) or 0
        if got:
            self._on_bytes(got)
        else:
            self._fh.close()
        return got

    def close(self) -> None:
        if self._fh is not None and not self._fh.closed:
            self._fh.close()
        super().close()


class _NotClosing(io.RawIOBase):
    """A caller's file object, read through without being closed when decoding ends."""

    def __init__(self, fh: BinaryIO | Readable) -> None:
        self._fh: Readable = fh  # type: ignore[assignment]

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        return self._fh.readinto(buffer) or 0


class SegmentDecoder:
    """Decodes the segments of one logger run.

    Feed it the run's segment files in name order: the per-stream epoch tick carries from
    one file to the next. One decoder serves one run in one thread at a time;
    decoders of different runs share nothing and can run in parallel threads.

    Args:
        stream_ids: Every stream id the run's ``streams/`` declares; any other id in a
            segment is an error.
        selected: The stream ids to return; None for all. Records of other streams are
            validated but not extracted.
        chunk_bytes: Decompressed bytes per step: bounds memory and the size of each chunk
            (raised to 4 KiB, lowered to 1 GiB).
        epoch_scales: Seconds per tick of each selected stream (in the order of
            ``selected``, or of ``stream_ids`` when None), for :meth:`columns`.
        value_scales: Value per quantum, aligned like ``epoch_scales``.
        threads: Decompress in a reader thread, ahead of the decoding (False: in the
            calling thread, one chunk at a time).
        decode_threads: Threads that decompress and decode parts of the run at the same
            time (:mod:`herocollector.decode.parallel`; the rows are the same, in the same
            order); 1 (or ``threads`` False): one reader thread ahead of the calling thread.
        max_record_bytes: Most decompressed bytes of one record (at least ``chunk_bytes``);
            a larger record is a ``SegmentError``. Bounds the memory one record takes.
        max_frame_bytes: Most decompressed bytes of one zstd frame; a frame that declares
            or decompresses to more is a ``SegmentError`` (a zstd bomb fails quickly).
    """

    def __init__(
        self,
        stream_ids: Iterable[int],
        selected: Iterable[int] | None = None,
        chunk_bytes: int = DEFAULT_CHUNK_BYTES,
        *,
        epoch_scales: Sequence[float] | np.ndarray | None = None,
        value_scales: Sequence[float] | np.ndarray | None = None,
        threads: bool = True,
        max_record_bytes: int = MAX_RECORD_BYTES,
        max_frame_bytes: int = MAX_FRAME_BYTES,
        decode_threads: int = 1,
    ) -> None:
        self.streams = StreamTable(stream_ids, selected, epoch_scales, value_scales)
        self._chunk_bytes = min(max(int(chunk_bytes), MIN_CHUNK_BYTES), MAX_CHUNK_BYTES)
        # A record that fits in a chunk is decoded wherever the pieces of its frame are cut.
        self._max_record_bytes = max(int(max_record_bytes), self._chunk_bytes)
        self._max_frame_bytes = int(max_frame_bytes)
        self._threads = threads
        self._decode_threads = max(int(decode_threads), 1)
        self.ticks = np.zeros(len(self.streams), dtype=np.int64)
        """Last epoch tick of each stream slot, carried across segment files."""

    def decode_file(self, path: str | Path) -> Iterator[Records]:
        """Decode one segment file.

        Args:
            path: The ``.seg.zst`` file.

        Yields:
            Records of the selected streams, in file order, in chunks.

        Raises:
            SegmentError: The file is damaged; names the file and the byte offset.
        """
        return self._decode([_Source(path)], scaled=False)  # type: ignore[return-value]

    def decode_files(self, paths: Iterable[str | Path]) -> Iterator[Records]:
        """Decode segment files in order, reading ahead across file boundaries.

        Args:
            paths: The run's ``.seg.zst`` files, in name order.

        Yields:
            Records of the selected streams, in chunks.

        Raises:
            SegmentError: A file is damaged; names it and the byte offset.
        """
        return self._decode([_Source(p) for p in paths], scaled=False)  # type: ignore[return-value]

    def decode_bytes(self, data: bytes, name: str | Path = "<bytes>") -> Records:
        """Decode a whole segment held in memory into one set of columns.

        Args:
            data: The segment's bytes.
            name: Name used in error messages.

        Returns:
            The selected records.
        """
        return Records.concat(self.decode_stream(io.BytesIO(data), name))

    def decode_stream(self, fh: BinaryIO | Readable, name: str | Path) -> Iterator[Records]:
        """Decode a segment from a binary file object.

        Args:
            fh: Open binary file positioned at the start of the segment (not closed here).
            name: Name used in error messages.

        Yields:
            Records of the selected streams, in file order, in chunks.

        Raises:
            SegmentError: The data is damaged; names ``name`` and the byte offset.
        """
        threads = None
        if isinstance(fh, io.BytesIO):
            with fh.getbuffer() as view:
                # A reader thread pays off only when there is more than one chunk to overlap.
                threads = view.nbytes - fh.tell() > self._chunk_bytes
        return self._decode([_Source(name, fh)], scaled=False, threads=threads)  # type: ignore[return-value]

    def columns(
        self,
        paths: Iterable[str | Path | SegmentSource],
        on_bytes: Callable[[int], None] | None = None,
        *,
        nbytes: int | None = None,
    ) -> Iterator[Columns]:
        """Decode segment files into scaled output columns (what the Collector writes).

        Args:
            paths: The run's ``.seg.zst`` files, in name order: paths, or
                :class:`SegmentSource` objects, which the decoder opens when it reaches them
                and closes when they end.
            on_bytes: Called with the number of segment bytes read since its last call (on
                the thread that reads them): progress within a segment.
            nbytes: The files' total size, when the caller knows it (a run's inventory). If
                it is at most ``chunk_bytes``, the files are decoded in the calling thread: a
                reader thread, or parts, would have nothing to overlap, and in a service whose
                workers take many small runs, a thread per run only costs.

        Yields:
            Columns of the selected streams, in chunks.

        Raises:
            SegmentError: A file is damaged; names it and the byte offset.
        """
        sources = [_source(p, on_bytes) for p in paths]
        threads = None if nbytes is None else nbytes > self._chunk_bytes
        return self._decode(sources, scaled=True, threads=threads)  # type: ignore[return-value]

    def _decode(self, sources: list[_Source], scaled: bool, threads: bool | None = None) -> Iterator[Records | Columns]:
        chunk_bytes, max_frame = self._chunk_bytes, self._max_frame_bytes

        read_bytes = 0  # the input read so far, when its size was not known

        def count(got: int) -> None:
            nonlocal read_bytes
            read_bytes += got

        def read() -> Iterator[Chunk]:
            dctx = zstandard.ZstdDecompressor()
            space = ReadBuffers(chunk_bytes)
            for source in sources:
                with source.open() as fh:  # closed when the segment ends, or decoding stops
                    reader = _readable(fh) if threads is not None else _Counting(lambda: fh, count)
                    yield from read_segment(reader, source.name, chunk_bytes, dctx, space, max_frame)

        def produce() -> Iterator[Chunk]:
            return coalesced(read(), chunk_bytes)

        threaded = self._threads if threads is None else threads and self._threads
        if threaded and self._decode_threads > 1:
            yield from decode_in_parts(
                sources, _readable, self.streams, self.ticks, scaled, self._decode_threads,
                chunk_bytes, max_frame, self._max_record_bytes,
            )  # fmt: skip
            return
        if not threaded:
            chunks: Iterator[Chunk] = produce()
        elif threads is None:  # the size is not known: a reader thread once a chunk was read
            chunks = prefetched_once(
                produce, PIPELINE_DEPTH, lambda: read_bytes >= chunk_bytes, name="herocollector-reader"
            )
        else:
            chunks = prefetched(produce, PIPELINE_DEPTH, name="herocollector-reader")
        try:
            yield from RecordDecoder(self.streams, self.ticks, scaled, self._max_record_bytes).decode(chunks)
        finally:
            chunks.close()  # type: ignore[attr-defined]
