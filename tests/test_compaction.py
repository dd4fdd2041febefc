"""Compaction and vacuum of Delta tables: fewer files, the same rows, and readers of older versions unharmed.

The tables are real Delta tables: 200 small runs committed with the real ``commit_run`` (small
tables, for speed), compacted for real (their row groups merged into fewer files) and vacuumed for real;
the service-level tests run the real service on real runs, one of them two services on the real
PostgreSQL test server sharing one journal (and its compaction lease).
"""

from __future__ import annotations

import shutil
import threading
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
from deltalake import DeltaTable

from herocollector.config import ServiceConfig
from herocollector.events import RunCollected
from herocollector.journal.postgres import PgJournal
from herocollector.output.delta import TABLE_RUN_COLUMN, run_app_id
from herocollector.output.delta_upkeep import Compaction, compact, needs_compaction, retention_hours, vacuum
from herocollector.service.compaction import TableUpkeep, lease_name
from herocollector.service.core import CollectionService
from herocollector.testing.actors import wait_for
from herocollector.testing.runs import build_run
from herocollector.testing.servers import PostgresTestServer
from herocollector.testing.tables import assert_as_recorded, commit_rows

RUNS = 200
ROWS = 25
SCHEMA = pa.schema(
    [("stream_id", pa.uint32()), ("epoch", pa.float64()), ("value", pa.float64()), ("experiment", pa.string())]
)


def run_rows(i: int) -> pa.Table:
    """The small table of run ``i``: two experiments, so a partitioned table has two partitions."""
    return pa.table(
        {
            "stream_id": pa.array([i % 7] * ROWS, pa.uint32()),
            "epoch": [float(i * 1000 + k) for k in range(ROWS)],
            "value": [i + k / 10 for k in range(ROWS)],
            "experiment": ["even" if i % 2 == 0 else "odd"] * ROWS,
        },
        schema=SCHEMA,
    )


def run_path(i: int) -> str:
    return f"/data/runs/run-{i:04d}"


def commit(table: Path, i: int, **kwargs: Any) -> None:
    commit_rows(
        str(table),
        run_rows(i),
        run=run_path(i),
        version=i + 1,
        metadata={"run": run_path(i), "job": str(i + 1)},
        **kwargs,
    )


def content(table: pa.Table) -> list[tuple[Any, ...]]:
    """Every row as a tuple, sorted: what "the rows are unchanged" compares."""
    names = [TABLE_RUN_COLUMN, "stream_id", "epoch", "value", "experiment"]
    return sorted(zip(*(table[name].to_pylist() for name in names), strict=True))


def expected(runs: Iterable[int]) -> list[tuple[Any, ...]]:
    rows = []
    for i in runs:
        part = run_rows(i)
        rows += [(run_path(i), *row) for row in zip(*(part[n].to_pylist() for n in SCHEMA.names), strict=True)]
    return sorted(rows)


@pytest.fixture(scope="module")
def committed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A table of 200 runs of 25 rows, one commit (and one file) each, built once and copied per test."""
    table = tmp_path_factory.mktemp("template") / "measurements"
    for i in range(RUNS):
        commit(table, i)
    return table


@pytest.fixture
def table(committed: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "measurements"
    shutil.copytree(committed, copy)
    return copy


def files_on_disk(table: Path) -> set[str]:
    return {str(p.relative_to(table)) for p in table.rglob("*.parquet")}


def test_compaction_after_200_small_runs_reduces_the_files_and_keeps_the_rows(table: Path) -> None:
    before = DeltaTable(str(table))
    assert len(before.file_uris()) == RUNS
    assert content(before.to_pyarrow_table()) == expected(range(RUNS))
    assert needs_compaction(before)

    result = compact(str(table), {}, actor="actor-a")

    assert isinstance(result, Compaction) and result.compacted
    assert (result.files_before, result.files_after, result.rows) == (RUNS, 1, RUNS * ROWS)
    after = DeltaTable(str(table))
    assert result.version == after.version() == before.version() + 1
    assert len(after.file_uris()) == 1
    assert content(after.to_pyarrow_table()) == expected(range(RUNS))
    last = after.history(1)[0]
    assert last["operation"] == "WRITE" and last["operationParameters"]["mode"] == "Append"
    assert last["herocollector.actor"] == "actor-a" and last["herocollector.reason"].startswith("compaction")
    # Every run's transaction outlives the compaction: a retry of a committed run is still adopted.
    assert all(after.transaction_version(run_app_id(run_path(i))) == i + 1 for i in range(RUNS))
    again = commit_rows(str(table), run_rows(7), run=run_path(7), version=8)
    assert again.adopted and again.rows == ROWS
    # Nothing is small enough any more: a second round changes nothing.
    second = compact(str(table), {}, actor="actor-a")
    assert not second.compacted and second.version == result.version and second.files_after == 1


def test_a_table_with_few_small_files_is_left_alone(tmp_path: Path) -> None:
    table = tmp_path / "few"
    for i in range(5):
        commit(table, i)
    version = DeltaTable(str(table)).version()
    result = compact(str(table), {}, actor="actor-a", min_files=10)
    assert not result.compacted and (result.files_before, result.files_after, result.small_files) == (5, 5, 5)
    assert DeltaTable(str(table)).version() == version
    assert compact(str(tmp_path / "none"), {}, actor="actor-a").compacted is False


def test_a_partitioned_table_is_compacted_per_partition(tmp_path: Path) -> None:
    table = tmp_path / "partitioned"
    for i in range(40):
        commit(table, i, partition_by=("experiment",))
    result = compact(str(table), {}, actor="actor-a")
    assert result.compacted and (result.files_before, result.files_after, result.small_files) == (40, 2, 20)
    delta = DeltaTable(str(table))
    assert content(delta.to_pyarrow_table()) == expected(range(40))
    assert sorted(p["experiment"] for p in delta.partitions()) == ["even", "odd"]


def test_a_reader_of_the_version_before_compaction_still_reads_it_after_compaction_and_vacuum(table: Path) -> None:
    old = DeltaTable(str(table))
    version = old.version()
    dataset = old.to_pyarrow_dataset()  # opened before: its file list is the 200 small files
    old_files = files_on_disk(table)

    compact(str(table), {}, actor="actor-a")
    assert content(dataset.to_table()) == expected(range(RUNS))
    assert content(DeltaTable(str(table), version=version).to_pyarrow_table()) == expected(range(RUNS))

    cleaned = vacuum(str(table), 168, {}, actor="actor-a")
    assert cleaned.retention_hours == 168 and cleaned.removed == ()
    assert old_files <= files_on_disk(table)
    assert content(dataset.to_table()) == expected(range(RUNS))
    assert content(DeltaTable(str(table), version=version).to_pyarrow_table()) == expected(range(RUNS))


def test_a_vacuum_within_no_retention_would_break_that_reader(table: Path) -> None:
    """The other side of the test above: the files the old reader needs are the ones a vacuum can delete."""
    old = DeltaTable(str(table))
    dataset = old.to_pyarrow_dataset()
    compact(str(table), {}, actor="actor-a")
    DeltaTable(str(table)).alter.set_table_properties({"delta.deletedFileRetentionDuration": "interval 0 seconds"})
    cleaned = vacuum(str(table), 0, {}, actor="actor-a")
    assert len(cleaned.removed) == RUNS and cleaned.retention_hours == 0
    with pytest.raises((OSError, pa.ArrowException)):
        dataset.to_table()
    assert content(DeltaTable(str(table)).to_pyarrow_table()) == expected(range(RUNS))


def test_vacuum_deletes_the_old_data_files_of_commits_that_never_landed(table: Path) -> None:
    """An actor killed mid-commit leaves a data file no log entry names; once older than the retention it goes."""
    import os
    import time

    source = next(table.glob("*.parquet"))
    old, young = table / "part-00000-never-landed-c000.zstd.parquet", table / "part-00001-in-flight-c000.zstd.parquet"
    for orphan in (old, young):
        shutil.copy(source, orphan)
    week_and_a_day = time.time() - 192 * 3600
    os.utime(old, (week_and_a_day, week_and_a_day))
    rows = content(DeltaTable(str(table)).to_pyarrow_table())
    cleaned = vacuum(str(table), 168, {}, actor="actor-a")
    assert cleaned.removed == (old.name,)
    assert not old.exists() and young.exists(), "a file younger than the retention may be a commit on its way"
    assert content(DeltaTable(str(table)).to_pyarrow_table()) == rows


def test_vacuum_keeps_the_tables_own_retention_if_it_is_longer(table: Path) -> None:
    dataset = DeltaTable(str(table)).to_pyarrow_dataset()
    compact(str(table), {}, actor="actor-a")
    DeltaTable(str(table)).alter.set_table_properties({"delta.deletedFileRetentionDuration": "interval 30 days"})
    cleaned = vacuum(str(table), 0, {}, actor="actor-a")
    assert cleaned.retention_hours == 720 and cleaned.removed == ()
    assert content(dataset.to_table()) == expected(range(RUNS))


@pytest.mark.parametrize(
    ("setting", "hours"),
    [("interval 1 week", 168.0), ("interval 2 days", 48.0), ("interval 36 hours", 36.0), ("interval 90 minutes", 1.5)],
)
def test_the_tables_retention_is_read_in_hours(tmp_path: Path, setting: str, hours: float) -> None:
    commit(tmp_path / "t", 0)
    delta = DeltaTable(str(tmp_path / "t"))
    assert retention_hours(delta) == 168.0  # Delta's default when the table says nothing
    delta.alter.set_table_properties({"delta.deletedFileRetentionDuration": setting})
    assert retention_hours(DeltaTable(str(tmp_path / "t"))) == hours


def test_an_appended_run_during_compaction_is_kept(table: Path) -> None:
    """Compaction and appends commit concurrently: neither loses the other's rows."""
    failures: list[BaseException] = []

    def append() -> None:
        try:
            for i in range(RUNS, RUNS + 10):
                commit(table, i)
        except BaseException as exc:  # noqa: BLE001 - reported below
            failures.append(exc)

    writer = threading.Thread(target=append)
    writer.start()
    compact(str(table), {}, actor="actor-a")
    writer.join(120)
    assert not failures and not writer.is_alive()
    assert content(DeltaTable(str(table)).to_pyarrow_table()) == expected(range(RUNS + 10))


# -- the service ------------------------------------------------------------------------------------------

COLUMNS = ["experiment", "measure"]


def delta_config(tmp: Path, runs: Path, out: Path, **overrides: Any) -> ServiceConfig:
    arguments: dict[str, Any] = dict(
        save_template="{{ output_root }}/measurements",
        output_root=str(out),
        format="delta",
        columns=COLUMNS,
        allowed_roots=[str(runs)],
        state_dir=str(tmp / "state"),
        retry_delay=0.05,
        max_retries=2,
        scan_interval=None,
        compact_interval=1,
    )
    arguments.update(overrides)
    return ServiceConfig.from_arguments(**arguments)


@pytest.fixture
def services() -> Iterator[list[CollectionService]]:
    started: list[CollectionService] = []
    try:
        yield started
    finally:
        for service in started:
            service.close()


def test_the_service_compacts_the_tables_it_commits_to(tmp_path: Path, services: list[CollectionService]) -> None:
    runs_root, out = tmp_path / "runs", tmp_path / "tables"
    runs = [build_run(runs_root / f"r{i:02d}", i + 1, n_records=60) for i in range(12)]
    collected: list[RunCollected] = []
    service = CollectionService(delta_config(tmp_path, runs_root, out), on_collected=collected.append)
    services.append(service)
    table = str(out / "measurements")
    assert service.status().compaction == {}
    for run in runs:
        service.submit("logger", {"path": str(run.path)})
    wait_for(lambda: len(collected) == len(runs), "every run collected", 120)
    state = wait_for(
        lambda: (s := service.status().compaction.get(table)) is not None and s.last_compacted is not None and s,
        "the table compacted by the periodic task",
        120,
    )
    assert state.error is None and state.files is not None and state.files < len(runs)
    assert service.status().to_dict()["compaction"][table]["last_compacted"] == state.last_compacted
    delta = DeltaTable(table)
    assert len(delta.file_uris()) < len(runs)
    assert any(c.get("herocollector.reason", "").startswith("compaction") for c in delta.history())
    rows = delta.to_pyarrow_table()
    for run in runs:
        assert_as_recorded(rows, run, COLUMNS)


def test_a_restarted_service_looks_after_the_tables_of_its_recent_jobs(
    tmp_path: Path, services: list[CollectionService]
) -> None:
    runs_root, out = tmp_path / "runs", tmp_path / "tables"
    runs = [build_run(runs_root / f"r{i:02d}", i + 1, n_records=40) for i in range(11)]
    collected: list[RunCollected] = []
    first = CollectionService(
        delta_config(tmp_path, runs_root, out, compact_interval=None), on_collected=collected.append
    )
    services.append(first)
    for run in runs:
        first.submit("logger", {"path": str(run.path)})
    wait_for(lambda: len(collected) == len(runs), "every run collected", 120)
    first.close()
    table = str(out / "measurements")
    assert len(DeltaTable(table).file_uris()) == len(runs)

    second = CollectionService(delta_config(tmp_path, runs_root, out))  # same journal, compaction on, no new run
    services.append(second)
    state = wait_for(
        lambda: (s := second.status().compaction.get(table)) is not None and s.last_compacted is not None and s,
        "the table of the journal's done jobs compacted",
        120,
    )
    assert state.files == len(DeltaTable(table).file_uris()) < len(runs)
    rows = DeltaTable(table).to_pyarrow_table()
    for run in runs:
        assert_as_recorded(rows, run, COLUMNS)


def test_two_services_on_one_journal_compact_a_table_one_at_a_time(
    tmp_path: Path, postgres: PostgresTestServer, services: list[CollectionService]
) -> None:
    url = postgres.database()
    table = tmp_path / "shared"
    for i in range(30):
        commit(table, i)
    out, runs_root = tmp_path / "out", tmp_path / "runs"
    runs_root.mkdir()
    a, b = (
        CollectionService(delta_config(tmp_path / name, runs_root, out, journal=url, compact_interval=None))
        for name in ("a", "b")
    )
    services += [a, b]
    assert a.config.owner != b.config.owner

    # The lease held by another actor: this round leaves the table alone.
    upkeep_b = TableUpkeep(b.config, b.journal, threading.Event())
    upkeep_b.add(str(table))
    assert a.journal.acquire_lease(lease_name(str(table)), a.config.owner, 600)
    assert upkeep_b.upkeep(str(table)) is None
    assert upkeep_b.states()[str(table)].held_by_other
    assert len(DeltaTable(str(table)).file_uris()) == 30
    assert a.journal.release_lease(lease_name(str(table)), a.config.owner)
    # Free again: b compacts, and gives the lease back.
    result = upkeep_b.upkeep(str(table))
    assert result is not None and result.compacted and result.files_after == 1
    assert a.journal.acquire_lease(lease_name(str(table)), a.config.owner, 1)
    assert a.journal.release_lease(lease_name(str(table)), a.config.owner)

    # Both at once, round after round, with new small files each time: never two compactions of the table together.
    inside: list[str] = []
    overlaps: list[tuple[str, ...]] = []
    compactions: list[str] = []
    guard = threading.Lock()

    def watched(owner: str) -> Any:
        def compactor(*args: Any, **kwargs: Any) -> Compaction:
            with guard:
                inside.append(owner)
                if len(inside) > 1:
                    overlaps.append(tuple(inside))
            try:
                result = compact(*args, **kwargs)
                if result.compacted:
                    compactions.append(owner)
                return result
            finally:
                with guard:
                    inside.remove(owner)

        return compactor

    upkeeps = [
        TableUpkeep(
            service.config, service.journal, threading.Event(), min_files=2, compactor=watched(service.config.owner)
        )
        for service in (a, b)
    ]
    for round_number in range(6):
        for i in range(4):
            commit(table, 100 + round_number * 4 + i)
        start = threading.Barrier(2)

        def together(upkeep: TableUpkeep, start: threading.Barrier = start) -> None:
            start.wait(10)
            upkeep.upkeep(str(table))

        threads = [threading.Thread(target=together, args=(u,)) for u in upkeeps]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(120)
        assert not any(thread.is_alive() for thread in threads)
    assert overlaps == []
    # The second of each round found the lease held, or the table compacted already.
    assert len(compactions) == 6
    assert content(DeltaTable(str(table)).to_pyarrow_table()) == expected([*range(30), *range(100, 124)])
    assert isinstance(a.journal, PgJournal) and isinstance(b.journal, PgJournal)
