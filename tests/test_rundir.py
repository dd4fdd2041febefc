"""The trust boundary for reading a run (:mod:`herocollector.run.rundir`), with real faults.

FIFOs (``os.mkfifo``), directories, symlinks outside the roots, ``/dev/zero``, a run removed,
moved or replaced while it is collected: each fails with an error naming the entry, and a read
that could block is never attempted.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from herocollector import Collector, CollectorError, MetadataError
from herocollector.errors import ConfigError, RunChanged, RunRefused
from herocollector.output.pipeline import OutputPipeline, WriteContext
from herocollector.run import rundir
from herocollector.run.catalogue import load_streams
from herocollector.run.inventory import DIR, FILE, FileRecord, RunInventory
from herocollector.run.rundir import (
    MAX_STREAM_FILE_BYTES,
    RunDirectory,
    check_unchanged,
    job_key,
    resolve_run,
    within_roots,
)
from herocollector.testing.runs import MemoryWriter, RecordedRun, build_run, collect_table, write_stream_json

T = TypeVar("T")
DEADLINE = 60.0  # seconds; generous on a loaded 2-core machine, and only ever reached by a hang


def _promptly(action: Callable[[], T], fifos: tuple[Path, ...] = ()) -> T:
    """Run ``action`` on a thread and fail if it does not end before the deadline.

    A FIFO an action blocks on is opened for writing by the test, so the thread always ends.
    """
    box: dict[str, Any] = {}

    def run() -> None:
        try:
            box["result"] = action()
        except BaseException as exc:  # noqa: BLE001 - handed back to the test
            box["error"] = exc

    thread = threading.Thread(target=run, name="test-promptly", daemon=True)
    thread.start()
    thread.join(DEADLINE)
    blocked = thread.is_alive()
    if blocked:
        for fifo in fifos:  # release a reader blocked in open() or read()
            fd = os.open(fifo, os.O_RDWR | os.O_NONBLOCK)
            os.close(fd)
        thread.join(DEADLINE)
    assert not blocked, "the action blocked"
    if "error" in box:
        raise box["error"]
    return box["result"]  # type: ignore[no-any-return]


def _collect_error(path: Path, fifos: tuple[Path, ...] = ()) -> CollectorError:
    writer = MemoryWriter()

    def collect() -> bool:
        return Collector([path]).collect(writer, timeout=2000)

    with pytest.raises(CollectorError) as info:
        _promptly(collect, fifos)
    assert writer.batches == []
    return info.value


# -- what may stand where a file belongs ---------------------------------------------------


def test_fifo_segment_is_refused_naming_it(run: RecordedRun) -> None:
    fifo = run.path / "00001.seg.zst"
    os.mkfifo(fifo)
    exc = _collect_error(run.path, (fifo,))
    assert isinstance(exc, MetadataError)
    assert exc.path == str(fifo) and "FIFO" in str(exc)


def test_directory_segment_is_refused_naming_it(run: RecordedRun) -> None:
    folder = run.path / "00001.seg.zst"
    folder.mkdir()
    exc = _collect_error(run.path)
    assert isinstance(exc, MetadataError) and exc.path == str(folder) and "directory" in str(exc)


def test_segment_symlinked_outside_is_not_read(run: RecordedRun, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    secret = outside / "secret"
    shutil.copyfile(run.segments[0], secret)  # a valid segment: only refusing to follow stops it
    link = run.path / "00001.seg.zst"
    link.symlink_to(secret)
    exc = _collect_error(run.path)
    assert isinstance(exc, MetadataError) and exc.path == str(link) and "symlink" in str(exc)


def test_segment_symlinked_inside_the_run_is_refused_too(run: RecordedRun) -> None:
    link = run.path / "00001.seg.zst"
    link.symlink_to(run.segments[0].name)
    assert _collect_error(run.path).path == str(link)


def test_fifo_stream_file_never_blocks(run: RecordedRun) -> None:
    fifo = run.path / "streams" / "00000099.json"
    os.mkfifo(fifo)
    exc = _collect_error(run.path, (fifo,))
    assert isinstance(exc, MetadataError) and exc.path == str(fifo) and "FIFO" in str(exc)


def test_stream_file_symlinked_to_dev_zero_is_not_read(run: RecordedRun) -> None:
    link = run.path / "streams" / "00000099.json"
    link.symlink_to("/dev/zero")
    exc = _collect_error(run.path)
    assert isinstance(exc, MetadataError) and exc.path == str(link) and "symlink" in str(exc)


def test_stream_file_over_the_size_limit(run: RecordedRun) -> None:
    file = run.path / "streams" / "00000099.json"
    write_stream_json(
        file, {"stream_id": 99, "epoch_scale": 1.0, "value_scale": 1.0, "pad": "x" * MAX_STREAM_FILE_BYTES}
    )
    exc = _collect_error(run.path)
    assert isinstance(exc, MetadataError) and exc.path == str(file) and "limit" in str(exc)


def test_streams_folder_symlinked_outside_is_not_read(run: RecordedRun, tmp_path: Path) -> None:
    foreign = tmp_path / "foreign-streams"
    shutil.move(str(run.path / "streams"), foreign)
    (run.path / "streams").symlink_to(foreign, target_is_directory=True)
    exc = _collect_error(run.path)
    assert isinstance(exc, MetadataError) and exc.path == str(run.path / "streams") and "symlink" in str(exc)


def test_device_segment_is_refused_without_being_opened(run: RecordedRun) -> None:
    device = run.path / "00001.seg.zst"
    try:
        os.mknod(device, stat.S_IFCHR | 0o600, os.makedev(1, 5))  # what /dev/zero is
    except PermissionError:
        pytest.skip("mknod needs root")
    exc = _collect_error(run.path)
    assert isinstance(exc, MetadataError) and exc.path == str(device) and "device" in str(exc)


@pytest.mark.parametrize("kind", ["fifo", "file"])
def test_streams_that_is_not_a_folder(run: RecordedRun, kind: str) -> None:
    streams = run.path / "streams"
    shutil.rmtree(streams)
    if kind == "fifo":
        os.mkfifo(streams)
    else:
        streams.write_text("{}", encoding="utf-8")
    exc = _collect_error(run.path, (streams,) if kind == "fifo" else ())
    assert isinstance(exc, MetadataError) and exc.path == str(streams)
    assert ("FIFO" if kind == "fifo" else "not a directory") in str(exc)


def test_directory_where_a_stream_file_belongs(run: RecordedRun) -> None:
    folder = run.path / "streams" / "00000099.json"
    folder.mkdir()
    exc = _collect_error(run.path)
    assert isinstance(exc, MetadataError) and exc.path == str(folder) and "directory" in str(exc)


@pytest.mark.parametrize("kind", ["fifo", "directory", "symlink"])
def test_done_marker_that_is_not_a_file(tmp_path: Path, kind: str) -> None:
    recorded = build_run(tmp_path / "run", seed=3, n_records=20)
    done = recorded.path / "_DONE"
    done.unlink()
    if kind == "fifo":
        os.mkfifo(done)
    elif kind == "directory":
        done.mkdir()
    else:
        done.symlink_to("/dev/zero")
    exc = _collect_error(recorded.path, (done,) if kind == "fifo" else ())
    assert isinstance(exc, MetadataError) and exc.path == str(done)


# -- errors that name their file and field ------------------------------------------------


def _stream_file(run: RecordedRun) -> tuple[Path, dict[str, Any]]:
    file = sorted((run.path / "streams").glob("*.json"))[0]
    return file, json.loads(file.read_text(encoding="utf-8"))


def test_integer_of_5000_digits_names_file_and_field(run: RecordedRun) -> None:
    file, meta = _stream_file(run)
    text = json.dumps(meta)[:-1] + ', "serial": ' + "7" * 5000 + "}"
    file.write_text(text, encoding="utf-8")
    exc = _collect_error(run.path)
    assert isinstance(exc, MetadataError) and exc.path == str(file)
    assert "'serial'" in str(exc) and "5000 digits" in str(exc)


def test_stream_id_of_5000_digits_names_the_field(run: RecordedRun) -> None:
    file, meta = _stream_file(run)
    del meta["stream_id"]
    file.write_text(json.dumps(meta)[:-1] + ', "stream_id": ' + "9" * 5000 + "}", encoding="utf-8")
    exc = _collect_error(run.path)
    assert exc.path == str(file) and "'stream_id'" in str(exc)


@pytest.mark.parametrize("value", [2**70, -(2**64), float("nan"), float("inf")], ids=repr)
def test_label_out_of_range_or_not_finite_names_file_and_label(run: RecordedRun, value: Any) -> None:
    file, meta = _stream_file(run)
    meta["gain"] = {"stages": [1, value]}
    file.write_text(json.dumps(meta), encoding="utf-8")  # json.dumps writes NaN and Infinity
    exc = _collect_error(run.path)
    assert isinstance(exc, MetadataError) and exc.path == str(file)
    assert "'gain'['stages'][1]" in str(exc)


@pytest.mark.parametrize(
    "text, needle",
    [('"site": "lab\\ud800"', "field 'site'"), ('"gain": {"s\\udc00": 1}', "field name 's\\udc00' in 'gain'")],
    ids=["value", "key"],
)
def test_lone_surrogate_names_file_and_field(run: RecordedRun, text: str, needle: str) -> None:
    file, meta = _stream_file(run)
    file.write_text(json.dumps(meta)[:-1] + ", " + text + "}", encoding="utf-8")
    exc = _collect_error(run.path)
    assert isinstance(exc, MetadataError) and exc.path == str(file)
    assert needle in str(exc) and "not valid Unicode" in str(exc)


def test_json_nested_too_deeply_is_a_metadata_error(run: RecordedRun) -> None:
    file, _ = _stream_file(run)
    file.write_text("[" * 200_000 + "]" * 200_000, encoding="utf-8")
    exc = _collect_error(run.path)
    assert isinstance(exc, MetadataError) and exc.path == str(file)


def test_largest_int64_label_is_kept(run: RecordedRun) -> None:
    file, meta = _stream_file(run)
    meta["serial"] = 2**63 - 1
    write_stream_json(file, meta)
    table = collect_table([run.path], columns=["serial"])
    assert 2**63 - 1 in table.column("serial").to_pylist()


def test_nul_in_a_collector_path_is_a_config_error(run: RecordedRun) -> None:
    with pytest.raises(ConfigError, match=r"paths\[1\].*null byte") as info:
        Collector([run.path, f"{run.path}\x00evil"])
    assert info.value.retryable is False


@pytest.mark.parametrize("path", ["/data/run\x00x", "relative/run", 5], ids=["nul", "relative", "int"])
def test_resolve_run_refuses_bad_arguments(path: Any) -> None:
    with pytest.raises(RunRefused, match="logger path") as info:
        resolve_run(path)
    assert info.value.retryable is False


# -- identity -----------------------------------------------------------------------------


def test_two_spellings_of_one_run_resolve_to_one_path(tmp_path: Path) -> None:
    roots = tmp_path / "roots"
    recorded = build_run(roots / "real" / "run", seed=5, n_records=10)
    (roots / "alias").symlink_to(roots / "real", target_is_directory=True)
    (tmp_path / "outside-link").symlink_to(recorded.path, target_is_directory=True)
    spellings = [recorded.path, roots / "alias" / "run", f"{roots}/real/../real/run", tmp_path / "outside-link"]
    assert {resolve_run(str(p), [roots]) for p in spellings} == {recorded.path}


def test_job_key_is_the_resolved_run_or_the_refused_path_normalised(tmp_path: Path) -> None:
    roots = tmp_path / "roots"
    recorded = build_run(roots / "run", seed=7, n_records=10)
    (roots / "alias").symlink_to(recorded.path, target_is_directory=True)
    assert job_key(str(roots / "alias"), [roots]) == job_key(str(recorded.path), [roots]) == str(recorded.path)
    assert job_key(f"{roots}/../elsewhere/./x", [roots]) == str(tmp_path / "elsewhere" / "x")
    assert job_key("relative/./run", [roots]) == "relative/run"
    assert job_key("/a/b\x00c", [roots]) == "/a/b\x00c"


def test_symlink_leading_outside_the_roots_is_refused(tmp_path: Path) -> None:
    roots = tmp_path / "roots"
    roots.mkdir()
    recorded = build_run(tmp_path / "elsewhere", seed=6, n_records=10)
    link = roots / "link"
    link.symlink_to(recorded.path, target_is_directory=True)
    assert not within_roots(link, [roots]) and within_roots(roots, [roots])
    with pytest.raises(RunRefused, match="outside allowed_roots"):
        resolve_run(str(link), [roots])
    with pytest.raises(RunRefused, match="outside allowed_roots"):
        OutputPipeline().plan_run(link, [roots])


def test_inventory_records_every_segment_as_listed(rotated_run: RecordedRun) -> None:
    run = OutputPipeline().plan_run(rotated_run.path)
    inventory = run.inventory
    assert inventory.path == rotated_run.path
    assert [s.name for s in inventory.segments] == [p.name for p in rotated_run.segments]
    for record, path in zip(inventory.segments, rotated_run.segments, strict=True):
        st = os.stat(path)
        assert (record.dev, record.ino, record.size) == (st.st_dev, st.st_ino, st.st_size)
    assert run.segment_bytes == sum(p.stat().st_size for p in rotated_run.segments)
    assert [s.name for s in inventory.streams] == sorted(p.name for p in (rotated_run.path / "streams").iterdir())
    check_unchanged(inventory)  # nothing changed: no error


def test_load_streams_reads_through_the_directory(run: RecordedRun) -> None:
    with RunDirectory(run.path) as directory:
        assert directory.is_done()
        assert [s.name for s in directory.segments()] == [p.name for p in run.segments]
    assert [s.stream_id for s in load_streams(run.path)] == sorted(s["stream_id"] for s in run.streams)


# -- a run that changes while it is collected -----------------------------------------------


def _move_away(path: Path) -> None:
    shutil.move(str(path), str(path.parent / f"{path.name}-moved"))


def _replace(path: Path) -> None:
    copy = path.parent / f"{path.name}-copy"
    shutil.copytree(path, copy)
    _move_away(path)
    copy.rename(path)


def _shrink_last_segment(path: Path) -> None:
    last = sorted(path.glob("*.seg.zst"))[-1]
    os.truncate(last, last.stat().st_size // 2)


def _add_segment(path: Path) -> None:
    last = sorted(path.glob("*.seg.zst"))[-1]
    shutil.copyfile(last, path / "99999.seg.zst")


def _replace_first_segment(path: Path) -> None:
    first = sorted(path.glob("*.seg.zst"))[0]
    data = first.read_bytes()
    first.unlink()
    first.write_bytes(data)


def _remove_streams_file(path: Path) -> None:
    sorted((path / "streams").glob("*.json"))[-1].unlink()


CHANGES: dict[str, Callable[[Path], None]] = {
    "removed": lambda path: shutil.rmtree(path),
    "moved-away": _move_away,
    "replaced-by-a-copy": _replace,
    "segment-shrunk": _shrink_last_segment,
    "segment-added": _add_segment,
    "segment-replaced": _replace_first_segment,
    "stream-file-removed": _remove_streams_file,
}


@pytest.mark.parametrize("prefetch", [0, 2], ids=["sequential", "prefetch"])
@pytest.mark.parametrize("change", list(CHANGES), ids=list(CHANGES))
def test_run_changed_during_collection_publishes_nothing(
    tmp_path: Path, rotated_run: RecordedRun, change: str, prefetch: int
) -> None:
    other = build_run(tmp_path / "other", seed=9, n_records=50)
    out = tmp_path / "out"
    out.mkdir()
    pipeline = OutputPipeline(prefetch_runs=prefetch, chunk_bytes=4096)
    runs = [pipeline.plan_run(other.path), pipeline.plan_run(rotated_run.path)]
    plan = pipeline.plan(runs, lambda index, run, stream: out / f"{index}-{stream.stream_id}.arrow")
    fired: list[int] = []

    class OnRows:
        def bytes_read(self, n: int) -> None:
            pass

        def rows_written(self, count: int) -> None:
            if not fired:  # the first batch of the first run: the rotated run is still to be read
                fired.append(count)
                CHANGES[change](rotated_run.path)

    with pytest.raises(RunChanged) as info:
        pipeline.write(plan, WriteContext(progress=OnRows()))
    assert fired
    assert info.value.retryable is True
    assert str(rotated_run.path) in str(info.value)
    assert sorted(out.iterdir()) == []  # no output, no temporary file


def test_unchanged_runs_are_published(tmp_path: Path, rotated_run: RecordedRun) -> None:
    out = tmp_path / "out"
    pipeline = OutputPipeline(prefetch_runs=1, chunk_bytes=4096)
    plan = pipeline.plan([pipeline.plan_run(rotated_run.path)], lambda index, run, stream: out / "all.arrow")
    out.mkdir()
    written = pipeline.write(plan, WriteContext())
    assert [w.rows for w in written] == [len(rotated_run)]


def test_collector_raises_run_changed_for_a_run_moved_away_while_read(tmp_path: Path, rotated_run: RecordedRun) -> None:
    batches = Collector([rotated_run.path], chunk_bytes=4096).batches()
    assert next(batches) is not None
    _move_away(rotated_run.path)
    with pytest.raises(RunChanged, match="gone"):
        for _ in batches:
            pass


def test_run_directory_closed_refuses_to_open_a_segment(run: RecordedRun) -> None:
    directory = RunDirectory(run.path)
    sources = directory.sources(directory.segments())
    directory.close()
    with pytest.raises(CollectorError, match="closed"):
        sources[0].open()


def test_segment_source_reads_exactly_the_listed_bytes(run: RecordedRun) -> None:
    with RunDirectory(run.path) as directory:
        (source,) = directory.sources(directory.segments())
        assert source.name == str(run.segments[0])
        with source.open() as fh:
            assert fh.read() == run.segments[0].read_bytes()


def test_segment_that_grew_after_listing_is_a_change(run: RecordedRun) -> None:
    with RunDirectory(run.path) as directory:
        (source,) = directory.sources(directory.segments())
        with open(run.segments[0], "ab") as fh:
            fh.write(b"\x00" * 10)
        with pytest.raises(RunChanged, match="changed size"):
            source.open()


@pytest.fixture
def many_runs(tmp_path: Path) -> Iterator[list[Path]]:
    yield [build_run(tmp_path / f"run-{i}", seed=30 + i, n_records=20).path for i in range(3)]


def test_a_thousand_planned_runs_hold_no_descriptor(many_runs: list[Path]) -> None:
    before = len(os.listdir("/proc/self/fd"))
    pipeline = OutputPipeline()
    runs = [pipeline.plan_run(many_runs[i % 3]) for i in range(1000)]
    assert len(runs) == 1000
    assert len(os.listdir("/proc/self/fd")) <= before


def _open_files() -> list[str]:
    """What this process's file descriptors point at."""
    found = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            found.append(os.readlink(f"/proc/self/fd/{fd}"))
        except FileNotFoundError:  # the descriptor that listed the folder
            pass
    return found


@pytest.mark.parametrize("prefetch", [0, 2], ids=["sequential", "prefetch"])
def test_a_stopped_write_leaves_no_reader_and_no_open_run(tmp_path: Path, prefetch: int) -> None:
    runs = [build_run(tmp_path / f"run-{i}", seed=40 + i, n_records=600, rotate_bytes=1500).path for i in range(3)]
    pipeline = OutputPipeline(prefetch_runs=prefetch, chunk_bytes=4096)
    plan = pipeline.plan([pipeline.plan_run(p) for p in runs], lambda index, run, stream: tmp_path / f"{index}.arrow")
    threads = set(threading.enumerate())

    class Cancel:
        def check(self) -> None:
            raise CollectorError("stop")

        def before_publish(self) -> None:
            pass

    with pytest.raises(CollectorError, match="stop"):
        pipeline.write(plan, WriteContext(guard=Cancel()))
    assert [t for t in threading.enumerate() if t not in threads] == []
    assert [f for f in _open_files() if any(f.startswith(str(p)) for p in runs)] == []
    assert not list(tmp_path.glob("*.arrow")) and not list(tmp_path.glob(".*.tmp"))


def test_parent_swapped_for_a_symlink_after_resolving_is_caught(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    roots = tmp_path / "roots"
    recorded = build_run(roots / "site" / "run", seed=8, n_records=10)
    decoy = build_run(tmp_path / "outside" / "run", seed=9, n_records=10)
    resolve = rundir.resolve_run

    def resolve_then_swap(*args: Any, **kwargs: Any) -> Path:
        resolved = resolve(*args, **kwargs)
        (roots / "site").rename(roots / "site-gone")  # the race an attacker wins, made certain
        (roots / "site").symlink_to(decoy.path.parent, target_is_directory=True)
        return resolved

    monkeypatch.setattr(rundir, "resolve_run", resolve_then_swap)
    with pytest.raises(RunChanged, match="moved while it was opened"):
        RunDirectory(str(recorded.path), [roots])


# -- one directory, one file record, one inventory: the reader's and the cleaner's ----------


def test_a_folder_on_the_path_swapped_for_a_symlink_is_caught_by_the_walk_below_the_root(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    roots = tmp_path / "roots"
    recorded = build_run(roots / "site" / "deep" / "run", seed=10, n_records=10)
    decoy = build_run(roots / "other" / "deep" / "run", seed=11, n_records=10)  # inside the roots too
    resolve = rundir.resolve_run

    def resolve_then_swap(*args: Any, **kwargs: Any) -> Path:
        resolved = resolve(*args, **kwargs)
        (roots / "site").rename(roots / "site-gone")
        (roots / "site").symlink_to(decoy.path.parents[1], target_is_directory=True)
        return resolved

    monkeypatch.setattr(rundir, "resolve_run", resolve_then_swap)
    monkeypatch.setattr(rundir, "_opened_path", lambda fd: None)  # as without /proc: the walk alone decides
    with pytest.raises(RunChanged, match="a folder on its path is a symlink now") as info:
        RunDirectory(str(recorded.path), [roots])
    assert info.value.path == str(recorded.path)


def test_the_cleaners_steps_act_through_the_descriptor_not_the_path(tmp_path: Path) -> None:
    roots = tmp_path / "roots"
    recorded = build_run(roots / "run", seed=12, n_records=10)
    with RunDirectory(str(recorded.path), [roots]) as directory:
        listed = directory.names()
        first = recorded.segments[0].name
        st = directory.lstat(first)
        assert st is not None and stat.S_ISREG(st.st_mode)
        recorded.path.rename(roots / "moved")
        decoy = build_run(roots / "run", seed=13, n_records=10)  # the path now leads to another run
        (decoy.path / "only-in-the-decoy").write_text("x")
        assert directory.names() == listed and "only-in-the-decoy" not in directory.names()
        assert directory.lstat("only-in-the-decoy") is None and directory.lstat(first) is not None
        directory.check_identity(directory.dev, directory.ino)
        with pytest.raises(RunChanged, match="not the one collected") as info:
            directory.check_identity(directory.dev, directory.ino + 1)
        assert info.value.path == str(recorded.path)
    with pytest.raises(CollectorError, match="closed"):
        directory.names()


def test_a_file_record_knows_its_file_and_survives_the_ledger(tmp_path: Path) -> None:
    file = tmp_path / "00000.seg.zst"
    file.write_bytes(b"a" * 100)
    record = FileRecord.of(file.name, os.lstat(file))
    assert record.kind == FILE and record.size == 100 and record.same(os.lstat(file))
    folder = FileRecord.of("streams", os.lstat(tmp_path))
    assert (folder.kind, folder.size, folder.mtime_ns) == (DIR, 0, 0) and not folder.same(os.lstat(file))
    before = os.lstat(file)
    os.utime(file, ns=(before.st_atime_ns, before.st_mtime_ns + 1_000_000_000))  # rewritten in place, same size
    assert os.lstat(file).st_ino == before.st_ino and not record.same(os.lstat(file))
    older = FileRecord.from_json(record.to_json()[:5])  # a ledger from before mtimes were recorded
    assert older.mtime_ns == 0 and older.same(os.lstat(file))
    assert FileRecord.from_json(record.to_json()) == record
    inventory = RunInventory(tmp_path, 1, 2, (record,), (older,), 3, 4, (folder,))
    data = json.loads(json.dumps(inventory.to_json("/as/journalled")))
    assert RunInventory.from_json(data) == RunInventory(
        Path("/as/journalled"), 1, 2, (record,), (older,), 3, 4, (folder,)
    )
    legacy = {"path": "/r", "dev": 1, "ino": 2, "segments": [record.to_json()]}  # no links, streams
    assert RunInventory.from_json(legacy) == RunInventory(Path("/r"), 1, 2, (record,))
