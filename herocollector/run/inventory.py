"""What a run was: the identity of each of its files (:class:`FileRecord`) and of the whole run (:class:`RunInventory`).

These are the package's one file-identity record and one inventory type. The reader takes a
:class:`RunInventory` of every run it opens (:class:`~herocollector.run.rundir.RunDirectory`),
the output pipeline re-checks it before publishing, the runner hands it to the cleaner, which
keeps it in its ledger and trashes exactly its segments later; restore and the purge check
their recorded entries against a :class:`FileRecord` each.

An entry's identity is its device and inode; a regular file's also its size and mtime, since
a freed inode number is soon given to a new file, so a file replaced by another of the same
size can have the same inode.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

FILE, LINK, DIR, OTHER = "file", "link", "dir", "other"
"""Kinds of entries: a regular file, a symbolic link, a directory, anything else (FIFO, socket, device)."""


def kind_of(mode: int) -> str:
    """The kind (:data:`FILE`, :data:`LINK`, :data:`DIR` or :data:`OTHER`) of an ``lstat`` mode."""
    if stat.S_ISREG(mode):
        return FILE
    if stat.S_ISLNK(mode):
        return LINK
    return DIR if stat.S_ISDIR(mode) else OTHER


def describe_kind(mode: int) -> str:
    """What an entry of ``mode`` is, for error messages ("a symlink", "a FIFO" ...)."""
    for test, text in (
        (stat.S_ISLNK, "a symlink"),
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISDIR, "a directory"),
        (stat.S_ISCHR, "a device"),
        (stat.S_ISBLK, "a device"),
        (stat.S_ISSOCK, "a socket"),
        (stat.S_ISREG, "a regular file"),
    ):
        if test(mode):
            return text
    return "of an unknown kind"


@dataclass(frozen=True)
class FileRecord:
    """One entry of a run as it was seen, by name and identity.

    Attributes:
        name: Its name inside its folder (the run directory or ``streams/``).
        dev: ``st_dev``.
        ino: ``st_ino``.
        size: ``st_size`` in bytes of a regular file (0 otherwise).
        mtime_ns: ``st_mtime_ns`` of a regular file (0: not recorded, or not a regular file).
        kind: ``file``, ``link``, ``dir`` or ``other``.
    """

    name: str
    dev: int
    ino: int
    size: int
    mtime_ns: int
    kind: str = FILE

    @classmethod
    def of(cls, name: str, st: os.stat_result) -> FileRecord:
        """The record of ``name`` from its ``stat`` (an ``lstat`` for an entry that may be a link)."""
        kind = kind_of(st.st_mode)
        if kind != FILE:
            return cls(name, st.st_dev, st.st_ino, 0, 0, kind)
        return cls(name, st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)

    def same(self, st: os.stat_result) -> bool:
        """Whether ``st`` (an ``lstat``) is this entry: device, inode and kind (and size and mtime of a file)."""
        found = FileRecord.of(self.name, st)
        if (found.dev, found.ino, found.kind) != (self.dev, self.ino, self.kind):
            return False
        return self.kind != FILE or (found.size == self.size and self.mtime_ns in (0, found.mtime_ns))

    def to_json(self) -> list[Any]:
        """A JSON-friendly form (the ledger's: name, dev, ino, size, kind, mtime)."""
        return [self.name, self.dev, self.ino, self.size, self.kind, self.mtime_ns]

    @classmethod
    def from_json(cls, data: Sequence[Any]) -> FileRecord:
        """The record :meth:`to_json` gave (an mtime missing in older ledgers is 0: not recorded)."""
        name, dev, ino, size, kind, *rest = data
        return cls(str(name), int(dev), int(ino), int(size), int(rest[0]) if rest else 0, str(kind))


@dataclass(frozen=True)
class RunInventory:
    """What was read of a run: the directory's identity and every file, as it was listed.

    Attributes:
        path: The run directory (resolved when taken; as journalled when read from the ledger).
        dev: Its ``st_dev``.
        ino: Its ``st_ino``.
        segments: The ``*.seg.zst`` regular files, in name order (the decoding order).
        streams: The ``streams/*.json`` files, in name order.
        streams_dev: ``st_dev`` of ``streams/`` (0 when it was not read).
        streams_ino: ``st_ino`` of ``streams/`` (0 when it was not read).
        links: Entries named like segments that were symbolic links (only the cleaner's look
            records them; the reader refuses a run with one).
    """

    path: Path
    dev: int
    ino: int
    segments: tuple[FileRecord, ...]
    streams: tuple[FileRecord, ...] = ()
    streams_dev: int = 0
    streams_ino: int = 0
    links: tuple[FileRecord, ...] = ()

    @property
    def segment_bytes(self) -> int:
        """Bytes in the segments."""
        return sum(s.size for s in self.segments)

    @property
    def segment_paths(self) -> list[Path]:
        """The segments' paths, in name order."""
        return [self.path / s.name for s in self.segments]

    def to_json(self, path: str | None = None) -> dict[str, Any]:
        """A JSON-friendly form (the ledger's), under ``path`` (default: :attr:`path`)."""
        return {
            "path": str(self.path) if path is None else path,
            "dev": self.dev,
            "ino": self.ino,
            "segments": [s.to_json() for s in self.segments],
            "links": [s.to_json() for s in self.links],
            "streams": [s.to_json() for s in self.streams],
            "streams_id": [self.streams_dev, self.streams_ino],
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> RunInventory:
        """The inventory :meth:`to_json` gave (also a ledger's from before streams were recorded)."""
        streams_dev, streams_ino = data.get("streams_id", (0, 0))
        return cls(
            Path(str(data["path"])),
            int(data["dev"]),
            int(data["ino"]),
            tuple(FileRecord.from_json(s) for s in data["segments"]),
            tuple(FileRecord.from_json(s) for s in data.get("streams", [])),
            int(streams_dev),
            int(streams_ino),
            tuple(FileRecord.from_json(s) for s in data.get("links", [])),
        )
