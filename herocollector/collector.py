"""``Collector``: finished logger directories in, Arrow record batches out.

API-compatible with ``data_logger.Collector``, but vectorised end to end, exact on rotated
runs (epoch ticks carry across segment files), strict about bad input, and bounded in memory.

The decoding itself is :mod:`herocollector.output.batches`, shared with the output pipeline
(``scan_run``, ``run_batches``, ``output_schema``, ``label_array``, ``parse_columns`` and the
base columns are re-exported here). Every run is read through
:class:`~herocollector.run.rundir.RunDirectory`: regular files only, opened relative to the
directory without following symlinks, and a run that changes while it is read fails with
:class:`~herocollector.errors.RunChanged`.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Protocol

import pyarrow as pa

from herocollector.decode.codec import DEFAULT_CHUNK_BYTES
from herocollector.decode.parallel import default_threads
from herocollector.errors import CollectorError, ConfigError, RunRefused

# The decoding core lives in the output layer; its names stay importable from here, where they were first.
from herocollector.output.batches import (
    BASE_COLUMNS,
    BASE_FIELDS,
    dedupe_columns,
    label_array,
    output_schema,
    parse_columns,
    run_batches,
    scan_run,
)
from herocollector.run import logdir
from herocollector.run.catalogue import RuleLike, select_streams
from herocollector.run.logdir import STREAMS_DIR, segment_files
from herocollector.run.rundir import check_path_argument

__all__ = [
    "BASE_COLUMNS",
    "BASE_FIELDS",
    "BatchWriter",
    "Collector",
    "label_array",
    "output_schema",
    "parse_columns",
    "run_batches",
    "scan_run",
]


def decode_threads(threads: int | None) -> int:
    """Threads that decode one run: ``threads``, or :func:`~herocollector.decode.parallel.default_threads` when None.

    Raises:
        ConfigError: ``threads`` is not a positive integer.
    """
    if threads is None:
        return default_threads()
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise ConfigError(f"threads must be a positive integer or None, got {threads!r}")
    return threads


class BatchWriter(Protocol):
    """Anything with a ``schema`` (or None) and ``write_batch``, e.g. ``pyarrow.ipc`` writers."""

    schema: pa.Schema | None

    def write_batch(self, batch: pa.RecordBatch) -> None:
        """Write one record batch."""


class Collector:
    """Collect stream records from finished logger directories into Arrow.

    Args:
        paths: Logger directories, collected in this order (a repeated path once).
        chunk_bytes: Decompressed bytes decoded per step; bounds memory and batch size.

    Raises:
        ValueError: ``paths`` is empty.
        ConfigError: A path is not a string path or holds a NUL byte (names its index).

    Example:
        >>> import pyarrow as pa
        >>> from herocollector import Collector
        >>> sink = pa.BufferOutputStream()
        >>> with pa.ipc.new_file(sink, Collector.schema_for(["experiment"])) as writer:
        ...     Collector(["/data/run-0001"]).collect(writer, columns=["experiment"])
    """

    def __init__(self, paths: Sequence[str | Path], *, chunk_bytes: int = DEFAULT_CHUNK_BYTES) -> None:
        if isinstance(paths, (str, Path)) or not paths:
            raise ValueError("Collector needs a non-empty sequence of logger paths")
        for index, path in enumerate(paths):
            try:
                check_path_argument(path, f"paths[{index}]", absolute=False)
            except RunRefused as exc:
                raise ConfigError(exc.reason, exc.path) from None
        self._paths = list(dict.fromkeys(Path(p) for p in paths))
        self._chunk_bytes = chunk_bytes

    @property
    def paths(self) -> list[Path]:
        """The logger directories, in collection order."""
        return list(self._paths)

    @staticmethod
    def schema_for(
        columns: Sequence[str] | None = None, label_types: dict[str, pa.DataType] | None = None
    ) -> pa.Schema:
        """The output schema for label ``columns`` (strings unless ``label_types`` says otherwise).

        Args:
            columns: Label columns after the four base columns.
            label_types: Arrow type per label column.

        Returns:
            The schema.
        """
        label_types = label_types or {}
        extra = [pa.field(c, label_types.get(c, pa.string())) for c in dedupe_columns(columns)]
        return pa.schema(list(BASE_FIELDS) + extra)

    def collect(
        self,
        writer: BatchWriter,
        *,
        rule: RuleLike = None,
        columns: Sequence[str] | None = None,
        backoff: int = 100,
        timeout: int | None = 60_000,
        threads: int | None = None,
    ) -> bool:
        """Wait for ``_DONE``, then decode the selected streams and write them to ``writer``.

        Args:
            writer: Receives ``pa.RecordBatch``es; if its ``schema`` is not None, batches
                conform to it.
            rule: Stream selection (disco-tools ``Rule``, raw spec dict, or None for all).
            columns: Stream labels to add as columns (duplicates removed, order kept); a
                stream without the label gets null.
            backoff: Milliseconds between ``_DONE`` polls.
            timeout: Milliseconds to wait for ``_DONE`` in all; None waits forever.
            threads: Threads that decode one run (its segments, or parts of a large one) at
                the same time; the rows are the same, in the same order. None: the number
                of cores.

        Returns:
            True when collected, False if ``_DONE`` did not appear in time.

        Raises:
            CollectorError: Bad input; the message names the file (and byte offset).
        """
        schema = getattr(writer, "schema", None)
        batches = self.batches(
            rule=rule, columns=columns, schema=schema, backoff=backoff, timeout=timeout, threads=threads
        )
        for batch in batches:
            if batch is None:
                return False
            writer.write_batch(batch)
        return True

    def batches(
        self,
        *,
        rule: RuleLike = None,
        columns: Sequence[str] | None = None,
        schema: pa.Schema | None = None,
        backoff: int = 100,
        timeout: int | None = 60_000,
        threads: int | None = None,
    ) -> Iterator[pa.RecordBatch | None]:
        """Like :meth:`collect`, but yield the batches.

        Yields:
            Record batches in collection order; a single None if ``_DONE`` timed out.
        """
        self._check_paths()
        threads = decode_threads(threads)
        if not logdir.wait_for_done(self._paths, backoff, timeout):
            yield None
            return
        names = dedupe_columns(columns)
        per_path = [(path, *scan_run(path)) for path in self._paths]
        chosen = [(path, streams, inventory, select_streams(streams, rule)) for path, streams, inventory in per_path]
        if schema is None:
            schema = output_schema([s for *_, selected in chosen for s in selected], names)
        for path, streams, inventory, selected in chosen:
            yield from run_batches(
                path, streams, selected, schema, chunk_bytes=self._chunk_bytes, inventory=inventory, threads=threads
            )

    def cleanup(
        self,
        *,
        keep_meta: bool = True,
        wait_for_done: bool = True,
        backoff: int = 100,
        timeout: int | None = 60_000,
    ) -> bool:
        """Remove the segment files (and with ``keep_meta=False`` also ``streams/``).

        Args:
            keep_meta: Keep ``streams/``.
            wait_for_done: First wait for ``_DONE`` in every path.
            backoff: Milliseconds between ``_DONE`` polls.
            timeout: Milliseconds to wait in all; None waits forever.

        Returns:
            False if waiting timed out (nothing removed), else True.
        """
        if wait_for_done and not logdir.wait_for_done(self._paths, backoff, timeout):
            return False
        for base in self._paths:
            for segment in segment_files(base):
                segment.unlink(missing_ok=True)
            streams = base / STREAMS_DIR
            if not keep_meta and streams.is_dir() and not streams.is_symlink():
                shutil.rmtree(streams)
        return True

    def _check_paths(self) -> None:
        for path in self._paths:
            if not path.exists():
                raise CollectorError("logger directory does not exist", path)
            if not path.is_dir():
                raise CollectorError("logger path is not a directory", path)
