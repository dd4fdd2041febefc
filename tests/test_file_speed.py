"""Output files at disk speed: hashed while written, one fsync per file and per folder, routed in one pass.

* The SHA-256 of an output is the one of its bytes on disk, for every format and compression,
  and finishing a file does not read it back (the process's own read counter says so).
* A run's files cost one fsync each, and each folder one fsync after all of the run's files in
  it are linked; the manifest is created only after that, and is fsynced with its folder.
* :func:`route_batch` gives every output exactly the batches the plain per-output filter did.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from herocollector.actor.demo import write_simulated_run
from herocollector.errors import PublishError
from herocollector.output.files import SINK_BUFFER, HashingSink, OutputFile, route_batch, sha256_of
from herocollector.output.manifest import ManifestEntry, new_manifest
from herocollector.output.pipeline import OutputPipeline, WriteContext
from herocollector.output.stores import LocalStore, Provenance

SCHEMA = pa.schema(
    [
        pa.field("stream_id", pa.uint32()),
        pa.field("epoch", pa.float64()),
        pa.field("indices", pa.list_(pa.int64())),
        pa.field("values", pa.list_(pa.float64())),
        pa.field("label", pa.string()),
    ]
)


def _batch(rows: int, seed: int) -> pa.RecordBatch:
    rng = np.random.default_rng(seed)
    lengths = rng.integers(0, 6, rows)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)
    return pa.RecordBatch.from_arrays(
        [
            pa.array(rng.integers(0, 8, rows), type=pa.uint32()),
            pa.array(rng.random(rows)),
            pa.ListArray.from_arrays(pa.array(offsets), pa.array(rng.integers(0, 1 << 40, offsets[-1]))),
            pa.ListArray.from_arrays(pa.array(offsets), pa.array(rng.random(offsets[-1]))),
            pa.array([f"entity-{i % 7}" for i in range(rows)]),
        ],
        schema=SCHEMA,
    )


# ----------------------------------------------------------------------------------------
# The SHA-256, computed while the bytes are written
# ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("format", ["file", "stream", "parquet"])
@pytest.mark.parametrize("compression", [None, "zstd"])
@pytest.mark.parametrize("rows", [[], [0], [10], [50_000, 3, 0, 20_000]])
def test_the_digest_taken_while_writing_is_the_digest_of_the_file(
    tmp_path: Path, format: str, compression: str | None, rows: list[int]
) -> None:
    final = tmp_path / "out" / "x.data"
    output = OutputFile(final, SCHEMA, format, compression)  # type: ignore[arg-type]
    for seed, n in enumerate(rows):
        output.write(_batch(n, seed))
    output.commit(replace=False)
    assert output.bytes == final.stat().st_size
    assert output.sha256 == sha256_of(final)
    if sum(rows) >= 50_000:
        assert output.bytes > 4 * SINK_BUFFER  # written through the sink in many pieces


def _bytes_read() -> int:
    """What this process has read with read() and its kin so far (``rchar`` of ``/proc/self/io``)."""
    for line in Path("/proc/self/io").read_text().splitlines():
        if line.startswith("rchar:"):
            return int(line.split()[1])
    raise AssertionError("no rchar in /proc/self/io")


@pytest.mark.parametrize("format", ["file", "parquet"])
def test_finishing_a_file_does_not_read_it_back(tmp_path: Path, format: str) -> None:
    output = OutputFile(tmp_path / "big.data", SCHEMA, format)  # type: ignore[arg-type]
    for seed in range(4):
        output.write(_batch(60_000, seed))
    before = _bytes_read()
    output.finish()
    read = _bytes_read() - before
    assert output.bytes > 2 << 20
    assert read < output.bytes // 4, f"finish read {read} bytes of a {output.bytes}-byte file"
    output.publish(replace=False)
    assert output.sha256 == sha256_of(tmp_path / "big.data")


def test_the_sink_cannot_seek_so_its_digest_stays_the_file_s(tmp_path: Path) -> None:
    with open(tmp_path / "f", "xb", buffering=0) as fh:
        sink = HashingSink(fh)
        stream = pa.PythonFile(sink, mode="w")
        stream.write(b"abc")
        assert not sink.seekable() and stream.tell() == 3
        with pytest.raises(OSError):
            stream.seek(0)
        stream.close()
        assert sink.closed and not fh.closed  # the owner fsyncs and closes the file itself
    assert sink.hexdigest() == sha256_of(tmp_path / "f")


# ----------------------------------------------------------------------------------------
# One fsync per file, one per folder per run
# ----------------------------------------------------------------------------------------


class _Syscalls:
    """The fsyncs (of which path) and links of this thread, in order; the real calls are made."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.events: list[tuple[str, str]] = []
        self._thread = threading.get_ident()
        fsync, link, replace = os.fsync, os.link, os.replace

        def counted_fsync(fd: Any) -> None:
            if threading.get_ident() == self._thread:
                self.events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
            fsync(fd)

        def counted_link(source: Any, target: Any, *args: Any, **kwargs: Any) -> None:
            link(source, target, *args, **kwargs)
            if threading.get_ident() == self._thread:
                self.events.append(("link", str(target)))

        def counted_replace(source: Any, target: Any, *args: Any, **kwargs: Any) -> None:
            replace(source, target, *args, **kwargs)
            if threading.get_ident() == self._thread:
                self.events.append(("link", str(target)))

        monkeypatch.setattr(os, "fsync", counted_fsync)
        monkeypatch.setattr(os, "link", counted_link)
        monkeypatch.setattr(os, "replace", counted_replace)

    def fsyncs(self, path: Path) -> int:
        return sum(1 for kind, where in self.events if kind == "fsync" and where == str(path))

    def index(self, kind: str, where: Path) -> int:
        return self.events.index((kind, str(where)))


@pytest.fixture
def simulated(tmp_path: Path) -> Iterator[Path]:
    run = tmp_path / "runs" / "run-1"
    write_simulated_run(run, records=3000, entities=2, seed=5)
    yield run


def _plan(run: Path, out: Path) -> Any:
    """The run's streams into three files by measure: two in folder ``a``, one in folder ``b``."""
    pipeline = OutputPipeline(columns=["measure"])
    planned = pipeline.plan_run(run)
    measures = sorted({str(s.metadata["measure"]) for s in planned.selected})
    assert len(measures) == 3
    folder = {measures[0]: "a", measures[1]: "a", measures[2]: "b"}

    def route(index: int, planned_run: Any, stream: Any) -> Path:
        measure = str(stream.metadata["measure"])
        return out / folder[measure] / f"{measure}.arrow"

    return pipeline, pipeline.plan([planned], route)


def test_a_run_costs_one_fsync_per_file_and_one_per_folder_before_its_manifest(
    simulated: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "out"
    pipeline, plan = _plan(simulated, out)
    store = LocalStore(out)
    calls = _Syscalls(monkeypatch)
    written = pipeline.write(plan, WriteContext(store=store))
    finals = [Path(w.path) for w in written]
    assert len(finals) == 3 and all(f.exists() for f in finals)
    file_syncs = [where for kind, where in calls.events if kind == "fsync" and where.endswith(".tmp")]
    assert len(file_syncs) == 3  # one per file, of its temporary name, before it is linked
    assert calls.fsyncs(out / "a") == 1 and calls.fsyncs(out / "b") == 1  # one per folder, not per file
    last_link = max(calls.index("link", final) for final in finals)
    assert calls.index("fsync", out / "a") > last_link and calls.index("fsync", out / "b") > last_link

    entries = [ManifestEntry(str(w.path), w.rows, w.bytes, w.sha256) for w in written]
    manifest = out / "_manifest-run-1.json"  # where it goes, the store's put_bytes is how it is written
    stamp = Provenance(str(simulated), 1, 1)
    assert store.put_bytes(manifest, new_manifest(str(simulated), 1, 1, entries).to_json(), stamp)
    assert calls.fsyncs(out) == 1  # the manifest's folder, after its link
    assert calls.index("fsync", out) > calls.index("link", manifest)
    assert calls.fsyncs(out / "a") == 1 and calls.fsyncs(out / "b") == 1  # nothing synced twice
    assert all(sha256_of(Path(e.path)) == e.sha256 and Path(e.path).stat().st_size == e.bytes for e in entries)


def test_a_manifest_is_created_only_after_the_folders_this_thread_published_into_are_synced(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = LocalStore(tmp_path)
    finals = [tmp_path / "data" / "x.arrow", tmp_path / "data" / "y.arrow"]
    calls = _Syscalls(monkeypatch)
    for final in finals:
        output = OutputFile(final, SCHEMA)
        output.write(_batch(10, 1))
        output.finish()
        store.publish(output, final, Provenance("/runs/r"), replace_own=False)
    assert calls.fsyncs(tmp_path / "data") == 0  # deferred: the caller syncs each folder once
    manifests = LocalStore(tmp_path / "manifests")  # a manifest root of its own: another store, the same thread
    manifest = tmp_path / "manifests" / "_manifest-r.json"
    assert manifests.put_bytes(manifest, b"{}", Provenance("/runs/r"))
    assert calls.fsyncs(tmp_path / "data") == 1
    assert calls.index("fsync", tmp_path / "data") < calls.index("link", manifest)
    store.sync_folders(finals)  # what the pipeline does: harmless after the safety net
    assert calls.fsyncs(tmp_path / "data") == 2
    assert manifests.put_bytes(tmp_path / "manifests" / "_manifest-s.json", b"{}", Provenance("/runs/s"))
    assert calls.fsyncs(tmp_path / "data") == 2  # nothing of this thread is left unsynced


def _published_then_removed(store: LocalStore, final: Path) -> None:
    """An output published at ``final`` whose folder was removed since, before it was synced."""
    output = OutputFile(final, SCHEMA)
    output.write(_batch(10, 2))
    output.finish()
    store.publish(output, final, Provenance("/runs/r"), replace_own=False)
    final.unlink()
    final.parent.rmdir()


def test_a_folder_that_cannot_be_synced_fails_the_publish_naming_an_output_in_it(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    final = tmp_path / "gone" / "x.arrow"
    _published_then_removed(store, final)
    with pytest.raises(PublishError) as caught:
        store.sync_folders([final])
    assert caught.value.errno == 2 and caught.value.path == str(final)
    assert "syncing the folder of failed" in str(caught.value)


# ----------------------------------------------------------------------------------------
# Routing: one pass, the same batches as the per-output filter
# ----------------------------------------------------------------------------------------


class _Recorder:
    """Stands in for an open output: keeps what it is given."""

    def __init__(self) -> None:
        self.batches: list[pa.RecordBatch] = []

    def write(self, batch: pa.RecordBatch) -> None:
        self.batches.append(batch)


def _route_by_filter(batch: pa.RecordBatch, ids: np.ndarray, group_of: np.ndarray, outputs: list[_Recorder]) -> None:
    """The plain approach: one filter pass over the whole batch per output."""
    if np.all(group_of == group_of[0]):
        outputs[int(group_of[0])].write(batch)
        return
    sids = batch.column("stream_id").to_numpy(zero_copy_only=False)
    row_group = group_of[np.searchsorted(ids, sids)]
    for index in np.unique(row_group).tolist():
        outputs[index].write(batch.filter(pa.array(row_group == index)))


@st.composite
def _routed(draw: st.DrawFn) -> tuple[pa.RecordBatch, np.ndarray, np.ndarray]:
    """A batch (some columns with nulls, some sliced), its stream ids and a mapping of them onto outputs."""
    n_ids = draw(st.integers(1, 6))
    ids = np.array(sorted(draw(st.sets(st.integers(0, 1 << 31), min_size=n_ids, max_size=n_ids))), dtype=np.uint32)
    n_outputs = draw(st.integers(1, 4))
    group_of = np.array([draw(st.integers(0, n_outputs - 1)) for _ in ids], dtype=np.int64)
    rows = draw(st.integers(0, 60))
    sids = [int(ids[draw(st.integers(0, n_ids - 1))]) for _ in range(rows)]
    lists = st.lists(st.floats(allow_nan=False), max_size=4)
    nullable_lists = st.one_of(st.none(), lists)
    labels = st.one_of(st.none(), st.sampled_from(["a", "bb", "ccc"]))
    pad = draw(st.integers(0, 3))  # rows before and after, sliced off: arrays with an offset
    total = rows + 2 * pad
    columns = {
        "stream_id": pa.array([0] * pad + sids + [0] * pad, type=pa.uint32()),
        "epoch": pa.array(draw(st.lists(st.floats(allow_nan=False), min_size=total, max_size=total))),
        "values": pa.array(draw(st.lists(lists, min_size=total, max_size=total)), type=pa.list_(pa.float64())),
        "counts": pa.array(
            draw(st.lists(st.lists(st.integers(-(1 << 62), 1 << 62), max_size=3), min_size=total, max_size=total)),
            type=pa.list_(pa.int64()),
        ),
        "maybe": pa.array(draw(st.lists(nullable_lists, min_size=total, max_size=total)), type=pa.list_(pa.float64())),
        "label": pa.array(draw(st.lists(labels, min_size=total, max_size=total)), type=pa.string()),
        "flag": pa.array(draw(st.lists(st.booleans(), min_size=total, max_size=total))),
        "kind": pa.array(
            draw(st.lists(st.sampled_from(["x", "y"]), min_size=total, max_size=total))
        ).dictionary_encode(),
        "ticks": pa.array(draw(st.lists(st.one_of(st.none(), st.integers(0, 9)), min_size=total, max_size=total))),
    }
    batch = pa.RecordBatch.from_pydict(columns).slice(pad, rows)
    return batch, ids, group_of


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_routed())
def test_routing_gives_each_output_the_batches_the_filter_gave(
    case: tuple[pa.RecordBatch, np.ndarray, np.ndarray],
) -> None:
    batch, ids, group_of = case
    n_outputs = int(group_of.max()) + 1
    expected = [_Recorder() for _ in range(n_outputs)]
    got = [_Recorder() for _ in range(n_outputs)]
    _route_by_filter(batch, ids, group_of, expected)
    route_batch(batch, ids, group_of, cast(list[OutputFile], got))
    for want, have in zip(expected, got, strict=True):
        assert len(have.batches) == len(want.batches)
        for a, b in zip(want.batches, have.batches, strict=True):
            assert b.schema.equals(a.schema, check_metadata=True)
            assert b.equals(a), (a.to_pydict(), b.to_pydict())


def test_routed_files_hold_the_rows_of_the_whole_run_in_order(simulated: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    pipeline, plan = _plan(simulated, out)
    written = pipeline.write(plan, WriteContext(store=LocalStore(out)))
    whole_plan = pipeline.plan(plan.runs, lambda index, run, stream: tmp_path / "whole.arrow")
    pipeline.write(whole_plan, WriteContext(store=LocalStore(tmp_path)))
    whole = pa.ipc.open_file(str(tmp_path / "whole.arrow")).read_all()
    assert len(written) == 3
    for output in written:
        table = pa.ipc.open_file(str(output.path)).read_all()
        measure = Path(output.path).stem
        mask = pa.compute.equal(whole.column("measure"), measure)
        assert table.num_rows == output.rows > 0
        assert table.equals(whole.filter(mask))


def test_a_folder_that_failed_or_vanished_never_fails_a_later_write_of_the_thread(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    for name in ("failed", "vanished"):
        final = tmp_path / name / "x.arrow"
        _published_then_removed(store, final)
        if name == "failed":
            with pytest.raises(PublishError):
                store.sync_folders([final])  # the write it belonged to fails, once
    # A worker's next run: its manifest is written, whatever the earlier runs left behind.
    assert store.put_bytes(tmp_path / "next" / "_manifest.json", b"{}", Provenance("/runs/next")) is True
