"""Every exception herocollector raises, in one tree.

::

    CollectorError                      base; ``.path`` names the file or directory
    ├── MetadataError                   streams/*.json or the logger directory is invalid
    ├── SegmentError                    a .seg.zst is damaged; ``.offset`` is the byte offset
    │   └── UnknownStreamError          a record's stream id has no streams/ entry
    ├── OutputError                     template, path confinement, refused or failed write
    │   ├── LabelPathError              a label value would leave its own path segment
    │   ├── OutputTakenError            the output path already belongs to another job (``.owner``)
    │   ├── PublishError                writing or publishing an output failed (ENOSPC, EROFS ...)
    │   ├── SchemaConflict              a run's column has another type than its table's (``.column``)
    │   ├── CommitError                 a table commit failed (retried; nothing half-committed)
    │   └── FooterError                 a Parquet footer is damaged, or files cannot be merged (file, byte)
    ├── DoneTimeout                     ``_DONE`` did not appear within ``timeout``
    ├── RunChanged                      the run changed while it was read (retried; nothing published)
    ├── RunRefused                      the configuration forbids the run (never retried)
    ├── JournalError                    the job journal failed (retried; never kills a worker)
    │   └── LeaseLost                   another actor holds the job now: this one is fenced out
    ├── Cancelled                       the service is closing; the job goes back to pending
    ├── StateDirError                   the state_dir cannot be used (full, read-only); names the file
    ├── Busy                            a remote call found no free thread in time; it was not run
    ├── ActorNotFound                   no HERO of that name answered in the realm in time
    └── ConfigError (also ValueError)   invalid configuration or arguments
        └── StateDirLocked              another actor holds the state_dir

Whether a failed job is tried again is a property of its error, :attr:`CollectorError.retryable`:
input errors are retried (a run can still be settling on a network filesystem), a refusal or
a configuration error is not. An exception that is not a ``CollectorError`` (an ``OSError``
such as ENOSPC, say) is retryable too.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol


class _Owner(Protocol):
    """What an error needs of the job that owns an output (a :class:`herocollector.journal.base.Job`)."""

    @property
    def id(self) -> int: ...

    @property
    def path(self) -> str | None: ...


class CollectorError(Exception):
    """Base class of every error herocollector raises about its input or its work.

    Args:
        message: What went wrong.
        path: The file or directory concerned, if any.

    Attributes:
        retryable: Whether trying the same job again may succeed.
    """

    retryable: bool = True

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


class OutputError(CollectorError):
    """A template that cannot be rendered, a path outside ``output_root``, or a refused write."""


class LabelPathError(OutputError):
    """A label value that would leave its own path segment (``/``, ``..``, ``.`` or empty).

    Retrying cannot change the labels of a recorded run, so this is not retried.
    """

    retryable = False


class OutputTakenError(OutputError):
    """An output path already belongs to (was written or reserved by) another job.

    Args:
        path: The output path.
        owner: The job that owns it.

    Attributes:
        owner: The job that owns the path.
    """

    def __init__(self, path: str, owner: _Owner) -> None:
        super().__init__(f"already written by the job for {owner.path}", path)
        self.path: str = path
        self.owner = owner


class SchemaConflict(OutputError):
    """A column of a run has another type than the same column of the table it is committed to.

    Not retried: the run's labels do not change. Pin the type with ``columns`` to cast instead.

    Args:
        table: The table.
        column: The column.
        table_type: Its type in the table.
        run_type: Its type in the run.
    """

    retryable = False

    def __init__(self, table: str, column: str, table_type: str, run_type: str) -> None:
        super().__init__(
            f"column {column!r} is {run_type} in this run but {table_type} in the table; pin its type in "
            f"columns (e.g. {{{column!r}: 'string'}}) to cast it, or write the run to another table",
            table,
        )
        self.column = column
        self.table_type = table_type
        self.run_type = run_type


class CommitError(OutputError):
    """Committing to a table failed (the store, or a conflict that outlasted the retries).

    A Delta commit either lands whole or not at all, so the job is retried; data files written
    for a commit that did not land are unreferenced, and vacuum removes them.
    """

    retryable = True


class FooterError(OutputError):
    """A Parquet footer that cannot be read, or Parquet files that cannot be merged into one.

    The message names the file and, for a damaged footer, the byte offset. Not retried: the
    files do not change; the table keeps them as they are.
    """

    retryable = False


class PublishError(OutputError):
    """Writing or publishing an output (or a manifest) failed: a full disk, a read-only folder.

    The message is the original cause (``strerror``) with the final output path and its folder,
    never a temporary name. Retried: space may be freed, the folder made writable again.

    Args:
        action: What was being done (``publishing``, ``writing`` ...).
        final: The final output path (or object URI).
        cause: The original error.
        folder: The local folder where it failed, if not the one of ``final`` (the staging
            folder of an object-store output).

    Attributes:
        action: As given.
        cause: The original error.
        errno: The original ``errno``, if any.
        folder: The folder where it failed.
    """

    def __init__(self, action: str, final: str | Path, cause: BaseException, folder: str | Path | None = None) -> None:
        self.action = action
        self.cause = cause
        self.errno: int | None = getattr(cause, "errno", None)
        text = str(final)
        self.folder = str(folder) if folder is not None else text.rsplit("/", 1)[0] if "/" in text else "."
        reason = getattr(cause, "strerror", None) or str(cause) or type(cause).__name__
        code = f"[Errno {self.errno}] " if self.errno is not None else ""
        super().__init__(f"{action} failed: {code}{reason} (in the folder {self.folder})", final)

    def at(self, final: str | Path) -> PublishError:
        """The same failure, named by the output it was for (an object URI instead of its staged file)."""
        moved = PublishError(self.action, final, self.cause, self.folder)
        moved.__cause__ = self.cause
        return moved


class DoneTimeout(CollectorError):
    """The run's ``_DONE`` marker did not appear within ``timeout`` of its announcement."""


class RunChanged(CollectorError):
    """The run directory or a file in it changed while it was collected (removed, moved, replaced, resized).

    Nothing is published for such an attempt; it is retried, since a run can still be settling.
    """


class RunRefused(CollectorError):
    """A run the configuration forbids (outside ``allowed_roots``, a relative path ...)."""

    retryable = False


class JournalError(CollectorError):
    """The job journal could not be read or written."""


class LeaseLost(JournalError):
    """The job's lease expired and another actor took it: this actor is fenced out.

    Its fencing token is stale, so it publishes nothing more for the job and records nothing.
    """

    retryable = False


class Cancelled(CollectorError):
    """The service is closing; the job is put back without counting the attempt."""


class Busy(CollectorError):
    """A remote call waited too long for a free thread of the actor; it was not run, so nothing was done."""


class ActorNotFound(CollectorError):
    """No HERO of the name answered discovery in the realm before the timeout; the message says how to check."""


class StateDirError(CollectorError):
    """The ``state_dir`` cannot be used: its lock or journal file cannot be created or written."""

    retryable = False


class ConfigError(CollectorError, ValueError):
    """Invalid configuration: an actor argument, a CLI option or a template."""

    retryable = False


class StateDirLocked(ConfigError):
    """Another actor already works on this ``state_dir``; the message names it."""
