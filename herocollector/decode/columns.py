"""The record decoder: chunks of decompressed frames into output columns, with the record kernel.

:class:`StreamTable` is a run's streams as the kernel sees them (slots, a dense id table,
scales, the selection); :class:`Columns` is what the decoder outputs; :class:`RecordDecoder`
runs :func:`herocollector.decode.native.decode_records` over the reader's chunks, carries an
incomplete record of a frame read in pieces over to the next piece, and turns the kernel's
stops into :class:`~herocollector.errors.SegmentError` naming the file, the frame's offset and
the byte within the frame.

May import: :mod:`herocollector.decode.records`, :mod:`herocollector.decode.frames`,
:mod:`herocollector.decode.native` and :mod:`herocollector.errors`.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from herocollector.decode import native as kernel  # the compiled kernels, loaded as fast as possible
from herocollector.decode import status as codes
from herocollector.decode.frames import Chunk
from herocollector.decode.records import Records, pool_empty
from herocollector.errors import SegmentError, UnknownStreamError

MAX_RECORD_BYTES = 8 << 20
"""Most decompressed bytes of one record (8 MiB; at least two bytes per element) when it is
larger than ``chunk_bytes``: a larger record is refused with a ``SegmentError`` naming its
frame and byte, as soon as its header or its bytes so far show that it is larger. A record
is one output row, so it is held whole: this bounds the bytes held for it and its columns
(16 bytes per element)."""

_MAX_LIST_VALUES = 2**31 - 1  # Arrow list offsets are int32
_TABLE_IDS = 1 << 16  # stream ids below this are looked up in a dense table
_U64 = np.uint64


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
        self.selected = np.zeros(self.ids.size, dtype=np.uint8)
        self.selected[self._slots_of(chosen)] = 1
        self.epoch_scales = self._per_slot(chosen, epoch_scales, "epoch_scales")
        self.value_scales = self._per_slot(chosen, value_scales, "value_scales")
        small = self.ids < _U64(_TABLE_IDS)
        size = int(self.ids[small][-1]) + 1 if small.any() else 0
        self.table = np.full(size, -1, dtype=np.int32)
        self.table[self.ids[small].astype(np.int64)] = np.flatnonzero(small).astype(np.int32)
        self.big_ids = np.ascontiguousarray(self.ids[~small])
        self.big_slots = np.flatnonzero(~small).astype(np.int32)

    def _slots_of(self, chosen: np.ndarray) -> np.ndarray:
        """The slots of the declared ids among ``chosen`` (``np.isin`` costs more on a few ids)."""
        slots = np.searchsorted(self.ids, chosen)
        declared = slots < self.ids.size
        declared[declared] &= self.ids[slots[declared]] == chosen[declared]
        return slots[declared]

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

    def append(self, data: np.ndarray, most: int) -> None:
        """Add a piece; the buffer grows geometrically, to at most ``most`` unless more is held."""
        size = self.length + data.size
        if size > self.buf.size:
            bigger = np.empty(max(size, min(2 * self.buf.size, most)), dtype=np.uint8)
            bigger[: self.length] = self.buf[: self.length]
            self.buf = bigger
        self.buf[self.length : size] = data
        self.length = size

    def consume(self, count: int) -> None:
        """Drop the first ``count`` bytes (decoded records)."""
        rest = self.length - count
        self.buf[:rest] = self.buf[count : self.length]
        self.length = rest
        self.seen += count


class RecordDecoder:
    """Runs the record kernel over chunks; turns its stops into errors or output."""

    DENSITY = (1 / 64, 1 / 8)
    """Output records and elements per input byte assumed before any is decoded."""

    def __init__(
        self, streams: StreamTable, ticks: np.ndarray, scaled: int, max_record_bytes: int = MAX_RECORD_BYTES
    ) -> None:
        self.streams = streams
        self.ticks = ticks
        self.scaled = int(scaled)  # the kernel's mode (status.RAW, SCALED or SCALED_VALUES); one type for numba
        self.max_record_bytes = max_record_bytes
        self.open: _OpenFrame | None = None
        self.density = self.DENSITY  # output records and elements per input byte, so far

    def decode(self, chunks: Iterator[Chunk]) -> Iterator[Records | Columns]:
        """Decode the reader's chunks in order; raises the first damage's ``SegmentError``."""
        for chunk in chunks:
            if chunk.piece:
                yield from self._piece(chunk, chunks)
            else:
                yield from self._whole_frames(chunk)

    def _whole_frames(self, chunk: Chunk) -> Iterator[Records | Columns]:
        pos, unit = 0, 0
        if not chunk.ends.size:
            return
        done: list[Records | Columns] = []
        while True:
            status, pos, unit, out, detail = self._kernel(chunk.data, pos, chunk.ends, unit, False)
            if out is not None:
                done.append(out)
            if status == codes.OUT_FULL:
                continue
            if status == codes.OK:
                # Output only once the whole chunk decoded: records before damage in the
                # same chunk are not output (nor those of a doomed chunk).
                if not chunk.doomed:
                    yield from done
                return
            unit_start = int(chunk.ends[unit - 1]) if unit else 0
            frame = int(chunk.frames[unit])
            if status == codes.UNKNOWN_STREAM:
                run, bad = kernel.varint_damage(chunk.data, pos, int(chunk.ends[unit]), 0)
                if bad or run:
                    status = codes.VARINT_TOO_LONG if bad else codes.CUT_SHORT
            raise _error(status, chunk.name_of(unit), frame, pos - unit_start, detail)

    def _piece(self, chunk: Chunk, chunks: Iterator[Chunk]) -> Iterator[Records | Columns]:
        if chunk.first:
            self.open = _OpenFrame(chunk.name, int(chunk.frames[0]), chunk.declared)
        frame = self.open
        if frame is None:
            raise RuntimeError("herocollector: a frame piece arrived without its first piece")
        frame.append(chunk.data, self.max_record_bytes + chunk.data.size)
        if not chunk.last and frame.length < max(frame.need, 2 * frame.tried):
            return  # the cut record cannot be complete yet: do not decode it again
        if not chunk.last and frame.tried and not _may_be_whole(frame.buf, frame.length):
            # Still cut: count its varints instead of decoding (and allocating columns for) it.
            frame.need, frame.tried = max(frame.need, frame.length + 1), frame.length
            self._check_size(frame)
            return
        pos = 0
        ends = np.array([frame.length], dtype=np.int64)
        while True:
            status, pos, _, out, detail = self._kernel(frame.buf, pos, ends, 0, not chunk.last)
            if out is not None and not chunk.doomed and status in (codes.OK, codes.OUT_FULL, codes.NEED_MORE):
                yield out
            if status != codes.OUT_FULL:
                break
        if chunk.last:
            self.open = None
        if status == codes.OK:
            frame.consume(pos)
            frame.need = frame.tried = 0
            return
        if status == codes.NEED_MORE:
            frame.consume(pos)
            frame.need, frame.tried = detail, frame.length
            if frame.declared >= 0 and frame.seen + frame.need > frame.declared:
                message = "record cut short: it needs more bytes than its frame holds"
                raise SegmentError(message, frame.name, frame.frame)
            self._check_size(frame)
            return
        if status == codes.UNKNOWN_STREAM:
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
                status = codes.VARINT_TOO_LONG if bad else codes.CUT_SHORT
        raise _error(status, frame.name, frame.frame, frame.seen + pos, detail)

    def _check_size(self, frame: _OpenFrame) -> None:
        """Refuse the cut record at the start of ``frame.buf`` once it is known to be too large."""
        if frame.need > self.max_record_bytes:
            message = (
                f"record of at least {frame.need} bytes at byte {frame.seen} of the frame's decompressed data:"
                f" over the limit of {self.max_record_bytes} bytes per record"
            )
            raise SegmentError(message, frame.name, frame.frame)

    def _kernel(
        self, data: np.ndarray, pos: int, ends: np.ndarray, unit: int, open_last: bool
    ) -> tuple[int, int, int, Records | Columns | None, int]:
        """One kernel call into freshly allocated output columns.

        The columns are sized from the records and elements per byte seen so far, with a
        margin; when they fill up the kernel stops at a record boundary (``OUT_FULL``) and
        the caller goes on with new ones. A record takes at least three bytes and an element
        two, which bounds what any data can need. A record that needs more than the estimate
        gets room for its own elements (read from its header).
        """
        left = int(ends[-1]) - pos
        bound = (left // 3 + 1, left // 2 + 1)
        wanted = (int(left * self.density[0]) + 64, int(left * self.density[1]) + 256)
        records, values = min(bound[0], wanted[0]), min(bound[1], wanted[1])
        if open_last and left > values:
            # A frame's pieces: the record held over may be large; give it room at once, so
            # that its columns are not allocated twice.
            header = _header(data, pos, int(ends[-1]))
            if header is not None and header[0] > values:
                values = min(header[0], bound[1])
        while True:
            sid = pool_empty(records, np.uint32)
            slot = pool_empty(records, np.int32)
            epoch = pool_empty(records, np.float64)
            offsets = pool_empty(records + 1, np.int32)
            idx = pool_empty(values, np.int64)
            val = pool_empty(values, np.float64)
            s = self.streams
            status, stop, unit, nrec, nval, detail = kernel.decode_records(
                data, pos, ends, unit, open_last, s.table, s.big_ids, s.big_slots, s.selected,
                s.epoch_scales, s.value_scales, self.ticks, self.scaled, _MAX_LIST_VALUES,
                sid, slot, epoch, epoch.view(np.int64), offsets, idx, val, val.view(np.int64),
            )  # fmt: skip
            if status != codes.BAD_CAPACITY:
                break
            if (records, values) == bound:
                raise RuntimeError("herocollector: decoder output arrays too small (a bug)")
            header = _header(data, int(stop), int(ends[unit]))
            if header is None or header[0] <= values or records < 1:
                records, values = bound  # make room for anything
            else:
                values = min(header[0], bound[1])  # room for this record's elements, not for a chunk of them
        done = int(stop) - pos
        if done > 0 and status in (codes.OK, codes.OUT_FULL, codes.NEED_MORE):
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


def _header(data: np.ndarray, pos: int, end: int) -> tuple[int, int] | None:
    """``(n, end of the header)`` of the record at ``data[pos:end]``; None when its header is cut or too long."""
    words: list[int] = []
    value, shift = 0, 0
    for at in range(pos, min(end, pos + 3 * 10)):
        byte = int(data[at])
        value |= (byte & 0x7F) << shift
        shift += 7
        if byte < 0x80:
            words.append(value)
            value, shift = 0, 0
            if len(words) == 3:
                return words[2], at + 1
    return None


def _may_be_whole(data: np.ndarray, length: int) -> bool:
    """Whether the record at ``data[0:length]`` may be complete: it holds as many varint ends as it needs."""
    header = _header(data, 0, length)
    if header is None:
        return True  # the kernel finds out what is wrong with it
    count, body = header
    ends = 0
    for at in range(body, length, 1 << 20):  # in steps: no temporary as large as the record
        ends += int(np.count_nonzero(data[at : min(at + (1 << 20), length)] < 0x80))
    return ends >= 2 * count


def _error(status: int, name: str | Path, frame: int, within: int, detail: int) -> SegmentError:
    """The error for a kernel stop in the frame at file offset ``frame``."""
    if status == codes.UNKNOWN_STREAM:
        return UnknownStreamError(name, frame, detail)
    where = f"at byte {within} of the frame's decompressed data"
    if status == codes.CUT_SHORT:
        return SegmentError(f"record cut short {where}", name, frame)
    if status == codes.VARINT_TOO_LONG:
        return SegmentError(f"varint longer than 10 bytes {where}", name, frame)
    if status == codes.TOO_MANY_VALUES:
        message = f"record with more than {_MAX_LIST_VALUES} elements (an Arrow list's limit) {where}"
        return SegmentError(message, name, frame)
    raise RuntimeError(f"herocollector: unexpected decoder status {status}")
