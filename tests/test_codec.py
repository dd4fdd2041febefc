"""Unit, property and fuzz tests of the ``.seg.zst`` segment codec (``herocollector.decode.codec``).

The tests round-trip records through the project's own encoder, check the varint and zigzag
primitives against hand-computed bytes, feed the decoder damaged segments (asserting the
exception type, the file name and the byte offset), fuzz it with hypothesis, and compare it
with the data logger's own C++ decoder.
"""

from __future__ import annotations

import contextlib
import errno
import io
import json
import os
import signal
import struct
import tempfile
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zstandard
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from herocollector.decode.codec import (
    DEFAULT_CHUNK_BYTES,
    Records,
    SegmentDecoder,
    TickState,
    encode_records,
    encode_segment,
    encode_varints,
    zigzag_decode,
    zigzag_encode,
)
from herocollector.errors import CollectorError, SegmentError, UnknownStreamError
from herocollector.testing.numpy_decoder import decode_varints

# ----------------------------------------------------------------------------------------
# Constants and helpers
# ----------------------------------------------------------------------------------------

MIN_CHUNK = 4096
"""The smallest ``chunk_bytes`` the decoder accepts (smaller values are raised to it)."""

KNOWN_IDS: tuple[int, ...] = (0, 1, 2, 7, 300, 2**31, 2**32 - 1)
"""Stream ids declared by the fake run; includes 0 and the largest uint32."""

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
UINT64_MAX = 2**64 - 1
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
SEGMENT_NAME = "run-0001/segment-000042.seg.zst"
HANG_GUARD_SECONDS = 60
"""Generous bound after which a single decode is reported as hanging (never hit normally)."""

FUZZ = settings(
    max_examples=200,
    deadline=None,  # no timing assertions; a real hang is caught by ``hang_guard`` instead
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
PROPERTY = settings(
    max_examples=80,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


def wrap64(value: int) -> int:
    """Wrap a Python integer to int64, as two's complement arithmetic does.

    Args:
        value: Any integer.

    Returns:
        The integer congruent to ``value`` modulo 2**64 in ``[-2**63, 2**63)``.
    """
    return (value + 2**63) % 2**64 - 2**63


def leb128(value: int) -> bytes:
    """Reference LEB128 encoder, written out byte by byte.

    Args:
        value: Unsigned integer below 2**64.

    Returns:
        The varint bytes.
    """
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def padded(data: bytes, fill: int = 0) -> np.ndarray:
    """A ``uint8`` buffer holding ``data`` and the 8 padding bytes ``decode_varints`` needs.

    Args:
        data: The bytes to decode.
        fill: Value of the padding bytes.

    Returns:
        The buffer.
    """
    return np.frombuffer(data + bytes([fill]) * 8, dtype=np.uint8).copy()


def assert_records_equal(actual: Records, expected: Records) -> None:
    """Assert that two sets of record columns are identical, column by column and dtype.

    Args:
        actual: The decoded records.
        expected: The records that were encoded.
    """
    for column, dtype in Records.DTYPES:
        got, want = getattr(actual, column), getattr(expected, column)
        assert got.dtype == dtype, f"{column}: dtype {got.dtype}, expected {dtype}"
        assert np.array_equal(got, want.astype(dtype)), f"{column} differs:\n{got}\n!=\n{want}"


def take(records: Records, keep: np.ndarray) -> Records:
    """The records selected by a boolean mask, with rebuilt offsets.

    Args:
        records: All records.
        keep: One boolean per record.

    Returns:
        The kept records, in order.
    """
    keep = np.asarray(keep, dtype=bool)
    n = np.diff(records.offsets)
    element_keep = np.repeat(keep, n)
    offsets = np.zeros(int(keep.sum()) + 1, dtype=np.int64)
    np.cumsum(n[keep], out=offsets[1:])
    return Records(
        records.stream_ids[keep],
        records.ticks[keep],
        offsets,
        records.indices[element_keep],
        records.quantised[element_keep],
    )


def slice_records(records: Records, lo: int, hi: int) -> Records:
    """Records ``lo..hi-1`` as their own columns.

    Args:
        records: All records.
        lo: First record.
        hi: One past the last record.

    Returns:
        The slice.
    """
    keep = np.zeros(len(records), dtype=bool)
    keep[lo:hi] = True
    return take(records, keep)


def frame_spans(data: bytes) -> list[tuple[int, int]]:
    """Byte ranges of the zstd frames of a segment, found with ``zstandard`` itself.

    Args:
        data: Segment bytes made only of regular zstd frames.

    Returns:
        ``(start, end)`` of every frame, in order.
    """
    spans, pos = [], 0
    while pos < len(data):
        obj = zstandard.ZstdDecompressor().decompressobj()
        obj.decompress(data[pos:])
        end = len(data) - len(obj.unused_data)
        spans.append((pos, end))
        pos = end
    return spans


def skippable_frame(payload: bytes, variant: int = 0) -> bytes:
    """A zstd skippable frame (magic ``0x184D2A50 + variant``, little-endian).

    Args:
        payload: The user data it carries.
        variant: Low nibble of the magic number (0..15).

    Returns:
        The frame bytes.
    """
    return struct.pack("<II", 0x184D2A50 + variant, len(payload)) + payload


def decode(
    data: bytes,
    *,
    ids: Sequence[int] = KNOWN_IDS,
    selected: Sequence[int] | None = None,
    chunk_bytes: int = MIN_CHUNK,
    name: str = SEGMENT_NAME,
) -> Records:
    """Decode one segment held in memory with a fresh decoder.

    Args:
        data: The segment bytes.
        ids: Stream ids with metadata.
        selected: Streams to return (None for all).
        chunk_bytes: The decoder's chunk size.
        name: File name used in errors.

    Returns:
        The decoded records.
    """
    with hang_guard():
        return SegmentDecoder(ids, selected, chunk_bytes=chunk_bytes).decode_bytes(data, name)


def expect_segment_error(
    data: bytes,
    offset: int | None,
    *,
    error: type[SegmentError] = SegmentError,
    match: str | None = None,
    **kwargs: object,
) -> SegmentError:
    """Decode ``data`` and check that it fails with the right error, file name and offset.

    Args:
        data: The damaged segment.
        offset: Expected ``.offset`` (None: not checked).
        error: Expected exception type.
        match: Regular expression the message must match.
        **kwargs: Passed to :func:`decode`.

    Returns:
        The exception.
    """
    name = str(kwargs.get("name", SEGMENT_NAME))
    with pytest.raises(error, match=match) as info:
        decode(data, **kwargs)  # type: ignore[arg-type]
    exc = info.value
    assert type(exc) is error, f"expected exactly {error.__name__}, got {type(exc).__name__}: {exc}"
    assert exc.path == name
    assert str(exc).startswith(f"{name}: "), str(exc)
    assert f"offset {exc.offset}" in str(exc)
    if offset is not None:
        assert exc.offset == offset, f"offset {exc.offset}, expected {offset}: {exc}"
    return exc


@contextlib.contextmanager
def hang_guard(seconds: int = HANG_GUARD_SECONDS) -> Iterator[None]:
    """Turn a decoder that never returns into a test failure instead of a stuck test run.

    This is a watchdog, not a performance check: the bound is orders of magnitude above the
    time any decode here takes. It is a no-op where ``SIGALRM`` is unavailable.

    Args:
        seconds: Wall-clock bound for the block.

    Yields:
        Nothing.
    """
    if not hasattr(signal, "SIGALRM") or threading.current_thread() is not threading.main_thread():
        yield
        return

    def expire(signum: int, frame: object) -> None:
        """Fail the running test from the ``SIGALRM`` handler.

        Args:
            signum: The signal number.
            frame: The interrupted stack frame.
        """
        raise AssertionError(f"decoder did not return within {seconds} s (hang)")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


class TrickleReader(io.RawIOBase):
    """A binary file object that returns at most ``step`` bytes per read (like a pipe).

    Args:
        data: The bytes to serve.
        step: Largest number of bytes returned by one ``readinto``.
    """

    def __init__(self, data: bytes, step: int) -> None:
        self._data = memoryview(data)
        self._pos = 0
        self._step = step

    def readable(self) -> bool:
        """Whether the stream can be read (it can).

        Returns:
            True.
        """
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        """Copy up to ``step`` bytes into ``buffer``.

        Args:
            buffer: Where to put the bytes.

        Returns:
            Bytes copied; 0 at the end of the data.
        """
        count = min(len(buffer), self._step, len(self._data) - self._pos)
        buffer[:count] = self._data[self._pos : self._pos + count]
        self._pos += count
        return count


# ----------------------------------------------------------------------------------------
# Strategies
# ----------------------------------------------------------------------------------------

INT64 = st.integers(INT64_MIN, INT64_MAX)
EDGE_INT64 = st.sampled_from(
    [
        0,
        1,
        -1,
        63,
        64,
        -64,
        -65,
        2**31,
        2**32 - 1,
        2**32,
        2**32 + 1,
        2**53 + 1,
        2**62,
        INT64_MAX,
        INT64_MIN,
        INT64_MIN + 1,
    ]
)
ANY_INT64 = st.one_of(st.integers(-300, 300), EDGE_INT64, INT64)
INDEX = st.one_of(st.integers(0, 5000), st.integers(2**32 - 8, 2**32 + 8), EDGE_INT64, INT64)


def absolute_ticks(stream_ids: Sequence[int], deltas: Sequence[int]) -> list[int]:
    """Per-stream running sums of tick deltas, starting from 0, wrapping like int64.

    Args:
        stream_ids: Stream of each record.
        deltas: Tick delta of each record.

    Returns:
        The absolute tick of each record.
    """
    last: dict[int, int] = {}
    ticks = []
    for sid, delta in zip(stream_ids, deltas):
        last[sid] = wrap64(last.get(sid, 0) + delta)
        ticks.append(last[sid])
    return ticks


@st.composite
def records_st(draw: st.DrawFn, max_records: int = 30, max_n: int = 10, increasing: bool | None = None) -> Records:
    """Records of several interleaved streams with extreme indices, values and ticks.

    Args:
        draw: Hypothesis draw function.
        max_records: Most records drawn.
        max_n: Most elements per record.
        increasing: Indices strictly increasing per record (None: drawn).

    Returns:
        The records.
    """
    streams = draw(st.lists(st.sampled_from(KNOWN_IDS), min_size=1, max_size=len(KNOWN_IDS), unique=True))
    mono = draw(st.booleans()) if increasing is None else increasing
    count = draw(st.integers(0, max_records))
    sids, deltas, indices, quantised = [], [], [], []
    for _ in range(count):
        sids.append(draw(st.sampled_from(streams)))
        deltas.append(draw(ANY_INT64))
        n = draw(st.integers(0, max_n))
        if mono:
            indices.append(sorted(draw(st.lists(INDEX, min_size=n, max_size=n, unique=True))))
        else:
            indices.append(draw(st.lists(ANY_INT64, min_size=n, max_size=n)))
        quantised.append(draw(st.lists(ANY_INT64, min_size=n, max_size=n)))
    return Records.from_lists(sids, absolute_ticks(sids, deltas), indices, quantised)


def bulk_records(seed: int, count: int, max_n: int, increasing: bool = True) -> Records:
    """Many, possibly large, records generated with NumPy (fast enough for big segments).

    Indices start anywhere from 0 to 2**62 (often above 2**32) with gaps from 0 to 2**40;
    values mix small numbers, extremes and the full int64 range; tick deltas have both
    signs and large magnitudes.

    Args:
        seed: Random seed.
        count: Number of records.
        max_n: Most elements per record.
        increasing: Strictly increasing indices per record; else arbitrary int64.

    Returns:
        The records.
    """
    rng = np.random.default_rng(seed)
    sids = rng.choice(np.array(KNOWN_IDS, dtype=np.uint32), size=count)
    n = rng.integers(0, max_n + 1, size=count)
    n[rng.random(count) < 0.15] = 0
    offsets = np.zeros(count + 1, dtype=np.int64)
    np.cumsum(n, out=offsets[1:])
    total = int(offsets[-1])

    def mixed(size: int) -> np.ndarray:
        """A third each of small numbers, int64 edge values and uniform int64.

        Args:
            size: How many values.

        Returns:
            The values (``int64``).
        """
        kind = rng.integers(0, 3, size=size)
        out = rng.integers(INT64_MIN, INT64_MAX, size=size, dtype=np.int64, endpoint=True)
        small = kind == 0
        out[small] = rng.integers(-1000, 1000, size=int(small.sum()))
        edges = np.array([0, -1, 1, INT64_MIN, INT64_MAX, 2**32, -(2**32)], dtype=np.int64)
        edge = kind == 1
        out[edge] = rng.choice(edges, size=int(edge.sum()))
        return out

    if increasing:
        gaps = np.where(rng.random(total) < 0.7, rng.integers(0, 4, size=total), rng.integers(0, 2**40, size=total))
        starts = rng.choice(np.array([0, 2**32 - 3, 2**40, 2**62], dtype=np.int64), size=count)
        starts += rng.integers(0, 1000, size=count)
        element_record = np.repeat(np.arange(count), n)
        steps = (gaps + 1).astype(np.int64)
        steps[offsets[:-1][n > 0]] = 0
        running = np.cumsum(steps)
        first_running = running[offsets[:-1][n > 0]]
        indices = starts[element_record] + running - np.repeat(first_running, n[n > 0])
    else:
        indices = mixed(total)
    deltas = mixed(count).tolist()
    ticks = absolute_ticks([int(s) for s in sids], deltas)
    return Records(sids, np.array(ticks, dtype=np.int64), offsets, indices.astype(np.int64), mixed(total))


@st.composite
def bulk_records_st(draw: st.DrawFn) -> Records:
    """Hypothesis wrapper of :func:`bulk_records` with drawn sizes.

    Args:
        draw: Hypothesis draw function.

    Returns:
        The records.
    """
    return bulk_records(
        draw(st.integers(0, 2**32 - 1)),
        draw(st.integers(1, 40)),
        draw(st.sampled_from([2, 40, 300, 1200])),
        draw(st.booleans()),
    )


# ----------------------------------------------------------------------------------------
# Round trips
# ----------------------------------------------------------------------------------------


@PROPERTY
@given(
    records=records_st(),
    records_per_frame=st.integers(1, 40),
    chunk_bytes=st.sampled_from([MIN_CHUNK, 5000, DEFAULT_CHUNK_BYTES]),
    level=st.sampled_from([1, 3]),
)
def test_round_trip_small_records(records: Records, records_per_frame: int, chunk_bytes: int, level: int) -> None:
    data = encode_segment(records, records_per_frame=records_per_frame, level=level)
    assert_records_equal(decode(data, chunk_bytes=chunk_bytes), records)


@PROPERTY
@given(records=bulk_records_st(), records_per_frame=st.sampled_from([1, 2, 5, 17, 1000]))
def test_round_trip_bulk_records_small_chunks(records: Records, records_per_frame: int) -> None:
    data = encode_segment(records, records_per_frame=records_per_frame)
    assert_records_equal(decode(data, chunk_bytes=MIN_CHUNK), records)


@PROPERTY
@given(records=records_st(increasing=True))
def test_round_trip_increasing_indices(records: Records) -> None:
    for lo, hi in zip(records.offsets[:-1].tolist(), records.offsets[1:].tolist()):
        indices = records.indices[lo:hi].tolist()
        assert all(a < b for a, b in zip(indices, indices[1:]))
    assert_records_equal(decode(encode_segment(records)), records)


def test_round_trip_extreme_columns() -> None:
    records = Records.from_lists(
        [0, 2**32 - 1, 0, 7, 2**32 - 1, 0],
        [INT64_MAX, INT64_MIN, INT64_MIN, 0, -1, INT64_MAX],
        [
            [INT64_MIN, -1, 0, 2**32, INT64_MAX],
            [],
            [INT64_MAX, INT64_MIN, INT64_MAX],  # not increasing: the codec round-trips it anyway
            [2**32 + 5],
            [],
            [0, 1, 2, 3],
        ],
        [
            [INT64_MIN, INT64_MAX, 0, -1, 1],
            [],
            [INT64_MAX, INT64_MAX, INT64_MIN],
            [-(2**62)],
            [],
            [0, 0, 0, 0],
        ],
    )
    for records_per_frame in (1, 2, 6):
        data = encode_segment(records, records_per_frame=records_per_frame)
        assert_records_equal(decode(data), records)


def test_round_trip_only_empty_records() -> None:
    records = Records.from_lists([1, 2, 1], [5, -5, 10], [[], [], []], [[], [], []])
    for records_per_frame in (1, 3):
        assert_records_equal(decode(encode_segment(records, records_per_frame=records_per_frame)), records)


def test_encode_segment_frame_layout() -> None:
    records = bulk_records(seed=1, count=10, max_n=20)
    for records_per_frame, frames in ((1, 10), (3, 4), (10, 1), (50, 1)):
        data = encode_segment(records, records_per_frame=records_per_frame)
        spans = frame_spans(data)
        assert len(spans) == frames
        payload = b"".join(zstandard.ZstdDecompressor().decompress(data[a:b]) for a, b in spans)
        assert payload == encode_records(records, TickState())
    with pytest.raises(ValueError):
        encode_segment(records, records_per_frame=0)
    assert encode_segment(Records.concat([])) == b""


def test_encode_records_hand_computed_bytes() -> None:
    # stream 1, tick 3 (delta 3 -> zigzag 6), n=2, indices 300, 302 (gap 1), q -1 (zigzag 1), 64 (zigzag 128)
    first = Records.from_lists([1], [3], [[300, 302]], [[-1, 64]])
    assert encode_records(first, TickState()) == b"\x01\x06\x02\xac\x02\x01\x01\x80\x01"
    # A second record of the same stream stores its tick as a delta to the first: 1 - 3 = -2.
    second = Records.from_lists([1, 1], [3, 1], [[300, 302], []], [[-1, 64], []])
    assert encode_records(second, TickState()) == b"\x01\x06\x02\xac\x02\x01\x01\x80\x01" + b"\x01\x03\x00"


def test_large_frame_streaming_path_and_chunking() -> None:
    """One frame far bigger than a chunk, holding many records that straddle chunk ends."""
    records = bulk_records(seed=7, count=300, max_n=40, increasing=True)
    data = encode_segment(records, records_per_frame=len(records))
    ((start, end),) = frame_spans(data)
    assert zstandard.get_frame_parameters(data).content_size > 8 * MIN_CHUNK
    decoder = SegmentDecoder(KNOWN_IDS, chunk_bytes=MIN_CHUNK)
    chunks = list(decoder.decode_stream(io.BytesIO(data), SEGMENT_NAME))
    assert len(chunks) > 1
    assert all(chunk.offsets[0] == 0 and chunk.offsets[-1] == chunk.indices.size for chunk in chunks)
    assert_records_equal(Records.concat(chunks), records)


def test_single_record_bigger_than_chunk_among_small_frames() -> None:
    small = bulk_records(seed=3, count=30, max_n=5)
    huge = Records(
        np.array([7], dtype=np.uint32),
        np.array([-123456789], dtype=np.int64),
        np.array([0, 5000], dtype=np.int64),
        np.arange(5000, dtype=np.int64) * 3 + 2**40,
        np.random.default_rng(0).integers(INT64_MIN, INT64_MAX, size=5000, dtype=np.int64),
    )
    records = Records.concat([slice_records(small, 0, 15), huge, slice_records(small, 15, 30)])
    for records_per_frame in (1, 4):
        data = encode_segment(records, records_per_frame=records_per_frame)
        # The big frame is incompressible: its compressed size exceeds the read buffer too.
        assert max(b - a for a, b in frame_spans(data)) > MIN_CHUNK
        assert_records_equal(decode(data, chunk_bytes=MIN_CHUNK), records)


def test_many_small_frames_grouped_across_chunks() -> None:
    records = bulk_records(seed=11, count=2000, max_n=6)
    data = encode_segment(records, records_per_frame=1)
    assert len(data) > 4 * MIN_CHUNK
    decoder = SegmentDecoder(KNOWN_IDS, chunk_bytes=MIN_CHUNK)
    chunks = list(decoder.decode_stream(io.BytesIO(data), SEGMENT_NAME))
    assert len(chunks) > 4
    assert_records_equal(Records.concat(chunks), records)


@pytest.mark.parametrize("step", [1, 7, 4095, 5000])
def test_decode_stream_with_short_reads(step: int) -> None:
    records = bulk_records(seed=5, count=120, max_n=60)
    data = encode_segment(records, records_per_frame=9)
    decoder = SegmentDecoder(KNOWN_IDS, chunk_bytes=MIN_CHUNK)
    with hang_guard():
        got = Records.concat(decoder.decode_stream(TrickleReader(data, step), SEGMENT_NAME))
    assert_records_equal(got, records)


def test_frames_without_content_size_or_with_checksum() -> None:
    records = bulk_records(seed=21, count=60, max_n=200)
    payload = encode_records(records, TickState())
    for write_content_size in (False, True):
        for write_checksum in (False, True):
            compressor = zstandard.ZstdCompressor(write_content_size=write_content_size, write_checksum=write_checksum)
            stream = compressor.compressobj()
            data = stream.compress(payload) + stream.flush()
            for chunk_bytes in (MIN_CHUNK, DEFAULT_CHUNK_BYTES):
                assert_records_equal(decode(data, chunk_bytes=chunk_bytes), records)


def test_records_concat() -> None:
    empty = Records.from_lists([], [], [], [])
    a = Records.from_lists([1, 2], [10, 20], [[1, 2], []], [[3, 4], []])
    b = Records.from_lists([7], [-5], [[2**40]], [[INT64_MIN]])
    expected = Records.from_lists([1, 2, 7], [10, 20, -5], [[1, 2], [], [2**40]], [[3, 4], [], [INT64_MIN]])
    for parts in ([a, b], [empty, a, b], [a, empty, b], [a, empty, empty, b, empty], [empty, a, empty, b]):
        assert_records_equal(Records.concat(parts), expected)
    assert_records_equal(Records.concat([]), empty)
    assert_records_equal(Records.concat([empty, empty, empty]), empty)


def test_decode_file(tmp_path: Path) -> None:
    records = bulk_records(seed=2, count=50, max_n=30)
    path = tmp_path / "segment-000000.seg.zst"
    path.write_bytes(encode_segment(records, records_per_frame=3))
    decoder = SegmentDecoder(KNOWN_IDS, chunk_bytes=MIN_CHUNK)
    assert_records_equal(Records.concat(decoder.decode_file(path)), records)


def test_chunk_bytes_below_minimum_is_raised_to_it() -> None:
    records = bulk_records(seed=9, count=40, max_n=100)
    data = encode_segment(records, records_per_frame=5)
    assert_records_equal(decode(data, chunk_bytes=1), records)


# ----------------------------------------------------------------------------------------
# Ticks across segments
# ----------------------------------------------------------------------------------------


@PROPERTY
@given(
    records=st.one_of(records_st(max_records=40), bulk_records_st()),
    cuts=st.lists(st.floats(0, 1), max_size=5),
    records_per_frame=st.integers(1, 6),
)
def test_ticks_carry_across_segments(records: Records, cuts: list[float], records_per_frame: int) -> None:
    bounds = sorted({0, len(records), *(int(c * len(records)) for c in cuts)})
    writer_ticks = TickState()
    segments = [
        encode_segment(slice_records(records, lo, hi), writer_ticks, records_per_frame=records_per_frame)
        for lo, hi in zip(bounds[:-1], bounds[1:])
    ]
    decoder = SegmentDecoder(KNOWN_IDS, chunk_bytes=MIN_CHUNK)
    with hang_guard():
        parts = [decoder.decode_bytes(data, f"segment-{i:06d}.seg.zst") for i, data in enumerate(segments)]
    assert_records_equal(Records.concat(parts), records)


def test_ticks_carry_across_segment_files(tmp_path: Path) -> None:
    records = Records.from_lists(
        [1, 2, 1, 2, 1, 1],
        [100, -7, 250, INT64_MAX, 40, INT64_MIN],
        [[1], [2], [3], [], [5], [6]],
        [[10], [20], [30], [], [50], [60]],
    )
    writer_ticks = TickState()
    paths = []
    for i, (lo, hi) in enumerate(((0, 2), (2, 2), (2, 5), (5, 6))):
        path = tmp_path / f"segment-{i:06d}.seg.zst"
        path.write_bytes(encode_segment(slice_records(records, lo, hi), writer_ticks))
        paths.append(path)
    assert paths[1].read_bytes() == b""  # an empty segment in the middle
    decoder = SegmentDecoder([1, 2])
    got = Records.concat(chunk for path in paths for chunk in decoder.decode_file(path))
    assert_records_equal(got, records)
    # A fresh decoder on a later segment starts every stream from tick 0 again.
    alone = SegmentDecoder([1, 2]).decode_bytes(paths[2].read_bytes())
    assert alone.ticks.tolist() == [250 - 100, wrap64(INT64_MAX + 7), 250 - 100 + 40 - 250]


# ----------------------------------------------------------------------------------------
# Selection
# ----------------------------------------------------------------------------------------


@PROPERTY
@given(
    records=st.one_of(records_st(max_records=40), bulk_records_st()),
    selected=st.lists(st.sampled_from(KNOWN_IDS + (12345,)), unique=True),
    records_per_frame=st.integers(1, 5),
    segments=st.integers(1, 3),
)
def test_selection(records: Records, selected: list[int], records_per_frame: int, segments: int) -> None:
    bounds = np.linspace(0, len(records), segments + 1).astype(int)
    writer_ticks = TickState()
    datas = [
        encode_segment(slice_records(records, lo, hi), writer_ticks, records_per_frame=records_per_frame)
        for lo, hi in zip(bounds[:-1], bounds[1:])
    ]
    decoder = SegmentDecoder(KNOWN_IDS, selected, chunk_bytes=MIN_CHUNK)
    with hang_guard():
        got = Records.concat(decoder.decode_bytes(data) for data in datas)
    assert_records_equal(got, take(records, np.isin(records.stream_ids, selected)))


def test_selection_hand_written() -> None:
    records = Records.from_lists(
        [1, 2, 3, 2, 1, 3],
        [10, 20, 30, 15, 5, 31],
        [[1, 2], [3], [], [4, 9], [7], [8]],
        [[-1, -2], [3], [], [4, 9], [7], [-8]],
    )
    data = encode_segment(records, records_per_frame=2)
    got = decode(data, ids=[1, 2, 3], selected=[2, 3])
    expected = Records.from_lists([2, 3, 2, 3], [20, 30, 15, 31], [[3], [], [4, 9], [8]], [[3], [], [4, 9], [-8]])
    assert_records_equal(got, expected)
    assert len(decode(data, ids=[1, 2, 3], selected=[])) == 0


def test_unselected_streams_are_still_validated() -> None:
    records = Records.from_lists([1, 99], [0, 0], [[1], [2]], [[1], [2]])
    data = encode_segment(records)
    second_frame = frame_spans(data)[1][0]
    for selected in ([1], []):
        exc = expect_segment_error(data, second_frame, error=UnknownStreamError, ids=[1], selected=selected)
        assert exc.stream_id == 99


# ----------------------------------------------------------------------------------------
# Varints and zigzag
# ----------------------------------------------------------------------------------------

VARINT_TABLE = [
    (0, b"\x00"),
    (1, b"\x01"),
    (127, b"\x7f"),
    (128, b"\x80\x01"),
    (255, b"\xff\x01"),
    (300, b"\xac\x02"),
    (16383, b"\xff\x7f"),
    (16384, b"\x80\x80\x01"),
    (2**32 - 1, b"\xff\xff\xff\xff\x0f"),
    (2**56 - 1, b"\xff" * 7 + b"\x7f"),
    (2**56, b"\x80" * 8 + b"\x01"),
    (2**63 - 1, b"\xff" * 8 + b"\x7f"),
    (2**63, b"\x80" * 9 + b"\x01"),
    (2**63 + 1, b"\x81" + b"\x80" * 8 + b"\x01"),
    (2**64 - 1, b"\xff" * 9 + b"\x01"),
]


@pytest.mark.parametrize(("value", "encoded"), VARINT_TABLE)
def test_varint_hand_computed(value: int, encoded: bytes) -> None:
    assert leb128(value) == encoded
    assert encode_varints(np.array([value], dtype=np.uint64)).tobytes() == encoded
    for fill in (0x00, 0xFF):  # the padding must never leak into the value
        values, starts, ends = decode_varints(padded(encoded, fill), len(encoded))
        assert values.dtype == np.uint64
        assert values.tolist() == [value]
        assert starts.tolist() == [0] and ends.tolist() == [len(encoded) - 1]


def test_varint_table_back_to_back() -> None:
    values = [v for v, _ in VARINT_TABLE]
    encoded = b"".join(e for _, e in VARINT_TABLE)
    assert encode_varints(np.array(values, dtype=np.uint64)).tobytes() == encoded
    got, starts, ends = decode_varints(padded(encoded, 0xAA), len(encoded))
    assert got.tolist() == values
    lengths = [len(e) for _, e in VARINT_TABLE]
    assert (ends - starts + 1).tolist() == lengths
    assert starts.tolist() == np.concatenate([[0], np.cumsum(lengths)[:-1]]).tolist()


def test_varint_lengths_at_every_boundary() -> None:
    for k in range(1, 10):
        below, at = 2 ** (7 * k) - 1, 2 ** (7 * k)
        assert len(encode_varints(np.array([below], dtype=np.uint64))) == k
        if at <= UINT64_MAX:
            assert len(encode_varints(np.array([at], dtype=np.uint64))) == k + 1


def test_varint_empty_and_unfinished() -> None:
    assert encode_varints(np.zeros(0, dtype=np.uint64)).size == 0
    values, starts, ends = decode_varints(padded(b""), 0)
    assert values.size == starts.size == ends.size == 0
    # Bytes after the last terminating byte are an unfinished varint and are ignored.
    data = b"\x01\xac\x02\x80\x80"
    values, starts, ends = decode_varints(padded(data, 0x01), len(data))
    assert values.tolist() == [1, 300] and ends.tolist() == [0, 2]
    values, _, _ = decode_varints(padded(b"\xff\xff"), 2)
    assert values.size == 0


def test_varint_tenth_byte_bits_past_64_are_dropped() -> None:
    # As the C++ reader does: only bit 0 of the tenth byte's payload fits in 64 bits.
    for data, value in ((b"\xff" * 9 + b"\x7f", 2**64 - 1), (b"\x80" * 9 + b"\x02", 0), (b"\x80" * 9 + b"\x03", 2**63)):
        values, _, _ = decode_varints(padded(data), len(data))
        assert values.tolist() == [value]


def test_decode_varints_needs_padding() -> None:
    data = np.frombuffer(b"\xac\x02" + b"\x00" * 7, dtype=np.uint8)
    with pytest.raises(ValueError):
        decode_varints(data, 2)
    with pytest.raises(ValueError):
        decode_varints(padded(b"\x01\x02" * 8)[::2], 4)  # not contiguous


@PROPERTY
@given(values=st.lists(st.integers(0, UINT64_MAX), max_size=200), fill=st.integers(0, 255))
def test_varint_round_trip(values: list[int], fill: int) -> None:
    encoded = encode_varints(np.array(values, dtype=np.uint64)).tobytes()
    assert encoded == b"".join(leb128(v) for v in values)
    got, starts, ends = decode_varints(padded(encoded, fill), len(encoded))
    assert got.tolist() == values
    assert (ends - starts + 1).tolist() == [len(leb128(v)) for v in values]


ZIGZAG_TABLE = [
    (0, 0),
    (-1, 1),
    (1, 2),
    (-2, 3),
    (2, 4),
    (-64, 127),
    (64, 128),
    (INT64_MAX, 2**64 - 2),
    (INT64_MIN, 2**64 - 1),
]


def test_zigzag_hand_computed() -> None:
    signed = np.array([s for s, _ in ZIGZAG_TABLE], dtype=np.int64)
    unsigned = np.array([u for _, u in ZIGZAG_TABLE], dtype=np.uint64)
    encoded = zigzag_encode(signed)
    assert encoded.dtype == np.uint64 and np.array_equal(encoded, unsigned)
    decoded = zigzag_decode(unsigned)
    assert decoded.dtype == np.int64 and np.array_equal(decoded, signed)


@PROPERTY
@given(signed=st.lists(INT64, max_size=100), unsigned=st.lists(st.integers(0, UINT64_MAX), max_size=100))
def test_zigzag_is_a_bijection(signed: list[int], unsigned: list[int]) -> None:
    s = np.array(signed, dtype=np.int64)
    u = np.array(unsigned, dtype=np.uint64)
    assert zigzag_decode(zigzag_encode(s)).tolist() == signed
    assert zigzag_encode(zigzag_decode(u)).tolist() == unsigned
    assert zigzag_encode(s).tolist() == [(2 * v) if v >= 0 else (-2 * v - 1) for v in signed]


# ----------------------------------------------------------------------------------------
# Damaged segments
# ----------------------------------------------------------------------------------------


def three_frames() -> tuple[Records, bytes, list[tuple[int, int]]]:
    """A small valid segment of three frames.

    Returns:
        The records, the segment and its frame spans.
    """
    records = Records.from_lists(
        [1, 2, 1, 7, 2, 1],
        [10, 20, 30, 40, 50, 60],
        [[1, 5, 9], [2**40], [], [3, 4], [0, 1, 2, 3, 4, 5, 6, 7], [-5]],
        [[-1, 0, 1], [INT64_MAX], [], [7, -7], [1, 2, 3, 4, 5, 6, 7, 8], [INT64_MIN]],
    )
    data = encode_segment(records, records_per_frame=2)
    spans = frame_spans(data)
    assert len(spans) == 3
    return records, data, spans


def test_empty_file(tmp_path: Path) -> None:
    got = decode(b"")
    assert len(got) == 0 and got.offsets.tolist() == [0]
    assert_records_equal(got, Records.from_lists([], [], [], []))
    path = tmp_path / "empty.seg.zst"
    path.write_bytes(b"")
    assert list(SegmentDecoder(KNOWN_IDS).decode_file(path)) == []


def test_truncated_last_frame() -> None:
    records, data, spans = three_frames()
    last_start = spans[-1][0]
    for cut in range(last_start + 1, len(data)):
        expect_segment_error(data[:cut], last_start)
    for cut in range(1, spans[0][1]):
        expect_segment_error(data[:cut], 0)
    # Cutting exactly at a frame boundary leaves a valid, shorter segment.
    for frames, (_, end) in enumerate(spans, start=1):
        assert_records_equal(decode(data[:end]), slice_records(records, 0, 2 * frames))


def test_truncated_large_last_frame(tmp_path: Path) -> None:
    small = bulk_records(seed=4, count=400, max_n=5)
    big = bulk_records(seed=5, count=30, max_n=300, increasing=False)
    writer_ticks = TickState()
    data = encode_segment(small, writer_ticks) + encode_segment(big, writer_ticks, records_per_frame=30)
    last_start, last_end = frame_spans(data)[-1]
    assert last_end - last_start > 2 * MIN_CHUNK and last_start > MIN_CHUNK
    for cut in np.linspace(last_start + 1, last_end - 1, 25).astype(int).tolist() + [last_end - 1, last_start + 3]:
        expect_segment_error(data[:cut], last_start, match="truncated|do not start")
    path = tmp_path / "cut.seg.zst"
    path.write_bytes(data[: last_end - 10])
    with pytest.raises(SegmentError) as info:
        list(SegmentDecoder(KNOWN_IDS, chunk_bytes=MIN_CHUNK).decode_file(path))
    assert info.value.path == str(path) and str(path) in str(info.value)
    assert info.value.offset == last_start


@pytest.mark.parametrize("garbage", [b"\x00", b"garbage!", b"\x28\xb5\x2f", b"\xff" * 5000, b"\x50\x2a\x4d"])
@pytest.mark.parametrize("big", [False, True])
def test_garbage_after_valid_frames(garbage: bytes, big: bool) -> None:
    records = bulk_records(seed=8, count=400 if big else 5, max_n=10)
    valid = encode_segment(records, records_per_frame=3)
    assert (len(valid) > 2 * MIN_CHUNK) == big
    expect_segment_error(valid + garbage, len(valid), match="do not start a zstd frame")


@PROPERTY
@given(garbage=st.binary(min_size=1, max_size=64), big=st.booleans())
def test_random_garbage_after_valid_frames(garbage: bytes, big: bool) -> None:
    assume(garbage[:1] not in (b"\x28",) and not (0x50 <= garbage[0] <= 0x5F))
    records = bulk_records(seed=8, count=400 if big else 5, max_n=10)
    valid = encode_segment(records, records_per_frame=3)
    expect_segment_error(valid + garbage, len(valid))


@pytest.mark.parametrize(
    "data",
    [
        b"x",
        b"not a zstd segment at all",
        bytes(range(256)) * 40,
        b"\x00\x00\x00\x00",
        b"\x28\xb5\x2f\xfc" + b"\x00" * 20,
    ],
)
def test_file_of_garbage(data: bytes) -> None:
    expect_segment_error(data, 0, match="not a zstd frame")


def test_invalid_frame_header() -> None:
    _, data, spans = three_frames()
    second = spans[1][0]
    damaged = bytearray(data)
    damaged[second + 4] |= 0x08  # reserved bit of the frame header descriptor
    expect_segment_error(bytes(damaged), second, match="corrupt")


def cut_record_payload() -> tuple[bytes, int]:
    """The raw payload of three records and the byte length of the last record.

    Returns:
        ``(payload, last_record_bytes)``.
    """
    records = Records.from_lists(
        [1, 2, 1], [5, 6, 7], [[1, 2, 3], [2**40, 2**41], [9, 300, 2**33]], [[1, -1, 2], [INT64_MAX, 5], [-300, 0, 7]]
    )
    payload = encode_records(records, TickState())
    return payload, len(payload) - len(encode_records(slice_records(records, 0, 2), TickState()))


@pytest.mark.parametrize("before_records", [4, 800])
def test_record_cut_short_inside_a_frame(before_records: int) -> None:
    # With 800 records before it, the damaged frame lies beyond the first read buffer.
    before = encode_segment(bulk_records(seed=1, count=before_records, max_n=5), records_per_frame=2)
    after = encode_segment(bulk_records(seed=2, count=4, max_n=5), records_per_frame=1)
    payload, last_record = cut_record_payload()
    assert last_record > 8
    for cut in range(1, last_record):
        frame = zstandard.ZstdCompressor().compress(payload[:-cut])
        expect_segment_error(frame, 0, match="cut short")
        expect_segment_error(before + frame + after, len(before), match="cut short")
        expect_segment_error(before + frame + after, len(before), match="cut short", chunk_bytes=DEFAULT_CHUNK_BYTES)
    # Removing the whole last record leaves valid data.
    frame = zstandard.ZstdCompressor().compress(payload[:-last_record])
    assert len(decode(frame)) == 2


def test_record_cut_short_in_large_frame() -> None:
    records = bulk_records(seed=12, count=50, max_n=100)
    payload = encode_records(records, TickState())
    before = encode_segment(bulk_records(seed=13, count=800, max_n=3))
    assert len(before) > 2 * MIN_CHUNK
    for cut in (1, 2, 5):
        frame = zstandard.ZstdCompressor().compress(payload[:-cut])
        assert zstandard.get_frame_parameters(frame).content_size > MIN_CHUNK
        expect_segment_error(before + frame, len(before), match="cut short", chunk_bytes=MIN_CHUNK)


def test_lone_partial_record() -> None:
    for payload in (b"\x01", b"\x01\x02", b"\x01\x02\x03\x04", b"\x01\x00\x02\x05\x00\x02", b"\x01\x80"):
        frame = zstandard.ZstdCompressor().compress(payload)
        expect_segment_error(frame, 0, match="cut short")


def test_varint_longer_than_ten_bytes() -> None:
    good = encode_segment(Records.from_lists([1], [0], [[1]], [[1]]))
    payload = b"\x01\x00\x01\x00" + b"\x80" * 10 + b"\x01"  # q_0 is an 11-byte varint
    frame = zstandard.ZstdCompressor().compress(payload)
    expect_segment_error(good + frame, len(good), match="longer than 10 bytes")
    # Exactly ten bytes is fine.
    frame = zstandard.ZstdCompressor().compress(b"\x01\x00\x01\x00" + b"\xff" * 9 + b"\x01")
    got = decode(frame)
    assert got.quantised.tolist() == [INT64_MIN]


@pytest.mark.parametrize("records_per_frame", [1, 2, 10])
def test_unknown_stream(records_per_frame: int) -> None:
    records = Records.from_lists(
        [1, 2, 1, 5, 2, 1], [1, 2, 3, 4, 5, 6], [[1], [2], [3], [4], [5], []], [[1], [2], [3], [4], [5], []]
    )
    data = encode_segment(records, records_per_frame=records_per_frame)
    frame_of_record = frame_spans(data)[3 // records_per_frame][0]
    exc = expect_segment_error(data, frame_of_record, error=UnknownStreamError, ids=[1, 2], match="stream id 5")
    assert exc.stream_id == 5
    assert isinstance(exc, SegmentError) and isinstance(exc, CollectorError)


def test_unknown_stream_in_large_frame() -> None:
    known = bulk_records(seed=14, count=60, max_n=100)
    rogue = Records.from_lists([4242], [0], [[1, 2]], [[3, 4]])
    before = encode_segment(bulk_records(seed=15, count=800, max_n=3))
    assert len(before) > 2 * MIN_CHUNK
    data = before + encode_segment(Records.concat([known, rogue]), records_per_frame=61)
    assert zstandard.get_frame_parameters(data[len(before) :]).content_size > MIN_CHUNK
    exc = expect_segment_error(data, len(before), error=UnknownStreamError, chunk_bytes=MIN_CHUNK)
    assert exc.stream_id == 4242


def test_unknown_stream_id_beyond_uint32_is_not_truncated() -> None:
    payload = encode_varints(np.array([2**32 + 1, 0, 0], dtype=np.uint64)).tobytes()
    frame = zstandard.ZstdCompressor().compress(payload)
    exc = expect_segment_error(frame, 0, error=UnknownStreamError, ids=[0, 1])
    assert exc.stream_id == 2**32 + 1


def test_no_stream_metadata_at_all() -> None:
    data = encode_segment(Records.from_lists([0], [0], [[]], [[]]))
    exc = expect_segment_error(data, 0, error=UnknownStreamError, ids=[])
    assert exc.stream_id == 0


def compressible_frame(checksum: bool) -> tuple[bytes, Records, tuple[int, int]]:
    """A one-block zstd frame with compressible records (a "compressed" block, type 2).

    Args:
        checksum: Write the frame's content checksum.

    Returns:
        The frame, its records, and the byte range of its block's content.
    """
    records = Records.from_lists(
        [1] * 40,
        list(range(0, 400, 10)),
        [list(range(i, i + 300, 3)) for i in range(40)],
        [[(i * j) % 17 - 8 for j in range(100)] for i in range(40)],
    )
    frame = zstandard.ZstdCompressor(level=3, write_checksum=checksum).compress(encode_records(records, TickState()))
    header = zstandard.frame_header_size(frame)
    block = int.from_bytes(frame[header : header + 3], "little")
    assert block & 1 == 1, "expected a single (last) block"
    assert (block >> 1) & 3 == 2, "expected a compressed block"
    body = (header + 3, header + 3 + (block >> 3))
    assert body[1] + 4 * checksum == len(frame)
    return frame, records, body


@pytest.mark.parametrize("checksum", [True, False])
@pytest.mark.parametrize("layout", ["alone", "middle", "after_skippable", "large"])
def test_corrupt_frame(checksum: bool, layout: str) -> None:
    frame, records, (lo, hi) = compressible_frame(checksum)
    before = encode_segment(bulk_records(seed=16, count=600 if layout == "large" else 5, max_n=4), records_per_frame=2)
    after = encode_segment(Records.from_lists([1], [0], [[1]], [[1]]))
    prefix = {"alone": b"", "middle": before, "after_skippable": before + skippable_frame(b"note"), "large": before}[
        layout
    ]
    suffix = b"" if layout == "alone" else after
    chunk_bytes = MIN_CHUNK if layout == "large" else DEFAULT_CHUNK_BYTES
    if layout == "large":
        assert zstandard.get_frame_parameters(frame).content_size > MIN_CHUNK
    original = decode(prefix + frame + suffix, chunk_bytes=chunk_bytes)
    raised = 0
    for position in range(lo, hi):
        for flip in (0xFF, 0x01):
            damaged = bytearray(frame)
            damaged[position] ^= flip
            try:
                got = decode(prefix + bytes(damaged) + suffix, chunk_bytes=chunk_bytes)
            except SegmentError as exc:
                assert exc.offset == len(prefix), f"flip at {position}: {exc}"
                assert exc.path == SEGMENT_NAME
                raised += 1
            else:
                if checksum:  # without a checksum the content may silently differ
                    assert_records_equal(got, original)
    assert raised > 0


def test_corrupt_checksummed_frame_never_decodes_to_other_data() -> None:
    frame, records, (lo, hi) = compressible_frame(checksum=True)
    for position in range(lo, hi):
        damaged = bytearray(frame)
        damaged[position] ^= 0x10
        try:
            got = decode(bytes(damaged), ids=[1])
        except SegmentError as exc:
            assert exc.offset == 0
        else:
            assert_records_equal(got, records)


def test_checksum_bytes_damaged() -> None:
    frame, _, (_, hi) = compressible_frame(checksum=True)
    damaged = bytearray(frame)
    damaged[hi] ^= 0x01
    good = encode_segment(Records.from_lists([1], [0], [[1]], [[1]]))
    expect_segment_error(good + bytes(damaged) + good, len(good), match="corrupt")


@pytest.mark.parametrize("variant", [0, 1, 0xA, 0xF])
def test_skippable_frames_are_allowed(variant: int) -> None:
    records = bulk_records(seed=17, count=12, max_n=8)
    writer_ticks = TickState()
    frames = [encode_segment(slice_records(records, i, i + 1), writer_ticks) for i in range(len(records))]
    hidden = encode_segment(Records.from_lists([999], [0], [[1]], [[1]]))  # a zstd frame inside a skippable one
    skips = [
        skippable_frame(b"", variant),
        skippable_frame(b"meta", variant),
        skippable_frame(hidden, variant),
        skippable_frame(ZSTD_MAGIC * 3, variant),
        skippable_frame(bytes(3 * MIN_CHUNK), variant),  # bigger than the read buffer
    ]
    data = skips[0] + b"".join(f + skips[i % len(skips)] for i, f in enumerate(frames)) + skips[2]
    for chunk_bytes in (MIN_CHUNK, DEFAULT_CHUNK_BYTES):
        assert_records_equal(decode(data, chunk_bytes=chunk_bytes), records)
    assert len(decode(skippable_frame(b"only metadata", variant))) == 0


def test_empty_zstd_frames_hold_no_records() -> None:
    records = bulk_records(seed=18, count=6, max_n=4)
    empty = zstandard.ZstdCompressor().compress(b"")
    writer_ticks = TickState()
    parts = [encode_segment(slice_records(records, i, i + 1), writer_ticks) for i in range(len(records))]
    data = empty + empty.join(parts) + empty
    assert_records_equal(decode(data), records)
    assert len(decode(empty)) == 0


def test_truncated_skippable_frame() -> None:
    valid = encode_segment(Records.from_lists([1], [0], [[1]], [[1]]))
    skip = skippable_frame(b"0123456789")
    for cut in range(1, len(skip)):
        expect_segment_error(valid + skip[:cut], len(valid))


# ----------------------------------------------------------------------------------------
# Fuzzing: decoding either succeeds or raises a CollectorError
# ----------------------------------------------------------------------------------------


def decode_or_collector_error(data: bytes, chunk_bytes: int = MIN_CHUNK) -> Records | None:
    """Decode arbitrary bytes; anything but success or a ``CollectorError`` fails the test.

    On success the columns must be self-consistent.

    Args:
        data: Possibly damaged segment bytes.
        chunk_bytes: The decoder's chunk size.

    Returns:
        The records, or None when a ``CollectorError`` was raised.
    """
    try:
        got = decode(data, chunk_bytes=chunk_bytes)
    except CollectorError as exc:
        assert isinstance(exc, SegmentError)
        assert exc.path == SEGMENT_NAME and 0 <= exc.offset <= len(data)
        return None
    assert got.offsets[0] == 0 and np.all(np.diff(got.offsets) >= 0)
    assert got.offsets[-1] == got.indices.size == got.quantised.size
    assert got.ticks.size == got.stream_ids.size == got.offsets.size - 1
    assert np.isin(got.stream_ids, KNOWN_IDS).all()
    return got


@FUZZ
@given(data=st.binary(max_size=600), chunk_bytes=st.sampled_from([MIN_CHUNK, DEFAULT_CHUNK_BYTES]))
def test_fuzz_random_bytes(data: bytes, chunk_bytes: int) -> None:
    decode_or_collector_error(data, chunk_bytes)


@FUZZ
@given(tail=st.binary(max_size=300), skippable=st.booleans())
def test_fuzz_random_bytes_after_a_magic_number(tail: bytes, skippable: bool) -> None:
    decode_or_collector_error((b"\x50\x2a\x4d\x18" if skippable else ZSTD_MAGIC) + tail)


@FUZZ
@given(payloads=st.lists(st.binary(max_size=200), min_size=1, max_size=4), big=st.binary(max_size=6000))
def test_fuzz_random_payloads_in_valid_frames(payloads: list[bytes], big: bytes) -> None:
    """Garbage records inside intact zstd frames exercise the record splitter."""
    compressor = zstandard.ZstdCompressor()
    small_ids = bytes(b % 8 for b in big)  # mostly small varints, so records parse further
    data = b"".join(compressor.compress(p) for p in [*payloads, small_ids, big])
    decode_or_collector_error(data)


MUTATION = st.tuples(
    st.sampled_from(["flip", "set", "truncate", "insert", "delete", "duplicate"]),
    st.floats(0, 1),
    st.binary(min_size=1, max_size=12),
)


def mutate(data: bytes, mutations: list[tuple[str, float, bytes]]) -> bytes:
    """Apply byte-level mutations to a segment.

    Args:
        data: The segment.
        mutations: ``(kind, relative position, bytes)`` triples.

    Returns:
        The mutated bytes.
    """
    out = bytearray(data)
    for kind, where, blob in mutations:
        if not out:
            break
        pos = min(int(where * len(out)), len(out) - 1)
        if kind == "flip":
            out[pos] ^= blob[0] or 0x80
        elif kind == "set":
            out[pos : pos + len(blob)] = blob
        elif kind == "truncate":
            del out[pos:]
        elif kind == "insert":
            out[pos:pos] = blob
        elif kind == "delete":
            del out[pos : pos + len(blob)]
        else:
            out[pos:pos] = out[pos : pos + 4 * len(blob)]
    return bytes(out)


@FUZZ
@given(
    records=st.one_of(records_st(max_records=12, max_n=6), bulk_records_st()),
    records_per_frame=st.sampled_from([1, 3, 100]),
    mutations=st.lists(MUTATION, min_size=1, max_size=4),
    with_skippable=st.booleans(),
)
def test_fuzz_mutated_segments(
    records: Records, records_per_frame: int, mutations: list[tuple[str, float, bytes]], with_skippable: bool
) -> None:
    data = encode_segment(records, records_per_frame=records_per_frame)
    if with_skippable:
        data = skippable_frame(b"hdr") + data
    mutated = mutate(data, mutations)
    got = decode_or_collector_error(mutated)
    if mutated == data:
        assert got is not None
        assert_records_equal(got, records)


@FUZZ
@given(
    records=st.one_of(records_st(max_records=12, max_n=6), bulk_records_st()),
    position=st.floats(0, 1),
    value=st.integers(0, 255),
)
def test_fuzz_frame_header_bytes(records: Records, position: float, value: int) -> None:
    """Overwrite one byte among the first 20 of every frame (the headers)."""
    assume(len(records) > 0)
    data = encode_segment(records, records_per_frame=2)
    damaged = bytearray(data)
    for start, end in frame_spans(data):
        damaged[start + min(int(position * 20), end - start - 1)] = value
    decode_or_collector_error(bytes(damaged))


# ----------------------------------------------------------------------------------------
# The data logger's C++ reference decoder
# ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("records_per_frame", [1, 4])
def test_matches_reference_decoder(tmp_path: Path, records_per_frame: int) -> None:
    core = pytest.importorskip("data_logger._core")
    records = Records.concat(
        [
            bulk_records(seed=31, count=40, max_n=50, increasing=True),
            Records.from_lists(
                [0, 2**32 - 1, 7],
                [INT64_MAX, -(2**40), 12345],
                [[], [0, 2**32, INT64_MAX], [INT64_MIN, -1]],
                [[], [INT64_MIN, INT64_MAX, 0], [1, -1]],
            ),
        ]
    )
    path = tmp_path / "segment-000000.seg.zst"
    path.write_bytes(encode_segment(records, records_per_frame=records_per_frame))
    scales = {}
    for i, sid in enumerate(KNOWN_IDS):
        pair = core.ScalePair()
        pair.epoch_scale = [1e-6, 1e-9, 0.25, 1.0, 3.0e-3, 1e-3, 7.5][i]
        pair.value_scale = [1e-3, 0.5, 1.0, 1e-9, 2.0, 3.3, 1e-6][i]
        scales[sid] = pair
    reference = core.decode_segment_file_with_scales(str(path), scales)
    ours = SegmentDecoder(KNOWN_IDS).decode_bytes(path.read_bytes())
    assert_records_equal(ours, records)
    assert len(reference) == len(ours)
    for r, (sid, epoch, idx, vals) in enumerate(reference):
        lo, hi = int(ours.offsets[r]), int(ours.offsets[r + 1])
        assert sid == int(ours.stream_ids[r])
        pair = scales[sid]
        assert epoch == float(int(ours.ticks[r])) * pair.epoch_scale
        assert np.array_equal(np.asarray(idx, dtype=np.int64), ours.indices[lo:hi])
        expected_values = [float(q) * pair.value_scale for q in ours.quantised[lo:hi].tolist()]
        assert np.asarray(vals, dtype=np.float64).tolist() == expected_values


# ----------------------------------------------------------------------------------------
# The compiled kernel and the pipeline around it
# ----------------------------------------------------------------------------------------


def kernel_decode(
    payload: bytes, *, ids: Sequence[int] = KNOWN_IDS, records: int, values: int, max_values: int = 2**31 - 1
) -> list[tuple[int, int, int, int, int, int]]:
    """Run ``decode_records`` over one frame's content with outputs of the given capacity,
    resuming after every ``OUT_FULL``; returns each call's result tuple.

    Args:
        payload: Raw records (one unit).
        ids: Declared stream ids.
        records: Output records per call.
        values: Output elements per call.
        max_values: The kernel's element limit per call.

    Returns:
        The ``(status, pos, unit, records, values, detail)`` of every call.
    """
    from herocollector.decode import kernel
    from herocollector.decode.codec import StreamTable

    streams = StreamTable(ids)
    data = np.frombuffer(payload, dtype=np.uint8).copy()
    ends = np.array([data.size], dtype=np.int64)
    ticks = np.zeros(len(streams), dtype=np.int64)
    calls, pos, unit = [], 0, 0
    while True:
        sid, slot = np.zeros(records, np.uint32), np.zeros(records, np.int32)
        epoch, offsets = np.zeros(records), np.zeros(records + 1, np.int32)
        idx, val = np.zeros(values, np.int64), np.zeros(values)
        result = kernel.decode_records(
            data, pos, ends, unit, False, streams.table, streams.big_ids, streams.big_slots, streams.selected,
            streams.epoch_scales, streams.value_scales, ticks, False, max_values,
            sid, slot, epoch, epoch.view(np.int64), offsets, idx, val, val.view(np.int64),
        )  # fmt: skip
        calls.append(tuple(int(x) for x in result))
        if result[0] != kernel.OUT_FULL:
            return calls
        pos, unit = int(result[1]), int(result[2])


def test_kernel_output_full_resumes_at_a_record_boundary() -> None:
    from herocollector.decode import kernel

    records = bulk_records(seed=41, count=60, max_n=9)
    payload = encode_records(records, TickState())
    calls = kernel_decode(payload, records=4, values=20)
    assert len(calls) > 5
    assert [c[0] for c in calls[:-1]] == [kernel.OUT_FULL] * (len(calls) - 1) and calls[-1][0] == kernel.OK
    assert sum(c[3] for c in calls) == len(records)
    assert sum(c[4] for c in calls) == records.indices.size
    # Resuming gives the same records as one big call, in any chunking of the decoder.
    for chunk_bytes in (MIN_CHUNK, DEFAULT_CHUNK_BYTES):
        assert_records_equal(decode(zstandard.ZstdCompressor().compress(payload), chunk_bytes=chunk_bytes), records)


def test_kernel_record_larger_than_the_outputs() -> None:
    from herocollector.decode import kernel

    payload = encode_records(Records.from_lists([1], [0], [list(range(50))], [[1] * 50]), TickState())
    assert kernel_decode(payload, records=4, values=20)[0][0] == kernel.BAD_CAPACITY
    assert kernel_decode(payload, records=4, values=100, max_values=49)[0][0] == kernel.TOO_MANY_VALUES
    assert kernel_decode(payload, records=4, values=100, max_values=50)[0][0] == kernel.OK


def test_many_small_records_grow_the_output_estimate() -> None:
    """Three-byte records: far denser than the first output estimate, still exact."""
    records = Records.from_lists([1, 2] * 3000, list(range(6000)), [[]] * 6000, [[]] * 6000)
    for records_per_frame in (1, 6000):
        data = encode_segment(records, records_per_frame=records_per_frame)
        assert_records_equal(decode(data, chunk_bytes=DEFAULT_CHUNK_BYTES), records)


def test_columns_are_the_records_scaled_bit_for_bit(tmp_path: Path) -> None:
    from herocollector.decode.codec import Columns

    records = bulk_records(seed=42, count=300, max_n=30, increasing=False)
    path = tmp_path / "segment-000000.seg.zst"
    path.write_bytes(encode_segment(records, records_per_frame=7))
    epoch_scales = [1e-6, 1e-9, 0.25, 1.0, 3.0e-3, 1e-3, 7.5]
    value_scales = [1e-3, 0.5, 1.0, 1e-9, 2.0, 3.3, 1e-6]
    selected = [0, 2, 300, 2**32 - 1]
    decoder = SegmentDecoder(
        KNOWN_IDS,
        selected,
        chunk_bytes=MIN_CHUNK,
        epoch_scales=[epoch_scales[KNOWN_IDS.index(s)] for s in selected],
        value_scales=[value_scales[KNOWN_IDS.index(s)] for s in selected],
    )
    parts = list(decoder.columns([path]))
    assert len(parts) > 1 and all(isinstance(p, Columns) for p in parts)
    expected = take(records, np.isin(records.stream_ids, selected))
    slot = np.searchsorted(np.array(KNOWN_IDS, dtype=np.uint64), expected.stream_ids.astype(np.uint64))
    n = np.diff(expected.offsets)
    assert np.concatenate([p.stream_ids for p in parts]).tolist() == expected.stream_ids.tolist()
    assert np.concatenate([p.slots for p in parts]).tolist() == slot.tolist()
    epochs = np.concatenate([p.epochs for p in parts])
    assert epochs.tobytes() == (expected.ticks.astype(np.float64) * np.array(epoch_scales)[slot]).tobytes()
    values = np.concatenate([p.values for p in parts])
    want = expected.quantised.astype(np.float64) * np.repeat(np.array(value_scales)[slot], n)
    assert values.tobytes() == want.tobytes()
    assert np.concatenate([p.indices for p in parts]).tolist() == expected.indices.tolist()
    lengths = np.concatenate([np.diff(p.offsets) for p in parts])
    assert all(p.offsets.dtype == np.int32 and p.offsets[0] == 0 for p in parts)
    assert lengths.tolist() == n.tolist()


def test_decode_files_carries_ticks_and_reads_ahead_across_files(tmp_path: Path) -> None:
    records = bulk_records(seed=43, count=900, max_n=6)
    writer_ticks = TickState()
    paths = []
    for i, (lo, hi) in enumerate(((0, 300), (300, 300), (300, 700), (700, 900))):
        path = tmp_path / f"segment-{i:06d}.seg.zst"
        path.write_bytes(encode_segment(slice_records(records, lo, hi), writer_ticks, records_per_frame=3))
        paths.append(path)
    for threads in (True, False):
        decoder = SegmentDecoder(KNOWN_IDS, chunk_bytes=MIN_CHUNK, threads=threads)
        assert_records_equal(Records.concat(decoder.decode_files(paths)), records)


def reader_threads() -> list[threading.Thread]:
    """The decoders' reader threads still alive."""
    return [t for t in threading.enumerate() if t.name == "herocollector-reader" and t.is_alive()]


def test_reader_thread_ends_when_decoding_stops_early(tmp_path: Path) -> None:
    path = tmp_path / "segment-000000.seg.zst"
    path.write_bytes(encode_segment(bulk_records(seed=44, count=3000, max_n=8)))
    assert path.stat().st_size > 8 * MIN_CHUNK
    chunks = SegmentDecoder(KNOWN_IDS, chunk_bytes=MIN_CHUNK).decode_file(path)
    for _ in range(3):  # the first chunk is read in this thread (the file's size is not known yet)
        assert len(next(chunks)) > 0
        if reader_threads():
            break
    assert reader_threads()  # reading ahead
    chunks.close()
    assert not reader_threads()


def test_files_of_one_chunk_or_less_are_decoded_without_a_reader_thread(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A run of at most one chunk starts no thread: none can overlap.

    With ``nbytes`` (a run's inventory knows it) that is decided at once; without, a reader
    thread starts once a chunk was read, and so does a stream's.
    """
    records = bulk_records(seed=48, count=3000, max_n=8)
    path = tmp_path / "segment-000000.seg.zst"
    path.write_bytes(encode_segment(records))
    size = path.stat().st_size
    started: list[str] = []
    start = threading.Thread.start

    def recording_start(thread: threading.Thread) -> None:
        started.append(thread.name)
        start(thread)

    monkeypatch.setattr(threading.Thread, "start", recording_start)
    cases = ((size, size, False), (MIN_CHUNK, size, True), (size + 1, None, False), (MIN_CHUNK, None, True))
    for chunk_bytes, nbytes, reader in cases:
        started.clear()
        decoder = SegmentDecoder(KNOWN_IDS, chunk_bytes=chunk_bytes)
        columns = list(decoder.columns([path], nbytes=nbytes))
        assert ("herocollector-reader" in started) is reader, (chunk_bytes, nbytes, started)
        assert sum(len(c) for c in columns) == len(records)
        assert not reader_threads()
    for chunk_bytes, reader in ((size + 1, False), (MIN_CHUNK, True)):
        started.clear()
        with path.open("rb") as fh:
            got = Records.concat(SegmentDecoder(KNOWN_IDS, chunk_bytes=chunk_bytes).decode_stream(fh, path))
        assert ("herocollector-reader" in started) is reader, (chunk_bytes, started)
        assert_records_equal(got, records)
        assert not reader_threads()


def test_errors_from_the_reader_thread_come_in_order(tmp_path: Path) -> None:
    good = bulk_records(seed=45, count=2000, max_n=5)
    first = tmp_path / "segment-000000.seg.zst"
    first.write_bytes(encode_segment(good))
    second = tmp_path / "segment-000001.seg.zst"
    second.write_bytes(b"\x28\xb5\x2f\xfd" + b"\x00" * 40)
    decoder = SegmentDecoder(KNOWN_IDS, chunk_bytes=MIN_CHUNK)
    got: list[Records] = []
    with pytest.raises(SegmentError) as info:
        got.extend(decoder.decode_files([first, second]))
    assert info.value.path == str(second) and info.value.offset == 0
    assert_records_equal(Records.concat(got), good)
    assert not reader_threads()
    with pytest.raises(FileNotFoundError):
        list(SegmentDecoder(KNOWN_IDS).decode_files([first, tmp_path / "missing.seg.zst"]))
    assert not reader_threads()


def test_huge_skippable_frame_is_skipped_without_holding_it(tmp_path: Path) -> None:
    records = bulk_records(seed=46, count=20, max_n=5)
    data = encode_segment(records)
    big = skippable_frame(bytes(40 * MIN_CHUNK))
    assert_records_equal(decode(data + big + data[:0], chunk_bytes=MIN_CHUNK), records)
    assert_records_equal(decode(big + data, chunk_bytes=MIN_CHUNK), records)
    # Cut short: the skippable frame is the damaged one.
    expect_segment_error(data + big[: 30 * MIN_CHUNK], len(data), match="truncated", chunk_bytes=MIN_CHUNK)


def test_unknown_stream_in_a_frame_with_a_bad_varint_later_is_a_segment_error() -> None:
    """The first damage in a frame is judged as a frame-by-frame decoder does: varints first."""
    good = leb128(1) + b"\x00\x01\x05\x02"
    unknown = leb128(99) + b"\x00\x00"
    for tail, error in ((b"", UnknownStreamError), (b"\x80" * 11 + b"\x01", SegmentError), (b"\x01\x80", SegmentError)):
        frame = zstandard.ZstdCompressor().compress(good + unknown + tail)
        expect_segment_error(frame, 0, error=error, ids=[1])
    # The same in a frame larger than a chunk, decoded in pieces: the rest of the frame is
    # read before the error is decided.
    filler = encode_records(bulk_records(seed=47, count=600, max_n=5, increasing=True), TickState())
    ids = list(KNOWN_IDS)
    for tail, error in ((b"", UnknownStreamError), (filler + b"\x80" * 11 + b"\x01", SegmentError)):
        frame = zstandard.ZstdCompressor().compress(unknown + tail)
        expect_segment_error(frame, 0, error=error, ids=ids, chunk_bytes=MIN_CHUNK)


def test_damage_in_an_earlier_frame_wins_over_a_bad_header_later_in_the_read() -> None:
    records = Records.from_lists([1, 2, 1], [1, 2, 3], [[1], [2], [3]], [[1], [2], [3]])
    data = bytearray(encode_segment(records))
    spans = frame_spans(bytes(data))
    cut = zstandard.ZstdCompressor().compress(b"\x01\x00\x05\x01")  # a record cut short
    damaged = bytes(data[: spans[1][0]]) + cut + bytes(data[spans[1][0] :])
    header = bytearray(damaged)
    header[len(damaged) - (spans[2][1] - spans[2][0]) + 4] |= 0x08  # reserved bit of the last frame
    expect_segment_error(bytes(header), spans[1][0], match="cut short")


def test_kernels_are_cached_in_herocollectors_order_of_places(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from herocollector.decode import kernel, native

    # numba's own cache (used by the numba backend): same order of places.
    order = kernel._KernelCacheImpl._locator_classes
    assert order[0].__name__.endswith("UserProvidedCacheLocator")  # $NUMBA_CACHE_DIR first
    assert order[1].__name__.endswith("InTreeCacheLocator")  # then __pycache__ next to kernel.py
    assert order[2] is kernel._UserCacheLocator
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    locator = kernel._UserCacheLocator.from_function(kernel.decode_records.py_func, kernel.__file__)
    assert locator is not None
    assert Path(locator.get_cache_path()).is_relative_to(tmp_path / "xdg" / "herocollector" / "numba")
    if kernel.numba.config.BOUNDSCHECK is None:
        assert isinstance(kernel.decode_records._cache, kernel._KernelCache)
    # The object-code cache.
    monkeypatch.delenv("NUMBA_CACHE_DIR", raising=False)
    dirs = native._cache_dirs()
    assert dirs[0] == Path(native.__file__).parent / "__pycache__"
    assert dirs[1] == tmp_path / "xdg" / "herocollector" / "numba"
    assert dirs[2].parent == Path(tempfile.gettempdir())
    monkeypatch.setenv("NUMBA_CACHE_DIR", str(tmp_path / "numba"))
    assert native._cache_dirs() == [tmp_path / "numba" / "herocollector"]  # as numba: only there


def test_object_cache_entries_are_checked_before_loading(tmp_path: Path) -> None:
    from herocollector.decode import native

    object_kernels()
    import llvmlite.binding as llvm

    key = native._cache_key(llvm)
    source = next(d for d in native._cache_dirs() if native._read_entry(d, key) is not None)
    meta, objects = native._read_entry(source, key)  # type: ignore[misc]
    copy = tmp_path / "cache"
    copy.mkdir(mode=0o700)
    for name, info in meta["kernels"].items():
        (copy / info["file"]).write_bytes(objects[name])
    meta_path = copy / f"herocollector-kernels-{key}.json"
    meta_path.write_text(json.dumps(meta))
    assert native._read_entry(copy, key) is not None
    assert native._read_entry(copy, "0" * 32) is None  # another machine, kernel or version
    victim = copy / meta["kernels"]["decode_records"]["file"]
    blob = objects["decode_records"]
    victim.write_bytes(blob[:-1] + bytes([blob[-1] ^ 1]))  # damaged: the SHA-256 differs
    assert native._read_entry(copy, key) is None
    victim.write_bytes(objects["decode_records"])
    victim.chmod(0o666)  # writable by anyone: not trusted
    assert native._read_entry(copy, key) is None


_OBJECT_KERNELS: list[object] = []  # kept alive for the whole session: their machine code is in use


def object_kernels() -> Any:
    """The object-code kernels: this process's backend, or loaded on their own when numba was
    asked for. No skip: when they cannot load, the test fails with the reason."""
    from herocollector.decode import native

    kernels = native.backend()
    if kernels.name == "object":
        return kernels
    if not native.numba_requested():
        pytest.fail(f"the object-code kernels did not load, numba runs instead: {native.fallback_reason}")
    if not _OBJECT_KERNELS:
        _OBJECT_KERNELS.append(native.ObjectKernels.load_or_build())
    return _OBJECT_KERNELS[0]


@pytest.mark.parametrize("backend", ["object", "numba"])
def test_both_kernel_backends_decode_alike(backend: str) -> None:
    from herocollector.decode import native

    # Each backend itself, whichever one this process uses: an object backend that cannot
    # load fails here with its reason.
    kernels = native.NumbaKernels() if backend == "numba" else object_kernels()
    assert kernels.name == backend
    records = bulk_records(seed=49, count=400, max_n=20, increasing=False)
    payload = np.frombuffer(encode_records(records, TickState()), dtype=np.uint8).copy()
    ends = np.array([payload.size], dtype=np.int64)
    from herocollector.decode.codec import StreamTable

    streams = StreamTable(KNOWN_IDS)
    size = payload.size
    outputs = []
    for scaled in (False, True):
        ticks = np.zeros(len(streams), dtype=np.int64)
        sid, slot = np.zeros(size, np.uint32), np.zeros(size, np.int32)
        epoch, offsets = np.zeros(size), np.zeros(size + 1, np.int32)
        idx, val = np.zeros(size, np.int64), np.zeros(size)
        result = kernels.decode_records(
            payload, 0, ends, 0, False, streams.table, streams.big_ids, streams.big_slots, streams.selected,
            streams.epoch_scales, streams.value_scales, ticks, scaled, 2**31 - 1,
            sid, slot, epoch, epoch.view(np.int64), offsets, idx, val, val.view(np.int64),
        )  # fmt: skip
        outputs.append((result, sid.copy(), epoch.copy(), offsets.copy(), idx.copy(), val.copy()))
    raw = outputs[0]
    n, m = len(records), records.indices.size
    assert raw[0] == (0, payload.size, 1, n, m, 0)
    assert raw[1][:n].tolist() == records.stream_ids.tolist()
    assert raw[2].view(np.int64)[:n].tolist() == records.ticks.tolist()
    assert raw[4][:m].tolist() == records.indices.tolist()
    assert raw[5].view(np.int64)[:m].tolist() == records.quantised.tolist()
    assert outputs[1][2][:n].tobytes() == records.ticks.astype(np.float64).tobytes()  # scales of 1.0
    # An unknown stream id beyond 2**63 comes back whole (the detail is a uint64).
    rogue = np.frombuffer(encode_varints(np.array([2**64 - 1, 0, 0], dtype=np.uint64)).tobytes(), dtype=np.uint8).copy()
    result = kernels.decode_records(
        rogue, 0, np.array([rogue.size], dtype=np.int64), 0, False, streams.table, streams.big_ids, streams.big_slots,
        streams.selected, streams.epoch_scales, streams.value_scales, np.zeros(len(streams), np.int64), True, 2**31 - 1,
        sid, slot, epoch, epoch.view(np.int64), offsets, idx, val, val.view(np.int64),
    )  # fmt: skip
    assert result[0] == native.UNKNOWN_STREAM and result[5] == 2**64 - 1
    assert kernels.varint_damage(np.frombuffer(b"\x80" * 11, dtype=np.uint8).copy(), 0, 11, 0) == (10, True)
    assert kernels.varint_damage(np.frombuffer(b"\x01\x80\x80", dtype=np.uint8).copy(), 0, 3, 0) == (2, False)


def test_object_backend_rejects_arrays_of_the_wrong_kind() -> None:

    kernels = object_kernels()
    frames = [np.zeros(4, dtype=np.int64) for _ in range(3)]
    with pytest.raises(TypeError):
        kernels.scan_frames(np.zeros(8, dtype=np.int8), 0, 8, True, *frames, np.zeros(4, dtype=np.uint8))
    with pytest.raises(TypeError):
        kernels.scan_frames(np.zeros(16, dtype=np.uint8)[::2], 0, 8, True, *frames, np.zeros(4, dtype=np.uint8))
    with pytest.raises(TypeError):
        read_only = np.zeros(4, dtype=np.int64)
        read_only.flags.writeable = False
        kernels.scan_frames(
            np.zeros(8, dtype=np.uint8), 0, 8, True, read_only, *frames[1:], np.zeros(4, dtype=np.uint8)
        )


@pytest.mark.slow
def test_read_only_install_caches_kernels_in_the_user_cache(tmp_path: Path) -> None:
    """A package whose ``__pycache__`` cannot be created builds its kernels once, into
    $XDG_CACHE_HOME; later processes load them from there without importing numba."""
    import os
    import shutil
    import subprocess
    import sys

    import herocollector

    package = tmp_path / "site" / "herocollector"
    shutil.copytree(Path(herocollector.__file__).parent, package, ignore=shutil.ignore_patterns("__pycache__"))
    (package / "decode" / "__pycache__").write_text("not a directory")  # even root cannot write in there
    data = tmp_path / "segment-000000.seg.zst"
    data.write_bytes(encode_segment(bulk_records(seed=48, count=50, max_n=5)))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("NUMBA_", "HEROCOLLECTOR_"))}
    env.update(XDG_CACHE_HOME=str(tmp_path / "xdg"), PYTHONPATH=str(tmp_path / "site"), PYTHONDONTWRITEBYTECODE="1")
    script = (
        "import sys, herocollector.decode.codec as c; assert c.__file__.startswith(sys.argv[2]), c.__file__;"
        f"n = len(c.SegmentDecoder({list(KNOWN_IDS)}).decode_bytes(open(sys.argv[1], 'rb').read()));"
        "print(n, c.kernel.backend().name, 'numba' in sys.modules)"
    )
    for numba_imported in ("True", "False"):  # built and stored, then loaded
        out = subprocess.run(
            [sys.executable, "-c", script, str(data), str(tmp_path / "site")],
            env=env,
            cwd=tmp_path,
            capture_output=True,
            text=True,
            check=False,
        )
        assert out.returncode == 0, out.stderr
        assert out.stdout.split() == ["50", "object", numba_imported], out.stderr
    cached = {
        p.name.rsplit("-", 1)[-1]
        for p in (tmp_path / "xdg" / "herocollector" / "numba").glob("herocollector-kernels-*")
    }
    assert cached == {"scan_frames.o", "decode_records.o", "varint_damage.o"} | {
        p for p in cached if p.endswith(".json")
    }


def test_small_files_are_decoded_together_and_damage_names_its_file(tmp_path: Path) -> None:
    records = bulk_records(seed=50, count=400, max_n=4)
    writer_ticks = TickState()
    paths = []
    for i in range(20):
        path = tmp_path / f"segment-{i:06d}.seg.zst"
        path.write_bytes(encode_segment(slice_records(records, 20 * i, 20 * i + 20), writer_ticks))
        paths.append(path)
    for threads in (True, False):
        chunks = list(SegmentDecoder(KNOWN_IDS, threads=threads).decode_files(paths))
        # Twenty small files decode as one chunk (its output may be split once, when the
        # first guess of the output size is too small), not as twenty.
        assert len(chunks) <= 2
        assert_records_equal(Records.concat(chunks), records)
    # A frame of file 13 names a stream without metadata: the error names that file and frame.
    data = paths[13].read_bytes()
    third = frame_spans(data)[2][0]
    rogue = encode_segment(Records.from_lists([4242], [0], [[1]], [[1]]))
    paths[13].write_bytes(data[:third] + rogue + data[third:])
    for threads in (True, False):
        with pytest.raises(UnknownStreamError) as info:
            list(SegmentDecoder(KNOWN_IDS, threads=threads).decode_files(paths))
        assert info.value.path == str(paths[13]) and info.value.offset == third and info.value.stream_id == 4242
    # Damage found by the frame walk in file 15 comes after the records of the files before.
    paths[13].write_bytes(data)
    paths[15].write_bytes(paths[15].read_bytes() + b"garbage!")
    got: list[Records] = []
    with pytest.raises(SegmentError) as info:
        got.extend(SegmentDecoder(KNOWN_IDS).decode_files(paths))
    assert info.value.path == str(paths[15]) and "do not start a zstd frame" in str(info.value)
    assert_records_equal(Records.concat(got), slice_records(records, 0, 300))


def window_frame(content: bytes, descriptor: int) -> bytes:
    """A zstd frame with a 4-byte content size and a window descriptor (not single-segment),
    holding ``content`` in one raw block.

    Args:
        content: The decompressed bytes (at most 128 KiB).
        descriptor: The window descriptor byte (exponent << 3 | mantissa).

    Returns:
        The frame.
    """
    header = bytes([0x80, descriptor]) + len(content).to_bytes(4, "little")
    return ZSTD_MAGIC + header + ((len(content) << 3) | 1).to_bytes(3, "little") + content


def test_frames_are_accepted_and_refused_as_the_frame_by_frame_reference_does() -> None:
    """zstd checks more when it streams a frame than when it decodes it at once (a window
    above 2**27 + 1 bytes, raw blocks larger than the window); the frame-by-frame reference
    decodes frames of a known size up to 128 KiB at once. The decoder agrees with it on
    every frame, whichever way it decompresses it and whatever the chunk size."""
    records = Records.from_lists([1, 2], [5, 6], [[1, 2], [3]], [[-1, 1], [7]])
    payload = encode_records(records, TickState())
    big = encode_records(bulk_records(seed=51, count=3000, max_n=20, increasing=True), TickState())
    assert 128 * 1024 < len(big) < 1 << 20
    good = encode_segment(records)

    def frame(content: bytes, descriptor: int, size: bool = True) -> bytes:
        # Raw blocks of at most 128 KiB, a 4-byte content size (or none) and a window descriptor.
        header = ZSTD_MAGIC + (
            bytes([0x80, descriptor]) + len(content).to_bytes(4, "little") if size else bytes([0x00, descriptor])
        )
        blocks = [content[i : i + (1 << 17)] for i in range(0, len(content), 1 << 17)]
        return header + b"".join(
            ((len(b) << 3) | (i == len(blocks) - 1)).to_bytes(3, "little") + b for i, b in enumerate(blocks)
        )

    outcomes = set()
    for content in (payload, big):
        for size in (True, False):
            for descriptor in (0x00, 0x50, 0x88, 0x89, 0xA8, 0xF8):  # 1 KiB .. 2**41 bytes
                one = frame(content, descriptor, size)
                try:
                    zstandard.ZstdDecompressor().decompressobj().decompress(one)
                    accepted = True
                except zstandard.ZstdError:
                    accepted = False
                outcomes.add(accepted)
                for chunk_bytes in (MIN_CHUNK, DEFAULT_CHUNK_BYTES):
                    data = good + one + good
                    if accepted:
                        assert len(decode(data, chunk_bytes=chunk_bytes)) > 2 * len(records)
                    else:
                        expect_segment_error(data, len(good), match="corrupt zstd frame", chunk_bytes=chunk_bytes)
    assert outcomes == {True, False}


class OpenedSource:
    """A :class:`~herocollector.decode.codec.SegmentSource` that records how its file is used."""

    def __init__(self, path: Path, *, readinto: bool = True) -> None:
        self.name: str | Path = f"fd:{path.name}"
        self.path = path
        self.readinto = readinto
        self.opened: list[io.BufferedIOBase] = []

    def open(self) -> io.BufferedIOBase:
        fh: io.BufferedIOBase = open(self.path, "rb")
        if not self.readinto:
            fh = io.BytesIO(fh.read())
            fh.readinto = None  # type: ignore[method-assign]
            del fh.readinto
        self.opened.append(fh)
        return fh


def test_columns_from_segment_sources_close_them_and_report_progress(tmp_path: Path) -> None:
    records = bulk_records(seed=45, count=900, max_n=6)
    writer_ticks = TickState()
    sources, total = [], 0
    for i, (lo, hi) in enumerate(((0, 400), (400, 900))):
        path = tmp_path / f"segment-{i:06d}.seg.zst"
        path.write_bytes(encode_segment(slice_records(records, lo, hi), writer_ticks, records_per_frame=3))
        total += path.stat().st_size
        sources.append(OpenedSource(path))
    progress: list[int] = []
    decoder = SegmentDecoder(KNOWN_IDS, chunk_bytes=MIN_CHUNK)
    parts = list(decoder.columns([sources[0], tmp_path / "segment-000001.seg.zst"], on_bytes=progress.append))
    assert sum(progress) == total
    assert np.concatenate([p.stream_ids for p in parts]).tolist() == records.stream_ids.tolist()
    assert len(sources[0].opened) == 1 and sources[0].opened[0].closed
    plain = list(SegmentDecoder(KNOWN_IDS, chunk_bytes=MIN_CHUNK).columns(sources))
    assert np.concatenate([p.epochs for p in plain]).tolist() == records.ticks.astype(np.float64).tolist()
    assert all(len(s.opened) >= 1 and all(f.closed for f in s.opened) for s in sources)


def test_segment_source_errors_name_the_source_and_close_it(tmp_path: Path) -> None:
    path = tmp_path / "segment-000000.seg.zst"
    data = encode_segment(bulk_records(seed=46, count=50, max_n=4), records_per_frame=5)
    path.write_bytes(data + b"garbage!")
    source = OpenedSource(path, readinto=False)
    with pytest.raises(SegmentError) as info:
        list(SegmentDecoder(KNOWN_IDS).columns([source], on_bytes=lambda _: None))
    assert info.value.path == source.name and info.value.offset == len(data)
    assert source.opened and source.opened[0].closed


def test_the_object_code_kernels_are_in_use_unless_numba_is_asked_for() -> None:
    """No silent fallback: where the object code cannot load, the decoder still works (through
    numba, with a warning), but the test suite fails and says why."""
    from herocollector.decode import native

    kernels = native.backend()
    if native.numba_requested():
        assert kernels.name == "numba" and native.fallback_reason is None
        return
    if kernels.name != "object":
        pytest.fail(f"the object-code kernels did not load, numba runs instead: {native.fallback_reason}")
    assert native.fallback_reason is None


class DirFdSource:
    """A segment opened relative to a directory fd without following symlinks (as a run directory does)."""

    def __init__(self, dir_fd: int, name: str) -> None:
        self.dir_fd, self.name = dir_fd, name

    def open(self) -> io.BufferedReader:
        fd = os.open(self.name, os.O_RDONLY | os.O_NOFOLLOW, dir_fd=self.dir_fd)
        return os.fdopen(fd, "rb")


def test_segment_source_open_errors_end_the_decode_after_earlier_segments(tmp_path: Path) -> None:
    records = bulk_records(seed=47, count=200, max_n=4)
    (tmp_path / "segment-000000.seg.zst").write_bytes(encode_segment(records))
    (tmp_path / "elsewhere.seg.zst").write_bytes(encode_segment(records))
    (tmp_path / "segment-000001.seg.zst").symlink_to(tmp_path / "elsewhere.seg.zst")
    dir_fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        sources = [DirFdSource(dir_fd, "segment-000000.seg.zst"), DirFdSource(dir_fd, "segment-000001.seg.zst")]
        got = []
        with pytest.raises(OSError) as info:
            for columns in SegmentDecoder(KNOWN_IDS, chunk_bytes=MIN_CHUNK).columns(sources):
                got.append(columns)
        assert info.value.errno == errno.ELOOP  # the symlink was not followed
        assert sum(len(c) for c in got) == len(records)  # the first segment was decoded whole first
    finally:
        os.close(dir_fd)
    assert not reader_threads()
