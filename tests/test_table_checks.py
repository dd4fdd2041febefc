"""The suite's check that a table holds a run exactly as recorded (:func:`herocollector.testing.tables.assert_as_recorded`).

It compares in Arrow first and falls back to comparing records as tuples; either way it must
pass for the same records in any row order and fail for any record changed, missing or doubled.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from herocollector.output.delta import TABLE_RUN_COLUMN
from herocollector.testing.runs import RecordedRun, build_run
from herocollector.testing.tables import assert_as_recorded

COLUMNS = ["experiment", "measure"]


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> RecordedRun:
    return build_run(tmp_path_factory.mktemp("checks") / "run", seed=5, n_records=400)


def as_table(run: RecordedRun, order: np.ndarray | None = None) -> pa.Table:
    """The run's records as a collected table holds them (with its run column), in ``order``."""
    table = run.expected_table(columns=COLUMNS)
    table = table.append_column(TABLE_RUN_COLUMN, pa.array([str(run.path)] * table.num_rows))
    return table if order is None else table.take(pa.array(order))


def test_the_same_records_in_any_order_and_beside_another_runs_pass(run: RecordedRun) -> None:
    shuffled = np.random.default_rng(1).permutation(len(run))
    table = as_table(run)
    other = table.set_column(
        table.schema.get_field_index(TABLE_RUN_COLUMN), TABLE_RUN_COLUMN, pa.array(["/x"] * len(run))
    )
    assert_as_recorded(pa.concat_tables([as_table(run, shuffled), other]), run, COLUMNS)
    assert_as_recorded(as_table(run, shuffled[::-1]), run, COLUMNS)


def changed(run: RecordedRun) -> RecordedRun:
    """A copy of ``run`` whose records may be changed."""
    return RecordedRun(
        run.path, run.streams, list(run.stream_ids), list(run.epochs), list(run.indices), list(run.values)
    )


def test_ties_in_the_sort_are_broken_by_content(run: RecordedRun) -> None:
    """Two records of one stream at one epoch, the other way round: the same records."""
    first, second = 0, next(i for i in range(1, len(run)) if run.stream_ids[i] == run.stream_ids[0])
    tied = changed(run)
    tied.epochs[second] = tied.epochs[first]
    tied.values[second] = tied.values[first] + 1.0  # the two are different records
    order = np.arange(len(run))
    order[[first, second]] = order[[second, first]]
    assert_as_recorded(as_table(tied, order), tied, COLUMNS)


def test_records_arrow_cannot_compare_are_compared_as_records(run: RecordedRun) -> None:
    """A NaN is not equal to itself in Arrow; as records it is."""
    with_nan = changed(run)
    k = next(i for i in range(len(run)) if len(run.values[i]))
    with_nan.values[k] = np.full(len(run.values[k]), np.nan)
    assert_as_recorded(as_table(with_nan, np.arange(len(run))[::-1]), with_nan, COLUMNS)
    other = changed(with_nan)
    other.values[k] = np.zeros(len(run.values[k]))
    with pytest.raises(AssertionError):
        assert_as_recorded(as_table(other), with_nan, COLUMNS)


@pytest.mark.parametrize("damage", ["value", "epoch", "missing", "doubled", "label"])
def test_any_record_changed_missing_or_doubled_fails(run: RecordedRun, damage: str) -> None:
    table = as_table(run)
    k = len(run) // 2
    if damage == "value":
        values = table["values"].to_pylist()
        values[k] = [v + 0.5 for v in values[k]] or [1.0]
        table = table.set_column(3, "values", pa.array(values, table.schema.field("values").type))
    elif damage == "epoch":
        epochs = table["epoch"].to_pylist()
        epochs[k] += 1e-9
        table = table.set_column(1, "epoch", pa.array(epochs, pa.float64()))
    elif damage == "missing":
        table = pa.concat_tables([table.slice(0, k), table.slice(k + 1)])
    elif damage == "doubled":
        table = pa.concat_tables([table, table.slice(k, 1)])
    else:
        measures = table["measure"].to_pylist()
        measures[k] = f"{measures[k]}-other"
        table = table.set_column(table.schema.get_field_index("measure"), "measure", pa.array(measures))
    with pytest.raises(AssertionError):
        assert_as_recorded(table, run, COLUMNS)
