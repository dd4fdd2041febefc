"""A followed run's tables stay open between its chunks (``commit_run(opened=...)``), and stay exact.

Bringing an open table up to date must see every other writer's commit: another run's, and the
same chunk committed by another actor (which then is adopted, not committed twice).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
from deltalake import DeltaTable

from herocollector.errors import SchemaConflict
from herocollector.output.delta import TABLE_RUN_COLUMN, TableCommit, commit_run, run_app_id
from herocollector.testing.tables import commit_rows


def chunk(first: int, rows: int = 3) -> pa.RecordBatchReader:
    """``rows`` rows with epochs from ``first`` on."""
    table = pa.table(
        {"epoch": pa.array([float(first + i) for i in range(rows)]), "stream_id": pa.array([1] * rows, pa.uint32())}
    )
    return pa.RecordBatchReader.from_batches(table.schema, table.to_batches())


def commit(table: str, run: str, number: int, opened: dict[str, Any] | None) -> TableCommit:
    """Chunk ``number`` of ``run`` (epochs ``10 * number`` on), as a follower commits it."""
    return commit_run(
        table, chunk(10 * number), run=run, version=number, metadata={}, options={}, chunked=True, opened=opened
    )


def epochs(table: str, run: str) -> list[float]:
    data = DeltaTable(table).to_pyarrow_table()
    return sorted(e for e, r in zip(data["epoch"].to_pylist(), data[TABLE_RUN_COLUMN].to_pylist()) if r == run)


def test_an_open_table_sees_other_writers_and_adopts_a_chunk_committed_elsewhere(tmp_path: Path) -> None:
    table = str(tmp_path / "t")
    opened: dict[str, Any] = {}
    assert commit(table, "/a", 1, opened).version == 0
    kept = opened[table]  # the table after the commit, kept for the next chunk
    assert kept.version() == 0

    commit(table, "/b", 1, None)  # another run, by another writer: version 1
    commit(table, "/a", 2, None)  # chunk 2 of /a, by another actor (a takeover): version 2
    again = commit(table, "/a", 2, opened)  # this actor's stale open table must see it
    assert again.adopted and again.version == 2
    assert table not in opened  # adopted: nothing was committed through it

    opened[table] = kept  # the open table as it was (version 0), three commits behind
    landed = commit(table, "/a", 3, opened)
    assert (landed.adopted, landed.rows, landed.version) == (False, 3, 3)
    assert opened[table].version() == 3
    assert opened[table].transaction_version(run_app_id("/a")) == 3
    assert opened[table].transaction_version(run_app_id("/b")) == 1
    assert epochs(table, "/a") == [10.0, 11.0, 12.0, 20.0, 21.0, 22.0, 30.0, 31.0, 32.0]
    assert epochs(table, "/b") == [10.0, 11.0, 12.0]


def test_an_open_table_that_cannot_be_brought_up_to_date_is_opened_again(tmp_path: Path) -> None:
    table = str(tmp_path / "t")
    opened: dict[str, Any] = {}
    commit(table, "/a", 1, opened)

    class Broken:
        def update_incremental(self) -> None:
            raise OSError("the log cannot be read")

    opened[table] = Broken()
    landed = commit(table, "/a", 2, opened)
    assert (landed.adopted, landed.version) == (False, 1)
    assert isinstance(opened[table], DeltaTable)
    assert epochs(table, "/a") == [10.0, 11.0, 12.0, 20.0, 21.0, 22.0]


def test_a_failed_commit_leaves_no_open_table(tmp_path: Path) -> None:
    table = str(tmp_path / "t")
    opened: dict[str, Any] = {}
    commit(table, "/a", 1, opened)
    clash = pa.table({"epoch": pa.array(["not a number"]), "stream_id": pa.array([1], pa.uint32())})
    with pytest.raises(SchemaConflict, match="epoch"):
        commit_rows(table, clash, run="/a", version=2, chunked=True, opened=opened)
    assert table not in opened
    assert commit(table, "/a", 2, opened).version == 1
