"""The decoding core: one planned run's selected streams into Arrow record batches of one schema.

Used by the output pipeline (:mod:`herocollector.output.pipeline`) and by the library façade
(:class:`herocollector.collector.Collector`), which re-exports these names.

* :func:`scan_run` opens a run once: its streams and its :class:`~herocollector.run.rundir.RunInventory`.
* :func:`output_schema` types the label columns across the selected streams of all runs;
  :func:`parse_columns` reads label columns as configured (names, or names with pinned types).
* :func:`run_batches` decodes the segments of one run with
  :class:`~herocollector.decode.codec.SegmentDecoder` (on ``threads`` threads, the rows the
  same) and turns every decoded chunk into one record batch, with the stream labels as
  columns (:func:`label_array`).
* :func:`follow_batches` does the same for the records of a run still written that were
  completed since a :class:`~herocollector.decode.follow.Cursor` (:class:`FollowRead`), with
  :class:`~herocollector.decode.follow.FollowDecoder`.

Runs are read through :class:`~herocollector.run.rundir.RunDirectory`: regular files only,
opened relative to the directory without following symlinks, and a run that changes while it
is read fails with :class:`~herocollector.errors.RunChanged`.
"""

from __future__ import annotations

import errno
import io
import os
import stat
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from herocollector.decode.codec import (
    DEFAULT_CHUNK_BYTES,
    MAX_CHUNK_BYTES,
    MIN_CHUNK_BYTES,
    Columns,
    SegmentDecoder,
    StreamTable,
)
from herocollector.decode.follow import Cursor, FollowDecoder, Limited
from herocollector.errors import CollectorError, ConfigError, MetadataError, RunChanged
from herocollector.run.catalogue import Stream, streams_of
from herocollector.run.inventory import FileRecord, describe_kind
from herocollector.run.rundir import RunDirectory, RunInventory

__all__ = [
    "BASE_COLUMNS",
    "BASE_FIELDS",
    "FollowRead",
    "dedupe_columns",
    "follow_batches",
    "label_array",
    "output_schema",
    "parse_columns",
    "run_batches",
    "scan_run",
]

BASE_FIELDS = (
    pa.field("stream_id", pa.uint32()),
    pa.field("epoch", pa.float64()),
    pa.field("indices", pa.list_(pa.int64())),
    pa.field("values", pa.list_(pa.float64())),
)
"""The four columns every output starts with; the label columns follow."""
BASE_COLUMNS = tuple(f.name for f in BASE_FIELDS)

_SEGMENT_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK  # as the run directory opens files


@dataclass
class _Plan:
    """The selected streams of one logger directory and where their labels sit."""

    path: Path
    all_ids: list[int]
    chosen: list[Stream]  # selected, by id
    ids: np.ndarray  # selected stream ids, sorted
    epoch_scales: np.ndarray  # per selected id
    value_scales: np.ndarray
    label_rows: np.ndarray  # row of each selected id in the collection-wide label arrays


def scan_run(path: str | Path, allowed_roots: Sequence[str | Path] = ()) -> tuple[list[Stream], RunInventory]:
    """Open a run directory once: check ``_DONE``'s type, load its streams, list its segments.

    Args:
        path: The logger directory (relative paths are taken from the working directory).
        allowed_roots: It must resolve inside one of these (empty: anywhere).

    Returns:
        Its streams (whose logger path is ``path`` as given) and its inventory.

    Raises:
        CollectorError: See :class:`~herocollector.run.rundir.RunDirectory`; an entry that
            is not a regular file, or invalid stream metadata.
    """
    with RunDirectory(path, allowed_roots, absolute=False) as run:
        run.is_done()  # a _DONE that is not a regular file is an error, whoever waited for it
        streams = streams_of(run, str(path))
        return streams, run.inventory()


def run_batches(
    path: Path,
    streams: Sequence[Stream],
    selected: Sequence[Stream],
    schema: pa.Schema,
    *,
    chunk_bytes: int = DEFAULT_CHUNK_BYTES,
    on_bytes: Callable[[int], None] | None = None,
    inventory: RunInventory | None = None,
    verify: bool = True,
    threads: int = 1,
) -> Iterator[pa.RecordBatch]:
    """Decode the selected streams of one logger directory into batches of ``schema``.

    The streams are loaded and selected by the caller, once (see :mod:`herocollector.output.pipeline`).
    The segments are those of ``inventory``, opened relative to the run directory; each is
    checked at its end, and after the last batch the whole run is (unless ``verify`` is off).

    Args:
        path: The logger directory.
        streams: Every stream it declares (any other id in a segment is an error).
        selected: The streams to return.
        schema: The output schema; label columns are read from the streams' fields.
        chunk_bytes: Decompressed bytes decoded per step.
        on_bytes: Called with the number of segment bytes read since its last call.
        inventory: The run as it was listed (:func:`scan_run`); None lists it now.
        verify: Check the whole run against the inventory after the last batch (the
            output pipeline checks every run itself, right before it publishes).
        threads: Threads that decode parts of the run at the same time (the rows are the
            same, in the same order; :mod:`herocollector.decode.parallel`).

    Yields:
        Record batches in file order.

    Raises:
        CollectorError: Bad input; the message names the file (and byte offset).
        RunChanged: The run is not what the inventory recorded any more.
    """
    if not selected:
        return
    plan = _plan_run(path, streams, selected)
    labels = _label_arrays(plan.chosen, schema)
    decoder = SegmentDecoder(
        plan.all_ids,
        plan.ids.tolist(),
        chunk_bytes=chunk_bytes,
        epoch_scales=plan.epoch_scales,
        value_scales=plan.value_scales,
        decode_threads=threads,
    )
    # The kernel reports each record's slot among all declared streams; map that to the
    # stream's row in the label arrays.
    rows = np.full(len(decoder.streams), -1, dtype=np.int64)
    rows[np.searchsorted(decoder.streams.ids, plan.ids.astype(np.uint64))] = plan.label_rows
    with RunDirectory(path if inventory is None else inventory.path, absolute=False, expect=inventory) as run:
        listed = run.inventory() if inventory is None else inventory
        columns = decoder.columns(run.sources(listed.segments), on_bytes=on_bytes, nbytes=listed.segment_bytes)
        try:
            for decoded in columns:
                yield _to_batch(decoded, rows, labels, schema)
        finally:
            close = getattr(columns, "close", None)
            if close is not None:  # stop the reader before the directory closes
                close()
        if verify:
            run.verify(listed)


def _plan_run(path: Path, streams: Sequence[Stream], selected: Sequence[Stream]) -> _Plan:
    chosen = sorted(selected, key=lambda s: s.stream_id)
    return _Plan(
        path,
        [s.stream_id for s in streams],
        chosen,
        np.array([s.stream_id for s in chosen], dtype=np.uint32),
        np.array([s.epoch_scale for s in chosen], dtype=np.float64),
        np.array([s.value_scale for s in chosen], dtype=np.float64),
        np.arange(len(chosen)),
    )


def _label_arrays(chosen: Sequence[Stream], schema: pa.Schema) -> dict[str, pa.Array]:
    """One array per label column of ``schema``, a row per chosen stream."""
    labels: dict[str, pa.Array] = {}
    for name in (n for n in schema.names if n not in BASE_COLUMNS):
        values = [s.fields.get(name) for s in chosen]
        labels[name] = label_array(name, values, schema.field(name).type)
    return labels


def label_array(name: str, values: Sequence[Any], type: pa.DataType | None = None) -> pa.Array:
    """An Arrow array of label values, of ``type`` if given (converted where Arrow can cast).

    Raises:
        CollectorError: The values cannot be made into one column of that type.
    """
    try:
        inferred = pa.array(values)
        if type is None or inferred.type == type:
            return inferred
        return inferred.cast(type)
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError) as exc:
        what = f"to {type}" if type is not None else "into one column"
        message = f"label column '{name}' cannot be converted {what} from the stream labels: {exc}"
        raise CollectorError(message) from None


def _to_batch(
    decoded: Columns, label_rows: np.ndarray, labels: dict[str, pa.Array], schema: pa.Schema
) -> pa.RecordBatch:
    """One record batch from decoded columns (no copies: Arrow wraps the NumPy arrays)."""
    offsets = pa.array(decoded.offsets)
    columns: dict[str, pa.Array] = {
        "stream_id": pa.array(decoded.stream_ids, type=pa.uint32()),
        "epoch": pa.array(decoded.epochs, type=pa.float64()),
        "indices": pa.ListArray.from_arrays(offsets, pa.array(decoded.indices, type=pa.int64())),
        "values": pa.ListArray.from_arrays(offsets, pa.array(decoded.values, type=pa.float64())),
    }
    if labels:
        rows = pa.array(label_rows[decoded.slots])
        for name, array in labels.items():
            columns[name] = array.take(rows)
    arrays = []
    for field in schema:
        array = columns.get(field.name)
        if array is None:
            array = pa.nulls(len(decoded), type=field.type)
        elif array.type != field.type:
            try:
                array = array.cast(field.type)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
                raise CollectorError(f"column '{field.name}' cannot be cast to {field.type}: {exc}") from None
        arrays.append(array)
    return pa.RecordBatch.from_arrays(arrays, schema=schema)


def output_schema(
    streams: Sequence[Stream], columns: Sequence[str], label_types: Mapping[str, pa.DataType] | None = None
) -> pa.Schema:
    """The output schema: base columns, then one column per label.

    Args:
        streams: The selected streams.
        columns: Label columns, already deduplicated.
        label_types: Pinned Arrow types of some label columns; the others are typed from
            the streams' values.

    Returns:
        The schema; an unpinned label no stream has is of type null.

    Raises:
        CollectorError: A label's values across the streams have no common Arrow type.
    """
    label_types = label_types or {}
    fields = list(BASE_FIELDS)
    for name in columns:
        if name in label_types:
            fields.append(pa.field(name, label_types[name]))
            continue
        try:
            fields.append(pa.field(name, pa.array([s.fields.get(name) for s in streams]).type))
        except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError, OverflowError) as exc:
            clash = _type_clash(name, streams)
            message = f"label column '{name}' has values of mixed types across streams{clash}: {exc}"
            raise CollectorError(message) from None
    return pa.schema(fields)


def _type_clash(name: str, streams: Sequence[Stream]) -> str:
    """Which stream's value of label ``name`` breaks the column, for the error message ("" if none is found)."""
    first: tuple[pa.DataType, Stream] | None = None
    for stream in streams:
        value = stream.fields.get(name)
        where = f"stream {stream.stream_id} of {stream.logger_path}"
        try:
            kind = pa.array([value]).type
        except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError, OverflowError):
            return f" ({where}: its value {value!r:.200} has no Arrow type of its own)"
        if kind == pa.null():
            continue
        if first is None:
            first = (kind, stream)
        elif kind != first[0]:
            other = f"stream {first[1].stream_id} of {first[1].logger_path}"
            return f" ({where} has {kind}, {other} has {first[0]})"
    return ""


def dedupe_columns(columns: Sequence[str] | None) -> tuple[str, ...]:
    """Label columns as the library takes them: duplicates removed, order kept.

    Args:
        columns: Label names, or None for none.

    Returns:
        The names.

    Raises:
        CollectorError: A string instead of a sequence, or a clash with a base column.
    """
    if isinstance(columns, str):
        raise CollectorError("columns must be a sequence of label names, not a string")
    names = tuple(dict.fromkeys(columns or ()))
    clash = [n for n in names if n in BASE_COLUMNS]
    if clash:
        raise CollectorError(f"label column(s) {clash} clash with the built-in columns {list(BASE_COLUMNS)}")
    return names


def parse_columns(
    columns: Sequence[str] | Mapping[str, str | None] | None,
) -> tuple[tuple[str, ...], dict[str, pa.DataType]]:
    """Label columns as names, or as a mapping of name to a pinned Arrow type name.

    Args:
        columns: ``["experiment", "run"]``, or ``{"experiment": "string", "run": "int64"}``
            (a None type is inferred from the values, as for a plain name). Type names
            are Arrow's (``pa.type_for_alias``): string, large_string, int64, float64, bool ...

    Returns:
        The names (duplicates removed, order kept) and the pinned types.

    Raises:
        ConfigError: A string instead of a list, a clash with a base column, or an unknown type.
    """
    if columns is None:
        return (), {}
    if isinstance(columns, str):
        raise ConfigError("columns must be a list of label names (or a mapping to types), not a string")
    if isinstance(columns, Mapping):
        items = list(columns.items())
    else:
        items = [(name, None) for name in columns]
    names = tuple(dict.fromkeys(str(name) for name, _ in items))
    clash = [n for n in names if n in BASE_COLUMNS]
    if clash:
        raise ConfigError(f"label column(s) {clash} clash with the built-in columns {list(BASE_COLUMNS)}")
    types: dict[str, pa.DataType] = {}
    for name, type_name in items:
        if type_name is None:
            continue
        try:
            types[str(name)] = pa.type_for_alias(str(type_name))
        except (ValueError, KeyError):
            raise ConfigError(f"columns: unknown Arrow type {type_name!r} for label {name!r}") from None
    return names, types


@dataclass
class FollowRead:
    """What :func:`follow_batches` read of a run that may still be written.

    Attributes:
        batches: The records completed since the cursor, in file order, in the output schema.
        cursor: Valid once ``batches`` is exhausted: where the next read starts (the cursor
            given, the same object, when nothing new was read; else a new one, whose ``chunk``
            is one more when ``rows`` is not 0 and the same otherwise).
        epochs: Once exhausted: per selected stream id, the epoch of its last record read so
            far (this read or an earlier one).
        complete: Once exhausted: the run has ``_DONE`` and was read to its end.
        bytes: Once exhausted: segment bytes read (and decoded) by this read.
        rows: Once exhausted: rows in ``batches``.
        waiting_for: Once exhausted: the id of a stream whose records wait for its
            ``streams/*.json`` (the read stopped before its first frame), or None.
        newest_mtime: Once exhausted: ``st_mtime`` of the newest segment read (as listed), or None.
    """

    batches: Iterator[pa.RecordBatch]
    cursor: Cursor
    epochs: dict[int, float]
    complete: bool
    bytes: int = 0
    rows: int = 0
    waiting_for: int | None = None
    newest_mtime: float | None = None


def follow_batches(
    path: Path,
    streams: Sequence[Stream],
    selected: Sequence[Stream],
    schema: pa.Schema,
    cursor: Cursor,
    *,
    done: bool,
    chunk_bytes: int = DEFAULT_CHUNK_BYTES,
    inventory: RunInventory | None = None,
    until: Cursor | None = None,
) -> FollowRead:
    """The records of a run completed since ``cursor``, as :func:`run_batches` gives them for those records.

    The run may still be written (:mod:`herocollector.decode.follow`): only whole frames are read,
    from the cursor on, and a read never starts the run again. Concatenated, the batches of the
    reads from :data:`~herocollector.decode.follow.START` on are the batches of one
    :func:`run_batches` of the whole run, row for row and bit for bit.

    Args:
        path: The logger directory.
        streams: Every stream it declares now (read them again before each read: a record of
            a stream not among them ends the read before its frame, unless ``done``).
        selected: The streams to return.
        schema: The output schema; label columns are read from the streams' fields.
        cursor: Where the last read ended.
        done: ``_DONE`` was there before the segments were listed: the run is read to its end,
            and a torn frame or an unknown stream is damage.
        chunk_bytes: Compressed bytes read and decoded per step.
        inventory: The run as listed after the ``_DONE`` check (its segment sizes bound the
            read); None lists it now.
        until: Read exactly up to this cursor, one an earlier read from ``cursor`` ended with
            (to commit a chunk again): nothing after it, whatever was added since. The read's
            cursor is ``until``; a ``CollectorError`` if the files do not lead there as before.

    Returns:
        The read: iterate its batches to their end before reading its other fields.

    Raises:
        CollectorError: Bad input (while iterating); the message names the file (and byte offset).
        RunChanged: The cursor's segment is gone, shrank below the cursor or was replaced; a
            segment changed under the read (a closed one changed size, the newest shrank).
    """
    plan = _plan_run(path, streams, selected)
    labels = _label_arrays(plan.chosen, schema)
    table = StreamTable(plan.all_ids, plan.ids.tolist(), plan.epoch_scales, plan.value_scales)
    size = min(max(int(chunk_bytes), MIN_CHUNK_BYTES), MAX_CHUNK_BYTES)
    decoder = FollowDecoder(table, cursor, done=done, chunk_bytes=size, until=until)
    rows = np.full(len(table), -1, dtype=np.int64)
    rows[np.searchsorted(table.ids, plan.ids.astype(np.uint64))] = plan.label_rows
    read = FollowRead(iter(()), cursor, {}, False)

    def batches() -> Iterator[pa.RecordBatch]:
        with RunDirectory(path if inventory is None else inventory.path, absolute=False, expect=inventory) as run:
            listed = run.inventory() if inventory is None else inventory
            records = listed.segments
            segments = [_FollowedSegment(run, r, done or at < len(records) - 1) for at, r in enumerate(records)]
            for decoded in decoder.columns(segments):
                batch = _to_batch(decoded, rows, labels, schema)
                read.rows += batch.num_rows
                yield batch
            if decoder.complete:
                run.verify(listed)
        read.cursor, read.epochs, read.complete = decoder.cursor, decoder.epochs(), decoder.complete
        read.bytes, read.waiting_for = decoder.bytes, decoder.waiting_for
        newest = [r for r in records if r.name == read.cursor.segment]
        read.newest_mtime = newest[0].mtime_ns / 1e9 if newest else None

    read.batches = batches()
    return read


class _FollowedSegment:
    """A listed segment of a followed run, opened through its run directory (a ``FollowSegment``).

    Opened relative to the directory without following a symlink, a regular file only, the
    same file (device and inode) that was listed, and at least as long: a closed segment
    exactly as long. Reads end at the listed size.
    """

    def __init__(self, run: RunDirectory, record: FileRecord, closed: bool) -> None:
        self._run = run
        self._record = record
        self._closed = closed
        self.name = record.name
        self.path = os.path.join(run.path, record.name)
        self.size = record.size

    def open(self, offset: int) -> io.RawIOBase:
        """The segment at ``offset``, giving at most ``size - offset`` bytes."""
        try:
            fd = os.open(self.name, _SEGMENT_FLAGS, dir_fd=self._run.fd)
        except FileNotFoundError:
            raise RunChanged("segment is gone", self.path) from None
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise MetadataError("segment is a symlink, not a regular file; it is not read", self.path) from None
            raise CollectorError(f"cannot open segment: {exc.strerror}", self.path) from None
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise MetadataError(f"segment is {describe_kind(st.st_mode)}, not a regular file", self.path)
            if (st.st_dev, st.st_ino) != (self._record.dev, self._record.ino):
                raise RunChanged("segment was replaced since the run was listed", self.path)
            if st.st_size < self.size or (self._closed and st.st_size != self.size):
                change = "shrank" if st.st_size < self.size else "grew, though closed,"
                raise RunChanged(f"segment {change} since the run was listed: {self.size} -> {st.st_size}", self.path)
            os.set_blocking(fd, True)
            os.lseek(fd, offset, os.SEEK_SET)
            return _Bounded(io.FileIO(fd, "rb", closefd=True), self.size - offset, self.path)
        except BaseException:
            os.close(fd)
            raise


class _Bounded(Limited):
    """At most ``left`` bytes of a file; ending before them is a ``RunChanged`` (the file shrank)."""

    def __init__(self, file: io.FileIO, left: int, path: str) -> None:
        super().__init__(file, left)
        self._file = file
        self._path = path

    def _ended_early(self) -> None:
        raise RunChanged(f"segment shrank while it was read: {self._left} bytes fewer than listed", self._path)

    def close(self) -> None:
        self._file.close()
        super().close()
