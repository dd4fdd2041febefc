"""Merging Parquet files by copying row groups: the footer codec, the merged data, and damaged footers."""

from __future__ import annotations

import datetime
import io
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from herocollector.errors import FooterError
from herocollector.output.parquet_merge import (
    ThriftList,
    ThriftMap,
    ThriftStruct,
    decode_struct,
    encode_struct,
    merge_files,
    read_footer,
    read_footers,
)

COLUMNS: dict[str, pa.DataType] = {
    "stream_id": pa.int64(),
    "epoch": pa.float64(),
    "indices": pa.list_(pa.int64()),
    "values": pa.list_(pa.float64()),
    "flag": pa.bool_(),
    "at": pa.timestamp("us", tz="UTC"),
    "experiment": pa.string(),
}


def values(kind: pa.DataType) -> st.SearchStrategy[Any]:
    """Column values of ``kind``, nulls among them."""
    inner: st.SearchStrategy[Any]
    if pa.types.is_list(kind):
        inner = st.lists(st.one_of(st.none(), st.integers(-(2**40), 2**40)), max_size=4)
        if pa.types.is_floating(kind.value_type):
            inner = st.lists(st.one_of(st.none(), st.floats(allow_nan=False)), max_size=4)
    elif pa.types.is_integer(kind):
        inner = st.integers(-(2**62), 2**62)
    elif pa.types.is_floating(kind):
        inner = st.floats(allow_nan=False)
    elif pa.types.is_boolean(kind):
        inner = st.booleans()
    elif pa.types.is_timestamp(kind):
        inner = st.datetimes(timezones=st.just(datetime.UTC))
    else:
        inner = st.sampled_from(["", "a", "x y", "ü" * 40, "exp-1"])  # few values: dictionary pages
    return st.one_of(st.none(), inner)


@st.composite
def tables(draw: st.DrawFn, names: tuple[str, ...]) -> pa.Table:
    rows = draw(st.integers(0, 60))
    return pa.table(
        {n: pa.array(draw(st.lists(values(COLUMNS[n]), min_size=rows, max_size=rows)), COLUMNS[n]) for n in names}
    )


def write(table: pa.Table, path: Path, options: dict[str, Any]) -> Path:
    pq.write_table(table, path, **options)
    return path


WRITER_OPTIONS = st.fixed_dictionaries(
    {
        "row_group_size": st.integers(1, 40),
        "compression": st.sampled_from(["zstd", "snappy", "none", "gzip"]),
        "use_dictionary": st.booleans(),
        "write_statistics": st.booleans(),
        "write_page_index": st.booleans(),
        "data_page_size": st.sampled_from([64, 1 << 20]),
    }
)


def merged(paths: list[Path], into: Path) -> Any:
    filesystem = pafs.LocalFileSystem()
    with filesystem.open_output_stream(str(into)) as sink:
        return merge_files(
            read_footers([str(p) for p in paths], filesystem.open_input_file), filesystem.open_input_file, sink
        )


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    names=st.lists(st.sampled_from(sorted(COLUMNS)), min_size=1, max_size=len(COLUMNS), unique=True).map(tuple),
    data=st.data(),
)
def test_merged_files_read_as_the_sources_one_after_another(tmp_path_factory: Any, names: Any, data: Any) -> None:
    folder = tmp_path_factory.mktemp("merge")
    options = data.draw(WRITER_OPTIONS)
    sources = [data.draw(tables(names)) for _ in range(data.draw(st.integers(1, 4)))]
    paths = [write(t, folder / f"{i}.parquet", options) for i, t in enumerate(sources)]
    result = merged(paths, folder / "merged.parquet")
    expected = pa.concat_tables(sources)
    assert pq.read_table(folder / "merged.parquet").equals(expected)
    metadata = pq.read_metadata(folder / "merged.parquet")
    nonempty = [p for p in paths if pq.read_metadata(p).num_rows]  # a row group without rows is left out
    assert (metadata.num_rows, metadata.num_row_groups) == (expected.num_rows, result.row_groups)
    assert result.size == (folder / "merged.parquet").stat().st_size
    assert statistics([folder / "merged.parquet"]) == statistics(nonempty), "each row group keeps its statistics"


def statistics(paths: list[Path]) -> list[Any]:
    """Every column chunk's statistics, row group after row group."""
    found = []
    for path in paths:
        metadata = pq.read_metadata(path)
        for group in range(metadata.num_row_groups):
            for column in range(metadata.num_columns):
                if not metadata.row_group(group).num_rows:
                    continue
                stats = metadata.row_group(group).column(column).statistics
                found.append(None if stats is None else stats.to_dict())
    return found


def test_footers_of_pyarrow_and_delta_rs_decode_and_encode_to_the_same_bytes(tmp_path: Path) -> None:
    from deltalake import WriterProperties, write_deltalake

    table = pa.table({n: pa.array([None] * 3, t) for n, t in COLUMNS.items()})
    write_deltalake(tmp_path / "delta", table, writer_properties=WriterProperties(compression="ZSTD"))
    paths = list((tmp_path / "delta").glob("*.parquet"))
    paths.append(write(table, tmp_path / "pyarrow.parquet", {"write_page_index": True}))
    for path in paths:
        raw = path.read_bytes()
        length = int.from_bytes(raw[-8:-4], "little")
        footer = raw[-8 - length : -8]
        assert encode_struct(decode_struct(footer)) == footer, path


def test_polars_and_duckdb_read_a_merged_file(tmp_path: Path) -> None:
    import duckdb
    import polars as pl

    parts = [pa.table({"epoch": [float(i), float(i) + 0.5], "experiment": ["a", None]}) for i in range(3)]
    paths = [write(t, tmp_path / f"{i}.parquet", {"write_page_index": True}) for i, t in enumerate(parts)]
    merged(paths, tmp_path / "m.parquet")
    assert pl.read_parquet(tmp_path / "m.parquet")["epoch"].to_list() == [0.0, 0.5, 1.0, 1.5, 2.0, 2.5]
    found = duckdb.sql(f"SELECT count(*) FROM '{tmp_path / 'm.parquet'}' WHERE epoch >= 1.5").fetchall()
    assert found == [(3,)]


def test_files_of_different_schemas_are_not_merged(tmp_path: Path) -> None:
    a = write(pa.table({"epoch": [1.0]}), tmp_path / "a.parquet", {})
    b = write(pa.table({"epoch": [1]}), tmp_path / "b.parquet", {})
    with pytest.raises(FooterError, match=r"b\.parquet.*schema or writer differs"):
        merged([a, b], tmp_path / "m.parquet")


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda raw: raw[:-1] + b"X", "not a Parquet file"),
        (lambda raw: raw[:6], "too short"),
        (lambda raw: raw[:-8] + (10**6).to_bytes(4, "little") + b"PAR1", "does not fit the file"),
        (lambda raw: raw[:-8] + b"\x00\x00\x00\x00PARE", "encrypted"),
        (lambda raw: raw[:-12] + raw[-8:], "footer is damaged: .* at byte"),
    ],
)
def test_a_damaged_footer_is_an_error_naming_the_file(tmp_path: Path, damage: Any, message: str) -> None:
    path = write(pa.table({"epoch": [1.0, 2.0], "experiment": ["a", "b"]}), tmp_path / "d.parquet", {})
    path.write_bytes(damage(path.read_bytes()))
    with pytest.raises(FooterError, match=message) as raised:
        merged([path, path], tmp_path / "m.parquet")
    assert str(path) in str(raised.value)


@settings(max_examples=200, deadline=None)
@given(position=st.integers(0, 10_000), byte=st.integers(0, 255))
def test_a_flipped_byte_in_the_footer_never_raises_anything_but_a_footer_error(position: int, byte: int) -> None:
    buffer = io.BytesIO()
    pq.write_table(pa.table({"epoch": [1.0, 2.0], "values": [[1.0], None]}), buffer)
    raw = bytearray(buffer.getvalue())
    length = int.from_bytes(raw[-8:-4], "little")
    raw[len(raw) - 8 - length + position % length] = byte
    try:
        footers = read_footers(["flipped", "flipped"], lambda name: pa.BufferReader(bytes(raw)))
        result = merge_files(footers, lambda name: pa.BufferReader(bytes(raw)), io.BytesIO())
    except FooterError as exc:
        assert "flipped" in str(exc)
    else:
        assert result.rows >= 0


thrift_scalars = st.one_of(
    st.tuples(st.just(1), st.booleans()),
    st.tuples(st.just(3), st.integers(-128, 127)),
    st.tuples(st.sampled_from([4, 5, 6]), st.integers(-(2**31), 2**31 - 1)),
    st.tuples(st.just(7), st.floats(allow_nan=False)),
    st.tuples(st.just(8), st.binary(max_size=40)),
)


def thrift_values(depth: int) -> st.SearchStrategy[tuple[int, Any]]:
    if depth == 0:
        return thrift_scalars
    lists = st.tuples(st.sampled_from([5, 8]), st.integers(0, 20)).flatmap(
        lambda kind: st.lists(
            thrift_scalars.filter(lambda s: s[0] == kind[0]).map(lambda s: s[1]), max_size=kind[1]
        ).map(lambda items: (9, ThriftList(kind[0], items)))
    )
    maps = st.lists(st.tuples(st.binary(max_size=5), st.integers(-5, 5)), max_size=4).map(
        lambda items: (11, ThriftMap(8, 5, items))
    )
    return st.one_of(thrift_scalars, lists, maps, thrift_structs(depth - 1).map(lambda s: (12, s)))


def thrift_structs(depth: int) -> st.SearchStrategy[ThriftStruct]:
    return st.dictionaries(st.integers(1, 40), thrift_values(depth), max_size=6).map(
        lambda fields: ThriftStruct(dict(sorted(fields.items())))
    )


@settings(max_examples=300, deadline=None)
@given(value=thrift_structs(3))
def test_the_compact_protocol_codec_round_trips(value: ThriftStruct) -> None:
    wire = encode_struct(value)  # an empty map carries no types on the wire: compare what is sent
    assert encode_struct(decode_struct(wire)) == wire


def test_read_footer_names_rows_and_row_groups(tmp_path: Path) -> None:
    path = write(pa.table({"epoch": [float(i) for i in range(10)]}), tmp_path / "r.parquet", {"row_group_size": 3})
    with pafs.LocalFileSystem().open_input_file(str(path)) as handle:
        footer = read_footer(handle, str(path))
    assert (footer.rows, len(footer.row_groups)) == (10, 4)


def test_one_source_is_open_at_a_time(tmp_path: Path) -> None:
    paths = [write(pa.table({"epoch": [float(i)]}), tmp_path / f"{i}.parquet", {}) for i in range(20)]
    filesystem, open_now, most = pafs.LocalFileSystem(), [0], [0]

    class Counted:
        def __init__(self, name: str) -> None:
            self.handle = filesystem.open_input_file(name)

        def __enter__(self) -> Any:
            open_now[0] += 1
            most[0] = max(most[0], open_now[0])
            return self.handle

        def __exit__(self, *exc: object) -> None:
            open_now[0] -= 1
            self.handle.close()

    sink = io.BytesIO()
    assert merge_files(read_footers([str(p) for p in paths], Counted), Counted, sink).rows == 20
    assert most[0] == 1 and open_now[0] == 0
    assert pq.read_table(pa.BufferReader(sink.getvalue()))["epoch"].to_pylist() == [float(i) for i in range(20)]
