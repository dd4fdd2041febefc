"""Interop with the real disco data logger: its segment format, its collector and its runs.

Runs are written by ``data_logger.DataLogger``. Single-segment runs must give a table
identical to ``data_logger.Collector``'s; rotated runs must give exactly what was recorded
(where the reference is known to get epochs wrong after the first segment).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest
from tools.label_selector import Label, Rule, all_, any_

from herocollector import Collector
from herocollector.testing.runs import (
    MemoryWriter,
    RecordedRun,
    build_run,
    collect_table,
    reference_table,
    zstd_frame_starts,
)

MODEL_SPEC = {"all": [{"match": {"key": "model", "op": "eq", "value": "supply_chain"}}]}


def _assert_same(ours: pa.Table, ref: pa.Table) -> None:
    """Assert two tables are identical, reporting the first differing column.

    Args:
        ours: herocollector's table.
        ref: The reference's table.
    """
    assert ours.schema == ref.schema
    assert ours.num_rows == ref.num_rows
    for name in ref.column_names:
        assert ours.column(name).equals(ref.column(name)), f"column {name!r} differs"
    assert ours.equals(ref)


def _assert_matches_recorded(table: pa.Table, recorded: RecordedRun, rows: list[int]) -> None:
    """Assert a collected table holds exactly the recorded rows, in order.

    Args:
        table: The collected table.
        recorded: What the logger recorded.
        rows: Record numbers expected, in order.
    """
    assert table.num_rows == len(rows)
    assert table.column("stream_id").to_pylist() == [recorded.stream_ids[i] for i in rows]
    np.testing.assert_array_equal(table.column("epoch").to_numpy(), np.array([recorded.epochs[i] for i in rows]))
    got_idx = table.column("indices").to_pylist()
    got_val = table.column("values").to_pylist()
    for k, i in enumerate(rows):
        assert got_idx[k] == recorded.indices[i].tolist(), f"indices of row {k}"
        assert got_val[k] == recorded.values[i].tolist(), f"values of row {k}"


def test_single_segment_run_has_one_segment(run: RecordedRun) -> None:
    assert len(run.segments) == 1
    assert len(run) == 300


def test_no_rule_equals_reference_and_recording(run: RecordedRun) -> None:
    ours = collect_table([run.path])
    _assert_same(ours, reference_table([run.path]))
    _assert_matches_recorded(ours, run, run.rows())
    assert ours.equals(run.expected_table())


@pytest.mark.parametrize(
    "rule",
    [
        Label("model") == "supply_chain",
        all_(Label("model") == "epidemic", Label("replication") >= 1),
        any_(Label("measure") == "stock", Label("measure") == "backlog"),
    ],
    ids=["eq", "all", "any"],
)
def test_rule_equals_reference(run: RecordedRun, rule: Rule) -> None:
    ours = collect_table([run.path], rule=rule)
    ref = reference_table([run.path], rule=rule)
    _assert_same(ours, ref)
    selected = {s["stream_id"] for s in Rule(rule.to_dict()).select(run.streams)}
    assert 0 < len(selected) < len(run.streams)
    assert set(ours.column("stream_id").to_pylist()) == selected
    _assert_matches_recorded(ours, run, run.rows(selected))


def test_raw_spec_dict_rule_equals_reference(run: RecordedRun) -> None:
    ours = collect_table([run.path], rule=MODEL_SPEC)
    _assert_same(ours, reference_table([run.path], rule=Rule(MODEL_SPEC)))
    selected = [s["stream_id"] for s in run.streams if s["model"] == "supply_chain"]
    _assert_matches_recorded(ours, run, run.rows(selected))


@pytest.mark.parametrize(
    "columns",
    [
        ["organisation", "model", "experiment", "run", "replication", "entity", "measure"],
        ["measure", "run", "measure", "entity", "run"],
        ["experiment", "no_such_label", "model"],
        ["_logger_path", "epoch_scale", "value_scale"],
    ],
    ids=["all-labels", "duplicates", "missing-label", "logger-path"],
)
def test_columns_equal_reference(run: RecordedRun, columns: list[str]) -> None:
    ours = collect_table([run.path], columns=columns, rule=MODEL_SPEC)
    ref = reference_table([run.path], columns=columns, rule=Rule(MODEL_SPEC))
    _assert_same(ours, ref)
    assert ours.column_names == ["stream_id", "epoch", "indices", "values", *dict.fromkeys(columns)]


def test_missing_label_is_a_null_column(run: RecordedRun) -> None:
    ours = collect_table([run.path], columns=["no_such_label"])
    assert ours.column("no_such_label").null_count == ours.num_rows == len(run)


def test_label_missing_on_some_streams_equals_reference(tmp_path: Path) -> None:
    labels = [
        {"organisation": "disco", "model": "supply_chain", "entity": "a"},
        {"organisation": "disco", "model": "supply_chain"},
        {"organisation": "disco", "model": "epidemic", "entity": "c"},
    ]
    recorded = build_run(tmp_path / "run", seed=5, labels=labels, n_records=120)
    ours = collect_table([recorded.path], columns=["entity", "model"])
    _assert_same(ours, reference_table([recorded.path], columns=["entity", "model"]))
    assert ours.equals(recorded.expected_table(columns=["entity", "model"]))
    assert ours.column("entity").null_count == sum(sid == 2 for sid in recorded.stream_ids)


def test_several_paths_keep_their_order(tmp_path: Path) -> None:
    runs = [build_run(tmp_path / f"run{i}", seed=10 + i, n_records=150) for i in range(3)]
    order = [runs[2].path, runs[0].path, runs[1].path]
    columns = ["_logger_path", "experiment", "entity"]
    ours = collect_table(order, columns=columns)
    _assert_same(ours, reference_table(order, columns=columns))
    assert ours.column("_logger_path").to_pylist() == [str(p) for p in order for _ in range(150)]
    _assert_same(
        collect_table(order, columns=columns, rule=MODEL_SPEC),
        reference_table(order, columns=columns, rule=Rule(MODEL_SPEC)),
    )


def _read_ipc_file(buffer: pa.Buffer) -> pa.Table:
    """Read an Arrow IPC file held in memory, with contiguous columns."""
    return pa.ipc.open_file(buffer).read_all().combine_chunks()


class IpcFileWriter:
    """An Arrow IPC file writer that exposes its ``schema`` (pyarrow's own writers do not).

    Args:
        sink: Where the IPC file goes.
        schema: The file's schema; batches written must conform to it.
    """

    def __init__(self, sink: pa.NativeFile, schema: pa.Schema) -> None:
        self.schema = schema
        self._writer = pa.ipc.new_file(sink, schema)

    def write_batch(self, batch: pa.RecordBatch) -> None:
        """Write one batch to the IPC file.

        Args:
            batch: A batch of exactly ``self.schema``.
        """
        assert batch.schema == self.schema
        self._writer.write_batch(batch)

    def close(self) -> None:
        """Finish the IPC file."""
        self._writer.close()


def _collect_to_ipc(
    collector_cls: Any, path: Path, schema: pa.Schema, *, expose_schema: bool, **kwargs: Any
) -> pa.Table:
    """Collect into an Arrow IPC file writer held in memory.

    Args:
        collector_cls: ``herocollector.Collector`` or ``data_logger.Collector``.
        path: The logger directory.
        schema: The IPC file's schema.
        expose_schema: Wrap the writer so that it has a non-None ``schema`` attribute;
            otherwise use the bare ``pa.ipc.new_file`` writer, which has none.
        **kwargs: Passed to ``collect``.

    Returns:
        The table read back from the IPC file.
    """
    sink = pa.BufferOutputStream()
    writer = IpcFileWriter(sink, schema) if expose_schema else pa.ipc.new_file(sink, schema)
    try:
        assert collector_cls([path]).collect(writer, **kwargs) is True
    finally:
        writer.close()
    return _read_ipc_file(sink.getvalue())


def test_writer_with_schema_equals_reference(run: RecordedRun) -> None:
    import data_logger

    columns = ["experiment", "run", "entity", "no_such_label"]
    # The schema the reference produces for these columns, except that the missing label
    # (null in an inferred schema) is typed string: a writer's schema decides the types.
    schema = pa.schema(
        [
            pa.field("stream_id", pa.uint32()),
            pa.field("epoch", pa.float64()),
            pa.field("indices", pa.list_(pa.int64())),
            pa.field("values", pa.list_(pa.float64())),
            pa.field("experiment", pa.string()),
            pa.field("run", pa.int64()),
            pa.field("entity", pa.string()),
            pa.field("no_such_label", pa.string()),
        ]
    )
    kwargs: dict[str, Any] = {"columns": columns, "expose_schema": True}
    ours = _collect_to_ipc(Collector, run.path, schema, rule=MODEL_SPEC, **kwargs)
    ref = _collect_to_ipc(data_logger.Collector, run.path, schema, rule=Rule(MODEL_SPEC), **kwargs)
    assert ours.schema == schema
    _assert_same(ours, ref)
    assert ours.column("no_such_label").null_count == ours.num_rows > 0
    _assert_same(ours, collect_table([run.path], rule=MODEL_SPEC, columns=columns).cast(schema))


def test_bare_ipc_writer_equals_reference(run: RecordedRun) -> None:
    """pyarrow's IPC writers expose no ``schema``: batches keep their inferred types."""
    import data_logger

    columns = ["experiment", "run", "measure"]
    schema = Collector.schema_for(columns, {"run": pa.int64()})
    ours = _collect_to_ipc(Collector, run.path, schema, columns=columns, expose_schema=False)
    ref = _collect_to_ipc(data_logger.Collector, run.path, schema, columns=columns, expose_schema=False)
    assert ours.schema == schema
    _assert_same(ours, ref)


def test_rotated_run_returns_recorded_data(rotated_run: RecordedRun) -> None:
    ours = collect_table([rotated_run.path], columns=["measure"])
    _assert_matches_recorded(ours, rotated_run, rotated_run.rows())
    assert ours.equals(rotated_run.expected_table(columns=["measure"]))


def test_rotated_run_with_rule(rotated_run: RecordedRun) -> None:
    ours = collect_table([rotated_run.path], rule=Label("model") == "epidemic")
    selected = [s["stream_id"] for s in rotated_run.streams if s["model"] == "epidemic"]
    _assert_matches_recorded(ours, rotated_run, rotated_run.rows(selected))


def test_rotated_run_reference_gets_epochs_wrong(rotated_run: RecordedRun) -> None:
    """Documents the reference's known bug: it resets epoch ticks at every segment file."""
    ours = collect_table([rotated_run.path])
    ref = reference_table([rotated_run.path])
    # Everything but the epochs agrees with the reference...
    for name in ("stream_id", "indices", "values"):
        assert ours.column(name).equals(ref.column(name))
    # ...and the reference's epochs are not the recorded ones, while ours are.
    recorded = np.array(rotated_run.epochs)
    np.testing.assert_array_equal(ours.column("epoch").to_numpy(), recorded)
    ref_epochs = ref.column("epoch").to_numpy()
    assert not np.array_equal(ref_epochs, recorded)
    # The first segment is right in the reference too: the damage starts after rotation.
    first = _records_in_first_segment(rotated_run)
    assert 0 < first < len(rotated_run)
    np.testing.assert_array_equal(ref_epochs[:first], recorded[:first])


def _records_in_first_segment(recorded: RecordedRun) -> int:
    """Records in segment 00000 (the data logger writes one record per zstd frame)."""
    return len(zstd_frame_starts(recorded.segments[0].read_bytes()))


@pytest.mark.parametrize(("rotate_bytes", "segments"), [(1579, 34), (415, 126)])
def test_runs_rotated_into_many_segments_decode_exactly(tmp_path: Path, rotate_bytes: int, segments: int) -> None:
    """Epoch ticks carry across 34 and 126 segment files, whatever the chunking."""
    recorded = build_run(tmp_path / "many", seed=7, n_records=2000, rotate_bytes=rotate_bytes)
    assert len(recorded.segments) == segments
    expected = recorded.expected_table(columns=["measure"])
    for chunk_bytes in (4096, 1 << 20):
        writer = MemoryWriter()
        assert Collector([recorded.path], chunk_bytes=chunk_bytes).collect(writer, columns=["measure"]) is True
        ours = writer.table()
        _assert_matches_recorded(ours, recorded, recorded.rows())
        assert ours.equals(expected)
