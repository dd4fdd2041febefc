"""Reading segments: the zstd frame walk and decompression into chunks.

:func:`read_segment` reads one segment file, walks its zstd frame headers with the compiled
kernel (:func:`herocollector.decode.native.scan_frames`) and decompresses the frames into
:class:`Chunk` objects of at most ``chunk_bytes`` decompressed bytes: consecutive small frames
together (``multi_decompress_to_buffer``, no GIL between frames), a frame larger than that, or
of unknown size, on its own, streamed in pieces. The decoder runs the reading on a
thread, a few chunks ahead of the record decoder (:mod:`herocollector.decode.prefetch`).

Damage found here raises :class:`~herocollector.errors.SegmentError` naming the file and the
offset of the damaged frame, after the chunks before it (marked ``doomed`` when they came
from the same read, so that the record decoder checks but does not output them).

May import: :mod:`herocollector.decode.records`, :mod:`herocollector.decode.native` and
:mod:`herocollector.errors`.
"""

from __future__ import annotations

from collections.abc import Generator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, TypeVar

import numpy as np
import zstandard

from herocollector.decode import native as kernel  # the compiled kernels, loaded as fast as possible
from herocollector.decode import status as codes
from herocollector.decode.records import pool_empty
from herocollector.errors import SegmentError

SINGLE_PASS_BYTES = 128 * 1024
"""zstd decodes a frame of known content size at once (checking less than when streaming it:
not the window size, not raw blocks against the window) when its output buffer can take the
whole content. The reference decodes frame by frame with ``zstandard``'s decompression
object, whose output buffer holds 128 KiB: frames of at most that size are decoded at once,
larger ones (or of unknown size) streamed. This decoder does the same, so that both accept
and refuse exactly the same frames."""

MAX_FRAME_BYTES = 64 << 20
"""Most decompressed bytes one zstd frame may hold (64 MiB). A frame over it is refused with a
``SegmentError`` naming its offset, as soon as its header declares more or its streamed
content passes the limit: a zstd bomb (gigabytes from a few kilobytes) fails quickly, in
bounded memory. The data logger writes one record per frame."""


def compressed_frame_limit(max_frame_bytes: int) -> int:
    """Most compressed bytes of a frame holding at most ``max_frame_bytes``.

    That is, in raw blocks, with a 3-byte header per 128 KiB block, a frame header and a checksum.
    """
    return max_frame_bytes + 3 * (max_frame_bytes // codes.MAX_BLOCK_SIZE + 1) + 32


T = TypeVar("T")


class Readable(Protocol):
    """A binary file object, as the reader uses it."""

    def readinto(self, buffer: memoryview, /) -> int | None:
        """Read into ``buffer``; the bytes read (0 or None at the end)."""


# ----------------------------------------------------------------------------------------
# Reading: frame walk and zstd (the reader thread)
# ----------------------------------------------------------------------------------------


@dataclass
class Chunk:
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


def merged(chunks: list[Chunk]) -> Chunk:
    """One chunk holding the units of several chunks of whole frames, in order.

    Small chunks (the last frames of a segment file, and whole small files of a rotated run)
    are decoded together: one kernel call and one output batch instead of one per file.
    """
    if len(chunks) == 1:
        return chunks[0]
    data = pool_empty(sum(c.data.size for c in chunks), np.uint8)
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
    return Chunk(chunks[0].name, data, np.concatenate(ends), frames, names=tuple(names))


class ReadBuffers:
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
        slots = capacity // codes.MIN_FRAME_BYTES + 1
        if slots > self.slots:
            self.slots = slots
            self.starts, self.ends, self.sizes = (np.empty(slots, dtype=np.int64) for _ in range(3))
            self.kinds = np.empty(slots, dtype=np.uint8)


_FRAME_DAMAGE = {
    codes.FRAME_INVALID: "corrupt zstd frame: invalid frame or block header",
    codes.FRAME_TRUNCATED: "truncated zstd frame at the end of the segment",
}


def _frame_damage(status: int, offset: int) -> str:
    """The message for damage found by the frame walk at file offset ``offset``."""
    if status == codes.FRAME_BAD_MAGIC:
        if offset == 0:
            return "not a zstd frame (bad magic number)"
        return "bytes after a zstd frame that do not start a zstd frame"
    return _FRAME_DAMAGE[status]


@dataclass
class Span:
    """The complete frames of one read of a segment: what one decompression step takes.

    ``buf`` holds the segment's bytes from file offset ``base``; frame ``i`` is
    ``buf[starts[i]:ends[i]]``. A span from :func:`scan_segment` views the reader's buffers,
    valid until the walk goes on, unless the walk was asked to ``keep`` them (then another
    thread may hold the span).
    """

    name: str | Path
    buf: np.ndarray
    starts: np.ndarray
    ends: np.ndarray
    sizes: np.ndarray
    kinds: np.ndarray
    base: int
    doomed: bool  # damage follows in the same read: decode only to find earlier damage

    @property
    def nbytes(self) -> int:
        """Compressed bytes of its frames."""
        return int(self.ends[-1]) if self.ends.size else 0


def read_segment(
    fh: Readable,
    name: str | Path,
    chunk_bytes: int,
    dctx: zstandard.ZstdDecompressor,
    space: ReadBuffers | None = None,
    max_frame_bytes: int = MAX_FRAME_BYTES,
) -> Iterator[Chunk]:
    """Read, walk and decompress one segment into chunks of at most ``chunk_bytes``.

    Everything before the first damage is yielded; then ``SegmentError`` is raised.

    Args:
        fh: The segment, opened for binary reading, at its start.
        name: Name used in errors.
        chunk_bytes: Compressed bytes read at a time, and decompressed bytes per chunk.
        dctx: The reader thread's decompressor.
        space: Buffers to reuse (the reader thread's, for all files of a run).
        max_frame_bytes: Most decompressed bytes of one frame (and so, about, compressed).

    Yields:
        Chunks, in file order.

    Raises:
        SegmentError: Damage; names ``name`` and the offset of the damaged frame.
    """
    for span in scan_segment(fh, name, chunk_bytes, space, max_frame_bytes):
        yield from decompress_span(span, chunk_bytes, dctx, max_frame_bytes)


def decompress_span(
    span: Span, chunk_bytes: int, dctx: zstandard.ZstdDecompressor, max_frame_bytes: int = MAX_FRAME_BYTES
) -> Iterator[Chunk]:
    """Decompress the frames of a span into chunks of at most ``chunk_bytes``; zstd damage is a ``SegmentError``."""
    frames = (span.starts, span.ends, span.sizes, span.kinds)
    return _decompress_frames(span.buf, *frames, span.base, span.name, chunk_bytes, dctx, span.doomed, max_frame_bytes)


def scan_segment(
    fh: Readable,
    name: str | Path,
    chunk_bytes: int,
    space: ReadBuffers | None = None,
    max_frame_bytes: int = MAX_FRAME_BYTES,
    *,
    base: int = 0,
    final: bool = True,
    keep: bool = False,
) -> Generator[Span, None, int]:
    """Read one segment and walk its frame headers, a read buffer at a time, without decompressing.

    Args:
        fh: The segment, opened for binary reading, at its start (or at ``base``).
        name: Name used in errors.
        chunk_bytes: Compressed bytes read at a time.
        space: Buffers to reuse (the reader's, for all files of a run).
        max_frame_bytes: Most decompressed bytes of one frame (and so, about, compressed).
        base: The file offset of the first byte ``fh`` gives (a segment read on from a
            frame boundary, :mod:`herocollector.decode.follow`).
        final: The end of ``fh`` is the end of the segment. False: a segment still being
            written, whose last frame may be torn, which is no damage then: the walk ends before it.
        keep: Every span keeps its buffers: the walk goes on in fresh ones (holding only the
            bytes after the span), so spans may be decompressed later, on other threads.

    Yields:
        Spans of complete frames, in file order; each views ``space`` until the next is asked
        for (unless ``keep``).

    Returns:
        The file offset right after the last complete frame (the generator's return value).

    Raises:
        SegmentError: Damage in the frame walk, after the spans before it (the last of which is
            ``doomed`` when it came from the same read).
    """
    capacity = chunk_bytes
    limit = max(chunk_bytes, compressed_frame_limit(max_frame_bytes))
    space = space or ReadBuffers(capacity)
    filled, eof = 0, False
    while True:
        buf = space.buf
        while not eof and filled < capacity:
            got = fh.readinto(buf.data[filled:capacity])
            eof = not got
            filled += got or 0
        starts, ends, sizes, kinds = space.starts, space.ends, space.sizes, space.kinds
        count, stop, status = kernel.scan_frames(buf, 0, filled, eof and final, starts, ends, sizes, kinds)
        if count:
            # When the walk found damage, the frames before it are still decoded, since the
            # first damage in the file is the one to report, but none of their records is
            # output: a damaged read buffer gives no records at all.
            doomed = status != codes.FRAME_OK
            at, to, size, kind = starts[:count], ends[:count], sizes[:count], kinds[:count]
            if keep:
                at, to, size, kind = at.copy(), to.copy(), size.copy(), kind.copy()
            yield Span(name, buf, at, to, size, kind, base, doomed)
            if keep:  # the span holds this buffer: the walk goes on in a new one
                space.buf = pool_empty(buf.size, np.uint8)
        if status != codes.FRAME_OK:
            raise SegmentError(_frame_damage(status, base + stop), name, base + stop)
        if eof:
            return base + stop
        if stop == 0:
            skip = _skippable_size(buf, filled)
            if skip is not None:
                # A skippable frame larger than the buffer: drop it without holding it.
                if not _discard(fh, buf, skip - filled):
                    if not final:
                        return base  # torn while it is written
                    raise SegmentError(_frame_damage(codes.FRAME_TRUNCATED, base), name, base)
                base += skip
                filled = 0
                continue
            # A zstd frame larger than the buffer: grow until it fits, up to the largest frame
            # that can hold at most max_frame_bytes.
            if capacity >= limit:
                message = f"zstd frame of more than {limit} bytes: over the limit of {max_frame_bytes} bytes per frame"
                raise SegmentError(message, name, base)
            capacity = min(2 * capacity, limit)
            space.grow(capacity)
        else:
            space.buf[: filled - stop] = buf[stop:filled]
            base += stop
            filled -= stop


def _skippable_size(buf: np.ndarray, filled: int) -> int | None:
    """Size of the skippable frame at the start of ``buf`` (header included), if it is one."""
    if filled < 8 or buf[0] & 0xF0 != 0x50 or bytes(buf[1:4]) != b"\x2a\x4d\x18":
        return None
    return 8 + int.from_bytes(bytes(buf[4:8]), "little")


def _discard(fh: Readable, buf: np.ndarray, count: int) -> bool:
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
    max_frame_bytes: int = MAX_FRAME_BYTES,
) -> Iterator[Chunk]:
    """Decompress complete frames, in groups or in pieces.

    Consecutive frames of known size are decompressed together, up to a chunk at a time; a
    frame larger than a chunk, or of unknown size, on its own in pieces.
    """
    zstd = kinds == codes.KIND_ZSTD
    big = zstd & ((sizes < 0) | (sizes > min(chunk_bytes, SINGLE_PASS_BYTES)))
    known = np.where(zstd & ~big, sizes, 0)
    running = np.cumsum(known)
    bigs = np.flatnonzero(big)
    count = starts.size
    first = 0
    while first < count:
        if big[first]:
            lo, hi, declared = int(starts[first]), int(ends[first]), int(sizes[first])
            yield from _frame_in_pieces(buf, lo, hi, declared, base, name, chunk_bytes, dctx, doomed, max_frame_bytes)
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
) -> Iterator[Chunk]:
    """Decompress frames of known size (at most ``SINGLE_PASS_BYTES`` each) together.

    zstd's ``multi_decompress_to_buffer`` decompresses them one after the other into one
    buffer without taking the GIL between frames; a streaming reader takes it at every frame
    end, and with the data logger's one frame per record the reader threads of runs decoded
    in parallel would queue for it. Its output is checked to be one buffer and wrapped, not
    copied. Groups holding an empty zstd frame are streamed instead (given only empty frames,
    that call frees memory twice). Any failure is worked out frame by frame.
    """
    total = int(sizes.sum())
    zstd = np.asarray(kinds == codes.KIND_ZSTD)
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
        yield Chunk(name, out, np.cumsum(sizes)[units], starts[units] + base, doomed=doomed)


def _stream_group(buf: np.ndarray, lo: int, hi: int, total: int, dctx: zstandard.ZstdDecompressor) -> np.ndarray | None:
    """``buf[lo:hi]`` decompressed by streaming across frames; None unless exactly ``total`` bytes."""
    out = pool_empty(total, np.uint8)
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
    array: np.ndarray = np.frombuffer(segment, dtype=np.uint8)  # type: ignore[call-overload]
    return array


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
    data = pool_empty(total, np.uint8)
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
) -> Iterator[Chunk]:
    """Find the first corrupt frame of a group that failed (slow path, errors only).

    Yields the content of the intact frames before it, to be checked for earlier damage
    but not output, then raises its ``SegmentError``.
    """
    contents: list[bytes] = []
    offsets: list[int] = []
    for i in range(starts.size):
        if kinds[i] == codes.KIND_SKIPPABLE:
            continue
        lo, hi = int(starts[i]), int(ends[i])
        content, problem = _decompress_one(buf.data[lo:hi], int(sizes[i]), dctx)
        if problem:
            if any(contents):
                sizes_ok = np.array([len(c) for c in contents], dtype=np.int64)
                units = sizes_ok > 0
                data = np.frombuffer(b"".join(contents), dtype=np.uint8).copy()
                frames = np.array(offsets, dtype=np.int64)[units] + base
                yield Chunk(name, data, np.cumsum(sizes_ok)[units], frames, doomed=True)
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
    max_frame_bytes: int = MAX_FRAME_BYTES,
) -> Iterator[Chunk]:
    """Decompress one frame on its own, handed on in pieces of at most ``chunk_bytes``.

    A frame of at most ``SINGLE_PASS_BYTES`` is decompressed at once, a larger one (or one
    of unknown size) streamed at most that many bytes at a time (see ``SINGLE_PASS_BYTES``).
    A frame whose header declares more than ``max_frame_bytes``, or that streams more, is
    refused: its pieces are never held together, so memory stays bounded by the chunk.
    """
    frame = np.array([base + lo], dtype=np.int64)
    over = f"over the limit of {max_frame_bytes} decompressed bytes per frame"
    if declared > max_frame_bytes:
        raise SegmentError(f"zstd frame declaring {declared} bytes of content: {over}", name, base + lo)
    step = declared if 0 <= declared <= SINGLE_PASS_BYTES else min(chunk_bytes, SINGLE_PASS_BYTES)
    produced = 0
    first = True
    try:
        reader = dctx.stream_reader(buf.data[lo:hi], read_across_frames=False)
        whole = pool_empty(declared, np.uint8) if step == declared else None
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
                piece = pool_empty(chunk_bytes, np.uint8)
                got = 0
                while got < chunk_bytes:
                    n = reader.readinto(piece.data[got : got + step])
                    if not n:
                        break
                    got += n
            produced += got
            if produced > max_frame_bytes:
                message = f"zstd frame decompressing to more than {max_frame_bytes} bytes: {over}"
                raise SegmentError(message, name, base + lo)
            last = produced == declared if whole is not None else got < chunk_bytes
            if last and declared >= 0 and produced != declared:
                message = f"corrupt zstd frame: {produced} bytes decompressed, header says {declared}"
                raise SegmentError(message, name, base + lo)
            yield Chunk(name, piece[:got], np.array([got], dtype=np.int64), frame, True, first, last, declared, doomed)
            if last:
                return
            first = False
    except zstandard.ZstdError as exc:
        raise SegmentError(f"corrupt zstd frame: {exc}", name, base + lo) from None
