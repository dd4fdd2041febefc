"""Compiled kernels of the segment decoder: the zstd frame walk and the record decoder.

This module is their numba source. Decoding code calls them through
:mod:`herocollector.decode.native`, which loads their machine code from its own object-code cache
without importing numba (the ``object`` backend), or uses the numba dispatchers defined here
(the ``numba`` backend).

The kernels are compiled in nopython mode with ``nogil=True``: they never touch a Python
object, so they run while other threads (the zstd reader, other runs' decoders) hold or use
the GIL. They never raise either; they return a status code and a position, and
:mod:`herocollector.decode.codec` turns that into the precise ``SegmentError``.

Every array access is checked against the array's length or a caller-given end that the
caller keeps within the array, so damaged input can stop a kernel but never make it read or
write out of bounds. (Run the fuzzer with ``NUMBA_BOUNDSCHECK=1`` to have numba check that
too: the numba backend is then used, compiled afresh with bounds checks instead of loaded
from a cache.)

For the numba backend, numba's cache goes, in this order, to ``$NUMBA_CACHE_DIR`` when set,
to ``__pycache__`` next to this file when writable, else to
``$XDG_CACHE_HOME/herocollector/numba`` (``~/.cache/herocollector/numba``), else to a
temporary directory; if nothing is writable the kernels are compiled in every process.
"""

from __future__ import annotations

import logging
import os
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numba
import numpy as np
from llvmlite import ir  # type: ignore[import-untyped]  # llvmlite ships no type information
from numba.core import caching, cgutils, config, types
from numba.extending import intrinsic

from herocollector.decode.status import (  # noqa: F401 - the kernels read these as compile-time constants; re-exported
    BAD_CAPACITY,
    CUT_SHORT,
    ENTRY_ARGS,
    FRAME_BAD_MAGIC,
    FRAME_INVALID,
    FRAME_OK,
    FRAME_TRUNCATED,
    KIND_SKIPPABLE,
    KIND_ZSTD,
    MAX_BLOCK_SIZE,
    MAX_VARINT_BYTES,
    MIN_FRAME_BYTES,
    NEED_MORE,
    OK,
    OUT_FULL,
    RAW,
    SCALED,
    SCALED_VALUES,
    TOO_MANY_VALUES,
    UNKNOWN_STREAM,
    VARINT_TOO_LONG,
)

log = logging.getLogger(__name__)

LITTLE_ENDIAN = sys.byteorder == "little"


# ----------------------------------------------------------------------------------------
# Where compiled kernels are cached
# ----------------------------------------------------------------------------------------


def user_cache_root() -> Path:
    """The per-user cache directory of the compiled kernels.

    Returns:
        ``$XDG_CACHE_HOME/herocollector/numba``, or ``~/.cache/herocollector/numba``.
    """
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "herocollector" / "numba"


def _numba_class(*names: str) -> Any:
    """A class of ``numba.core.caching`` under its current or its older (private) name."""
    for name in names:
        found = getattr(caching, name, None)
        if found is not None:
            return found
    raise AttributeError(f"numba.core.caching has none of {names}")


_SourceLocator = _numba_class("_SourceFileBackedLocatorMixin")
_LocatorBase = _numba_class("_CacheLocator")


class _UserCacheLocator(_SourceLocator, _LocatorBase):  # type: ignore[misc, valid-type]
    """Caches in :func:`user_cache_root` (for installs whose ``__pycache__`` is read-only)."""

    root: Callable[[], Path] = staticmethod(user_cache_root)

    def __init__(self, py_func: Callable[..., Any], py_file: str) -> None:
        self._py_file = py_file
        self._lineno = py_func.__code__.co_firstlineno
        self._cache_path = os.path.join(str(self.root()), self.get_suitable_cache_subpath(py_file))

    def get_cache_path(self) -> str:
        """The directory holding this function's cache files."""
        return self._cache_path


class _TempCacheLocator(_UserCacheLocator):
    """Last resort: a per-user directory under the system's temporary directory."""

    root = staticmethod(
        lambda: Path(tempfile.gettempdir()) / f"herocollector-numba-{os.getuid() if hasattr(os, 'getuid') else 'user'}"
    )


class _KernelCacheImpl(caching.CompileResultCacheImpl):
    """numba's cache implementation with herocollector's order of cache directories."""

    _locator_classes = [  # noqa: RUF012 - numba's own attribute, a list
        _numba_class("UserProvidedCacheLocator", "_UserProvidedCacheLocator"),  # $NUMBA_CACHE_DIR
        _numba_class("InTreeCacheLocator", "_InTreeCacheLocator"),  # __pycache__ next to this file
        _UserCacheLocator,
        _TempCacheLocator,
    ]


class _KernelCache(caching.FunctionCache):
    """numba's function cache, storing where :class:`_KernelCacheImpl` says."""

    _impl_class = _KernelCacheImpl


def _kernel(fn: Callable[..., Any]) -> Any:
    """Compile ``fn`` lazily with ``nogil=True`` and cache the machine code on disk.

    With ``NUMBA_BOUNDSCHECK`` set, nothing is loaded from or written to the cache: the cache
    key does not include that flag, and a checked build must not be replaced by an unchecked
    one (or the other way round).
    """
    dispatcher = numba.njit(nogil=True, cache=False)(fn)
    if config.BOUNDSCHECK is None and not config.DISABLE_JIT:  # type: ignore[attr-defined]
        try:
            dispatcher._cache = _KernelCache(dispatcher.py_func)  # type: ignore[attr-defined, no-untyped-call]
        except RuntimeError as exc:  # no writable directory at all
            log.warning(f"compiled kernels cannot be cached ({exc}); compiling in every process")
    return dispatcher


# ----------------------------------------------------------------------------------------
# zstd frame walk
# ----------------------------------------------------------------------------------------


@_kernel
def scan_frames(buf, start, length, final, out_start, out_end, out_size, out_kind):  # type: ignore[no-untyped-def]
    """Walk the zstd and skippable frames in ``buf[start:length]`` by their headers.

    Only headers are read: the frame header descriptor, the content size, and every block
    header (to find where the frame ends). zstd itself checks the rest when it decompresses.

    Args:
        buf: The compressed bytes (``uint8``, at least ``length`` long).
        start: Where the first frame begins.
        length: End of the valid bytes.
        final: No more bytes follow ``length`` (the end of the segment).
        out_start: Receives each complete frame's start (``int64``).
        out_end: Receives each complete frame's end.
        out_size: Receives each frame's content size from its header; -1 when the header
            does not give it, 0 for skippable frames.
        out_kind: Receives ``KIND_ZSTD`` or ``KIND_SKIPPABLE``.

    Returns:
        ``(count, pos, status)``: the number of complete frames found, the position after
        them (where the walk stopped), and ``FRAME_OK`` or the damage found at ``pos``.
    """
    n = min(length, buf.shape[0])
    cap = min(out_start.shape[0], out_end.shape[0], out_size.shape[0], out_kind.shape[0])
    p = start
    count = 0
    while p < n and count < cap:
        if n - p < 4:
            return count, p, FRAME_BAD_MAGIC if final else FRAME_OK
        b0, b1, b2, b3 = buf[p], buf[p + 1], buf[p + 2], buf[p + 3]
        truncated = False
        if b0 == 0x28 and b1 == 0xB5 and b2 == 0x2F and b3 == 0xFD:
            if p + 5 > n:
                truncated = True
            else:
                fhd = np.int64(buf[p + 4])
                if fhd & 0x08:  # reserved bit
                    return count, p, FRAME_INVALID
                single = (fhd >> 5) & 1
                fcs_flag = fhd >> 6
                dict_flag = fhd & 3
                checksum = (fhd >> 2) & 1
                dict_size = 4 if dict_flag == 3 else dict_flag
                fcs_size = single if fcs_flag == 0 else np.int64(1) << fcs_flag
                fcs_pos = p + 5 + (1 - single) + dict_size
                if fcs_pos + fcs_size > n:
                    truncated = True
                else:
                    size = np.int64(-1)
                    if fcs_size > 0:
                        size = np.int64(0)
                        for k in range(fcs_size):
                            # An 8-byte size > 2**63 turns negative: "unknown".
                            size |= np.int64(buf[fcs_pos + k]) << (8 * k)
                        if fcs_size == 2:
                            size += 256
                    q = fcs_pos + fcs_size
                    while True:
                        if q + 3 > n:
                            truncated = True
                            break
                        header = np.int64(buf[q]) | (np.int64(buf[q + 1]) << 8) | (np.int64(buf[q + 2]) << 16)
                        block_type = (header >> 1) & 3
                        block_size = header >> 3
                        if block_type == 3 or block_size > MAX_BLOCK_SIZE:
                            return count, p, FRAME_INVALID
                        q += 3 + (1 if block_type == 1 else block_size)
                        if header & 1:
                            break
                    end = q + 4 * checksum
                    if not truncated and end > n:
                        truncated = True
                    if not truncated:
                        out_start[count] = p
                        out_end[count] = end
                        out_size[count] = size
                        out_kind[count] = KIND_ZSTD
        elif (b0 & 0xF0) == 0x50 and b1 == 0x2A and b2 == 0x4D and b3 == 0x18:
            if p + 8 > n:
                truncated = True
            else:
                skip = (
                    np.int64(buf[p + 4])
                    | (np.int64(buf[p + 5]) << 8)
                    | (np.int64(buf[p + 6]) << 16)
                    | (np.int64(buf[p + 7]) << 24)
                )
                end = p + 8 + skip
                if end > n:
                    truncated = True
                else:
                    out_start[count] = p
                    out_end[count] = end
                    out_size[count] = 0
                    out_kind[count] = KIND_SKIPPABLE
        else:
            return count, p, FRAME_BAD_MAGIC
        if truncated:
            return count, p, FRAME_TRUNCATED if final else FRAME_OK
        p = end
        count += 1
    return count, p, FRAME_OK


# ----------------------------------------------------------------------------------------
# Records
# ----------------------------------------------------------------------------------------


@intrinsic
def _load_u64(typingctx, array, index):  # type: ignore[no-untyped-def]
    """``array[index:index + 8]`` as one unaligned little-endian ``uint64`` load.

    The caller guarantees ``0 <= index`` and ``index + 8 <= len(array)``.

    Kernels call an intrinsic without ``typingctx`` (``_load_u64(array, index)``), but
    numba's type stubs give the call the signature of this definition, ``typingctx``
    included: those calls carry a ``type: ignore[call-arg]``.
    """
    if not (isinstance(array, types.Array) and array.dtype == types.uint8 and array.ndim == 1):
        return None
    if not isinstance(index, types.Integer):
        return None

    def codegen(context, builder, signature, args):  # type: ignore[no-untyped-def]
        array_type, index_type = signature.args
        view = context.make_array(array_type)(context, builder, args[0])
        # With NUMBA_BOUNDSCHECK=1 numba checks the first and the last byte of the word
        # (raising IndexError); otherwise these are plain address computations.
        last = builder.add(args[1], context.get_constant(index_type, 7))
        check = context.enable_boundscheck
        cgutils.get_item_pointer(context, builder, array_type, view, [last], boundscheck=check)  # type: ignore[no-untyped-call]
        address = cgutils.get_item_pointer(  # type: ignore[no-untyped-call]
            context, builder, array_type, view, [args[1]], boundscheck=check
        )
        word = builder.load(builder.bitcast(address, ir.IntType(64).as_pointer()), align=1)
        if not LITTLE_ENDIAN:
            word = builder.bswap(word)
        return word

    return types.uint64(array, index), codegen


@intrinsic
def _trailing_zeros(typingctx, value):  # type: ignore[no-untyped-def]
    """Count of trailing zero bits of a non-zero ``uint64`` (one instruction)."""
    if value != types.uint64:
        return None

    def codegen(context, builder, signature, args):  # type: ignore[no-untyped-def]
        return builder.cttz(args[0], ir.Constant(ir.IntType(1), 1))

    return types.uint64(value), codegen


_STOP_BITS = np.uint64(0x8080808080808080)
_LOW_7 = np.uint64(0x7F7F7F7F7F7F7F7F)


@numba.njit
def _varint(data, pos, end):  # type: ignore[no-untyped-def]
    """One LEB128 varint at ``data[pos]``, never reading at or past ``end``.

    A one-byte varint takes one comparison. Longer ones of up to eight bytes are read as one
    64-bit word: the first byte without the continuation bit ends the varint, and the 7-bit
    groups are packed together in three mask-and-shift steps (no branch per byte, so random
    varint lengths cost no branch mispredictions). Nine- and ten-byte varints, and any
    varint near the end of the array, go byte by byte.

    Returns:
        ``(value, next, error)``: error 0 = ok (``next`` is after the varint), 1 = it runs
        into ``end``, 2 = longer than ten bytes (``next`` is ``pos`` for both errors). Bits
        past 64 (in the tenth byte) are dropped, as the C++ decoder drops them.
    """
    if pos >= end:
        return np.uint64(0), pos, 1
    b = data[pos]
    if b < 0x80:
        return np.uint64(b), pos + 1, 0
    if pos + 8 <= data.shape[0]:
        word: np.uint64 = _load_u64(data, pos)  # type: ignore[call-arg]  # see _load_u64
        stops = ~word & _STOP_BITS
        if stops != 0:
            length = np.int64((_trailing_zeros(stops) + np.uint64(1)) >> np.uint64(3))
            if pos + length > end:
                return np.uint64(0), pos, 1
            word &= (stops ^ (stops - np.uint64(1))) & _LOW_7
            word = ((word & np.uint64(0x7F007F007F007F00)) >> np.uint64(1)) | (word & np.uint64(0x007F007F007F007F))
            word = ((word & np.uint64(0x3FFF00003FFF0000)) >> np.uint64(2)) | (word & np.uint64(0x00003FFF00003FFF))
            word = ((word & np.uint64(0x0FFFFFFF00000000)) >> np.uint64(4)) | (word & np.uint64(0x000000000FFFFFFF))
            return word, pos + length, 0
    value = np.uint64(b & 0x7F)
    shift = np.uint64(7)
    i = pos + 1
    while True:
        if i - pos >= MAX_VARINT_BYTES:
            return np.uint64(0), pos, 2
        if i >= end:
            return np.uint64(0), pos, 1
        b = data[i]
        value |= np.uint64(b & 0x7F) << shift
        i += 1
        if b < 0x80:
            return value, i, 0
        shift += np.uint64(7)


_GATHER = np.uint64(0x0102040810204080)
_ALL = np.uint64(0xFFFFFFFFFFFFFFFF)
WINDOW = 64
"""Bytes whose varint ends are found at once by :func:`_terminators`."""


@numba.njit
def _terminators(data, pos):  # type: ignore[no-untyped-def]
    """Bit ``i`` set when ``data[pos + i]`` ends a varint (is below 0x80), for ``i < 64``.

    Eight 64-bit loads; in each, the inverted top bits are gathered into one byte by a
    multiplication. The caller guarantees ``pos + 64 <= len(data)``.
    """
    mask = np.uint64(0)
    for i in range(8):
        stops = ~_load_u64(data, pos + 8 * i) & _STOP_BITS  # type: ignore[call-arg]  # see _load_u64
        mask |= ((stops >> np.uint64(7)) * _GATHER >> np.uint64(56)) << np.uint64(8 * i)
    return mask


@numba.njit
def _pack(word, length):  # type: ignore[no-untyped-def]
    """The value of a varint of ``length`` (1..8) bytes read as the word ``word``."""
    word &= (_ALL >> np.uint64(64 - 8 * length)) & _LOW_7
    word = ((word & np.uint64(0x7F007F007F007F00)) >> np.uint64(1)) | (word & np.uint64(0x007F007F007F007F))
    word = ((word & np.uint64(0x3FFF00003FFF0000)) >> np.uint64(2)) | (word & np.uint64(0x00003FFF00003FFF))
    return ((word & np.uint64(0x0FFFFFFF00000000)) >> np.uint64(4)) | (word & np.uint64(0x000000000FFFFFFF))


@numba.njit
def _unzigzag(u):  # type: ignore[no-untyped-def]
    """Zigzag-decode a ``uint64`` into an ``int64`` (``(u >> 1) ^ -(u & 1)``, two's complement)."""
    return np.int64((u >> np.uint64(1)) ^ (np.uint64(0) - (u & np.uint64(1))))


@numba.njit
def _slot_of(sid, table, big_ids, big_slots):  # type: ignore[no-untyped-def]
    """Slot of stream id ``sid`` (``uint64``): a dense table for small ids, else binary search."""
    if sid < np.uint64(table.shape[0]):
        return np.int64(table[np.int64(sid)])
    lo = 0
    hi = big_ids.shape[0]
    while lo < hi:
        mid = (lo + hi) >> 1
        if big_ids[mid] < sid:
            lo = mid + 1
        else:
            hi = mid
    if lo < big_ids.shape[0] and big_ids[lo] == sid:
        return np.int64(big_slots[lo])
    return np.int64(-1)


@numba.njit
def _need(rec, end, header_end, n):  # type: ignore[no-untyped-def]
    """A lower bound of a record's length in bytes, once its header (``n`` elements) is read."""
    if n > np.uint64(1 << 60):
        return np.int64(1) << 61
    return max(end - rec + 1, header_end - rec + 2 * np.int64(n))


@_kernel
def decode_records(  # type: ignore[no-untyped-def]
    data,
    pos,
    unit_ends,
    unit,
    open_last,
    table,
    big_ids,
    big_slots,
    selected,
    epoch_scales,
    value_scales,
    last_ticks,
    scaled,
    max_values,
    out_sid,
    out_slot,
    out_epoch,
    out_tick,
    out_offsets,
    out_idx,
    out_val,
    out_q,
):
    """Decode the records of ``data[pos:unit_ends[-1]]`` in one pass, into the output arrays.

    The data is cut into units (the decompressed content of one zstd frame each): unit ``u``
    ends at ``unit_ends[u]`` and the next one starts there. A record never crosses the end of
    its unit, except that the last unit may be still open (``open_last``): its content
    continues in the next call, so a record running into its end is left for then.

    Each record is ``stream_id, zigzag(epoch_delta), n, first_index, gap_1..gap_{n-1},
    zigzag(q_0..q_{n-1})``. Every record's stream must be known; the epoch tick of its stream
    (``last_ticks[slot]``) advances by the delta; only selected streams are written out.

    Args:
        data: Decompressed bytes (``uint8``).
        pos: Where decoding starts (a record start inside unit ``unit``).
        unit_ends: End offset of every unit (``int64``, increasing, within ``data``).
        unit: The unit ``pos`` lies in.
        open_last: The last unit continues after its end.
        table: Slot of each small stream id, -1 if unknown (``int32``, indexed by id).
        big_ids: Sorted stream ids too large for ``table`` (``uint64``).
        big_slots: Slot of each of ``big_ids`` (``int32``).
        selected: Per slot, 1 to write that stream's records out (``uint8``).
        epoch_scales: Per slot, seconds per epoch tick (``float64``).
        value_scales: Per slot, value per quantum (``float64``).
        last_ticks: Per slot, the stream's last epoch tick (``int64``, updated in place).
        scaled: ``SCALED`` (or True): write float epochs and values (``out_epoch``,
            ``out_val``); ``RAW`` (or False): the raw ticks and quantised values (``out_tick``,
            ``out_q``); ``SCALED_VALUES``: float values, raw ticks.
        max_values: Most elements written by one call (list offsets must fit in ``int32``).
        out_sid: Stream id of each record written (``uint32``).
        out_slot: Slot of each record written (``int32``).
        out_epoch: ``float64(tick) * epoch_scale`` of each record (``float64``).
        out_tick: The absolute tick of each record (``int64``).
        out_offsets: ``records + 1`` list offsets (``int32``).
        out_idx: Flat indices (``int64``).
        out_val: Flat ``float64(q) * value_scale`` (``float64``).
        out_q: Flat quantised values (``int64``).

    Returns:
        ``(status, pos, unit, records, values, detail)``: a status code; where decoding
        stopped (see the codes); the unit it stopped in; how many records and elements were
        written; for ``NEED_MORE`` a lower bound of the stopped record's length in bytes, for
        ``UNKNOWN_STREAM`` the stream id.
    """
    n_units = unit_ends.shape[0]
    cap_rec = min(out_sid.shape[0], out_slot.shape[0], out_offsets.shape[0] - 1)
    scale_epochs = scaled == SCALED  # SCALED_VALUES scales the values only
    cap_rec = min(cap_rec, out_epoch.shape[0] if scale_epochs else out_tick.shape[0])
    if scaled:
        cap_val = min(out_idx.shape[0], out_val.shape[0])
    else:
        cap_val = min(out_idx.shape[0], out_q.shape[0])
    n_slots = min(selected.shape[0], epoch_scales.shape[0], value_scales.shape[0], last_ticks.shape[0])
    zero = np.uint64(0)
    nrec = 0
    nval = np.int64(0)
    if cap_rec < 0:
        return BAD_CAPACITY, pos, unit, 0, 0, zero
    out_offsets[0] = 0
    while unit < n_units:
        end = min(unit_ends[unit], data.shape[0])
        is_open = open_last and unit == n_units - 1
        while pos < end:
            rec = pos
            sid, pos, err = _varint(data, pos, end)
            if err == 0:
                delta, pos, err = _varint(data, pos, end)
            if err == 0:
                n, pos, err = _varint(data, pos, end)
            if err != 0:
                if err == 2:
                    return VARINT_TOO_LONG, pos, unit, nrec, nval, zero
                if is_open:
                    return NEED_MORE, rec, unit, nrec, nval, np.uint64(end - rec + 1)
                return CUT_SHORT, rec, unit, nrec, nval, zero
            header_end = pos
            # Each element takes at least two bytes (an index varint and a value varint).
            if n > np.uint64((end - pos) >> 1):
                if is_open:
                    return NEED_MORE, rec, unit, nrec, nval, np.uint64(_need(rec, end, header_end, n))
                return CUT_SHORT, rec, unit, nrec, nval, zero
            count = np.int64(n)
            slot = _slot_of(sid, table, big_ids, big_slots)
            if slot >= n_slots:
                slot = np.int64(-1)
            take = slot >= 0 and selected[slot] != 0
            if take and (nrec >= cap_rec or nval + count > cap_val or nval + count > max_values):
                if nrec > 0:
                    return OUT_FULL, rec, unit, nrec, nval, zero
                if count > max_values:
                    return TOO_MANY_VALUES, rec, unit, nrec, nval, zero
                return BAD_CAPACITY, rec, unit, nrec, nval, zero
            # The body: ``count`` index varints, then ``count`` value varints. Where 64 bytes
            # (and one more load) fit in the array, the varint ends of a 64-byte window are
            # found at once and the varints decoded from them: the next varint's start then
            # no longer waits for the previous varint's value, only for one bit operation,
            # so consecutive varints decode in parallel in the CPU. Anything unusual (a
            # varint longer than eight bytes, one that crosses ``end``, the last bytes of
            # the array) takes the one-varint path, which also finds every error.
            k = 0
            total = 2 * count
            index = np.uint64(0)
            scale = value_scales[slot] if take else 1.0
            while k < total:
                start = 0
                if pos + WINDOW + 8 <= data.shape[0] and pos < end:
                    mask = _terminators(data, pos)
                    if end - pos < WINDOW:
                        mask &= (np.uint64(1) << np.uint64(end - pos)) - np.uint64(1)
                    while mask != 0 and k < total:
                        stop = np.int64(_trailing_zeros(mask))  # type: ignore[call-arg]  # see _load_u64
                        length = stop + 1 - start
                        if length > 8:
                            break
                        if take:
                            value = _pack(_load_u64(data, pos + start), length)
                            if k < count:
                                index = value if k == 0 else index + value + np.uint64(1)  # wraps like the C++ uint64
                                out_idx[nval + k] = np.int64(index)
                            elif scaled:
                                out_val[nval + k - count] = np.float64(_unzigzag(value)) * scale
                            else:
                                out_q[nval + k - count] = _unzigzag(value)
                        k += 1
                        start = stop + 1
                        mask &= mask - np.uint64(1)
                    pos += start
                if start == 0 and k < total:
                    value, pos, err = _varint(data, pos, end)
                    if err != 0:
                        break
                    if take:
                        if k < count:
                            index = value if k == 0 else index + value + np.uint64(1)
                            out_idx[nval + k] = np.int64(index)
                        elif scaled:
                            out_val[nval + k - count] = np.float64(_unzigzag(value)) * scale
                        else:
                            out_q[nval + k - count] = _unzigzag(value)
                    k += 1
            if err != 0:
                if err == 2:
                    return VARINT_TOO_LONG, pos, unit, nrec, nval, zero
                if is_open:
                    return NEED_MORE, rec, unit, nrec, nval, np.uint64(_need(rec, end, header_end, n))
                return CUT_SHORT, rec, unit, nrec, nval, zero
            if slot < 0:
                return UNKNOWN_STREAM, rec, unit, nrec, nval, sid
            tick = last_ticks[slot] + _unzigzag(delta)  # wraps, as the C++ decoder's int64 does
            last_ticks[slot] = tick
            if take:
                out_sid[nrec] = np.uint32(sid)
                out_slot[nrec] = np.int32(slot)
                if scale_epochs:
                    out_epoch[nrec] = np.float64(tick) * epoch_scales[slot]
                else:
                    out_tick[nrec] = tick
                nval += count
                nrec += 1
                out_offsets[nrec] = np.int32(nval)
        unit += 1
    return OK, pos, unit, nrec, nval, zero


@_kernel
def varint_damage(data, start, end, run):  # type: ignore[no-untyped-def]
    """Check that ``data[start:end]`` splits into varints of at most ten bytes (diagnosis only).

    This is the zstd-frame-wide varint check of the reference decoder, which comes before
    any record check: the precise error for a frame with an unknown stream id depends on it.

    Args:
        data: Bytes (``uint8``).
        start: First byte.
        end: End of the bytes (clamped to the array).
        run: Continuation bytes (``>= 0x80``) just before ``start`` (0 at a varint start).

    Returns:
        ``(run, bad)``: the continuation bytes at the end (non-zero: a varint is unfinished)
        and whether a varint longer than ten bytes was found.
    """
    stop = min(end, data.shape[0])
    for i in range(start, stop):
        if data[i] >= 0x80:
            run += 1
            if run >= MAX_VARINT_BYTES:
                return run, True
        else:
            run = 0
    return run, False


# ----------------------------------------------------------------------------------------
# C entry points, for herocollector.decode.native's object-code cache
# ----------------------------------------------------------------------------------------


def entry_points() -> dict[str, Any]:
    """The kernels as numba ``cfunc``s with C signatures (compiled here, a few seconds).

    Each takes every array as its address and length (``ENTRY_ARGS``) and writes its result
    tuple into a last, ``int64`` array. They are built without bounds checks: the kernels
    check every access themselves.

    Returns:
        The compiled cfuncs by kernel name.
    """
    from numba import carray, cfunc  # type: ignore[attr-defined]  # numba does not list carray in __all__

    def signature(name: str) -> Any:
        return types.void(*[types.voidptr if c == "p" else types.int64 for c in ENTRY_ARGS[name]])

    scan, decode, damage = scan_frames, decode_records, varint_damage
    u8, i32, u32, i64, u64, f64 = np.uint8, np.int32, np.uint32, np.int64, np.uint64, np.float64

    @cfunc(signature("scan_frames"), boundscheck=False)  # type: ignore[call-arg]
    def scan_frames_c(buf, nbuf, start, length, final, s, ns, e, ne, z, nz, k, nk, result):  # type: ignore[no-untyped-def]
        out = carray(result, 3, i64)
        count, stop, status = scan(
            carray(buf, nbuf, u8), start, length, final != 0,
            carray(s, ns, i64), carray(e, ne, i64), carray(z, nz, i64), carray(k, nk, u8),
        )  # fmt: skip
        out[0] = count
        out[1] = stop
        out[2] = status

    @cfunc(signature("decode_records"), boundscheck=False)  # type: ignore[call-arg]
    def decode_records_c(  # type: ignore[no-untyped-def]
        data, ndata, pos, ends, nends, unit, open_last, table, ntable, big_ids, nbig, big_slots, nslots, selected,
        nselected, epoch_scales, nepoch, value_scales, nvalue, ticks, nticks, scaled, max_values, sid, nsid, slot,
        nslot, epoch, nepoch_out, offsets, noffsets, idx, nidx, val, nval, result,
    ):  # fmt: skip
        out = carray(result, 6, i64)
        status, stop, stop_unit, records, values, detail = decode(
            carray(data, ndata, u8), pos, carray(ends, nends, i64), unit, open_last != 0,
            carray(table, ntable, i32), carray(big_ids, nbig, u64), carray(big_slots, nslots, i32),
            carray(selected, nselected, u8), carray(epoch_scales, nepoch, f64), carray(value_scales, nvalue, f64),
            carray(ticks, nticks, i64), scaled, max_values, carray(sid, nsid, u32), carray(slot, nslot, i32),
            carray(epoch, nepoch_out, f64), carray(epoch, nepoch_out, i64), carray(offsets, noffsets, i32),
            carray(idx, nidx, i64), carray(val, nval, f64), carray(val, nval, i64),
        )  # fmt: skip
        out[0] = status
        out[1] = stop
        out[2] = stop_unit
        out[3] = records
        out[4] = values
        out[5] = np.int64(detail)

    @cfunc(signature("varint_damage"), boundscheck=False)  # type: ignore[call-arg]
    def varint_damage_c(data, ndata, start, end, run, result):  # type: ignore[no-untyped-def]
        out = carray(result, 2, i64)
        left, bad = damage(carray(data, ndata, u8), start, end, run)
        out[0] = left
        out[1] = 1 if bad else 0

    return {"scan_frames": scan_frames_c, "decode_records": decode_records_c, "varint_damage": varint_damage_c}
