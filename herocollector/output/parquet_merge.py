"""Merge Parquet files into one by copying their row groups: nothing is decoded or encoded again.

A run that is followed while it is written leaves one small file per chunk in each table, and
``compact_on_done`` turns them into one. Rewriting them (delta-rs ``optimize``) decodes and
encodes every value a second time, which costs about as much as collecting the run did. The
bytes need not change, only the file they are in.

A Parquet file is its column chunks (the pages, each chunk contiguous), then the footer: the
``FileMetaData`` in Thrift's compact protocol, its length, and ``PAR1``. :func:`merge_files`
copies each column chunk of each row group, in order, and writes one footer holding every source's
row groups, their offsets moved to where the bytes are now. The statistics of the row groups and
of their columns are kept as they were. Left out are the page indexes and bloom filters: they lie
outside the column chunks, and their entries point into the old files. A reader of the merged
file falls back to the row groups' statistics, as it does for any file written without them.

Only files of one footer family are merged (:attr:`Footer.family`): the same schema, key-value
metadata (the Arrow schema), column orders and writer. Encrypted files and column chunks kept in
another file are refused. Pyarrow and delta-rs read footers but write none by themselves, so this
module has a small codec for the compact protocol; it decodes to a tree and encodes that tree
back to the same bytes.
"""

from __future__ import annotations

import functools
import struct
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any, Protocol

from herocollector.errors import FooterError

MAGIC = b"PAR1"
MAX_FOOTER_BYTES = 64 << 20
"""A footer larger than this is refused (a small file's footer is a few kilobytes)."""
MAX_ROW_GROUPS = 32767
"""A footer's row group ordinals are 16-bit."""
COPY_BYTES = 8 << 20
"""Bytes copied per read: memory stays bounded whatever the column chunk's size."""
_MAX_DEPTH = 32

# Thrift compact protocol types
_STOP, _TRUE, _FALSE, _BYTE, _I16, _I32, _I64, _DOUBLE, _BINARY, _LIST, _SET, _MAP, _STRUCT = range(13)

# Field ids of the Parquet format (parquet.thrift)
_META_SCHEMA, _META_ROWS, _META_ROW_GROUPS, _META_KEY_VALUE, _META_CREATED_BY, _META_ORDERS = 2, 3, 4, 5, 6, 7
_META_ENCRYPTION, _META_SIGNING_KEY = 8, 9
_GROUP_COLUMNS, _GROUP_ROWS, _GROUP_FILE_OFFSET, _GROUP_ORDINAL = 1, 3, 5, 7
_CHUNK_FILE_PATH, _CHUNK_FILE_OFFSET, _CHUNK_META = 1, 2, 3
_CHUNK_PAGE_INDEX = (4, 5, 6, 7)  # offset index and column index: offset, length
_CHUNK_CRYPTO = (8, 9)  # a column's own encryption
_COLUMN_COMPRESSED, _COLUMN_DATA_PAGE, _COLUMN_INDEX_PAGE, _COLUMN_DICTIONARY_PAGE = 7, 9, 10, 11
_COLUMN_BLOOM = (14, 15)


@dataclass
class ThriftList:
    """A compact-protocol list or set: the element type and the elements (bools as their raw byte)."""

    element_type: int
    items: list[Any]
    kind: int = _LIST


@dataclass
class ThriftMap:
    """A compact-protocol map: key and value types, and the pairs."""

    key_type: int
    value_type: int
    items: list[tuple[Any, Any]]


@dataclass
class ThriftStruct:
    """A compact-protocol struct: field id → (type, value), in the order the fields came."""

    fields: dict[int, tuple[int, Any]] = field(default_factory=dict)

    def get(self, fid: int) -> Any:
        """The value of field ``fid``, or None if it is absent."""
        found = self.fields.get(fid)
        return None if found is None else found[1]

    def set(self, fid: int, value: Any, thrift_type: int | None = None) -> None:
        """Set field ``fid`` (its type kept, or ``thrift_type`` for a new one), keeping the ids in order."""
        kept = self.fields.get(fid)
        self.fields[fid] = (kept[0] if kept is not None else (thrift_type or _I64), value)
        if kept is None:
            self.fields = dict(sorted(self.fields.items()))


class _Decoder:
    """Reads the compact protocol from ``data`` (the footer of ``name``, at ``base`` in the file)."""

    def __init__(self, data: bytes, name: str, base: int) -> None:
        self.data, self.name, self.base, self.position = data, name, base, 0

    def fail(self, what: str) -> FooterError:
        return FooterError(f"the Parquet footer is damaged: {what} at byte {self.base + self.position}", self.name)

    def byte(self) -> int:
        if self.position >= len(self.data):
            raise self.fail("it ends early")
        value = self.data[self.position]
        self.position += 1
        return value

    def take(self, count: int) -> bytes:
        if count < 0 or self.position + count > len(self.data):
            raise self.fail(f"{count} bytes run past its end")
        value = self.data[self.position : self.position + count]
        self.position += count
        return value

    def varint(self) -> int:
        data, position = self.data, self.position
        if position < len(data) and data[position] < 0x80:  # most varints of a footer are one byte
            self.position = position + 1
            return data[position]
        value = shift = 0
        while True:
            current = self.byte()
            value |= (current & 0x7F) << shift
            if current < 0x80:
                return value
            shift += 7
            if shift > 63:
                raise self.fail("a varint longer than 10 bytes")

    def zigzag(self) -> int:
        value = self.varint()
        return (value >> 1) ^ -(value & 1)

    def value(self, thrift_type: int, depth: int) -> Any:
        if thrift_type in (_I16, _I32, _I64):
            value = self.varint()
            return (value >> 1) ^ -(value & 1)
        if thrift_type == _BYTE:
            return struct.unpack("<b", self.take(1))[0]
        if thrift_type == _DOUBLE:
            return struct.unpack("<d", self.take(8))[0]
        if thrift_type == _BINARY:
            return self.take(self.varint())
        if thrift_type in (_LIST, _SET):
            head = self.byte()
            size, element_type = head >> 4, head & 0x0F
            if size == 15:
                size = self.varint()
            if size > len(self.data) - self.position:  # every element takes a byte at least
                raise self.fail(f"a list of {size} elements longer than the footer")
            if element_type in (_TRUE, _FALSE):
                return ThriftList(element_type, list(self.take(size)), thrift_type)
            return ThriftList(element_type, [self.value(element_type, depth + 1) for _ in range(size)], thrift_type)
        if thrift_type == _MAP:
            size = self.varint()
            if size > len(self.data) - self.position:
                raise self.fail(f"a map of {size} entries longer than the footer")
            types = self.byte() if size else 0
            key_type, value_type = types >> 4, types & 0x0F
            pairs = [(self.value(key_type, depth + 1), self.value(value_type, depth + 1)) for _ in range(size)]
            return ThriftMap(key_type, value_type, pairs)
        if thrift_type == _STRUCT:
            return self.struct(depth + 1)
        raise self.fail(f"an unknown Thrift type {thrift_type}")

    def struct(self, depth: int = 0) -> ThriftStruct:
        if depth > _MAX_DEPTH:
            raise self.fail(f"structs nested deeper than {_MAX_DEPTH}")
        found = ThriftStruct()
        fields, data, last = found.fields, self.data, 0
        while True:
            if self.position >= len(data):
                raise self.fail("it ends early")
            head = data[self.position]
            self.position += 1
            if head == _STOP:
                return found
            thrift_type, delta = head & 0x0F, head >> 4
            fid = last + delta if delta else self.zigzag()
            if thrift_type in (_TRUE, _FALSE):
                fields[fid] = (_TRUE, thrift_type == _TRUE)
            else:
                fields[fid] = (thrift_type, self.value(thrift_type, depth))
            last = fid


class _Encoder:
    """Writes a :class:`ThriftStruct` tree in the compact protocol."""

    def __init__(self) -> None:
        self.out = bytearray()

    def varint(self, value: int) -> None:
        while value > 0x7F:
            self.out.append((value & 0x7F) | 0x80)
            value >>= 7
        self.out.append(value)

    def zigzag(self, value: int) -> None:
        self.varint(value * 2 if value >= 0 else -value * 2 - 1)

    def value(self, thrift_type: int, value: Any) -> None:
        if thrift_type == _BYTE:
            self.out += struct.pack("<b", value)
        elif thrift_type in (_I16, _I32, _I64):
            self.zigzag(value)
        elif thrift_type == _DOUBLE:
            self.out += struct.pack("<d", value)
        elif thrift_type == _BINARY:
            self.varint(len(value))
            self.out += value
        elif thrift_type in (_LIST, _SET):
            size = len(value.items)
            self.out.append((size << 4 | value.element_type) if size < 15 else (0xF0 | value.element_type))
            if size >= 15:
                self.varint(size)
            if value.element_type in (_TRUE, _FALSE):
                self.out += bytes(value.items)
            else:
                for item in value.items:
                    self.value(value.element_type, item)
        elif thrift_type == _MAP:
            self.varint(len(value.items))
            if value.items:
                self.out.append(value.key_type << 4 | value.value_type)
            for key, item in value.items:
                self.value(value.key_type, key)
                self.value(value.value_type, item)
        else:
            self.struct(value)

    def struct(self, value: ThriftStruct) -> None:
        last = 0
        for fid, (thrift_type, item) in value.fields.items():
            wire = (_TRUE if item else _FALSE) if thrift_type == _TRUE else thrift_type
            if 0 < fid - last <= 15:
                self.out.append((fid - last) << 4 | wire)
            else:
                self.out.append(wire)
                self.zigzag(fid)
            if thrift_type != _TRUE:
                self.value(thrift_type, item)
            last = fid
        self.out.append(_STOP)


def decode_struct(data: bytes, name: str = "footer", base: int = 0) -> ThriftStruct:
    """Decode one compact-protocol struct (a Parquet ``FileMetaData``, say) that is all of ``data``."""
    decoder = _Decoder(data, name, base)
    found = decoder.struct()
    if decoder.position != len(data):
        raise decoder.fail(f"{len(data) - decoder.position} bytes after its end")
    return found


def encode_struct(value: ThriftStruct) -> bytes:
    """Encode a struct in the compact protocol (the inverse of :func:`decode_struct`)."""
    encoder = _Encoder()
    encoder.struct(value)
    return bytes(encoder.out)


def _integer(value: ThriftStruct, fid: int, what: str, path: str) -> int | None:
    """An integer field of a footer struct (None if absent); any other type is damage."""
    found = value.get(fid)
    if found is None:
        return None
    if not isinstance(found, int) or isinstance(found, bool):
        raise FooterError(f"the footer's {what} is not an integer", path)
    return found


class RandomAccess(Protocol):
    """What is read of a source file (a ``pyarrow.NativeFile`` opened for random access)."""

    def size(self) -> int: ...

    def read_at(self, nbytes: int, offset: int) -> bytes: ...


class Sink(Protocol):
    """Where the merged file goes (a ``pyarrow.NativeFile`` opened for writing)."""

    def write(self, data: bytes) -> int: ...


@dataclass(frozen=True)
class Footer:
    """A source file's footer: its ``FileMetaData`` and where it starts (the end of the column chunks)."""

    path: str
    meta: ThriftStruct
    start: int

    @property
    def rows(self) -> int:
        """The file's rows, as its footer says."""
        return int(self.meta.get(_META_ROWS) or 0)

    @functools.cached_property
    def family(self) -> bytes:
        """What files must share to be merged: schema, key-value metadata, column orders and writer."""
        family = ThriftStruct()
        for fid in (_META_SCHEMA, _META_KEY_VALUE, _META_CREATED_BY, _META_ORDERS):
            if fid in self.meta.fields:
                family.fields[fid] = self.meta.fields[fid]
        return encode_struct(family)

    @property
    def row_groups(self) -> list[ThriftStruct]:
        """The file's row groups (``RowGroup`` structs)."""
        groups = self.meta.get(_META_ROW_GROUPS)
        return list(groups.items) if isinstance(groups, ThriftList) else []


def read_footers(
    names: Sequence[str], open_file: Callable[[str], AbstractContextManager[RandomAccess]]
) -> list[Footer]:
    """The footers of the files ``names``, each opened and closed in turn."""
    footers = []
    for name in names:
        with open_file(name) as handle:
            footers.append(read_footer(handle, name))
    return footers


def read_footer(source: RandomAccess, path: str) -> Footer:
    """Read and decode a Parquet file's footer.

    Raises:
        FooterError: The file is not Parquet, is encrypted, or its footer is damaged; names the file.
    """
    size = source.size()
    if size < 12:
        raise FooterError(f"too short for a Parquet file ({size} bytes)", path)
    tail = bytes(source.read_at(8, size - 8))
    if tail[4:] == b"PARE":
        raise FooterError("an encrypted Parquet file is not merged", path)
    if tail[4:] != MAGIC or bytes(source.read_at(4, 0)) != MAGIC:
        raise FooterError("not a Parquet file (no PAR1 at its start and end)", path)
    length = int.from_bytes(tail[:4], "little")
    start = size - 8 - length
    if length > MAX_FOOTER_BYTES or start < 4:
        raise FooterError(f"a footer of {length} bytes does not fit the file of {size} bytes", path)
    meta = decode_struct(bytes(source.read_at(length, start)), path, start)
    if meta.get(_META_ENCRYPTION) is not None or meta.get(_META_SIGNING_KEY) is not None:
        raise FooterError("an encrypted Parquet file is not merged", path)
    footer = Footer(path, meta, start)
    if not isinstance(meta.get(_META_SCHEMA), ThriftList) or _integer(meta, _META_ROWS, "row count", path) is None:
        raise FooterError(f"the footer at byte {start} has no schema or no row count", path)
    if not isinstance(meta.get(_META_ROW_GROUPS), ThriftList) or any(
        not isinstance(g, ThriftStruct) for g in footer.row_groups
    ):
        raise FooterError(f"the footer at byte {start} has no row groups", path)
    if sum(_integer(g, _GROUP_ROWS, "rows of a row group", path) or 0 for g in footer.row_groups) != footer.rows:
        raise FooterError(f"the row groups of the footer at byte {start} do not add up to its rows", path)
    return footer


@dataclass(frozen=True)
class MergedFile:
    """What :func:`merge_files` wrote.

    Attributes:
        size: Bytes of the merged file.
        rows: Its rows (the sum of the sources').
        row_groups: Its row groups (the sum of the sources').
    """

    size: int
    rows: int
    row_groups: int


def _column_start(column: ThriftStruct, footer: Footer) -> tuple[int, int]:
    """Where a column chunk's bytes are in its file, and how many: checked against the file."""
    if column.get(_CHUNK_FILE_PATH) is not None:
        raise FooterError("a column chunk kept in another file is not merged", footer.path)
    if any(fid in column.fields for fid in _CHUNK_CRYPTO):
        raise FooterError("an encrypted column chunk is not merged", footer.path)
    meta = column.get(_CHUNK_META)
    if not isinstance(meta, ThriftStruct) or meta.get(_COLUMN_DATA_PAGE) is None:
        raise FooterError("a column chunk has no metadata", footer.path)
    _integer(column, _CHUNK_FILE_OFFSET, "column chunk's file offset", footer.path)
    # Some writers store 0 for "no dictionary page": byte 0 is the magic, never a page.
    offsets = [
        _integer(meta, f, "page offset", footer.path)
        for f in (_COLUMN_DATA_PAGE, _COLUMN_INDEX_PAGE, _COLUMN_DICTIONARY_PAGE)
    ]
    present = [o for o in offsets if o is not None and o > 0]
    if not present:
        raise FooterError("a column chunk of a row group with rows has no page", footer.path)
    start = min(present)
    length = _integer(meta, _COLUMN_COMPRESSED, "column chunk's size", footer.path) or 0
    if start < 4 or length < 0 or start + length > footer.start:
        raise FooterError(f"a column chunk at byte {start} of {length} bytes lies outside the data", footer.path)
    return start, length


def merge_files(
    footers: Sequence[Footer], open_file: Callable[[str], AbstractContextManager[RandomAccess]], sink: Sink
) -> MergedFile:
    """Write one Parquet file holding the row groups of the files of ``footers``, in order, copied byte for byte.

    Args:
        footers: The sources' footers (:func:`read_footer`), in the order their rows are kept.
        open_file: Opens a source (by its footer's ``path``) for random access; one is open at a
            time, however many there are.
        sink: Where the merged file is written (from its first byte).

    Returns:
        What was written.

    Raises:
        FooterError: A source is of another footer family than the first, one cannot be read,
            or the row groups would be too many for one footer.
    """
    if not footers:
        raise FooterError("no files to merge", "")
    family = footers[0].family
    for footer in footers[1:]:
        if footer.family != family:
            raise FooterError(f"its schema or writer differs from {footers[0].path}'s", footer.path)
    if sum(len(f.row_groups) for f in footers) > MAX_ROW_GROUPS:
        raise FooterError(f"more than {MAX_ROW_GROUPS} row groups for one file", footers[0].path)
    sink.write(MAGIC)
    position = len(MAGIC)
    groups: list[ThriftStruct] = []
    for footer in footers:
        with open_file(footer.path) as handle:
            position = _copy_row_groups(footer, handle, sink, position, groups)
    meta = ThriftStruct(dict(footers[0].meta.fields))
    rows = sum(f.rows for f in footers)
    meta.set(_META_ROWS, rows)
    meta.set(_META_ROW_GROUPS, ThriftList(_STRUCT, groups), _LIST)
    footer_bytes = encode_struct(meta)
    sink.write(footer_bytes)
    sink.write(len(footer_bytes).to_bytes(4, "little") + MAGIC)
    return MergedFile(position + len(footer_bytes) + 8, rows, len(groups))


def _copy_row_groups(
    footer: Footer, handle: RandomAccess, sink: Sink, position: int, groups: list[ThriftStruct]
) -> int:
    """Copy a source's row groups to ``sink`` at ``position``, appending their moved entries to ``groups``.

    Returns:
        The position after them.
    """
    for group in footer.row_groups:
        if not _integer(group, _GROUP_ROWS, "rows of a row group", footer.path):
            continue  # no rows, and perhaps no page to point at: nothing to carry over
        columns = group.get(_GROUP_COLUMNS)
        if not isinstance(columns, ThriftList) or not columns.items:
            raise FooterError("a row group without columns", footer.path)
        if not all(isinstance(c, ThriftStruct) for c in columns.items):
            raise FooterError("a row group's column is not a struct", footer.path)
        moved: list[ThriftStruct] = []
        group_start = position
        for column in columns.items:
            start, length = _column_start(column, footer)
            for offset in range(start, start + length, COPY_BYTES):
                piece = bytes(handle.read_at(min(COPY_BYTES, start + length - offset), offset))
                if not piece:
                    raise FooterError(f"the file ends at byte {offset}, inside a column chunk", footer.path)
                sink.write(piece)
            moved.append(_moved_column(column, position - start))
            position += length
        copied = ThriftStruct(dict(group.fields))
        copied.fields[_GROUP_COLUMNS] = (_LIST, ThriftList(_STRUCT, moved))
        if _GROUP_FILE_OFFSET in copied.fields:
            copied.set(_GROUP_FILE_OFFSET, group_start)
        if _GROUP_ORDINAL in copied.fields:
            copied.set(_GROUP_ORDINAL, len(groups))
        groups.append(copied)
    return position


def _moved_column(column: ThriftStruct, shift: int) -> ThriftStruct:
    """A column chunk's footer entry with its offsets moved by ``shift``, page index and bloom filter left out."""
    moved = ThriftStruct({f: v for f, v in column.fields.items() if f not in _CHUNK_PAGE_INDEX})
    offset = moved.get(_CHUNK_FILE_OFFSET)
    if offset:
        moved.set(_CHUNK_FILE_OFFSET, int(offset) + shift)
    meta = ThriftStruct({f: v for f, v in column.get(_CHUNK_META).fields.items() if f not in _COLUMN_BLOOM})
    for fid in (_COLUMN_DATA_PAGE, _COLUMN_INDEX_PAGE, _COLUMN_DICTIONARY_PAGE):
        offset = meta.get(fid)
        if offset is not None and offset > 0:
            meta.set(fid, int(offset) + shift)
    moved.set(_CHUNK_META, meta)
    return moved


__all__ = [
    "MergedFile",
    "ThriftList",
    "ThriftMap",
    "ThriftStruct",
    "decode_struct",
    "encode_struct",
    "merge_files",
    "read_footer",
    "read_footers",
]
