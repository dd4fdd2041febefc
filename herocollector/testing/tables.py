"""Test support for tables: rows committed in one call, a table's rows of a run, and a recorded run's rows.

"Equal to what was recorded" compares content, not counts: every record as a tuple (stream id,
epoch, indices, values, labels), sorted, since a table gives no row order across its files.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

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
    assert table_records(content, columns, str(run.path)) == recorded_records(run, columns)
    chunks = chunk_commits(delta)
    assert len(chunks) == len(set(chunks)) and chunks == sorted(chunks), f"chunks committed once each: {chunks}"
    assert delta.transaction_version(run_app_id(str(run.path))) == chunks[-1]
