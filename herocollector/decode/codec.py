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

Memory is bounded by a few chunks (plus the compressed size of the largest frame, and the
largest record), not by the size of a segment or a run. Independent runs can be decoded in
parallel threads: a decoder shares no mutable state with any other.

Damage stops the kernel at once; the exact error (which file, which frame, which byte of the
frame's content) is then worked out on that frame only, so that it is the error of the first
damaged frame, exactly as a frame-by-frame reference decoder reports it.
"""

from __future__ import annotations

import io
import os
import queue
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Protocol, TypeVar

import numpy as np
import pyarrow as pa
import zstandard

from herocollector.decode import native as kernel  # the compiled kernels, loaded as fast as possible
from herocollector.errors import SegmentError, UnknownStreamError

DEFAULT_CHUNK_BYTES = 1 << 20
"""Decompressed bytes decoded per step; bounds the decoder's working memory."""
MIN_CHUNK_BYTES = 1 << 12
"""Smaller ``chunk_bytes`` values are raised to this."""
MAX_CHUNK_BYTES = 1 << 30
"""Larger ``chunk_bytes`` values are lowered to this (list offsets are ``int32``)."""
PIPELINE_DEPTH = 2
"""Decompressed chunks the reader thread may be ahead of the decoder."""
SINGLE_PASS_BYTES = 128 * 1024
"""zstd decodes a frame of known content size at once (checking less than when streaming it:
not the window size, not raw blocks against the window) when its output buffer can take the
whole content. The reference decodes frame by frame with ``zstandard``'s decompression
object, whose output buffer holds 128 KiB: frames of at most that size are decoded at once,
larger ones (or of unknown size) streamed. This decoder does the same, so that both accept
and refuse exactly the same frames."""

MAX_VARINT_BYTES = kernel.MAX_VARINT_BYTES
_MAX_LIST_VALUES = 2**31 - 1  # Arrow list offsets are int32
_TABLE_IDS = 1 << 16  # stream ids below this are looked up in a dense table
_U64 = np.uint64

T = TypeVar("T")


class _Readable(Protocol):
    """A binary file object, as the reader uses it."""

    def readinto(self, buffer: memoryview, /) -> int | None:
        """Read into ``buffer``; the bytes read (0 or None at the end)."""


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


def _pool_empty(count: int, dtype: type | np.dtype) -> np.ndarray:
    """An uninitialised array allocated from pyarrow's memory pool.

    The pool keeps freed memory for reuse, where NumPy's allocator would hand large blocks
    back to the operating system: every chunk would then pay page faults on fresh memory
    (about a third of the decode time on a virtual machine).
    """
    kind = np.dtype(dtype)
    return np.frombuffer(pa.allocate_buffer(count * kind.itemsize), dtype=kind)


# ----------------------------------------------------------------------------------------
# Varints and zigzag
# ----------------------------------------------------------------------------------------


def zigzag_encode(values: np.ndarray) -> np.ndarray:
    """Zigzag-encode signed integers: 0, -1, 1, -2 ... become 0, 1, 2, 3 ...

    Args:
        values: Signed integers (any integer dtype).

    Returns:
        The encoded values as ``uint64``.
    """
    v = np.asarray(values, dtype=np.int64)
    return ((v << 1) ^ (v >> 63)).view(np.uint64)


def zigzag_decode(values: np.ndarray) -> np.ndarray:
    """Invert :func:`zigzag_encode`: ``(u >> 1) ^ -(u & 1)``.

    Args:
        values: Encoded values as ``uint64``.

    Returns:
        The signed values as ``int64``.
    """
    u = np.asarray(values, dtype=np.uint64)
    return ((u >> _U64(1)) ^ (_U64(0) - (u & _U64(1)))).view(np.int64)


def encode_varints(values: np.ndarray) -> np.ndarray:
    """LEB128-encode unsigned integers, back to back.

    Args:
        values: The integers, as ``uint64``.

    Returns:
        The encoded bytes as a ``uint8`` array.
    """
    u = np.asarray(values, dtype=np.uint64)
    nbytes = np.ones(u.shape, dtype=np.int64)
    for k in range(1, MAX_VARINT_BYTES):
        nbytes += u >= _U64(1 << (7 * k))
    starts = np.cumsum(nbytes) - nbytes
    out = np.empty(int(nbytes.sum()), dtype=np.uint8)
    todo = np.arange(u.size)
    for k in range(MAX_VARINT_BYTES):
        group = ((u[todo] >> _U64(7 * k)) & _U64(0x7F)).astype(np.uint8)
        more = nbytes[todo] > k + 1
        out[starts[todo] + k] = group | (more.astype(np.uint8) << 7)
        todo = todo[more]
        if not todo.size:
            break
    return out


# ----------------------------------------------------------------------------------------
# Records
# ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Records:
    """Decoded records as columns.

    Attributes:
        stream_ids: Stream id of each record (``uint32``).
        ticks: Absolute epoch tick of each record (``int64``); ``epoch = tick * epoch_scale``.
        offsets: ``len(records) + 1`` offsets into ``indices``/``quantised`` (``int64``).
        indices: Flat non-zero indices of all records (``int64``).
        quantised: Flat quantised values of all records (``int64``);
            ``value = q * value_scale``.
    """

    stream_ids: np.ndarray
    ticks: np.ndarray
    offsets: np.ndarray
    indices: np.ndarray
    quantised: np.ndarray

    DTYPES = (
        ("stream_ids", np.uint32),
        ("ticks", np.int64),
        ("offsets", np.int64),
        ("indices", np.int64),
        ("quantised", np.int64),
    )
    """Each column and its dtype."""

    def __len__(self) -> int:
        return int(self.stream_ids.size)

    def equals(self, other: Records) -> bool:
        """Whether both hold identical columns, values and dtypes."""
        for column, dtype in self.DTYPES:
            mine, theirs = getattr(self, column), getattr(other, column)
            if mine.dtype != dtype or theirs.dtype != dtype or not np.array_equal(mine, theirs):
                return False
        return True

    @classmethod
    def from_lists(
        cls,
        stream_ids: Sequence[int],
        ticks: Sequence[int],
        indices: Sequence[Sequence[int]],
        quantised: Sequence[Sequence[int]],
    ) -> Records:
        """Build records from per-record Python lists (for tests and small writers).

        Args:
            stream_ids: One stream id per record.
            ticks: One absolute epoch tick per record.
            indices: One index list per record.
            quantised: One quantised value list per record, as long as its index list.

        Returns:
            The records as columns.
        """
        lengths = np.array([len(i) for i in indices], dtype=np.int64)
        if any(len(i) != len(q) for i, q in zip(indices, quantised, strict=False)) or len(indices) != len(quantised):
            raise ValueError("indices and quantised values differ in length")
        offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])

        def flat(parts: Sequence[Sequence[int]]) -> np.ndarray:
            return np.array([x for p in parts for x in p], dtype=np.int64)

        return cls(
            np.asarray(stream_ids, dtype=np.uint32),
            np.asarray(ticks, dtype=np.int64),
            offsets,
            flat(indices),
            flat(quantised),
        )

    @classmethod
    def concat(cls, parts: Iterable[Records]) -> Records:
        """Concatenate record columns in order.

        Args:
            parts: Record columns to join.

        Returns:
            One set of columns holding every record.
        """
        parts = list(parts)
        if not parts:
            return cls.from_lists([], [], [], [])
        offsets = [parts[0].offsets]
        base = parts[0].offsets[-1]
        for p in parts[1:]:
            offsets.append(p.offsets[1:] + base)
            base = base + p.offsets[-1]
        return cls(
            np.concatenate([p.stream_ids for p in parts]),
            np.concatenate([p.ticks for p in parts]),
            np.concatenate(offsets),
            np.concatenate([p.indices for p in parts]),
            np.concatenate([p.quantised for p in parts]),
        )


class TickState:
    """The last epoch tick of every stream, carried from one segment file to the next.

    The logger writes each record's epoch as a delta to the previous record *of the same
    stream*, and keeps that state across segment rotation, so a run must be decoded with
    one ``TickState`` over all of its segments, in name order.
    """

    def __init__(self) -> None:
        self._last: dict[int, int] = {}

    def _grouped(self, stream_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        uniq, inverse = np.unique(stream_ids, return_inverse=True)
        order = np.argsort(inverse, kind="stable")
        counts = np.bincount(inverse, minlength=uniq.size)
        starts = np.cumsum(counts) - counts
        return uniq, order, counts, starts

    def accumulate(self, stream_ids: np.ndarray, deltas: np.ndarray) -> np.ndarray:
        """Turn per-stream tick deltas into absolute ticks and remember the last ones.

        Args:
            stream_ids: Stream id of each record, in file order.
            deltas: Epoch tick delta of each record (``int64``).

        Returns:
            Absolute ticks (``int64``), wrapping on overflow exactly as the C++ decoder does.
        """
        if not stream_ids.size:
            return np.zeros(0, dtype=np.int64)
        uniq, order, counts, starts = self._grouped(stream_ids)
        base = np.array([self._last.get(int(s), 0) for s in uniq], dtype=np.int64)
        sorted_deltas = deltas[order]
        running = np.cumsum(sorted_deltas)
        before_group = running[starts] - sorted_deltas[starts]
        sorted_ticks = running + np.repeat(base - before_group, counts)
        ticks = np.empty_like(sorted_ticks)
        ticks[order] = sorted_ticks
        self._remember(uniq, sorted_ticks[starts + counts - 1])
        return ticks

    def deltas(self, stream_ids: np.ndarray, ticks: np.ndarray) -> np.ndarray:
        """Turn absolute ticks into per-stream deltas and remember the last ticks (encoding).

        Args:
            stream_ids: Stream id of each record, in file order.
            ticks: Absolute epoch tick of each record (``int64``).

        Returns:
            The deltas (``int64``).
        """
        if not stream_ids.size:
            return np.zeros(0, dtype=np.int64)
        uniq, order, counts, starts = self._grouped(stream_ids)
        base = np.array([self._last.get(int(s), 0) for s in uniq], dtype=np.int64)
        sorted_ticks = ticks[order]
        previous = np.empty_like(sorted_ticks)
        previous[1:] = sorted_ticks[:-1]
        previous[starts] = base
        deltas = np.empty_like(sorted_ticks)
        deltas[order] = sorted_ticks - previous
        self._remember(uniq, sorted_ticks[starts + counts - 1])
        return deltas

    def _remember(self, stream_ids: np.ndarray, last_ticks: np.ndarray) -> None:
        """Keep each stream's last tick (one Python step per stream, not per record)."""
        self._last.update(zip(stream_ids.tolist(), last_ticks.tolist(), strict=True))


def encode_records(records: Records, ticks: TickState) -> bytes:
    """Encode records into the raw (uncompressed) record format.

    Args:
        records: The records; ``ticks`` are absolute.
        ticks: Per-stream tick state, updated; use one per logger run.

    Returns:
        The records, back to back.
    """
    r = len(records)
    if r == 0:
        return b""
    n = np.diff(records.offsets)
    deltas = ticks.deltas(records.stream_ids, records.ticks)
    words = 3 + 2 * n
    rec_start = np.cumsum(words) - words
    seq = np.empty(int(words.sum()), dtype=np.uint64)
    seq[rec_start] = records.stream_ids.astype(np.uint64)
    seq[rec_start + 1] = zigzag_encode(deltas)
    seq[rec_start + 2] = n.astype(np.uint64)
    total = int(records.offsets[-1])
    if total:
        element_rec = np.repeat(np.arange(r), n)
        within = np.arange(total) - records.offsets[:-1][element_rec]
        idx_pos = rec_start[element_rec] + 3 + within
        idx = records.indices.astype(np.int64).view(np.uint64)
        gaps = np.empty_like(idx)
        gaps[1:] = idx[1:] - idx[:-1] - _U64(1)  # wraps as the C++ writer's uint64 arithmetic
        firsts = records.offsets[:-1][n > 0]
        gaps[firsts] = idx[firsts]
        seq[idx_pos] = gaps
        seq[idx_pos + n[element_rec]] = zigzag_encode(records.quantised)
    return encode_varints(seq).tobytes()


def encode_segment(
    records: Records,
    ticks: TickState | None = None,
    *,
    records_per_frame: int = 1,
    level: int = 1,
) -> bytes:
    """Encode records into segment bytes: zstd frames of whole records, as the logger writes.

    Args:
        records: The records, with absolute ticks.
        ticks: Per-stream tick state carried across the run's segments (new if None).
        records_per_frame: How many records go into one zstd frame (the data logger uses 1).
        level: zstd compression level.

    Returns:
        The content of a ``.seg.zst`` file.
    """
    ticks = TickState() if ticks is None else ticks
    if records_per_frame < 1:
        raise ValueError("records_per_frame must be at least 1")
    payload = np.frombuffer(encode_records(records, ticks), dtype=np.uint8)
    if not payload.size:
        return b""
    n = np.diff(records.offsets)
    # Byte length of each record, from the varint lengths of its words.
    words = 3 + 2 * n
    word_ends = np.flatnonzero(payload < 0x80)
    rec_last_word = np.cumsum(words) - 1
    rec_end = word_ends[rec_last_word] + 1
    cut = rec_end[records_per_frame - 1 :: records_per_frame]
    if cut.size == 0 or cut[-1] != payload.size:
        cut = np.append(cut, payload.size)
    compressor = zstandard.ZstdCompressor(level=level)
    out = io.BytesIO()
    start = 0
    for end in cut.tolist():
        out.write(compressor.compress(payload[start:end].tobytes()))
        start = end
    return out.getvalue()


# ----------------------------------------------------------------------------------------
# Streams as the kernel sees them
# ----------------------------------------------------------------------------------------


class StreamTable:
    """The streams of one run as plain per-slot arrays, for the record kernel.

    A slot is the position of a declared stream id in ascending order. Small ids (below
    65536, the usual case) find their slot in a dense table; larger ones by binary search.

    Args:
        stream_ids: Every stream id the run declares (``streams/``); a record of any other
            id is an error.
        selected: The stream ids to write out; None for all. Undeclared ids are ignored.
        epoch_scales: Seconds per epoch tick of each stream of ``selected`` (of
            ``stream_ids`` when ``selected`` is None), in that order; default 1.0.
        value_scales: Value per quantum, aligned like ``epoch_scales``; default 1.0.

    Attributes:
        ids: The declared stream ids, sorted (``uint64``); slot ``i`` is ``ids[i]``.
        selected: Per slot, 1 when written out (``uint8``).
        epoch_scales: Per slot (``float64``).
        value_scales: Per slot (``float64``).
        table: Slot of each id below ``len(table)``, -1 when undeclared (``int32``).
        big_ids: The declared ids not covered by ``table``, sorted (``uint64``).
        big_slots: Their slots (``int32``).
    """

    def __init__(
        self,
        stream_ids: Iterable[int],
        selected: Iterable[int] | None = None,
        epoch_scales: Sequence[float] | np.ndarray | None = None,
        value_scales: Sequence[float] | np.ndarray | None = None,
    ) -> None:
        declared = np.asarray(list(stream_ids), dtype=np.uint64)
        self.ids = np.unique(declared)
        chosen = declared if selected is None else np.asarray(list(selected), dtype=np.uint64)
        self.selected = np.isin(self.ids, chosen).astype(np.uint8)
        self.epoch_scales = self._per_slot(chosen, epoch_scales, "epoch_scales")
        self.value_scales = self._per_slot(chosen, value_scales, "value_scales")
        small = self.ids < _U64(_TABLE_IDS)
        size = int(self.ids[small][-1]) + 1 if small.any() else 0
        self.table = np.full(size, -1, dtype=np.int32)
        self.table[self.ids[small].astype(np.int64)] = np.flatnonzero(small).astype(np.int32)
        self.big_ids = np.ascontiguousarray(self.ids[~small])
        self.big_slots = np.flatnonzero(~small).astype(np.int32)

    def _per_slot(self, chosen: np.ndarray, scales: Sequence[float] | np.ndarray | None, what: str) -> np.ndarray:
        out = np.ones(self.ids.size, dtype=np.float64)
        if scales is None:
            return out
        values = np.asarray(scales, dtype=np.float64)
        if values.shape != chosen.shape:
            raise ValueError(f"{what} must give one scale per selected stream ({chosen.size}), got {values.size}")
        slots = np.searchsorted(self.ids, chosen)
        declared = slots < self.ids.size
        declared[declared] &= self.ids[slots[declared]] == chosen[declared]
        out[slots[declared]] = values[declared]
        return out

    def __len__(self) -> int:
        return int(self.ids.size)


@dataclass(frozen=True)
class Columns:
    """Decoded records of the selected streams, scaled, as the output columns hold them.

    Attributes:
        stream_ids: Stream id of each record (``uint32``).
        slots: Slot of each record's stream in the decoder's :class:`StreamTable` (``int32``).
        epochs: ``float64(tick) * epoch_scale`` of each record (``float64``).
        offsets: ``len(records) + 1`` list offsets into ``indices``/``values``, from 0 (``int32``).
        indices: Flat indices of all records (``int64``).
        values: Flat ``float64(q) * value_scale`` of all records (``float64``).
    """

    stream_ids: np.ndarray
    slots: np.ndarray
    epochs: np.ndarray
    offsets: np.ndarray
    indices: np.ndarray
    values: np.ndarray

    def __len__(self) -> int:
        return int(self.stream_ids.size)


# ----------------------------------------------------------------------------------------
# Reading: frame walk and zstd (the reader thread)
# ----------------------------------------------------------------------------------------


@dataclass
class _Chunk:
    """Decompressed frame contents, handed from the reader to the record decoder.

    A chunk holds either whole frames, or one piece of a frame too large for a chunk (then
    ``ends`` and ``frames`` have one entry, and the frame continues in the next chunk
    unless ``last``).
    """

    name: str | Path
    data: np.ndarray  # uint8
    ends: np.ndarray  # int64: end in ``data`` of each unit (the content of a non-empty zstd frame)
    frames: np.ndarray  # int64: offset in the file of each unit's frame
    piece: bool = False
    first: bool = True
    last: bool = True
    declared: int = -1  # pieces: the frame's content size from its header, -1 when unknown
    doomed: bool = False  # damage follows in the same read: decode only to find earlier damage
    names: tuple[tuple[int, str | Path], ...] = ()  # merged chunks: (first unit, file name) per file

    def name_of(self, unit: int) -> str | Path:
        """The name of the file unit ``unit`` comes from."""
        for first, name in reversed(self.names):
            if unit >= first:
                return name
        return self.name


def _merged(chunks: list[_Chunk]) -> _Chunk:
    """One chunk holding the units of several chunks of whole frames, in order.

    Small chunks (the last frames of a segment file, and whole small files of a rotated run)
    are decoded together: one kernel call and one output batch instead of one per file.
    """
    if len(chunks) == 1:
        return chunks[0]
    data = _pool_empty(sum(c.data.size for c in chunks), np.uint8)
    ends: list[np.ndarray] = []
    names: list[tuple[int, str | Path]] = []
    at, units = 0, 0
    for c in chunks:
        data[at : at + c.data.size] = c.data
        ends.append(c.ends + at)
        names.extend((units + first, name) for first, name in (c.names or ((0, c.name),)))
        at += c.data.size
        units += c.ends.size
    frames = np.concatenate([c.frames for c in chunks])
    return _Chunk(chunks[0].name, data, np.concatenate(ends), frames, names=tuple(names))


class _ReadBuffers:
    """The reader's compressed-data buffer and frame-walk arrays, reused from file to file."""

    def __init__(self, capacity: int) -> None:
        self.buf = np.empty(0, dtype=np.uint8)
        self.slots = 0
        self.grow(capacity)

    def grow(self, capacity: int) -> None:
        """Make room for ``capacity`` bytes (keeping the bytes held) and their frames."""
        if capacity > self.buf.size:
            bigger = np.empty(capacity, dtype=np.uint8)
            bigger[: self.buf.size] = self.buf
            self.buf = bigger
        slots = capacity // kernel.MIN_FRAME_BYTES + 1
        if slots > self.slots:
            self.slots = slots
            self.starts, self.ends, self.sizes = (np.empty(slots, dtype=np.int64) for _ in range(3))
            self.kinds = np.empty(slots, dtype=np.uint8)


_FRAME_DAMAGE = {
    kernel.FRAME_INVALID: "corrupt zstd frame: invalid frame or block header",
    kernel.FRAME_TRUNCATED: "truncated zstd frame at the end of the segment",
}


def _frame_damage(status: int, offset: int) -> str:
    """The message for damage found by the frame walk at file offset ``offset``."""
    if status == kernel.FRAME_BAD_MAGIC:
        if offset == 0:
            return "not a zstd frame (bad magic number)"
        return "bytes after a zstd frame that do not start a zstd frame"
    return _FRAME_DAMAGE[status]


def _read_segment(
    fh: _Readable,
    name: str | Path,
    chunk_bytes: int,
    dctx: zstandard.ZstdDecompressor,
    space: _ReadBuffers | None = None,
) -> Iterator[_Chunk]:
    """Read, walk and decompress one segment into chunks of at most ``chunk_bytes``.

    Everything before the first damage is yielded; then ``SegmentError`` is raised.

    Args:
        fh: The segment, opened for binary reading, at its start.
        name: Name used in errors.
        chunk_bytes: Compressed bytes read at a time, and decompressed bytes per chunk.
        dctx: The reader thread's decompressor.
        space: Buffers to reuse (the reader thread's, for all files of a run).

    Yields:
        Chunks, in file order.

    Raises:
        SegmentError: Damage; names ``name`` and the offset of the damaged frame.
    """
    capacity = chunk_bytes
    space = space or _ReadBuffers(capacity)
    filled, base, eof = 0, 0, False
    while True:
        buf = space.buf
        while not eof and filled < capacity:
            got = fh.readinto(buf.data[filled:capacity])
            eof = not got
            filled += got or 0
        starts, ends, sizes, kinds = space.starts, space.ends, space.sizes, space.kinds
        count, stop, status = kernel.scan_frames(buf, 0, filled, eof, starts, ends, sizes, kinds)
        if count:
            # When the walk found damage, the frames before it are still decoded, since the
            # first damage in the file is the one to report, but none of their records is
            # output: a damaged read buffer gives no records at all.
            doomed = status != kernel.FRAME_OK
            frames = (starts[:count], ends[:count], sizes[:count], kinds[:count])
            yield from _decompress_frames(buf, *frames, base, name, chunk_bytes, dctx, doomed)
        if status != kernel.FRAME_OK:
            raise SegmentError(_frame_damage(status, base + stop), name, base + stop)
        if eof:
            return
        if stop == 0:
            skip = _skippable_size(buf, filled)
            if skip is not None:
                # A skippable frame larger than the buffer: drop it without holding it.
                if not _discard(fh, buf, skip - filled):
                    raise SegmentError(_frame_damage(kernel.FRAME_TRUNCATED, base), name, base)
                base += skip
                filled = 0
                continue
            # A zstd frame larger than the buffer: grow until it fits.
            capacity *= 2
            space.grow(capacity)
        else:
            buf[: filled - stop] = buf[stop:filled]
            base += stop
            filled -= stop


def _skippable_size(buf: np.ndarray, filled: int) -> int | None:
    """Size of the skippable frame at the start of ``buf`` (header included), if it is one."""
    if filled < 8 or buf[0] & 0xF0 != 0x50 or bytes(buf[1:4]) != b"\x2a\x4d\x18":
        return None
    return 8 + int.from_bytes(bytes(buf[4:8]), "little")


def _discard(fh: _Readable, buf: np.ndarray, count: int) -> bool:
    """Read and drop ``count`` bytes; False when the data ends first."""
    view = buf.data
    while count > 0:
        got = fh.readinto(view[: min(count, buf.size)])
        if not got:
            return False
        count -= got
    return True


def _decompress_frames(
    buf: np.ndarray,
    starts: np.ndarray,
    ends: np.ndarray,
    sizes: np.ndarray,
    kinds: np.ndarray,
    base: int,
    name: str | Path,
    chunk_bytes: int,
    dctx: zstandard.ZstdDecompressor,
    doomed: bool,
) -> Iterator[_Chunk]:
    """Decompress complete frames, in groups or in pieces.

    Consecutive frames of known size are decompressed together, up to a chunk at a time; a
    frame larger than a chunk, or of unknown size, on its own in pieces.
    """
    zstd = kinds == kernel.KIND_ZSTD
    big = zstd & ((sizes < 0) | (sizes > min(chunk_bytes, SINGLE_PASS_BYTES)))
    known = np.where(zstd & ~big, sizes, 0)
    running = np.cumsum(known)
    bigs = np.flatnonzero(big)
    count = starts.size
    first = 0
    while first < count:
        if big[first]:
            lo, hi, declared = int(starts[first]), int(ends[first]), int(sizes[first])
            yield from _frame_in_pieces(buf, lo, hi, declared, base, name, chunk_bytes, dctx, doomed)
            first += 1
            continue
        before = running[first] - known[first]
        stop = int(np.searchsorted(running, before + chunk_bytes, side="right"))
        later = int(np.searchsorted(bigs, first))
        stop = max(first + 1, min(stop, int(bigs[later]) if later < bigs.size else count))
        group = (starts[first:stop], ends[first:stop], known[first:stop], kinds[first:stop])
        yield from _decompress_group(buf, *group, base, name, dctx, doomed)
        first = stop


def _decompress_group(
    buf: np.ndarray,
    starts: np.ndarray,
    ends: np.ndarray,
    sizes: np.ndarray,
    kinds: np.ndarray,
    base: int,
    name: str | Path,
    dctx: zstandard.ZstdDecompressor,
    doomed: bool,
) -> Iterator[_Chunk]:
    """Decompress frames of known size (at most ``SINGLE_PASS_BYTES`` each) together.

    zstd's ``multi_decompress_to_buffer`` decompresses them one after the other into one
    buffer without taking the GIL between frames; a streaming reader takes it at every frame
    end, and with the data logger's one frame per record the reader threads of runs decoded
    in parallel would queue for it. Its output is checked to be one buffer and wrapped, not
    copied. Groups holding an empty zstd frame are streamed instead (given only empty frames,
    that call frees memory twice). Any failure is worked out frame by frame.
    """
    total = int(sizes.sum())
    zstd = kinds == kernel.KIND_ZSTD
    if not zstd.any():
        return  # skippable frames only
    if (sizes[zstd] == 0).any():
        out = _stream_group(buf, int(starts[0]), int(ends[-1]), total, dctx)
    else:
        spans = np.empty((int(zstd.sum()), 2), dtype=np.uint64)
        spans[:, 0] = starts[zstd]
        spans[:, 1] = (ends - starts)[zstd]
        try:
            frames = zstandard.BufferWithSegments(buf.data, spans.tobytes())
            expected = sizes[zstd].astype(np.uint64).tobytes()
            decompressed = dctx.multi_decompress_to_buffer(frames, decompressed_sizes=expected, threads=1)
            out = _contiguous(decompressed, total)
        except zstandard.ZstdError:
            out = None
    if out is None:
        yield from _group_damage(buf, starts, ends, sizes, kinds, base, name, dctx)
        return
    units = sizes > 0
    if units.any():  # empty and skippable frames hold no records
        yield _Chunk(name, out, np.cumsum(sizes)[units], starts[units] + base, doomed=doomed)


def _stream_group(buf: np.ndarray, lo: int, hi: int, total: int, dctx: zstandard.ZstdDecompressor) -> np.ndarray | None:
    """``buf[lo:hi]`` decompressed by streaming across frames; None unless exactly ``total`` bytes."""
    out = _pool_empty(total, np.uint8)
    try:
        reader = dctx.stream_reader(buf.data[lo:hi], read_across_frames=True)
        got = 0
        while got < total:
            n = reader.readinto(out.data[got:])
            if not n:
                break
            got += n
        if got == total and not reader.read(1):  # reading on checks the frames after the last byte too
            return out
    except zstandard.ZstdError:
        pass
    return None


class _Decompressed:
    """Keeps zstd's output buffer alive under the NumPy array that views it."""

    def __init__(self, owner: object, address: int, size: int) -> None:
        self.owner = owner
        self.__array_interface__ = {"data": (address, False), "shape": (size,), "typestr": "|u1", "version": 3}


def _segment_array(segment: zstandard.BufferSegment) -> np.ndarray:
    """One segment of zstandard's output viewed (not copied) as a ``uint8`` array."""
    # BufferSegment implements the buffer protocol; zstandard's stubs do not declare it.
    return np.frombuffer(segment, dtype=np.uint8)  # type: ignore[call-overload]


def _contiguous(out: zstandard.BufferWithSegmentsCollection, total: int) -> np.ndarray:
    """``multi_decompress_to_buffer``'s output as one ``uint8`` array of ``total`` bytes.

    With one thread and every size given, zstandard writes all frames into one buffer, back
    to back; that is checked here (first and last segment), and the buffer then wrapped as
    it is. Otherwise the segments are copied together.
    """
    segments = len(out)
    first = _segment_array(out[0])
    last = _segment_array(out[segments - 1])
    address = first.__array_interface__["data"][0]
    if out.size() == total and last.__array_interface__["data"][0] + last.size == address + total:
        return np.asarray(_Decompressed(out, address, total))
    data = _pool_empty(total, np.uint8)
    at = 0
    for i in range(segments):
        piece = _segment_array(out[i])
        data[at : at + piece.size] = piece
        at += piece.size
    if at != total:
        raise zstandard.ZstdError(f"decompressed {at} bytes, the frame headers say {total}")
    return data


def _group_damage(
    buf: np.ndarray,
    starts: np.ndarray,
    ends: np.ndarray,
    sizes: np.ndarray,
    kinds: np.ndarray,
    base: int,
    name: str | Path,
    dctx: zstandard.ZstdDecompressor,
) -> Iterator[_Chunk]:
    """Find the first corrupt frame of a group that failed (slow path, errors only).

    Yields the content of the intact frames before it, to be checked for earlier damage
    but not output, then raises its ``SegmentError``.
    """
    contents: list[bytes] = []
    offsets: list[int] = []
    for i in range(starts.size):
        if kinds[i] == kernel.KIND_SKIPPABLE:
            continue
        lo, hi = int(starts[i]), int(ends[i])
        content, problem = _decompress_one(buf.data[lo:hi], int(sizes[i]), dctx)
        if problem:
            if any(contents):
                sizes_ok = np.array([len(c) for c in contents], dtype=np.int64)
                units = sizes_ok > 0
                data = np.frombuffer(b"".join(contents), dtype=np.uint8).copy()
                frames = np.array(offsets, dtype=np.int64)[units] + base
                yield _Chunk(name, data, np.cumsum(sizes_ok)[units], frames, doomed=True)
            raise SegmentError(problem, name, base + lo)
        contents.append(content)
        offsets.append(lo)
    raise SegmentError("corrupt zstd data", name, base + int(starts[0]))


def _decompress_one(frame: memoryview, expected: int, dctx: zstandard.ZstdDecompressor) -> tuple[bytes, str]:
    """Decompress one frame on its own; ``(content, "")`` or ``(b"", what is wrong)``.

    A streaming decompressor decodes every block; the one-shot API trusts a header that
    says "0 bytes" and would not look at the blocks at all.
    """
    decoder = dctx.decompressobj()
    try:
        content = decoder.decompress(frame)
    except zstandard.ZstdError as exc:
        return b"", f"corrupt zstd frame: {exc}"
    if not decoder.eof:
        return b"", "corrupt zstd frame: it ends before its last block"
    if expected >= 0 and len(content) != expected:
        return b"", f"corrupt zstd frame: {len(content)} bytes decompressed, header says {expected}"
    return content, ""


def _frame_in_pieces(
    buf: np.ndarray,
    lo: int,
    hi: int,
    declared: int,
    base: int,
    name: str | Path,
    chunk_bytes: int,
    dctx: zstandard.ZstdDecompressor,
    doomed: bool,
) -> Iterator[_Chunk]:
    """Decompress one frame on its own, handed on in pieces of at most ``chunk_bytes``.

    A frame of at most ``SINGLE_PASS_BYTES`` is decompressed at once, a larger one (or one
    of unknown size) streamed at most that many bytes at a time (see ``SINGLE_PASS_BYTES``).
    """
    frame = np.array([base + lo], dtype=np.int64)
    step = declared if 0 <= declared <= SINGLE_PASS_BYTES else min(chunk_bytes, SINGLE_PASS_BYTES)
    produced = 0
    first = True
    try:
        reader = dctx.stream_reader(buf.data[lo:hi], read_across_frames=False)
        whole = _pool_empty(declared, np.uint8) if step == declared else None
        if whole is not None:
            got = 0
            while got < declared:
                n = reader.readinto(whole.data[got:])
                if not n:
                    break
                got += n
            if got != declared or reader.read(1):
                message = f"corrupt zstd frame: header says {declared} bytes, it decompresses to another size"
                raise SegmentError(message, name, base + lo)
        while True:
            if whole is not None:
                piece = whole[produced : produced + chunk_bytes]
                got = piece.size
            else:
                piece = _pool_empty(chunk_bytes, np.uint8)
                got = 0
                while got < chunk_bytes:
                    n = reader.readinto(piece.data[got : got + step])
                    if not n:
                        break
                    got += n
            produced += got
            last = produced == declared if whole is not None else got < chunk_bytes
            if last and declared >= 0 and produced != declared:
                message = f"corrupt zstd frame: {produced} bytes decompressed, header says {declared}"
                raise SegmentError(message, name, base + lo)
            yield _Chunk(name, piece[:got], np.array([got], dtype=np.int64), frame, True, first, last, declared, doomed)
            if last:
                return
            first = False
    except zstandard.ZstdError as exc:
        raise SegmentError(f"corrupt zstd frame: {exc}", name, base + lo) from None


# ----------------------------------------------------------------------------------------
# The reader thread
# ----------------------------------------------------------------------------------------


class _Failure:
    """An exception raised in the reader thread, delivered in order through the queue."""

    def __init__(self, exc: BaseException) -> None:
        self.exc = exc


_END = object()


def _prefetched(produce: Callable[[], Iterator[T]], depth: int) -> Iterator[T]:
    """Run ``produce()`` in a thread, ``depth`` items ahead of the consumer.

    Items (and finally the producer's exception, if any) arrive in order. Closing this
    generator (or an exception in the consumer) stops the thread and waits for it, so no
    thread outlives its decode.
    """
    handoff: queue.Queue[object] = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(item: object) -> bool:
        while not stop.is_set():
            try:
                handoff.put(item, timeout=0.05)  # wakes to notice ``stop`` when the consumer is gone
                return True
            except queue.Full:
                continue
        return False

    def run() -> None:
        try:
            for item in produce():
                if not put(item):
                    return
        except BaseException as exc:  # noqa: BLE001 - every failure is handed to the consumer
            put(_Failure(exc))
            return
        put(_END)

    thread = threading.Thread(target=run, name="herocollector-reader", daemon=True)
    thread.start()
    try:
        while True:
            item = handoff.get()
            if item is _END:
                return
            if isinstance(item, _Failure):
                raise item.exc
            yield item  # type: ignore[misc]
    finally:
        stop.set()
        while thread.is_alive():
            try:
                handoff.get(timeout=0.05)  # unblock a producer waiting on a full queue
            except queue.Empty:
                pass
        thread.join()


# ----------------------------------------------------------------------------------------
# Decoding records (the calling thread)
# ----------------------------------------------------------------------------------------


class _OpenFrame:
    """The content of a frame decoded in pieces that is not complete yet."""

    def __init__(self, name: str | Path, frame: int, declared: int) -> None:
        self.name = name
        self.frame = frame
        self.declared = declared
        self.buf = np.empty(0, dtype=np.uint8)
        self.length = 0
        self.seen = 0  # bytes of the frame's content before buf[0]
        self.need = 0  # the record at buf[0] is at least this long
        self.tried = 0  # bytes held when the kernel last stopped for more

    def append(self, data: np.ndarray) -> None:
        size = self.length + data.size
        if size > self.buf.size:
            bigger = np.empty(max(size, 2 * self.buf.size), dtype=np.uint8)
            bigger[: self.length] = self.buf[: self.length]
            self.buf = bigger
        self.buf[self.length : size] = data
        self.length = size

    def consume(self, count: int) -> None:
        rest = self.length - count
        self.buf[:rest] = self.buf[count : self.length]
        self.length = rest
        self.seen += count


class _RecordDecoder:
    """Runs the record kernel over chunks; turns its stops into errors or output."""

    def __init__(self, streams: StreamTable, ticks: np.ndarray, scaled: bool) -> None:
        self.streams = streams
        self.ticks = ticks
        self.scaled = scaled
        self.open: _OpenFrame | None = None
        self.density = (1 / 64, 1 / 8)  # output records and elements per input byte, so far

    def decode(self, chunks: Iterator[_Chunk]) -> Iterator[Records | Columns]:
        for chunk in chunks:
            if chunk.piece:
                yield from self._piece(chunk, chunks)
            else:
                yield from self._whole_frames(chunk)

    def _whole_frames(self, chunk: _Chunk) -> Iterator[Records | Columns]:
        pos, unit = 0, 0
        if not chunk.ends.size:
            return
        done: list[Records | Columns] = []
        while True:
            status, pos, unit, out, detail = self._kernel(chunk.data, pos, chunk.ends, unit, False)
            if out is not None:
                done.append(out)
            if status == kernel.OUT_FULL:
                continue
            if status == kernel.OK:
                # Output only once the whole chunk decoded: records before damage in the
                # same chunk are not output (nor those of a doomed chunk).
                if not chunk.doomed:
                    yield from done
                return
            unit_start = int(chunk.ends[unit - 1]) if unit else 0
            frame = int(chunk.frames[unit])
            if status == kernel.UNKNOWN_STREAM:
                run, bad = kernel.varint_damage(chunk.data, pos, int(chunk.ends[unit]), 0)
                if bad or run:
                    status = kernel.VARINT_TOO_LONG if bad else kernel.CUT_SHORT
            raise _error(status, chunk.name_of(unit), frame, pos - unit_start, detail)

    def _piece(self, chunk: _Chunk, chunks: Iterator[_Chunk]) -> Iterator[Records | Columns]:
        if chunk.first:
            self.open = _OpenFrame(chunk.name, int(chunk.frames[0]), chunk.declared)
        frame = self.open
        if frame is None:
            raise RuntimeError("herocollector: a frame piece arrived without its first piece")
        frame.append(chunk.data)
        if not chunk.last and frame.length < max(frame.need, 2 * frame.tried):
            return  # the cut record cannot be complete yet: do not decode it again
        pos = 0
        ends = np.array([frame.length], dtype=np.int64)
        while True:
            status, pos, _, out, detail = self._kernel(frame.buf, pos, ends, 0, not chunk.last)
            if out is not None and not chunk.doomed and status in (kernel.OK, kernel.OUT_FULL, kernel.NEED_MORE):
                yield out
            if status != kernel.OUT_FULL:
                break
        if chunk.last:
            self.open = None
        if status == kernel.OK:
            frame.consume(pos)
            frame.need = frame.tried = 0
            return
        if status == kernel.NEED_MORE:
            frame.consume(pos)
            frame.need, frame.tried = detail, frame.length
            if frame.declared >= 0 and frame.seen + frame.need > frame.declared:
                message = "record cut short: it needs more bytes than its frame holds"
                raise SegmentError(message, frame.name, frame.frame)
            return
        if status == kernel.UNKNOWN_STREAM:
            # The reference reports a varint error anywhere in the frame before an unknown
            # stream: read (and so also zstd-check) the rest of the frame first.
            run, bad = kernel.varint_damage(frame.buf, pos, frame.length, 0)
            last = chunk.last
            while not bad and not last:
                more = next(chunks, None)
                if more is None or not more.piece or more.first:
                    raise RuntimeError("herocollector: a frame's pieces ended early")
                run, bad = kernel.varint_damage(more.data, 0, more.data.size, run)
                last = more.last
            self.open = None
            if bad or run:
                status = kernel.VARINT_TOO_LONG if bad else kernel.CUT_SHORT
        raise _error(status, frame.name, frame.frame, frame.seen + pos, detail)

    def _kernel(
        self, data: np.ndarray, pos: int, ends: np.ndarray, unit: int, open_last: bool
    ) -> tuple[int, int, int, Records | Columns | None, int]:
        """One kernel call into freshly allocated output columns.

        The columns are sized from the records and elements per byte seen so far, with a
        margin; when they fill up the kernel stops at a record boundary (``OUT_FULL``) and
        the caller goes on with new ones. A record takes at least three bytes and an element
        two, which bounds what any data can need (used when one record needs more).
        """
        left = int(ends[-1]) - pos
        bound = (left // 3 + 1, left // 2 + 1)
        wanted = (int(left * self.density[0]) + 64, int(left * self.density[1]) + 256)
        records, values = min(bound[0], wanted[0]), min(bound[1], wanted[1])
        while True:
            sid = _pool_empty(records, np.uint32)
            slot = _pool_empty(records, np.int32)
            epoch = _pool_empty(records, np.float64)
            offsets = _pool_empty(records + 1, np.int32)
            idx = _pool_empty(values, np.int64)
            val = _pool_empty(values, np.float64)
            s = self.streams
            status, stop, unit, nrec, nval, detail = kernel.decode_records(
                data, pos, ends, unit, open_last, s.table, s.big_ids, s.big_slots, s.selected,
                s.epoch_scales, s.value_scales, self.ticks, self.scaled, _MAX_LIST_VALUES,
                sid, slot, epoch, epoch.view(np.int64), offsets, idx, val, val.view(np.int64),
            )  # fmt: skip
            if status != kernel.BAD_CAPACITY:
                break
            if (records, values) == bound:
                raise RuntimeError("herocollector: decoder output arrays too small (a bug)")
            records, values = bound  # one record needs more than the estimate: make room for anything
        done = int(stop) - pos
        if done > 0 and status in (kernel.OK, kernel.OUT_FULL, kernel.NEED_MORE):
            # 1.25 times the densest chunk so far: rarely too small, never much too large.
            self.density = (max(self.density[0], 1.25 * nrec / done), max(self.density[1], 1.25 * nval / done))
        out: Records | Columns | None = None
        if nrec:
            if self.scaled:
                out = Columns(sid[:nrec], slot[:nrec], epoch[:nrec], offsets[: nrec + 1], idx[:nval], val[:nval])
            else:
                ticks = epoch.view(np.int64)[:nrec]
                quantised = val.view(np.int64)[:nval]
                out = Records(sid[:nrec], ticks, offsets[: nrec + 1].astype(np.int64), idx[:nval], quantised)
        return int(status), int(stop), int(unit), out, int(detail)


def _error(status: int, name: str | Path, frame: int, within: int, detail: int) -> SegmentError:
    """The error for a kernel stop in the frame at file offset ``frame``."""
    if status == kernel.UNKNOWN_STREAM:
        return UnknownStreamError(name, frame, detail)
    where = f"at byte {within} of the frame's decompressed data"
    if status == kernel.CUT_SHORT:
        return SegmentError(f"record cut short {where}", name, frame)
    if status == kernel.VARINT_TOO_LONG:
        return SegmentError(f"varint longer than 10 bytes {where}", name, frame)
    if status == kernel.TOO_MANY_VALUES:
        message = f"record with more than {_MAX_LIST_VALUES} elements (an Arrow list's limit) {where}"
        return SegmentError(message, name, frame)
    raise RuntimeError(f"herocollector: unexpected decoder status {status}")


# ----------------------------------------------------------------------------------------
# Segment decoding
# ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Source:
    """A segment to decode: a path, a caller's open file object, or an opener."""

    name: str | Path
    fh: BinaryIO | _Readable | None = None
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


def _readable(fh: BinaryIO | io.RawIOBase) -> _Readable:
    """``fh`` as the reader reads it: through its ``readinto``, or its ``read``."""
    if isinstance(fh, io.RawIOBase) or hasattr(fh, "readinto"):
        return fh  # type: ignore[return-value]
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

    def __init__(self, opener: Callable[[], BinaryIO | io.FileIO], on_bytes: Callable[[int], None]) -> None:
        self._opener = opener
        self._on_bytes = on_bytes
        self._fh: BinaryIO | io.FileIO | None = None

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

    def __init__(self, fh: BinaryIO | _Readable) -> None:
        self._fh: _Readable = fh  # type: ignore[assignment]

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
    ) -> None:
        self.streams = StreamTable(stream_ids, selected, epoch_scales, value_scales)
        self._chunk_bytes = min(max(int(chunk_bytes), MIN_CHUNK_BYTES), MAX_CHUNK_BYTES)
        self._threads = threads
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

    def decode_stream(self, fh: BinaryIO | _Readable, name: str | Path) -> Iterator[Records]:
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
        self, paths: Iterable[str | Path | SegmentSource], on_bytes: Callable[[int], None] | None = None
    ) -> Iterator[Columns]:
        """Decode segment files into scaled output columns (what the Collector writes).

        Args:
            paths: The run's ``.seg.zst`` files, in name order: paths, or
                :class:`SegmentSource` objects, which the decoder opens when it reaches them
                and closes when they end.
            on_bytes: Called with the number of segment bytes read since its last call (on
                the reader thread): progress within a segment.

        Yields:
            Columns of the selected streams, in chunks.

        Raises:
            SegmentError: A file is damaged; names it and the byte offset.
        """
        sources = [_source(p, on_bytes) for p in paths]
        return self._decode(sources, scaled=True)  # type: ignore[return-value]

    def _decode(self, sources: list[_Source], scaled: bool, threads: bool | None = None) -> Iterator[Records | Columns]:
        chunk_bytes = self._chunk_bytes

        def read() -> Iterator[_Chunk]:
            dctx = zstandard.ZstdDecompressor()
            space = _ReadBuffers(chunk_bytes)
            for source in sources:
                with source.open() as fh:  # closed when the segment ends, or decoding stops
                    yield from _read_segment(_readable(fh), source.name, chunk_bytes, dctx, space)

        def produce() -> Iterator[_Chunk]:
            # Chunks of whole frames smaller than half a chunk (a file's last frames, or the
            # small files of a rotated run) go together, in order, up to chunk_bytes; damage
            # still comes in order, after everything before it.
            pending: list[_Chunk] = []
            held = 0
            try:
                for chunk in read():
                    if chunk.piece or chunk.doomed or held + chunk.data.size > chunk_bytes:
                        if pending:
                            yield _merged(pending)
                        pending, held = [], 0
                    if chunk.piece or chunk.doomed:
                        yield chunk
                        continue
                    pending.append(chunk)
                    held += chunk.data.size
                    if held >= chunk_bytes // 2:  # big enough: do not keep the decoder waiting
                        yield _merged(pending)
                        pending, held = [], 0
            except GeneratorExit:
                raise
            except BaseException:
                if pending:
                    yield _merged(pending)
                raise
            if pending:
                yield _merged(pending)

        threaded = self._threads if threads is None else threads and self._threads
        chunks = _prefetched(produce, PIPELINE_DEPTH) if threaded else produce()
        try:
            yield from _RecordDecoder(self.streams, self.ticks, scaled).decode(chunks)
        finally:
            chunks.close()  # type: ignore[attr-defined]
