"""Output paths and files (SPEC §4): the sandboxed path template confined to ``output_root``,
and Arrow IPC outputs written to a hidden temporary file and committed atomically.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest

from herocollector.errors import CollectorError
from herocollector.output import (
    ArrowOutput,
    OutputError,
    PathTemplate,
    is_within,
    provenance_metadata,
    read_provenance,
)

# ----------------------------------------------------------------------------------------
# PathTemplate
# ----------------------------------------------------------------------------------------


@pytest.fixture
def root(tmp_path: Path) -> Path:
    folder = tmp_path / "out"
    folder.mkdir()
    return folder


def test_output_error_is_a_collector_error() -> None:
    assert issubclass(OutputError, CollectorError)


def test_renders_inside_output_root(root: Path) -> None:
    template = PathTemplate("{{ output_root }}/{{ experiment }}/{{ measure }}.arrow", root)
    path = template.render({"output_root": str(root), "experiment": "exp-1", "measure": "stock"})
    assert path == root / "exp-1" / "stock.arrow"
    assert path.is_absolute()
    assert not path.exists()  # rendering creates nothing


def test_relative_result_goes_under_output_root(root: Path) -> None:
    template = PathTemplate("{{ experiment }}/{{ measure }}.arrow", root)
    assert template.render({"experiment": "e", "measure": "m"}) == root / "e" / "m.arrow"


def test_output_root_is_made_absolute(root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(root.parent)
    template = PathTemplate("x/{{ m }}.arrow", "out")
    assert template.output_root == root
    assert template.render({"m": "a"}) == root / "x" / "a.arrow"


def test_dot_segments_inside_root_are_normalised(root: Path) -> None:
    template = PathTemplate("{{ output_root }}/a/./b/../{{ m }}.arrow", root)
    assert template.render({"output_root": str(root), "m": "c"}) == root / "a" / "c.arrow"


def test_surrounding_whitespace_is_stripped(root: Path) -> None:
    template = PathTemplate("  {{ m }}.arrow\n", root)
    assert template.render({"m": "a"}) == root / "a.arrow"


@pytest.mark.parametrize(
    "source, context",
    [
        ("{{ output_root }}/../escaped.arrow", {}),
        ("{{ output_root }}/{{ m }}.arrow", {"m": "../../etc/passwd"}),
        ("{{ m }}/x.arrow", {"m": ".."}),
        ("../x.arrow", {}),
        ("a/../../x.arrow", {}),
    ],
    ids=["template-dotdot", "value-dotdot", "relative-value-dotdot", "relative-dotdot", "nested-dotdot"],
)
def test_dotdot_escape_is_refused(root: Path, source: str, context: dict[str, Any]) -> None:
    template = PathTemplate(source, root)
    with pytest.raises(OutputError, match="outside output_root"):
        template.render({"output_root": str(root), **context})


@pytest.mark.parametrize("elsewhere", ["/etc/x.arrow", "/tmp/x.arrow", "/"])
def test_absolute_path_elsewhere_is_refused(root: Path, elsewhere: str) -> None:
    template = PathTemplate("{{ target }}", root)
    with pytest.raises(OutputError, match="outside output_root"):
        template.render({"target": elsewhere})


def test_sibling_with_common_prefix_is_refused(root: Path) -> None:
    # "/.../out-evil" starts with the string "/.../out" but is not inside it.
    template = PathTemplate("{{ output_root }}-evil/x.arrow", root)
    with pytest.raises(OutputError, match="outside output_root"):
        template.render({"output_root": str(root)})


def test_output_root_itself_is_refused(root: Path) -> None:
    template = PathTemplate("{{ output_root }}", root)
    with pytest.raises(OutputError):
        template.render({"output_root": str(root)})


def test_symlinked_directory_pointing_outside_is_refused(tmp_path: Path, root: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (root / "link").symlink_to(outside, target_is_directory=True)
    template = PathTemplate("{{ output_root }}/link/{{ m }}.arrow", root)
    with pytest.raises(OutputError, match="outside output_root"):
        template.render({"output_root": str(root), "m": "stock"})
    assert list(outside.iterdir()) == []


def test_symlinked_file_pointing_outside_is_refused(tmp_path: Path, root: Path) -> None:
    outside = tmp_path / "victim.arrow"
    outside.write_bytes(b"keep")
    (root / "x.arrow").symlink_to(outside)
    template = PathTemplate("x.arrow", root)
    with pytest.raises(OutputError, match="outside output_root"):
        template.render({})


def test_symlink_staying_inside_root_is_allowed(root: Path) -> None:
    (root / "real").mkdir()
    (root / "alias").symlink_to(root / "real", target_is_directory=True)
    template = PathTemplate("alias/{{ m }}.arrow", root)
    assert template.render({"m": "a"}) == root / "alias" / "a.arrow"


def test_symlinked_output_root_is_fine(tmp_path: Path) -> None:
    real = tmp_path / "real-out"
    real.mkdir()
    (tmp_path / "out-link").symlink_to(real, target_is_directory=True)
    template = PathTemplate("{{ m }}.arrow", tmp_path / "out-link")
    assert template.render({"m": "a"}) == tmp_path / "out-link" / "a.arrow"


@pytest.mark.parametrize("value", ["", "   ", "\n\t"], ids=["empty", "spaces", "whitespace"])
def test_empty_result_is_refused(root: Path, value: str) -> None:
    template = PathTemplate("{{ m }}", root)
    with pytest.raises(OutputError, match="empty or invalid"):
        template.render({"m": value})


@pytest.mark.parametrize("value", ["a\x00b", "\x00", "../\x00"])
def test_nul_is_refused(root: Path, value: str) -> None:
    template = PathTemplate("{{ output_root }}/{{ m }}.arrow", root)
    with pytest.raises(OutputError, match="empty or invalid"):
        template.render({"output_root": str(root), "m": value})


def test_undefined_variable_is_an_error_not_an_empty_segment(root: Path) -> None:
    template = PathTemplate("{{ output_root }}/{{ experiment }}/{{ measure }}.arrow", root)
    with pytest.raises(OutputError, match="experiment"):
        template.render({"output_root": str(root), "measure": "stock"})


@pytest.mark.parametrize(
    "source",
    ["{{ missing.attribute }}/x.arrow", "{{ m.nope }}/x.arrow", "{{ m['nope'] }}/x.arrow", "{{ missing | upper }}.arrow"],
)
def test_undefined_lookups_are_errors(root: Path, source: str) -> None:
    with pytest.raises(OutputError):
        PathTemplate(source, root).render({"m": "value"})


@pytest.mark.parametrize(
    "source",
    [
        "{{ ''.__class__.__mro__ }}",
        "{{ ''.__class__.__mro__[1].__subclasses__() }}",
        "{{ m.__class__.__init__.__globals__ }}",
        "{{ cycler.__init__.__globals__.os }}",
        "{{ (m.format)(m) }}{{ ''.__class__ }}",
    ],
)
def test_sandbox_blocks_unsafe_attribute_access(root: Path, source: str) -> None:
    template = PathTemplate(source, root)
    with pytest.raises(OutputError, match="unsafe"):
        template.render({"m": "x"})


def test_sandbox_error_surfaces_as_output_error_naming_the_template(root: Path) -> None:
    source = "{{ ''.__class__.__mro__ }}"
    with pytest.raises(OutputError) as info:
        PathTemplate(source, root).render({})
    assert source in str(info.value)
    assert "access to attribute '__class__'" in str(info.value)


def test_filters_and_expressions_still_work(root: Path) -> None:
    template = PathTemplate("{{ experiment | lower }}/run-{{ '%04d' % run }}/{{ measure ~ '.arrow' }}", root)
    assert template.render({"experiment": "EXP", "run": 7, "measure": "stock"}) == root / "exp" / "run-0007" / "stock.arrow"


@pytest.mark.parametrize("source", ["{{ a", "{% if %}", "{{ a }}{% endfor %}"])
def test_invalid_template_is_refused_at_construction(root: Path, source: str) -> None:
    with pytest.raises(OutputError, match="invalid save_template"):
        PathTemplate(source, root)


def test_is_within(tmp_path: Path, root: Path) -> None:
    assert is_within(root / "a" / "b", root)
    assert is_within(root, root)
    assert not is_within(tmp_path / "other", root)
    assert not is_within(root / ".." / "x", root)


# ----------------------------------------------------------------------------------------
# ArrowOutput
# ----------------------------------------------------------------------------------------

SCHEMA = pa.schema([pa.field("stream_id", pa.uint32()), pa.field("values", pa.list_(pa.float64())), pa.field("label", pa.string())])


def _batch(n: int = 100, offset: int = 0) -> pa.RecordBatch:
    return pa.RecordBatch.from_pydict(
        {
            "stream_id": pa.array([(offset + i) % 5 for i in range(n)], type=pa.uint32()),
            "values": pa.array([[float(i), float(i) / 2] for i in range(offset, offset + n)], type=pa.list_(pa.float64())),
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
    output = ArrowOutput(final, SCHEMA, "job1", format, compression)
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
        output = ArrowOutput(final, SCHEMA, "t", format)
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
        output = ArrowOutput(tmp_path / f"{name}.arrow", SCHEMA, "t", "file", codec)
        output.write(batch)
        output.commit(replace=False)
        sizes[name] = (tmp_path / f"{name}.arrow").stat().st_size
        assert _read(tmp_path / f"{name}.arrow", "file").equals(pa.Table.from_batches([batch]))
    assert sizes["packed"] < sizes["plain"] / 2


@pytest.mark.parametrize("format", ["file", "stream"])
def test_only_hidden_temporary_exists_before_commit(tmp_path: Path, format: str) -> None:
    folder = tmp_path / "deep" / "dir"
    final = folder / "stock.arrow"
    output = ArrowOutput(final, SCHEMA, "job7", format)  # creates the missing folders
    output.write(_batch())
    assert not final.exists()
    assert _names(folder) == [".stock.arrow.job7.tmp"]
    assert output.temporary == folder / ".stock.arrow.job7.tmp"
    output.commit(replace=False)
    assert _names(folder) == ["stock.arrow"]
    assert not output.temporary.exists()
    assert _read(final, format).num_rows == 100


def test_temporary_names_of_different_tags_do_not_clash(tmp_path: Path) -> None:
    final = tmp_path / "x.arrow"
    first = ArrowOutput(final, SCHEMA, "job1")
    second = ArrowOutput(final, SCHEMA, "job2")
    assert first.temporary != second.temporary
    assert _names(tmp_path) == [".x.arrow.job1.tmp", ".x.arrow.job2.tmp"]
    first.abort()
    second.abort()
    assert _names(tmp_path) == []


@pytest.mark.parametrize("format", ["file", "stream"])
def test_commit_without_replace_never_overwrites(tmp_path: Path, format: str) -> None:
    final = tmp_path / "x.arrow"
    final.write_bytes(b"precious bytes that are not even arrow")
    before = final.read_bytes()
    output = ArrowOutput(final, SCHEMA, "job2", format)
    output.write(_batch())
    with pytest.raises(OutputError, match="refusing to overwrite"):
        output.commit(replace=False)
    assert final.read_bytes() == before
    assert _names(tmp_path) == ["x.arrow"]  # the temporary is gone too


def test_commit_without_replace_refuses_an_existing_arrow_output(tmp_path: Path) -> None:
    final = tmp_path / "x.arrow"
    first = ArrowOutput(final, SCHEMA, "job1")
    first.write(_batch(10))
    first.commit(replace=False)
    before = final.read_bytes()
    second = ArrowOutput(final, SCHEMA, "job2")
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
    output = ArrowOutput(final, SCHEMA, "job1")
    output.write(_batch())
    with pytest.raises(OutputError):
        output.commit(replace=False)
    assert final.is_symlink() and not target.exists()


def test_commit_with_replace_overwrites_atomically(tmp_path: Path) -> None:
    final = tmp_path / "x.arrow"
    final.write_bytes(b"half-written by a crashed attempt")
    output = ArrowOutput(final, SCHEMA, "job1")
    output.write(_batch(42))
    output.commit(replace=True)
    assert _read(final, "file").num_rows == 42
    assert _names(tmp_path) == ["x.arrow"]


@pytest.mark.parametrize("format", ["file", "stream"])
def test_abort_removes_the_temporary(tmp_path: Path, format: str) -> None:
    final = tmp_path / "x.arrow"
    output = ArrowOutput(final, SCHEMA, "job1", format)
    output.write(_batch())
    assert output.temporary.exists()
    output.abort()
    assert _names(tmp_path) == []
    output.abort()  # idempotent
    assert not final.exists()


def test_abort_leaves_an_existing_final_alone(tmp_path: Path) -> None:
    final = tmp_path / "x.arrow"
    final.write_bytes(b"existing")
    output = ArrowOutput(final, SCHEMA, "job1")
    output.abort()
    assert final.read_bytes() == b"existing"
    assert _names(tmp_path) == ["x.arrow"]


def test_stale_temporary_of_the_same_tag_is_overwritten(tmp_path: Path) -> None:
    final = tmp_path / "x.arrow"
    (tmp_path / ".x.arrow.job1.tmp").write_bytes(b"garbage from a crash" * 1000)
    output = ArrowOutput(final, SCHEMA, "job1")
    output.write(_batch(5))
    output.commit(replace=False)
    assert _read(final, "file").num_rows == 5
    assert _names(tmp_path) == ["x.arrow"]


@pytest.mark.parametrize(
    "format, compression", [("feather", None), ("file", "gzip"), ("stream", "snappy")]
)
def test_unsupported_format_or_compression(tmp_path: Path, format: str, compression: str | None) -> None:
    with pytest.raises(OutputError):
        ArrowOutput(tmp_path / "x.arrow", SCHEMA, "t", format, compression)
    assert _names(tmp_path) == []


# ----------------------------------------------------------------------------------------
# Provenance
# ----------------------------------------------------------------------------------------


def _provenance() -> tuple[dict[str, str], list[dict[str, Any]]]:
    labels = [{"entity": "e-0", "measure": "stock", "stream_id": 1, "run": 3}, {"entity": "e-1", "measure": "stock", "stream_id": 4}]
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
    output = ArrowOutput(final, schema, "job17", format, compression)
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
