"""``herocollector collect --format delta`` and ``herocollector tables``, driven in a subprocess as a user drives them."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pytest
from deltalake import DeltaTable

from herocollector.testing.runs import RecordedRun, build_run
from herocollector.testing.servers import S3TestServer
from herocollector.testing.tables import assert_as_recorded, commit_rows

COLUMNS = ("experiment", "measure")


def cli(*args: str | Path, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Run ``herocollector`` with ``args``."""
    command = [sys.executable, "-m", "herocollector", *map(str, args)]
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False)


@pytest.fixture
def runs(tmp_path: Path) -> list[RecordedRun]:
    return [build_run(tmp_path / "runs" / f"r{i}", 10 + i, n_records=250) for i in range(2)]


def test_collect_commits_each_run_once_partitioned_and_replaces_a_run_in_one_commit(
    runs: list[RecordedRun], tmp_path: Path
) -> None:
    table = tmp_path / "table"
    columns = ",".join(COLUMNS)
    first = cli("collect", *(r.path for r in runs), "-o", table, "--format", "delta", "--columns", columns,
                "--partition-by", "experiment", "-q")  # fmt: skip
    assert first.returncode == 0, first.stderr
    delta = DeltaTable(str(table))
    assert delta.metadata().partition_columns == ["experiment"]
    assert [c["herocollector.run"] for c in reversed(delta.history())] == [str(r.path) for r in runs]
    content = delta.to_pyarrow_table()
    for run in runs:
        assert_as_recorded(content, run, COLUMNS)

    again = cli("collect", runs[0].path, "-o", table, "--format", "delta", "--columns", columns, "--json", "-q")
    assert again.returncode == 0, again.stderr
    summary = json.loads(again.stdout)
    assert summary["outputs"][0]["replaced"] is True and summary["rows"] == len(runs[0])
    delta = DeltaTable(str(table))
    assert len(delta.history()) == 3, "the replacement is one commit"
    content = delta.to_pyarrow_table()
    assert content.num_rows == sum(len(r) for r in runs), "the run's rows are in the table once"
    assert_as_recorded(content, runs[0], COLUMNS)

    refused = cli("collect", runs[0].path, "-o", table, "--format", "delta", "--columns", columns, "--no-clobber", "-q")
    assert refused.returncode == 1
    assert "--no-clobber" in refused.stderr and str(table) in refused.stderr and str(runs[0].path) in refused.stderr
    assert DeltaTable(str(table)).version() == 2, "nothing was committed"


def test_collect_with_a_template_writes_one_table_per_rendered_folder(runs: list[RecordedRun], tmp_path: Path) -> None:
    root = tmp_path / "tables"
    done = cli("collect", runs[0].path, "-o", root, "--format", "delta", "--template", "{{ measure }}", "-q",
               "--columns", "measure")  # fmt: skip
    assert done.returncode == 0, done.stderr
    measures = sorted({s["measure"] for s in runs[0].streams})
    assert sorted(p.name for p in root.iterdir()) == measures
    assert sum(DeltaTable(str(root / m)).to_pyarrow_table().num_rows for m in measures) == len(runs[0])


def test_partition_by_needs_delta_and_a_listed_column(runs: list[RecordedRun], tmp_path: Path) -> None:
    outside = cli("collect", runs[0].path, "-o", tmp_path / "t", "--format", "delta", "--partition-by", "model")
    assert outside.returncode != 0 and "--partition-by model" in outside.stderr
    files = cli(
        "collect", runs[0].path, "-o", tmp_path / "f.arrow", "--partition-by", "measure", "--columns", "measure"
    )
    assert files.returncode != 0 and "--format delta" in files.stderr


def _small(table: str, run: str, rows: int, options: dict[str, object] | None = None) -> None:
    data = pa.table({"stream_id": pa.array(range(rows), pa.uint32()), "epoch": pa.array([1.0] * rows)})
    commit_rows(table, data, run=run, version=1, metadata={"run": run}, options=options)


def test_tables_lists_nested_tables_with_rows_files_versions_and_last_commit(tmp_path: Path) -> None:
    root = tmp_path / "out"
    _small(str(root / "a"), "/runs/1", 5)
    _small(str(root / "a"), "/runs/2", 7)
    _small(str(root / "deep" / "b"), "/runs/3", 3)
    (root / "not-a-table").mkdir()
    listed = cli("tables", root, "--json")
    assert listed.returncode == 0, listed.stderr
    tables = {Path(t["table"]).relative_to(root).as_posix(): t for t in json.loads(listed.stdout)["tables"]}
    assert sorted(tables) == ["a", "deep/b"]
    assert (tables["a"]["rows"], tables["a"]["files"], tables["a"]["versions"]) == (12, 2, 2)
    assert tables["a"]["last_run"] == "/runs/2" and tables["a"]["last_operation"] == "WRITE"
    assert tables["deep/b"]["rows"] == 3 and tables["deep/b"]["last_commit"]
    human = cli("tables", root)
    assert human.returncode == 0 and "deep" in human.stdout and "12" in human.stdout


def test_tables_on_an_empty_root_says_so(tmp_path: Path) -> None:
    empty = cli("tables", tmp_path)
    assert empty.returncode == 1 and "no Delta table" in empty.stderr
    missing = cli("tables", tmp_path / "nowhere")
    assert missing.returncode == 1 and "not a folder" in missing.stderr


def test_tables_on_s3(tmp_path: Path, s3: S3TestServer) -> None:
    bucket = s3.bucket()
    _small(f"s3://{bucket}/out/x", "/runs/1", 4, s3.options)
    _small(f"s3://{bucket}/out/y/z", "/runs/2", 6, s3.options)
    flags = [f"--storage-option={key}={value}" for key, value in s3.options.items()]
    listed = cli("tables", f"s3://{bucket}/out", "--json", *flags)
    assert listed.returncode == 0, listed.stderr
    tables = {t["table"]: t["rows"] for t in json.loads(listed.stdout)["tables"]}
    assert tables == {f"s3://{bucket}/out/x": 4, f"s3://{bucket}/out/y/z": 6}


def test_verify_of_a_run_in_tables_checks_its_commits(runs: list[RecordedRun], tmp_path: Path) -> None:
    from herocollector import CollectionService, ServiceConfig
    from herocollector.testing.actors import wait_for

    state = tmp_path / "state"
    config = ServiceConfig.from_arguments(
        save_template="{{ output_root }}/measurements",
        output_root=str(tmp_path / "tables"),
        format="delta",
        allowed_roots=[str(tmp_path / "runs")],
        state_dir=str(state),
        scan_interval=None,
        compact_interval=None,
    )
    collected: list[object] = []
    with CollectionService(config, on_collected=collected.append) as service:
        for run in runs:
            service.submit("logger", {"path": str(run.path)})
        wait_for(lambda: len(collected) == 2, "both runs collected")
    journal = state / "journal.sqlite3"
    ok = cli("verify", runs[0].path, "--journal", journal)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    DeltaTable(str(tmp_path / "tables" / "measurements")).delete(f"logger_path = '{runs[0].path}'")
    broken = cli("verify", runs[0].path, "--journal", journal)
    assert broken.returncode == 1
    assert "holds 0 rows of the run" in broken.stdout + broken.stderr
    assert cli("verify", runs[1].path, "--journal", journal).returncode == 0, "the other run is untouched"
