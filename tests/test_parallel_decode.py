"""One run decoded on several threads gives exactly the rows of one thread, and the same errors.

The runs are real: written by ``data_logger.DataLogger`` (rotated into many segments, or one
large segment), and random runs of the fuzzer's records over several segment files. Small
``chunk_bytes`` cut even small runs into many parts, so that the parts' ticks, fixed up by the
per-stream prefix sum, cross part and segment boundaries many times.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import zstandard
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from herocollector import Collector
from herocollector.collector import decode_threads
from herocollector.config import ServiceConfig
from herocollector.decode.codec import Columns, Records, SegmentDecoder, TickState, encode_segment
from herocollector.decode.parallel import default_threads
from herocollector.decode.workers import POOL
from herocollector.errors import ConfigError, SegmentError, UnknownStreamError
from herocollector.testing import fuzz
from herocollector.testing.runs import RecordedRun, build_run


def collect(run: Path, threads: int, chunk_bytes: int = 4096, columns: tuple[str, ...] = ()) -> pa.Table:
    """The run collected into one table, on ``threads`` threads."""
    batches = [
        b for b in Collector([run], chunk_bytes=chunk_bytes).batches(columns=columns, threads=threads) if b is not None
    ]
    return pa.Table.from_batches(batches)


def assert_same_table(got: pa.Table, expected: pa.Table) -> None:
    """Equal column by column, the epochs bit for bit."""
    assert got.schema == expected.schema
    assert got.num_rows == expected.num_rows
    for name in expected.column_names:
        assert got.column(name).combine_chunks().equals(expected.column(name).combine_chunks()), name
    epochs = [t.column("epoch").combine_chunks().to_numpy() for t in (got, expected)]
    assert epochs[0].tobytes() == epochs[1].tobytes()


def columns_of(decoder: SegmentDecoder, segments: list[Path]) -> list[np.ndarray]:
    """Every output column of the run, concatenated."""
    out = list(decoder.columns(segments))
    fields = ("stream_ids", "slots", "epochs", "indices", "values")
    joined = [np.concatenate([getattr(c, f) for c in out]) if out else np.zeros(0) for f in fields]
    lengths = np.concatenate([np.diff(c.offsets) for c in out]) if out else np.zeros(0, np.int32)
    return [*joined, lengths]


def same_arrays(a: list[np.ndarray], b: list[np.ndarray]) -> bool:
    return all(x.dtype == y.dtype and x.tobytes() == y.tobytes() for x, y in zip(a, b, strict=True))


@pytest.fixture(scope="module")
def rotated(tmp_path_factory: pytest.TempPathFactory) -> RecordedRun:
    """A real run of 3000 records rotated into many small segments."""
    run = build_run(tmp_path_factory.mktemp("rotated") / "run", 17, n_streams=6, n_records=3000, rotate_bytes=8000)
    assert len(run.segments) >= 8
    return run


@pytest.fixture(scope="module")
def large(tmp_path_factory: pytest.TempPathFactory) -> RecordedRun:
    """A real run of 20000 records in one segment."""
    run = build_run(tmp_path_factory.mktemp("large") / "run", 23, n_streams=5, n_records=20000)
    assert len(run.segments) == 1
    return run


@pytest.mark.parametrize("threads", [2, 3, 4])
def test_a_rotated_run_gives_the_rows_of_one_thread(rotated: RecordedRun, threads: int) -> None:
    one = collect(rotated.path, 1, columns=("entity", "measure"))
    assert_same_table(one, rotated.expected_table(columns=("entity", "measure")))
    assert_same_table(collect(rotated.path, threads, columns=("entity", "measure")), one)
    # The default chunk size: the small segments go together, several to a part.
    assert_same_table(collect(rotated.path, threads, chunk_bytes=1 << 20), collect(rotated.path, 1, 1 << 20))


@pytest.mark.parametrize("threads", [2, 4])
def test_a_large_segment_is_decoded_in_parts_with_the_rows_of_one_thread(large: RecordedRun, threads: int) -> None:
    one = collect(large.path, 1)
    assert_same_table(one, large.expected_table())
    assert_same_table(collect(large.path, threads), one)
    # The parts really run on threads of their own, several at a time.
    decoder = SegmentDecoder([s["stream_id"] for s in large.streams], chunk_bytes=4096, decode_threads=threads)
    seen: set[int] = set()
    for _ in decoder.columns(large.segments):
        seen.add(POOL.busy())
    assert max(seen) >= 2
    assert POOL.wait_idle(30)  # every part's job ended


def test_ticks_carry_on_from_one_call_to_the_next(large: RecordedRun) -> None:
    """The decoder's tick state after a run is the same, so a second call goes on from it."""
    ids = [s["stream_id"] for s in large.streams]
    results = []
    for threads in (1, 3):
        decoder = SegmentDecoder(ids, chunk_bytes=4096, decode_threads=threads)
        first = columns_of(decoder, large.segments)
        again = columns_of(decoder, large.segments)  # the segments once more, ticks going on
        results.append((first, again, decoder.ticks.copy()))
    assert same_arrays(results[0][0], results[1][0])
    assert same_arrays(results[0][1], results[1][1])
    assert results[0][2].tolist() == results[1][2].tolist()
    assert results[0][0][2].tobytes() != results[0][1][2].tobytes()  # the second pass's epochs moved on


def test_stopping_early_ends_every_part(large: RecordedRun) -> None:
    decoder = SegmentDecoder([s["stream_id"] for s in large.streams], chunk_bytes=4096, decode_threads=4)
    chunks = decoder.columns(large.segments)
    first = next(chunks)
    assert len(first) > 0
    chunks.close()  # type: ignore[attr-defined]
    assert POOL.wait_idle(30)


# ----------------------------------------------------------------------------------------
# Random runs
# ----------------------------------------------------------------------------------------


def write_random_run(directory: Path, seed: int, segments: int, records_per_frame: int) -> list[Path]:
    """Segment files of the fuzzer's random records (ticks carried across the files)."""
    rng = np.random.default_rng(seed)
    state = TickState()
    paths = []
    for k in range(segments):
        records = fuzz.random_records(rng, bulk=rng.random() < 0.3)
        path = directory / f"{k:05d}.seg.zst"
        path.write_bytes(encode_segment(records, state, records_per_frame=records_per_frame))
        paths.append(path)
    return paths


def decode_all(paths: list[Path], threads: int, chunk_bytes: int, selected: tuple[int, ...] | None) -> tuple:
    """Records and columns of the run on ``threads`` threads, and the final ticks."""
    ids = fuzz.KNOWN_IDS
    scales = [0.25, 1e-3, 1.0, 0.1, 3.0, 1e-9, 7.5]
    chosen = ids if selected is None else selected
    epoch_scales = [scales[ids.index(i)] for i in chosen]
    value_scales = [1 / scales[ids.index(i)] for i in chosen]
    raw = SegmentDecoder(ids, selected, chunk_bytes, decode_threads=threads)
    records = Records.concat(list(raw.decode_files(paths)))
    scaled = SegmentDecoder(
        ids, selected, chunk_bytes, epoch_scales=epoch_scales, value_scales=value_scales, decode_threads=threads
    )
    return records, columns_of(scaled, paths), raw.ticks.copy(), scaled.ticks.copy()


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.integers(0, 2**32 - 1),
    segments=st.integers(1, 6),
    records_per_frame=st.sampled_from([1, 3, 64]),
    chunk_bytes=st.sampled_from([4096, 8192, 65536, 1 << 20]),
    threads=st.integers(2, 5),
    select=st.booleans(),
)
def test_random_runs_give_the_rows_of_one_thread(
    seed: int, segments: int, records_per_frame: int, chunk_bytes: int, threads: int, select: bool
) -> None:
    selected = (0, 7, 2**31) if select else None
    with tempfile.TemporaryDirectory() as temp:
        paths = write_random_run(Path(temp), seed, segments, records_per_frame)
        one = decode_all(paths, 1, chunk_bytes, selected)
        many = decode_all(paths, threads, chunk_bytes, selected)
    assert many[0].equals(one[0])
    assert same_arrays(many[1], one[1])
    assert many[2].tolist() == one[2].tolist()
    assert many[3].tolist() == one[3].tolist()


# ----------------------------------------------------------------------------------------
# Damage
# ----------------------------------------------------------------------------------------


def first_error(paths: list[Path], threads: int, chunk_bytes: int = 4096) -> SegmentError:
    decoder = SegmentDecoder(fuzz.KNOWN_IDS, chunk_bytes=chunk_bytes, decode_threads=threads)
    with pytest.raises(SegmentError) as raised:
        for _ in decoder.columns(paths):
            pass
    assert POOL.wait_idle(30)
    return raised.value


def error_key(exc: SegmentError) -> tuple:
    return type(exc), str(exc), exc.path, exc.offset, getattr(exc, "stream_id", None)


def damaged_runs(directory: Path) -> Iterator[tuple[str, list[Path]]]:
    """Runs of 5 segments, segment 3 damaged in each way (segment 5 too, in some)."""
    for how in ("flip", "truncate", "garbage", "unknown", "cut-record", "also-5", "both-flip"):
        run = directory / how
        run.mkdir(parents=True)
        paths = write_random_run(run, 99, 5, 2)
        third = bytearray(paths[2].read_bytes())
        frames = fuzz.parse_frames(bytes(third))
        middle = frames[len(frames) // 2]
        if how == "flip":
            third[middle.start + (middle.end - middle.start) // 2] ^= 0x5A
        elif how == "truncate":
            del third[middle.end - 3 :]
        elif how == "garbage":
            third[middle.start : middle.start] = b"not a frame at all"
        elif how == "unknown":
            record = bytes(fuzz.leb128(3) + fuzz.leb128(0) + fuzz.leb128(0))
            third[middle.start : middle.start] = zstandard.ZstdCompressor().compress(record)
        elif how == "cut-record":
            third[middle.start : middle.start] = zstandard.ZstdCompressor().compress(b"\x01\x02\x05\x01")
        elif how == "also-5":
            third[middle.start : middle.start] = b"\x00" * 9
            paths[4].write_bytes(b"\xff" * 16 + paths[4].read_bytes())  # found by the frame walk, ahead
        else:
            third[middle.start + (middle.end - middle.start) // 2] ^= 0x5A
            fifth = bytearray(paths[4].read_bytes())
            first = fuzz.parse_frames(bytes(fifth))[0]
            fifth[first.start + (first.end - first.start) // 2] ^= 0x5A  # a later part's own thread finds it first
            paths[4].write_bytes(bytes(fifth))
        paths[2].write_bytes(bytes(third))
        yield how, paths


@pytest.mark.parametrize("chunk_bytes", [4096, 1 << 20])
def test_damage_in_segment_3_of_5_is_the_error_of_one_thread(tmp_path: Path, chunk_bytes: int) -> None:
    for how, paths in damaged_runs(tmp_path / str(chunk_bytes)):
        expected = first_error(paths, 1, chunk_bytes)
        assert expected.path == str(paths[2]), how
        for threads in (2, 4):
            assert error_key(first_error(paths, threads, chunk_bytes)) == error_key(expected), (how, threads)
    unknown = first_error(next(p for h, p in damaged_runs(tmp_path / "again") if h == "unknown"), 3)
    assert isinstance(unknown, UnknownStreamError) and unknown.stream_id == 3


def test_the_rows_before_damage_are_the_rows_of_one_thread(tmp_path: Path) -> None:
    """What reaches the writer before the error is a prefix of the run's rows, as on one thread."""
    paths = dict(damaged_runs(tmp_path))["flip"]
    (tmp_path / "healthy").mkdir()
    healthy = write_random_run(tmp_path / "healthy", 99, 5, 2)
    full = columns_of(SegmentDecoder(fuzz.KNOWN_IDS, chunk_bytes=4096), healthy)
    decoder = SegmentDecoder(fuzz.KNOWN_IDS, chunk_bytes=4096, decode_threads=3)
    got: list[Columns] = []
    with pytest.raises(SegmentError):
        for columns in decoder.columns(paths):
            got.append(columns)
    epochs = np.concatenate([c.epochs for c in got])
    assert 0 < epochs.size < full[2].size
    assert epochs.tobytes() == full[2][: epochs.size].tobytes()


@pytest.fixture(scope="module")
def fuzz_context() -> fuzz.Context:
    dctx = zstandard.ZstdDecompressor()
    return fuzz.Context(fuzz.build_pool(7, 12, dctx), dctx, None, SegmentDecoder, 30.0, False, False)


@pytest.mark.parametrize("index", range(0, 240, 3))
def test_fuzz_cases_give_the_error_or_rows_of_one_thread(
    tmp_path: Path, fuzz_context: fuzz.Context, index: int
) -> None:
    """The fuzzer's cases (valid, mutated, headers, unknown streams, ...) as the third of five segments."""
    context = fuzz_context
    case = fuzz.make_case(index, 7, context)
    paths = []
    for k in range(5):
        path = tmp_path / f"{k:05d}.seg.zst"
        path.write_bytes(case.data if k == 2 else context.pool[k].data)
        paths.append(path)
    outcomes = []
    for threads in (1, 3):
        decoder = SegmentDecoder(case.known, case.selected, case.chunk_bytes, decode_threads=threads)
        try:
            outcomes.append(("rows", Records.concat(list(decoder.decode_files(paths)))))
        except SegmentError as exc:
            outcomes.append(("error", error_key(exc)))
    assert outcomes[0][0] == outcomes[1][0], case.kind
    if outcomes[0][0] == "rows":
        assert outcomes[1][1].equals(outcomes[0][1]), case.kind  # type: ignore[union-attr]
    else:
        assert outcomes[1][1] == outcomes[0][1], case.kind


# ----------------------------------------------------------------------------------------
# The first run says that it compiles
# ----------------------------------------------------------------------------------------


def test_threads_must_be_a_positive_integer(rotated: RecordedRun) -> None:
    for bad in (0, -1, 1.5, True, "2"):
        with pytest.raises(ConfigError):
            collect(rotated.path, bad)  # type: ignore[arg-type]


@pytest.mark.parametrize(("cores", "threads"), [(1, 1), (2, 1), (3, 3), (16, 16), (None, 1)])
def test_the_default_decodes_in_parts_only_on_more_cores_than_one_thread_keeps_busy(
    large: RecordedRun, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cores: int | None, threads: int
) -> None:
    """One thread keeps two cores busy (its reader decompresses ahead): parts pay only with more."""
    monkeypatch.setattr(os, "cpu_count", lambda: cores)
    assert default_threads() == threads
    assert decode_threads(None) == threads and decode_threads(2) == 2
    arguments = {"save_template": "{{ output_root }}/{{ measure }}.arrow", "output_root": str(tmp_path)}
    assert ServiceConfig.from_arguments(**arguments).threads == threads
    assert ServiceConfig.from_arguments(**arguments, decode_threads=2).threads == 2
    # The Collector's default: part threads decode only when the default asks for more than one.
    seen: set[int] = set()
    for batch in Collector([large.path], chunk_bytes=4096).batches():
        seen.add(POOL.busy())
        assert batch is not None
    assert POOL.wait_idle(30)
    assert (max(seen) >= 2) == (threads > 1)


@pytest.mark.slow
def test_a_first_run_says_it_compiles_the_decoder_and_a_second_does_not(rotated: RecordedRun, tmp_path: Path) -> None:
    """With an empty kernel cache ``herocollector collect`` says on stderr that it compiles, and how long it took."""
    env = {**os.environ, "NUMBA_CACHE_DIR": str(tmp_path / "cache")}
    env.pop("HEROCOLLECTOR_KERNELS", None)
    env.pop("NUMBA_BOUNDSCHECK", None)
    command = [sys.executable, "-m", "herocollector", "collect", str(rotated.path), "-o", str(tmp_path / "out.arrow")]
    first = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert first.returncode == 0, first.stderr
    assert "compiling the decoder for this machine (once)" in first.stderr
    assert re.search(r"compiled the decoder for this machine in \d+\.\d s", first.stderr), first.stderr
    assert re.search(r"records/s, after \d+\.\d s compiling the decoder \(once\)\)", first.stdout), first.stdout
    second = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert second.returncode == 0, second.stderr
    assert "compil" not in second.stderr + second.stdout
    assert pa.ipc.open_file(str(tmp_path / "out.arrow")).read_all().num_rows == len(rotated)
