"""``format: "delta"``: runs committed to Delta tables by the service, exactly once, equal to what was recorded.

Real runs (the real ``DataLogger``), the real service, real Delta tables read back with deltalake,
polars and DuckDB; on S3, a real moto server.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
from deltalake import DeltaTable

from herocollector import CollectionService, ServiceConfig
from herocollector.errors import ConfigError, SchemaConflict
from herocollector.events import RunCollected, RunFailed
from herocollector.output.delta import (
    TABLE_RUN_COLUMN,
    commit_run,
    delta_storage_options,
    open_table,
    rows_of_run,
    run_app_id,
    verify_tables,
)
from herocollector.testing.actors import wait_for
from herocollector.testing.runs import RecordedRun, build_run
from herocollector.testing.servers import S3TestServer
from herocollector.testing.tables import commit_rows, recorded_records, table_records

COLUMNS = ["experiment", "measure"]


def records(table: pa.Table, run: str | None = None) -> list[tuple[Any, ...]]:
    """The table's records (of one run), as sortable tuples: what "equal to the recorded truth" compares."""
    return table_records(table, COLUMNS, run)


def recorded(run: RecordedRun) -> list[tuple[Any, ...]]:
    """What the logger recorded into ``run``, as :func:`records` gives it."""
    return recorded_records(run, COLUMNS)


class Site:
    """Runs, a table root and the services of one test (closed at its end)."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.runs = tmp / "runs"
        self.runs.mkdir()
        self.out = tmp / "tables"
        self.collected: list[RunCollected] = []
        self.failures: list[RunFailed] = []
        self.services: list[CollectionService] = []
        self.seed = 0

    def run(self, name: str, **kwargs: Any) -> RecordedRun:
        self.seed += 1
        return build_run(self.runs / name, self.seed, **{"n_records": 400, **kwargs})

    def config(self, **overrides: Any) -> ServiceConfig:
        arguments: dict[str, Any] = dict(
            save_template="{{ output_root }}/measurements",
            output_root=str(self.out),
            format="delta",
            columns=COLUMNS,
            allowed_roots=[str(self.runs)],
            state_dir=str(self.tmp / "state"),
            retry_delay=0.05,
            max_retries=1,
            scan_interval=None,
            compact_interval=None,
        )
        arguments.update(overrides)
        return ServiceConfig.from_arguments(**arguments)

    def service(self, **overrides: Any) -> CollectionService:
        service = CollectionService(
            self.config(**overrides), on_collected=self.collected.append, on_failed=self.failures.append
        )
        self.services.append(service)
        return service

    def close(self) -> None:
        for service in self.services:
            service.close()


@pytest.fixture
def site(tmp_path: Path) -> Iterator[Site]:
    site = Site(tmp_path)
    try:
        yield site
    finally:
        site.close()


def test_each_run_is_committed_once_and_equals_what_was_recorded(site: Site) -> None:
    runs = [site.run(f"r{i}") for i in range(3)]
    service = site.service()
    for run in runs:
        service.submit("logger", {"path": str(run.path)})
    wait_for(lambda: len(site.collected) == 3, "three runs collected")
    table_path = str(site.out / "measurements")
    delta = DeltaTable(table_path)
    table = delta.to_pyarrow_table()
    for run in runs:
        assert records(table, str(run.path)) == recorded(run)
        assert delta.transaction_version(run_app_id(str(run.path))) is not None
    assert table.num_rows == sum(len(run) for run in runs)
    writes = [c for c in delta.history() if c["operation"] in ("WRITE", "CREATE TABLE")]
    assert len(writes) == 3, "one commit per run"
    provenance = {c["herocollector.run"]: c for c in writes}
    assert set(provenance) == {str(run.path) for run in runs}
    assert all(c["herocollector.token"] and c["herocollector.collected_at"] for c in writes)
    for event in site.collected:
        assert event.outputs == {table_path: len(next(r for r in runs if str(r.path) == event.path))}
    assert table.schema.field("stream_id").type == pa.int64()
    assert table.schema.field(TABLE_RUN_COLUMN).type in (pa.string(), pa.large_string(), pa.string_view())


def test_a_retry_adopts_the_commit_that_landed(site: Site, tmp_path: Path) -> None:
    run = site.run("r")
    table_path = str(site.out / "measurements")
    reader = pa.RecordBatchReader.from_batches(*_batches(run))
    commit_run(table_path, reader, run=str(run.path), version=1, metadata={}, options={})
    # the journal then says job 1 was never finished: a retry of job 1 finds the commit, writes nothing
    service = site.service()
    service.submit("logger", {"path": str(run.path)})
    wait_for(lambda: site.collected, "the run collected")
    delta = DeltaTable(table_path)
    assert delta.version() == 0, "no second commit"
    assert rows_of_run(delta, str(run.path)) == len(run)


def _batches(run: RecordedRun) -> tuple[pa.Schema, list[pa.RecordBatch]]:
    table = run.expected_table(columns=COLUMNS)
    return table.schema, table.to_batches()


def test_streams_rendering_to_different_tables_get_one_commit_each(site: Site) -> None:
    run = site.run("r")
    site.service(save_template="{{ output_root }}/{{ measure }}")
    service = site.services[0]
    service.submit("logger", {"path": str(run.path)})
    wait_for(lambda: site.collected, "the run collected")
    measures = sorted({s["measure"] for s in run.streams})
    tables = sorted(p.name for p in site.out.iterdir())
    assert tables == measures
    total = 0
    for measure in measures:
        delta = DeltaTable(str(site.out / measure))
        assert len(delta.history()) == 1
        got = delta.to_pyarrow_table()
        assert set(got["measure"].to_pylist()) == {measure}
        total += got.num_rows
    assert total == len(run)
    job = service.journal.by_path(str(run.path))
    assert job is not None
    check = verify_tables(str(run.path), job.outputs, job.rows, {})
    assert check.ok, check.failures()


def test_partitioned_table_and_readers(site: Site) -> None:
    runs = [site.run(f"r{i}") for i in range(2)]
    service = site.service(partition_by=["experiment"])
    for run in runs:
        service.submit("logger", {"path": str(run.path)})
    wait_for(lambda: len(site.collected) == 2, "two runs collected")
    table_path = str(site.out / "measurements")
    assert DeltaTable(table_path).metadata().partition_columns == ["experiment"]
    assert any(p.name.startswith("experiment=") for p in Path(table_path).iterdir())
    import duckdb
    import polars as pl

    truth = sorted(r for run in runs for r in recorded(run))
    frame = pl.scan_delta(table_path).collect()
    assert frame.height == len(truth)
    dataset = DeltaTable(table_path).to_pyarrow_dataset()
    counted = duckdb.connect().execute("SELECT count(*) FROM dataset").fetchone()
    assert counted is not None and counted[0] == len(truth)
    one = str(runs[0].path)
    assert records(dataset.to_table(), one) == recorded(runs[0])


def test_a_new_label_merges_and_a_type_conflict_fails_its_job_naming_the_column(site: Site) -> None:
    service = site.service(columns=["experiment", "measure", "extra"])
    plain = site.run("plain")
    service.submit("logger", {"path": str(plain.path)})
    wait_for(lambda: len(site.collected) == 1, "the first run")
    labels = [{**s, "extra": "seven"} for s in _labels(plain)]
    extra = site.run("extra", labels=labels)
    service.submit("logger", {"path": str(extra.path)})
    wait_for(lambda: len(site.collected) == 2, "the run with a new label")
    table_path = str(site.out / "measurements")
    schema = DeltaTable(table_path).to_pyarrow_table().schema
    assert "extra" in schema.names
    clash = site.run("clash", labels=[{**s, "extra": 7} for s in _labels(plain)])
    service.submit("logger", {"path": str(clash.path)})
    wait_for(lambda: site.failures, "the conflicting run fails")
    failure = site.failures[-1]
    assert "SchemaConflict" in failure.error and "'extra'" in failure.error
    assert "long" in failure.error and "string" in failure.error
    assert failure.final, "a type conflict is not retried"
    table = DeltaTable(table_path).to_pyarrow_table()
    assert table.num_rows == len(plain) + len(extra), "the table stays readable, without the refused run"
    assert set(table["extra"].to_pylist()) == {None, "seven"}


def _labels(run: RecordedRun) -> list[dict[str, Any]]:
    return [{k: v for k, v in s.items() if k not in ("stream_id", "epoch_scale", "value_scale")} for s in run.streams]


def test_partition_by_must_be_among_columns_and_is_for_tables(tmp_path: Path) -> None:
    site = Site(tmp_path)
    with pytest.raises(ConfigError, match="partition_by"):
        site.config(partition_by=["model"])
    with pytest.raises(ConfigError, match="partition_by is for format"):
        site.config(format="parquet", partition_by=["experiment"])
    with pytest.raises(ConfigError, match="logger_path"):
        site.config(columns=["logger_path"])


def test_schema_conflict_names_both_types(tmp_path: Path) -> None:
    table = str(tmp_path / "t")
    first = pa.table({"stream_id": pa.array([1], pa.uint32()), "label": ["a"]})
    commit_rows(table, first, run="/r1", version=1)
    second = pa.table({"stream_id": pa.array([1], pa.uint32()), "label": [2.5]})
    with pytest.raises(SchemaConflict) as caught:
        commit_rows(table, second, run="/r2", version=2)
    assert caught.value.column == "label"
    assert (caught.value.table_type, caught.value.run_type) == ("string", "double")


def test_a_table_on_s3_with_conditional_puts(site: Site, s3: S3TestServer) -> None:
    bucket = s3.bucket()
    root = f"s3://{bucket}/tables"
    runs = [site.run(f"r{i}") for i in range(2)]
    service = site.service(output_root=root, storage_options=s3.options, save_template="{{ output_root }}/measurements")
    for run in runs:
        service.submit("logger", {"path": str(run.path)})
    wait_for(lambda: len(site.collected) == 2, "two runs collected on S3")
    options = delta_storage_options(root, s3.options)
    assert options is not None and options["conditional_put"] == "etag"
    assert "AWS_S3_ALLOW_UNSAFE_RENAME" not in options
    delta = open_table(f"{root}/measurements", s3.options)
    assert delta is not None
    table = delta.to_pyarrow_table()
    for run in runs:
        assert records(table, str(run.path)) == recorded(run)
    import polars as pl

    frame = pl.scan_delta(f"{root}/measurements", storage_options=options).collect()
    assert frame.height == sum(len(run) for run in runs)
    import duckdb

    connection = duckdb.connect()
    connection.register("on_s3", delta.to_pyarrow_dataset())
    counted = connection.execute("SELECT logger_path, count(*) FROM on_s3 GROUP BY logger_path").fetchall()
    assert sorted(counted) == sorted((str(run.path), len(run)) for run in runs)
    job = service.journal.by_path(str(runs[0].path))
    assert job is not None
    assert verify_tables(str(runs[0].path), job.outputs, job.rows, s3.options).ok


def test_cleanup_trashes_segments_only_after_the_tables_verify(site: Site) -> None:
    kept, deleted = site.run("kept"), site.run("deleted")
    service = site.service()
    for run in (kept, deleted):
        service.submit("logger", {"path": str(run.path)})
    wait_for(lambda: len(site.collected) == 2, "two runs collected")
    table_path = str(site.out / "measurements")
    DeltaTable(table_path).delete(f"{TABLE_RUN_COLUMN} = '{deleted.path}'")
    check = service.verify(str(deleted.path))
    assert not check.ok
    assert any("holds 0 rows of the run" in failure for failure in check.failures())
    assert service.cleanup(str(deleted.path), wait_for_done=False) is False
    assert deleted.segments, "a run whose rows are gone keeps its segments"
    assert service.verify(str(kept.path)).ok
    assert service.cleanup(str(kept.path), wait_for_done=False) is True
    assert not kept.segments, "a verified run's segments go to the trash"
