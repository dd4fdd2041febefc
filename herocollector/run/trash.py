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

* :class:`RunDir` opens a run directory below one of the ``allowed_roots`` one component at a
  time, never following a symlink, and keeps its file descriptor: every later step is relative
  to that descriptor, so swapping the path for a symlink afterwards changes nothing;
* :func:`take_inventory` records the run's identity (device and inode of the directory; name,
  device, inode and size of each segment), when the run is collected;
* :func:`trash_recorded` renames exactly the recorded segments (checked by identity, never
  replacing an existing name) and returns a :class:`TrashEntry` for each, which the caller
  records;
* :func:`restore_recorded` and :func:`purge_recorded` act only on those recorded entries, again
  checked by identity. A user's file that merely looks like trash is never touched.
"""

from __future__ import annotations

import ctypes
import errno
import os
import re
import shutil
import stat
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from herocollector.errors import RunChanged
from herocollector.run.logdir import SEGMENT_SUFFIX, STREAMS_DIR, segment_files
from herocollector.run.rundir import RunInventory, within_roots

_TRASH = re.compile(r"^(?P<name>.+)\.trash-(?P<stamp>\d+)$")

FILE, LINK, DIR, OTHER = "file", "link", "dir", "other"
"""Kinds of entries: a regular file, a symbolic link, a directory, anything else (FIFO, socket, device)."""


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
class FileId:
    """One directory entry, by name and identity.

    Attributes:
        name: Its name in its directory.
        dev: Device number.
        ino: Inode number.
        size: Size in bytes (of a regular file; 0 otherwise).
        kind: ``file``, ``link``, ``dir`` or ``other``.
        mtime_ns: Modification time of a regular file (0: not recorded). A freed inode number
            is soon given to a new file, so a file replaced by another of the same size can
            have the same inode: its mtime tells them apart.
    """

    name: str
    dev: int
    ino: int
    size: int = 0
    kind: str = FILE
    mtime_ns: int = 0

    @classmethod
    def of(cls, name: str, st: os.stat_result) -> FileId:
        """The identity of an entry from its ``lstat``."""
        mode = st.st_mode
        kind = FILE if stat.S_ISREG(mode) else LINK if stat.S_ISLNK(mode) else DIR if stat.S_ISDIR(mode) else OTHER
        if kind != FILE:
            return cls(name, st.st_dev, st.st_ino, 0, kind)
        return cls(name, st.st_dev, st.st_ino, st.st_size, kind, st.st_mtime_ns)

    def same(self, st: os.stat_result) -> bool:
        """Whether ``st`` (an ``lstat``) is this entry: device, inode and kind (and size and mtime of a file)."""
        found = FileId.of(self.name, st)
        if (found.dev, found.ino, found.kind) != (self.dev, self.ino, self.kind):
            return False
        return self.kind != FILE or (found.size == self.size and self.mtime_ns in (0, found.mtime_ns))


@dataclass(frozen=True)
class CollectedRun:
    """What a run was when it was collected.

    Attributes:
        path: The logger path, as journalled.
        dev: Device of the run directory.
        ino: Inode of the run directory.
        segments: Its ``*.seg.zst`` regular files.
        links: Entries named like segments that were symbolic links.
    """

    path: str
    dev: int
    ino: int
    segments: tuple[FileId, ...]
    links: tuple[FileId, ...] = ()

    @property
    def segment_bytes(self) -> int:
        """Bytes of the recorded regular segment files."""
        return sum(s.size for s in self.segments)

    def to_json(self) -> dict[str, Any]:
        """A JSON-friendly form."""
        return {
            "path": self.path,
            "dev": self.dev,
            "ino": self.ino,
            "segments": [_id_json(s) for s in self.segments],
            "links": [_id_json(s) for s in self.links],
        }

    @classmethod
    def from_inventory(cls, path: str, inventory: RunInventory) -> CollectedRun:
        """What the collection read, from the inventory of its :class:`~herocollector.run.rundir.RunDirectory`."""
        segments = tuple(FileId(s.name, s.dev, s.ino, s.size, FILE, s.mtime_ns) for s in inventory.segments)
        return cls(path, inventory.dev, inventory.ino, segments)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> CollectedRun:
        """The inventory :meth:`to_json` gave."""
        return cls(
            str(data["path"]),
            int(data["dev"]),
            int(data["ino"]),
            tuple(_id_from_json(s) for s in data["segments"]),
            tuple(_id_from_json(s) for s in data.get("links", [])),
        )


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
    entry: FileId
    children: tuple[FileId, ...] = field(default=())

    def to_json(self) -> dict[str, Any]:
        """A JSON-friendly form."""
        return {
            "original": self.original,
            "name": self.name,
            "entry": _id_json(self.entry),
            "children": [_id_json(c) for c in self.children],
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> TrashEntry:
        """The entry :meth:`to_json` gave."""
        return cls(
            str(data["original"]),
            str(data["name"]),
            _id_from_json(data["entry"]),
            tuple(_id_from_json(c) for c in data.get("children", [])),
        )


def _id_json(entry: FileId) -> list[Any]:
    return [entry.name, entry.dev, entry.ino, entry.size, entry.kind, entry.mtime_ns]


def _id_from_json(data: Sequence[Any]) -> FileId:
    name, dev, ino, size, kind, *rest = data
    return FileId(str(name), int(dev), int(ino), int(size), str(kind), int(rest[0]) if rest else 0)


_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK


class RunDir:
    """A run directory opened without following symlinks, below one of the allowed roots.

    The path is resolved and must lie inside one of ``roots``; the directory is then opened from
    that root one component at a time with ``O_NOFOLLOW``, so a component swapped for a symlink
    between the check and the open fails the open instead of leading elsewhere. Every later
    operation is relative to the descriptor :attr:`fd`. Use as a context manager.

    Args:
        path: The logger directory (absolute).
        roots: Where runs may lie (resolved folders).

    Raises:
        RunChanged: Relative, outside ``roots``, not a directory, or changed while it was opened.
    """

    def __init__(self, path: str | Path, roots: Iterable[Path]) -> None:
        self.path = str(path)
        if not os.path.isabs(self.path):
            raise RunChanged("path is not absolute", self.path)
        real = Path(os.path.realpath(self.path))
        root = next((Path(r) for r in roots if within_roots(real, [r])), None)
        if root is None:
            raise RunChanged("outside allowed_roots", self.path)
        root = Path(os.path.realpath(root))
        try:
            fd = os.open(root, _DIR_FLAGS)
        except OSError as exc:
            raise RunChanged(f"cannot open the allowed root {root}: {exc.strerror}", self.path) from None
        try:
            for part in real.relative_to(root).parts:
                child = os.open(part, _DIR_FLAGS, dir_fd=fd)
                os.close(fd)
                fd = child
        except OSError as exc:
            os.close(fd)
            reason = "changed while it was opened (a symlink now)" if exc.errno == errno.ELOOP else exc.strerror
            raise RunChanged(f"cannot open the run directory: {reason}", self.path) from None
        self.fd = fd
        self.real = real
        st = os.fstat(fd)
        self.dev, self.ino = st.st_dev, st.st_ino

    def close(self) -> None:
        """Close the directory descriptor (idempotent)."""
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> RunDir:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def lstat(self, name: str) -> os.stat_result | None:
        """``lstat`` of an entry of the run, None if there is none."""
        try:
            return os.stat(name, dir_fd=self.fd, follow_symlinks=False)
        except FileNotFoundError:
            return None

    def names(self) -> list[str]:
        """The names in the run directory, sorted."""
        return sorted(os.listdir(self.fd))

    def check_identity(self, dev: int, ino: int, what: str = "collected") -> None:
        """Raise :class:`RunChanged` unless this is the directory with ``dev``/``ino``."""
        if (self.dev, self.ino) != (dev, ino):
            raise RunChanged(
                f"the directory is not the one {what} (device:inode {self.dev}:{self.ino}, {what} {dev}:{ino}); "
                "it was replaced or the path now leads elsewhere",
                self.path,
            )


def take_inventory(run: RunDir) -> CollectedRun:
    """The identity of a run and of its segment files now (when it is collected)."""
    segments, links = [], []
    for name in run.names():
        if not name.endswith(SEGMENT_SUFFIX):
            continue
        st = run.lstat(name)
        if st is None:
            continue
        entry = FileId.of(name, st)
        if entry.kind == FILE:
            segments.append(entry)
        elif entry.kind == LINK:
            links.append(entry)
    return CollectedRun(run.path, run.dev, run.ino, tuple(segments), tuple(links))


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


def plan_trash(run: RunDir, inventory: CollectedRun | None, keep_meta: bool = True) -> list[FileId]:
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
            planned.append(FileId.of(STREAMS_DIR, st))
    return planned


def _children(run: RunDir, entry: FileId) -> tuple[FileId, ...]:
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
                found.append(FileId.of(name, child))
        return tuple(found)
    finally:
        os.close(fd)


def name_trash(run: RunDir, planned: Sequence[FileId], now: float | None = None) -> list[TrashEntry]:
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


def move_to_trash(run: RunDir, entries: Iterable[TrashEntry]) -> list[TrashEntry]:
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


def trash_recorded(run: RunDir, planned: Sequence[FileId], now: float | None = None) -> list[TrashEntry]:
    """:func:`name_trash` and :func:`move_to_trash` in one: what was moved, for the caller to record."""
    return move_to_trash(run, name_trash(run, planned, now))


def restore_recorded(run: RunDir, entries: Iterable[TrashEntry]) -> list[TrashEntry]:
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


def purge_recorded(run: RunDir, entries: Iterable[TrashEntry]) -> tuple[list[TrashEntry], list[str]]:
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
