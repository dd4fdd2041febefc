"""Following a run while it is written: reads from a committed cursor give the rows of one decode, split.

The runs are real: written by ``data_logger.DataLogger`` (in a thread, with rotation, while the
test reads), or a finished real run whose bytes are appended to a copy step by step, so that a
read sees what a reader of a run being written sees: whole frames, then perhaps one torn frame.
The concatenation of every read from ``START`` to ``_DONE`` must be the recorded run and the
one-shot ``run_batches`` decode, exactly (the epochs bit for bit): no row twice, none missing.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from herocollector.decode.follow import FINGERPRINT_BYTES, START, Cursor
from herocollector.errors import CollectorError, MetadataError, RunChanged, SegmentError, UnknownStreamError
from herocollector.output.batches import FollowRead, follow_batches, output_schema, run_batches, scan_run
from herocollector.run.logdir import RunWriter, llround
from herocollector.testing.runs import RecordedRun, build_run, zstd_frame_starts

COLUMNS = ("entity", "measure")
LABEL_TYPES = {"entity": pa.string(), "measure": pa.string()}
DEADLINE = 120.0  # seconds a thread of a test may wait for the other, on a loaded machine


# ----------------------------------------------------------------------------------------
# Helpers
# ----------------------------------------------------------------------------------------


def schema_of(path: Path) -> pa.Schema:
    streams, _ = scan_run(path)
    return output_schema(streams, COLUMNS, LABEL_TYPES)


def follow(
    path: Path,
    cursor: Cursor,
    done: bool,
    *,
    chunk_bytes: int = 4096,
    until: Cursor | None = None,
    select: set[int] | None = None,
) -> tuple[FollowRead, list[pa.RecordBatch]]:
    """One read, as the service does it: ``_DONE`` checked by the caller, then the streams and segments listed."""
    streams, inventory = scan_run(path)
    schema = output_schema(streams, COLUMNS, LABEL_TYPES)
    selected = [s for s in streams if select is None or s.stream_id in select]
    read = follow_batches(
        path, streams, selected, schema, cursor, done=done, chunk_bytes=chunk_bytes, inventory=inventory, until=until
    )
    batches = list(read.batches)
    assert sum(b.num_rows for b in batches) == read.rows
    return read, batches


def table(batches: Sequence[pa.RecordBatch], schema: pa.Schema) -> pa.Table:
    return pa.Table.from_batches(list(batches), schema=schema).combine_chunks()


def one_shot(path: Path) -> pa.Table:
    streams, inventory = scan_run(path)
    schema = output_schema(streams, COLUMNS, LABEL_TYPES)
    return table(list(run_batches(path, streams, streams, schema, inventory=inventory)), schema)


def assert_same(got: pa.Table, expected: pa.Table) -> None:
    """Equal column by column, the epochs bit for bit."""
    assert got.num_rows == expected.num_rows
    for name in expected.column_names:
        assert got.column(name).combine_chunks().equals(expected.column(name).combine_chunks()), name
    epochs = [t.column("epoch").combine_chunks().to_numpy() for t in (got, expected)]
    assert epochs[0].tobytes() == epochs[1].tobytes()


def truth(run: RecordedRun) -> pa.Table:
    expected = run.expected_table(columns=COLUMNS)
    return expected.cast(pa.schema([*expected.schema][:4] + [pa.field(c, pa.string()) for c in COLUMNS]))


def copy_streams(source: Path, target: Path) -> None:
    target.mkdir()
    shutil.copytree(source / "streams", target / "streams")


def position(path: Path, cursor: Cursor) -> int:
    """The cursor as a byte position in the run's segments put end to end."""
    if cursor.segment is None:
        return 0
    sizes = sorted((p.name, p.stat().st_size) for p in path.glob("*.seg.zst"))
    return sum(size for name, size in sizes if name < cursor.segment) + cursor.offset


class Growing:
    """A copy of a finished run whose segments' bytes are appended up to a position, as the logger appends them."""

    def __init__(self, source: Path, target: Path) -> None:
        copy_streams(source, target)
        self.path = target
        self.files = [(p.name, p.read_bytes()) for p in sorted(source.glob("*.seg.zst"))]
        self.total = sum(len(d) for _, d in self.files)
        self.written = 0

    def grow(self, upto: int) -> None:
        """Append the bytes up to ``upto`` (a segment is created when the logger would open it)."""
        at = 0
        for name, data in self.files:
            lo, hi = at, at + len(data)
            at = hi
            if upto < lo or (upto == lo and lo > 0):
                break
            begin, end = max(self.written, lo) - lo, min(upto, hi) - lo
            with open(self.path / name, "ab") as fh:
                fh.write(data[begin:end] if end > begin else b"")
        self.written = max(self.written, upto)

    def finish(self) -> None:
        self.grow(self.total)
        (self.path / "_DONE").touch()


class LiveRun:
    """A run written by the real ``DataLogger``, and what was recorded into it (quantised as the logger does)."""

    def __init__(self, path: Path, seed: int, rotate_bytes: int) -> None:
        import data_logger

        self.logger = data_logger.DataLogger(path, rotate_bytes=rotate_bytes, ring_bytes=1 << 22)
        self.rng = np.random.default_rng(seed)
        self.run = RecordedRun(path, [])
        self.clocks: dict[int, float] = {}

    def register(self, labels: dict[str, Any], epoch_scale: float, value_scale: float) -> int:
        sid = int(self.logger.register_stream(labels, epoch_scale=epoch_scale, value_scale=value_scale))
        self.run.streams.append({**labels, "stream_id": sid, "epoch_scale": epoch_scale, "value_scale": value_scale})
        self.clocks[sid] = 1000.0 + float(self.rng.uniform(0, 10))
        return sid

    def record(self, count: int, among: Sequence[int] | None = None) -> None:
        ids = list(among) if among is not None else [s["stream_id"] for s in self.run.streams]
        for _ in range(count):
            meta = self.run.stream(ids[int(self.rng.integers(0, len(ids)))])
            sid, epoch_scale, value_scale = meta["stream_id"], meta["epoch_scale"], meta["value_scale"]
            self.clocks[sid] += float(self.rng.choice([0.0, -1.5, float(self.rng.exponential(5))], p=[0.1, 0.1, 0.8]))
            n = 0 if self.rng.random() < 0.25 else int(self.rng.integers(1, 9))
            idx = np.sort(self.rng.choice(1 << 40, size=n, replace=False)).astype(np.int64)
            vals = self.rng.normal(0, 50, size=n)
            self.logger.record(sid, self.clocks[sid], idx, vals)
            tick = llround(np.array([self.clocks[sid] / epoch_scale]))[0]
            self.run.stream_ids.append(sid)
            self.run.epochs.append(float(tick) * epoch_scale)
            self.run.indices.append(idx)
            self.run.values.append(llround(vals / value_scale).astype(np.float64) * value_scale)

    def close(self) -> None:
        self.logger.close()


def labels(i: int) -> dict[str, Any]:
    return {"entity": f"node-{i}", "measure": ("stock", "demand", "backlog")[i % 3], "experiment": "follow"}


SCALES = ((0.25, 0.5), (1e-3, 1e-6), (1.0, 0.125), (0.1, 0.01))


@pytest.fixture(scope="module")
def rotated(tmp_path_factory: pytest.TempPathFactory) -> RecordedRun:
    """A finished real run of 2000 records rotated into several segments."""
    run = build_run(tmp_path_factory.mktemp("rotated") / "run", 31, n_streams=5, n_records=2000, rotate_bytes=12000)
    assert len(run.segments) >= 4
    return run


@pytest.fixture(scope="module")
def single(tmp_path_factory: pytest.TempPathFactory) -> RecordedRun:
    """A finished real run of 600 records in one segment."""
    run = build_run(tmp_path_factory.mktemp("single") / "run", 37, n_streams=3, n_records=600)
    assert len(run.segments) == 1
    return run


# ----------------------------------------------------------------------------------------
# The real logger, writing while the test reads
# ----------------------------------------------------------------------------------------


def test_reads_while_the_real_logger_writes_add_up_to_the_run(tmp_path: Path) -> None:
    """The logger writes in a thread (rotating, one stream registered midway) while reads follow it to _DONE."""
    path = tmp_path / "run"
    live = LiveRun(path, 5, rotate_bytes=16_000)
    for i in range(3):
        live.register(labels(i), *SCALES[i])
    wrote, read_one = threading.Semaphore(0), threading.Semaphore(0)
    failure: list[BaseException] = []
    rounds = 24

    def write() -> None:
        try:
            for step in range(rounds):
                if step == rounds // 2:
                    live.register(labels(3), *SCALES[3])  # a stream that appears while the run is followed
                live.record(150)
                wrote.release()
                if not read_one.acquire(timeout=DEADLINE):
                    raise TimeoutError("the reader did not read")
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            failure.append(exc)
        finally:
            live.close()
            wrote.release()

    writer = threading.Thread(target=write, name="test-logger")
    writer.start()
    cursor, batches, reads = START, [], []
    try:
        while True:
            assert wrote.acquire(timeout=DEADLINE)
            done = (path / "_DONE").exists()  # checked before the run is listed, as the service does
            read, got = follow(path, cursor, done)
            batches += got
            reads.append(read)
            assert position(path, read.cursor) - position(path, cursor) == read.bytes  # only the new bytes
            cursor = read.cursor
            read_one.release()
            if read.complete:
                break
    finally:
        read_one.release(rounds)
        writer.join(DEADLINE)
    assert not writer.is_alive() and not failure
    assert len(live.run.segments) >= 4  # rotated while it was followed
    assert sum(1 for r in reads if r.rows) >= 5  # read in many increments
    assert sum(r.bytes for r in reads) == sum(p.stat().st_size for p in live.run.segments)
    schema = schema_of(path)
    got = table(batches, schema)
    assert_same(got, truth(live.run))
    assert_same(got, one_shot(path))
    last = {sid: e for sid, e in zip(live.run.stream_ids, live.run.epochs, strict=True)}
    assert reads[-1].epochs == last


# ----------------------------------------------------------------------------------------
# A torn last frame, damage, streams that are not there yet
# ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("into", [1, 3, 5, -1])
def test_a_torn_last_frame_is_read_once_the_rest_is_appended(tmp_path: Path, single: RecordedRun, into: int) -> None:
    data = single.segments[0].read_bytes()
    starts = zstd_frame_starts(data)
    k = len(starts) // 2
    cut = starts[k] + into if into > 0 else (starts[k] + starts[k + 1]) // 2
    assert starts[k] < cut < starts[k + 1]
    grown = Growing(single.path, tmp_path / "copy")
    grown.grow(cut)
    first, batches = follow(grown.path, START, done=False)
    assert (first.cursor.segment, first.cursor.offset) == (single.segments[0].name, starts[k])
    assert first.rows == k  # the logger writes one record per frame
    assert first.bytes == starts[k] and not first.complete
    again, more = follow(grown.path, first.cursor, done=False)  # still torn: nothing new
    assert again.cursor is first.cursor and again.rows == 0 and again.bytes == 0
    grown.grow(grown.total)
    second, rest = follow(grown.path, first.cursor, done=False)
    assert second.cursor.offset == len(data) and second.cursor.chunk == 2
    (grown.path / "_DONE").touch()
    last, none = follow(grown.path, second.cursor, done=True)
    assert last.complete and last.cursor is second.cursor and not none
    assert_same(table(batches + more + rest, schema_of(grown.path)), truth(single))


def test_a_torn_frame_at_done_is_damage_naming_the_file_and_offset(tmp_path: Path, single: RecordedRun) -> None:
    data = single.segments[0].read_bytes()
    starts = zstd_frame_starts(data)
    grown = Growing(single.path, tmp_path / "copy")
    grown.grow(starts[-1] + 2)
    read, _ = follow(grown.path, START, done=False)
    assert read.cursor.offset == starts[-1]
    with pytest.raises(SegmentError) as error:
        follow(grown.path, read.cursor, done=True)
    assert error.value.path == str(grown.path / single.segments[0].name) and error.value.offset == starts[-1]


def test_damage_in_a_closed_segment_is_an_error_naming_the_file_and_offset(
    tmp_path: Path, rotated: RecordedRun
) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(rotated.path, copy)
    closed = sorted(copy.glob("*.seg.zst"))[1]
    data = closed.read_bytes()
    starts = zstd_frame_starts(data)
    closed.write_bytes(data[: starts[-2] + 4])  # torn, but a newer segment exists: it was closed like that
    os.remove(copy / "_DONE")
    with pytest.raises(SegmentError) as error:
        follow(copy, START, done=False)
    assert (error.value.path, error.value.offset) == (str(closed), starts[-2])
    # Bytes that are no frame in the newest segment are damage too, not a torn frame.
    closed.write_bytes(data)
    newest = sorted(copy.glob("*.seg.zst"))[-1]
    data = newest.read_bytes()
    starts = zstd_frame_starts(data)
    newest.write_bytes(data[: starts[3]] + b"\x00" * 16 + data[starts[3] + 16 :])
    with pytest.raises(SegmentError) as error:
        follow(copy, START, done=False)
    assert (error.value.path, error.value.offset) == (str(newest), starts[3])


def test_a_record_of_a_stream_without_its_file_yet_waits_for_it(tmp_path: Path) -> None:
    path = tmp_path / "run"
    live = LiveRun(path, 9, rotate_bytes=6000)
    for i in range(2):
        live.register(labels(i), *SCALES[i])
    live.record(300)
    late = live.register(labels(2), *SCALES[2])
    live.record(300)
    live.close()
    hidden = tmp_path / f"{late:08d}.json"
    os.replace(path / "streams" / f"{late:08d}.json", hidden)  # as if it were not written yet
    os.remove(path / "_DONE")
    first_late = live.run.stream_ids.index(late)
    read, batches = follow(path, START, done=False)
    assert read.waiting_for == late and read.rows == first_late and not read.complete
    again, more = follow(path, read.cursor, done=False)
    assert again.cursor is read.cursor and not more
    (path / "_DONE").touch()
    with pytest.raises(UnknownStreamError) as error:
        follow(path, read.cursor, done=True)
    assert error.value.stream_id == late and error.value.offset == read.cursor.offset
    os.replace(hidden, path / "streams" / f"{late:08d}.json")
    rest, tail = follow(path, read.cursor, done=True)
    assert rest.complete and rest.waiting_for is None
    assert_same(table(batches + tail, schema_of(path)), truth(live.run))


def test_a_stream_not_known_yet_in_the_middle_of_a_large_frame_waits_with_the_whole_frame(tmp_path: Path) -> None:
    """Frames of many records, larger than one decompression step (read in pieces): the frame waits whole."""
    path = tmp_path / "run"
    writer = RunWriter(path, rotate_bytes=1 << 20, records_per_frame=3000)
    rng = np.random.default_rng(4)
    ids = [writer.register_stream(labels(i), epoch_scale=1e-3, value_scale=1e-3) for i in range(2)]
    for n in range(9000):
        if n == 4500:
            ids.append(writer.register_stream(labels(2), epoch_scale=1e-3, value_scale=1e-3))
        idx = np.sort(rng.choice(1000, 8, replace=False))
        writer.record(ids[n % len(ids)], 1000.0 + n * 0.25, idx, rng.normal(0, 5, 8))
    writer.close()
    os.remove(path / "_DONE")
    late = path / "streams" / f"{ids[2]:08d}.json"
    os.replace(late, tmp_path / "late.json")
    read, batches = follow(path, START, done=False, chunk_bytes=1 << 16)
    assert read.waiting_for == ids[2] and read.rows == 3000  # the first frame; the second holds stream 3's first record
    os.replace(tmp_path / "late.json", late)
    (path / "_DONE").touch()
    rest, tail = follow(path, read.cursor, done=True, chunk_bytes=1 << 16)
    assert rest.complete and rest.rows == 6000
    assert_same(table(batches + tail, schema_of(path)), one_shot(path))


# ----------------------------------------------------------------------------------------
# The cursor's segment: gone, shrunk, replaced; earlier segments are not read again
# ----------------------------------------------------------------------------------------


def test_a_segment_that_shrank_or_was_replaced_under_the_cursor_is_an_error(
    tmp_path: Path, rotated: RecordedRun
) -> None:
    grown = Growing(rotated.path, tmp_path / "copy")
    grown.grow(sum(len(data) for _, data in grown.files[:2]) + 3000)
    read, batches = follow(grown.path, START, done=False)
    assert read.cursor.segment is not None and read.cursor.offset > FINGERPRINT_BYTES
    segment = grown.path / read.cursor.segment
    data = segment.read_bytes()
    segment.write_bytes(data[: read.cursor.offset - 1])
    with pytest.raises(RunChanged, match="shrank below the follow cursor") as error:
        follow(grown.path, read.cursor, done=False)
    assert error.value.path == str(segment)
    # Another file of the same length under the name: the bytes before the cursor differ.
    other = bytearray(data)
    other[read.cursor.offset - 8] ^= 0xFF
    (grown.path / "other").write_bytes(bytes(other))
    os.replace(grown.path / "other", segment)
    with pytest.raises(RunChanged, match="replaced under the follow cursor") as error:
        follow(grown.path, read.cursor, done=False)
    assert error.value.path == str(segment)
    # A copy of the same bytes (a new inode) is the same segment: reading goes on.
    (grown.path / "other").write_bytes(data)
    os.replace(grown.path / "other", segment)
    assert follow(grown.path, read.cursor, done=False)[0].cursor is read.cursor
    os.remove(segment)
    with pytest.raises(RunChanged, match="is gone"):
        follow(grown.path, read.cursor, done=False)
    (grown.path / "other").write_bytes(data)
    os.replace(grown.path / "other", segment)
    # Earlier segments are never read again: garbage in them now changes nothing.
    for earlier in sorted(grown.path.glob("*.seg.zst")):
        if earlier.name < read.cursor.segment:
            earlier.write_bytes(b"\x00" * earlier.stat().st_size)
    grown.finish()
    rest, tail = follow(grown.path, read.cursor, done=True)
    assert rest.complete
    assert_same(table(batches + tail, schema_of(grown.path)), truth(rotated))


def test_a_symlink_for_the_newest_segment_is_refused(tmp_path: Path, single: RecordedRun) -> None:
    grown = Growing(single.path, tmp_path / "copy")
    grown.grow(1000)
    read, _ = follow(grown.path, START, done=False)
    segment = grown.path / single.segments[0].name
    os.replace(segment, tmp_path / "elsewhere")
    os.symlink(tmp_path / "elsewhere", segment)
    with pytest.raises(MetadataError, match="symlink"):
        follow(grown.path, read.cursor, done=False)


def test_a_chunk_is_read_again_exactly_up_to_its_cursor(tmp_path: Path, rotated: RecordedRun) -> None:
    grown = Growing(rotated.path, tmp_path / "copy")
    grown.grow(grown.total // 3)
    first, _ = follow(grown.path, START, done=False)
    grown.grow(grown.total * 2 // 3)
    second, batches = follow(grown.path, first.cursor, done=False)
    grown.finish()  # more is there now, and the run is done: the chunk read again ends where it did
    again, same = follow(grown.path, first.cursor, done=True, until=second.cursor)
    assert again.cursor is second.cursor and not again.complete
    schema = schema_of(grown.path)
    assert_same(table(same, schema), table(batches, schema))
    # A cursor that is not a frame boundary is refused.
    skewed = Cursor(second.cursor.segment, second.cursor.offset - 1, second.cursor.ticks, 2, "")
    with pytest.raises(CollectorError):
        follow(grown.path, first.cursor, done=True, until=skewed)
    # Nothing to read again from the start up to the start; a cursor before the one read from is refused.
    empty, none = follow(grown.path, START, done=True, until=START)
    assert empty.cursor is START and not none and empty.bytes == 0
    with pytest.raises(CollectorError, match="lies before"):
        follow(grown.path, second.cursor, done=True, until=first.cursor)


def test_the_chunk_number_counts_reads_that_gave_rows(tmp_path: Path, rotated: RecordedRun) -> None:
    """Reads that only passed records of streams not selected move the cursor, not the chunk number."""
    grown = Growing(rotated.path, tmp_path / "copy")
    cursor, batches, with_rows, empty = START, [], 0, 0
    for upto in [*range(0, grown.total, 150), None]:
        if upto is None:
            grown.finish()
        else:
            grown.grow(upto)
        read, got = follow(grown.path, cursor, upto is None, select={2})
        with_rows += bool(read.rows)
        empty += bool(read.bytes and not read.rows)
        assert read.cursor.chunk == with_rows
        assert set(read.epochs) <= {2}
        batches += got
        cursor = read.cursor
    assert read.complete and empty > 0 and with_rows > 10
    expected = truth(rotated).filter(pc.equal(truth(rotated).column("stream_id"), 2))
    assert_same(table(batches, schema_of(grown.path)), expected)


# ----------------------------------------------------------------------------------------
# The cursor as JSON
# ----------------------------------------------------------------------------------------


@given(
    segment=st.one_of(st.none(), st.integers(0, 99999).map(lambda n: f"{n:05d}.seg.zst")),
    offset=st.integers(0, 2**40),
    ticks=st.dictionaries(st.integers(0, 2**32 - 1), st.integers(-(2**63), 2**63 - 1), max_size=8),
    chunk=st.integers(0, 2**31),
    digest=st.binary(max_size=4),
)
def test_a_cursor_round_trips_through_json(
    segment: str | None, offset: int, ticks: dict[int, int], chunk: int, digest: bytes
) -> None:
    cursor = Cursor(segment, offset if segment else 0, ticks, chunk, digest.hex())
    text = cursor.to_json()
    assert Cursor.from_json(text) == cursor
    assert json.loads(text)["ticks"] == {str(k): v for k, v in ticks.items()}


@pytest.mark.parametrize(
    "text",
    [
        "",
        "[]",
        '{"segment": null, "offset": 0, "ticks": {}}',
        '{"segment": null, "offset": 0, "ticks": {}, "chunk": 0, "extra": 1}',
        '{"segment": "../00001.seg.zst", "offset": 0, "ticks": {}, "chunk": 0}',
        '{"segment": "00001.json", "offset": 0, "ticks": {}, "chunk": 0}',
        '{"segment": "00001.seg.zst", "offset": -1, "ticks": {}, "chunk": 0}',
        '{"segment": "00001.seg.zst", "offset": true, "ticks": {}, "chunk": 0}',
        '{"segment": null, "offset": 5, "ticks": {}, "chunk": 0}',
        '{"segment": null, "offset": 0, "ticks": {"x": 1}, "chunk": 0}',
        '{"segment": null, "offset": 0, "ticks": {"1": 9223372036854775808}, "chunk": 0}',
        '{"segment": null, "offset": 0, "ticks": {"1": 1.5}, "chunk": 0}',
        '{"segment": null, "offset": 0, "ticks": [], "chunk": 0}',
        '{"segment": null, "offset": 0, "ticks": {}, "chunk": "1"}',
        '{"segment": null, "offset": 0, "ticks": {}, "chunk": 0, "fingerprint": "XYZ"}',
    ],
)
def test_a_malformed_cursor_is_refused(text: str) -> None:
    with pytest.raises(CollectorError, match="malformed follow cursor"):
        Cursor.from_json(text)


# ----------------------------------------------------------------------------------------
# Random split points
# ----------------------------------------------------------------------------------------


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(
    fractions=st.lists(st.floats(0, 1), max_size=10),
    chunk_bytes=st.sampled_from([4096, 1 << 16]),
    reread=st.booleans(),
    hidden=st.tuples(st.integers(1, 5), st.integers(0, 10)),
)
def test_random_split_points_give_the_same_rows(
    rotated: RecordedRun, fractions: list[float], chunk_bytes: int, reread: bool, hidden: tuple[int, int]
) -> None:
    """Reads at random byte positions; one stream's file appears only at a random step (its records wait)."""
    expected = one_shot(rotated.path)
    with tempfile.TemporaryDirectory() as folder:
        grown = Growing(rotated.path, Path(folder) / "copy")
        stream_file, appears = grown.path / "streams" / f"{hidden[0]:08d}.json", hidden[1]
        os.replace(stream_file, Path(folder) / "hidden.json")
        cursor, batches, total = START, [], 0
        for step, fraction in enumerate([*sorted(fractions), None]):
            if step == appears or fraction is None:
                if not stream_file.exists():
                    os.replace(Path(folder) / "hidden.json", stream_file)
            if fraction is None:
                grown.finish()
            else:
                grown.grow(int(fraction * grown.total))
            done = fraction is None
            read, got = follow(grown.path, cursor, done, chunk_bytes=chunk_bytes)
            assert position(grown.path, read.cursor) - position(grown.path, cursor) == read.bytes
            assert position(grown.path, read.cursor) <= grown.written
            assert (read.waiting_for is not None) <= (not stream_file.exists())
            if reread and read.cursor is not cursor:
                again, same = follow(grown.path, cursor, done, chunk_bytes=chunk_bytes, until=read.cursor)
                assert again.cursor is read.cursor
                assert_same(table(same, expected.schema), table(got, expected.schema))
            batches += got
            total += read.bytes
            cursor = read.cursor
        assert read.complete and total == grown.total
        assert_same(table(batches, expected.schema), expected)
