"""Status codes and limits of the decode kernels: a leaf module, imported by the kernels and their loader.

The numba kernels (:mod:`herocollector.decode.kernel`) read these as compile-time constants, and
:mod:`herocollector.decode.native` and :mod:`herocollector.decode.codec` interpret the codes the
kernels return. Keeping them here breaks what would otherwise be an import cycle between the
kernels and their loader.
"""

from __future__ import annotations

OK = 0
"""Everything given was decoded (or walked)."""
NEED_MORE = 1
"""The last, still open unit ends inside a record; ``pos`` is the record's start."""
OUT_FULL = 2
"""The output arrays are full; ``pos`` is the next record's start, call again from there."""
CUT_SHORT = 3
"""A record (or its last varint) runs past the end of its frame; ``pos`` is the record's start."""
VARINT_TOO_LONG = 4
"""A varint of more than ten bytes; ``pos`` is its first byte."""
UNKNOWN_STREAM = 5
"""A complete record of a stream id without metadata; ``pos`` is the record, ``detail`` the id."""
TOO_MANY_VALUES = 6
"""A single record holds more elements than one Arrow list (int32 offsets) can."""
BAD_CAPACITY = 7
"""The caller's output arrays were too small for even one record (a bug, never damage)."""

FRAME_OK = 0
"""The walk reached the end of the data, or stopped before an incomplete frame."""
FRAME_BAD_MAGIC = 1
"""``pos`` is not the start of a zstd or skippable frame."""
FRAME_INVALID = 2
"""The frame at ``pos`` has a reserved header bit set or an invalid block header."""
FRAME_TRUNCATED = 3
"""The frame at ``pos`` runs past the end of the data, and no more data follows."""

KIND_ZSTD = 0
KIND_SKIPPABLE = 1

RAW = 0
"""``decode_records``' ``scaled``: raw ticks and quantised values (``Records``); ``False`` means this."""
SCALED = 1
"""``scaled``: ``float64(tick) * epoch_scale`` and ``float64(q) * value_scale`` (``Columns``); ``True`` means this."""
SCALED_VALUES = 2
"""``scaled``: scaled values, but raw ticks in the epoch column, for a decode in parts whose ticks are
fixed up afterwards (:mod:`herocollector.decode.parallel`)."""

MAX_BLOCK_SIZE = 128 * 1024
"""The largest zstd block (``ZSTD_BLOCKSIZE_MAX``)."""
MAX_VARINT_BYTES = 10
MIN_FRAME_BYTES = 8
"""Bytes of the smallest frame: a skippable frame's header (zstd frames take at least 9)."""

ENTRY_ARGS = {
    # The C entry points' arguments ("p" a pointer, "i" an int64), as ObjectKernels passes
    # them: each array as its address and length, flags as 0/1, a result array last.
    "scan_frames": "pi" + "iii" + "pi" * 4 + "p",
    "decode_records": "pii" + "pi" + "ii" + "pi" * 7 + "ii" + "pi" * 6 + "p",
    "varint_damage": "pi" + "iii" + "p",
}
