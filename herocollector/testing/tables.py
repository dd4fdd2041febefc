"""Test support for tables: rows committed in one call, a table's rows of a run, and a recorded run's rows.

"Equal to what was recorded" compares content, not counts: every record as a tuple (stream id,
epoch, indices, values, labels), sorted, since a table gives no row order across its files.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from herocollector.output.delta import TABLE_RUN_COLUMN, TableCommit, commit_run
from herocollector.testing.runs import RecordedRun

Record = tuple[Any, ...]


def commit_rows(
    table: str,
    rows: pa.Table,
    *,
    run: str,
    version: int,
    metadata: dict[str, str] | None = None,
    options: dict[str, Any] | None = None,
    **kwargs: Any,
) -> TableCommit:
    """Commit ``rows`` (in our output schema) as ``run`` with :func:`~herocollector.output.delta.commit_run`."""
    return commit_run(
        table,
        pa.RecordBatchReader.from_batches(rows.schema, rows.to_batches()),
        run=run,
        version=version,
        metadata=metadata or {},
        options=options or {},
        **kwargs,
    )


def table_records(table: pa.Table, columns: Sequence[str] = (), run: str | None = None) -> list[Record]:
    """The records of ``table`` (only those of ``run``, if given), sorted.

    Args:
        table: A collected table (base columns, then label columns).
        columns: The label columns to compare.
        run: A logger path: keep its rows (by the ``logger_path`` column).
    """
    if run is not None:
        table = table.filter(pc.equal(table[TABLE_RUN_COLUMN], run))
    names = ("stream_id", "epoch", "indices", "values", *columns)
    rows = zip(*(table[name].to_pylist() for name in names), strict=True)
    return sorted(
        (int(sid), _float(epoch), tuple(ix), tuple(_float(v) for v in values), *labels)
        for sid, epoch, ix, values, *labels in rows
    )


def recorded_records(run: RecordedRun, columns: Sequence[str] = ()) -> list[Record]:
    """What the logger recorded into ``run``, as :func:`table_records` gives a table's."""
    return table_records(run.expected_table(columns=tuple(columns)), columns)


def assert_as_recorded(table: pa.Table, run: RecordedRun, columns: Sequence[str] = (), message: str = "") -> None:
    """Assert that ``table``'s rows of ``run`` are the records of ``run``, as :func:`table_records` compares them.

    Both sides are sorted by stream, epoch and a hash of each row's content, and compared
    column by column in Arrow first: equal there, they are equal as records. Otherwise (a
    difference, two rows with equal keys, a NaN, another type) the records are compared as
    tuples, as before, so a failure reads the same. The tuples alone took seconds for a run of
    a few hundred thousand records.
    """
    rows = table.filter(pc.equal(table[TABLE_RUN_COLUMN], str(run.path)))
    expected = run.expected_table(columns=tuple(columns))
    if not _equal_sorted(rows, expected, columns):
        assert table_records(rows, columns) == table_records(expected, columns), (
            message or f"{run.path}: not as recorded"
        )


def _equal_sorted(got: pa.Table, expected: pa.Table, columns: Sequence[str]) -> bool:
    """Whether the two tables hold the same rows in the same order once sorted by stream, epoch and content.

    Epochs repeat within a stream, so the sort breaks ties with a hash of each row's indices
    and values; two different rows with equal keys only send the caller to the exact comparison.
    """
    names = ["stream_id", "epoch", "indices", "values", *columns]
    if got.num_rows != expected.num_rows:
        return False
    try:
        got = got.select(names)
        expected = expected.select(names).cast(got.schema)
        ordered = [_sorted_by_content(t) for t in (got, expected)]
    except (pa.ArrowException, KeyError, ValueError, TypeError):
        return False
    return bool(ordered[0].equals(ordered[1]))


def _sorted_by_content(table: pa.Table) -> pa.Table:
    keyed = table.append_column("_indices_hash", _list_hash(table["indices"]))
    keyed = keyed.append_column("_values_hash", _list_hash(table["values"]))
    order = pc.sort_indices(
        keyed, sort_keys=[(name, "ascending") for name in ("stream_id", "epoch", "_values_hash", "_indices_hash")]
    )
    return table.take(order)


def _list_hash(column: pa.ChunkedArray) -> pa.Array:
    """A 64-bit hash of each list's elements and their positions (sums wrap around: any order-free key will do)."""
    lists = column.combine_chunks()
    if lists.null_count:
        raise TypeError("null lists: compare as records")
    offsets = lists.offsets.to_numpy().astype(np.int64)
    offsets -= offsets[0]
    flat = lists.flatten().to_numpy(zero_copy_only=False)
    bits = np.ascontiguousarray(flat.astype(np.float64 if flat.dtype.kind == "f" else np.int64)).view(np.uint64)
    lengths = np.diff(offsets)
    position = (np.arange(len(flat)) - np.repeat(offsets[:-1], lengths)).astype(np.uint64)
    with np.errstate(over="ignore"):
        mixed = bits * np.uint64(0x9E3779B97F4A7C15) + (position + np.uint64(1)) * np.uint64(0xC2B2AE3D27D4EB4F)
        sums = np.concatenate([np.zeros(1, np.uint64), np.cumsum(mixed, dtype=np.uint64)])
        return pa.array(sums[offsets[1:]] - sums[offsets[:-1]] + lengths.astype(np.uint64))


def _float(value: float) -> float | str:
    """A float that compares equal to itself (NaN becomes a marker)."""
    return "nan" if isinstance(value, float) and math.isnan(value) else value


def commits_per_run(delta_table: Any) -> dict[str, int]:
    """How many commits wrote rows of each run (by their ``herocollector.run`` metadata)."""
    commits: dict[str, int] = {}
    for commit in delta_table.history():
        if commit["operation"] in ("WRITE", "CREATE TABLE") and "herocollector.run" in commit:
            commits[commit["herocollector.run"]] = commits.get(commit["herocollector.run"], 0) + 1
    return commits


def chunk_commits(delta_table: Any) -> list[int]:
    """The chunk number of every commit that wrote rows of a followed run, oldest first."""
    return [int(c["herocollector.chunk"]) for c in reversed(delta_table.history()) if "herocollector.chunk" in c]


def check_followed(table: str, run: RecordedRun, columns: Sequence[str]) -> None:
    """A followed run's table holds the run exactly as recorded, each chunk committed once."""
    from deltalake import DeltaTable

    from herocollector.output.delta import run_app_id

    delta = DeltaTable(table)
    content = delta.to_pyarrow_table()
    assert content.num_rows == len(run), "no duplicate and no gap"
    assert_as_recorded(content, run, columns)
    chunks = chunk_commits(delta)
    assert len(chunks) == len(set(chunks)) and chunks == sorted(chunks), f"chunks committed once each: {chunks}"
    assert delta.transaction_version(run_app_id(str(run.path))) == chunks[-1]
