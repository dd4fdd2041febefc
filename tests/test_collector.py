"""Collector semantics on real logger directories: selection, columns, ``_DONE``
waiting, cleanup, bad input and chunked decoding.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pyarrow as pa
import pytest
import zstandard
from tools.label_selector import Label

import herocollector.collector
import herocollector.output.batches
import herocollector.run.logdir
from herocollector import Collector, CollectorError, MetadataError, SegmentError, UnknownStreamError
from herocollector.testing.runs import (
    MemoryWriter,
    RecordedRun,
    batches_to_table,
    build_run,
    collect_table,
    write_stream_json,
    zstd_frame_starts,
)

E = TypeVar("E", bound=CollectorError)

BASE = ["stream_id", "epoch", "indices", "values"]


# ----------------------------------------------------------------------------------------
# The façade and the decoding core
# ----------------------------------------------------------------------------------------

MOVED = ("BASE_COLUMNS", "BASE_FIELDS", "label_array", "output_schema", "parse_columns", "run_batches", "scan_run")


@pytest.mark.parametrize("name", MOVED)
def test_the_facade_still_offers_what_moved_to_the_output_layer(name: str) -> None:
    assert getattr(herocollector.collector, name) is getattr(herocollector.output.batches, name)
    assert name in herocollector.collector.__all__


def test_the_facade_collects_with_the_decoding_cores_columns(tmp_path: Path) -> None:
    run = build_run(tmp_path / "run", seed=3, n_records=50)
    streams, inventory = herocollector.collector.scan_run(run.path)
    assert sorted(s.stream_id for s in streams) == sorted(s["stream_id"] for s in run.streams)
    assert inventory.segment_bytes == sum(p.stat().st_size for p in run.path.glob("*.seg.zst"))
    schema = Collector.schema_for(["experiment"])
    assert schema.names == [*herocollector.output.batches.BASE_COLUMNS, "experiment"]
    table = collect_table([run.path], columns=["experiment"])
    assert table.schema.names == schema.names
    assert table.num_rows == len(run.stream_ids)


# ----------------------------------------------------------------------------------------
# Construction
# ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("paths", [[], ()], ids=["list", "tuple"])
def test_empty_paths_raise_value_error(paths: Any) -> None:
    with pytest.raises(ValueError):
        Collector(paths)


def test_paths_keep_order(tmp_path: Path) -> None:
    paths = [tmp_path / "b", tmp_path / "a", tmp_path / "c"]
    assert Collector(paths).paths == paths
    assert Collector([str(p) for p in paths]).paths == paths


# ----------------------------------------------------------------------------------------
# Selection
# ----------------------------------------------------------------------------------------


def test_rule_selects_subset(run: RecordedRun) -> None:
    rule = Label("measure") == run.streams[1]["measure"]
    selected = [s["stream_id"] for s in run.streams if s["measure"] == run.streams[1]["measure"]]
    assert 0 < len(selected) < len(run.streams)
    table = collect_table([run.path], rule=rule)
    assert table.equals(run.expected_table(selected))


def test_raw_spec_dict_selects_like_rule(run: RecordedRun) -> None:
    spec = {"any": [{"match": {"key": "model", "op": "eq", "value": "epidemic"}}]}
    assert collect_table([run.path], rule=spec).equals(collect_table([run.path], rule=Label("model") == "epidemic"))


def test_nothing_selected_returns_true_without_batches(run: RecordedRun) -> None:
    writer = MemoryWriter()
    assert Collector([run.path]).collect(writer, rule=Label("model") == "no-such-model") is True
    assert writer.batches == []


def test_selected_stream_without_records(tmp_path: Path) -> None:
    recorded = build_run(tmp_path / "run", seed=3, n_records=0)
    writer = MemoryWriter()
    assert Collector([recorded.path]).collect(writer) is True
    assert batches_to_table(writer.batches).num_rows == 0


def test_invalid_rule_raises_collector_error(run: RecordedRun) -> None:
    with pytest.raises(CollectorError):
        Collector([run.path]).collect(MemoryWriter(), rule={"bogus": 1})
    with pytest.raises(CollectorError):
        Collector([run.path]).collect(MemoryWriter(), rule=42)


# ----------------------------------------------------------------------------------------
# Columns
# ----------------------------------------------------------------------------------------


def test_columns_dedupe_keep_order_and_null_missing(run: RecordedRun) -> None:
    columns = ["measure", "run", "no_such_label", "measure", "organisation", "run"]
    table = collect_table([run.path], columns=columns)
    assert table.column_names == BASE + ["measure", "run", "no_such_label", "organisation"]
    assert table.schema.field("stream_id").type == pa.uint32()
    assert table.schema.field("indices").type == pa.list_(pa.int64())
    assert table.column("no_such_label").null_count == len(run)
    assert table.equals(run.expected_table(columns=["measure", "run", "no_such_label", "organisation"]))


def test_logger_path_column(tmp_path: Path) -> None:
    first = build_run(tmp_path / "one", seed=20, n_records=50)
    second = build_run(tmp_path / "two", seed=21, n_records=70)
    table = collect_table([second.path, first.path], columns=["_logger_path"])
    assert table.column("_logger_path").to_pylist() == [str(second.path)] * 70 + [str(first.path)] * 50


def test_label_of_mixed_types_raises_collector_error(tmp_path: Path) -> None:
    labels: list[dict[str, Any]] = [{"model": "a", "run": 1}, {"model": "b", "run": "one"}]
    recorded = build_run(tmp_path / "run", seed=4, labels=labels, n_records=20)
    writer = MemoryWriter()
    with pytest.raises(CollectorError, match="run"):
        Collector([recorded.path]).collect(writer, columns=["run"])
    assert writer.batches == []
    # Each stream on its own is fine.
    assert collect_table([recorded.path], columns=["run"], rule=Label("model") == "b").num_rows == sum(
        sid == 2 for sid in recorded.stream_ids
    )


@pytest.mark.parametrize("name", ["epoch", "stream_id", "indices", "values"])
def test_column_clashing_with_base_column_raises(run: RecordedRun, name: str) -> None:
    writer = MemoryWriter()
    with pytest.raises(CollectorError):
        Collector([run.path]).collect(writer, columns=["measure", name])
    assert writer.batches == []


def test_writer_schema_decides_types_and_columns(run: RecordedRun) -> None:
    schema = Collector.schema_for(["run", "measure", "absent"], {"run": pa.int32()})
    writer = MemoryWriter(schema)
    assert Collector([run.path]).collect(writer, columns=["ignored-when-schema-given"]) is True
    assert all(batch.schema == schema for batch in writer.batches)
    table = writer.table()
    expected = run.expected_table(columns=["run", "measure", "absent"]).cast(schema)
    assert table.equals(expected)


# ----------------------------------------------------------------------------------------
# Waiting for _DONE
# ----------------------------------------------------------------------------------------


def _unfinished(run: RecordedRun) -> RecordedRun:
    """Remove the run's ``_DONE`` marker, as if the logger were still running."""
    (run.path / "_DONE").unlink()
    return run


def test_collect_times_out_without_done(run: RecordedRun) -> None:
    _unfinished(run)
    writer = MemoryWriter()
    assert Collector([run.path]).collect(writer, backoff=20, timeout=200) is False
    assert writer.batches == []


def test_collect_times_out_if_any_path_is_unfinished(tmp_path: Path) -> None:
    done = build_run(tmp_path / "done", seed=30, n_records=20)
    pending = _unfinished(build_run(tmp_path / "pending", seed=31, n_records=20))
    writer = MemoryWriter()
    assert Collector([done.path, pending.path]).collect(writer, backoff=20, timeout=200) is False
    assert writer.batches == []


def _done_appears_while_polling(monkeypatch: pytest.MonkeyPatch, path: Path) -> tuple[threading.Thread, list[bool]]:
    """Arrange for ``_DONE`` to be created by a background thread once the collector has
    polled it at least once and found it missing (no sleeps, no timing assumptions).

    Args:
        monkeypatch: Used to observe ``herocollector.run.logdir.is_done``.
        path: The unfinished logger directory.

    Returns:
        The started background thread and the list of poll results seen so far.
    """
    polled_missing = threading.Event()
    seen: list[bool] = []
    original = herocollector.run.logdir.is_done

    def observed(p: str | Path) -> bool:
        result = original(p)
        seen.append(result)
        if not result:
            polled_missing.set()
        return result

    def finish() -> None:
        polled_missing.wait()
        (path / "_DONE").touch()

    monkeypatch.setattr(herocollector.run.logdir, "is_done", observed)
    thread = threading.Thread(target=finish, daemon=True)
    thread.start()
    return thread, seen


def test_collect_returns_true_when_done_appears(run: RecordedRun, monkeypatch: pytest.MonkeyPatch) -> None:
    _unfinished(run)
    thread, seen = _done_appears_while_polling(monkeypatch, run.path)
    writer = MemoryWriter()
    # A generous timeout only so that a broken implementation cannot hang the suite.
    assert Collector([run.path]).collect(writer, backoff=5, timeout=60_000) is True
    thread.join()
    assert seen[0] is False and seen[-1] is True
    assert writer.table().equals(run.expected_table())


def test_collect_waits_forever_with_timeout_none(run: RecordedRun, monkeypatch: pytest.MonkeyPatch) -> None:
    _unfinished(run)
    thread, seen = _done_appears_while_polling(monkeypatch, run.path)
    writer = MemoryWriter()
    assert Collector([run.path]).collect(writer, backoff=5, timeout=None) is True
    thread.join()
    assert False in seen
    assert writer.table().num_rows == len(run)


def test_done_created_by_timer(run: RecordedRun) -> None:
    """``_DONE`` written by a ``threading.Timer``: whenever it fires, collect succeeds."""
    _unfinished(run)
    timer = threading.Timer(0.05, (run.path / "_DONE").touch)
    timer.start()
    try:
        writer = MemoryWriter()
        assert Collector([run.path]).collect(writer, backoff=5, timeout=None) is True
    finally:
        timer.join()
    assert writer.table().num_rows == len(run)


# ----------------------------------------------------------------------------------------
# Cleanup
# ----------------------------------------------------------------------------------------


def test_cleanup_keeps_meta_by_default(rotated_run: RecordedRun) -> None:
    streams = sorted(p.name for p in (rotated_run.path / "streams").iterdir())
    assert Collector([rotated_run.path]).cleanup() is True
    assert rotated_run.segments == []
    assert sorted(p.name for p in (rotated_run.path / "streams").iterdir()) == streams
    assert (rotated_run.path / "_DONE").exists()


def test_cleanup_without_meta_removes_streams(tmp_path: Path) -> None:
    runs = [build_run(tmp_path / f"run{i}", seed=40 + i, n_records=30) for i in range(2)]
    assert Collector([r.path for r in runs]).cleanup(keep_meta=False) is True
    for recorded in runs:
        assert recorded.segments == []
        assert not (recorded.path / "streams").exists()
        assert (recorded.path / "_DONE").exists()


def test_cleanup_times_out_and_removes_nothing(tmp_path: Path) -> None:
    done = build_run(tmp_path / "done", seed=50, n_records=30)
    pending = _unfinished(build_run(tmp_path / "pending", seed=51, n_records=30))
    before = {p: sorted(p.rglob("*")) for p in (done.path, pending.path)}
    collector = Collector([done.path, pending.path])
    assert collector.cleanup(keep_meta=False, backoff=20, timeout=200) is False
    assert {p: sorted(p.rglob("*")) for p in (done.path, pending.path)} == before


def test_cleanup_without_waiting(run: RecordedRun) -> None:
    _unfinished(run)
    assert Collector([run.path]).cleanup(wait_for_done=False, keep_meta=False) is True
    assert run.segments == []
    assert not (run.path / "streams").exists()


def test_collect_after_cleanup_is_empty(run: RecordedRun) -> None:
    collector = Collector([run.path])
    assert collector.cleanup() is True
    writer = MemoryWriter()
    assert collector.collect(writer) is True
    assert batches_to_table(writer.batches).num_rows == 0


# ----------------------------------------------------------------------------------------
# Bad input: every error is a CollectorError naming the file
# ----------------------------------------------------------------------------------------


def _collect_error(paths: list[Path], error: type[E], writer: MemoryWriter | None = None, **kwargs: Any) -> E:
    """Collect and return the error raised, asserting its type.

    Args:
        paths: Logger directories.
        error: The expected CollectorError subclass.
        writer: The writer to use; a fresh MemoryWriter if None.
        **kwargs: Passed to ``collect``.

    Returns:
        The raised exception.
    """
    with pytest.raises(error) as info:
        Collector(paths).collect(writer if writer is not None else MemoryWriter(), timeout=200, **kwargs)
    assert isinstance(info.value, error)
    return info.value


def _first_stream_file(run: RecordedRun) -> Path:
    return sorted((run.path / "streams").glob("*.json"))[0]


def test_invalid_json_in_stream_file(run: RecordedRun) -> None:
    file = _first_stream_file(run)
    file.write_text('{"stream_id": 1, "epoch_scale": 0.25,', encoding="utf-8")
    exc = _collect_error([run.path], MetadataError)
    assert exc.path == str(file) and str(file) in str(exc)


def test_stream_file_not_an_object(run: RecordedRun) -> None:
    file = _first_stream_file(run)
    file.write_text("[1, 2, 3]", encoding="utf-8")
    assert str(file) in str(_collect_error([run.path], MetadataError))


@pytest.mark.parametrize("field", ["epoch_scale", "value_scale", "stream_id"])
def test_missing_field_in_stream_file(run: RecordedRun, field: str) -> None:
    file = _first_stream_file(run)
    meta = json.loads(file.read_text(encoding="utf-8"))
    del meta[field]
    write_stream_json(file, meta)
    exc = _collect_error([run.path], MetadataError)
    assert str(file) in str(exc) and field in str(exc)


@pytest.mark.parametrize("value", [0, -1.0, "0.5", None, True], ids=repr)
def test_invalid_scale_in_stream_file(run: RecordedRun, value: Any) -> None:
    file = _first_stream_file(run)
    meta = json.loads(file.read_text(encoding="utf-8"))
    meta["value_scale"] = value
    write_stream_json(file, meta)
    assert str(file) in str(_collect_error([run.path], MetadataError))


def test_duplicate_stream_id(run: RecordedRun) -> None:
    files = sorted((run.path / "streams").glob("*.json"))
    meta = json.loads(files[1].read_text(encoding="utf-8"))
    meta["stream_id"] = json.loads(files[0].read_text(encoding="utf-8"))["stream_id"]
    write_stream_json(files[1], meta)
    assert files[1].name in str(_collect_error([run.path], MetadataError))


def test_path_that_does_not_exist(run: RecordedRun, tmp_path: Path) -> None:
    missing = tmp_path / "no-such-run"
    writer = MemoryWriter()
    exc = _collect_error([run.path, missing], CollectorError, writer)
    assert exc.path == str(missing) and str(missing) in str(exc)
    assert writer.batches == []


def test_path_without_streams(tmp_path: Path) -> None:
    bare = tmp_path / "bare"
    bare.mkdir()
    (bare / "_DONE").touch()
    exc = _collect_error([bare], MetadataError)
    assert exc.path == str(bare) and "streams" in str(exc)


def test_segment_stream_without_metadata(run: RecordedRun) -> None:
    missing_sid = run.stream_ids[0]
    (run.path / "streams" / f"{missing_sid:08d}.json").unlink()
    segment = run.segments[0]
    exc = _collect_error([run.path], UnknownStreamError)
    assert isinstance(exc, SegmentError)
    assert exc.path == str(segment) and str(segment) in str(exc)
    assert exc.stream_id == missing_sid and str(missing_sid) in str(exc)
    # The data logger writes one record per frame: record 0 is frame 0.
    assert exc.offset == 0


def test_segment_stream_without_metadata_in_later_segment(rotated_run: RecordedRun) -> None:
    """The unknown id is reported with the segment and frame where it first occurs."""
    sid = rotated_run.stream_ids[-1]
    first = rotated_run.stream_ids.index(sid)
    (rotated_run.path / "streams" / f"{sid:08d}.json").unlink()
    # Find the segment and frame holding record ``first`` (one record per frame).
    passed = 0
    for segment in rotated_run.segments:
        starts = zstd_frame_starts(segment.read_bytes())
        if first < passed + len(starts):
            break
        passed += len(starts)
    other = next(s["stream_id"] for s in rotated_run.streams if s["stream_id"] != sid)
    exc = _collect_error([rotated_run.path], UnknownStreamError, rule=Label("stream_id") == other)
    assert exc.path == str(segment)
    assert exc.stream_id == sid
    assert exc.offset == starts[first - passed]


def _rows_per_segment(run: RecordedRun) -> list[int]:
    """Records in each segment (the data logger writes one record per zstd frame)."""
    counts = [len(zstd_frame_starts(p.read_bytes())) for p in run.segments]
    assert sum(counts) == len(run)
    return counts


def _assert_prefix_written(writer: MemoryWriter, run: RecordedRun, limit: int) -> None:
    """Assert the writer holds a prefix of the run's records, no longer than ``limit``.

    Args:
        writer: What the collector wrote before failing.
        run: The recorded run.
        limit: Records in the segments before the damaged one.
    """
    got = batches_to_table(writer.batches)
    assert got.num_rows <= limit
    assert got.equals(run.expected_table(rows=range(got.num_rows)))


@pytest.mark.parametrize("chop", [1, 3, 7])
def test_truncated_segment(rotated_run: RecordedRun, chop: int) -> None:
    k = 4
    counts = _rows_per_segment(rotated_run)
    segment = rotated_run.segments[k]
    data = segment.read_bytes()
    last_frame = zstd_frame_starts(data)[-1]
    segment.write_bytes(data[:-chop])
    writer = MemoryWriter()
    exc = _collect_error([rotated_run.path], SegmentError, writer)
    assert exc.path == str(segment) and str(segment) in str(exc)
    assert exc.offset == last_frame and f"offset {last_frame}" in str(exc)
    _assert_prefix_written(writer, rotated_run, sum(counts[:k]))


def test_truncated_last_segment_in_the_middle_of_a_frame_header(run: RecordedRun) -> None:
    segment = run.segments[0]
    data = segment.read_bytes()
    last_frame = zstd_frame_starts(data)[-1]
    segment.write_bytes(data[: last_frame + 2])
    exc = _collect_error([run.path], SegmentError)
    assert exc.path == str(segment) and exc.offset == last_frame


def test_garbage_appended_to_segment(rotated_run: RecordedRun) -> None:
    k = 2
    counts = _rows_per_segment(rotated_run)
    segment = rotated_run.segments[k]
    size = segment.stat().st_size
    with open(segment, "ab") as fh:
        fh.write(b"this is not a zstd frame at all")
    writer = MemoryWriter()
    exc = _collect_error([rotated_run.path], SegmentError, writer)
    assert exc.path == str(segment) and str(segment) in str(exc)
    assert exc.offset == size
    _assert_prefix_written(writer, rotated_run, sum(counts[:k]))


def test_segment_of_random_bytes(run: RecordedRun) -> None:
    segment = run.segments[0]
    segment.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    writer = MemoryWriter()
    exc = _collect_error([run.path], SegmentError, writer)
    assert exc.path == str(segment) and exc.offset == 0
    assert writer.batches == []


def test_corrupt_frame_content(run: RecordedRun) -> None:
    """A frame with a valid header whose compressed block is garbage."""
    segment = run.segments[0]
    data = segment.read_bytes()
    starts = zstd_frame_starts(data)
    k = len(starts) // 2
    # magic, FHD 0x20 (single segment, 1-byte content size), content size 10, then one
    # last compressed block (header 1 | 2 << 1 | 5 << 3) of 5 garbage bytes.
    bad = b"\x28\xb5\x2f\xfd" + bytes([0x20, 10]) + (1 | 2 << 1 | 5 << 3).to_bytes(3, "little") + b"\xff" * 5
    with pytest.raises(zstandard.ZstdError):
        zstandard.ZstdDecompressor().decompress(bad)
    segment.write_bytes(data[: starts[k]] + bad + data[starts[k + 1] :])
    writer = MemoryWriter()
    exc = _collect_error([run.path], SegmentError, writer)
    assert exc.path == str(segment)
    assert exc.offset == starts[k]
    assert writer.batches == []


def test_record_cut_short(run: RecordedRun) -> None:
    """A well-formed zstd frame whose content ends in the middle of a record."""
    segment = run.segments[0]
    data = segment.read_bytes()
    sid = run.stream_ids[0]
    # stream_id, zigzag(delta)=2, n=3, first index=5, then nothing.
    cut = zstandard.ZstdCompressor().compress(bytes([sid, 2, 3, 5]))
    segment.write_bytes(data + cut)
    writer = MemoryWriter()
    exc = _collect_error([run.path], SegmentError, writer)
    assert exc.path == str(segment) and exc.offset == len(data)
    assert writer.batches == []


def test_damage_in_second_path_names_that_path(tmp_path: Path) -> None:
    good = build_run(tmp_path / "good", seed=60, n_records=40)
    bad = build_run(tmp_path / "bad", seed=61, n_records=40)
    segment = bad.segments[0]
    segment.write_bytes(segment.read_bytes()[:-2])
    writer = MemoryWriter()
    exc = _collect_error([good.path, bad.path], SegmentError, writer)
    assert exc.path == str(segment)
    assert batches_to_table(writer.batches).equals(good.expected_table())


# ----------------------------------------------------------------------------------------
# Chunked decoding (bounded memory)
# ----------------------------------------------------------------------------------------


def test_small_chunks_give_several_batches_and_the_same_table(tmp_path: Path) -> None:
    recorded = build_run(tmp_path / "run", seed=70, n_records=1500, max_nnz=16)
    assert len(recorded.segments) == 1
    columns = ["measure", "entity"]
    default = MemoryWriter()
    assert Collector([recorded.path]).collect(default, columns=columns) is True
    small = MemoryWriter()
    assert Collector([recorded.path], chunk_bytes=4096).collect(small, columns=columns) is True
    assert len(small.batches) > len(default.batches)
    assert len(small.batches) >= 3
    assert all(b.num_rows > 0 for b in small.batches)
    assert small.table().equals(default.table())
    assert small.table().equals(recorded.expected_table(columns=columns))


def test_small_chunks_on_rotated_run_with_rule(rotated_run: RecordedRun) -> None:
    rule = Label("model") == "supply_chain"
    selected = [s["stream_id"] for s in rotated_run.streams if s["model"] == "supply_chain"]
    writer = MemoryWriter()
    assert Collector([rotated_run.path], chunk_bytes=4096).collect(writer, rule=rule) is True
    assert writer.table().equals(rotated_run.expected_table(selected))


def test_batches_iterator_matches_collect(run: RecordedRun) -> None:
    batches = list(Collector([run.path], chunk_bytes=4096).batches(columns=["run"]))
    assert batches and all(isinstance(b, pa.RecordBatch) for b in batches)
    assert batches_to_table(batches).equals(collect_table([run.path], columns=["run"]))


def test_batches_yields_none_on_timeout(run: RecordedRun) -> None:
    _unfinished(run)
    assert list(Collector([run.path]).batches(backoff=20, timeout=200)) == [None]


def test_records_larger_than_a_chunk(tmp_path: Path) -> None:
    """Frames that decompress to more than ``chunk_bytes`` are decoded piecewise, exactly."""
    recorded = build_run(tmp_path / "run", seed=80, n_records=60, max_nnz=3000, rotate_bytes=20_000)
    assert len(recorded.segments) >= 2
    assert max(len(i) for i in recorded.indices) * 2 > 4096
    writer = MemoryWriter()
    assert Collector([recorded.path], chunk_bytes=4096).collect(writer, columns=["entity"]) is True
    assert writer.table().equals(recorded.expected_table(columns=["entity"]))
    assert writer.table().equals(collect_table([recorded.path], columns=["entity"]))


def test_negative_epochs_and_steps_back(tmp_path: Path) -> None:
    recorded = build_run(tmp_path / "run", seed=90, n_records=400, rotate_bytes=1500, epoch_start=-500.0)
    assert min(recorded.epochs) < 0 and len(recorded.segments) >= 3
    assert collect_table([recorded.path]).equals(recorded.expected_table())


def test_empty_segment_file_is_skipped(rotated_run: RecordedRun) -> None:
    """The logger can leave an empty segment behind when the last frame triggers rotation."""
    last = rotated_run.segments[-1]
    (rotated_run.path / f"{int(last.name.split('.')[0]) + 1:05d}.seg.zst").touch()
    table = collect_table([str(rotated_run.path)], columns=["_logger_path"])
    assert table.drop_columns(["_logger_path"]).equals(rotated_run.expected_table())
    assert table.column("_logger_path").to_pylist() == [str(rotated_run.path)] * len(rotated_run)


# ----------------------------------------------------------------------------------------
# Independent runs in parallel threads
# ----------------------------------------------------------------------------------------


def test_two_runs_decoded_in_two_threads_at_once(tmp_path: Path) -> None:
    """Decoders share no mutable state: two threads decoding two runs get exact results."""
    runs = [
        build_run(tmp_path / "a", seed=101, n_records=1500, rotate_bytes=2500),
        build_run(tmp_path / "b", seed=102, n_records=1500, max_nnz=40),
    ]
    expected = [r.expected_table(columns=["measure"]) for r in runs]
    start = threading.Barrier(len(runs))
    results: dict[int, list[pa.Table]] = {i: [] for i in range(len(runs))}
    failures: list[BaseException] = []

    def work(i: int) -> None:
        try:
            start.wait()
            for chunk_bytes in (4096, 1 << 20, 4096):
                batches = Collector([runs[i].path], chunk_bytes=chunk_bytes).batches(columns=["measure"])
                results[i].append(batches_to_table(list(batches)))
        except BaseException as exc:  # noqa: BLE001 - reported below, in the test's thread
            failures.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(runs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not failures, failures
    for i, tables in results.items():
        assert len(tables) == 3
        assert all(table.equals(expected[i]) for table in tables)


def test_one_collector_over_runs_decoded_in_threads_keeps_each_runs_ticks(tmp_path: Path) -> None:
    """Threads each decoding a rotated run: epoch ticks never leak from one run to another."""
    runs = [build_run(tmp_path / f"r{i}", seed=110 + i, n_records=700, rotate_bytes=1500) for i in range(3)]
    tables: dict[int, pa.Table] = {}

    def work(i: int) -> None:
        tables[i] = collect_table([runs[i].path])

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(runs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i, recorded in enumerate(runs):
        assert tables[i].equals(recorded.expected_table())


def test_decode_kernels_release_the_gil() -> None:
    from herocollector.decode import kernel

    for dispatcher in (kernel.scan_frames, kernel.decode_records, kernel.varint_damage):
        assert dispatcher.targetoptions["nogil"] is True


def test_label_of_mixed_types_names_the_streams_that_disagree(tmp_path: Path) -> None:
    labels: list[dict[str, Any]] = [{"model": "a", "run": 1}, {"model": "b", "run": "one"}]
    recorded = build_run(tmp_path / "run", seed=4, labels=labels, n_records=20)
    with pytest.raises(CollectorError) as info:
        Collector([recorded.path]).collect(MemoryWriter(), columns=["run"])
    message = str(info.value)
    assert f"stream 2 of {recorded.path} has string" in message and f"stream 1 of {recorded.path} has int64" in message
