"""The vectorised NumPy segment decoder that herocollector used before the compiled kernel.

It is kept only as an independent oracle for the tests and the fuzzer: it decodes the same
``.seg.zst`` format with no Python loop per record, per varint or per frame (a vectorised walk
over the frame headers, bulk zstd decompression, varints split at their terminating bytes and
assembled seven bits at a time, record boundaries found by pointer doubling, segmented
cumulative sums for index gaps and epoch ticks), so it shares no code and few ideas with
:mod:`herocollector.decode.kernel`. Production code must not import it.

Its API is :class:`NumpySegmentDecoder`, the former ``SegmentDecoder``: same constructor,
same ``decode_file`` / ``decode_stream`` / ``decode_bytes``, same :class:`~herocollector.decode.codec.Records`
and the same error contract.
"""

from __future__ import annotations

import io
from collections.abc import Generator, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import zstandard

from herocollector.decode.codec import DEFAULT_CHUNK_BYTES, Records, TickState, zigzag_decode
from herocollector.errors import SegmentError, UnknownStreamError

MAX_VARINT_BYTES = 10
_MAX_BLOCK_SIZE = 128 * 1024
_WALK_STEPS = 64  # records per frame followed one by one before switching to pointer doubling
_PAD = 32  # zero bytes kept after valid data so header gathers never index out of bounds
_U64 = np.uint64


class _Readable(Protocol):
    """A binary file object, as :meth:`NumpySegmentDecoder.decode_stream` reads it."""

    def readinto(self, buffer: memoryview, /) -> int | None:
        """Read into ``buffer``; the bytes read (0 or None at the end)."""


class _Damage(Exception):
    """Damage found at a byte offset of a buffer; turned into a SegmentError by the caller."""

    def __init__(self, offset: int, message: str, stream_id: int | None = None) -> None:
        super().__init__(message)
        self.offset = int(offset)
        self.message = message
        self.stream_id = stream_id


def decode_varints(buf: np.ndarray, length: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Decode every complete LEB128 varint in ``buf[:length]``.

    Bytes after the last terminating byte (an unfinished varint) are ignored; the caller
    decides whether that is damage or the start of the next chunk.

    Args:
        buf: Contiguous ``uint8`` array of at least ``length + 8`` bytes (each varint is
            read as one unaligned 64-bit word, which may reach past ``length``).
        length: Bytes of data in ``buf``.

    Returns:
        ``(values, starts, ends)``: the values as ``uint64`` (bits past 64 dropped, as the
        C++ decoder does), and the offsets of each varint's first and last byte.

    Raises:
        _Damage: A varint is longer than ten bytes.
    """
    if buf.size < length + 8 or not buf.flags.c_contiguous:
        raise ValueError("decode_varints needs a contiguous buffer with 8 bytes of padding")
    data = buf[:length]
    ends = np.flatnonzero(data < 0x80)
    starts = np.empty_like(ends)
    starts[:1] = 0
    starts[1:] = ends[:-1] + 1
    nbytes = ends - starts
    nbytes += 1
    # A one-byte varint is its byte; only the longer ones (often few) take the word path.
    all_values = data[ends].astype(np.uint64)
    multi = np.flatnonzero(nbytes > 1)
    if not multi.size:
        return all_values, starts, ends
    all_starts = starts
    starts, nbytes = starts[multi], nbytes[multi]
    # One unaligned little-endian word per varint, then the 7-bit groups are packed
    # together two, four and eight at a time (SWAR), all in place.
    words = np.ndarray(shape=(length,), dtype="<u8", buffer=buf, strides=(1,))
    values = words[starts]
    values &= _GROUP_MASK[np.minimum(nbytes, 8)]
    low = values & _U64(0x007F007F007F007F)
    values &= _U64(0x7F007F007F007F00)
    values >>= _U64(1)
    values |= low
    np.bitwise_and(values, _U64(0x00003FFF00003FFF), out=low)
    values &= _U64(0x3FFF00003FFF0000)
    values >>= _U64(2)
    values |= low
    np.bitwise_and(values, _U64(0x000000000FFFFFFF), out=low)
    values &= _U64(0x0FFFFFFF00000000)
    values >>= _U64(4)
    values |= low
    long = np.flatnonzero(nbytes > 8)
    if long.size:
        if (nbytes[long] > MAX_VARINT_BYTES).any():
            raise _Damage(int(starts[long[np.argmax(nbytes[long] > MAX_VARINT_BYTES)]]), "varint longer than 10 bytes")
        values[long] |= (data[starts[long] + 8] & 0x7F).astype(np.uint64) << _U64(56)
        tenth = long[nbytes[long] == MAX_VARINT_BYTES]
        values[tenth] |= (data[starts[tenth] + 9] & 0x7F).astype(np.uint64) << _U64(63)
    all_values[multi] = values
    return all_values, all_starts, ends


_GROUP_MASK = np.array([(1 << (8 * k)) - 1 for k in range(9)], dtype=np.uint64) & _U64(0x7F7F7F7F7F7F7F7F)


# ----------------------------------------------------------------------------------------
# zstd frame walking
# ----------------------------------------------------------------------------------------


@dataclass
class _Frames:
    """Complete frames found at the start of a buffer."""

    starts: np.ndarray  # offsets in the buffer
    ends: np.ndarray
    content_sizes: np.ndarray  # decompressed sizes; -1 when the header does not say
    consumed: int  # bytes covered by the complete frames


def _words(buf: np.ndarray) -> np.ndarray:
    """Every unaligned little-endian 64-bit word of ``buf``, by its first byte (a view)."""
    return np.ndarray(shape=(buf.size - 7,), dtype="<u8", buffer=buf, strides=(1,))


def _le(buf: np.ndarray, pos: np.ndarray, nbytes: np.ndarray | int, max_bytes: int) -> np.ndarray:
    """Little-endian unsigned integers of ``nbytes`` bytes at ``pos`` (vectorised), as ``int64``."""
    return np.asarray(_words(buf)[pos] & _BYTE_MASK[np.minimum(nbytes, max_bytes)]).view(np.int64)


_BYTE_MASK = np.array([(1 << (8 * k)) - 1 for k in range(9)], dtype=np.uint64)


def _walk_blocks(buf: np.ndarray, length: int, q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Follow the block headers of frames whose first block header is at ``q``.

    Returns:
        ``(end, state)`` per frame: end offset after the last block, and state 0 = complete,
        1 = runs past the buffer, 2 = invalid block header.
    """
    q = q.copy()
    state = np.full(q.shape, -1, dtype=np.int8)
    active = np.arange(q.size)
    words = _words(buf)
    while active.size:
        qa = q[active]
        short = qa + 3 > length
        state[active[short]] = 1
        active, qa = active[~short], qa[~short]
        bh = (words[qa] & _U64(0xFFFFFF)).astype(np.int64)
        last = (bh & 1).astype(bool)
        btype = (bh >> 1) & 3
        bsize = bh >> 3
        bad = (btype == 3) | (bsize > _MAX_BLOCK_SIZE)
        state[active[bad]] = 2
        q[active] = qa + 3 + np.where(btype == 1, 1, bsize)
        finished = last & ~bad
        state[active[finished]] = 0
        active = active[~(finished | bad)]
    return q, state


def _scan_frames(buf: np.ndarray, length: int, final: bool) -> _Frames:
    """Find the complete zstd frames at the start of ``buf[:length]``.

    Args:
        buf: Buffer with at least ``_PAD`` zero bytes after ``length``.
        length: Bytes of valid data.
        final: No more data follows (the end of the file).

    Returns:
        The complete frames, in order.

    Raises:
        _Damage: Bytes that are not a zstd frame, an invalid header, or (when ``final``)
            a truncated frame.
    """
    empty = _Frames(np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.int64), 0)
    if length == 0:
        return empty
    second = buf[1:length]
    cand = np.flatnonzero((second == 0xB5) | (second == 0x2A))
    b0, b1, b2, b3 = buf[cand], buf[cand + 1], buf[cand + 2], buf[cand + 3]
    is_zstd = (b0 == 0x28) & (b1 == 0xB5) & (b2 == 0x2F) & (b3 == 0xFD)
    is_skip = ((b0 & 0xF0) == 0x50) & (b1 == 0x2A) & (b2 == 0x4D) & (b3 == 0x18)
    keep = is_zstd | is_skip
    pos, is_zstd = cand[keep], is_zstd[keep]
    if not pos.size or pos[0] != 0:
        if not final and length < 4:
            return empty
        raise _Damage(0, "not a zstd frame (bad magic number)")

    nodes = pos.size
    end = np.empty(nodes, dtype=np.int64)
    state = np.zeros(nodes, dtype=np.int8)  # 0 complete, 1 incomplete, 2 invalid
    size = np.zeros(nodes, dtype=np.int64)

    skip = np.flatnonzero(~is_zstd)
    end[skip] = pos[skip] + 8 + _le(buf, pos[skip] + 4, 4, 4)
    state[skip] = np.where(end[skip] > length, 1, 0)

    z = np.flatnonzero(is_zstd)
    p = pos[z]
    fhd = buf[p + 4].astype(np.int64)
    fcs_flag, single = fhd >> 6, (fhd >> 5) & 1
    reserved, checksum, dict_flag = (fhd >> 3) & 1, (fhd >> 2) & 1, fhd & 3
    dict_size = np.array([0, 1, 2, 4])[dict_flag]
    fcs_size = np.where(fcs_flag == 0, single, 1 << fcs_flag)
    fcs_pos = p + 5 + (1 - single) + dict_size
    fcs = _le(buf, fcs_pos, fcs_size, 8) + np.where(fcs_size == 2, 256, 0)
    size[z] = np.where(fcs_size == 0, -1, fcs)
    block_end, block_state = _walk_blocks(buf, length, fcs_pos + fcs_size)
    end[z] = block_end + 4 * checksum
    state[z] = np.where(reserved == 1, 2, block_state)
    state[z[(state[z] == 0) & (end[z] > length)]] = 1

    # Follow the chain of frames from offset 0: each frame must end where the next begins.
    link = np.searchsorted(pos, end)
    link_ok = (state == 0) & (end < length) & (link < nodes)
    link_ok[link_ok] &= pos[link[link_ok]] == end[link_ok]
    nxt = np.where(link_ok, link, nodes)
    if nodes > 1 and np.array_equal(nxt[:-1], np.arange(1, nodes)):
        chain = np.arange(nodes)
    else:
        chain = _chain_from(np.zeros(1, dtype=np.int64), np.append(nxt, nodes), nodes)
    last = int(chain[-1])
    last_pos, last_end = int(pos[last]), int(end[last])
    if state[last] == 2:
        raise _Damage(last_pos, "corrupt zstd frame: invalid frame or block header")
    if state[last] == 1:
        if final:
            raise _Damage(last_pos, "truncated zstd frame at the end of the segment")
        chain, consumed = chain[:-1], last_pos
    elif last_end == length:
        consumed = length
    elif not final and length - last_end < 4:
        consumed = last_end  # the next magic number is only partly read
    else:
        raise _Damage(last_end, "bytes after a zstd frame that do not start a zstd frame")
    return _Frames(pos[chain], end[chain], size[chain], consumed)


def _chain_from(roots: np.ndarray, nxt: np.ndarray, sink: int) -> np.ndarray:
    """All nodes reachable from ``roots`` by following ``nxt`` until ``sink``, sorted.

    Pointer doubling: after step k every chain is known up to distance 2**(k+1) - 1, so the
    cost is one gather over ``nxt`` per doubling of the longest chain. ``nxt`` must point
    strictly forward, and chains from different roots must not meet.
    """
    jump = nxt
    found = [roots[roots != sink]]
    frontier = found[0]
    while frontier.size:
        reached = np.concatenate(found)
        frontier = jump[reached]
        frontier = frontier[frontier != sink]
        if frontier.size:
            found.append(frontier)
            jump = jump[jump]
    return np.sort(np.concatenate(found))


# ----------------------------------------------------------------------------------------
# Record splitting
# ----------------------------------------------------------------------------------------


@dataclass
class _Split:
    """Records found in a decompressed buffer."""

    values: np.ndarray  # every varint's value
    starts: np.ndarray  # byte offset of every varint
    records: np.ndarray  # varint index of each record's first word
    consumed: int  # bytes holding complete records
    missing: int = 0  # at least this many more bytes are needed to finish the cut record


def _split_records(data: np.ndarray, unit_starts: np.ndarray, unit_ends: np.ndarray, final: bool) -> _Split:
    """Find the records in ``data``, which is cut into units that each begin with a record.

    Every unit holds whole records (a zstd frame does), except that when ``final`` is False
    there is a single unit whose last record may continue in the next buffer.

    Raises:
        _Damage: A varint or record is cut short, or a varint is too long.
    """
    length = int(unit_ends[-1]) if unit_ends.size else 0
    view = data[:length]
    if final:
        closing = unit_ends[unit_ends > unit_starts] - 1
        open_units = view[closing] >= 0x80
        if open_units.any():
            raise _Damage(int(closing[open_units.argmax()]), "record cut short (unfinished varint)")
    values, starts, ends = decode_varints(data, length)
    count = values.size
    v_start = np.searchsorted(ends, unit_starts)
    v_end = np.searchsorted(ends, unit_ends)
    nonempty = v_start < v_end
    roots, root_end = v_start[nonempty], v_end[nonempty]

    def following(at: np.ndarray) -> np.ndarray:
        """Varint index after the record that starts at each of ``at``."""
        n_pos = np.minimum(at + 2, max(count - 1, 0))
        n = np.minimum(values[n_pos], count).astype(np.int64) if count else np.zeros(at.shape, np.int64)
        return np.where(at + 2 < count, at + 3 + 2 * n, count + 1)

    # Walk all chains a record at a time, vectorised over units: one step for the data
    # logger's one-record frames, a few for small multi-record frames or huge records.
    found, cuts = [], []
    at, end = roots, root_end
    for _ in range(_WALK_STEPS):
        if not at.size:
            break
        after = following(at)
        found.append(at)
        cuts.append(after > end)
        going = after < end
        at, end = after[going], end[going]
    if not at.size:
        records = np.concatenate(found) if found else roots
        cut = np.concatenate(cuts) if cuts else np.zeros(0, dtype=bool)
        order = np.argsort(records, kind="stable")
        records, cut = records[order], cut[order]
    else:  # long chains (many records per frame): pointer doubling over every varint
        unit_end = np.repeat(v_end, v_end - v_start)  # per varint: end of its unit
        nxt = following(np.arange(count, dtype=np.int64))
        jump = np.append(np.where(nxt < unit_end, nxt, count), count)
        records = _chain_from(roots, jump, count)
        cut = nxt[records] > unit_end[records]
    consumed = length
    missing = 0
    if cut.any():
        first_cut = int(cut.argmax())
        if final:
            raise _Damage(int(starts[records[first_cut]]), "record cut short")
        consumed = int(starts[records[first_cut]])
        missing = int(following(records[first_cut : first_cut + 1])[0]) - count  # a varint is a byte or more
        records = records[:first_cut]
    elif not final:
        consumed = int(ends[-1]) + 1 if count else 0
    return _Split(values, starts, records, consumed, max(missing, 1) if consumed < length else 0)


# ----------------------------------------------------------------------------------------
# Segment decoding
# ----------------------------------------------------------------------------------------


class NumpySegmentDecoder:
    """Decodes the segments of one logger run into :class:`Records` chunks.

    Feed it the run's segment files in name order: the per-stream epoch tick carries from
    one file to the next.

    Args:
        stream_ids: Every stream id the run's ``streams/`` declares; any other id in a
            segment is an error.
        selected: The stream ids to return; None for all. Records of other streams are
            validated but not extracted.
        chunk_bytes: Decompressed bytes per step: bounds memory and the size of each chunk.
    """

    def __init__(
        self,
        stream_ids: Iterable[int],
        selected: Iterable[int] | None = None,
        chunk_bytes: int = DEFAULT_CHUNK_BYTES,
    ) -> None:
        # Sets of Python ints, not np.unique / np.isin: the fuzzer builds a decoder per case,
        # and those two cost more than decoding a small case. The uint64 conversions check the
        # ids as before.
        known = sorted(set(np.asarray(list(stream_ids), dtype=np.uint64).tolist()))
        self._known = np.array(known, dtype=np.uint64)
        chosen = None if selected is None else set(np.asarray(list(selected), dtype=np.uint64).tolist())
        self._selected = np.array([chosen is None or k in chosen for k in known], dtype=bool)
        self._chunk_bytes = max(int(chunk_bytes), 1 << 12)
        self._dctx = zstandard.ZstdDecompressor()
        self.ticks = TickState()

    def decode_file(self, path: str | Path) -> Iterator[Records]:
        """Decode one segment file.

        Args:
            path: The ``.seg.zst`` file.

        Yields:
            Records of the selected streams, in file order, in chunks.

        Raises:
            SegmentError: The file is damaged; names the file and the byte offset.
        """
        with open(path, "rb") as fh:
            yield from self.decode_stream(fh, path)

    def decode_bytes(self, data: bytes, name: str | Path = "<bytes>") -> Records:
        """Decode a whole segment held in memory into one set of columns.

        Args:
            data: The segment's bytes.
            name: Name used in error messages.

        Returns:
            The selected records.
        """
        # A buffer no larger than the data (plus one byte, so the end is seen in the first
        # read): the same reads and frames as a chunk-sized buffer, without zeroing a MiB.
        return Records.concat(self._decode(io.BytesIO(data), name, min(self._chunk_bytes, len(data) + 1)))

    def decode_stream(self, fh: _Readable, name: str | Path) -> Iterator[Records]:
        """Decode a segment from a binary file object.

        Args:
            fh: Open binary file positioned at the start of the segment.
            name: Name used in error messages.

        Yields:
            Records of the selected streams, in file order, in chunks.

        Raises:
            SegmentError: The data is damaged; names ``name`` and the byte offset.
        """
        return self._decode(fh, name, self._chunk_bytes)

    def _decode(self, fh: _Readable, name: str | Path, capacity: int) -> Iterator[Records]:
        """:meth:`decode_stream` with a first buffer of ``capacity`` bytes (it grows for larger frames)."""
        buf = np.zeros(capacity + _PAD, dtype=np.uint8)
        filled, base, eof = 0, 0, False
        while True:
            while not eof and filled < capacity:
                got = fh.readinto(buf.data[filled:capacity])
                eof = not got
                filled += got or 0
            buf[filled : filled + _PAD] = 0
            try:
                frames = _scan_frames(buf, filled, final=eof)
            except _Damage as damage:
                raise SegmentError(damage.message, name, base + damage.offset) from None
            yield from self._decode_frames(buf, frames, base, name)
            if eof and frames.consumed == filled:
                return
            rest = filled - frames.consumed
            if frames.consumed == 0:
                # A frame larger than the buffer: grow until it fits.
                capacity *= 2
                bigger = np.zeros(capacity + _PAD, dtype=np.uint8)
                bigger[:filled] = buf[:filled]
                buf = bigger
            else:
                buf[:rest] = buf[frames.consumed : filled]
            base += frames.consumed
            filled = rest

    def _decode_frames(self, buf: np.ndarray, frames: _Frames, base: int, name: str | Path) -> Iterator[Records]:
        """Decode complete frames, grouped so each group decompresses to at most a chunk."""
        sizes = frames.content_sizes
        big = (sizes < 0) | (sizes > self._chunk_bytes)
        start = 0
        count = sizes.size
        running = np.cumsum(np.where(big, 0, sizes))
        while start < count:
            if big[start]:
                yield from self._decode_large_frame(buf, frames, start, base, name)
                start += 1
                continue
            already = running[start] - sizes[start]
            stop = int(np.searchsorted(running, already + self._chunk_bytes, side="right"))
            next_big = start + int(np.argmax(big[start:])) if big[start:].any() else count
            stop = max(start + 1, min(stop, next_big))
            yield from self._decode_group(buf, frames, start, stop, base, name)
            start = stop

    def _decode_group(
        self, buf: np.ndarray, frames: _Frames, first: int, stop: int, base: int, name: str | Path
    ) -> Iterator[Records]:
        """Decompress frames ``first..stop-1`` (sizes known) in one call and decode them."""
        sizes = frames.content_sizes[first:stop]
        total = int(sizes.sum())
        lo, hi = int(frames.starts[first]), int(frames.ends[stop - 1])
        out = np.empty(total + _PAD, dtype=np.uint8)
        try:
            reader = self._dctx.stream_reader(buf.data[lo:hi], read_across_frames=True)
            got = 0
            while got < total:
                n = reader.readinto(out.data[got:total])
                if not n:
                    break
                got += n
            if got != total or reader.read(1):
                raise zstandard.ZstdError("decompressed size differs from the frame headers")
        except zstandard.ZstdError:
            self._raise_frame_error(buf, frames, first, stop, base, name)
        unit_ends = np.cumsum(sizes)
        unit_starts = unit_ends - sizes
        frame_offsets = frames.starts[first:stop] + base
        yield from self._records(out, unit_starts, unit_ends, True, frame_offsets, name)

    def _decode_large_frame(
        self, buf: np.ndarray, frames: _Frames, index: int, base: int, name: str | Path
    ) -> Iterator[Records]:
        """Stream-decode one frame that is larger than a chunk (or of unknown size)."""
        lo, hi = int(frames.starts[index]), int(frames.ends[index])
        offsets = np.array([base + lo])
        declared = int(frames.content_sizes[index])  # -1: the header does not say
        carry = np.zeros(0, dtype=np.uint8)
        produced, wanted = 0, self._chunk_bytes
        try:
            reader = self._dctx.stream_reader(buf.data[lo:hi], read_across_frames=False)
            while True:
                # A record longer than a chunk: read until it can be complete instead of
                # splitting the growing carry again for every chunk (quadratic).
                piece = reader.read(max(wanted, self._chunk_bytes))
                if not piece:
                    break
                produced += len(piece)
                data = np.empty(carry.size + len(piece) + _PAD, dtype=np.uint8)
                data[: carry.size] = carry
                data[carry.size : carry.size + len(piece)] = np.frombuffer(piece, dtype=np.uint8)
                size = carry.size + len(piece)
                bounds = (np.zeros(1, np.int64), np.array([size], np.int64))
                split = yield from self._records(data, *bounds, False, offsets, name)
                carry = data[split.consumed : size].copy()
                if declared >= 0 and split.missing > declared - produced:
                    raise SegmentError("record cut short: it needs more bytes than its frame holds", name, base + lo)
                wanted = max(split.missing, carry.size)
        except zstandard.ZstdError as exc:
            raise SegmentError(f"corrupt zstd frame: {exc}", name, base + lo) from None
        if carry.size:
            data = np.concatenate([carry, np.zeros(_PAD, np.uint8)])
            bounds = (np.zeros(1, np.int64), np.array([carry.size], np.int64))
            yield from self._records(data, *bounds, True, offsets, name)

    def _raise_frame_error(
        self, buf: np.ndarray, frames: _Frames, first: int, stop: int, base: int, name: str | Path
    ) -> None:
        """Find which frame of a failed group is corrupt (slow path, errors only)."""
        for i in range(first, stop):
            lo, hi = int(frames.starts[i]), int(frames.ends[i])
            if buf[lo + 1] == 0x2A:  # a skippable frame (magic 0x184D2A5?): nothing to decompress
                continue
            expected = int(frames.content_sizes[i])
            # A streaming decompressor decodes every block; the one-shot API trusts a header
            # that says "0 bytes" and would not look at the blocks at all.
            decoder = self._dctx.decompressobj()
            try:
                out = decoder.decompress(buf[lo:hi].tobytes())
            except zstandard.ZstdError as exc:
                raise SegmentError(f"corrupt zstd frame: {exc}", name, base + lo) from None
            if not decoder.eof:
                raise SegmentError("corrupt zstd frame: it ends before its last block", name, base + lo)
            if len(out) != expected:
                raise SegmentError(
                    f"corrupt zstd frame: {len(out)} bytes decompressed, header says {expected}", name, base + lo
                )
        raise SegmentError("corrupt zstd data", name, base + int(frames.starts[first]))

    def _records(
        self,
        data: np.ndarray,
        unit_starts: np.ndarray,
        unit_ends: np.ndarray,
        final: bool,
        frame_offsets: np.ndarray,
        name: str | Path,
    ) -> Generator[Records, None, _Split]:
        """Split, validate and extract the selected records of decompressed units.

        Yields:
            The selected records, if any.

        Returns:
            Where the records were found, for the caller to carry a cut record over.
        """
        try:
            split = _split_records(data, unit_starts, unit_ends, final)
            records = self._extract(split)
        except _Damage as damage:
            unit = max(int(np.searchsorted(unit_ends, damage.offset, side="right")), 0)
            unit = min(unit, unit_starts.size - 1)
            frame = int(frame_offsets[min(unit, frame_offsets.size - 1)])
            within = damage.offset - int(unit_starts[unit])
            if damage.stream_id is not None:
                raise UnknownStreamError(name, frame, damage.stream_id) from None
            message = f"{damage.message} at byte {within} of the frame's decompressed data"
            raise SegmentError(message, name, frame) from None
        if len(records):
            yield records
        return split

    def _extract(self, split: _Split) -> Records:
        """Columns of the selected records, with absolute ticks."""
        v, rec = split.values, split.records
        sid = v[rec]
        slot = np.searchsorted(self._known, sid)
        slot_clipped = np.minimum(slot, max(self._known.size - 1, 0))
        known = (slot < self._known.size) & (self._known[slot_clipped] == sid) if self._known.size else slot < 0
        if not known.all():
            bad = int(np.argmin(known))
            raise _Damage(int(split.starts[rec[bad]]), "unknown stream id", stream_id=int(sid[bad]))
        chosen = self._selected[slot_clipped]
        rec, sid = rec[chosen], sid[chosen].astype(np.uint32)
        n = v[rec + 2].astype(np.int64)
        offsets = np.zeros(rec.size + 1, dtype=np.int64)
        np.cumsum(n, out=offsets[1:])
        total = int(offsets[-1])
        idx_pos = np.repeat(rec + 3 - offsets[:-1], n) + np.arange(total)
        raw = v[idx_pos]
        steps = raw + _U64(1)
        nonempty = n > 0
        firsts = offsets[:-1][nonempty]
        steps[firsts] = raw[firsts]
        running = np.cumsum(steps, dtype=np.uint64)
        indices = (running - np.repeat(running[firsts] - steps[firsts], n[nonempty])).view(np.int64)
        quantised = zigzag_decode(v[idx_pos + np.repeat(n, n)])
        ticks = self.ticks.accumulate(sid, zigzag_decode(v[rec + 1]))
        return Records(sid, ticks, offsets, indices, quantised)
