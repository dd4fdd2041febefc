"""Compaction of a Delta table's small files by merging them, without encoding anything again.

One implementation serves both compactions: the upkeep's (:func:`herocollector.output.delta_upkeep.compact`,
the small files of a partition that has many) and ``compact_on_done``'s (:func:`compact_run`,
the chunk files a followed run leaves, one per chunk and table). :func:`merge_files_of`:

1. groups the files by partition and by Parquet schema, in the order they were committed, into
   files up to the target size. A run's files (:func:`run_files`) are those whose statistics say
   every row is the run's (``logger_path`` never null, its minimum and maximum the run): other
   runs' files are never touched, and neither are files at or above the target size;
2. merges each group into one new file by copying its row groups
   (:func:`herocollector.output.parquet_merge.merge_files`): no value is decoded or encoded
   again, so it costs what reading and writing the bytes costs. The merged file is read back and
   must hold the rows the log says its sources hold; a local one is synced before the commit
   refers to it;
3. commits the removes of the sources and the adds of the merged files, every action with
   ``dataChange: false``: a reader sees the same rows before and after, and a reader opened
   before keeps reading its version. A merged file's statistics are its sources' combined (row
   counts summed; minima, maxima and null counts of the columns every source has them for);
4. commits at the table's next version only (no retries inside delta-rs). If another commit got
   there first, the table is read again and the commit is made again only if every source file
   is still in the table. delta-rs 1.6 does not refuse a commit that removes a file a concurrent
   commit removed already without changing data, so without this check two compactions racing
   would leave the rows twice.

A failed merge or commit leaves the table as it was; a merged file no commit refers to is removed
(or, if the store failed, left to vacuum). Tables with deletion vectors or row tracking are not
merged: their files carry more than their bytes.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import math
import os
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import unquote

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from herocollector.errors import CommitError, FooterError
from herocollector.output.delta import METADATA_PREFIX, TABLE_RUN_COLUMN, delta_storage_options, local_table, open_table
from herocollector.output.files import fsync_dir
from herocollector.output.parquet_merge import MAX_ROW_GROUPS, merge_files, read_footers

log = logging.getLogger(__name__)
_T = TypeVar("_T")

COMMIT_ATTEMPTS = 8
"""Commits tried before giving up while other writers keep taking the next version."""
MAX_GROUP_FILES = 1000
"""Files merged into one at most: their decoded footers are held together while it is written."""
UNMERGEABLE_FEATURES = frozenset({"deletionVectors", "rowTracking"})
"""Table features whose files carry more than their bytes (rows deleted beside the file, row ids)."""


@dataclass(frozen=True)
class DataFile:
    """One data file of the table, as its add action says."""

    path: str  # as the log writes it (percent-encoded); delta-rs takes actions' paths decoded
    size: int
    modified: int
    partition: Mapping[str, str | None]
    records: int | None
    stats: tuple[Any, Any, Any]  # minima, maxima, null counts

    @property
    def location(self) -> str:
        """The file's path below the table's root in the store (the log's path, decoded once)."""
        return unquote(self.path)

    @property
    def partition_key(self) -> str:
        """The file's partition values as one comparable key (JSON, sorted by column)."""
        return json.dumps(dict(self.partition), sort_keys=True)


class _ObjectFile:
    """An object opened through delta-rs, as :func:`merge_files` reads it (``size`` and ``read_at``)."""

    def __init__(self, handle: Any) -> None:
        self.handle = handle

    def size(self) -> int:
        return int(self.handle.size())

    def read_at(self, nbytes: int, offset: int) -> bytes:
        self.handle.seek(offset)
        return bytes(self.handle.read(nbytes))

    def close(self) -> None:
        self.handle.close()

    def as_arrow(self) -> pa.NativeFile:
        return pa.PythonFile(self.handle, mode="r")

    def __enter__(self) -> _ObjectFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _TableFiles:
    """Reads and writes the data files of one table: a local folder, or an object store through delta-rs.

    An object store is reached with the table's own storage options, through delta-rs' file
    handler (its streams take and give ``bytes``, which pyarrow's wrapper of it does not pass).
    """

    def __init__(self, table: str, options: Mapping[str, Any]) -> None:
        self.folder = local_table(table)
        self.handler: Any = None
        if self.folder is None:
            from deltalake._internal import DeltaFileSystemHandler

            self.handler = DeltaFileSystemHandler(table, delta_storage_options(table, options))

    def open(self, location: str) -> Any:
        if self.folder is None:
            return _ObjectFile(self.handler.open_input_file(location))
        return pafs.LocalFileSystem().open_input_file(str(self.folder / location))

    def write(self, location: str, write: Callable[[Any], _T]) -> _T:
        if self.folder is None:
            stream = self.handler.open_output_stream(location, None)
            try:
                return write(stream)
            finally:
                stream.close()
        path = self.folder / location
        with path.open("wb") as sink:
            result = write(sink)
            sink.flush()
            os.fsync(sink.fileno())  # the commit must not refer to bytes a crash can take back
        fsync_dir(path.parent)
        return result

    def remove(self, location: str) -> None:
        try:
            if self.folder is None:
                self.handler.delete_file(location)
            else:
                (self.folder / location).unlink(missing_ok=True)
        except (OSError, pa.ArrowException) as exc:
            log.warning(f"{location}: an uncommitted merged file could not be removed (vacuum will): {exc}")


def data_files(delta_table: Any) -> list[DataFile]:
    """The table's data files, oldest commit first (by modification time, then path)."""
    found = [
        DataFile(
            action["path"],
            int(action["size_bytes"]),
            int(action["modification_time"] or 0),
            dict(action.get("partition") or {}),
            action.get("num_records"),
            (action.get("min"), action.get("max"), action.get("null_count")),
        )
        for action in pa.table(delta_table.get_add_actions(flatten=False)).to_pylist()
    ]
    return sorted(found, key=lambda f: (f.modified, f.path))


def run_files(delta_table: Any, run: str, target: int) -> list[DataFile]:
    """The run's data files below ``target`` bytes: every row of each is the run's, by its statistics."""
    chosen = []
    for file in data_files(delta_table):
        minima, maxima, nulls = (s or {} for s in file.stats)
        if minima.get(TABLE_RUN_COLUMN) == maxima.get(TABLE_RUN_COLUMN) == run and nulls.get(TABLE_RUN_COLUMN) == 0:
            if file.size < target:
                chosen.append(file)
    return chosen


def _groups(
    files: Sequence[DataFile], families: Mapping[str, tuple[bytes, int]], target: int
) -> Iterator[list[DataFile]]:
    """Files merged into one: one partition and schema, in commit order, up to ``target`` bytes.

    ``families`` gives each file's footer family and row groups; a merged file holds at most
    :data:`~herocollector.output.parquet_merge.MAX_ROW_GROUPS` of them, and at most
    :data:`MAX_GROUP_FILES` files (whose footers are in memory together while it is written).
    """
    by_kind: dict[tuple[str, bytes], list[DataFile]] = {}
    for file in files:
        kind = (file.partition_key, families[file.path][0])
        by_kind.setdefault(kind, []).append(file)
    for members in by_kind.values():
        group: list[DataFile] = []
        size = row_groups = 0
        for file in members:
            grown = families[file.path][1]
            full = len(group) >= MAX_GROUP_FILES or size + file.size > target or row_groups + grown > MAX_ROW_GROUPS
            if group and full:
                if len(group) > 1:
                    yield group
                group, size, row_groups = [], 0, 0
            group.append(file)
            size, row_groups = size + file.size, row_groups + grown
        if len(group) > 1:
            yield group


def _combined(values: Sequence[Any], combine: Callable[[list[Any]], Any]) -> dict[str, Any]:
    """Statistics of the merged file: a column's entry only where every source has one it can combine."""
    if not values or any(not isinstance(v, dict) for v in values):
        return {}
    combined: dict[str, Any] = {}
    for key in values[0]:
        items = [v.get(key) for v in values]
        if all(isinstance(i, dict) for i in items):
            nested = _combined(items, combine)
            if nested:
                combined[key] = nested
        elif all(isinstance(i, str) for i in items) or all(
            isinstance(i, int | float) and not isinstance(i, bool) and math.isfinite(i) for i in items
        ):
            combined[key] = combine(items)
    return combined


def merged_stats(files: Sequence[DataFile], rows: int) -> str:
    """The Delta statistics (JSON) of a file merged from ``files`` holding ``rows`` rows."""
    stats: dict[str, Any] = {"numRecords": rows}
    for name, index, combine in (("minValues", 0, min), ("maxValues", 1, max), ("nullCount", 2, sum)):
        combined = _combined([f.stats[index] for f in files], combine)
        if combined:
            stats[name] = combined
    return json.dumps(stats)


@dataclass(frozen=True)
class Merge:
    """What :func:`merge_files_of` merged and committed.

    Attributes:
        files_before: The files that were merged (0: none).
        files_after: The merged files that replace them.
        rows: Rows in the merged files.
        version: The table version of the commit (-1: none).
    """

    files_before: int
    files_after: int
    rows: int
    version: int

    @property
    def compacted(self) -> bool:
        """Whether a compaction was committed."""
        return self.version >= 0


NO_MERGE = Merge(0, 0, 0, -1)


def merge_files_of(
    table: str,
    delta_table: Any,
    files: Sequence[DataFile],
    options: Mapping[str, Any],
    *,
    target: int,
    metadata: Mapping[str, str],
) -> Merge:
    """Merge ``files`` (groups of one partition and schema, up to ``target`` bytes) and commit them.

    Args:
        table: The table location.
        delta_table: The table, open at the version ``files`` were read from.
        files: Candidates, in the order their rows are kept.
        options: The service's ``storage_options``.
        target: The largest merged file in bytes.
        metadata: Commit metadata (``herocollector.*`` keys).

    Returns:
        What was merged and committed; nothing if no group has two files, a footer cannot be
        merged, or another commit removed one of the files meanwhile.

    Raises:
        CommitError: The files could not be read or written, or other commits kept taking the
            next version; the table is as it was.
    """
    from deltalake import CommitProperties
    from deltalake.exceptions import CommitFailedError, DeltaError
    from deltalake.transaction import AddAction, RemoveAction

    files = [f for f in files if "://" not in f.path and not f.path.startswith("/")]  # not another store's
    if len(files) < 2:
        return NO_MERGE
    protocol = delta_table.protocol()
    features = set(protocol.reader_features or ()) | set(protocol.writer_features or ())
    if features & UNMERGEABLE_FEATURES:
        log.warning(f"{table}: files are not merged in a table with {sorted(features & UNMERGEABLE_FEATURES)}")
        return NO_MERGE
    store = _TableFiles(table, options)
    written: list[str] = []
    actions: list[Any] = []
    merged_from: list[DataFile] = []
    rows = 0
    try:
        families: dict[str, tuple[bytes, int]] = {}
        for file in files:  # only what grouping needs is kept: a decoded footer is many times its size
            (footer,) = read_footers([file.location], store.open)
            families[file.path] = (hashlib.sha256(footer.family).digest(), len(footer.row_groups))
        for group in _groups(files, families, target):
            folder = group[0].location.rpartition("/")[0]
            location = f"{folder}/" if folder else ""
            location += f"part-00000-{uuid.uuid4()}-c000.zstd.parquet"
            written.append(location)
            footers = read_footers([f.location for f in group], store.open)  # one group's at a time
            result = store.write(location, functools.partial(merge_files, footers, store.open))
            _check_merged(store, location, group, result.rows)
            now = int(time.time() * 1000)
            actions += [RemoveAction(f.location, False, now, f.size, dict(f.partition)) for f in group]
            stats = merged_stats(group, result.rows)
            actions.append(AddAction(location, result.size, dict(group[0].partition), now, False, stats))
            merged_from += group
            rows += result.rows
    except FooterError as exc:
        log.warning(f"{table}: files are not merged: {exc}")
        return _abandon(store, written)
    except (OSError, pa.ArrowException, DeltaError) as exc:
        _abandon(store, written)
        raise CommitError(f"merging files failed: {exc}", table) from None
    if not merged_from:
        return NO_MERGE
    properties = CommitProperties(custom_metadata=dict(metadata), max_commit_retries=0)
    sources = {f.path for f in merged_from}
    for _ in range(COMMIT_ATTEMPTS):
        version = int(delta_table.version()) + 1  # the only version the commit can land as
        try:
            delta_table.create_write_transaction(
                actions,
                "append",
                delta_table.schema(),
                partition_by=list(delta_table.metadata().partition_columns) or None,
                commit_properties=properties,
            )
            break
        except CommitFailedError:
            try:
                delta_table.update_incremental()
                present = {a["path"] for a in pa.table(delta_table.get_add_actions(flatten=False)).to_pylist()}
            except (DeltaError, OSError) as exc:
                raise CommitError(f"the compaction did not land: {exc}", table) from None
            if not sources <= present:
                log.info(f"{table}: files to merge were removed by another commit meanwhile; not compacted")
                return _abandon(store, written)
        except (DeltaError, OSError) as exc:  # the store failed: whether the commit landed is not known
            raise CommitError(f"the compaction did not land: {exc}", table) from None
    else:
        _abandon(store, written)
        raise CommitError(f"the compaction lost the next version {COMMIT_ATTEMPTS} times", table)
    log.info(f"{table}: merged {len(merged_from)} files into {len(written)} (version {version})")
    return Merge(len(merged_from), len(written), rows, version)


def compact_run(table: str, run: str, options: Mapping[str, Any], *, actor: str, target: int | None = None) -> Merge:
    """Merge a run's small files in a table into as few files as the target size allows; see the module.

    Args:
        table: The table location.
        run: The run (its ``logger_path``).
        options: The service's ``storage_options``.
        actor: Who compacts (recorded with the commit as ``herocollector.actor``).
        target: The largest merged file in bytes (default: the table's ``delta.targetFileSize``).

    Returns:
        What was merged and committed.

    Raises:
        CommitError: The table or its files could not be read or written, or other commits kept
            taking the next version; the table is as it was.
    """
    from herocollector.output.delta_upkeep import target_size

    delta_table = open_table(table, options)
    if delta_table is None:
        return NO_MERGE
    target = target or target_size(delta_table)
    files = run_files(delta_table, run, target)
    metadata = {
        f"{METADATA_PREFIX}actor": actor,
        f"{METADATA_PREFIX}run": run,
        f"{METADATA_PREFIX}reason": f"compaction: the {len(files)} small files of the run",
    }
    return merge_files_of(table, delta_table, files, options, target=target, metadata=metadata)


def _check_merged(store: _TableFiles, location: str, group: Sequence[DataFile], rows: int) -> None:
    """The merged file, read back as any reader would, holds the rows the table's log says its sources hold."""
    with store.open(location) as handle:
        found = pq.read_metadata(handle.as_arrow() if isinstance(handle, _ObjectFile) else handle).num_rows
    recorded = [f.records for f in group]
    if found != rows or (None not in recorded and sum(r or 0 for r in recorded) != rows):
        raise FooterError(f"the merged file holds {found} rows, its footers {rows}, the log {recorded}", location)


def _abandon(store: _TableFiles, written: Sequence[str]) -> Merge:
    """Remove merged files no commit refers to."""
    for location in written:
        store.remove(location)
    return NO_MERGE


__all__ = [
    "COMMIT_ATTEMPTS",
    "MAX_GROUP_FILES",
    "NO_MERGE",
    "DataFile",
    "Merge",
    "compact_run",
    "data_files",
    "merge_files_of",
    "merged_stats",
    "run_files",
]
