"""What comes into the service (announcements) and what it reports (collected, failed and followed runs).

Both sides are plain data, free of HEROS: the service reads an event payload with
:func:`parse_event`, and the actor turns :class:`RunCollected` and :class:`RunFailed` into its
``run_collected`` and ``run_failed`` HEROS events.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any


def parse_event(data: Any, path_key: str) -> tuple[str, dict[str, Any]]:
    """Find the logger path and the metadata in a "finished" event.

    Args:
        data: A dict with the path under ``path_key``; a ``(payload, metadata)`` pair whose
            metadata (or dict payload) has it, or whose payload is the path; or a bare path
            (``str`` or ``os.PathLike``).
        path_key: The key holding the logger directory.

    Returns:
        ``(path, metadata)``.

    Raises:
        ValueError: No path can be found.
    """
    if isinstance(data, (str, os.PathLike)):
        path, metadata = os.fspath(data), {}
    elif isinstance(data, Mapping):
        path, metadata = data.get(path_key), dict(data)
    elif isinstance(data, (list, tuple)) and len(data) == 2:
        payload, meta = data
        metadata = dict(meta) if isinstance(meta, Mapping) else {}
        path = metadata.get(path_key)
        if path is None and isinstance(payload, Mapping):
            metadata = {**payload, **metadata}
            path = payload.get(path_key)
        elif path is None and isinstance(payload, (str, os.PathLike)):
            path = os.fspath(payload)
    else:
        raise ValueError(f"event is neither a dict, a (payload, metadata) pair nor a path: {type(data).__name__}")
    if not isinstance(path, str) or not path:
        raise ValueError(f"event has no logger path under {path_key!r}")
    return os.path.normpath(path), metadata


@dataclass(frozen=True)
class RunCollected:
    """A run was collected (the payload of the actor's ``run_collected`` event).

    Attributes:
        path: The logger directory.
        outputs: Each output file with its rows.
        rows: Rows written in all.
        seconds: Time the collection took.
        job: The journal job.
        bytes: Segment bytes decoded.
        collected_by: Another actor of the fleet that collected it, or None.
    """

    path: str
    outputs: dict[str, int]
    rows: int
    seconds: float
    job: int
    bytes: int = 0
    collected_by: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """A JSON-friendly dict."""
        return asdict(self)


@dataclass(frozen=True)
class RunFailed:
    """An attempt to collect a run failed (the payload of the actor's ``run_failed`` event).

    Attributes:
        path: The logger directory (None for a malformed event).
        error: What went wrong.
        attempts: Attempts made so far.
        final: True if it will not be tried again without ``retry()``.
        job: The journal job.
    """

    path: str | None
    error: str
    attempts: int
    final: bool
    job: int

    def to_dict(self) -> dict[str, Any]:
        """A JSON-friendly dict."""
        return asdict(self)


@dataclass(frozen=True)
class RunProgress:
    """A chunk of a run that is still being written was committed (the actor's ``run_progress`` event).

    Attributes:
        path: The logger directory.
        chunk: The chunk's number (1, 2, ...).
        rows: Rows in the chunk.
        total: Rows committed so far, this chunk included.
        epochs: For each stream id (as text), the epoch up to which the tables hold every record.
        job: The journal job.
    """

    path: str
    chunk: int
    rows: int
    total: int
    epochs: dict[str, float]
    job: int

    def to_dict(self) -> dict[str, Any]:
        """A JSON-friendly dict."""
        return asdict(self)
