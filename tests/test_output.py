"""Output files: Arrow IPC and Parquet outputs written to a hidden temporary file, committed
atomically, and removed clean on abort.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest

from herocollector.errors import ConfigError, OutputError, PublishError
from herocollector.output.files import (
    TEMP_SUFFIX,
    OutputFile,
    provenance_metadata,
    read_provenance,
    remove_abandoned,
    temporary_name,
)

# ----------------------------------------------------------------------------------------
# OutputFile
# ----------------------------------------------------------------------------------------

SCHEMA = pa.schema(
    [pa.field("stream_id", pa.uint32()), pa.field("values", pa.list_(pa.float64())), pa.field("label", pa.string())]
)


def _batch(n: int = 100, offset: int = 0) -> pa.RecordBatch:
    return pa.RecordBatch.from_pydict(
        {
            "stream_id": pa.array([(offset + i) % 5 for i in range(n)], type=pa.uint32()),
            "values": pa.array(
                [[float(i), float(i) / 2] for i in range(offset, offset + n)], type=pa.list_(pa.float64())
            ),
            "label": pa.array(["entity-" + str(i % 3) for i in range(n)]),
        },
        schema=SCHEMA,
    )


def _read(path: Path, format: str) -> pa.Table:
    if format == "file":
        with pa.ipc.open_file(str(path)) as reader:
            return reader.read_all()
    with pa.OSFile(str(path)) as fh:
        return pa.ipc.open_stream(fh).read_all()


def _names(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


@pytest.mark.parametrize("format", ["file", "stream"])
@pytest.mark.parametrize("compression", [None, "zstd", "lz4"])
def test_written_output_is_readable(tmp_path: Path, format: str, compression: str | None) -> None:
    final = tmp_path / "out" / "x.arrow"
    output = OutputFile(final, SCHEMA, format, compression)
    batches = [_batch(100, 0), _batch(50, 100), _batch(0, 150)]
    for batch in batches:
        output.write(batch)
    assert output.rows == 150
    output.commit(replace=False)
    table = _read(final, format)
    assert table.schema.equals(SCHEMA)
    assert table.equals(pa.Table.from_batches(batches))


def test_file_and_stream_formats_differ(tmp_path: Path) -> None:
    as_file, as_stream = tmp_path / "f.arrow", tmp_path / "s.arrows"
    for final, format in ((as_file, "file"), (as_stream, "stream")):
        output = OutputFile(final, SCHEMA, format)
        output.write(_batch())
        output.commit(replace=False)
    assert as_file.read_bytes()[:6] == b"ARROW1"
    pa.ipc.open_file(str(as_file)).read_all()
    with pytest.raises(pa.ArrowInvalid):
        pa.ipc.open_file(str(as_stream))


@pytest.mark.parametrize("compression", ["zstd", "lz4"])
def test_compression_is_applied(tmp_path: Path, compression: str) -> None:
    batch = pa.RecordBatch.from_pydict(
        {
            "stream_id": pa.array([1] * 20_000, type=pa.uint32()),
            "values": pa.array([[1.0, 2.0]] * 20_000, type=pa.list_(pa.float64())),
            "label": pa.array(["same"] * 20_000),
        },
        schema=SCHEMA,
    )
    sizes = {}
    for name, codec in (("plain", None), ("packed", compression)):
        output = OutputFile(tmp_path / f"{name}.arrow", SCHEMA, "file", codec)
        output.write(batch)
        output.commit(replace=False)
        sizes[name] = (tmp_path / f"{name}.arrow").stat().st_size
        assert _read(tmp_path / f"{name}.arrow", "file").equals(pa.Table.from_batches([batch]))
    assert sizes["packed"] < sizes["plain"] / 2


@pytest.mark.parametrize("format", ["file", "stream"])
def test_only_hidden_temporary_exists_before_commit(tmp_path: Path, format: str) -> None:
    folder = tmp_path / "deep" / "dir"
    final = folder / "stock.arrow"
    output = OutputFile(final, SCHEMA, format)  # creates the missing folders
    output.write(_batch())
    assert not final.exists()
    assert _names(folder) == [output.temporary.name]
    assert output.temporary.name.startswith(".") and output.temporary.name.endswith(".tmp")
    output.commit(replace=False)
    assert _names(folder) == ["stock.arrow"]
    assert not output.temporary.exists()
    assert _read(final, format).num_rows == 100


def test_temporary_names_of_two_writers_do_not_clash(tmp_path: Path) -> None:
    final = tmp_path / "x.arrow"
    first = OutputFile(final, SCHEMA)
    second = OutputFile(final, SCHEMA)
    assert first.temporary != second.temporary
    assert _names(tmp_path) == sorted([first.temporary.name, second.temporary.name])
    first.abort()
    second.abort()
    assert _names(tmp_path) == []


@pytest.mark.parametrize("format", ["file", "stream"])
def test_commit_without_replace_never_overwrites(tmp_path: Path, format: str) -> None:
    final = tmp_path / "x.arrow"
    final.write_bytes(b"precious bytes that are not even arrow")
    before = final.read_bytes()
    output = OutputFile(final, SCHEMA, format)
    output.write(_batch())
    with pytest.raises(OutputError, match="refusing to overwrite"):
        output.commit(replace=False)
    assert final.read_bytes() == before
    assert _names(tmp_path) == ["x.arrow"]  # the temporary is gone too


def test_commit_without_replace_refuses_an_existing_arrow_output(tmp_path: Path) -> None:
    final = tmp_path / "x.arrow"
    first = OutputFile(final, SCHEMA)
    first.write(_batch(10))
    first.commit(replace=False)
    before = final.read_bytes()
    second = OutputFile(final, SCHEMA)
    second.write(_batch(99))
    with pytest.raises(OutputError) as info:
        second.commit(replace=False)
    assert str(final) in str(info.value)
    assert final.read_bytes() == before
    assert _read(final, "file").num_rows == 10
    assert _names(tmp_path) == ["x.arrow"]


def test_commit_without_replace_refuses_a_dangling_symlink(tmp_path: Path) -> None:
    target = tmp_path / "elsewhere.arrow"
    final = tmp_path / "x.arrow"
    final.symlink_to(target)
    output = OutputFile(final, SCHEMA)
    output.write(_batch())
    with pytest.raises(OutputError):
        output.commit(replace=False)
    assert final.is_symlink() and not target.exists()


def test_commit_with_replace_overwrites_atomically(tmp_path: Path) -> None:
    final = tmp_path / "x.arrow"
    final.write_bytes(b"half-written by a crashed attempt")
    output = OutputFile(final, SCHEMA)
    output.write(_batch(42))
    output.commit(replace=True)
    assert _read(final, "file").num_rows == 42
    assert _names(tmp_path) == ["x.arrow"]


@pytest.mark.parametrize("format", ["file", "stream"])
def test_abort_removes_the_temporary(tmp_path: Path, format: str) -> None:
    final = tmp_path / "x.arrow"
    output = OutputFile(final, SCHEMA, format)
    output.write(_batch())
    assert output.temporary.exists()
    output.abort()
    assert _names(tmp_path) == []
    output.abort()  # idempotent
    assert not final.exists()


def test_abort_leaves_an_existing_final_alone(tmp_path: Path) -> None:
    final = tmp_path / "x.arrow"
    final.write_bytes(b"existing")
    output = OutputFile(final, SCHEMA)
    output.abort()
    assert final.read_bytes() == b"existing"
    assert _names(tmp_path) == ["x.arrow"]


def test_stale_temporary_of_a_dead_writer_is_removed(tmp_path: Path) -> None:
    final = tmp_path / "x.arrow"
    gone = subprocess.Popen(["true"])
    gone.wait()
    parts = temporary_name(final).name.split(".")
    parts[3] = str(gone.pid)
    (tmp_path / ".".join(parts)).write_bytes(b"garbage from a crash" * 1000)
    alive = temporary_name(final).name  # this process is alive: its temporaries are kept
    (tmp_path / alive).write_bytes(b"in progress")
    (tmp_path / ".other.tmp").write_bytes(b"not ours")
    output = OutputFile(final, SCHEMA)
    output.write(_batch(5))
    output.commit(replace=False)
    assert _read(final, "file").num_rows == 5
    assert _names(tmp_path) == sorted([".other.tmp", alive, "x.arrow"])


def test_a_long_valid_final_name_works(tmp_path: Path) -> None:
    final = tmp_path / ("n" * 245 + ".arrow")  # 251 bytes: valid, but too long for a prefix and suffix
    output = OutputFile(final, SCHEMA)
    output.write(_batch(3))
    output.commit(replace=False)
    assert _read(final, "file").num_rows == 3 and _names(tmp_path) == [final.name]


@pytest.mark.parametrize("format, compression", [("feather", None), ("file", "gzip"), ("stream", "snappy")])
def test_unsupported_format_or_compression(tmp_path: Path, format: str, compression: str | None) -> None:
    with pytest.raises(ConfigError):
        OutputFile(tmp_path / "x.arrow", SCHEMA, format, compression)
    assert _names(tmp_path) == []


# ----------------------------------------------------------------------------------------
# Provenance
# ----------------------------------------------------------------------------------------


def _provenance() -> tuple[dict[str, str], list[dict[str, Any]]]:
    labels = [
        {"entity": "e-0", "measure": "stock", "stream_id": 1, "run": 3},
        {"entity": "e-1", "measure": "stock", "stream_id": 4},
    ]
    meta = provenance_metadata("/data/runs/run-0001", "logger-x", "2026-01-02T03:04:05+00:00", 17, labels)
    return meta, labels


def test_provenance_metadata_is_prefixed_strings() -> None:
    meta, _ = _provenance()
    assert all(isinstance(k, str) and isinstance(v, str) for k, v in meta.items())
    assert all(k.startswith("herocollector.") for k in meta)


@pytest.mark.parametrize("format", ["file", "stream"])
@pytest.mark.parametrize("compression", [None, "zstd"])
def test_provenance_round_trips(tmp_path: Path, format: str, compression: str | None) -> None:
    meta, labels = _provenance()
    final = tmp_path / "x.arrow"
    schema = SCHEMA.with_metadata({**meta, "other": "kept but not ours"})
    output = OutputFile(final, schema, format, compression)
    output.write(_batch(3))
    output.commit(replace=False)
    provenance = read_provenance(final)
    assert provenance == {
        "logger_path": "/data/runs/run-0001",
        "source": "logger-x",
        "collected_at": "2026-01-02T03:04:05+00:00",
        "job": "17",
        "streams": meta["herocollector.streams"],
    }
    assert json.loads(provenance["streams"]) == labels
    assert read_provenance(str(final)) == provenance
    assert _read(final, format).schema.metadata[b"other"] == b"kept but not ours"


def test_read_provenance_of_arrow_without_provenance_is_empty(tmp_path: Path) -> None:
    final = tmp_path / "plain.arrow"
    with pa.ipc.new_file(str(final), SCHEMA.with_metadata({"foo": "bar"})) as writer:
        writer.write_batch(_batch(1))
    assert read_provenance(final) == {}


@pytest.mark.parametrize(
    "content",
    [b"", b"not arrow at all", b"ARROW1" + b"\x00" * 10, os.urandom(4096), b"\xff\xff\xff\xff" + b"\x10" * 64],
    ids=["empty", "text", "truncated-magic", "random", "bad-stream-prefix"],
)
def test_read_provenance_of_non_arrow_file_is_empty(tmp_path: Path, content: bytes) -> None:
    junk = tmp_path / "junk.arrow"
    junk.write_bytes(content)
    assert read_provenance(junk) == {}


def test_read_provenance_of_missing_file_or_directory_is_empty(tmp_path: Path) -> None:
    assert read_provenance(tmp_path / "missing.arrow") == {}
    assert read_provenance(tmp_path) == {}


# ----------------------------------------------------------------------------------------
# Real faults: a folder turned read-only, a full disk
# ----------------------------------------------------------------------------------------


@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[Path]:
    """A 1 MiB tmpfs: a real full disk, and a real read-only remount."""
    mount = tmp_path / "tmpfs"
    mount.mkdir()
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)], capture_output=True)
    if result.returncode != 0:
        pytest.fail(f"cannot mount a tmpfs (needs root): {result.stderr.decode().strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["mount", "-o", "remount,rw", str(mount)], check=False, capture_output=True)
        subprocess.run(["umount", "-l", str(mount)], check=False)


def _remount(mount: Path, mode: str) -> None:
    subprocess.run(["mount", "-o", f"remount,{mode}", str(mount)], check=True, capture_output=True)


def test_a_publish_into_a_read_only_folder_reports_the_cause_and_the_retry_leaves_nothing(tmpfs: Path) -> None:
    final = tmpfs / "x.arrow"
    output = OutputFile(final, SCHEMA)
    output.write(_batch())
    output.finish()
    _remount(tmpfs, "ro")
    with pytest.raises(PublishError) as caught:
        output.publish(replace=False)
    assert caught.value.errno == 30 and caught.value.path == str(final) and caught.value.folder == str(tmpfs)
    assert "publishing failed: [Errno 30] Read-only file system" in str(caught.value)
    assert TEMP_SUFFIX not in str(caught.value)  # the final name, not the temporary one
    output.abort()  # never raises, though the temporary file cannot be removed now
    assert output.temporary.exists() and not final.exists()
    assert remove_abandoned() == []  # still read-only

    _remount(tmpfs, "rw")
    retry = OutputFile(final, SCHEMA)  # the next attempt of this process removes the leftover
    assert not output.temporary.exists()
    retry.write(_batch())
    retry.commit(replace=False)
    assert _names(tmpfs) == ["x.arrow"]


def test_abandoned_temporary_files_are_removed_once_the_folder_is_writable(tmpfs: Path) -> None:
    outputs = [OutputFile(tmpfs / f"{name}.arrow", SCHEMA) for name in ("a", "b")]
    for output in outputs:
        output.write(_batch())
        output.finish()
    _remount(tmpfs, "ro")
    for output in outputs:
        output.abort()
    assert len(_names(tmpfs)) == 2
    _remount(tmpfs, "rw")
    assert sorted(remove_abandoned()) == sorted(o.temporary for o in outputs)
    assert _names(tmpfs) == []


def test_a_full_disk_while_writing_names_the_final_path_and_abort_leaves_nothing(tmpfs: Path) -> None:
    final = tmpfs / "deep" / "big.arrow"
    output = OutputFile(final, SCHEMA)
    with pytest.raises(PublishError) as caught:
        for offset in range(0, 10_000_000, 5000):
            output.write(_batch(5000, offset))
        output.finish()
    assert caught.value.errno == 28 and caught.value.path == str(final)
    assert "No space left on device" in str(caught.value) and f"in the folder {final.parent}" in str(caught.value)
    output.abort()
    assert _names(final.parent) == []
