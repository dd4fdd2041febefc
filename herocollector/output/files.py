"""Output files: written to a hidden temporary name, then committed atomically, or aborted clean.

An output is written to a temporary file in its final directory, fsynced, and only then
linked (or renamed) into place, so no reader ever sees a half-written file under a final
name. Its SHA-256 is computed from the bytes as they are written (:class:`HashingSink`; every
format writes its file front to back, never seeking back), so a finished file is never read
again; :func:`sha256_of` reads one for the verification tools. A file costs one fsync; the
fsync of the folder that makes its link durable is :func:`link_into_place`'s, or, for a store
publishing a run's files, one per folder after all of them are linked
(:meth:`herocollector.output.stores.OutputStore.sync_folders`).

:meth:`OutputFile.abort` always removes the temporary file, even when closing it fails
(a full disk), and never raises: the error that made the caller abort is the one reported. A
temporary file that cannot be removed (a folder turned read-only) is remembered and removed
by the next attempt of the same process (:func:`remove_abandoned`). Temporary names are short
(the final name is hashed), so any valid final name works, and unique per process, so two
writers never share one.

Every ``OSError`` of writing or publishing (ENOSPC, EROFS, EACCES ...) is raised as a
:class:`~herocollector.errors.PublishError` naming the final path and its folder.

Formats: Arrow IPC file (``file``), Arrow IPC stream (``stream``) and Parquet (``parquet``);
the provenance goes into the schema (key-value) metadata of each.

:func:`route_batch` splits a batch between outputs in one pass: one stable sort of the rows by
output, one gather of the batch in that order, then zero-copy slices.
"""

from __future__ import annotations

import enum
import hashlib
import itertools
import json
import logging
import os
import socket
import threading
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from herocollector.errors import ConfigError, OutputError, PublishError

log = logging.getLogger(__name__)

PROVENANCE_PREFIX = "herocollector."
TEMP_SUFFIX = ".tmp"
_HOST = hashlib.sha1(socket.gethostname().encode()).hexdigest()[:8]
_sequence = itertools.count()
_abandoned: set[Path] = set()
"""Temporary files of this process that could not be removed (a read-only folder): removed later."""
_abandoned_lock = threading.Lock()
SINK_BUFFER = 64 << 10
"""Bytes Arrow gathers before handing them to the hashing sink: few Python calls, little memory per open file."""


class OutputFormat(enum.StrEnum):
    """How output files are written."""

    FILE = "file"
    """Arrow IPC file format (random access; ``pa.ipc.open_file``)."""
    STREAM = "stream"
    """Arrow IPC stream format (``pa.ipc.open_stream``)."""
    PARQUET = "parquet"
    """Parquet (``pyarrow.parquet``), zstd-compressed unless told otherwise."""
    DELTA = "delta"
    """Delta Lake tables (Parquet data files and a transaction log; :mod:`herocollector.output.delta`)."""

    @property
    def is_table(self) -> bool:
        """Whether outputs are tables that runs are committed to, rather than files of their own."""
        return self is OutputFormat.DELTA

    @classmethod
    def parse(cls, value: str | OutputFormat) -> OutputFormat:
        """The format named ``value``.

        Raises:
            ConfigError: Not a known format.
        """
        try:
            return cls(value)
        except ValueError:
            raise ConfigError(f"format must be one of {[f.value for f in cls]}, got {value!r}") from None


class Compression(enum.StrEnum):
    """Buffer compression of the outputs."""

    ZSTD = "zstd"
    LZ4 = "lz4"

    @classmethod
    def parse(cls, value: str | Compression | None) -> Compression | None:
        """The compression named ``value`` (None or ``"none"``: uncompressed).

        Raises:
            ConfigError: Not a known compression.
        """
        if value is None or value == "none":
            return None
        try:
            return cls(value)
        except ValueError:
            raise ConfigError(f"compression must be one of None, 'zstd', 'lz4', got {value!r}") from None


FORMATS = tuple(f.value for f in OutputFormat)
COMPRESSIONS = (None, *(c.value for c in Compression))


def provenance_metadata(
    logger_path: str, source_name: str, collected_at: str, job_id: int, streams: list[dict[str, Any]]
) -> dict[str, str]:
    """Schema metadata recording where an output came from.

    Args:
        logger_path: The logger directory collected.
        source_name: The HERO that announced the run.
        collected_at: ISO 8601 time of collection.
        job_id: The journal job (0 for the command line).
        streams: Metadata of the streams held in the file.

    Returns:
        String key/value pairs, keys prefixed ``herocollector.``.
    """
    return {
        f"{PROVENANCE_PREFIX}logger_path": logger_path,
        f"{PROVENANCE_PREFIX}source": source_name,
        f"{PROVENANCE_PREFIX}collected_at": collected_at,
        f"{PROVENANCE_PREFIX}job": str(job_id),
        f"{PROVENANCE_PREFIX}streams": json.dumps(streams, default=str, sort_keys=True),
    }


def read_schema(path: str | Path) -> pa.Schema | None:
    """The schema of an output in any of the formats, or None if it is not one of ours."""
    source = str(path)
    try:
        try:
            return pa.ipc.open_file(source).schema
        except pa.ArrowInvalid:
            pass
        try:
            with pa.OSFile(source) as fh:
                return pa.ipc.open_stream(fh).schema
        except pa.ArrowInvalid:
            pass
        return pq.read_schema(source)
    except (pa.ArrowInvalid, OSError):
        return None


def read_provenance(path: str | Path) -> dict[str, str]:
    """The ``herocollector.*`` schema metadata of an output file.

    Returns:
        The provenance, or an empty dict if the file is not an output of ours.
    """
    schema = read_schema(path)
    meta = (schema.metadata or {}) if schema is not None else {}
    return {
        k.decode()[len(PROVENANCE_PREFIX) :]: v.decode()
        for k, v in meta.items()
        if k.decode(errors="replace").startswith(PROVENANCE_PREFIX)
    }


def sha256_of(path: Path) -> str:
    """The SHA-256 of a file, hex, read from disk: for verification (writers hash with :class:`HashingSink`)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _name_digest(final: Path) -> str:
    """What the temporary names of ``final`` start with: a short hash of its name."""
    return hashlib.sha1(os.fsencode(final.name)).hexdigest()[:16]


def temporary_name(final: Path) -> Path:
    """A hidden temporary name beside ``final``: short whatever ``final`` is, unique per process."""
    return final.parent / f".{_name_digest(final)}.{_HOST}.{os.getpid()}.{next(_sequence)}{TEMP_SUFFIX}"


def discard(temporary: Path) -> bool:
    """Remove a temporary file; never raises.

    A file that cannot be removed now (a read-only folder) is remembered, and removed by
    :func:`remove_abandoned` or the next :func:`remove_stale_temporaries` of its final name.

    Returns:
        Whether it is gone.
    """
    try:
        temporary.unlink(missing_ok=True)
    except OSError as exc:
        log.warning(f"cannot remove the temporary file {temporary} now ({exc}); it is removed by the next attempt")
        with _abandoned_lock:
            _abandoned.add(temporary)
        return False
    with _abandoned_lock:
        _abandoned.discard(temporary)
    return True


def remove_abandoned() -> list[Path]:
    """Remove the temporary files this process could not remove earlier, where it can now.

    Returns:
        The files removed.
    """
    with _abandoned_lock:
        pending = sorted(_abandoned)
    return [path for path in pending if discard(path)]


def remove_stale_temporaries(final: Path) -> list[Path]:
    """Remove temporary files for ``final`` left by processes of this host that died, or abandoned by this one.

    Returns:
        The files removed.
    """
    removed: list[Path] = []
    with _abandoned_lock:
        abandoned = set(_abandoned)
    try:
        leftovers = list(final.parent.glob(f".{_name_digest(final)}.{_HOST}.*{TEMP_SUFFIX}"))
    except OSError:
        return removed  # an unreadable folder: creating the new temporary file reports it
    for leftover in leftovers:
        try:
            pid = int(leftover.name.split(".")[3])
        except (IndexError, ValueError):
            continue
        if (leftover in abandoned or (pid != os.getpid() and not _alive(pid))) and discard(leftover):
            removed.append(leftover)
    return removed


def link_into_place(temporary: Path, final: Path, replace: bool, *, sync: bool = True) -> None:
    """Publish a finished temporary file under its final name, atomically; the temporary name is gone after.

    Args:
        temporary: The finished, fsynced temporary file (in the folder of ``final``).
        final: Its final name.
        replace: Replace an existing file there (``os.replace``); otherwise ``os.link``, which
            fails if the name is taken, and the existing file is left untouched.
        sync: fsync the folder, so the new name is durable when this returns. A caller that
            links several files into one folder passes False and syncs the folder once after
            the last (:func:`fsync_dir`); until then a crash may lose the names.

    Raises:
        OutputError: ``replace`` is False and the final name exists.
        PublishError: Any other failure (a read-only folder ...), naming ``final``; the
            temporary file is removed (or, if even that fails, left to the next attempt).
    """
    try:
        if replace:
            os.replace(temporary, final)
        else:
            os.link(temporary, final)  # fails, atomically, if the name is taken
    except FileExistsError:
        discard(temporary)
        raise OutputError("refusing to overwrite a file this job did not write", final) from None
    except OSError as exc:
        discard(temporary)
        raise PublishError("publishing", final, exc) from exc
    if not replace:
        discard(temporary)  # only a second name of the published file now
    if not sync:
        return
    try:
        fsync_dir(final.parent)
    except OSError as exc:
        raise PublishError("syncing the folder of", final, exc) from exc


def _alive(pid: int) -> bool:
    """Whether a process runs (a zombie, killed but not yet reaped, does not)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            return fh.read().rsplit(b")", 1)[1].split()[0] != b"Z"
    except FileNotFoundError:
        return False
    except (OSError, IndexError):
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class HashingSink:
    """A raw, write-only file for ``pa.PythonFile`` that hashes the bytes on their way to disk.

    Arrow's writers only append to it (it cannot seek), so its digest is the digest of the file.
    Closing it does not close the file: its owner fsyncs and closes that.

    Args:
        fh: The open, unbuffered file.
    """

    def __init__(self, fh: BinaryIO) -> None:
        self._fh = fh
        self._digest = hashlib.sha256()
        self.bytes = 0
        self.closed = False

    def write(self, data: Any) -> int:
        """Hash ``data`` and write all of it (an unbuffered write may take only part)."""
        view = memoryview(data).cast("B")
        self._digest.update(view)  # hashlib releases the GIL for large pieces
        written = 0
        while written < len(view):
            written += self._fh.write(view[written:]) or 0
        self.bytes += written
        return written

    def tell(self) -> int:
        """Bytes written so far."""
        return self.bytes

    def flush(self) -> None:
        """Nothing is buffered here."""

    def close(self) -> None:
        """Mark the sink closed (the file stays open for its fsync)."""
        self.closed = True

    def writable(self) -> bool:
        """It is written."""
        return True

    def seekable(self) -> bool:
        """Never: a seek would make the digest wrong."""
        return False

    def readable(self) -> bool:
        """Never read."""
        return False

    def hexdigest(self) -> str:
        """The SHA-256 of everything written, hex."""
        return self._digest.hexdigest()


class OutputFile:
    """One output file, written to a temporary name and committed atomically.

    Args:
        final: The output path.
        schema: The schema (with provenance metadata).
        format: The file format.
        compression: Buffer compression (Parquet defaults to zstd).

    Raises:
        PublishError: The temporary file cannot be created (the error names ``final``).
    """

    def __init__(
        self,
        final: Path,
        schema: pa.Schema,
        format: OutputFormat = OutputFormat.FILE,
        compression: Compression | None = None,
    ) -> None:
        self.final = final
        self.format = OutputFormat.parse(format)
        codec = Compression.parse(compression)
        self.rows = 0
        self.bytes = 0
        self.sha256 = ""
        self.temporary = temporary_name(final)
        try:
            final.parent.mkdir(parents=True, exist_ok=True)
            remove_stale_temporaries(final)
            self._fh: BinaryIO = open(self.temporary, "xb", buffering=0)
        except OSError as exc:
            raise PublishError("creating", final, exc) from exc
        self._sink = HashingSink(self._fh)
        self._stream = pa.BufferedOutputStream(pa.PythonFile(self._sink, mode="w"), SINK_BUFFER)
        try:
            self._writer = self._open_writer(schema, codec)
        except BaseException as exc:
            self._fh.close()
            discard(self.temporary)
            if isinstance(exc, OSError):
                raise PublishError("writing", final, exc) from exc
            raise

    def _open_writer(self, schema: pa.Schema, compression: Compression | None) -> Any:
        if self.format is OutputFormat.PARQUET:
            codec = compression.value if compression is not None else "zstd"
            return pq.ParquetWriter(self._stream, schema, compression=codec)
        options = pa.ipc.IpcWriteOptions(compression=compression.value if compression else None)
        opener = pa.ipc.new_file if self.format is OutputFormat.FILE else pa.ipc.new_stream
        return opener(self._stream, schema, options=options)

    def write(self, batch: pa.RecordBatch) -> None:
        """Append a batch.

        Raises:
            PublishError: Writing failed (a full disk), naming the final path.
        """
        try:
            self._writer.write_batch(batch)
        except OSError as exc:
            raise PublishError("writing", self.final, exc) from exc
        self.rows += batch.num_rows

    def finish(self) -> None:
        """Close the writer and make the temporary file durable (before it is published); one fsync.

        ``bytes`` and ``sha256`` are those of the bytes written, which are not read again.

        Raises:
            PublishError: Writing failed (a full disk), naming the final path.
            OutputError: The file on disk is not the size of what was written through the sink.
        """
        try:
            self._writer.close()
            self._stream.close()  # hands Arrow's last buffered bytes to the sink
            os.fsync(self._fh.fileno())
            size = os.fstat(self._fh.fileno()).st_size
            self._fh.close()
        except OSError as exc:
            raise PublishError("writing", self.final, exc) from exc
        if size != self._sink.bytes:  # something wrote around the sink: its digest would not be the file's
            raise OutputError(f"{size} bytes on disk, {self._sink.bytes} written and hashed", self.final)
        self.bytes = size
        self.sha256 = self._sink.hexdigest()

    def publish(self, replace: bool) -> None:
        """Move the finished temporary file to its final name, in a local folder.

        The service publishes through its store (:meth:`herocollector.output.stores.OutputStore.publish`);
        this is the same local step for a file written on its own.

        Args:
            replace: Replace an existing file (one this job wrote before a crash); otherwise
                an existing file makes the commit fail and is left untouched.

        Raises:
            OutputError: ``replace`` is False and the final name exists.
            PublishError: Publishing failed (a read-only folder ...), naming the final path.
        """
        link_into_place(self.temporary, self.final, replace)

    def commit(self, replace: bool) -> None:
        """:meth:`finish`, then :meth:`publish`."""
        self.finish()
        self.publish(replace)

    def abort(self) -> None:
        """Drop the temporary file; never raises, so the error that made the caller abort is the one reported.

        Closing errors (ENOSPC) do not keep the file; one that cannot be removed now (a
        read-only folder) is removed by the next attempt of this process.
        """
        try:
            if not self._fh.closed:
                for close in (self._writer.close, self._stream.close):
                    try:
                        close()
                    except (pa.ArrowException, OSError, ValueError):
                        pass
                self._fh.close()
        except OSError:
            pass
        finally:
            discard(self.temporary)


def route_batch(batch: pa.RecordBatch, ids: np.ndarray, group_of: np.ndarray, outputs: list[OutputFile]) -> None:
    """Send each row of a batch to the output of its stream, rows in batch order within each output.

    One pass over the batch, whatever the number of outputs: the rows are sorted by output
    with a stable sort, the batch is gathered once in that order (Arrow's ``take``, whose
    memory pool keeps its pages, where NumPy's temporaries fault theirs in again each time),
    and each output gets a zero-copy slice. Outputs are written in the order of their index;
    one with no rows here is not written to.

    Args:
        batch: Rows with a ``stream_id`` column.
        ids: The stream ids that have an output, sorted.
        group_of: For each of ``ids``, the index of its output in ``outputs``.
        outputs: The open outputs.
    """
    if np.all(group_of == group_of[0]):
        outputs[int(group_of[0])].write(batch)
        return
    sids = batch.column("stream_id").to_numpy(zero_copy_only=False)
    row_group = group_of[np.searchsorted(ids, sids)]
    counts = np.bincount(row_group, minlength=len(outputs))
    if np.any(row_group[1:] < row_group[:-1]):
        # Stable: the batch order within each output. On uint8/uint16 keys NumPy sorts by radix.
        order = np.argsort(row_group.astype(_smallest_key(len(outputs))), kind="stable")
        batch = batch.take(pa.array(order))
    start = 0
    for index, count in enumerate(counts.tolist()):
        if count:
            outputs[index].write(batch.slice(start, count))
            start += count


def _smallest_key(groups: int) -> type[np.unsignedinteger[Any]]:
    """The smallest unsigned type that holds ``groups`` output indices."""
    return np.uint8 if groups <= 1 << 8 else np.uint16 if groups <= 1 << 16 else np.uint64


def fsync_dir(folder: Path) -> None:
    """Make a rename (or link) in ``folder`` durable."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
