"""Compacting one run's chunk files in a Delta table (compact_on_done): exact, scoped, and safe in races."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest
from deltalake import DeltaTable

from herocollector.output.delta import open_table
from herocollector.output.delta_merge import compact_run, run_files
from herocollector.output.delta_upkeep import compact
from herocollector.testing.servers import S3TestServer
from herocollector.testing.tables import commit_rows

PARTITION = "x y%ü"  # characters Delta percent-encodes in paths, once on disk and twice in the log
RUN, OTHER = "/runs/run-a", "/runs/run-b"


def chunk(index: int, rows: int = 50) -> pa.Table:
    epochs = np.arange(rows) * 0.01 + index
    return pa.table(
        {
            "stream_id": pa.array(np.arange(rows) % 3, pa.uint32()),
            "epoch": pa.array(epochs),
            "indices": pa.array([[0, 2]] * rows, pa.list_(pa.int64())),
            "values": pa.array([[float(index), None]] * rows, pa.list_(pa.float64())),
            "experiment": pa.array([PARTITION] * rows),
        }
    )


def commit_chunk(table: str, run: str, index: int, options: dict[str, Any] | None = None) -> None:
    commit_rows(
        table,
        chunk(index),
        run=run,
        version=index + 1,
        metadata={"run": run},
        options=options,
        partition_by=["experiment"],
        chunked=True,
    )


def content(table: DeltaTable) -> list[tuple[Any, ...]]:
    rows = table.to_pyarrow_table()
    return sorted(
        zip(*(rows.column(n).to_pylist() for n in ("logger_path", "epoch", "stream_id", "values")), strict=True)
    )


def last_actions(folder: Path) -> list[dict[str, Any]]:
    entry = sorted((folder / "_delta_log").glob("*.json"))[-1]
    return [json.loads(line) for line in entry.read_text().splitlines()]


@pytest.fixture
def chunked(tmp_path: Path) -> Path:
    table = tmp_path / "measurements"
    for index in range(6):
        commit_chunk(str(table), RUN, index)
        commit_chunk(str(table), OTHER, index)
    return table


def test_a_runs_chunk_files_become_one_file_and_the_table_reads_the_same(chunked: Path) -> None:
    before = DeltaTable(str(chunked))
    rows_before, version_before = content(before), before.version()
    others = {f.path for f in run_files(before, OTHER, 1 << 40)}
    result = compact_run(str(chunked), RUN, {}, actor="test")
    assert (result.files_before, result.files_after, result.rows, result.compacted) == (6, 1, 300, True)
    after = DeltaTable(str(chunked))
    assert content(after) == rows_before
    assert len(run_files(after, RUN, 1 << 40)) == 1
    assert {f.path for f in run_files(after, OTHER, 1 << 40)} == others, "another run's files are not touched"
    actions = last_actions(chunked)
    changes = [a for a in actions if "add" in a or "remove" in a]
    assert len(changes) == 7 and all(not next(iter(a.values()))["dataChange"] for a in changes), "no data change"
    added = next(a["add"] for a in actions if "add" in a)
    stats = json.loads(added["stats"])
    assert stats["numRecords"] == 300 and stats["minValues"]["epoch"] == 0.0 and stats["maxValues"]["epoch"] == 5.49
    assert stats["nullCount"]["logger_path"] == 0 and stats["minValues"]["logger_path"] == RUN
    assert after.history(1)[0]["herocollector.run"] == RUN
    # A reader of the version before still reads it; a filter the new file's statistics answer is exact.
    assert content(DeltaTable(str(chunked), version=version_before)) == rows_before
    import polars as pl

    late = pl.scan_delta(str(chunked)).filter(pl.col("epoch") >= 4.5).collect()
    assert late.height == sum(1 for row in rows_before if row[1] >= 4.5) == 2 * 50
    assert compact_run(str(chunked), RUN, {}, actor="test").compacted is False, "one file is left alone"


def test_the_target_size_bounds_the_merged_files(chunked: Path) -> None:
    sizes = [f.size for f in run_files(DeltaTable(str(chunked)), RUN, 1 << 40)]
    result = compact_run(str(chunked), RUN, {}, actor="test", target=2 * max(sizes) + 1)
    assert result.files_before == 6 and result.files_after == 3
    assert content(DeltaTable(str(chunked))) == sorted(content(DeltaTable(str(chunked), version=11)))


def racing(monkeypatch: pytest.MonkeyPatch, before: Callable[[], object]) -> list[int]:
    """Makes a real commit land right before compact_run's first commit (the version it wanted is taken)."""
    original = DeltaTable.create_write_transaction
    calls: list[int] = []

    def create_write_transaction(self: DeltaTable, *args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        if len(calls) == 1:
            before()
        return original(self, *args, **kwargs)

    monkeypatch.setattr(DeltaTable, "create_write_transaction", create_write_transaction)
    return calls


def test_a_compaction_whose_files_another_commit_removed_meanwhile_is_not_committed(
    chunked: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rows = content(DeltaTable(str(chunked)))
    calls = racing(monkeypatch, lambda: DeltaTable(str(chunked)).optimize.compact())
    files_before = set((chunked / f"experiment={'x%20y%25%C3%BC'}").iterdir())
    result = compact_run(str(chunked), RUN, {}, actor="test")
    assert result.compacted is False and len(calls) == 1
    assert content(DeltaTable(str(chunked))) == rows, "no row twice"
    optimized = set((chunked / "experiment=x%20y%25%C3%BC").iterdir()) - files_before
    assert len(optimized) == 1, "the merged file no commit refers to was removed; only optimize's is new"


def test_an_append_meanwhile_is_kept_and_the_compaction_lands_at_the_next_version(
    chunked: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = racing(monkeypatch, lambda: commit_chunk(str(chunked), OTHER, 6))
    result = compact_run(str(chunked), RUN, {}, actor="test")
    assert result.compacted and len(calls) == 2
    table = DeltaTable(str(chunked))
    assert result.version == table.version()
    assert sum(1 for row in content(table) if row[0] == OTHER) == 7 * 50
    assert sum(1 for row in content(table) if row[0] == RUN) == 6 * 50


def test_a_table_compaction_that_lost_its_files_to_a_run_compaction_does_not_land(
    chunked: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Both remove files without changing data; delta-rs alone would let the second land too."""
    rows = content(DeltaTable(str(chunked)))
    calls = racing(monkeypatch, lambda: compact_run(str(chunked), RUN, {}, actor="other"))
    result = compact(str(chunked), {}, actor="test", min_files=2)
    assert not result.compacted and len(calls) == 2
    assert content(DeltaTable(str(chunked))) == rows, "no row twice"
    again = compact(str(chunked), {}, actor="test", min_files=2)
    assert again.compacted and again.files_after == 1
    assert content(DeltaTable(str(chunked))) == rows


def test_a_damaged_chunk_file_leaves_the_run_as_it_was(chunked: Path) -> None:
    table = DeltaTable(str(chunked))
    victim = chunked / run_files(table, RUN, 1 << 40)[2].location
    raw = victim.read_bytes()
    victim.write_bytes(raw[:-12] + raw[-8:])
    version = table.version()
    assert compact_run(str(chunked), RUN, {}, actor="test").compacted is False
    assert DeltaTable(str(chunked)).version() == version


def test_a_run_on_s3_is_compacted(s3: S3TestServer) -> None:
    table = f"s3://{s3.bucket()}/tables/measurements"
    for index in range(4):
        commit_chunk(table, RUN, index, s3.options)
    commit_chunk(table, OTHER, 0, s3.options)
    opened = open_table(table, s3.options)
    assert opened is not None
    rows = content(opened)
    result = compact_run(table, RUN, s3.options, actor="test")
    assert (result.files_before, result.files_after) == (4, 1)
    after = open_table(table, s3.options)
    assert after is not None and content(after) == rows
    assert len(after.file_uris()) == 2


def test_a_merged_file_holds_at_most_the_row_groups_a_footer_can_number(
    chunked: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import herocollector.output.delta_merge as delta_merge

    monkeypatch.setattr(delta_merge, "MAX_ROW_GROUPS", 2)
    rows = content(DeltaTable(str(chunked)))
    result = compact_run(str(chunked), RUN, {}, actor="test")
    assert (result.files_before, result.files_after) == (6, 3)
    assert content(DeltaTable(str(chunked))) == rows


def test_a_merged_file_holds_at_most_max_group_files_sources(chunked: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import herocollector.output.delta_merge as delta_merge

    monkeypatch.setattr(delta_merge, "MAX_GROUP_FILES", 4)
    rows = content(DeltaTable(str(chunked)))
    result = compact_run(str(chunked), RUN, {}, actor="test")
    assert (result.files_before, result.files_after) == (6, 2)
    assert content(DeltaTable(str(chunked))) == rows
