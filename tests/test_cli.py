"""The ``herocollector`` command, driven as a user drives it: in a subprocess.

``collect`` (one file and templated files), ``inspect``, ``cleanup``, bad arguments (exit 2,
one line, no traceback), errors in the input (exit 1, one line) and ``demo`` (BOSS, the
collector actor and the demo logger HERO, end to end, within a minute, leaving no process).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from herocollector.actor.demo import write_simulated_run
from herocollector.actor.launcher import wait_until
from herocollector.output.files import read_provenance
from herocollector.testing.runs import collect_table

COLUMNS = ["run", "entity", "measure"]


def cli(*args: str | Path, cwd: Path | None = None, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run ``python -m herocollector ARGS`` and capture its output."""
    return subprocess.run(
        [sys.executable, "-m", "herocollector", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=cwd,
        env={**os.environ, "COLUMNS": "200"},
    )


def assert_one_line_error(result: subprocess.CompletedProcess[str], status: int) -> str:
    """The command failed with ``status`` and one line on stderr, without a traceback."""
    assert result.returncode == status, (result.returncode, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr + result.stdout
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("herocollector"), lines[0]
    return lines[0]


def read_ipc(path: Path) -> pa.Table:
    """An Arrow IPC file or stream, as a table."""
    try:
        return pa.ipc.open_file(str(path)).read_all()
    except pa.ArrowInvalid:
        with pa.OSFile(str(path)) as fh:
            return pa.ipc.open_stream(fh).read_all()


def leftover_temporaries(root: Path) -> list[Path]:
    """Temporary output files (``.<name>.<tag>.tmp``) below ``root``."""
    return sorted(root.rglob(".*.tmp"))


@pytest.fixture(scope="module")
def pristine_runs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two finished runs, written once per module: a single-segment one and a rotated one."""
    root = tmp_path_factory.mktemp("pristine")
    write_simulated_run(root / "run-a", records=3000, seed=1, labels={"run": 1})
    write_simulated_run(root / "run-b", records=10_000, seed=2, labels={"run": 2}, rotate_bytes=20_000)
    assert len(list((root / "run-b").glob("*.seg.zst"))) >= 3
    return root


@pytest.fixture
def runs(pristine_runs: Path, tmp_path: Path) -> list[Path]:
    """A private copy of the two runs (tests damage, unfinish and clean them)."""
    shutil.copytree(pristine_runs, tmp_path / "runs")
    return [tmp_path / "runs" / "run-a", tmp_path / "runs" / "run-b"]


def unfinish(path: Path) -> Path:
    """Remove ``_DONE``, as if the logger were still writing."""
    (path / "_DONE").unlink()
    return path


# ----------------------------------------------------------------------------------------
# collect
# ----------------------------------------------------------------------------------------


def test_collect_one_file(runs: list[Path], tmp_path: Path) -> None:
    out = tmp_path / "out" / "all.arrow"
    result = cli("collect", *runs, "-o", out, "--columns", ",".join(COLUMNS))
    assert result.returncode == 0, result.stderr
    table = read_ipc(out)
    expected = collect_table(runs, columns=COLUMNS)
    assert table.num_rows == expected.num_rows == 13_000
    assert table.combine_chunks().equals(expected)
    assert table.schema.names == ["stream_id", "epoch", "indices", "values", *COLUMNS]
    assert table.schema.field("run").type == pa.int64()
    provenance = read_provenance(out)
    assert provenance["source"] == "herocollector-cli"
    assert json.loads(provenance["logger_path"]) == [str(p) for p in runs]
    assert "13,000 rows" in result.stdout and "1 file(s)" in result.stdout and "records/s" in result.stdout
    assert leftover_temporaries(tmp_path) == []


def test_collect_rule_file_stream_format_and_compression(runs: list[Path], tmp_path: Path) -> None:
    rule = {"all": [{"match": {"key": "measure", "op": "eq", "value": "stock"}}]}
    rule_file = tmp_path / "rule.json"
    rule_file.write_text(json.dumps(rule))
    out = tmp_path / "stock.arrows"
    result = cli("collect", runs[1], "-o", out, "--rule", f"@{rule_file}", "--format", "stream", "--compression", "lz4")
    assert result.returncode == 0, result.stderr
    with pytest.raises(pa.ArrowInvalid):
        pa.ipc.open_file(str(out))
    table = read_ipc(out)
    expected = collect_table([runs[1]], rule=rule)
    assert 0 < table.num_rows < 10_000
    assert table.combine_chunks().equals(expected)

    inline = tmp_path / "inline.arrow"
    result = cli("collect", runs[1], "-o", inline, "--rule", json.dumps(rule), "--compression", "zstd")
    assert result.returncode == 0, result.stderr
    assert read_ipc(inline).combine_chunks().equals(expected)


def test_collect_templated_files(runs: list[Path], tmp_path: Path) -> None:
    root = tmp_path / "collected"
    result = cli(
        "collect", *runs, "-o", root, "--template", "{{ logger_name }}/{{ measure }}.arrow", "--columns", "entity"
    )
    assert result.returncode == 0, result.stderr
    files = sorted(root.rglob("*.arrow"))
    assert [f.relative_to(root).as_posix() for f in files] == [
        f"{run.name}/{measure}.arrow" for run in runs for measure in ("backlog", "orders", "stock")
    ]
    for file in files:
        run = root.parent / "runs" / file.parent.name
        rule = {"match": {"key": "measure", "op": "eq", "value": file.stem}}
        assert read_ipc(file).combine_chunks().equals(collect_table([run], rule=rule, columns=["entity"]))
        assert read_provenance(file)["logger_path"] == str(run)
    assert sum(read_ipc(f).num_rows for f in files) == 13_000
    assert "6 file(s)" in result.stdout
    assert leftover_temporaries(root) == []


def test_collect_template_merges_runs_into_shared_files(runs: list[Path], tmp_path: Path) -> None:
    root = tmp_path / "by-measure"
    result = cli("collect", *runs, "-o", root, "--template", "{{ output_root }}/{{ measure }}.arrow")
    assert result.returncode == 0, result.stderr
    for measure in ("backlog", "orders", "stock"):
        rule = {"match": {"key": "measure", "op": "eq", "value": measure}}
        expected = collect_table(runs, rule=rule)
        assert read_ipc(root / f"{measure}.arrow").combine_chunks().equals(expected)


def test_collect_replaces_an_existing_output(runs: list[Path], tmp_path: Path) -> None:
    out = tmp_path / "out.arrow"
    out.write_bytes(b"old")
    result = cli("collect", runs[0], "-o", out)
    assert result.returncode == 0, result.stderr
    assert read_ipc(out).num_rows == 3000


def test_collect_nothing_selected_writes_an_empty_file(runs: list[Path], tmp_path: Path) -> None:
    out = tmp_path / "none.arrow"
    rule = json.dumps({"match": {"key": "measure", "op": "eq", "value": "nothing"}})
    result = cli("collect", runs[0], "-o", out, "--rule", rule, "--columns", "entity")
    assert result.returncode == 0, result.stderr
    assert "no stream was selected" in result.stderr
    table = read_ipc(out)
    assert table.num_rows == 0 and table.schema.names == ["stream_id", "epoch", "indices", "values", "entity"]


def test_collect_times_out_without_done(runs: list[Path], tmp_path: Path) -> None:
    out = tmp_path / "out.arrow"
    line = assert_one_line_error(cli("collect", unfinish(runs[0]), "-o", out, "--timeout", "0"), 1)
    assert "_DONE" in line and str(runs[0]) in line
    assert not out.exists()


def test_collect_corrupt_segment_leaves_no_output(runs: list[Path], tmp_path: Path) -> None:
    segment = sorted(runs[1].glob("*.seg.zst"))[1]
    data = segment.read_bytes()
    segment.write_bytes(data[: len(data) // 2])
    root = tmp_path / "collected"
    line = assert_one_line_error(cli("collect", *runs, "-o", root, "--template", "{{ measure }}.arrow"), 1)
    assert segment.name in line and "offset" in line
    assert list(root.rglob("*.arrow")) == []
    assert leftover_temporaries(root) == []


def test_collect_nonexistent_path(tmp_path: Path) -> None:
    line = assert_one_line_error(cli("collect", tmp_path / "missing", "-o", tmp_path / "x.arrow"), 1)
    assert "does not exist" in line and "missing" in line


def test_collect_not_a_logger_directory(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "_DONE").touch()
    line = assert_one_line_error(cli("collect", tmp_path / "empty", "-o", tmp_path / "x.arrow"), 1)
    assert "streams/" in line


@pytest.mark.parametrize("content", ["nothing", "a stray file"])
def test_collect_fails_at_once_on_a_folder_that_is_not_a_logger_directory(content: str, tmp_path: Path) -> None:
    folder = tmp_path / "photos"
    folder.mkdir()
    if content != "nothing":
        (folder / "holiday.jpg").write_bytes(b"\xff\xd8")
    # --timeout none: a collect that waited for _DONE would never end (and the subprocess timeout fail it)
    line = assert_one_line_error(cli("collect", folder, "-o", tmp_path / "x.arrow", "--timeout", "none"), 1)
    assert str(folder) in line and "not a logger directory" in line
    assert "no streams/" in line and "no *.seg.zst segment files" in line and "no _DONE" in line
    assert not (tmp_path / "x.arrow").exists()


def test_collect_still_waits_for_a_run_that_has_begun(tmp_path: Path, runs: list[Path]) -> None:
    for segment in unfinish(runs[0]).glob("*.seg.zst"):  # streams/ and no segment yet: a run just started
        segment.unlink()
    line = assert_one_line_error(cli("collect", runs[0], "-o", tmp_path / "x.arrow", "--timeout", "0"), 1)
    assert "timed out" in line and "_DONE" in line


def test_collect_template_escaping_the_output_root(runs: list[Path], tmp_path: Path) -> None:
    result = cli("collect", runs[0], "-o", tmp_path / "o", "--template", "../{{ measure }}.arrow")
    line = assert_one_line_error(result, 1)
    assert "outside output_root" in line
    assert not list(tmp_path.glob("*.arrow"))


# ----------------------------------------------------------------------------------------
# inspect
# ----------------------------------------------------------------------------------------


def test_inspect_json_counts_records_per_stream(runs: list[Path]) -> None:
    result = cli("inspect", *runs, "--json")
    assert result.returncode == 0, result.stderr
    reports = json.loads(result.stdout)
    assert [r["path"] for r in reports] == [str(p) for p in runs]
    for report, run in zip(reports, runs):
        table = collect_table([run])
        ids, counts = np.unique(table.column("stream_id").to_numpy(), return_counts=True)
        assert {s["stream_id"]: s["records"] for s in report["streams"]} == dict(zip(ids.tolist(), counts.tolist()))
        assert report["records"] == table.num_rows
        assert report["done"] is True
        segments = sorted(run.glob("*.seg.zst"))
        assert report["segment_count"] == len(segments)
        assert report["segment_bytes"] == sum(s.stat().st_size for s in segments)
        stream = report["streams"][0]
        assert stream["epoch_scale"] == 1e-3 and stream["value_scale"] == 1e-3
        assert stream["labels"]["model"] == "supply_chain" and "stream_id" not in stream["labels"]


def test_inspect_table(runs: list[Path]) -> None:
    unfinish(runs[0])
    result = cli("inspect", *runs)
    assert result.returncode == 0, result.stderr
    text = result.stdout
    assert str(runs[0]) in text and str(runs[1]) in text
    assert "_DONE: no" in text and "_DONE: yes" in text
    assert "records: 3,000" in text and "records: 10,000" in text
    assert "measure=stock" in text and "epoch_scale" in text and "value_scale" in text
    assert re.search(r"segments: [3-9] ", text)


def test_inspect_without_counting(runs: list[Path]) -> None:
    result = cli("inspect", runs[0], "--no-count", "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)[0]
    assert report["records"] is None and all(s["records"] is None for s in report["streams"])


def test_inspect_reports_a_damaged_segment(runs: list[Path]) -> None:
    segment = sorted(runs[1].glob("*.seg.zst"))[-1]
    segment.write_bytes(segment.read_bytes() + b"garbage!")
    result = cli("inspect", runs[1])
    line = assert_one_line_error(result, 1)
    assert segment.name in line
    assert "streams: 12" in result.stdout  # what could be read is still shown


# ----------------------------------------------------------------------------------------
# cleanup
# ----------------------------------------------------------------------------------------


def test_cleanup_dry_run_removes_nothing(runs: list[Path]) -> None:
    before = sorted(p for run in runs for p in run.rglob("*"))
    result = cli("cleanup", *runs, "--dry-run", "--no-keep-meta")
    assert result.returncode == 0, result.stderr
    assert sorted(p for run in runs for p in run.rglob("*")) == before
    for segment in (s for run in runs for s in run.glob("*.seg.zst")):
        assert f"would remove {segment.name}" in result.stdout
    assert "would remove streams/" in result.stdout


def test_cleanup_removes_segments_and_keeps_meta(runs: list[Path]) -> None:
    result = cli("cleanup", *runs)
    assert result.returncode == 0, result.stderr
    for run in runs:
        assert not list(run.glob("*.seg.zst"))
        assert (run / "streams").is_dir() and (run / "_DONE").exists()
    assert "removed" in result.stdout
    # A cleaned run still inspects, with nothing left to count.
    report = json.loads(cli("inspect", runs[0], "--json").stdout)[0]
    assert report["segment_count"] == 0 and report["records"] == 0


def test_cleanup_without_meta(runs: list[Path]) -> None:
    assert cli("cleanup", runs[0], "--no-keep-meta").returncode == 0
    assert not list(runs[0].glob("*.seg.zst")) and not (runs[0] / "streams").exists()


def test_cleanup_waits_for_done_and_times_out(runs: list[Path]) -> None:
    unfinish(runs[0])
    line = assert_one_line_error(cli("cleanup", *runs, "--timeout", "0"), 1)
    assert "_DONE" in line
    assert all(list(run.glob("*.seg.zst")) for run in runs)  # nothing removed, anywhere


def test_cleanup_no_wait(runs: list[Path]) -> None:
    unfinish(runs[0])
    assert cli("cleanup", runs[0], "--no-wait").returncode == 0
    assert not list(runs[0].glob("*.seg.zst"))


def trash_of(run: Path) -> list[str]:
    """The names in a run's trash, with the time stamp cut off."""
    return sorted(re.sub(r"\.trash-\d+$", "", p.name) for p in run.glob("*.trash-*"))


def test_cleanup_moves_segments_into_the_trash_and_restore_puts_them_back(runs: list[Path], tmp_path: Path) -> None:
    before = {s.name: s.read_bytes() for s in runs[1].glob("*.seg.zst")}
    expected = collect_table([runs[1]])
    result = cli("cleanup", runs[1], "--no-keep-meta")
    assert result.returncode == 0, result.stderr
    assert "into the trash" in result.stdout and "herocollector restore" in result.stdout
    assert not list(runs[1].glob("*.seg.zst")) and not (runs[1] / "streams").exists()
    assert trash_of(runs[1]) == sorted([*before, "streams"])
    for trashed in runs[1].glob("*.seg.zst.trash-*"):  # renamed, not rewritten
        assert trashed.read_bytes() == before[trashed.name.split(".trash-")[0]]

    result = cli("restore", runs[1])
    assert result.returncode == 0, result.stderr
    assert f"restored {len(before) + 1} item(s) in 1 run(s)" in result.stdout
    assert trash_of(runs[1]) == []
    assert {s.name: s.read_bytes() for s in runs[1].glob("*.seg.zst")} == before
    out = tmp_path / "again.arrow"
    assert cli("collect", runs[1], "-o", out, "-q").returncode == 0
    assert read_ipc(out).replace_schema_metadata(None).combine_chunks().equals(expected)


def test_cleanup_purge_deletes_for_good_with_the_earlier_trash(runs: list[Path]) -> None:
    assert cli("cleanup", runs[0]).returncode == 0
    assert trash_of(runs[0]) == ["00000.seg.zst"]
    (runs[1] / "00000.seg.zst.trash-1").write_bytes(b"trashed long ago")
    before = sorted(p for run in runs for p in run.rglob("*"))
    dry = cli("cleanup", *runs, "--purge", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert "for good" in dry.stdout and "would delete 00000.seg.zst.trash-1 (trash)" in dry.stdout
    assert sorted(p for run in runs for p in run.rglob("*")) == before  # a dry run touches nothing

    result = cli("cleanup", *runs, "--purge")
    assert result.returncode == 0, result.stderr
    assert "for good" in result.stdout and "2 earlier trashed item(s) deleted too" in result.stdout
    for run in runs:
        assert not list(run.glob("*.seg.zst*")) and trash_of(run) == []
        assert (run / "streams").is_dir() and (run / "_DONE").exists()
    assert "restored 0 item(s)" in cli("restore", *runs).stdout


def test_restore_leaves_an_entry_whose_name_is_taken(runs: list[Path]) -> None:
    assert cli("cleanup", runs[0]).returncode == 0
    (runs[0] / "00000.seg.zst").write_bytes(b"a new segment of the same name")
    line = assert_one_line_error(cli("restore", runs[0]), 1)
    assert "left in the trash" in line and "00000.seg.zst.trash-" in line
    assert (runs[0] / "00000.seg.zst").read_bytes() == b"a new segment of the same name"
    assert trash_of(runs[0]) == ["00000.seg.zst"]


def test_cleanup_refuses_a_folder_that_is_not_a_logger_directory(tmp_path: Path) -> None:
    folder = tmp_path / "photos"
    folder.mkdir()
    line = assert_one_line_error(cli("cleanup", folder, "--no-wait"), 1)
    assert "not a logger directory" in line


# ----------------------------------------------------------------------------------------
# Bad arguments
# ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "args",
    [
        [],
        ["frobnicate"],
        ["collect", "RUN"],
        ["collect", "-o", "x.arrow"],
        ["collect", "RUN", "-o", "x.arrow", "--rule", "{not json"],
        ["collect", "RUN", "-o", "x.arrow", "--rule", "[1, 2]"],
        ["collect", "RUN", "-o", "x.arrow", "--rule", '{"nonsense": 1}'],
        ["collect", "RUN", "-o", "x.arrow", "--rule", "@does-not-exist.json"],
        ["collect", "RUN", "-o", "x.arrow", "--format", "feather"],
        ["collect", "RUN", "-o", "x.arrow", "--compression", "gzip"],
        ["collect", "RUN", "-o", "x.arrow", "--timeout", "soon"],
        ["collect", "RUN", "-o", "x.arrow", "--timeout", "-1"],
        ["collect", "RUN", "-o", "x.arrow", "--columns", "epoch,run"],
        ["collect", "RUN", "-o", "out", "--template", "{{ measure"],
        ["inspect"],
        ["inspect", "RUN", "--colour"],
        ["cleanup"],
        ["cleanup", "RUN", "--keep-meta=no"],
        ["restore"],
        ["restore", "RUN", "--purge"],
        ["demo", "--runs", "0"],
        ["demo", "--runs", "many"],
        ["demo", "--timeout", "-3"],
        ["collect", "RUN", "-o", "x.parquet", "--format", "parquet", "--compression", "none"],
        ["collect", "RUN", "-o", "x.arrow", "--quiet", "--progress"],
        ["collect", "RUN", "-o", "x.arrow", "--recursive", "--depth", "-1"],
        ["check-config"],
        ["remote"],
        ["remote", "status", "--timeout", "0"],
        ["remote", "collect"],
    ],
    ids=lambda a: " ".join(a) or "<none>",
)
def test_bad_arguments_exit_2_with_one_line(args: list[str], runs: list[Path], tmp_path: Path) -> None:
    argv = [str(runs[0]) if a == "RUN" else a for a in args]
    line = assert_one_line_error(cli(*argv, cwd=tmp_path), 2)
    assert "error:" in line
    assert not list(tmp_path.glob("*.arrow"))


def test_help_and_version() -> None:
    result = cli("--help")
    assert result.returncode == 0
    for command in ("collect", "inspect", "cleanup", "restore", "demo"):
        assert command in result.stdout
    assert "--template" in cli("collect", "--help").stdout
    assert re.match(r"herocollector \S+", cli("--version").stdout)


def test_console_script() -> None:
    script = Path(sys.executable).parent / ("herocollector.exe" if os.name == "nt" else "herocollector")
    if not script.exists():
        pytest.skip("the herocollector console script is not installed next to this interpreter")
    result = subprocess.run([str(script), "--version"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and result.stdout.startswith("herocollector ")


# ----------------------------------------------------------------------------------------
# demo
# ----------------------------------------------------------------------------------------


def processes_of(realm: str, pids: list[int]) -> list[str]:
    """Live processes whose command line names ``realm`` or whose process group is one of ``pids``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        state, pgid = fields[0], int(fields[2])
        if state != "Z" and (realm in cmdline or pgid in pids):
            found.append(f"{entry.name}: {cmdline}")
    return found


def check_demo_output(result: subprocess.CompletedProcess[str], runs: int) -> tuple[str, list[int], Path]:
    """The demo succeeded and showed every run being collected; returns realm, BOSS pids and workdir."""
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    text = result.stdout
    realm_match = re.search(r"in realm (\S+)", text)
    workdir_match = re.search(r"work directory: (\S+)", text)
    assert realm_match and workdir_match, text
    realm = realm_match.group(1)
    pids = [int(p) for p in re.findall(r"started BOSS for .*?, pid (\d+)", text)]
    workdir = Path(workdir_match.group(1))
    assert len(pids) == 2
    for number in range(1, runs + 1):
        match = re.search(
            rf"run {number}/{runs}: demo-logger finished (\S+) .*?\n"
            rf"  collected by job \d+ \(event from demo-logger, .*?\): "
            rf"12 streams, ([\d,]+) rows, 3 files, latency \d+ ms",
            text,
        )
        assert match, f"run {number} not shown as collected:\n{text}"
        assert match.group(1).startswith(str(workdir))
        assert text.count(f"/{Path(match.group(1)).name}/") >= 3  # its output files are listed
    assert text.count("read back with pyarrow") == runs and "MISMATCH" not in text
    assert re.search(r"collector\.status\(\): counts \{.*\"done\": " + str(runs), text)
    assert "collector.cleanup(): True" in text
    assert f"ok: {runs}/{runs} runs collected" in text
    assert "stopped 2 BOSS process(es)\n" in text
    return realm, pids, workdir


def assert_no_process_left(realm: str, pids: list[int]) -> None:
    if not Path("/proc").is_dir():
        pytest.skip("needs /proc to look for left-over processes")
    wait_until(lambda: not processes_of(realm, pids), 10, f"the demo's processes to exit: {processes_of(realm, pids)}")


@pytest.mark.e2e
def test_demo_as_in_the_readme() -> None:
    started = time.monotonic()
    result = cli("demo", timeout=90)
    elapsed = time.monotonic() - started
    realm, pids, workdir = check_demo_output(result, runs=3)
    assert elapsed < 60, f"the demo took {elapsed:.1f} s"
    assert "temporary, removed at the end" in result.stdout
    assert not workdir.exists()
    assert_no_process_left(realm, pids)


@pytest.mark.e2e
def test_demo_in_a_work_directory(tmp_path: Path) -> None:
    workdir = tmp_path / "demo"
    result = cli("demo", "--workdir", workdir, "--runs", "2", "--records", "500", timeout=90)
    realm, pids, shown = check_demo_output(result, runs=2)
    assert shown == workdir
    assert_no_process_left(realm, pids)
    outputs = sorted((workdir / "collected").rglob("*.arrow"))
    assert len(outputs) == 6
    assert sum(pa.ipc.open_file(str(f)).read_all().num_rows for f in outputs) == 1000
    runs = sorted((workdir / "runs").iterdir())
    assert len(runs) == 2
    for run in runs:  # cleanup() removed the segments and kept the metadata
        assert not list(run.glob("*.seg.zst")) and (run / "streams").is_dir() and (run / "_DONE").exists()
    assert (workdir / "state" / "journal.sqlite3").exists()
    assert (workdir / "boss" / "collector.log").exists()


# ----------------------------------------------------------------------------------------
# Many runs, open files, progress
# ----------------------------------------------------------------------------------------


def test_many_runs_need_only_a_few_open_files(tmp_path: Path) -> None:
    import resource

    folder = tmp_path / "many"
    paths = [write_simulated_run(folder / f"run-{i:03d}", records=6, entities=1, seed=i)["path"] for i in range(150)]
    out = tmp_path / "out"

    def few_files() -> None:  # runs in the child: 64 descriptors for 150 runs x 3 outputs
        resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64))

    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "herocollector",
            "collect",
            *paths,
            "-o",
            str(out),
            "-q",
            "--template",
            "{{ logger_name }}/{{ measure }}.arrow",
            "--jobs",
            "2",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        preexec_fn=few_files,
    )
    assert result.returncode == 0, result.stderr
    files = sorted(out.rglob("*.arrow"))
    assert len(files) == 450
    assert sum(pa.ipc.open_file(f).read_all().num_rows for f in files) == 900


def test_rows_keep_the_order_of_the_paths_when_runs_decode_in_parallel(runs: list[Path], tmp_path: Path) -> None:
    for jobs in ("1", "3"):
        target = tmp_path / f"jobs-{jobs}.arrow"
        assert cli("collect", runs[1], runs[0], runs[1], "-o", target, "-q", "--jobs", jobs).returncode == 0
    assert (
        pa.ipc.open_file(tmp_path / "jobs-1.arrow")
        .read_all()
        .equals(pa.ipc.open_file(tmp_path / "jobs-3.arrow").read_all())
    )
    expected = collect_table([runs[1], runs[0]])
    assert pa.ipc.open_file(tmp_path / "jobs-3.arrow").read_all().replace_schema_metadata(None).equals(expected)


def test_progress_moves_within_a_run(tmp_path: Path) -> None:
    from herocollector.output.files import provenance_metadata
    from herocollector.output.pipeline import OutputPipeline, WriteContext

    run = Path(write_simulated_run(tmp_path / "big", records=120_000, entities=2, seed=3)["path"])
    [segment] = run.glob("*.seg.zst")
    pipeline = OutputPipeline(chunk_bytes=1 << 16)
    plan = pipeline.plan([pipeline.plan_run(run)], lambda index, planned, stream: tmp_path / "out.arrow")
    seen: list[tuple[int, int]] = []  # (bytes so far, rows so far) at each progress report
    rows = 0

    class Counting:
        def rows_written(self, n: int) -> None:
            nonlocal rows
            rows += n

        def bytes_read(self, n: int) -> None:
            seen.append((n + (seen[-1][0] if seen else 0), rows))

    provenance = {target.path: provenance_metadata("", "", "", 0, []) for target in plan.targets}
    pipeline.write(plan, WriteContext(provenance=provenance, progress=Counting()))
    assert seen[-1][0] == segment.stat().st_size
    assert len(seen) > 3
    assert any(0 < done < segment.stat().st_size for done, _ in seen)  # reported before the run ended


# ----------------------------------------------------------------------------------------
# What operators reach for: time ranges, the trash, summaries, progress, recursion, clobbering
# ----------------------------------------------------------------------------------------


def test_inspect_shows_each_streams_time_range(runs: list[Path]) -> None:
    result = cli("inspect", runs[1], "--json")
    assert result.returncode == 0, result.stderr
    [report] = json.loads(result.stdout)
    table = collect_table([runs[1]])
    ids = table.column("stream_id").to_numpy()
    epochs = table.column("epoch").to_numpy()
    assert report["trash"] is None
    for stream in report["streams"]:
        mine = epochs[ids == stream["stream_id"]]
        assert stream["first_epoch"] == pytest.approx(mine.min())
        assert stream["last_epoch"] == pytest.approx(mine.max())
    human = cli("inspect", runs[1])
    assert "first epoch" in human.stdout and "last epoch" in human.stdout


def test_inspect_of_a_cleaned_run_shows_its_trash(runs: list[Path]) -> None:
    segments = sorted(runs[1].glob("*.seg.zst"))
    assert cli("cleanup", runs[1]).returncode == 0
    result = cli("inspect", runs[1], "--json", "--grace", "600")
    assert result.returncode == 0, result.stderr
    [report] = json.loads(result.stdout)
    held = report["trash"]
    assert held["segments"] == len(segments) and held["bytes"] == sum(
        s.stat().st_size for s in runs[1].glob("*.trash-*")
    )
    assert held["restorable_until"] == held["trashed_at"] + 600
    assert held["restore"] == f"herocollector restore {runs[1]}"
    human = cli("inspect", runs[1]).stdout
    assert f"{len(segments)} segment(s) in the trash" in human
    assert f"herocollector restore {runs[1]}" in human


def test_collect_of_a_cleaned_run_fails_naming_the_restore_command(runs: list[Path], tmp_path: Path) -> None:
    assert cli("cleanup", runs[0]).returncode == 0
    out = tmp_path / "cleaned.arrow"
    line = assert_one_line_error(cli("collect", runs[0], "-o", out), 1)
    assert "trash" in line and f"herocollector restore {runs[0]}" in line
    assert not out.exists() and leftover_temporaries(tmp_path) == []
    assert cli("restore", runs[0]).returncode == 0
    assert cli("collect", runs[0], "-o", out).returncode == 0
    assert read_ipc(out).num_rows == 3000


def test_collect_json_summary(runs: list[Path], tmp_path: Path) -> None:
    root = tmp_path / "collected"
    result = cli("collect", *runs, "-o", root, "--template", "{{ logger_name }}/{{ measure }}.arrow", "--json")
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["runs"] == [str(p) for p in runs]
    assert summary["rows"] == 13_000 == sum(o["rows"] for o in summary["outputs"])
    assert len(summary["outputs"]) == 6
    for output in summary["outputs"]:
        path = Path(output["path"])
        assert path.stat().st_size == output["bytes"] and read_ipc(path).num_rows == output["rows"]
    assert summary["bytes"] == sum(o["bytes"] for o in summary["outputs"])
    assert summary["segment_bytes"] == sum(s.stat().st_size for run in runs for s in run.glob("*.seg.zst"))
    assert summary["seconds"] > 0


def test_progress_can_be_forced_on_and_uses_binary_units(tmp_path: Path) -> None:
    run = Path(write_simulated_run(tmp_path / "big", records=60_000, entities=2, seed=4)["path"])
    result = cli("collect", run, "-o", tmp_path / "out.arrow", "--progress")
    assert result.returncode == 0, result.stderr
    assert "finishing 1 file(s)" in result.stderr, result.stderr[-2000:]
    assert "KiB" in result.stderr or "MiB" in result.stderr
    assert not re.search(r"\d [kM]B\b", result.stderr + result.stdout), "decimal units next to binary ones"
    quiet = cli("collect", run, "-o", tmp_path / "out2.arrow")
    assert quiet.returncode == 0 and "finishing" not in quiet.stderr  # not a terminal, not forced


def test_collect_recursive_finds_finished_runs_down_to_depth(pristine_runs: Path, tmp_path: Path) -> None:
    root = tmp_path / "root"
    shutil.copytree(pristine_runs / "run-a", root / "2026" / "run-a")
    shutil.copytree(pristine_runs / "run-b", root / "2026" / "deeper" / "run-b")
    shutil.copytree(pristine_runs / "run-a", root / "2026" / "unfinished")
    unfinish(root / "2026" / "unfinished")
    shallow = tmp_path / "shallow.arrow"
    result = cli("collect", root, "--recursive", "--depth", "2", "-o", shallow, "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["runs"] == [str(root / "2026" / "run-a")]
    deep = tmp_path / "deep.arrow"
    result = cli("collect", root, "-r", "-o", deep, "--json")
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["runs"] == [str(root / "2026" / "deeper" / "run-b"), str(root / "2026" / "run-a")]
    assert read_ipc(deep).num_rows == 13_000
    line = assert_one_line_error(cli("collect", root, "-r", "--depth", "0", "-o", tmp_path / "none.arrow"), 1)
    assert "no finished logger directory" in line and str(root) in line


def test_collect_recursive_leaves_out_cleaned_runs_saying_so(pristine_runs: Path, tmp_path: Path) -> None:
    root = tmp_path / "root"
    shutil.copytree(pristine_runs, root)
    assert cli("cleanup", root / "run-b").returncode == 0
    result = cli("collect", root, "-r", "-o", tmp_path / "out.arrow", "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["runs"] == [str(root / "run-a")]
    assert "left out 1 cleaned run(s)" in result.stderr and str(root / "run-b") in result.stderr


def test_no_clobber_refuses_an_existing_output(runs: list[Path], tmp_path: Path) -> None:
    out = tmp_path / "out.arrow"
    out.write_bytes(b"precious")
    line = assert_one_line_error(cli("collect", runs[0], "-o", out, "--no-clobber"), 1)
    assert "--no-clobber" in line and str(out) in line
    assert out.read_bytes() == b"precious" and leftover_temporaries(tmp_path) == []
    fresh = tmp_path / "fresh.arrow"
    assert cli("collect", runs[0], "-o", fresh, "--no-clobber").returncode == 0
    assert read_ipc(fresh).num_rows == 3000


def test_a_full_output_folder_is_named_not_the_temporary_file(runs: list[Path], tmp_path: Path) -> None:
    small = tmp_path / "small"
    small.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(small)], check=True)
    try:
        result = cli("collect", *runs, "-o", small / "all.arrow")
        leftovers = leftover_temporaries(small)
    finally:
        subprocess.run(["umount", str(small)], check=True)
    line = assert_one_line_error(result, 1)
    assert f"{small / 'all.arrow'}:" in line and f"in the folder {small}" in line
    assert ".tmp" not in line and leftovers == []


def test_help_says_what_is_accepted() -> None:
    top = cli("--help").stdout
    assert "Parquet" in top
    for command in ("check-config", "remote", "verify"):
        assert command in top
    collect_help = cli("collect", "--help").stdout
    assert "{zstd,lz4,none}" in collect_help
    assert "--recursive" in collect_help and "--no-clobber" in collect_help and "--json" in collect_help
    remote_help = cli("remote", "--help").stdout
    for method in ("status", "failed", "retry", "collect", "cleanup", "restore", "verify"):
        assert method in remote_help


def test_every_command_is_documented() -> None:
    from herocollector.cli.main import COMMANDS
    from herocollector.cli.remote import METHODS

    root = Path(__file__).resolve().parent.parent
    text = "".join(
        (root / name).read_text(encoding="utf-8")
        for name in ("README.md", "docs/operations.md", "docs/troubleshooting.md")
    )
    for command in COMMANDS:
        assert f"herocollector {command.NAME}" in text, f"herocollector {command.NAME} is not documented"
    for method in METHODS:
        assert f"herocollector remote {method}" in text, f"herocollector remote {method} is not documented"
