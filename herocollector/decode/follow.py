"""Following a run while it is written: the cursor, and the decode of what was completed since it.

The data logger (``data_logger.DataLogger``) compresses each logical frame into a zstd frame of
its own and appends it to the current segment (stdio-buffered; rotation closes and fsyncs it
before the next segment is created). A segment that is still written is a sequence of whole
frames, possibly followed by one torn frame; every segment before the newest is closed.

A :class:`Cursor` says where a followed run was read up to: the segment and byte offset right
after the last whole frame decoded, each stream's last raw epoch tick (what the record kernel
carries from frame to frame and from segment to segment), and how many chunks were committed.

:class:`FollowDecoder` decodes a run's segments from a cursor on, and never from the run's start
again: the cost of a read is about the bytes added since the last one.

* The segments are read in name order from ``cursor.segment`` at ``cursor.offset``, their frames
  walked by their headers (:func:`~herocollector.decode.frames.scan_segment`, from that offset),
  a read buffer (a *part*) at a time. In the newest segment of a run without ``_DONE``, a torn
  last frame ends the read: the next cursor points at its start. In a closed segment (one that
  is not the newest), or anywhere once the run is done, it is damage, a
  :class:`~herocollector.errors.SegmentError` naming the file and offset, as in a whole decode.
* Each part is decoded by the record kernel with the ticks carried on from the cursor (each
  stream's last raw tick), the kernel's own ``float64(tick) * epoch_scale``: the rows are bit
  for bit those of one decode of the whole run, split at the cursor.
* A part's columns are handed on only once the whole part has decoded. A record of a stream
  the caller does not know yet (its ``streams/*.json`` not read yet) is no damage while the
  run is written: the part is decoded again up to the frame that holds it, and the read ends
  there, so that record is read (with the stream's labels) by a later read. Once the run is
  done it is an :class:`~herocollector.errors.UnknownStreamError`, as in a whole decode.
* The cursor's segment must still be there, at least as long as the cursor's offset, and end
  in the same bytes before it (:attr:`Cursor.fingerprint`): a segment that shrank or was
  replaced under the cursor is a :class:`~herocollector.errors.RunChanged` naming it, never
  read again from elsewhere.

The segments are opened by the caller (:class:`FollowSegment`; the output layer opens them
through the run directory's trust boundary), so this module reads no path itself.

May import: the other decoder modules and :mod:`herocollector.errors`.
"""

from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Generator, Iterator, Mapping, Sequence
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import zstandard

from herocollector.decode import status as codes
from herocollector.decode.columns import MAX_RECORD_BYTES, Columns, RecordDecoder, StreamTable
from herocollector.decode.frames import MAX_FRAME_BYTES, ReadBuffers, Span, decompress_span, scan_segment
from herocollector.errors import CollectorError, RunChanged, UnknownStreamError

__all__ = ["FINGERPRINT_BYTES", "START", "Cursor", "FollowDecoder", "FollowSegment", "Limited", "fingerprint"]

FINGERPRINT_BYTES = 256
"""Bytes before a cursor's offset that its fingerprint covers."""

SEGMENT_SUFFIX = ".seg.zst"  # as run/logdir.py names them; decode/ may not import run/
_INT64 = (-(2**63), 2**63 - 1)
_MAX_STREAM_ID = 2**32 - 1


@dataclass(frozen=True)
class Cursor:
    """Where a followed run was read up to: the next record to decode.

    Attributes:
        segment: File name of the segment the next frame starts in (None: the run's first).
        offset: Byte offset in that segment right after the last whole frame decoded.
        ticks: Each stream's last raw epoch tick (what the kernel carries across frames), by
            stream id; a stream without a record so far has no entry.
        chunk: How many chunks were committed (0 at the start).
        fingerprint: A digest of the (at most :data:`FINGERPRINT_BYTES`) bytes of ``segment``
            right before ``offset`` (empty at offset 0): a segment replaced under the cursor is
            told by it. It names no inode, so another host continues from the same cursor.
    """

    segment: str | None
    offset: int
    ticks: Mapping[int, int]
    chunk: int
    fingerprint: str = ""

    def to_json(self) -> str:
        """The cursor as one line of JSON (stream ids as strings, the way JSON keys are)."""
        data: dict[str, Any] = {
            "segment": self.segment,
            "offset": self.offset,
            "ticks": {str(k): int(v) for k, v in sorted(self.ticks.items())},
            "chunk": self.chunk,
            "fingerprint": self.fingerprint,
        }
        return json.dumps(data, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> Cursor:
        """The cursor :meth:`to_json` gave.

        Raises:
            CollectorError: Not a cursor: invalid JSON, a missing or unknown field, or a field
                of the wrong type or out of range (the message names it).
        """
        try:
            data = json.loads(text)
        except (TypeError, ValueError) as exc:
            raise CollectorError(f"malformed follow cursor: not JSON ({exc})") from None
        if not isinstance(data, dict):
            raise CollectorError("malformed follow cursor: not a JSON object")
        known = {"segment", "offset", "ticks", "chunk", "fingerprint"}
        missing = sorted({"segment", "offset", "ticks", "chunk"} - data.keys())
        unknown = sorted(data.keys() - known)
        if missing or unknown:
            raise CollectorError(f"malformed follow cursor: fields missing {missing}, unknown {unknown}")
        segment = data["segment"]
        if segment is not None and not _segment_name(segment):
            raise CollectorError(f"malformed follow cursor: segment {segment!r} is not a segment file name")
        offset = _integer(data["offset"], "offset", 0, _INT64[1])
        chunk = _integer(data["chunk"], "chunk", 0, _INT64[1])
        if segment is None and offset:
            raise CollectorError("malformed follow cursor: an offset without a segment")
        raw = data["ticks"]
        if not isinstance(raw, dict):
            raise CollectorError("malformed follow cursor: ticks is not an object")
        ticks: dict[int, int] = {}
        for key, value in raw.items():
            if not (isinstance(key, str) and key.isascii() and key.isdigit() and len(key) <= 10):
                raise CollectorError(f"malformed follow cursor: ticks key {key!r} is not a stream id")
            sid = _integer(int(key), "ticks key", 0, _MAX_STREAM_ID)
            ticks[sid] = _integer(value, f"ticks[{key}]", *_INT64)
        fingerprint = data.get("fingerprint", "")
        if not isinstance(fingerprint, str) or len(fingerprint) > 64 or fingerprint.strip("0123456789abcdef"):
            raise CollectorError("malformed follow cursor: fingerprint is not a hex digest")
        return cls(segment, offset, ticks, chunk, fingerprint)


START = Cursor(None, 0, {}, 0)
"""The cursor of a run not read yet."""


def _segment_name(name: object) -> bool:
    return (
        isinstance(name, str)
        and name.endswith(SEGMENT_SUFFIX)
        and "/" not in name
        and "\x00" not in name
        and not name.startswith(".")
        and len(name.encode("utf-8", "surrogateescape")) <= 255
    )


def _integer(value: object, what: str, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise CollectorError(f"malformed follow cursor: {what} is not an integer ({value!r:.40})")
    if not low <= value <= high:
        raise CollectorError(f"malformed follow cursor: {what} {value} is out of range [{low}, {high}]")
    return value


def fingerprint(data: bytes) -> str:
    """The fingerprint of the bytes before a cursor's offset (empty for none)."""
    return hashlib.blake2b(data, digest_size=16).hexdigest() if data else ""


class FollowSegment(Protocol):
    """A segment of a followed run, as the caller lists and opens it."""

    @property
    def name(self) -> str:
        """Its file name in the run directory (what a cursor records)."""

    @property
    def path(self) -> str | Path:
        """What errors name."""

    @property
    def size(self) -> int:
        """Its size when it was listed: the bytes read of it at most."""

    def open(self, offset: int) -> io.RawIOBase:
        """The segment at ``offset``, giving at most ``size - offset`` bytes; closed by the reader.

        Raises:
            RunChanged: It is gone, replaced, or shorter than listed.
        """


class FollowDecoder:
    """Decodes the records of a run completed since a cursor (see the module docstring).

    One decoder serves one read: iterate :meth:`columns` to its end, then read :attr:`cursor`,
    :attr:`bytes`, :attr:`complete`, :attr:`waiting_for` and :meth:`epochs`.

    Args:
        streams: The streams known now (a record of any other id waits, or is an error when
            ``done``), with the selection and scales.
        cursor: Where the last read ended (:data:`START` for a run not read yet).
        done: The run has ``_DONE`` (checked before the segments were listed): every segment
            is closed, and its end must be the end of a whole frame.
        chunk_bytes: Compressed bytes read (and decoded) per part; decompressed bytes per chunk.
        max_frame_bytes: Most decompressed bytes of one frame.
        max_record_bytes: Most decompressed bytes of one record.
        until: Read exactly up to this cursor (one a read from ``cursor`` gave before, to read
            a chunk again), even if more whole frames are there by now; records of streams not
            known are errors then. The read's cursor is ``until`` itself.

    Attributes:
        cursor: Once read to its end: where the next read starts; the given cursor itself when
            no byte was decoded, else a new one; its ``chunk`` is one more when the read gave
            rows (the chunk they make), the same when it only moved past records of streams not
            selected (nothing to commit but the cursor).
        bytes: Segment bytes decoded, from the old cursor to the new one.
        complete: The run is done and was read to its end.
        waiting_for: The stream id whose record ended the read early (no metadata yet), or None.
    """

    def __init__(
        self,
        streams: StreamTable,
        cursor: Cursor,
        *,
        done: bool,
        chunk_bytes: int,
        max_frame_bytes: int = MAX_FRAME_BYTES,
        max_record_bytes: int = MAX_RECORD_BYTES,
        until: Cursor | None = None,
    ) -> None:
        self.streams = streams
        self.until = until
        self.start = cursor
        self.cursor = cursor
        self.done = done
        self.chunk_bytes = int(chunk_bytes)
        self.max_frame_bytes = int(max_frame_bytes)
        self.max_record_bytes = max(int(max_record_bytes), self.chunk_bytes)
        self.bytes = 0
        self.rows = 0
        self.complete = False
        self.waiting_for: int | None = None
        ids = streams.ids
        self.ticks = np.zeros(len(streams), dtype=np.int64)
        self.seen = np.zeros(len(streams), dtype=bool)
        self.carried: dict[int, int] = {}  # ticks of streams not known now: kept as they were
        for sid, tick in cursor.ticks.items():
            slot = int(np.searchsorted(ids, np.uint64(sid)))
            if slot < ids.size and int(ids[slot]) == sid:
                self.ticks[slot] = tick
                self.seen[slot] = True
            else:
                self.carried[int(sid)] = int(tick)
        self._stop: int | None = None  # file offset of the frame the read ended before
        self._density: tuple[float, float] | None = None

    def epochs(self) -> dict[int, float]:
        """Per selected stream with a record so far: the epoch of its last record (file order)."""
        slots = np.flatnonzero(self.seen & (self.streams.selected != 0))
        epochs = self.ticks[slots].astype(np.float64) * self.streams.epoch_scales[slots]
        return {int(self.streams.ids[s]): float(e) for s, e in zip(slots, epochs, strict=True)}

    def columns(self, segments: Sequence[FollowSegment]) -> Iterator[Columns]:
        """Decode from the cursor to the end of the last whole frame of ``segments``.

        Args:
            segments: The run's segments as listed (in name order, all of them or those from
                the cursor's on); the last one is the newest.

        Yields:
            Columns of the selected streams, in file order.

        Raises:
            SegmentError: Damage in a closed segment, or anywhere when done (names the file
                and offset); an ``UnknownStreamError`` when done.
            RunChanged: The cursor's segment is gone, shrank below the cursor, or was replaced.
        """
        names = [s.name for s in segments]
        first, offset = 0, 0
        if self.start.segment is not None:
            first, offset = self._index(segments, names, self.start.segment), self.start.offset
        last = len(segments) - 1
        if self.until is not None:
            last = first - 1 if self.until.segment is None else self._index(segments, names, self.until.segment)
            if self.start.segment is not None and (last, self.until.offset) < (first, offset):
                raise CollectorError("the follow cursor to read up to lies before the cursor read from")
        space = ReadBuffers(self.chunk_bytes)
        dctx = zstandard.ZstdDecompressor()
        position: tuple[FollowSegment, int] | None = None
        for index in range(first, last + 1):
            segment = segments[index]
            start = offset if index == first else 0
            final = self.done or index < len(segments) - 1
            stop = self.until.offset if self.until is not None and index == last else None
            end = yield from self._segment(segment, start, final, space, dctx, stop)
            self.bytes += end - start
            position = (segment, end)
            if self._stop is not None:
                break
        to_end = last == len(segments) - 1 and (
            self.until is None or not segments or self.until.offset == segments[last].size
        )
        self.complete = self.done and self._stop is None and to_end
        if position is not None and (self.bytes or self.until is not None):
            segment, end = position
            chunk = self.start.chunk + (1 if self.rows else 0)
            self.cursor = Cursor(segment.name, end, self._tick_map(), chunk, self._print(segment, end))
        if self.until is not None:
            self._check_until()
            self.cursor = self.until

    def _index(self, segments: Sequence[FollowSegment], names: list[str], name: str) -> int:
        if name not in names:
            where = Path(segments[0].path).parent / name if segments else name
            raise RunChanged("the segment the follow cursor is in is gone", where)
        return names.index(name)

    def _check_until(self) -> None:
        """The read ended where ``until`` says, with its ticks and bytes: the same chunk as before."""
        until, got = self.until, self.cursor
        if until is None:
            return
        if got is self.start:
            got = Cursor(self.start.segment, self.start.offset, self._tick_map(), 0, self.start.fingerprint)

        def moved(ticks: Mapping[int, int]) -> dict[int, int]:
            return {k: v for k, v in ticks.items() if v}

        if (got.segment, got.offset) != (until.segment, until.offset):
            message = f"the chunk read again ends at byte {got.offset} of {got.segment}, not at byte {until.offset}"
            raise CollectorError(message, until.segment)
        if moved(got.ticks) != moved(until.ticks) or got.fingerprint != until.fingerprint:
            message = f"the chunk read again up to byte {until.offset} is not the chunk read before"
            raise RunChanged(message, until.segment)

    def _segment(
        self,
        segment: FollowSegment,
        start: int,
        final: bool,
        space: ReadBuffers,
        dctx: zstandard.ZstdDecompressor,
        stop: int | None = None,
    ) -> Generator[Columns, None, int]:
        """One segment from ``start`` on (up to ``stop``); returns the offset after its last whole frame read."""
        for where, what in ((start, "the follow cursor"), (stop, "the follow cursor to read up to")):
            if where is not None and segment.size < where:
                message = f"segment shrank below {what}: {segment.size} bytes, the cursor is at byte {where}"
                raise RunChanged(message, segment.path)
        ahead = min(start, FINGERPRINT_BYTES) if self.start.fingerprint and segment.name == self.start.segment else 0
        with closing(segment.open(start - ahead)) as fh:
            if ahead and fingerprint(_read_exactly(fh, ahead, segment.path)) != self.start.fingerprint:
                message = f"segment was replaced under the follow cursor: its bytes before byte {start} differ"
                raise RunChanged(message, segment.path)
            source: io.RawIOBase = fh if stop is None else Limited(fh, stop - start)
            final = final or stop is not None  # a cursor lies right after a whole frame
            walk = scan_segment(
                source, segment.path, self.chunk_bytes, space, self.max_frame_bytes, base=start, final=final
            )
            try:
                while True:
                    try:
                        span = next(walk)
                    except StopIteration as stop:
                        end: int = stop.value
                        return end
                    yield from self._part(span, dctx)
                    if self._stop is not None:
                        return self._stop
            finally:
                walk.close()

    def _part(self, span: Span, dctx: zstandard.ZstdDecompressor) -> list[Columns]:
        """The columns of one part, once all of it decoded (or up to a record of a stream not known yet)."""
        before = self.ticks.copy()
        try:
            out = self._decode(span, dctx)
        except UnknownStreamError as exc:
            if self.done or self.until is not None:
                raise
            self.ticks[:] = before
            keep = int(np.count_nonzero(span.starts + span.base < exc.offset))
            cut = Span(
                span.name, span.buf, span.starts[:keep], span.ends[:keep], span.sizes[:keep], span.kinds[:keep],
                span.base, False,
            )  # fmt: skip
            out = self._decode(cut, dctx) if keep else []
            self._stop, self.waiting_for = exc.offset, exc.stream_id
        for columns in out:
            self.seen[columns.slots] = True
            self.rows += len(columns)
        return out

    def _decode(self, span: Span, dctx: zstandard.ZstdDecompressor) -> list[Columns]:
        chunks = decompress_span(span, self.chunk_bytes, dctx, self.max_frame_bytes)
        decoder = RecordDecoder(self.streams, self.ticks, codes.SCALED, self.max_record_bytes)
        if self._density is not None:  # the output sized as the parts before needed, from the first part on
            decoder.density = self._density
        out = [c for c in decoder.decode(iter(chunks)) if isinstance(c, Columns)]
        self._density = decoder.density
        return out

    def _tick_map(self) -> dict[int, int]:
        keep = np.flatnonzero((self.ticks != 0) | self.seen)
        ticks = dict(self.carried)
        ticks.update((int(self.streams.ids[s]), int(self.ticks[s])) for s in keep)
        return ticks

    def _print(self, segment: FollowSegment, end: int) -> str:
        ahead = min(end, FINGERPRINT_BYTES)
        if not ahead:
            return ""
        with closing(segment.open(end - ahead)) as fh:
            return fingerprint(_read_exactly(fh, ahead, segment.path))


def _read_exactly(fh: io.RawIOBase, count: int, path: str | Path) -> bytes:
    data = bytearray(count)
    view = memoryview(data)
    got = 0
    while got < count:
        n = fh.readinto(view[got:])
        if not n:
            raise RunChanged(f"segment ended {count - got} bytes early while the follow cursor was checked", path)
        got += n
    return bytes(data)


class Limited(io.RawIOBase):
    """The first ``left`` bytes of a file object (not closed here)."""

    def __init__(self, fh: io.RawIOBase, left: int) -> None:
        self._fh = fh
        self._left = left

    def readable(self) -> bool:
        """Always: it is read, never written."""
        return True

    def readinto(self, buffer: Any) -> int:
        """Read into ``buffer``, never past the limit."""
        if self._left <= 0:
            return 0
        view = memoryview(buffer).cast("B")
        got = self._fh.readinto(view[: min(len(view), self._left)]) or 0
        if not got:
            self._ended_early()
        self._left -= got
        return got

    def _ended_early(self) -> None:
        """The file ended before ``left`` bytes: nothing here (a subclass may call it an error)."""
