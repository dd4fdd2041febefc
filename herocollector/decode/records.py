"""Records as columns, the varint and zigzag coding, and the segment encoder the tests use.

The record format (see ``docs/format.md``)::

    stream_id, zigzag(epoch_delta_ticks), n, first_index, gap_1..gap_{n-1}, zigzag(q_0..q_{n-1})

:class:`Records` holds decoded records as flat columns; :class:`TickState` carries each
stream's last epoch tick across segment files; :func:`encode_records` and
:func:`encode_segment` write the format (the data logger's writer, for tests and
:class:`~herocollector.run.logdir.RunWriter`).

May import: NumPy, pyarrow, zstandard and :mod:`herocollector.decode.status`.
"""

from __future__ import annotations

import io
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import zstandard

from herocollector.decode.status import MAX_VARINT_BYTES

_U64 = np.uint64
_POOL_BYTES = 64 * 1024  # arrays at least this large come from pyarrow's pool


def pool_empty(count: int, dtype: type | np.dtype) -> np.ndarray:
    """An uninitialised array allocated from pyarrow's memory pool.

    The pool keeps freed memory for reuse, where NumPy's allocator would hand large blocks
    back to the operating system: every chunk would then pay page faults on fresh memory
    (about a third of the decode time on a virtual machine). Small arrays come from NumPy:
    its allocator serves them from the heap without page faults, and faster.
    """
    kind = np.dtype(dtype)
    if count * kind.itemsize < _POOL_BYTES:
        return np.empty(count, dtype=kind)
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
        ticks: np.ndarray = np.empty_like(sorted_ticks)
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
        deltas: np.ndarray = np.empty_like(sorted_ticks)
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
