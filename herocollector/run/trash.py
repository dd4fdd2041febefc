"""Two-phase cleanup: segments are first renamed into the trash, deleted only after a grace period.

``soft_delete`` renames ``00000.seg.zst`` to ``00000.seg.zst.trash-<unix time>`` (and, without
``keep_meta``, ``streams`` to ``streams.trash-<unix time>``) inside the logger directory. A
trashed file no longer matches ``*.seg.zst``, so nothing collects it again, yet it is still
there: :func:`restore` renames it back. :func:`purge` deletes trash older than the grace
period. Renames within a directory are atomic, so a crash leaves every file either in place
or in the trash, never half deleted.

Those three act on whatever a path names now, which is right for a folder the caller owns (the
``herocollector cleanup`` command) and wrong for a service that cleans runs other people can
change. The service uses the *recorded* operations instead:

* a run is opened as a :class:`~herocollector.run.rundir.RunDirectory` (below one of the
  ``allowed_roots`` one component at a time, never following a symlink), whose descriptor
  every later step is relative to, so swapping the path for a symlink afterwards changes nothing;
* what may be trashed is the :class:`~herocollector.run.inventory.RunInventory` the collection
  read (or :func:`take_inventory`, the cleaner's look right after it): the directory's identity
  and each segment's name, device, inode, size and mtime; :func:`plan_trash` checks the run
  against it;
* :func:`trash_recorded` renames exactly the recorded segments (checked by identity, never
  replacing an existing name) and returns a :class:`TrashEntry` for each, which the caller
  records;
* :func:`restore_recorded` and :func:`purge_recorded` act only on those recorded entries, again
  checked by identity. A user's file that merely looks like trash is never touched.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import json
import os
import re
import shutil
import stat
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from herocollector.errors import MetadataError, RunChanged
from herocollector.run.inventory import DIR, FILE, LINK, OTHER, FileRecord, RunInventory
from herocollector.run.logdir import SEGMENT_SUFFIX, STREAMS_DIR, segment_files
from herocollector.run.rundir import RunDirectory

__all__ = [
    "DIR",
    "FILE",
    "LINK",
    "OTHER",
    "TRASH_MANIFEST",
    "TrashEntry",
    "move_to_trash",
    "name_trash",
    "plan_trash",
    "purge",
    "purge_recorded",
    "record_trash",
    "recorded_trash",
    "rename_noreplace",
    "restore",
    "restore_recorded",
    "soft_delete",
    "take_inventory",
    "trash_recorded",
    "trashed",
    "unrecorded_trash",
]

_TRASH = re.compile(r"^(?P<name>.+)\.trash-(?P<stamp>\d+)$")


def _trashed_name(path: Path, now: float) -> Path:
    return path.with_name(f"{path.name}.trash-{int(now)}")


def soft_delete(run: Path, keep_meta: bool = True, now: float | None = None) -> list[Path]:
    """Move a run's segments (and without ``keep_meta`` its ``streams/``) into the trash.

    Args:
        run: The logger directory.
        keep_meta: Keep ``streams/`` in place.
        now: Time stamp of the deletion (default: now).

    Returns:
        The trash paths created.
    """
    now = time.time() if now is None else now
    moved = []
    targets = segment_files(run)
    streams = run / STREAMS_DIR
    if not keep_meta and streams.is_dir() and not streams.is_symlink():
        targets.append(streams)
    for path in targets:
        trashed = _trashed_name(path, now)
        path.rename(trashed)
        moved.append(trashed)
    return moved


def trashed(run: Path) -> list[tuple[Path, float]]:
    """The trash of a run: each trashed path with the time it was trashed."""
    found = []
    for path in sorted(run.iterdir()) if run.is_dir() else []:
        match = _TRASH.match(path.name)
        if match and (match["name"].endswith(SEGMENT_SUFFIX) or match["name"] == STREAMS_DIR):
            found.append((path, float(match["stamp"])))
    return found


def restore(run: Path) -> list[Path]:
    """Move a run's trash back in place (where the original name is free).

    Returns:
        The restored paths.
    """
    restored = []
    for path, _ in trashed(run):
        match = _TRASH.match(path.name)
        if match is None:  # trashed() lists only names that match
            continue
        original = path.with_name(match["name"])
        if not original.exists():
            path.rename(original)
            restored.append(original)
    return restored


def purge(run: Path, grace: float, now: float | None = None) -> list[Path]:
    """Delete the trash of a run that is older than ``grace`` seconds.

    Returns:
        The deleted paths.
    """
    now = time.time() if now is None else now
    deleted = []
    for path, stamp in trashed(run):
        if now - stamp < grace:
            continue
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)
        deleted.append(path)
    return deleted


# ----------------------------------------------------------------------------------------
# Recorded operations: only what was collected, only what was trashed, checked by identity
# ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TrashEntry:
    """One entry this service moved into a run's trash.

    Attributes:
        original: Its name before (``00000.seg.zst``, ``streams``).
        name: Its name in the trash (``00000.seg.zst.trash-<unix time>``).
        entry: Its identity (the inode does not change with a rename).
        children: For a trashed ``streams/``: the regular files it held.
    """

    original: str
    name: str
    entry: FileRecord
    children: tuple[FileRecord, ...] = field(default=())

    def to_json(self) -> dict[str, Any]:
        """A JSON-friendly form."""
        return {
            "original": self.original,
            "name": self.name,
            "entry": self.entry.to_json(),
            "children": [c.to_json() for c in self.children],
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> TrashEntry:
        """The entry :meth:`to_json` gave."""
        return cls(
            str(data["original"]),
            str(data["name"]),
            FileRecord.from_json(data["entry"]),
            tuple(FileRecord.from_json(c) for c in data.get("children", [])),
        )


def take_inventory(run: RunDirectory) -> RunInventory:
    """The cleaner's look at a run: its regular segment files and the links named like segments.

    Unlike :meth:`RunDirectory.segments <herocollector.run.rundir.RunDirectory.segments>`, which
    refuses a run with anything but regular segment files, this lists what is there: a symlink
    is recorded as a link (moved aside, never followed), anything else is left alone.
    """
    segments, links = [], []
    for name in run.names():
        if not name.endswith(SEGMENT_SUFFIX):
            continue
        st = run.lstat(name)
        if st is None:
            continue
        entry = FileRecord.of(name, st)
        if entry.kind == FILE:
            segments.append(entry)
        elif entry.kind == LINK:
            links.append(entry)
    return RunInventory(run.path, run.dev, run.ino, tuple(segments), links=tuple(links))


_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK

RENAME_NOREPLACE = 1
_libc: Any = None


def _renameat2() -> Any:
    global _libc
    if _libc is None:
        try:
            _libc = ctypes.CDLL(None, use_errno=True)
        except OSError:  # pragma: no cover - no C library to load
            _libc = False
    return getattr(_libc, "renameat2", None) if _libc else None


def rename_noreplace(dir_fd: int, src: str, dst: str) -> bool:
    """Rename ``src`` to ``dst`` inside ``dir_fd``, never replacing an existing ``dst``.

    ``os.rename`` silently replaces a file (or an empty folder) of the new name, which would
    delete a user's entry; Linux's ``renameat2(RENAME_NOREPLACE)`` refuses atomically. Where it
    is missing or the filesystem does not support it, the name is checked first.

    Returns:
        False if ``dst`` exists (nothing renamed).
    """
    call = _renameat2()
    if call is not None:
        result = call(dir_fd, os.fsencode(src), dir_fd, os.fsencode(dst), RENAME_NOREPLACE)
        if result == 0:
            return True
        code = ctypes.get_errno()
        if code == errno.EEXIST:
            return False
        if code not in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP):
            raise OSError(code, os.strerror(code), src)
    try:
        os.stat(dst, dir_fd=dir_fd, follow_symlinks=False)
        return False
    except FileNotFoundError:
        pass
    os.rename(src, dst, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
    return True


def plan_trash(run: RunDirectory, inventory: RunInventory | None, keep_meta: bool = True) -> list[FileRecord]:
    """What :func:`trash_recorded` would move, after checking the run against its inventory.

    Without an inventory (a forced cleanup of a run that was never collected), the segment
    files and links there now.

    Raises:
        RunChanged: The directory is not the one collected, a recorded segment is missing or
            changed, or a segment file appeared after the collection (its data is not collected).
    """
    if inventory is not None:
        run.check_identity(inventory.dev, inventory.ino)
    current = take_inventory(run)
    if inventory is None:
        planned = [*current.segments, *current.links]
    else:
        recorded = {s.name: s for s in inventory.segments}
        for entry in inventory.segments:
            st = run.lstat(entry.name)
            if st is None:
                raise RunChanged(f"segment {entry.name} was collected but is gone", run.path)
            if not entry.same(st):
                raise RunChanged(
                    f"segment {entry.name} is not the file collected (device:inode:size:mtime "
                    f"{st.st_dev}:{st.st_ino}:{st.st_size}:{st.st_mtime_ns}, collected "
                    f"{entry.dev}:{entry.ino}:{entry.size}:{entry.mtime_ns})",
                    run.path,
                )
        extra = [s.name for s in current.segments if s.name not in recorded]
        if extra:
            raise RunChanged(f"segment(s) {', '.join(extra)} appeared after the collection; not collected", run.path)
        # A symlink named like a segment holds no data of the run: the link itself is moved aside
        # (never its target), so the cleaned run has no segment names left to collect.
        planned = [*inventory.segments, *current.links]
    if not keep_meta:
        st = run.lstat(STREAMS_DIR)
        if st is not None and stat.S_ISDIR(st.st_mode):
            planned.append(FileRecord.of(STREAMS_DIR, st))
    return planned


def _children(run: RunDirectory, entry: FileRecord) -> tuple[FileRecord, ...]:
    """The regular files of a directory entry of the run (opened without following symlinks)."""
    fd = os.open(entry.name, _DIR_FLAGS, dir_fd=run.fd)
    try:
        st = os.fstat(fd)
        if (st.st_dev, st.st_ino) != (entry.dev, entry.ino):
            raise RunChanged(f"{entry.name}/ changed while it was trashed", run.path)
        found = []
        for name in sorted(os.listdir(fd)):
            child = os.stat(name, dir_fd=fd, follow_symlinks=False)
            if stat.S_ISREG(child.st_mode):
                found.append(FileRecord.of(name, child))
        return tuple(found)
    finally:
        os.close(fd)


def name_trash(run: RunDirectory, planned: Sequence[FileRecord], now: float | None = None) -> list[TrashEntry]:
    """Choose the trash name of each planned entry, renaming nothing yet (so it can be recorded first).

    Each gets ``<name>.trash-<unix time>``, or a later stamp if that name is taken: a user's
    file is never replaced.
    """
    stamp = int(time.time() if now is None else now)
    named: list[TrashEntry] = []
    taken: set[str] = set()
    for entry in planned:
        children = _children(run, entry) if entry.kind == DIR else ()
        for offset in range(1000):
            name = f"{entry.name}.trash-{stamp + offset}"
            if name not in taken and run.lstat(name) is None:
                taken.add(name)
                named.append(TrashEntry(entry.name, name, entry, children))
                break
    return named


def move_to_trash(run: RunDirectory, entries: Iterable[TrashEntry]) -> list[TrashEntry]:
    """Rename named entries into the trash, relative to the run's descriptor, never replacing a name.

    An entry whose identity changed since it was named, or whose trash name was taken
    meanwhile, is left in place.

    Returns:
        What was moved.
    """
    moved = []
    for item in entries:
        st = run.lstat(item.original)
        if st is None or not item.entry.same(st):
            continue
        if rename_noreplace(run.fd, item.original, item.name):
            moved.append(item)
    return moved


def trash_recorded(run: RunDirectory, planned: Sequence[FileRecord], now: float | None = None) -> list[TrashEntry]:
    """:func:`name_trash` and :func:`move_to_trash` in one: what was moved, for the caller to record."""
    return move_to_trash(run, name_trash(run, planned, now))


def restore_recorded(run: RunDirectory, entries: Iterable[TrashEntry]) -> list[TrashEntry]:
    """Rename recorded trash entries back, where they are still ours and the original name is free.

    Returns:
        The entries put back.
    """
    restored = []
    for item in entries:
        st = run.lstat(item.name)
        if st is None or not item.entry.same(st):
            continue
        if rename_noreplace(run.fd, item.name, item.original):
            restored.append(item)
    return restored


def purge_recorded(run: RunDirectory, entries: Iterable[TrashEntry]) -> tuple[list[TrashEntry], list[str]]:
    """Delete recorded trash entries for good, each only if it is still the entry trashed.

    A trashed ``streams/`` loses only the files it held when it was trashed; it is removed
    when it is empty then. Nothing is followed: every call is relative to a directory
    descriptor, with ``follow_symlinks=False``.

    Returns:
        The entries deleted (or already gone), and what was left alone and why.
    """
    done: list[TrashEntry] = []
    kept: list[str] = []
    for item in entries:
        st = run.lstat(item.name)
        if st is None:
            done.append(item)
            continue
        if not item.entry.same(st):
            kept.append(f"{item.name} is not the entry trashed (replaced); left alone")
            continue
        if item.entry.kind != DIR:
            # Between the check and the unlink only the holder of the run's folder can swap the
            # name, and it would lose an entry of its own making; the check keeps accidents out.
            os.unlink(item.name, dir_fd=run.fd)
            done.append(item)
            continue
        fd = os.open(item.name, _DIR_FLAGS, dir_fd=run.fd)
        try:
            for child in item.children:
                try:
                    found = os.stat(child.name, dir_fd=fd, follow_symlinks=False)
                except FileNotFoundError:
                    continue
                if child.same(found):
                    os.unlink(child.name, dir_fd=fd)
                else:
                    kept.append(f"{item.name}/{child.name} changed after it was trashed; left alone")
        finally:
            os.close(fd)
        try:
            os.rmdir(item.name, dir_fd=run.fd)
            done.append(item)
        except OSError as exc:
            if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                raise
            kept.append(f"{item.name}/ holds files that were not trashed; left in place")
    return done, kept


# ----------------------------------------------------------------------------------------
# The command line's record of what it trashed: a manifest inside the run
# ----------------------------------------------------------------------------------------

TRASH_MANIFEST = ".herocollector-trash.json"
"""The file in a run that lists what ``herocollector cleanup`` moved into its trash (hidden; no segment name)."""
MAX_MANIFEST_BYTES = 4 << 20


def recorded_trash(run: RunDirectory) -> list[TrashEntry]:
    """The entries the command line recorded in the run's :data:`TRASH_MANIFEST` (none without one).

    Raises:
        MetadataError: The manifest is not a regular file, too large, or not a manifest.
    """
    path = run.path / TRASH_MANIFEST
    try:
        fd = os.open(TRASH_MANIFEST, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=run.fd)
    except FileNotFoundError:
        return []
    except OSError as exc:
        raise MetadataError(f"the trash manifest cannot be read: {exc.strerror}", path) from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise MetadataError("the trash manifest is not a regular file", path)
        data = os.read(fd, MAX_MANIFEST_BYTES + 1)
    finally:
        os.close(fd)
    if len(data) > MAX_MANIFEST_BYTES:
        raise MetadataError(f"the trash manifest is more than {MAX_MANIFEST_BYTES} bytes", path)
    try:
        return [TrashEntry.from_json(item) for item in json.loads(data)["entries"]]
    except (ValueError, TypeError, KeyError, IndexError) as exc:
        raise MetadataError(f"the trash manifest is damaged: {type(exc).__name__}: {exc}", path) from None


def record_trash(run: RunDirectory, entries: Sequence[TrashEntry]) -> None:
    """Write the run's :data:`TRASH_MANIFEST` atomically, also when ``entries`` is empty.

    The manifest is written to a temporary file of this process, fsynced and renamed over the
    old one, so a crash leaves the old record or the new one, never half of one. An empty one
    is kept: it says the run's trash is recorded, so nothing unrecorded in it is ours
    (:func:`unrecorded_trash`).
    """
    temporary = f"{TRASH_MANIFEST}.{os.getpid()}.tmp"
    with contextlib.suppress(FileNotFoundError):
        os.unlink(temporary, dir_fd=run.fd)  # a leftover of a process of this pid that died
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    fd = os.open(temporary, flags, 0o644, dir_fd=run.fd)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as file:
            json.dump({"entries": [e.to_json() for e in entries]}, file)
            file.flush()
            os.fsync(file.fileno())
        os.rename(temporary, TRASH_MANIFEST, src_dir_fd=run.fd, dst_dir_fd=run.fd)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary, dir_fd=run.fd)
        raise
    os.fsync(run.fd)


def unrecorded_trash(run: RunDirectory, recorded: Iterable[TrashEntry]) -> list[FileRecord]:
    """An older version's trash: regular files named like a trashed segment, in a run without a manifest.

    Never a folder (a ``streams.trash-<n>/`` not recorded may hold anything), never a link, and
    nothing at all in a run with a :data:`TRASH_MANIFEST`: its trash is recorded, so what the
    manifest does not list is not ours.
    """
    if run.lstat(TRASH_MANIFEST) is not None:
        return []
    known = {e.name for e in recorded}
    found = []
    for name in run.names():
        match = _TRASH.match(name)
        if name in known or match is None or not match["name"].endswith(SEGMENT_SUFFIX):
            continue
        st = run.lstat(name)
        if st is not None and stat.S_ISREG(st.st_mode):
            found.append(FileRecord.of(name, st))
    return found
