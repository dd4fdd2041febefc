"""Upkeep of Delta tables: compaction of the small files runs leave, and vacuum of the files nobody needs.

Every run adds at least one data file per table and partition, so a table collected for months
holds many small files, and every query opens them all. :func:`compact` merges them into
fewer, larger ones, but only where it pays: when some partition holds at least ``min_files``
files smaller than the target size (:func:`needs_compaction`). The merge copies the files' row
groups as they are (:func:`herocollector.output.delta_merge.merge_files_of`), so it costs what
moving the bytes costs, and it commits only at the next version, with every file it merged still
in the table. (delta-rs ``optimize.compact`` re-encodes every value, and in delta-rs 1.6 it lands
even after a concurrent commit removed the files it read without changing data, such as another
compaction: the rows would be in the table twice.) The compaction is a commit that changes no
data (``dataChange: false``): the rows, the runs' application transactions and every version
before it stay as they were. The files it replaced are only *logically* removed, so a reader
that opened an older version keeps reading them.

:func:`vacuum` deletes the files that no version within the retention references (and the data
files of commits that never landed, once older than it). Its retention is never below Delta's
``delta.deletedFileRetentionDuration`` of the table (168 hours unless the table says otherwise),
and delta-rs enforces it (``enforce_retention_duration=True``): a reader that opened a version
within the retention still finds its files.

Both commits carry ``herocollector.*`` metadata (``actor``, ``reason``), so ``history()`` tells
them from the runs' commits. Who compacts a table when, and that one actor of a fleet does it at
a time, is the service's business (:mod:`herocollector.service.compaction`).
"""

from __future__ import annotations

import logging
import math
import re
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from herocollector.errors import CommitError
from herocollector.output.delta import METADATA_PREFIX, open_table
from herocollector.output.delta_merge import DataFile, data_files, merge_files_of

log = logging.getLogger(__name__)

MIN_SMALL_FILES = 10
"""A partition is compacted once it holds this many files below the target size."""
DEFAULT_TARGET_SIZE = 100 * 1024 * 1024
"""Delta's (and delta-rs') default ``delta.targetFileSize``: what compaction aims for, in bytes."""
DEFAULT_RETENTION_HOURS = 168.0
"""Delta's default ``delta.deletedFileRetentionDuration`` (one week)."""
_INTERVAL = re.compile(r"^\s*interval\s+(\d+(?:\.\d+)?)\s+([a-z]+?)s?\s*$", re.IGNORECASE)
_HOURS_PER_UNIT = {
    "nanosecond": 1 / 3.6e12,
    "microsecond": 1 / 3.6e9,
    "millisecond": 1 / 3.6e6,
    "second": 1 / 3600,
    "minute": 1 / 60,
    "hour": 1.0,
    "day": 24.0,
    "week": 168.0,
}


@dataclass(frozen=True)
class Compaction:
    """What :func:`compact` found and did.

    Attributes:
        table: The table location.
        compacted: Whether a compaction was committed (False: too few small files, or no table).
        files_before: Data files of the table before.
        files_after: Data files of the table after (the same if nothing was compacted).
        small_files: The most files below the target size that one partition held before.
        rows: Rows of the table (after), from the files' statistics.
        version: The table's version after (-1: no table).
    """

    table: str
    compacted: bool
    files_before: int
    files_after: int
    small_files: int
    rows: int
    version: int


@dataclass(frozen=True)
class Vacuum:
    """What :func:`vacuum` deleted.

    Attributes:
        table: The table location.
        retention_hours: The retention applied: the asked one, or the table's own if longer.
        removed: The files deleted, relative to the table.
    """

    table: str
    retention_hours: int
    removed: tuple[str, ...]


def _metadata(actor: str, reason: str) -> dict[str, str]:
    return {f"{METADATA_PREFIX}actor": actor, f"{METADATA_PREFIX}reason": reason}


def _rows(files: Sequence[DataFile], delta_table: Any) -> int:
    """Rows of the table, from the statistics (the files themselves are counted if a file has none)."""
    if any(f.records is None for f in files):
        return int(delta_table.to_pyarrow_dataset().count_rows())
    return sum(int(f.records or 0) for f in files)


def target_size(delta_table: Any) -> int:
    """The table's ``delta.targetFileSize`` in bytes, or Delta's default."""
    value = delta_table.metadata().configuration.get("delta.targetFileSize")
    try:
        return int(value) if value is not None else DEFAULT_TARGET_SIZE
    except ValueError:
        return DEFAULT_TARGET_SIZE


def small_files(files: Sequence[DataFile], target: int) -> Counter[str]:
    """Data files below ``target`` bytes, counted per partition (:attr:`DataFile.partition_key`)."""
    return Counter(f.partition_key for f in files if f.size < target)


def needs_compaction(delta_table: Any, min_files: int = MIN_SMALL_FILES, target: int | None = None) -> bool:
    """Whether some partition holds at least ``min_files`` files below the target size."""
    counted = small_files(data_files(delta_table), target or target_size(delta_table))
    return max(counted.values(), default=0) >= min_files


def compact(
    table: str,
    options: Mapping[str, Any],
    *,
    actor: str,
    min_files: int = MIN_SMALL_FILES,
    target: int | None = None,
) -> Compaction:
    """Compact a table's small files, if some partition has grown ``min_files`` of them.

    The small files of each such partition are merged, oldest first, into files up to the
    target size; see the module documentation.

    Args:
        table: The table location.
        options: The service's ``storage_options``.
        actor: Who compacts (recorded with the commit as ``herocollector.actor``).
        min_files: Files below the target size a partition must hold to be worth it.
        target: The target file size in bytes (default: the table's ``delta.targetFileSize``, or 100 MiB).

    Returns:
        What was found and done.

    Raises:
        CommitError: The table could not be read or written, or other commits kept taking the
            next version; it can simply run again later.
    """
    delta_table = open_table(table, options)
    if delta_table is None:
        return Compaction(table, False, 0, 0, 0, 0, -1)
    target = target or target_size(delta_table)
    files = data_files(delta_table)
    per_partition = small_files(files, target)
    small = max(per_partition.values(), default=0)
    if small < min_files:
        rows = _rows(files, delta_table)
        return Compaction(table, False, len(files), len(files), small, rows, int(delta_table.version()))
    chosen = [f for f in files if f.size < target and per_partition[f.partition_key] >= min_files]
    reason = f"compaction: {small} files below {target} bytes in a partition"
    merge = merge_files_of(table, delta_table, chosen, options, target=target, metadata=_metadata(actor, reason))
    after = open_table(table, options)
    if after is None:
        raise CommitError("the table vanished during its compaction", table)
    files_after = data_files(after)
    result = Compaction(
        table,
        merge.version >= 0,
        len(files),
        len(files_after),
        small,
        _rows(files_after, after),
        int(after.version()),
    )
    if result.compacted:
        log.info(
            f"{table}: compacted {merge.files_before} files into {merge.files_after} "
            f"(now {result.files_after} files, version {merge.version})"
        )
    return result


def retention_hours(delta_table: Any) -> float | None:
    """The table's ``delta.deletedFileRetentionDuration`` in hours (168 unless set); None if unreadable."""
    value = delta_table.metadata().configuration.get("delta.deletedFileRetentionDuration")
    if value is None:
        return DEFAULT_RETENTION_HOURS
    match = _INTERVAL.match(str(value))
    if match is None or match.group(2).lower() not in _HOURS_PER_UNIT:
        return None
    return float(match.group(1)) * _HOURS_PER_UNIT[match.group(2).lower()]


def vacuum(table: str, hours: float, options: Mapping[str, Any], *, actor: str = "") -> Vacuum:
    """Delete the files no version within ``hours`` references (never within the table's own retention).

    Args:
        table: The table location.
        hours: The retention asked for (``vacuum_retention``); the table's
            ``delta.deletedFileRetentionDuration`` applies instead if it is longer.
        options: The service's ``storage_options``.
        actor: Who vacuums (recorded with the commit as ``herocollector.actor``).

    Returns:
        The retention applied and the files deleted (none for a table that is not there, or
        whose own retention cannot be read: then nothing is deleted).

    Raises:
        CommitError: The store failed.
    """
    from deltalake import CommitProperties
    from deltalake.exceptions import DeltaError

    delta_table = open_table(table, options)
    if delta_table is None:
        return Vacuum(table, math.ceil(hours), ())
    own = retention_hours(delta_table)
    if own is None:
        setting = delta_table.metadata().configuration.get("delta.deletedFileRetentionDuration")
        log.warning(f"{table}: delta.deletedFileRetentionDuration {setting!r} is not understood; not vacuumed")
        return Vacuum(table, math.ceil(hours), ())
    applied = math.ceil(max(hours, own))
    try:
        removed = delta_table.vacuum(
            retention_hours=applied,
            dry_run=False,
            enforce_retention_duration=True,
            full=True,  # also the data files of commits that never landed: only a full vacuum lists them
            commit_properties=CommitProperties(custom_metadata=_metadata(actor, f"vacuum: retention {applied} h")),
        )
    except (DeltaError, OSError) as exc:
        raise CommitError(f"vacuum failed: {exc}", table) from None
    if removed:
        log.info(f"{table}: vacuum deleted {len(removed)} files removed more than {applied} h ago")
    return Vacuum(table, applied, tuple(removed))


__all__ = [
    "DEFAULT_RETENTION_HOURS",
    "MIN_SMALL_FILES",
    "Compaction",
    "Vacuum",
    "compact",
    "needs_compaction",
    "retention_hours",
    "vacuum",
]
