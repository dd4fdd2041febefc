"""The trust boundary for reading a run: one resolved, opened directory, and only regular files in it.

A run directory is untrusted input. Everything herocollector reads from a run goes through a
:class:`RunDirectory`:

* The announced path is checked once (:func:`resolve_run`): a string without NUL bytes,
  absolute, resolved with ``realpath``, and inside ``allowed_roots`` (:func:`within_roots`, the
  package's one implementation of that check). A run *is* its resolved path: two spellings of
  one run (a symlink inside the roots and the real path) are one run.
* The directory is opened once (``O_DIRECTORY | O_NOFOLLOW``): below its allowed root one
  component at a time, none followed if it is a symlink; it must be where ``realpath`` said
  (``/proc/self/fd``); a folder on its path swapped for a symlink meanwhile is ``RunChanged``.
  Its identity is recorded (``st_dev``, ``st_ino``). Every entry is opened relative to that descriptor with
  ``O_NOFOLLOW | O_NONBLOCK`` and checked with ``fstat``: only regular files are read. A
  symlink, FIFO, device, socket or directory where a segment, ``streams/``, a stream file or
  ``_DONE`` belongs is a :class:`~herocollector.errors.MetadataError` naming the entry;
  ``O_NONBLOCK`` makes sure that opening a FIFO can never block a worker.
* A stream file is read up to :data:`MAX_STREAM_FILE_BYTES` (1 MiB); a larger one is refused.
* What was read is recorded in a :class:`~herocollector.run.inventory.RunInventory` (defined
  in :mod:`herocollector.run.inventory`, re-exported here): the directory's identity, each
  segment's name, device, inode, size and mtime at listing, and the same for each stream file.
  Cleanup may trash exactly the recorded segments, through a :class:`RunDirectory` too
  (:meth:`RunDirectory.lstat`, :meth:`RunDirectory.names`, :attr:`RunDirectory.fd`).
* A run that changes while it is collected fails with the retryable
  :class:`~herocollector.errors.RunChanged`: the directory removed, moved away or replaced, a
  segment replaced, shrunk, grown or removed, a segment added, a stream file changed. Reading a
  segment checks its size and identity at its end; :func:`check_unchanged` re-checks the whole
  inventory by path, which the output pipeline does after decoding and before publishing.
"""

from __future__ import annotations

import errno
import io
import os
import stat
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any, BinaryIO, cast

from herocollector.errors import CollectorError, MetadataError, RunChanged, RunRefused
from herocollector.run.inventory import FileRecord, RunInventory, describe_kind
from herocollector.run.logdir import DONE_MARKER, SEGMENT_SUFFIX, STREAMS_DIR

__all__ = [
    "MAX_STREAM_FILE_BYTES",
    "FileRecord",
    "RunDirectory",
    "RunInventory",
    "RunSegment",
    "check_path_argument",
    "check_unchanged",
    "job_key",
    "read_small_file",
    "resolve_run",
    "within_roots",
]

MAX_STREAM_FILE_BYTES = 1 << 20
"""Largest ``streams/*.json`` file read (1 MiB); a larger one is a ``MetadataError``."""

STREAM_FILE_SUFFIX = ".json"

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK


def check_path_argument(path: object, argument: str = "logger path", *, absolute: bool = True) -> str:
    """A path argument as a string, refused if it is not one, holds a NUL byte or (if asked) is relative.

    Args:
        path: The value given.
        argument: Its name in the error message.
        absolute: Also require an absolute path.

    Returns:
        ``os.fspath(path)``.

    Raises:
        RunRefused: Not a string path, a NUL byte, or relative (never retried).
    """
    if not isinstance(path, (str, os.PathLike)):
        raise RunRefused(f"{argument} must be a string path, got {type(path).__name__}")
    text = os.fspath(path)
    if not isinstance(text, str):
        raise RunRefused(f"{argument} must be a string path, got bytes")
    if "\x00" in text:
        where = text.index("\x00")
        rule = "must be absolute and hold no NUL byte" if absolute else "must hold no NUL byte"
        raise RunRefused(f"{argument} {rule}: it has a null byte at index {where}", repr(text))
    if absolute and not os.path.isabs(text):
        raise RunRefused(f"{argument} must be absolute", text)
    return text


def within_roots(path: str | Path, roots: Sequence[str | Path]) -> bool:
    """Whether ``path`` (resolved) lies inside one of ``roots`` (resolved), or is one.

    This is the package's one implementation of the ``allowed_roots`` check; ``roots`` from
    :class:`~herocollector.config.ServiceConfig` are resolved already, resolving them again is
    harmless.
    """
    real = Path(os.path.realpath(path))
    return any(real.is_relative_to(os.path.realpath(root)) for root in roots)


def resolve_run(path: object, allowed_roots: Sequence[str | Path] = (), *, absolute: bool = True) -> Path:
    """The identity of a run: its resolved path, if the configuration allows it.

    Use the result as the job key: one run announced under two spellings is one job.

    Args:
        path: The announced logger directory.
        allowed_roots: The run must resolve inside one of these; empty allows any path.
        absolute: Require ``path`` to be absolute (the service does; the library and the
            command line resolve a relative path against the working directory).

    Returns:
        ``realpath(path)``.

    Raises:
        RunRefused: Not a string, a NUL byte, relative, or outside ``allowed_roots``.
    """
    text = check_path_argument(path, absolute=absolute)
    real = Path(os.path.realpath(text))
    if allowed_roots and not within_roots(real, allowed_roots):
        raise RunRefused("logger path lies outside allowed_roots", text)
    return real


def job_key(path: str, allowed_roots: Sequence[str | Path] = ()) -> str:
    """The path a job for an announced run is journalled under: one key per run, however spelled.

    Args:
        path: The announced logger directory.
        allowed_roots: As for :func:`resolve_run`.

    Returns:
        The resolved run (:func:`resolve_run`); for a path the configuration refuses (so that
        its job can be journalled and fail with the refusal), the path normalised.
    """
    try:
        return str(resolve_run(path, allowed_roots))
    except RunRefused:
        return os.path.normpath(path) if isinstance(path, str) else repr(path)


def _opened_path(fd: int) -> str | None:
    """Where an open directory really is, as the kernel knows it (Linux ``/proc``); None if unknown."""
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return None


def _not_regular(what: str, mode: int, path: str | Path) -> MetadataError:
    return MetadataError(f"{what} is {describe_kind(mode)}, not a regular file; it is not read", path)


def _open_below(path: Path, roots: Sequence[str | Path], gone_is_change: bool) -> int:
    """Open ``path``: from the root of ``roots`` it lies in, one component at a time, never following a symlink."""
    real_roots = [Path(os.path.realpath(r)) for r in roots]
    root = next((r for r in real_roots if path.is_relative_to(r)), None)
    parts = path.relative_to(root).parts if root is not None else ()
    start = root if root is not None else path
    try:
        fd = os.open(start, _DIR_FLAGS)
    except OSError as exc:
        if root is not None:
            raise CollectorError(f"cannot open the allowed root {root}: {exc.strerror}", path) from None
        raise _open_error(exc, path, gone_is_change, True, _is_link(str(path), None)) from None
    for index, part in enumerate(parts):
        try:
            child = os.open(part, _DIR_FLAGS, dir_fd=fd)
        except OSError as exc:
            raise _open_error(exc, path, gone_is_change, index == len(parts) - 1, _is_link(part, fd)) from None
        finally:
            os.close(fd)
        fd = child
    return fd


def _is_link(name: str, dir_fd: int | None) -> bool:
    try:
        return stat.S_ISLNK(os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mode)
    except OSError:
        return False


def _open_error(exc: OSError, path: Path, gone_is_change: bool, last: bool, link: bool) -> CollectorError:
    """The error of a failed open of the run directory (``last``) or of a folder on its way (a ``link`` now?)."""
    if isinstance(exc, FileNotFoundError):
        if gone_is_change:
            return RunChanged("the run directory is gone (removed or moved away)", path)
        return CollectorError("logger directory does not exist", path)
    if link or exc.errno == errno.ELOOP:  # realpath saw no symlink here: it was swapped in since
        if last:
            return RunChanged("the run directory was replaced by a symlink", path)
        return RunChanged("the run directory moved while it was opened (a folder on its path is a symlink now)", path)
    # No retry can make a file a directory, or shorten a name: refused at once.
    if isinstance(exc, NotADirectoryError):
        return RunRefused("logger path is not a directory", path)
    if exc.errno == errno.ENAMETOOLONG:
        return RunRefused("logger path has a name longer than the filesystem allows (255 bytes)", path)
    return CollectorError(f"cannot open the logger directory: {exc.strerror}", path)


class RunDirectory:
    """One run directory, opened once; every file in it is opened relative to it.

    With ``allowed_roots``, the directory is opened from its root one component at a time with
    ``O_NOFOLLOW``, so a folder on its path swapped for a symlink after the check fails the
    open instead of leading elsewhere; without, the path is opened at once and
    ``/proc/self/fd`` tells whether it led where ``realpath`` said. Every later step (reading,
    and the cleaner's renames and deletions) is relative to the descriptor, so swapping the
    path afterwards changes nothing.

    Args:
        path: The logger directory as announced.
        allowed_roots: It must resolve inside one of these (empty: anywhere).
        absolute: Require an absolute ``path``.
        expect: An inventory taken earlier: the directory must still be that one
            (``RunChanged`` otherwise).

    Raises:
        RunRefused: See :func:`resolve_run`.
        CollectorError: The directory does not exist, is not a directory or cannot be opened.
        RunChanged: It moved while it was opened, or is not the directory of ``expect`` any more.
    """

    def __init__(
        self,
        path: object,
        allowed_roots: Sequence[str | Path] = (),
        *,
        absolute: bool = True,
        expect: RunInventory | None = None,
    ) -> None:
        self.path = resolve_run(path, allowed_roots, absolute=absolute)
        self._lock = threading.Lock()
        self._fd: int | None = _open_below(self.path, allowed_roots, gone_is_change=expect is not None)
        opened = _opened_path(self._fd)
        if opened is not None and opened != str(self.path):
            # O_NOFOLLOW guards only the last component: a parent swapped for a symlink
            # between realpath() and open() would lead elsewhere, perhaps outside the roots.
            self.close()
            raise RunChanged(f"the run directory moved while it was opened (it led to {opened})", self.path)
        st = os.fstat(self._fd)
        self.dev, self.ino = st.st_dev, st.st_ino
        if expect is not None and (self.dev, self.ino) != (expect.dev, expect.ino):
            self.close()
            raise RunChanged("the run directory was replaced since it was listed", self.path)
        self._streams: tuple[FileRecord, ...] = ()
        self._streams_id = (0, 0)

    # -- lifetime -----------------------------------------------------------------------------

    def close(self) -> None:
        """Close the directory; a segment not opened yet can no longer be opened. Idempotent."""
        with self._lock:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None

    def __enter__(self) -> RunDirectory:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _dir_fd(self) -> int:
        if self._fd is None:
            raise CollectorError("the run directory was closed while it was read", self.path)
        return self._fd

    @property
    def fd(self) -> int:
        """The directory's descriptor, for operations relative to it (``dir_fd=``).

        Raises:
            CollectorError: The directory was closed.
        """
        return self._dir_fd()

    def lstat(self, name: str) -> os.stat_result | None:
        """``lstat`` of an entry of the run, None if there is none."""
        try:
            return os.stat(name, dir_fd=self._dir_fd(), follow_symlinks=False)
        except FileNotFoundError:
            return None

    def names(self) -> list[str]:
        """The names in the run directory, sorted."""
        return sorted(os.listdir(self._dir_fd()))

    def check_identity(self, dev: int, ino: int, what: str = "collected") -> None:
        """Raise :class:`~herocollector.errors.RunChanged` unless this is the directory with ``dev``/``ino``."""
        if (self.dev, self.ino) != (dev, ino):
            raise RunChanged(
                f"the directory is not the one {what} (device:inode {self.dev}:{self.ino}, {what} {dev}:{ino}); "
                "it was replaced or the path now leads elsewhere",
                self.path,
            )

    # -- entries ------------------------------------------------------------------------------

    def is_done(self) -> bool:
        """Whether ``_DONE`` is there.

        Raises:
            MetadataError: ``_DONE`` is not a regular file (a symlink, FIFO, directory ...).
        """
        try:
            st = os.stat(DONE_MARKER, dir_fd=self._dir_fd(), follow_symlinks=False)
        except FileNotFoundError:
            return False
        if not stat.S_ISREG(st.st_mode):
            raise _not_regular(DONE_MARKER, st.st_mode, self.path / DONE_MARKER)
        return True

    def segments(self) -> tuple[FileRecord, ...]:
        """The ``*.seg.zst`` files, in name order, each checked to be a regular file.

        Raises:
            MetadataError: A segment is not a regular file.
            RunChanged: A listed segment vanished before it was looked at.
        """
        fd = self._dir_fd()
        records = []
        for name in sorted(n for n in os.listdir(fd) if n.endswith(SEGMENT_SUFFIX)):
            try:
                st = os.stat(name, dir_fd=fd, follow_symlinks=False)
            except FileNotFoundError:
                raise RunChanged("segment vanished while the run was listed", self.path / name) from None
            if not stat.S_ISREG(st.st_mode):
                raise _not_regular("segment", st.st_mode, self.path / name)
            records.append(FileRecord.of(name, st))
        return tuple(records)

    def stream_files(self) -> list[tuple[Path, bytes]]:
        """Read every ``streams/*.json``, in name order, each at most :data:`MAX_STREAM_FILE_BYTES`.

        Returns:
            ``(path, contents)`` of each stream file.

        Raises:
            MetadataError: No ``streams/`` folder, ``streams/`` or a stream file that is not
                what it should be (a symlink, FIFO ...), a file over the size limit, or a
                read error.
        """
        folder = self.path / STREAMS_DIR
        fd = self._dir_fd()
        try:
            sfd = os.open(STREAMS_DIR, _DIR_FLAGS, dir_fd=fd)
        except FileNotFoundError:
            raise MetadataError(f"not a logger directory: no {STREAMS_DIR}/ folder", self.path) from None
        except OSError as exc:
            if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                mode = os.stat(STREAMS_DIR, dir_fd=fd, follow_symlinks=False).st_mode
                raise MetadataError(
                    f"{STREAMS_DIR}/ is {describe_kind(mode)}, not a directory; it is not read", folder
                ) from None
            raise MetadataError(f"cannot open {STREAMS_DIR}/: {exc.strerror}", folder) from None
        try:
            sst = os.fstat(sfd)
            out: list[tuple[Path, bytes]] = []
            records: list[FileRecord] = []
            for name in sorted(n for n in os.listdir(sfd) if n.endswith(STREAM_FILE_SUFFIX)):
                st, data = read_small_file(sfd, name, folder / name, MAX_STREAM_FILE_BYTES)
                records.append(FileRecord(name, st.st_dev, st.st_ino, len(data), st.st_mtime_ns))
                out.append((folder / name, data))
        finally:
            os.close(sfd)
        self._streams = tuple(records)
        self._streams_id = (sst.st_dev, sst.st_ino)
        return out

    def inventory(self, segments: tuple[FileRecord, ...] | None = None) -> RunInventory:
        """The inventory: the directory, ``segments`` (default: listed now) and the stream files read."""
        if segments is None:
            segments = self.segments()
        return RunInventory(self.path, self.dev, self.ino, segments, self._streams, *self._streams_id)

    def sources(self, segments: Sequence[FileRecord]) -> list[RunSegment]:
        """The segments as :class:`~herocollector.decode.codec.SegmentSource` objects, opened lazily.

        Each is opened relative to this directory, only if it is still the regular file
        that was listed, and checked again at its end (size and identity).
        """
        return [RunSegment(self, record) for record in segments]

    def _open_segment(self, record: FileRecord) -> int:
        path = os.path.join(self.path, record.name)
        with self._lock:  # the directory cannot be closed (and its number reused) under us
            fd = self._dir_fd()
            try:
                sfd = os.open(record.name, _FILE_FLAGS, dir_fd=fd)
            except FileNotFoundError:
                raise RunChanged("segment is gone", path) from None
            except OSError as exc:
                if exc.errno == errno.ELOOP:
                    raise MetadataError("segment is a symlink, not a regular file; it is not read", path) from None
                raise CollectorError(f"cannot open segment: {exc.strerror}", path) from None
        try:
            st = os.fstat(sfd)
            if not stat.S_ISREG(st.st_mode):
                raise _not_regular("segment", st.st_mode, path)
            if (st.st_dev, st.st_ino) != (record.dev, record.ino):
                raise RunChanged("segment was replaced since the run was listed", path)
            if st.st_size != record.size:
                raise RunChanged(f"segment changed size since the run was listed: {record.size} -> {st.st_size}", path)
            os.set_blocking(sfd, True)
        except BaseException:
            os.close(sfd)
            raise
        return sfd

    def verify(self, inventory: RunInventory) -> None:
        """Check that the run is still as ``inventory`` recorded it.

        Raises:
            RunChanged: The directory is gone or replaced, a segment is gone, replaced, of
                another size or mtime, a segment appeared, or a stream file changed.
        """
        where = inventory.path
        try:
            st = os.stat(where, follow_symlinks=False)
        except FileNotFoundError:
            raise RunChanged("the run directory is gone (removed or moved away)", where) from None
        if (st.st_dev, st.st_ino) != (inventory.dev, inventory.ino) or not stat.S_ISDIR(st.st_mode):
            raise RunChanged("the run directory was replaced", where)
        if (self.dev, self.ino) != (inventory.dev, inventory.ino):
            raise RunChanged("the run directory was replaced", where)
        fd = self._dir_fd()
        names = sorted(n for n in os.listdir(fd) if n.endswith(SEGMENT_SUFFIX))
        listed = [s.name for s in inventory.segments]
        if names != listed:
            added, gone = sorted(set(names) - set(listed)), sorted(set(listed) - set(names))
            raise RunChanged(f"the segments changed while the run was read: added {added}, gone {gone}", where)
        for record in inventory.segments:
            _same_file(fd, record, where, "segment")
        if inventory.streams_ino:
            try:
                sfd = os.open(STREAMS_DIR, _DIR_FLAGS, dir_fd=fd)
            except OSError:
                raise RunChanged(f"{STREAMS_DIR}/ is gone or replaced", where / STREAMS_DIR) from None
            try:
                sst = os.fstat(sfd)
                if (sst.st_dev, sst.st_ino) != (inventory.streams_dev, inventory.streams_ino):
                    raise RunChanged(f"{STREAMS_DIR}/ was replaced", where / STREAMS_DIR)
                names = sorted(n for n in os.listdir(sfd) if n.endswith(STREAM_FILE_SUFFIX))
                if names != [s.name for s in inventory.streams]:
                    raise RunChanged("the stream files changed while the run was read", where / STREAMS_DIR)
                for record in inventory.streams:
                    _same_file(sfd, record, where / STREAMS_DIR, "stream file")
            finally:
                os.close(sfd)


def _same_file(dir_fd: int, record: FileRecord, folder: Path, what: str) -> None:
    """Raise ``RunChanged`` unless ``record.name`` in the folder is still the file recorded."""
    try:
        st = os.stat(record.name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        raise RunChanged(f"{what} is gone", folder / record.name) from None
    if (st.st_dev, st.st_ino) != (record.dev, record.ino) or not stat.S_ISREG(st.st_mode):
        raise RunChanged(f"{what} was replaced", folder / record.name)
    if st.st_size != record.size:
        change = "shrank" if st.st_size < record.size else "grew"
        message = f"{what} {change} from {record.size} to {st.st_size} bytes while the run was read"
        raise RunChanged(message, folder / record.name)
    if st.st_mtime_ns != record.mtime_ns:
        raise RunChanged(f"{what} was modified while the run was read", folder / record.name)


def read_small_file(dir_fd: int | None, name: str, path: Path, limit: int) -> tuple[os.stat_result, bytes]:
    """A regular file of at most ``limit`` bytes, opened relative to ``dir_fd`` without following symlinks.

    Args:
        dir_fd: The folder's descriptor (None: ``name`` is relative to the working directory).
        name: The file's name in the folder.
        path: The file's path in errors.
        limit: Largest size read.

    Returns:
        The ``fstat`` of the open file and its contents.

    Raises:
        MetadataError: Not a regular file (a symlink is not followed), too large, or unreadable.
        RunChanged: It vanished after it was listed.
    """
    try:
        st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        raise RunChanged("file vanished while the run was listed", path) from None
    if not stat.S_ISREG(st.st_mode):
        raise _not_regular("stream file", st.st_mode, path)
    if st.st_size > limit:
        raise MetadataError(f"stream file is {st.st_size} bytes, more than the limit of {limit}", path)
    try:
        fd = os.open(name, _FILE_FLAGS, dir_fd=dir_fd)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise MetadataError("stream file is a symlink, not a regular file; it is not read", path) from None
        raise MetadataError(f"cannot read stream metadata: {exc.strerror}", path) from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise _not_regular("stream file", st.st_mode, path)
        chunks: list[bytes] = []
        held = 0
        while held <= limit:
            chunk = os.read(fd, limit + 1 - held)
            if not chunk:
                break
            chunks.append(chunk)
            held += len(chunk)
        if held > limit:
            raise MetadataError(f"stream file is more than the limit of {limit} bytes", path)
        return st, b"".join(chunks)
    except OSError as exc:
        raise MetadataError(f"cannot read stream metadata: {exc.strerror}", path) from None
    finally:
        os.close(fd)


class RunSegment:
    """A segment of a :class:`RunDirectory`, as the decoder opens it (a ``SegmentSource``).

    Attributes:
        name: The segment's path (what errors name).
        record: What was listed.
    """

    def __init__(self, run: RunDirectory, record: FileRecord) -> None:
        self._run = run
        self.record = record
        self.name = os.path.join(run.path, record.name)

    def open(self) -> BinaryIO:
        """Open the segment relative to the run directory; see :meth:`RunDirectory.sources`."""
        fd = self._run._open_segment(self.record)
        return cast(BinaryIO, _CheckedSegment(fd, self.record, self.name))


class _CheckedSegment(io.RawIOBase):
    """A segment file that, at its end, checks it read exactly the listed bytes of the same file."""

    def __init__(self, fd: int, record: FileRecord, path: str) -> None:
        self._file = io.FileIO(fd, "rb", closefd=True)
        self._record = record
        self._path = path
        self._read = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        got = self._file.readinto(buffer) or 0
        self._read += got
        if got == 0 or self._read > self._record.size:
            self._check_end()
        return got

    def _check_end(self) -> None:
        st = os.fstat(self._file.fileno())
        if (st.st_dev, st.st_ino) != (self._record.dev, self._record.ino):
            raise RunChanged("segment was replaced while it was read", self._path)
        if self._read != self._record.size or st.st_size != self._record.size:
            raise RunChanged(
                f"segment changed while it was read: listed {self._record.size} bytes, read {self._read}, "
                f"now {st.st_size}",
                self._path,
            )

    def close(self) -> None:
        self._file.close()
        super().close()


def check_unchanged(inventory: RunInventory) -> None:
    """Re-check a run against its inventory by path (the directory opened afresh).

    Raises:
        RunChanged: See :meth:`RunDirectory.verify`.
    """
    with RunDirectory(inventory.path, absolute=False, expect=inventory) as run:
        run.verify(inventory)
