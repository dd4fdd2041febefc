"""The exception hierarchy: every failure names the file and, for segment damage, the offset."""

from __future__ import annotations

from pathlib import Path


class CollectorError(Exception):
    """Base class of every error herocollector raises about its input.

    Args:
        message: What went wrong.
        path: The file or directory concerned, if any.
    """

    def __init__(self, message: str, path: str | Path | None = None) -> None:
        self.path = None if path is None else str(path)
        super().__init__(f"{self.path}: {message}" if self.path else message)
        self.reason = message


class MetadataError(CollectorError):
    """A stream catalogue (``streams/*.json``) or a logger directory is missing or invalid."""


class SegmentError(CollectorError):
    """A ``.seg.zst`` segment is damaged: corrupt or truncated zstd data, or a record cut short.

    Args:
        message: What went wrong.
        path: The segment file.
        offset: Byte offset in the segment file of the damaged zstd frame (or of the
            first byte that is not a frame).
    """

    def __init__(self, message: str, path: str | Path, offset: int) -> None:
        self.offset = int(offset)
        super().__init__(f"{message} (at byte offset {self.offset})", path)


class UnknownStreamError(SegmentError):
    """A segment holds a record of a stream id that has no ``streams/*.json`` entry."""

    def __init__(self, path: str | Path, offset: int, stream_id: int) -> None:
        self.stream_id = int(stream_id)
        super().__init__(f"stream id {stream_id} has no metadata in streams/", path, offset)
