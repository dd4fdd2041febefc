"""Following a run while it is written: the cursor, and the decode of what was completed since it.

The data logger (``data_logger.DataLogger``) compresses each logical frame into a zstd frame of
its own and appends it to the current segment (stdio-buffered; rotation closes and fsyncs it
before the next segment is created). A segment that is still written is a sequence of whole
frames, possibly followed by one torn frame; every segment before the newest is closed.

A :class:`Cursor` says where a followed run was read up to: the segment and byte offset right
after the last whole frame decoded, each stream's last raw epoch tick (what the record kernel
carries from frame to frame and from segment to segment), and how many chunks were committed.

May import: the other decoder modules and :mod:`herocollector.errors`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from herocollector.errors import CollectorError

__all__ = ["START", "Cursor"]

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
        fingerprint: A digest of the bytes of ``segment`` right before ``offset`` (empty at
            offset 0): a segment replaced under the cursor is told by it.
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
