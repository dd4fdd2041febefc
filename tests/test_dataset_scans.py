"""Directory scans of ``output_root``: every format's outputs, collected by the real service and by
``herocollector collect``, read back as one dataset, with the row counts of the journal and the
content of what was recorded.

The run manifests lie under their own root (``<output_root>.manifests``), so ``output_root``
holds data files only: ``pl.scan_ipc(output_root)`` (``format: "file"``),
``pl.scan_parquet(output_root)`` (``"parquet"``) and ``pyarrow.dataset.dataset(output_root,
format=...)`` read every row. polars does not skip ``_``-prefixed names, so one manifest among the
data files would fail those scans (the first test shows it). For ``"stream"`` (Arrow IPC streams)
the tests pin down what works and what does not, as ``docs/operations.md`` states it: no directory
scan reads streams; each file is read with ``pa.ipc.open_stream`` or ``pl.read_ipc_stream``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.fs as pafs
import pytest

from herocollector import CollectionService, ServiceConfig
from herocollector.journal.sqlite import JobState
from herocollector.output.manifest import MANIFEST_PREFIX
from herocollector.testing.runs import RecordedRun, build_run, default_labels
from herocollector.testing.servers import S3TestServer

SUFFIX = {"file": "arrow", "parquet": "parquet", "stream": "arrows"}
COLUMNS = {"experiment": "string", "run": "string", "measure": "string", "entity": "string"}
TEMPLATE = "{{ output_root }}/{{ experiment }}/{{ logger_name }}/{{ measure }}.%s"
RUNS = 3


@pytest.fixture(scope="module")
def recorded(tmp_path_factory: pytest.TempPathFactory) -> list[RecordedRun]:
    """Runs written by the real data logger, over two experiments, with what was recorded in each."""
    root = tmp_path_factory.mktemp("recorded")
    runs = []
    for i in range(RUNS):
        name = f"run-{i}"
        labels = [{**lab, "run": name, "experiment": f"exp-{i % 2}"} for lab in default_labels(4, seed=i)]
        runs.append(build_run(root / "runs" / name, seed=i, n_records=400 + 50 * i, labels=labels))
        (root / "runs" / name / "_DONE").touch()
    return runs


@dataclass
class Collected:
    """Outputs of the recorded runs under one output root, and the rows the journal records."""

    out: Path
    rows: int
    outputs: list[str]


def by_service(tmp: Path, runs: list[RecordedRun], fmt: str, **overrides: Any) -> Collected:
    """Collect ``runs`` with the real service, as the actor does; the journal's rows of them."""
    arguments: dict[str, Any] = dict(
        save_template=TEMPLATE % SUFFIX[fmt],
        output_root=str(tmp / "out"),
        format=fmt,
        columns=COLUMNS,
        allowed_roots=[str(runs[0].path.parent)],
        state_dir=str(tmp / "state"),
        scan_interval=None,
        max_retries=0,
    )
    arguments.update(overrides)
    with CollectionService(ServiceConfig.from_arguments(**arguments)) as service:
        for run in runs:
            service.collect(str(run.path))
        assert service.wait_idle(120)
        jobs = [service.journal.by_path(str(run.path)) for run in runs]
    assert all(job is not None and job.state == JobState.DONE for job in jobs), jobs
    return Collected(
        Path(arguments["output_root"]),
        sum(job.rows or 0 for job in jobs if job is not None),
        sorted(o for job in jobs if job is not None for o in job.outputs),
    )


def by_command(tmp: Path, runs: list[RecordedRun], fmt: str) -> Collected:
    """Collect ``runs`` with ``herocollector collect --template``; the rows its JSON summary counts."""
    out = tmp / "cli-out"
    columns = ",".join(f"{name}:{kind}" for name, kind in COLUMNS.items())
    result = subprocess.run(
        [
            *(sys.executable, "-m", "herocollector", "collect"),
            *(str(run.path) for run in runs),
            *("-o", str(out), "--template", TEMPLATE % SUFFIX[fmt], "--format", fmt, "--columns", columns),
            *("--json", "-q"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "COLUMNS": "250"},
    )
    assert result.returncode == 0, result.stdout + result.stderr
    summary = json.loads(result.stdout)
    return Collected(out, summary["rows"], sorted(o["path"] for o in summary["outputs"]))


def truth(run: RecordedRun, measure: str) -> list[dict[str, Any]]:
    """The rows of one run and measure, as recorded."""
    selected = [s["stream_id"] for s in run.streams if s["measure"] == measure]
    return run.expected_table(selected, columns=list(COLUMNS)).to_pylist()


def assert_content(rows: pa.Table | pl.DataFrame, runs: list[RecordedRun]) -> None:
    """Every row of one run, measure by measure, as recorded (within a file the order is kept)."""
    frame = rows if isinstance(rows, pl.DataFrame) else pl.from_arrow(rows)
    assert isinstance(frame, pl.DataFrame)
    run = runs[1]
    for measure in sorted({s["measure"] for s in run.streams}):
        found = frame.filter((pl.col("run") == run.path.name) & (pl.col("measure") == measure))
        expected = truth(run, measure)
        assert found.height == len(expected) > 0, measure
        assert found.select(list(expected[0])).to_dicts() == expected, measure


def data_files(out: Path) -> list[Path]:
    return sorted(p for p in out.rglob("*") if p.is_file())


# ----------------------------------------------------------------------------------------
# What a manifest among the data files does to a directory scan
# ----------------------------------------------------------------------------------------


def test_polars_does_not_skip_a_manifest_among_the_data_files(tmp_path: Path, recorded: list[RecordedRun]) -> None:
    collected = by_service(tmp_path, recorded[:1], "file")
    assert pl.scan_ipc(collected.out).collect().height == collected.rows
    [manifest] = collected.out.with_name("out.manifests").rglob(f"{MANIFEST_PREFIX}*.json")
    beside = collected.out / manifest.relative_to(collected.out.with_name("out.manifests"))
    beside.write_bytes(manifest.read_bytes())  # where version 0.2 put it
    with pytest.raises(Exception, match="different file extensions"):
        pl.scan_ipc(collected.out).collect()


# ----------------------------------------------------------------------------------------
# The file formats, collected by the service and by the command line
# ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("how", ["service", "command"])
def test_file_outputs_scan_as_one_dataset(tmp_path: Path, recorded: list[RecordedRun], how: str) -> None:
    collected = by_service(tmp_path, recorded, "file") if how == "service" else by_command(tmp_path, recorded, "file")
    assert collected.rows == sum(len(run) for run in recorded)
    assert [str(p) for p in data_files(collected.out)] == collected.outputs  # data files only

    frame = pl.scan_ipc(collected.out).collect()
    assert frame.height == collected.rows
    assert_content(frame, recorded)
    table = ds.dataset(collected.out, format="arrow").to_table()
    assert table.num_rows == collected.rows
    assert_content(table, recorded)
    assert ds.dataset(collected.out, format="ipc").count_rows() == collected.rows
    glob = pl.scan_ipc(f"{collected.out}/**/*.arrow").select(pl.len()).collect().item()
    assert glob == collected.rows


@pytest.mark.parametrize("how", ["service", "command"])
def test_parquet_outputs_scan_as_one_dataset(tmp_path: Path, recorded: list[RecordedRun], how: str) -> None:
    collected = (
        by_service(tmp_path, recorded, "parquet") if how == "service" else by_command(tmp_path, recorded, "parquet")
    )
    assert collected.rows == sum(len(run) for run in recorded)
    assert [str(p) for p in data_files(collected.out)] == collected.outputs

    frame = pl.scan_parquet(collected.out).collect()
    assert frame.height == collected.rows
    assert_content(frame, recorded)
    table = ds.dataset(collected.out, format="parquet").to_table()
    assert table.num_rows == collected.rows
    assert_content(table, recorded)
    per_experiment = pl.scan_parquet(collected.out).group_by("experiment").agg(pl.len()).collect()
    assert dict(per_experiment.iter_rows()) == {
        f"exp-{e}": sum(len(run) for i, run in enumerate(recorded) if i % 2 == e) for e in (0, 1)
    }


# ----------------------------------------------------------------------------------------
# Arrow IPC streams: no directory scan; one file at a time
# ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("how", ["service", "command"])
def test_stream_outputs_are_read_one_file_at_a_time_and_no_scan_reads_them(
    tmp_path: Path, recorded: list[RecordedRun], how: str
) -> None:
    collected = (
        by_service(tmp_path, recorded, "stream") if how == "service" else by_command(tmp_path, recorded, "stream")
    )
    files = data_files(collected.out)
    assert [str(p) for p in files] == collected.outputs

    # What works: each file on its own, then one concatenation.
    table = pa.concat_tables([pa.ipc.open_stream(p).read_all() for p in files], promote_options="default")
    assert table.num_rows == collected.rows == sum(len(run) for run in recorded)
    assert_content(table, recorded)
    frame = pl.concat([pl.read_ipc_stream(p) for p in files], how="diagonal_relaxed")
    assert frame.height == collected.rows
    assert_content(frame, recorded)

    # What does not: the scans read IPC files (with a footer), and refuse a stream.
    with pytest.raises(Exception, match="InvalidFooter"):
        pl.scan_ipc(collected.out).collect()
    with pytest.raises(Exception, match="InvalidFooter"):
        pl.read_ipc(files[0])
    with pytest.raises(pa.ArrowInvalid, match="Not an Arrow file"):
        ds.dataset(collected.out, format="arrow").to_table()
    with pytest.raises(Exception, match="No such file or directory"):
        pl.read_ipc_stream(f"{collected.out}/**/*.arrows")  # nor does read_ipc_stream take a glob


# ----------------------------------------------------------------------------------------
# On S3: the manifests under another prefix of the same bucket
# ----------------------------------------------------------------------------------------


def test_parquet_outputs_on_s3_scan_as_one_dataset(
    tmp_path: Path, recorded: list[RecordedRun], s3: S3TestServer
) -> None:
    bucket = s3.bucket()
    collected = by_service(
        tmp_path, recorded, "parquet", output_root=f"s3://{bucket}/collected", storage_options=s3.options
    )
    keys = [o["Key"] for o in s3.client().list_objects_v2(Bucket=bucket)["Contents"]]
    manifests = sorted(k for k in keys if k.rsplit("/", 1)[-1].startswith(MANIFEST_PREFIX))
    assert len(manifests) == RUNS and all(k.startswith("collected.manifests/") for k in manifests)
    assert sorted(f"s3://{bucket}/{k}" for k in keys if k.startswith("collected/")) == collected.outputs

    fs = pafs.S3FileSystem(
        endpoint_override=f"127.0.0.1:{s3.port}",
        scheme="http",
        access_key="testing",
        secret_key="testing",
        region="us-east-1",
    )
    table = ds.dataset(f"{bucket}/collected", filesystem=fs, format="parquet").to_table()
    assert table.num_rows == collected.rows == sum(len(run) for run in recorded)
    assert_content(table, recorded)
